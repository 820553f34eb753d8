/*
 * multi_batch.h: the multi-batch envelope of operations 138..145 (wire-protocol.md section 6.2).
 *
 * A body is the batches' elements back to back, then a trailer: 0xFF padding, one u16 element
 * count per batch in reverse order (the count of batch 0 sits just before the last u16), and the
 * batch count as the last u16. The trailer is padded at its front to a multiple of the element
 * size, so the whole body stays a multiple of it:
 *
 *     trailer_size(e, n) = ceil((2n + 2) / e) * e
 *
 * The decoder validates a body completely before it hands out a single batch; the encoder builds
 * a body in place in a caller's buffer (the counts are parked at the very end of the buffer while
 * batches are written, and moved behind the payload by multi_batch_encoder_finish()).
 */
#ifndef TALLY_WIRE_MULTI_BATCH_H
#define TALLY_WIRE_MULTI_BATCH_H

#include "lib/common.h"

/* 0xFFFF is reserved (it is the padding value), so at most 65534 batches. */
#define MULTI_BATCH_COUNT_MAX 65534u

/* Bytes of the trailer for `batch_count` batches of `element_size`-byte elements. */
uint32_t multi_batch_trailer_size(uint32_t element_size, uint32_t batch_count);

struct multi_batch_decoder {
        const uint8_t *body;
        const uint8_t *counts; /* the u16 counts: batch i at counts[-2 * (i + 1)] */
        uint32_t element_size;
        uint32_t payload_size;
        uint32_t payload_offset; /* of the next batch */
        uint16_t batch_count;
        uint16_t batch_index; /* of the next batch */
};

/*
 * Validates `body` and prepares to iterate over its batches. False if the body is not a valid
 * multi-batch encoding for elements of `element_size` bytes (a power of two).
 */
bool multi_batch_decode_init(struct multi_batch_decoder *decoder, const uint8_t *body,
                             uint32_t body_size, uint32_t element_size);

/* Element count of batch `index` (< batch_count). */
uint32_t multi_batch_decode_count(const struct multi_batch_decoder *decoder, uint32_t index);

/* The next batch, or false when every batch has been returned. */
bool multi_batch_decode_next(struct multi_batch_decoder *decoder, const uint8_t **batch,
                             uint32_t *element_count);

struct multi_batch_encoder {
        uint8_t *buffer;
        uint32_t buffer_size;
        uint32_t element_size;
        uint32_t payload_size;
        uint32_t batch_count;
        bool finished;
};

void multi_batch_encoder_init(struct multi_batch_encoder *encoder, uint8_t *buffer,
                              uint32_t buffer_size, uint32_t element_size);

/*
 * Where the next batch's elements go, and (in *element_max) how many fit while leaving room for
 * the trailer. NULL if not even an empty batch fits any more.
 */
uint8_t *multi_batch_encoder_writable(const struct multi_batch_encoder *encoder,
                                      uint32_t *element_max);

/* Closes the batch whose `element_count` elements were written at writable(). */
void multi_batch_encoder_add(struct multi_batch_encoder *encoder, uint32_t element_count);

/* Writes the trailer behind the payload; returns the body size. Needs at least one batch. */
uint32_t multi_batch_encoder_finish(struct multi_batch_encoder *encoder);

#endif
