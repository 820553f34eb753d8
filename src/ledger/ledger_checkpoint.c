/*
 * ledger_checkpoint.c: the whole ledger state as one versioned, checksummed byte stream.
 *
 * Layout (all little-endian, no implicit padding):
 *
 *   header (64 bytes): magic "TALLYLDG", format version, the element count of every section.
 *   sections, in order: accounts, account_index, transfers, transfer_status, failed_ids,
 *     chunks, history, expiry; each is the used prefix of the in-memory array, byte for byte.
 *   trailer (16 bytes): checksum() of every byte before it.
 *
 * Every part (the header and each section) starts at a multiple of LEDGER_CHECKPOINT_ALIGN
 * in the stream, zero-padded, so that a section which only grew since the previous checkpoint
 * yields the same leading blocks again and storage can share them instead of rewriting them.
 *
 * The hash tables are not written: ledger_checkpoint_read() rebuilds them from the arrays, which
 * gives the same lookups (a table's slot layout is not observable). Every section except
 * accounts, account_index, transfer_status and the expiry heap is append-only, so a later
 * incremental checkpoint can write just the tails appended since the previous one plus the
 * changed accounts and statuses.
 */
#include "ledger/ledger_internal.h"

#include <string.h>

#include "lib/log.h"
#include "wire/checksum.h"

#define CHECKPOINT_MAGIC "TALLYLDG"
#define CHECKPOINT_VERSION 2u
/*
 * The whole blocks of the append-only sections were handed over with write_stable() and are
 * left out of the trailer checksum: the storage checksums every block it stores, and leaving
 * them out is what lets a checkpoint skip re-reading history that has not changed.
 */
#define CHECKPOINT_FLAG_STABLE_UNCHECKSUMMED 0x1u

static bool section_append_only(int i)
{
        return i == 2 || i == 4 || i == 6; /* transfers, failed ids, history */
}

struct checkpoint_header {
        char magic[8];
        uint32_t version;
        uint32_t account_count;
        uint32_t transfer_count;
        uint32_t failed_count;
        uint32_t chunk_count;
        uint32_t expiry_count;
        uint32_t pending_live;
        uint32_t flags; /* CHECKPOINT_FLAG_* */
        uint64_t history_count;
        uint8_t reserved[16];
};
_Static_assert(sizeof(struct checkpoint_header) == 64, "checkpoint header size");

struct section {
        void *data;
        uint64_t size;
};

static void sections_of(struct ledger *ledger, const struct checkpoint_header *h,
                        struct section sections[8])
{
        sections[0] = (struct section){ledger->accounts,
                                       (uint64_t)h->account_count * sizeof(struct wire_account)};
        sections[1] = (struct section){ledger->account_index,
                                       (uint64_t)h->account_count * sizeof(struct account_index)};
        sections[2] = (struct section){
                ledger->transfers, (uint64_t)h->transfer_count * sizeof(struct wire_transfer)};
        sections[3] = (struct section){ledger->transfer_status, h->transfer_count};
        sections[4] = (struct section){ledger->failed_ids, (uint64_t)h->failed_count * sizeof(u128)};
        sections[5] = (struct section){ledger->chunks,
                                       (uint64_t)h->chunk_count * sizeof(struct edge_chunk)};
        sections[6] = (struct section){ledger->history,
                                       h->history_count * sizeof(struct history_record)};
        sections[7] = (struct section){ledger->expiry,
                                       (uint64_t)h->expiry_count * sizeof(struct expiry_entry)};
}

/* Streams move data in pieces of at most this size, so a callback never sees huge sizes. */
#define PIECE_SIZE (1u << 20)

static int stream_write(struct ledger_stream *stream, struct checksum_stream *sum,
                        const void *data, uint64_t size)
{
        const uint8_t *p = data;
        while (size > 0) {
                size_t piece = size < PIECE_SIZE ? (size_t)size : PIECE_SIZE;
                checksum_stream_add(sum, p, piece);
                if (stream->write(stream->context, p, piece) != 0) return -1;
                p += piece;
                size -= piece;
        }
        return 0;
}

