/*
 * http.h: a minimal HTTP/1.1 server for metrics and health probes, run by the replica's own
 * event loop (no thread: what it reports is always a consistent state between two events).
 *
 * It exists for Prometheus and Kubernetes probes, and must never slow the replica whatever a
 * scraper does, so everything is bounded:
 *   - at most HTTP_CONNECTIONS_MAX connections; more are closed at accept;
 *   - a request is GET only, at most HTTP_REQUEST_SIZE_MAX bytes of request line and headers
 *     (a body is never read), and must arrive whole within HTTP_REQUEST_TIMEOUT_MS of the
 *     accept (a slowloris client is closed then);
 *   - the response is built into the connection's fixed buffer of HTTP_RESPONSE_SIZE_MAX
 *     bytes in one call of the handler, sent with `Connection: close`, and the connection is
 *     closed once it is sent or HTTP_CONNECTION_TIMEOUT_MS after the accept, whichever first
 *     (a scraper that does not read its response holds nothing longer);
 *   - one request per connection: work per connection is one parse and one handler call.
 *
 * The parser (http_parse_request) is a pure function, tested on hostile inputs on its own.
 */
#ifndef TALLY_OPS_HTTP_H
#define TALLY_OPS_HTTP_H

#include "io/address.h"
#include "io/io.h"

/* Prometheus scrapes each target over one connection; a few more for probes and people. */
#define HTTP_CONNECTIONS_MAX 4u
/* A scraper's GET with its headers is a few hundred bytes; 4 KiB leaves room for proxies. */
#define HTTP_REQUEST_SIZE_MAX 4096u
/* The whole /metrics page of one replica is ~20 KiB; room to grow without a rebuild. */
#define HTTP_RESPONSE_SIZE_MAX (128u * 1024u)
/* Room for the status line and headers in front of the body. */
#define HTTP_RESPONSE_HEADER_MAX 256u
/* A real client sends its request within a round trip of connecting. */
#define HTTP_REQUEST_TIMEOUT_MS 2000u
/* From accept to the last byte of the response. Prometheus' default scrape timeout is 10 s. */
#define HTTP_CONNECTION_TIMEOUT_MS 5000u
/* The longest path kept (query strings are dropped). */
#define HTTP_PATH_SIZE_MAX 128u

enum http_parse {
        HTTP_PARSE_OK = 0,
        HTTP_PARSE_INCOMPLETE,   /* no end of headers yet: read more (if there is room) */
        HTTP_PARSE_BAD,          /* 400: malformed */
        HTTP_PARSE_METHOD,       /* 405: not GET */
        HTTP_PARSE_VERSION,      /* 505: not HTTP/1.0 or 1.1 */
        HTTP_PARSE_URI_TOO_LONG, /* 414 */
};

struct http_request {
        char path[HTTP_PATH_SIZE_MAX]; /* NUL-terminated, without the query string */
        uint32_t header_size;          /* bytes up to and with the blank line */
};

/*
 * Parses a request from `data[0..size)`. Never reads beyond `size`; `size` may be anything
 * (the caller bounds it by HTTP_REQUEST_SIZE_MAX and treats INCOMPLETE at that size as 431).
 */
enum http_parse http_parse_request(const char *data, uint32_t size, struct http_request *request);

struct http_response {
        uint16_t status;
        const char *content_type;
        char *body;             /* write here */
        uint32_t body_capacity; /* bytes available at body */
        uint32_t body_size;     /* bytes written */
};

/* Fills `response` for `path` (status 200 and text/plain preset). Must not block. */
typedef void (*http_handler)(void *context, const char *path, struct http_response *response);

struct http_connection {
        bool active;
        bool closing;
        bool recv_pending;
        bool send_pending;
        bool responded;
        int fd;
        uint64_t accepted_ns;
        uint32_t request_size;
        uint32_t response_offset; /* where the response starts in `response` */
        uint32_t response_end;
        uint32_t response_sent;
        struct io_completion recv_completion;
        struct io_completion send_completion;
        struct http_server *server;
        char request[HTTP_REQUEST_SIZE_MAX];
        char response[HTTP_RESPONSE_HEADER_MAX + HTTP_RESPONSE_SIZE_MAX];
};

struct http_stats {
        uint64_t accepted;
        uint64_t refused_full;   /* closed at accept: every connection slot in use */
        uint64_t timeouts;       /* closed: request or response not done in time */
        uint64_t bad_requests;   /* answered 4xx/5xx from the parser */
        uint64_t responses;      /* answered by the handler */
        uint64_t handler_ns;     /* time spent in the handler, total */
        uint64_t handler_ns_max;
};

struct http_server {
        struct io *io;
        int listen_fd;
        bool accept_pending;
        bool stopping;
        struct io_completion accept_completion;
        http_handler handler;
        void *context;
        uint32_t request_timeout_ms;    /* HTTP_REQUEST_TIMEOUT_MS; tests shorten them */
        uint32_t connection_timeout_ms; /* HTTP_CONNECTION_TIMEOUT_MS */
        struct http_stats stats;
        struct http_connection connections[HTTP_CONNECTIONS_MAX];
};

/* Binds and listens on `address` (resolved); 0 or -errno with a log line. */
int http_server_start(struct http_server *server, struct io *io, const struct address *address,
                      http_handler handler, void *context, struct sockaddr_storage *bound);
/* Enforces the timeouts; call on every tick of the loop. */
void http_server_tick(struct http_server *server);
/* Stops accepting and closes every connection; completions still run (keep the loop going). */
void http_server_stop(struct http_server *server);
/* True when nothing is in flight any more (after http_server_stop). */
bool http_server_idle(const struct http_server *server);

#endif
