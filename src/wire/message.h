/*
 * message.h: reference-counted message buffers from a pool reserved at start-up.
 *
 * A message is one header and its body in one buffer of WIRE_MESSAGE_SIZE_MAX bytes. A
 * received request can be journaled, pipelined and answered without copying: each holder takes
 * a reference and the buffer returns to the pool when the last one is dropped. The pool never
 * grows; running out is reported to the caller (who drops the message and lets the sender
 * retry), never a crash. The memory is mapped without reservation, so only the pages a message
 * really touched count towards the process's resident size.
 */
#ifndef TALLY_WIRE_MESSAGE_H
#define TALLY_WIRE_MESSAGE_H

#include "wire/header.h"

struct message {
        struct wire_header *header; /* == (struct wire_header *)buffer */
        uint8_t *buffer;            /* WIRE_MESSAGE_SIZE_MAX bytes, page aligned */
        uint32_t references;
        struct message *next_free;
};

struct message_pool {
        struct message *messages;
        uint8_t *memory;
        uint32_t count;
        uint32_t free_count;
        struct message *free_list;
};

int message_pool_init(struct message_pool *pool, uint32_t count);
void message_pool_deinit(struct message_pool *pool);

/* A message with one reference and a zeroed header, or NULL if the pool is exhausted. */
struct message *message_pool_get(struct message_pool *pool);
struct message *message_ref(struct message *message);
void message_unref(struct message_pool *pool, struct message *message);

static inline uint8_t *message_body(const struct message *message)
{
        return message->buffer + WIRE_HEADER_SIZE;
}

static inline uint32_t message_body_size(const struct message *message)
{
        return message->header->size - WIRE_HEADER_SIZE;
}

#endif