/* Zero bytes up to the next multiple of LEDGER_CHECKPOINT_ALIGN after `written` bytes. */
static int stream_pad(struct ledger_stream *stream, struct checksum_stream *sum, uint64_t written)
{
        static const uint8_t zeros[4096];
        uint64_t pad = (LEDGER_CHECKPOINT_ALIGN - written % LEDGER_CHECKPOINT_ALIGN) %
                       LEDGER_CHECKPOINT_ALIGN;
        while (pad > 0) {
                size_t piece = pad < sizeof(zeros) ? (size_t)pad : sizeof(zeros);
                checksum_stream_add(sum, zeros, piece);
                if (stream->write(stream->context, zeros, piece) != 0) return -1;
                pad -= piece;
        }
        return 0;
}

static int stream_read(struct ledger_stream *stream, struct checksum_stream *sum, void *data,
                       uint64_t size)
{
        uint8_t *p = data;
        while (size > 0) {
                size_t piece = size < PIECE_SIZE ? (size_t)size : PIECE_SIZE;
                if (stream->read(stream->context, p, piece) != 0) return -1;
                checksum_stream_add(sum, p, piece);
                p += piece;
                size -= piece;
        }
        return 0;
}

/* Reads and checks the zero padding that follows `read` bytes. */
static int stream_skip_pad(struct ledger_stream *stream, struct checksum_stream *sum,
                           uint64_t read_size)
{
        uint8_t scratch[4096];
        uint64_t pad = (LEDGER_CHECKPOINT_ALIGN - read_size % LEDGER_CHECKPOINT_ALIGN) %
                       LEDGER_CHECKPOINT_ALIGN;
        while (pad > 0) {
                size_t piece = pad < sizeof(scratch) ? (size_t)pad : sizeof(scratch);
                if (stream->read(stream->context, scratch, piece) != 0) return -1;
                checksum_stream_add(sum, scratch, piece);
                for (size_t i = 0; i < piece; i++) {
                        if (scratch[i] != 0) return -1;
                }
                pad -= piece;
        }
        return 0;
}

int ledger_checkpoint_write(const struct ledger *ledger, struct ledger_stream *stream)
{
        tally_assert(!ledger->chain_open);
        struct checkpoint_header h;
        memset(&h, 0, sizeof(h));
        memcpy(h.magic, CHECKPOINT_MAGIC, sizeof(h.magic));
        h.version = CHECKPOINT_VERSION;
        h.account_count = ledger->account_count;
        h.transfer_count = ledger->transfer_count;
        h.failed_count = ledger->failed_count;
        h.chunk_count = ledger->chunk_count;
        h.expiry_count = ledger->expiry_count;
        h.pending_live = ledger->pending_live;
        h.history_count = ledger->history_count;
        if (stream->write_stable != NULL)
                h.flags |= CHECKPOINT_FLAG_STABLE_UNCHECKSUMMED;

        struct checksum_stream sum;
        checksum_stream_init(&sum);
        if (stream_write(stream, &sum, &h, sizeof(h)) != 0) return -1;
        if (stream_pad(stream, &sum, sizeof(h)) != 0) return -1;
        struct section sections[8];
        /* sections_of() only reads the pointers; the arrays are not modified. */
        sections_of((struct ledger *)ledger, &h, sections);
        for (int i = 0; i < 8; i++) {
                const uint8_t *data = sections[i].data;
                uint64_t size = sections[i].size;
                /* Transfers, failed ids and history are append-only: their whole blocks can be
                 * referenced in place rather than copied. */
                if (section_append_only(i) && stream->write_stable != NULL) {
                        uint64_t whole = size / LEDGER_CHECKPOINT_ALIGN * LEDGER_CHECKPOINT_ALIGN;
                        if (whole > 0) {
                                if (stream->write_stable(stream->context, data, whole) != 0)
                                        return -1;
                        }
                        data += whole;
                        size -= whole;
                }
                if (stream_write(stream, &sum, data, size) != 0) return -1;
                if (stream_pad(stream, &sum, sections[i].size) != 0) return -1;
        }
        u128 checksum_value = checksum_stream_final(&sum);
        if (stream->write(stream->context, &checksum_value, sizeof(checksum_value)) != 0) return -1;
        return 0;
}

