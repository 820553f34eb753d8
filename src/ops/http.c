/*
 * http.c: see http.h. A connection goes accepted -> reading (until the blank line, bounded)
 * -> sending the response built in one handler call -> closing (shutdown(2) makes the kernel
 * finish any receive or send in flight; the slot is freed when both completions ran).
 */
#include "ops/http.h"
#include "lib/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- parser ---- */

static bool is_token_char(char c)
{
        return c > 32 && c < 127;
}

enum http_parse http_parse_request(const char *data, uint32_t size, struct http_request *request)
{
        memset(request, 0, sizeof(*request));
        /* The end of the headers: the first empty line (CRLF CRLF, or bare LF LF). */
        uint32_t end = 0;
        for (uint32_t i = 0; i < size && end == 0; i++) {
                if (data[i] == '\0')
                        return HTTP_PARSE_BAD;
                if (data[i] != '\n')
                        continue;
                if (i >= 1 && data[i - 1] == '\n')
                        end = i + 1;
                else if (i >= 2 && data[i - 1] == '\r' && data[i - 2] == '\n')
                        end = i + 1;
        }
        /* The request line alone can be judged before the headers end. */
        uint32_t line_end = 0;
        while (line_end < size && data[line_end] != '\n')
                line_end++;
        if (line_end == size && end == 0)
                return size > HTTP_PATH_SIZE_MAX + 32 ? HTTP_PARSE_URI_TOO_LONG
                                                      : HTTP_PARSE_INCOMPLETE;
        uint32_t line_size = line_end > 0 && data[line_end - 1] == '\r' ? line_end - 1 : line_end;
        uint32_t i = 0;
        uint32_t method_start = i;
        while (i < line_size && data[i] != ' ') {
                if (!is_token_char(data[i]))
                        return HTTP_PARSE_BAD;
                i++;
        }
        uint32_t method_size = i - method_start;
        if (method_size == 0 || i == line_size)
                return HTTP_PARSE_BAD;
        i++; /* the space */
        uint32_t target_start = i;
        while (i < line_size && data[i] != ' ') {
                if (!is_token_char(data[i]))
                        return HTTP_PARSE_BAD;
                i++;
        }
        uint32_t target_size = i - target_start;
        if (target_size == 0 || i == line_size)
                return HTTP_PARSE_BAD;
        i++;
        const char *version = data + i;
        uint32_t version_size = line_size - i;
        if (version_size != 8 || memcmp(version, "HTTP/1.", 7) != 0)
                return version_size >= 5 && memcmp(version, "HTTP/", 5) == 0
                               ? HTTP_PARSE_VERSION
                               : HTTP_PARSE_BAD;
        if (version[7] != '0' && version[7] != '1')
                return HTTP_PARSE_VERSION;
        if (method_size != 3 || memcmp(data, "GET", 3) != 0)
                return HTTP_PARSE_METHOD;
        if (data[target_start] != '/')
                return HTTP_PARSE_BAD;
        uint32_t path_size = 0;
        while (path_size < target_size && data[target_start + path_size] != '?')
                path_size++;
        if (path_size >= HTTP_PATH_SIZE_MAX)
                return HTTP_PARSE_URI_TOO_LONG;
        if (end == 0)
                return HTTP_PARSE_INCOMPLETE;
        memcpy(request->path, data + target_start, path_size);
        request->path[path_size] = '\0';
        request->header_size = end;
        tally_assert(end <= size);
        return HTTP_PARSE_OK;
}

/* ---- server ---- */

static void on_accept(struct io_completion *completion, int32_t result);
static void on_recv(struct io_completion *completion, int32_t result);
static void on_send(struct io_completion *completion, int32_t result);

static void accept_start(struct http_server *server)
{
        if (server->accept_pending || server->stopping || server->listen_fd < 0)
                return;
        server->accept_pending = true;
        server->accept_completion.callback = on_accept;
        server->accept_completion.context = server;
        io_accept(server->io, &server->accept_completion, server->listen_fd);
}

