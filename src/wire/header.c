/*
 * header.c: layout assertions, checksums and validity rules of the 256-byte header.
 *
 * The validity rules mirror what TigerBeetle 0.16.68 (and the official client) check, so that a
 * message Tally sends is never silently dropped by a client and a malformed message a client or
 * peer sends is never acted upon.
 */
#include "wire/header.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <stdio.h>
#include <string.h>

#define HEADER_OFFSET(field, off) WIRE_STATIC_OFFSET(struct wire_header, field, off)

_Static_assert(sizeof(struct wire_header) == WIRE_HEADER_SIZE, "header size");
HEADER_OFFSET(checksum, 0);
HEADER_OFFSET(checksum_padding, 16);
HEADER_OFFSET(checksum_body, 32);
HEADER_OFFSET(checksum_body_padding, 48);
HEADER_OFFSET(nonce_reserved, 64);
HEADER_OFFSET(cluster, 80);
HEADER_OFFSET(size, 96);
HEADER_OFFSET(epoch, 100);
HEADER_OFFSET(view, 104);
HEADER_OFFSET(release, 108);
HEADER_OFFSET(protocol, 112);
HEADER_OFFSET(command, 114);
HEADER_OFFSET(replica, 115);
HEADER_OFFSET(reserved_frame, 116);
HEADER_OFFSET(request.parent, 128);
HEADER_OFFSET(request.parent_padding, 144);
HEADER_OFFSET(request.client, 160);
HEADER_OFFSET(request.session, 176);
HEADER_OFFSET(request.timestamp, 184);
HEADER_OFFSET(request.request, 192);
HEADER_OFFSET(request.operation, 196);
HEADER_OFFSET(request.previous_request_latency_padding, 197);
HEADER_OFFSET(request.previous_request_latency, 200);
HEADER_OFFSET(request.reserved, 204);
HEADER_OFFSET(reply.request_checksum, 128);
HEADER_OFFSET(reply.request_checksum_padding, 144);
HEADER_OFFSET(reply.context, 160);
HEADER_OFFSET(reply.context_padding, 176);
HEADER_OFFSET(reply.client, 192);
HEADER_OFFSET(reply.op, 208);
HEADER_OFFSET(reply.commit, 216);
HEADER_OFFSET(reply.timestamp, 224);
HEADER_OFFSET(reply.request, 232);
HEADER_OFFSET(reply.operation, 236);
HEADER_OFFSET(reply.reserved, 237);
HEADER_OFFSET(ping_client.client, 128);
HEADER_OFFSET(ping_client.ping_timestamp_monotonic, 144);
HEADER_OFFSET(ping_client.reserved, 152);
HEADER_OFFSET(pong_client.ping_timestamp_monotonic, 128);
HEADER_OFFSET(pong_client.reserved, 136);
HEADER_OFFSET(eviction.client, 128);
HEADER_OFFSET(eviction.reserved, 144);
HEADER_OFFSET(eviction.reason, 255);
HEADER_OFFSET(prepare.parent, 128);
HEADER_OFFSET(prepare.request_checksum, 160);
HEADER_OFFSET(prepare.checkpoint_id, 192);
HEADER_OFFSET(prepare.client, 208);
HEADER_OFFSET(prepare.op, 224);
HEADER_OFFSET(prepare.commit, 232);
HEADER_OFFSET(prepare.timestamp, 240);
HEADER_OFFSET(prepare.request, 248);
HEADER_OFFSET(prepare.operation, 252);
HEADER_OFFSET(prepare.reserved, 253);
HEADER_OFFSET(prepare_ok.prepare_checksum, 160);
HEADER_OFFSET(prepare_ok.op, 224);
HEADER_OFFSET(prepare_ok.commit_min, 232);
HEADER_OFFSET(commit.commit_checksum, 128);
HEADER_OFFSET(commit.checkpoint_id, 160);
HEADER_OFFSET(commit.checkpoint_op, 176);
HEADER_OFFSET(commit.commit, 184);
HEADER_OFFSET(commit.timestamp_monotonic, 192);
HEADER_OFFSET(commit.reserved, 200);
HEADER_OFFSET(start_view.nonce, 128);
HEADER_OFFSET(start_view.op, 144);
HEADER_OFFSET(start_view.commit_max, 152);
HEADER_OFFSET(start_view.checkpoint_op, 160);
HEADER_OFFSET(start_view.op_checksum, 168);
HEADER_OFFSET(start_view.reserved, 184);
_Static_assert(sizeof(struct wire_register_request) == 256, "RegisterRequest size");
_Static_assert(sizeof(struct wire_register_result) == 64, "RegisterResult size");

static const char *const command_names[COMMAND_COUNT] = {
        "reserved",      "ping",           "pong",
        "ping_client",   "pong_client",    "request",
        "prepare",       "prepare_ok",     "reply",
        "commit",        "start_view_change", "do_view_change",
        "deprecated_12", "request_start_view", "request_headers",
        "request_prepare", "request_reply", "headers",
        "eviction",      "request_blocks", "block",
        "deprecated_21", "deprecated_22",  "deprecated_23",
        "start_view",
};

