/*
 * header.h: the 256-byte message header of TigerBeetle's protocol, every command's layout, and
 * the checks a receiver makes before it trusts a message (wire-protocol.md sections 1-2).
 *
 * Bytes 0..127 are the same for every command (the frame); bytes 128..255 depend on the
 * command and are reached through the union. Validation is a pure function returning a short
 * reason, so the network layer can log exactly why it dropped or closed.
 */
#ifndef TALLY_WIRE_HEADER_H
#define TALLY_WIRE_HEADER_H

#include "lib/common.h"

#define WIRE_HEADER_SIZE 256u
#define WIRE_MESSAGE_SIZE_MAX 1048576u
#define WIRE_BODY_SIZE_MAX (WIRE_MESSAGE_SIZE_MAX - WIRE_HEADER_SIZE)
/* `--development` limits requests to 32 KiB, as TigerBeetle does. */
#define WIRE_MESSAGE_SIZE_MAX_DEVELOPMENT 32768u

/* Releases are major << 16 | minor << 8 | patch. */
#define WIRE_RELEASE(major, minor, patch) (((uint32_t)(major) << 16) | ((minor) << 8) | (patch))
#define WIRE_RELEASE_SERVER WIRE_RELEASE(0, 16, 68)     /* 4164: what we report */
#define WIRE_RELEASE_CLIENT_MIN WIRE_RELEASE(0, 16, 4)  /* 4100: oldest client accepted */
#define WIRE_RELEASE_NODE_CLIENT WIRE_RELEASE(0, 16, 66) /* 4162: tigerbeetle-node we test */

/* Replicas the client's round-trip table holds; a pong's replica index must stay below. */
#define WIRE_REPLICAS_MAX 6u

enum wire_command {
        COMMAND_RESERVED = 0,
        COMMAND_PING = 1,
        COMMAND_PONG = 2,
        COMMAND_PING_CLIENT = 3,
        COMMAND_PONG_CLIENT = 4,
        COMMAND_REQUEST = 5,
        COMMAND_PREPARE = 6,
        COMMAND_PREPARE_OK = 7,
        COMMAND_REPLY = 8,
        COMMAND_COMMIT = 9,
        COMMAND_START_VIEW_CHANGE = 10,
        COMMAND_DO_VIEW_CHANGE = 11,
        COMMAND_DEPRECATED_12 = 12,
        COMMAND_REQUEST_START_VIEW = 13,
        COMMAND_REQUEST_HEADERS = 14,
        COMMAND_REQUEST_PREPARE = 15,
        COMMAND_REQUEST_REPLY = 16,
        COMMAND_HEADERS = 17,
        COMMAND_EVICTION = 18,
        COMMAND_REQUEST_BLOCKS = 19,
        COMMAND_BLOCK = 20,
        COMMAND_DEPRECATED_21 = 21,
        COMMAND_DEPRECATED_22 = 22,
        COMMAND_DEPRECATED_23 = 23,
        COMMAND_START_VIEW = 24,
        COMMAND_COUNT = 25, /* 25..255 are undefined */
};

enum wire_eviction_reason {
        EVICTION_RESERVED = 0,
        EVICTION_NO_SESSION = 1,
        EVICTION_CLIENT_RELEASE_TOO_LOW = 2,
        EVICTION_CLIENT_RELEASE_TOO_HIGH = 3,
        EVICTION_INVALID_REQUEST_OPERATION = 4,
        EVICTION_INVALID_REQUEST_BODY = 5,
        EVICTION_INVALID_REQUEST_BODY_SIZE = 6,
        EVICTION_SESSION_TOO_LOW = 7,
        EVICTION_SESSION_RELEASE_MISMATCH = 8,
};

struct wire_request {
        u128 parent;
        u128 parent_padding;
        u128 client;
        uint64_t session;
        uint64_t timestamp;
        uint32_t request;
        uint8_t operation;
        uint8_t previous_request_latency_padding[3];
        uint32_t previous_request_latency;
        uint8_t reserved[52];
};

struct wire_reply {
        u128 request_checksum;
        u128 request_checksum_padding;
        u128 context;
        u128 context_padding;
        u128 client;
        uint64_t op;
        uint64_t commit;
        uint64_t timestamp;
        uint32_t request;
        uint8_t operation;
        uint8_t reserved[19];
};