int http_server_start(struct http_server *server, struct io *io, const struct address *address,
                      http_handler handler, void *context, struct sockaddr_storage *bound)
{
        memset(server, 0, sizeof(*server));
        server->io = io;
        server->handler = handler;
        server->context = context;
        server->listen_fd = -1;
        server->request_timeout_ms = HTTP_REQUEST_TIMEOUT_MS;
        server->connection_timeout_ms = HTTP_CONNECTION_TIMEOUT_MS;
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++) {
                server->connections[i].fd = -1;
                server->connections[i].server = server;
        }
        int fd = socket(address->sockaddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                int err = errno;
                log_error("metrics: cannot create socket error=%s", strerror(err));
                return -err;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        /* As bus_listen: a previous process's socket may linger a moment after it exited. */
        int rc = -1;
        for (int attempt = 0; attempt < 50; attempt++) {
                rc = bind(fd, (const struct sockaddr *)&address->sockaddr, address->sockaddr_size);
                if (rc == 0 || errno != EADDRINUSE)
                        break;
                usleep(100000);
        }
        if (rc != 0 || listen(fd, 16) != 0) {
                int err = errno;
                char text[80];
                address_format(&address->sockaddr, text, sizeof(text));
                log_error("metrics: cannot listen address=%s error=%s", text, strerror(err));
                close(fd);
                return -err;
        }
        socklen_t size = sizeof(*bound);
        getsockname(fd, (struct sockaddr *)bound, &size);
        server->listen_fd = fd;
        accept_start(server);
        return 0;
}

/* Frees the slot once no operation is in flight. */
static void close_finish(struct http_connection *c)
{
        if (c->recv_pending || c->send_pending)
                return;
        close(c->fd);
        c->fd = -1;
        c->active = false;
        c->closing = false;
}

static void connection_close(struct http_connection *c)
{
        if (!c->active || c->closing)
                return;
        c->closing = true;
        shutdown(c->fd, SHUT_RDWR);
        close_finish(c);
}

static void recv_start(struct http_connection *c)
{
        tally_assert(!c->recv_pending);
        tally_assert(c->request_size < HTTP_REQUEST_SIZE_MAX);
        c->recv_pending = true;
        c->recv_completion.callback = on_recv;
        c->recv_completion.context = c;
        io_recv(c->server->io, &c->recv_completion, c->fd, c->request + c->request_size,
                HTTP_REQUEST_SIZE_MAX - c->request_size);
}

static void send_more(struct http_connection *c)
{
        tally_assert(!c->send_pending);
        tally_assert(c->response_offset + c->response_sent < c->response_end);
        c->send_pending = true;
        c->send_completion.callback = on_send;
        c->send_completion.context = c;
        io_send(c->server->io, &c->send_completion, c->fd,
                c->response + c->response_offset + c->response_sent,
                c->response_end - c->response_offset - c->response_sent);
}

static const char *status_text(uint16_t status)
{
        switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 414: return "URI Too Long";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 503: return "Service Unavailable";
        case 505: return "HTTP Version Not Supported";
        default: return "Unknown";
        }
}

/* Puts the status line and headers right in front of the body and starts sending. */
static void respond(struct http_connection *c, const struct http_response *response)
{
        char header[HTTP_RESPONSE_HEADER_MAX];
        int n = snprintf(header, sizeof(header),
                         "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %u\r\n"
                         "Connection: close\r\n%s\r\n",
                         response->status, status_text(response->status),
                         response->content_type, response->body_size,
                         response->status == 405 ? "Allow: GET\r\n" : "");
        tally_assert(n > 0 && n < (int)sizeof(header));
        tally_assert(response->body_size <= HTTP_RESPONSE_SIZE_MAX);
        c->response_offset = HTTP_RESPONSE_HEADER_MAX - (uint32_t)n;
        memcpy(c->response + c->response_offset, header, (size_t)n);
        c->response_end = HTTP_RESPONSE_HEADER_MAX + response->body_size;
        c->response_sent = 0;
        c->responded = true;
        send_more(c);
}

static void respond_error(struct http_connection *c, uint16_t status, const char *text)
{
        struct http_response response = {
                .status = status,
                .content_type = "text/plain; charset=utf-8",
                .body = c->response + HTTP_RESPONSE_HEADER_MAX,
                .body_capacity = HTTP_RESPONSE_SIZE_MAX,
        };
        int n = snprintf(response.body, response.body_capacity, "%s\n", text);
        response.body_size = (uint32_t)n;
        c->server->stats.bad_requests++;
        respond(c, &response);
}

