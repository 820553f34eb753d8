/*
 * resolver.c: getaddrinfo_a, polled (see resolver.h).
 *
 * Everything libc reads or writes while the lookup runs (the gaicb, the name, the service and
 * the hints) lives in the heap-allocated query, so the query's owner may move on while libc's
 * helper thread works, and an abandoned lookup at shutdown writes only into memory that is
 * deliberately never freed.
 */
#include "net/resolver.h"
#include "io/address.h"

#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long destroy waits for a lookup that cannot be cancelled before abandoning it. */
#define RESOLVER_DESTROY_WAIT_MS 200

struct resolver_query {
        struct gaicb gaicb;
        struct addrinfo hints;
        char host[ADDRESS_HOST_SIZE_MAX];
        char service[8];
        bool pending;
};

struct resolver_query *resolver_query_create(void)
{
        struct resolver_query *query = calloc(1, sizeof(*query));
        return query;
}

void resolver_query_destroy(struct resolver_query *query)
{
        if (query == NULL)
                return;
        if (query->pending) {
                int rc = gai_cancel(&query->gaicb);
                if (rc == EAI_NOTCANCELED) {
                        const struct gaicb *list[1] = {&query->gaicb};
                        struct timespec wait = {.tv_sec = 0,
                                                .tv_nsec = RESOLVER_DESTROY_WAIT_MS * 1000000L};
                        gai_suspend(list, 1, &wait);
                }
                if (gai_error(&query->gaicb) == EAI_INPROGRESS) {
                        /* libc still writes into the query: leave it to libc (shutdown only). */
                        return;
                }
                if (query->gaicb.ar_result != NULL)
                        freeaddrinfo(query->gaicb.ar_result);
        }
        free(query);
}

bool resolver_query_start(struct resolver_query *query, const char *host, uint16_t port)
{
        tally_assert(!query->pending);
        tally_assert(port != 0);
        size_t host_size = strlen(host);
        tally_assert(host_size > 0 && host_size < sizeof(query->host));
        memset(&query->gaicb, 0, sizeof(query->gaicb));
        memset(&query->hints, 0, sizeof(query->hints));
        memcpy(query->host, host, host_size + 1);
        snprintf(query->service, sizeof(query->service), "%u", port);
        query->hints.ai_family = AF_UNSPEC;
        query->hints.ai_socktype = SOCK_STREAM;
        query->hints.ai_flags = AI_NUMERICSERV;
        query->gaicb.ar_name = query->host;
        query->gaicb.ar_service = query->service;
        query->gaicb.ar_request = &query->hints;
        struct gaicb *list[1] = {&query->gaicb};
        struct sigevent notify;
        memset(&notify, 0, sizeof(notify));
        notify.sigev_notify = SIGEV_NONE; /* polled with gai_error() */
        int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &notify);
        if (rc != 0) {
                /* EAI_AGAIN or EAI_MEMORY: libc could not queue it; the caller retries. */
                query->gaicb.ar_result = NULL;
                query->pending = false;
                return false;
        }
        query->pending = true;
        return true;
}

enum resolver_status resolver_query_poll(struct resolver_query *query,
                                         struct sockaddr_storage *sockaddr,
                                         socklen_t *sockaddr_size, char *error,
                                         size_t error_size)
{
        if (!query->pending)
                return RESOLVER_IDLE;
        int rc = gai_error(&query->gaicb);
        if (rc == EAI_INPROGRESS)
                return RESOLVER_PENDING;
        query->pending = false;
        struct addrinfo *result = query->gaicb.ar_result;
        query->gaicb.ar_result = NULL;
        if (rc != 0 || result == NULL) {
                snprintf(error, error_size, "%s", rc != 0 ? gai_strerror(rc) : "no address");
                if (result != NULL)
                        freeaddrinfo(result);
                return RESOLVER_FAILED;
        }
        /* Prefer IPv4 when both exist, as address_resolve() does. */
        const struct addrinfo *pick = result;
        for (const struct addrinfo *ai = result; ai != NULL; ai = ai->ai_next) {
                if (ai->ai_family == AF_INET) {
                        pick = ai;
                        break;
                }
        }
        tally_assert(pick->ai_addrlen <= sizeof(*sockaddr));
        memset(sockaddr, 0, sizeof(*sockaddr));
        memcpy(sockaddr, pick->ai_addr, pick->ai_addrlen);
        *sockaddr_size = pick->ai_addrlen;
        freeaddrinfo(result);
        return RESOLVER_DONE;
}
