/*
 * address.c: see address.h.
 */
#include "io/address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool all_digits(const char *s, size_t n)
{
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
        }
        return true;
}

static int parse_port(const char *s, size_t n, uint16_t *port)
{
        if (!all_digits(s, n) || n > 5)
                return -1;
        unsigned long value = 0;
        for (size_t i = 0; i < n; i++)
                value = value * 10 + (unsigned long)(s[i] - '0');
        if (value == 0 || value > 65535)
                return -1;
        *port = (uint16_t)value;
        return 0;
}

/* Tries the host as an IP literal; fills sockaddr on success. */
static bool resolve_literal(struct address *a)
{
        memset(&a->sockaddr, 0, sizeof(a->sockaddr));
        struct sockaddr_in *v4 = (struct sockaddr_in *)&a->sockaddr;
        if (inet_pton(AF_INET, a->host, &v4->sin_addr) == 1) {
                v4->sin_family = AF_INET;
                v4->sin_port = htons(a->port);
                a->sockaddr_size = sizeof(*v4);
                return true;
        }
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a->sockaddr;
        if (inet_pton(AF_INET6, a->host, &v6->sin6_addr) == 1) {
                v6->sin6_family = AF_INET6;
                v6->sin6_port = htons(a->port);
                a->sockaddr_size = sizeof(*v6);
                return true;
        }
        return false;
}

static int parse_one(const char *s, size_t n, struct address *a, char *error, size_t error_size)
{
        memset(a, 0, sizeof(*a));
        if (n == 0) {
                snprintf(error, error_size, "empty address in the list");
                return -1;
        }
        if (all_digits(s, n)) {
                if (parse_port(s, n, &a->port) != 0) {
                        snprintf(error, error_size, "invalid port '%.*s'", (int)n, s);
                        return -1;
                }
                strcpy(a->host, "127.0.0.1");
                resolve_literal(a);
                return 0;
        }
        const char *host = s;
        size_t host_size = n;
        a->port = ADDRESS_PORT_DEFAULT;
        if (s[0] == '[') {
                const char *close = memchr(s, ']', n);
                if (close == NULL) {
                        snprintf(error, error_size, "missing ']' in '%.*s'", (int)n, s);
                        return -1;
                }
                host = s + 1;
                host_size = (size_t)(close - host);
                size_t rest = n - (size_t)(close + 1 - s);
                if (rest > 0) {
                        if (close[1] != ':' ||
                            parse_port(close + 2, rest - 1, &a->port) != 0) {
                                snprintf(error, error_size, "invalid port in '%.*s'", (int)n, s);
                                return -1;
                        }
                }
        } else {
                const char *colon = memrchr(s, ':', n);
                if (colon != NULL) {
                        if (memchr(s, ':', n) != colon) {
                                snprintf(error, error_size,
                                         "IPv6 address '%.*s' must be in brackets, as "
                                         "[::1]:3000",
                                         (int)n, s);
                                return -1;
                        }
                        host_size = (size_t)(colon - s);
                        if (parse_port(colon + 1, n - host_size - 1, &a->port) != 0) {
                                snprintf(error, error_size, "invalid port in '%.*s'", (int)n, s);
                                return -1;
                        }
                }
        }
        if (host_size == 0 || host_size >= ADDRESS_HOST_SIZE_MAX) {
                snprintf(error, error_size, "invalid host in '%.*s'", (int)n, s);
                return -1;
        }
        memcpy(a->host, host, host_size);
        a->host[host_size] = '\0';
        for (size_t i = 0; i < host_size; i++) {
                char c = a->host[i];
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' ||
                          c == ':' || c == '%';
                if (!ok) {
                        snprintf(error, error_size, "invalid character in host '%s'", a->host);
                        return -1;
                }
        }
        if (s[0] == '[') {
                if (!resolve_literal(a) || a->sockaddr.ss_family != AF_INET6) {
                        snprintf(error, error_size, "invalid IPv6 address '%s'", a->host);
                        return -1;
                }
                return 0;
        }
        if (!resolve_literal(a))
                a->is_name = true;
        return 0;
}

int address_parse_list(const char *list, struct address *addresses, uint32_t *count,
                       char *error, size_t error_size)
{
        *count = 0;
        const char *p = list;
        for (;;) {
                const char *comma = strchr(p, ',');
                size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
                if (*count == ADDRESSES_MAX) {
                        snprintf(error, error_size, "too many addresses (at most %u)",
                                 ADDRESSES_MAX);
                        return -1;
                }
                if (parse_one(p, n, &addresses[*count], error, error_size) != 0)
                        return -1;
                (*count)++;
                if (comma == NULL)
                        break;
                p = comma + 1;
        }
        return 0;
}

int address_resolve(struct address *a, char *error, size_t error_size)
{
        if (!a->is_name)
                return 0;
        struct addrinfo hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        struct addrinfo *result = NULL;
        char port[8];
        snprintf(port, sizeof(port), "%u", a->port);
        int rc = getaddrinfo(a->host, port, &hints, &result);
        if (rc != 0 || result == NULL) {
                snprintf(error, error_size, "cannot resolve '%s': %s", a->host,
                         rc != 0 ? gai_strerror(rc) : "no address");
                return -1;
        }
        /* Prefer IPv4 when both exist, as most cluster DNS does. */
        struct addrinfo *pick = result;
        for (struct addrinfo *ai = result; ai != NULL; ai = ai->ai_next) {
                if (ai->ai_family == AF_INET) {
                        pick = ai;
                        break;
                }
        }
        memset(&a->sockaddr, 0, sizeof(a->sockaddr));
        memcpy(&a->sockaddr, pick->ai_addr, pick->ai_addrlen);
        a->sockaddr_size = pick->ai_addrlen;
        freeaddrinfo(result);
        return 0;
}

socklen_t address_loopback(uint16_t port, struct sockaddr_storage *out)
{
        memset(out, 0, sizeof(*out));
        struct sockaddr_in *v4 = (struct sockaddr_in *)out;
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof(*v4);
}

void address_format(const struct sockaddr_storage *sockaddr, char *out, size_t out_size)
{
        char ip[INET6_ADDRSTRLEN] = "?";
        if (sockaddr->ss_family == AF_INET) {
                const struct sockaddr_in *v4 = (const struct sockaddr_in *)sockaddr;
                inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
                snprintf(out, out_size, "%s:%u", ip, ntohs(v4->sin_port));
        } else if (sockaddr->ss_family == AF_INET6) {
                const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sockaddr;
                inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
                snprintf(out, out_size, "[%s]:%u", ip, ntohs(v6->sin6_port));
        } else {
                snprintf(out, out_size, "?");
        }
}