struct wire_ping_client {
        u128 client;
        uint64_t ping_timestamp_monotonic;
        uint8_t reserved[104];
};

struct wire_pong_client {
        uint64_t ping_timestamp_monotonic;
        uint8_t reserved[120];
};

struct wire_eviction {
        u128 client;
        uint8_t reserved[111];
        uint8_t reason;
};

struct wire_prepare {
        u128 parent;
        u128 parent_padding;
        u128 request_checksum;
        u128 request_checksum_padding;
        u128 checkpoint_id;
        u128 client;
        uint64_t op;
        uint64_t commit;
        uint64_t timestamp;
        uint32_t request;
        uint8_t operation;
        uint8_t reserved[3];
};

struct wire_prepare_ok {
        u128 parent;
        u128 parent_padding;
        u128 prepare_checksum;
        u128 prepare_checksum_padding;
        u128 checkpoint_id;
        u128 client;
        uint64_t op;
        uint64_t commit_min;
        uint64_t timestamp;
        uint32_t request;
        uint8_t operation;
        uint8_t reserved[3];
};

struct wire_commit {
        u128 commit_checksum;
        u128 commit_checksum_padding;
        u128 checkpoint_id;
        uint64_t checkpoint_op;
        uint64_t commit;
        uint64_t timestamp_monotonic;
        uint8_t reserved[56];
};

struct wire_start_view {
        u128 nonce;
        uint64_t op;
        uint64_t commit_max;
        uint64_t checkpoint_op;
        /* Tally's own: the checksum of the prepare at op, little-endian (0: unknown). A log
         * that ends at its sender's checkpoint carries no header of op. */
        uint8_t op_checksum[16];
        uint8_t reserved[72];
};

struct wire_header {
        u128 checksum;
        u128 checksum_padding;
        u128 checksum_body;
        u128 checksum_body_padding;
        u128 nonce_reserved;
        u128 cluster;
        uint32_t size;
        uint32_t epoch;
        uint32_t view;
        uint32_t release;
        uint16_t protocol;
        uint8_t command;
        uint8_t replica;
        uint8_t reserved_frame[12];
        union {
                struct wire_request request;
                struct wire_reply reply;
                struct wire_ping_client ping_client;
                struct wire_pong_client pong_client;
                struct wire_eviction eviction;
                struct wire_prepare prepare;
                struct wire_prepare_ok prepare_ok;
                struct wire_commit commit;
                struct wire_start_view start_view;
                uint8_t raw[128];
        };
};

/* Body of a register request and of its reply. */
struct wire_register_request {
        uint32_t batch_size_limit; /* 0 from clients */
        uint8_t reserved[252];
};
struct wire_register_result {
        uint32_t batch_size_limit;
        uint8_t reserved[60];
};

/* True for the commands only replicas send one another (prepare included). */
bool wire_command_between_replicas(uint8_t command);

/* Name of a command for logs ("request", "command_37" for undefined values). */
const char *wire_command_name(uint8_t command);

/* Header checksum over bytes 16..255 and body checksum over the body. */
void wire_header_set_checksum_body(struct wire_header *header, const void *body, uint32_t size);
void wire_header_set_checksum(struct wire_header *header);
bool wire_header_checksum_valid(const struct wire_header *header);
bool wire_body_checksum_valid(const struct wire_header *header, const void *body);

/* A reply's context: the header checksum computed with context = 0 (wire-protocol.md 2.5). */
void wire_reply_set_context(struct wire_header *header);

/*
 * The receiver's validity rules (section 2.3 and the per-command rules). Returns NULL when the
 * header is valid, else a short reason for a log line. Only defined commands are accepted;
 * undefined and retired ones are invalid. Assumes the checksum was already verified.
 */
const char *wire_header_invalid(const struct wire_header *header);

/* Starts a header: zeroes it and sets the frame fields every message carries. */
void wire_header_init(struct wire_header *header, uint8_t command, u128 cluster, uint32_t view,
                      uint32_t release, uint8_t replica);

/* The two halves of a u128 for printing: "%016llx%016llx". */
#define U128_HI(x) ((unsigned long long)((x) >> 64))
#define U128_LO(x) ((unsigned long long)(x))

#endif