/* Cross-references that must hold in any stream this code wrote. */
static bool checkpoint_consistent(const struct ledger *ledger)
{
        for (uint32_t i = 0; i < ledger->account_count; i++) {
                const struct account_index *index = &ledger->account_index[i];
                if (index->head > ledger->chunk_count || index->tail > ledger->chunk_count)
                        return false;
                if ((index->head == 0) != (index->tail == 0)) return false;
        }
        for (uint32_t i = 0; i < ledger->chunk_count; i++) {
                const struct edge_chunk *chunk = &ledger->chunks[i];
                if (chunk->count == 0 || chunk->count > CHUNK_ITEMS) return false;
                if (chunk->prev > ledger->chunk_count || chunk->next > ledger->chunk_count)
                        return false;
                for (uint32_t k = 0; k < chunk->count; k++) {
                        if (chunk->items[k] >= ledger->transfer_count) return false;
                }
        }
        for (uint64_t i = 0; i < ledger->history_count; i++) {
                if (ledger->history[i].transfer >= ledger->transfer_count) return false;
        }
        for (uint32_t i = 0; i < ledger->expiry_count; i++) {
                if (ledger->expiry[i].transfer >= ledger->transfer_count) return false;
        }
        for (uint32_t i = 0; i < ledger->transfer_count; i++) {
                if (ledger->transfer_status[i] > TRANSFER_STATUS_EXPIRED) return false;
        }
        return true;
}

int ledger_checkpoint_read(struct ledger *ledger, struct ledger_stream *stream)
{
        ledger_reset(ledger);
        struct checkpoint_header h;
        struct checksum_stream sum;
        checksum_stream_init(&sum);
        const char *why = NULL;
        if (stream_read(stream, &sum, &h, sizeof(h)) != 0) {
                why = "read failed";
                goto fail;
        }
        if (memcmp(h.magic, CHECKPOINT_MAGIC, sizeof(h.magic)) != 0) {
                why = "not a ledger checkpoint";
                goto fail;
        }
        if (h.version != CHECKPOINT_VERSION) {
                why = "unknown format version";
                goto fail;
        }
        if (stream_skip_pad(stream, &sum, sizeof(h)) != 0) {
                why = "bad padding after the header";
                goto fail;
        }
        if (h.account_count > ledger->accounts_max ||
            (uint64_t)h.transfer_count + h.failed_count > ledger->transfers_max ||
            h.chunk_count > ledger->chunks_max || h.history_count > ledger->history_max ||
            h.expiry_count > ledger->transfers_max || h.pending_live > h.transfer_count) {
                why = "larger than this ledger's capacities";
                goto fail;
        }
        /* Counts first, so that a failure part-way still lets ledger_reset() clear it all. */
        ledger->account_count = h.account_count;
        ledger->transfer_count = h.transfer_count;
        ledger->failed_count = h.failed_count;
        ledger->chunk_count = h.chunk_count;
        ledger->history_count = h.history_count;
        ledger->expiry_count = h.expiry_count;
        ledger->pending_live = h.pending_live;

        if ((h.flags & ~CHECKPOINT_FLAG_STABLE_UNCHECKSUMMED) != 0) {
                why = "unknown flags";
                goto fail;
        }
        struct section sections[8];
        sections_of(ledger, &h, sections);
        for (int i = 0; i < 8; i++) {
                uint8_t *data = sections[i].data;
                uint64_t size = sections[i].size;
                if (section_append_only(i) && (h.flags & CHECKPOINT_FLAG_STABLE_UNCHECKSUMMED)) {
                        uint64_t whole = size / LEDGER_CHECKPOINT_ALIGN * LEDGER_CHECKPOINT_ALIGN;
                        struct checksum_stream ignored;
                        checksum_stream_init(&ignored);
                        if (stream_read(stream, &ignored, data, whole) != 0) {
                                why = "read failed";
                                goto fail;
                        }
                        data += whole;
                        size -= whole;
                }
                if (stream_read(stream, &sum, data, size) != 0) {
                        why = "read failed";
                        goto fail;
                }
                if (stream_skip_pad(stream, &sum, sections[i].size) != 0) {
                        why = "bad padding after a section";
                        goto fail;
                }
        }
        u128 expected = checksum_stream_final(&sum);
        u128 actual;
        if (stream->read(stream->context, &actual, sizeof(actual)) != 0) {
                why = "read failed";
                goto fail;
        }
        if (actual != expected) {
                why = "checksum mismatch";
                goto fail;
        }
        if (!checkpoint_consistent(ledger)) {
                why = "inconsistent content";
                goto fail;
        }
        ledger_rebuild_tables(ledger);
        return 0;
fail:
        log_error("ledger: checkpoint refused reason=\"%s\"", why);
        ledger_reset(ledger);
        return -1;
}

int ledger_memory_read(void *context, void *data, size_t size)
{
        struct ledger_memory_reader *r = context;
        if (size > r->size - r->offset)
                return -1;
        memcpy(data, r->data + r->offset, size);
        r->offset += size;
        return 0;
}
