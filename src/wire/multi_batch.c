/*
 * multi_batch.c: decoding and encoding of the multi-batch envelope; see multi_batch.h.
 *
 * Bytes are read and written with memcpy, so neither side depends on the buffer's alignment.
 */
#include "wire/multi_batch.h"

#include <string.h>

static uint16_t load_u16(const uint8_t *p)
{
        uint16_t v;
        memcpy(&v, p, sizeof(v));
        return v;
}

static void store_u16(uint8_t *p, uint16_t v)
{
        memcpy(p, &v, sizeof(v));
}

static bool power_of_two(uint32_t x)
{
        return x != 0 && (x & (x - 1)) == 0;
}

uint32_t multi_batch_trailer_size(uint32_t element_size, uint32_t batch_count)
{
        tally_assert(power_of_two(element_size));
        tally_assert(batch_count >= 1 && batch_count <= MULTI_BATCH_COUNT_MAX);
        uint32_t unpadded = 2 * batch_count + 2;
        return (unpadded + element_size - 1) / element_size * element_size;
}

bool multi_batch_decode_init(struct multi_batch_decoder *decoder, const uint8_t *body,
                             uint32_t body_size, uint32_t element_size)
{
        tally_assert(power_of_two(element_size));
        memset(decoder, 0, sizeof(*decoder));
        if (body_size < 2) return false;

        uint32_t batch_count = load_u16(body + body_size - 2);
        if (batch_count == 0 || batch_count > MULTI_BATCH_COUNT_MAX) return false;

        uint32_t trailer_size = multi_batch_trailer_size(element_size, batch_count);
        if (body_size < trailer_size) return false;

        uint32_t trailer_offset = body_size - trailer_size;
        uint32_t padding_size = trailer_size - (2 * batch_count + 2);
        for (uint32_t i = 0; i < padding_size; i++) {
                if (body[trailer_offset + i] != 0xFF) return false;
        }

        const uint8_t *counts = body + body_size - 2;
        uint64_t element_total = 0;
        for (uint32_t i = 0; i < batch_count; i++) {
                element_total += load_u16(counts - 2 * (i + 1));
        }
        if (element_total * element_size != trailer_offset) return false;

        decoder->body = body;
        decoder->counts = counts;
        decoder->element_size = element_size;
        decoder->payload_size = trailer_offset;
        decoder->payload_offset = 0;
        decoder->batch_count = (uint16_t)batch_count;
        decoder->batch_index = 0;
        return true;
}

uint32_t multi_batch_decode_count(const struct multi_batch_decoder *decoder, uint32_t index)
{
        tally_assert(index < decoder->batch_count);
        return load_u16(decoder->counts - 2 * (index + 1));
}

bool multi_batch_decode_next(struct multi_batch_decoder *decoder, const uint8_t **batch,
                             uint32_t *element_count)
{
        if (decoder->batch_index == decoder->batch_count) {
                tally_assert(decoder->payload_offset == decoder->payload_size);
                return false;
        }
        uint32_t count = multi_batch_decode_count(decoder, decoder->batch_index);
        uint32_t size = count * decoder->element_size;
        tally_assert(decoder->payload_offset + size <= decoder->payload_size);
        *batch = decoder->body + decoder->payload_offset;
        *element_count = count;
        decoder->payload_offset += size;
        decoder->batch_index++;
        return true;
}

void multi_batch_encoder_init(struct multi_batch_encoder *encoder, uint8_t *buffer,
                              uint32_t buffer_size, uint32_t element_size)
{
        tally_assert(power_of_two(element_size));
        tally_assert(buffer_size % element_size == 0);
        encoder->buffer = buffer;
        encoder->buffer_size = buffer_size;
        encoder->element_size = element_size;
        encoder->payload_size = 0;
        encoder->batch_count = 0;
        encoder->finished = false;
}

uint8_t *multi_batch_encoder_writable(const struct multi_batch_encoder *encoder,
                                      uint32_t *element_max)
{
        tally_assert(!encoder->finished);
        *element_max = 0;
        if (encoder->batch_count >= MULTI_BATCH_COUNT_MAX) return NULL;
        uint32_t trailer = multi_batch_trailer_size(encoder->element_size,
                                                    encoder->batch_count + 1);
        if (encoder->payload_size + trailer > encoder->buffer_size) return NULL;
        *element_max = (encoder->buffer_size - encoder->payload_size - trailer) /
                       encoder->element_size;
        return encoder->buffer + encoder->payload_size;
}

void multi_batch_encoder_add(struct multi_batch_encoder *encoder, uint32_t element_count)
{
        uint32_t element_max = 0;
        uint8_t *writable = multi_batch_encoder_writable(encoder, &element_max);
        tally_assert(writable != NULL);
        tally_assert(element_count <= element_max);
        tally_assert(element_count <= UINT16_MAX - 1);
        /* Counts are parked at the end of the buffer, batch 0 nearest the end, exactly where
         * they would sit if the payload filled the buffer; finish() moves them. */
        uint32_t slot = encoder->buffer_size - 2 - 2 * (encoder->batch_count + 1);
        encoder->payload_size += element_count * encoder->element_size;
        tally_assert(encoder->payload_size <= slot);
        store_u16(encoder->buffer + slot, (uint16_t)element_count);
        encoder->batch_count++;
}

uint32_t multi_batch_encoder_finish(struct multi_batch_encoder *encoder)
{
        tally_assert(!encoder->finished);
        tally_assert(encoder->batch_count >= 1);
        uint32_t n = encoder->batch_count;
        uint32_t items_size = 2 * n; /* the counts, without the batch count */
        uint32_t trailer_size = multi_batch_trailer_size(encoder->element_size, n);
        uint32_t trailer_offset = encoder->payload_size;
        tally_assert(trailer_offset + trailer_size <= encoder->buffer_size);

        uint8_t *counts_parked = encoder->buffer + encoder->buffer_size - 2 - items_size;
        uint8_t *counts_final = encoder->buffer + trailer_offset + trailer_size - 2 - items_size;
        memmove(counts_final, counts_parked, items_size);
        memset(encoder->buffer + trailer_offset, 0xFF, trailer_size - 2 - items_size);
        store_u16(encoder->buffer + trailer_offset + trailer_size - 2, (uint16_t)n);
        encoder->finished = true;
        return trailer_offset + trailer_size;
}