const char *wire_command_name(uint8_t command)
{
        static _Thread_local char unknown[16];
        if (command < COMMAND_COUNT)
                return command_names[command];
        snprintf(unknown, sizeof(unknown), "command_%u", command);
        return unknown;
}

bool wire_command_between_replicas(uint8_t command)
{
        switch (command) {
        case COMMAND_PING:
        case COMMAND_PONG:
        case COMMAND_PREPARE:
        case COMMAND_PREPARE_OK:
        case COMMAND_COMMIT:
        case COMMAND_START_VIEW_CHANGE:
        case COMMAND_DO_VIEW_CHANGE:
        case COMMAND_REQUEST_START_VIEW:
        case COMMAND_REQUEST_HEADERS:
        case COMMAND_REQUEST_PREPARE:
        case COMMAND_REQUEST_REPLY:
        case COMMAND_HEADERS:
        case COMMAND_REQUEST_BLOCKS:
        case COMMAND_BLOCK:
        case COMMAND_START_VIEW:
                return true;
        default:
                return false;
        }
}

static bool all_zero(const void *bytes, size_t size)
{
        const uint8_t *p = bytes;
        for (size_t i = 0; i < size; i++) {
                if (p[i] != 0)
                        return false;
        }
        return true;
}

void wire_header_set_checksum_body(struct wire_header *header, const void *body, uint32_t size)
{
        header->checksum_body = checksum(body, size);
}

void wire_header_set_checksum(struct wire_header *header)
{
        header->checksum = checksum((const uint8_t *)header + 16, WIRE_HEADER_SIZE - 16);
}

bool wire_header_checksum_valid(const struct wire_header *header)
{
        return header->checksum == checksum((const uint8_t *)header + 16, WIRE_HEADER_SIZE - 16);
}

bool wire_body_checksum_valid(const struct wire_header *header, const void *body)
{
        tally_assert(header->size >= WIRE_HEADER_SIZE);
        return header->checksum_body == checksum(body, header->size - WIRE_HEADER_SIZE);
}

void wire_reply_set_context(struct wire_header *header)
{
        tally_assert(header->command == COMMAND_REPLY);
        header->reply.context = 0;
        header->reply.context = checksum((const uint8_t *)header + 16, WIRE_HEADER_SIZE - 16);
}

void wire_header_init(struct wire_header *header, uint8_t command, u128 cluster, uint32_t view,
                      uint32_t release, uint8_t replica)
{
        memset(header, 0, sizeof(*header));
        header->command = command;
        header->cluster = cluster;
        header->size = WIRE_HEADER_SIZE;
        header->view = view;
        header->release = release;
        header->replica = replica;
        header->checksum_body = CHECKSUM_EMPTY;
}

static const char *request_invalid(const struct wire_header *h)
{
        const struct wire_request *r = &h->request;
        if (h->release == 0)
                return "release is 0";
        if (r->parent_padding != 0)
                return "parent_padding is not 0";
        if (r->timestamp != 0)
                return "timestamp is not 0";
        if (!all_zero(r->previous_request_latency_padding,
                      sizeof(r->previous_request_latency_padding)))
                return "previous_request_latency_padding is not 0";
        if (!all_zero(r->reserved, sizeof(r->reserved)))
                return "reserved is not 0";
        switch (r->operation) {
        case OPERATION_RESERVED:
                return "operation is reserved";
        case OPERATION_ROOT:
                return "operation is root";
        case OPERATION_REGISTER:
                if (h->replica != 0)
                        return "register: replica is not 0";
                if (r->client == 0)
                        return "register: client is 0";
                if (r->parent != 0)
                        return "register: parent is not 0";
                if (r->session != 0)
                        return "register: session is not 0";
                if (r->request != 0)
                        return "register: request is not 0";
                if (h->size != WIRE_HEADER_SIZE && h->size != WIRE_HEADER_SIZE + 256)
                        return "register: size is not 256 or 512";
                return NULL;
        case OPERATION_VSR_PULSE:
        case OPERATION_UPGRADE:
                if (r->client != 0 || r->parent != 0 || r->session != 0 || r->request != 0)
                        return "pulse/upgrade: client, parent, session, request must be 0";
                if (h->size != WIRE_HEADER_SIZE +
                                   (r->operation == OPERATION_UPGRADE ? 16u : 0u))
                        return "pulse/upgrade: wrong size";
                return NULL;
        case OPERATION_RECONFIGURE:
                if (h->size != WIRE_HEADER_SIZE + 256)
                        return "reconfigure: size is not 512";
                break;
        case OPERATION_NOOP:
                if (h->size != WIRE_HEADER_SIZE)
                        return "noop: size is not 256";
                break;
        default:
                if (r->operation < 128)
                        return "operation is reserved";
                break;
        }
        if (h->replica != 0)
                return "replica is not 0";
        if (r->client == 0)
                return "client is 0";
        if (r->session == 0)
                return "session is 0";
        if (r->request == 0)
                return "request is 0";
        return NULL;
}