static void handle(struct http_connection *c, const struct http_request *request)
{
        struct http_server *server = c->server;
        struct http_response response = {
                .status = 200,
                .content_type = "text/plain; charset=utf-8",
                .body = c->response + HTTP_RESPONSE_HEADER_MAX,
                .body_capacity = HTTP_RESPONSE_SIZE_MAX,
        };
        uint64_t started = io_monotonic_ns();
        server->handler(server->context, request->path, &response);
        uint64_t took = io_monotonic_ns() - started;
        server->stats.handler_ns += took;
        server->stats.handler_ns_max = MAX(server->stats.handler_ns_max, took);
        server->stats.responses++;
        if (response.body_size > response.body_capacity) {
                response.status = 500;
                response.content_type = "text/plain; charset=utf-8";
                response.body_size =
                        (uint32_t)snprintf(response.body, response.body_capacity,
                                           "response larger than %u bytes\n",
                                           HTTP_RESPONSE_SIZE_MAX);
        }
        respond(c, &response);
}

static void on_recv(struct io_completion *completion, int32_t result)
{
        struct http_connection *c = completion->context;
        c->recv_pending = false;
        if (c->closing) {
                close_finish(c);
                return;
        }
        if (result <= 0) {
                connection_close(c);
                return;
        }
        c->request_size += (uint32_t)result;
        tally_assert(c->request_size <= HTTP_REQUEST_SIZE_MAX);
        struct http_request request;
        enum http_parse parsed = http_parse_request(c->request, c->request_size, &request);
        switch (parsed) {
        case HTTP_PARSE_OK:
                handle(c, &request);
                return;
        case HTTP_PARSE_INCOMPLETE:
                if (c->request_size == HTTP_REQUEST_SIZE_MAX)
                        respond_error(c, 431, "request headers too large");
                else
                        recv_start(c);
                return;
        case HTTP_PARSE_BAD: respond_error(c, 400, "bad request"); return;
        case HTTP_PARSE_METHOD: respond_error(c, 405, "only GET is served"); return;
        case HTTP_PARSE_VERSION: respond_error(c, 505, "HTTP/1.0 or HTTP/1.1 only"); return;
        case HTTP_PARSE_URI_TOO_LONG: respond_error(c, 414, "path too long"); return;
        }
        tally_assert(false);
}

static void on_send(struct io_completion *completion, int32_t result)
{
        struct http_connection *c = completion->context;
        c->send_pending = false;
        if (c->closing) {
                close_finish(c);
                return;
        }
        if (result <= 0) {
                connection_close(c);
                return;
        }
        c->response_sent += (uint32_t)result;
        if (c->response_offset + c->response_sent < c->response_end)
                send_more(c);
        else
                connection_close(c); /* Connection: close; the client sees EOF */
}

static void on_accept(struct io_completion *completion, int32_t result)
{
        struct http_server *server = completion->context;
        server->accept_pending = false;
        if (server->stopping) {
                if (result >= 0)
                        close(result);
                close(server->listen_fd);
                server->listen_fd = -1;
                return;
        }
        if (result < 0) {
                if (!server->stopping && result != -EAGAIN && result != -EINTR &&
                    result != -ECONNABORTED)
                        log_warn("metrics: accept failed error=%s", strerror(-result));
                accept_start(server);
                return;
        }
        int fd = result;
        struct http_connection *c = NULL;
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX && c == NULL; i++) {
                if (!server->connections[i].active)
                        c = &server->connections[i];
        }
        if (c == NULL) {
                server->stats.refused_full++;
                close(fd);
                accept_start(server);
                return;
        }
        server->stats.accepted++;
        tally_assert(c->fd == -1 && !c->recv_pending && !c->send_pending);
        c->active = true;
        c->closing = false;
        c->responded = false;
        c->fd = fd;
        c->accepted_ns = io_monotonic_ns();
        c->request_size = 0;
        recv_start(c);
        accept_start(server);
}

void http_server_tick(struct http_server *server)
{
        uint64_t now = io_monotonic_ns();
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++) {
                struct http_connection *c = &server->connections[i];
                if (!c->active || c->closing)
                        continue;
                uint64_t age_ms = (now - c->accepted_ns) / 1000000u;
                if ((!c->responded && age_ms >= server->request_timeout_ms) ||
                    age_ms >= server->connection_timeout_ms) {
                        server->stats.timeouts++;
                        connection_close(c);
                }
        }
}

void http_server_stop(struct http_server *server)
{
        server->stopping = true;
        if (server->listen_fd >= 0) {
                shutdown(server->listen_fd, SHUT_RDWR);
                if (!server->accept_pending) {
                        close(server->listen_fd);
                        server->listen_fd = -1;
                }
        }
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++)
                connection_close(&server->connections[i]);
}

bool http_server_idle(const struct http_server *server)
{
        for (uint32_t i = 0; i < HTTP_CONNECTIONS_MAX; i++) {
                if (server->connections[i].active)
                        return false;
        }
        return !server->accept_pending;
}