static const char *reply_invalid(const struct wire_header *h)
{
        const struct wire_reply *r = &h->reply;
        if (h->release == 0)
                return "release is 0";
        if (r->client == 0)
                return "client is 0";
        if (r->request_checksum_padding != 0 || r->context_padding != 0)
                return "padding is not 0";
        if (r->op != r->commit)
                return "op is not commit";
        if (r->timestamp == 0)
                return "timestamp is 0";
        if (!all_zero(r->reserved, sizeof(r->reserved)))
                return "reserved is not 0";
        if (r->operation == OPERATION_REGISTER) {
                if (h->size != WIRE_HEADER_SIZE + sizeof(struct wire_register_result))
                        return "register reply: size is not 320";
                if (r->commit == 0)
                        return "register reply: commit is 0";
                if (r->request != 0)
                        return "register reply: request is not 0";
                return NULL;
        }
        if (r->commit == 0)
                return "commit is 0";
        if (r->request == 0)
                return "request is 0";
        return NULL;
}

static const char *header_only_invalid(const struct wire_header *h)
{
        if (h->size != WIRE_HEADER_SIZE)
                return "size is not 256";
        if (h->checksum_body != CHECKSUM_EMPTY)
                return "checksum_body is not the empty checksum";
        return NULL;
}

static const char *ping_client_invalid(const struct wire_header *h)
{
        const char *reason = header_only_invalid(h);
        if (reason != NULL)
                return reason;
        if (h->release == 0)
                return "release is 0";
        if (h->replica != 0)
                return "replica is not 0";
        if (h->view != 0)
                return "view is not 0";
        if (h->ping_client.client == 0)
                return "client is 0";
        if (!all_zero(h->ping_client.reserved, sizeof(h->ping_client.reserved)))
                return "reserved is not 0";
        return NULL;
}

static const char *pong_client_invalid(const struct wire_header *h)
{
        const char *reason = header_only_invalid(h);
        if (reason != NULL)
                return reason;
        if (h->release == 0)
                return "release is 0";
        if (!all_zero(h->pong_client.reserved, sizeof(h->pong_client.reserved)))
                return "reserved is not 0";
        return NULL;
}

static const char *eviction_invalid(const struct wire_header *h)
{
        const char *reason = header_only_invalid(h);
        if (reason != NULL)
                return reason;
        if (h->release == 0)
                return "release is 0";
        if (h->eviction.client == 0)
                return "client is 0";
        if (!all_zero(h->eviction.reserved, sizeof(h->eviction.reserved)))
                return "reserved is not 0";
        if (h->eviction.reason == EVICTION_RESERVED ||
            h->eviction.reason > EVICTION_SESSION_RELEASE_MISMATCH)
                return "reason is out of range";
        return NULL;
}

static const char *prepare_invalid(const struct wire_header *h)
{
        const struct wire_prepare *p = &h->prepare;
        if (p->parent_padding != 0 || p->request_checksum_padding != 0)
                return "padding is not 0";
        if (!all_zero(p->reserved, sizeof(p->reserved)))
                return "reserved is not 0";
        if (p->op < p->commit)
                return "op is below commit";
        if (p->operation == OPERATION_RESERVED)
                return "operation is reserved";
        return NULL;
}

const char *wire_header_invalid(const struct wire_header *h)
{
        if (h->checksum_padding != 0)
                return "checksum_padding is not 0";
        if (h->checksum_body_padding != 0)
                return "checksum_body_padding is not 0";
        if (h->nonce_reserved != 0)
                return "nonce_reserved is not 0";
        if (h->size < WIRE_HEADER_SIZE || h->size > WIRE_MESSAGE_SIZE_MAX)
                return "size is out of range";
        if (h->epoch != 0)
                return "epoch is not 0";
        if (!all_zero(h->reserved_frame, sizeof(h->reserved_frame)))
                return "reserved_frame is not 0";
        if (h->protocol != 0)
                return "protocol is not 0";
        switch (h->command) {
        case COMMAND_REQUEST:
                return request_invalid(h);
        case COMMAND_REPLY:
                return reply_invalid(h);
        case COMMAND_PING_CLIENT:
                return ping_client_invalid(h);
        case COMMAND_PONG_CLIENT:
                return pong_client_invalid(h);
        case COMMAND_EVICTION:
                return eviction_invalid(h);
        case COMMAND_PREPARE:
                return prepare_invalid(h);
        case COMMAND_RESERVED:
        case COMMAND_DEPRECATED_12:
        case COMMAND_DEPRECATED_21:
        case COMMAND_DEPRECATED_22:
        case COMMAND_DEPRECATED_23:
                return "command is reserved or retired";
        default:
                if (h->command >= COMMAND_COUNT)
                        return "command is undefined";
                return NULL;
        }
}
