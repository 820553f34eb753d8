/*
 * ledger_checkpoint.c: the whole ledger state as one versioned, checksummed byte stream.
 *
 * Why: tools and tests load a ledger from a stream (state sync and backups still move the
 * replica's checkpoint as one), and a data file written before the ledger lived in trees holds
 * its state in the older stream format, which is read here and converted.
 *
 * Format 3 (written): header (64 bytes: magic "TALLYLG3", version, tree count) and the
 * counters (128 bytes); then for every tree, in tree id order: its id and value size, then its
 * values in key order in runs of [u32 count][values], a run of 0 ending the tree; a trailer of
 * 16 bytes: checksum() of every byte before it. Reading it back puts every value into an empty
 * forest, so the state is the same whatever the writer's tables were.
 *
 * Format 2 (read only, "TALLYLDG" version 2): the arrays of the in-memory ledger, each part at a
 * multiple of LEDGER_CHECKPOINT_ALIGN (accounts, account_index, transfers, transfer_status,
 * failed_ids, chunks, history, expiry); whole blocks of the append-only sections may be left out
 * of the trailer checksum (flag 1).
 */
#include "ledger/ledger_internal.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "wire/checksum.h"

#define STREAM_MAGIC "TALLYLG3"
#define STREAM_VERSION 3u
#define OLD_MAGIC "TALLYLDG"
#define OLD_VERSION 2u
#define OLD_FLAG_STABLE_UNCHECKSUMMED 0x1u

struct stream_header {
        char magic[8];
        uint32_t version;
        uint32_t tree_count;
        uint8_t reserved[48];
};
_Static_assert(sizeof(struct stream_header) == 64, "stream header size");

struct old_header {
        char magic[8];
        uint32_t version;
        uint32_t account_count;
        uint32_t transfer_count;
        uint32_t failed_count;
        uint32_t chunk_count;
        uint32_t expiry_count;
        uint32_t pending_live;
        uint32_t flags;
        uint64_t history_count;
        uint8_t reserved[16];
};
_Static_assert(sizeof(struct old_header) == 64, "old header size");

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

/* ---- format 3 ----------------------------------------------------------------------------- */

static struct lsm_tree *forest_tree(struct ledger *ledger, uint32_t id)
{
        return id < LSM_FOREST_TREES_MAX ? ledger->forest.trees[id] : NULL;
}

#define RUN_VALUES_MAX 4096u

struct dump {
        struct ledger_stream *stream;
        struct checksum_stream *sum;
        uint8_t *run; /* RUN_VALUES_MAX values */
        uint32_t count;
        uint32_t value_size;
        bool failed;
};

static int dump_run(struct dump *d)
{
        if (d->count == 0) return 0;
        uint32_t count = d->count;
        d->count = 0;
        if (stream_write(d->stream, d->sum, &count, sizeof(count)) != 0) return -1;
        return stream_write(d->stream, d->sum, d->run, (uint64_t)count * d->value_size);
}

static bool dump_value(void *context, const void *value)
{
        struct dump *d = context;
        memcpy(d->run + (size_t)d->count * d->value_size, value, d->value_size);
        if (++d->count == RUN_VALUES_MAX && dump_run(d) != 0) {
                d->failed = true;
                return false;
        }
        return true;
}

int ledger_checkpoint_write(struct ledger *ledger, struct ledger_stream *stream)
{
        tally_assert(!ledger->chain_open && ledger->ws.count == 0);
        struct checksum_stream sum;
        checksum_stream_init(&sum);
        struct stream_header h;
        memset(&h, 0, sizeof(h));
        memcpy(h.magic, STREAM_MAGIC, sizeof(h.magic));
        h.version = STREAM_VERSION;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++)
                h.tree_count += forest_tree(ledger, id) != NULL;
        if (stream_write(stream, &sum, &h, sizeof(h)) != 0 ||
            stream_write(stream, &sum, &ledger->counters, sizeof(ledger->counters)) != 0)
                return -1;
        struct dump d = {.stream = stream, .sum = &sum};
        d.run = malloc((size_t)RUN_VALUES_MAX * LSM_VALUE_SIZE_MAX);
        if (d.run == NULL) return -1;
        int rc = 0;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX && rc == 0; id++) {
                struct lsm_tree *tree = forest_tree(ledger, id);
                if (tree == NULL) continue;
                uint32_t ident[2] = {id, tree->layout.value_size};
                d.value_size = tree->layout.value_size;
                d.count = 0;
                uint32_t end = 0;
                if (stream_write(stream, &sum, ident, sizeof(ident)) != 0 ||
                    lsm_tree_scan(tree, NULL, NULL, false, dump_value, &d) < 0 || d.failed ||
                    dump_run(&d) != 0 || stream_write(stream, &sum, &end, sizeof(end)) != 0)
                        rc = -1;
        }
        free(d.run);
        if (rc != 0) return -1;
        u128 checksum_value = checksum_stream_final(&sum);
        return stream->write(stream->context, &checksum_value, sizeof(checksum_value));
}

/* Puts a value, flushing the tree first when its memtable is full. */
static void tree_load(struct ledger *ledger, struct lsm_tree *tree, const void *value)
{
        if (!lsm_tree_has_room(tree, 1) && !(lsm_tree_flush(tree) && lsm_tree_compact(tree)))
                ledger_fault(ledger, "loading a checkpoint");
        lsm_tree_put(tree, value);
}

static const char *read_v3(struct ledger *ledger, struct ledger_stream *stream,
                           struct checksum_stream *sum, const struct stream_header *h,
                           uint8_t *run)
{
        if (stream_read(stream, sum, &ledger->counters, sizeof(ledger->counters)) != 0)
                return "read failed";
        uint32_t trees = 0;
        for (uint32_t id = 0; id < LSM_FOREST_TREES_MAX; id++)
                trees += forest_tree(ledger, id) != NULL;
        if (h->tree_count != trees) return "another set of trees";
        for (uint32_t t = 0; t < trees; t++) {
                uint32_t ident[2];
                if (stream_read(stream, sum, ident, sizeof(ident)) != 0) return "read failed";
                struct lsm_tree *tree = forest_tree(ledger, ident[0]);
                if (tree == NULL || tree->layout.value_size != ident[1]) return "unknown tree";
                const uint8_t *last = NULL;
                for (;;) {
                        uint32_t count;
                        if (stream_read(stream, sum, &count, sizeof(count)) != 0)
                                return "read failed";
                        if (count == 0) break;
                        if (count > RUN_VALUES_MAX) return "run too long";
                        if (stream_read(stream, sum, run, (uint64_t)count * ident[1]) != 0)
                                return "read failed";
                        for (uint32_t i = 0; i < count; i++) {
                                const uint8_t *v = run + (size_t)i * ident[1];
                                if (last != NULL &&
                                    tree->layout.compare(lsm_key_of(&tree->layout, last),
                                                         lsm_key_of(&tree->layout, v)) >= 0)
                                        return "values out of order";
                                tree_load(ledger, tree, v);
                                last = v;
                        }
                        /* The run buffer is reused: keep the last key for the order check. */
                        memcpy(run + (size_t)RUN_VALUES_MAX * LSM_VALUE_SIZE_MAX, last, ident[1]);
                        last = run + (size_t)RUN_VALUES_MAX * LSM_VALUE_SIZE_MAX;
                }
        }
        return NULL;
}

/* ---- format 2 ----------------------------------------------------------------------------- */

/* Reads `size` bytes of a section into `data` (NULL: skipped) and the padding after it. */
static int old_section(struct ledger_stream *stream, struct checksum_stream *sum, bool stable,
                       void *data, uint64_t size)
{
        uint8_t scratch[4096];
        uint64_t whole = stable ? size / LEDGER_CHECKPOINT_ALIGN * LEDGER_CHECKPOINT_ALIGN : 0;
        uint64_t padded = (size + LEDGER_CHECKPOINT_ALIGN - 1) / LEDGER_CHECKPOINT_ALIGN *
                          LEDGER_CHECKPOINT_ALIGN;
        struct checksum_stream ignored;
        checksum_stream_init(&ignored);
        for (uint64_t done = 0; done < padded;) {
                size_t piece = MIN(sizeof(scratch), padded - done);
                if (done < whole) piece = MIN(piece, whole - done);
                uint8_t *into = data != NULL && done < size ? (uint8_t *)data + done : scratch;
                if (done < size) piece = MIN(piece, size - done);
                if (stream->read(stream->context, into, piece) != 0) return -1;
                if (done >= whole) checksum_stream_add(sum, into, piece);
                if (done >= size) {
                        for (size_t i = 0; i < piece; i++)
                                if (into[i] != 0) return -1;
                }
                done += piece;
        }
        return 0;
}

struct old_history {
        uint32_t transfer;
        uint32_t side;
        uint64_t reserved;
        u128 debits_pending;
        u128 debits_posted;
        u128 credits_pending;
        u128 credits_posted;
};

struct old_expiry {
        uint64_t expires_at;
        uint64_t timestamp;
        uint32_t transfer;
        uint32_t reserved;
};

static const char *read_v2(struct ledger *ledger, struct ledger_stream *stream,
                           struct checksum_stream *sum, const struct old_header *h)
{
        if ((h->flags & ~OLD_FLAG_STABLE_UNCHECKSUMMED) != 0) return "unknown flags";
        bool stable = (h->flags & OLD_FLAG_STABLE_UNCHECKSUMMED) != 0;
        {
                /* The header's 64 bytes are read; zeros pad it to LEDGER_CHECKPOINT_ALIGN. */
                uint8_t scratch[4096];
                for (uint64_t left = LEDGER_CHECKPOINT_ALIGN - sizeof(*h); left > 0;) {
                        size_t piece = MIN(sizeof(scratch), left);
                        if (stream->read(stream->context, scratch, piece) != 0)
                                return "read failed";
                        checksum_stream_add(sum, scratch, piece);
                        for (size_t i = 0; i < piece; i++)
                                if (scratch[i] != 0) return "bad padding after the header";
                        left -= piece;
                }
        }
        const char *why = NULL;
        struct wire_account *accounts = malloc((size_t)h->account_count * 128 + 1);
        struct wire_transfer *transfers = malloc((size_t)h->transfer_count * 128 + 1);
        uint8_t *status = malloc((size_t)h->transfer_count + 1);
        u128 *failed = malloc((size_t)h->failed_count * 16 + 1);
        struct old_history *history = malloc(h->history_count * sizeof(*history) + 1);
        struct old_expiry *expiry = malloc((size_t)h->expiry_count * sizeof(*expiry) + 1);
        if (!accounts || !transfers || !status || !failed || !history || !expiry) {
                why = "out of memory";
                goto done;
        }
        if (old_section(stream, sum, false, accounts, (uint64_t)h->account_count * 128) ||
            old_section(stream, sum, false, NULL, (uint64_t)h->account_count * 8) ||
            old_section(stream, sum, stable, transfers, (uint64_t)h->transfer_count * 128) ||
            old_section(stream, sum, false, status, h->transfer_count) ||
            old_section(stream, sum, stable, failed, (uint64_t)h->failed_count * 16) ||
            old_section(stream, sum, false, NULL, (uint64_t)h->chunk_count * 64) ||
            old_section(stream, sum, stable, history, h->history_count * sizeof(*history)) ||
            old_section(stream, sum, false, expiry, (uint64_t)h->expiry_count * sizeof(*expiry))) {
                why = "read failed or bad padding";
                goto done;
        }
        u128 expected = checksum_stream_final(sum), actual;
        if (stream->read(stream->context, &actual, sizeof(actual)) != 0 || actual != expected) {
                why = "checksum mismatch";
                goto done;
        }
        struct ledger_counters *n = &ledger->counters;
        for (uint32_t i = 0; i < h->account_count; i++) {
                if (i > 0 && accounts[i].timestamp <= accounts[i - 1].timestamp) {
                        why = "accounts out of order";
                        goto done;
                }
                if (!lsm_groove_has_room(&ledger->accounts, 1)) ledger_flush(ledger);
                lsm_groove_insert(&ledger->accounts, &accounts[i]);
        }
        for (uint32_t i = 0; i < h->transfer_count; i++) {
                if ((i > 0 && transfers[i].timestamp <= transfers[i - 1].timestamp) ||
                    status[i] > TRANSFER_STATUS_EXPIRED) {
                        why = "transfers out of order";
                        goto done;
                }
                if (!lsm_groove_has_room(&ledger->transfers, 1) ||
                    !lsm_tree_has_room(&ledger->transfers.ids, 1) ||
                    !lsm_tree_has_room(&ledger->status, 1))
                        ledger_flush(ledger);
                lsm_groove_insert(&ledger->transfers, &transfers[i]);
                if (status[i] != TRANSFER_STATUS_NONE) {
                        struct status_value v = {.timestamp = transfers[i].timestamp,
                                                 .status = status[i]};
                        lsm_tree_put(&ledger->status, &v);
                }
        }
        for (uint32_t i = 0; i < h->failed_count; i++) {
                if (!lsm_tree_has_room(&ledger->transfers.ids, 1)) ledger_flush(ledger);
                lsm_groove_put_id(&ledger->transfers, failed[i], 0);
        }
        for (uint64_t i = 0; i < h->history_count; i++) {
                const struct old_history *r = &history[i];
                if (r->transfer >= h->transfer_count || r->side > 1) {
                        why = "history names no transfer";
                        goto done;
                }
                const struct wire_transfer *t = &transfers[r->transfer];
                struct history_value v = {
                        .account_id = r->side == 0 ? t->debit_account_id : t->credit_account_id,
                        .timestamp = t->timestamp,
                        .debits_pending = r->debits_pending,
                        .debits_posted = r->debits_posted,
                        .credits_pending = r->credits_pending,
                        .credits_posted = r->credits_posted,
                };
                if (!lsm_tree_has_room(&ledger->history, 1)) ledger_flush(ledger);
                lsm_tree_put(&ledger->history, &v);
        }
        for (uint32_t i = 0; i < h->expiry_count; i++) {
                if (expiry[i].transfer >= h->transfer_count) {
                        why = "expiry names no transfer";
                        goto done;
                }
                if (status[expiry[i].transfer] != TRANSFER_STATUS_PENDING) continue;
                struct expiry_value v = {.expires_at = expiry[i].expires_at,
                                         .timestamp = expiry[i].timestamp};
                if (!lsm_tree_has_room(&ledger->expiry, 1)) ledger_flush(ledger);
                lsm_tree_put(&ledger->expiry, &v);
        }
        n->account_count = h->account_count;
        n->transfer_count = h->transfer_count;
        n->failed_count = h->failed_count;
        n->history_count = h->history_count;
        n->pending_live = h->pending_live;
        n->account_timestamp_last =
                h->account_count ? accounts[h->account_count - 1].timestamp : 0;
        n->transfer_timestamp_last =
                h->transfer_count ? transfers[h->transfer_count - 1].timestamp : 0;
done:
        free(accounts);
        free(transfers);
        free(status);
        free(failed);
        free(history);
        free(expiry);
        return why;
}

int ledger_checkpoint_read(struct ledger *ledger, struct ledger_stream *stream)
{
        ledger_state_reset(ledger);
        struct checksum_stream sum;
        checksum_stream_init(&sum);
        union {
                struct stream_header v3;
                struct old_header v2;
        } h;
        const char *why = NULL;
        uint8_t *run = NULL;
        if (stream_read(stream, &sum, &h, sizeof(h)) != 0) {
                why = "read failed";
        } else if (memcmp(h.v3.magic, STREAM_MAGIC, 8) == 0 && h.v3.version == STREAM_VERSION) {
                run = malloc((size_t)(RUN_VALUES_MAX + 1) * LSM_VALUE_SIZE_MAX);
                why = run == NULL ? "out of memory" : read_v3(ledger, stream, &sum, &h.v3, run);
                if (why == NULL) {
                        u128 expected = checksum_stream_final(&sum), actual;
                        if (stream->read(stream->context, &actual, sizeof(actual)) != 0 ||
                            actual != expected)
                                why = "checksum mismatch";
                }
        } else if (memcmp(h.v2.magic, OLD_MAGIC, 8) == 0 && h.v2.version == OLD_VERSION) {
                why = read_v2(ledger, stream, &sum, &h.v2);
        } else {
                why = "not a ledger checkpoint, or an unknown format version";
        }
        free(run);
        const struct ledger_config *c = &ledger->config;
        const struct ledger_counters *n = &ledger->counters;
        if (why == NULL && ((c->accounts_max != 0 && n->account_count > c->accounts_max) ||
                            (c->transfers_max != 0 &&
                             n->transfer_count + n->failed_count > c->transfers_max)))
                why = "larger than this ledger's capacities";
        if (why == NULL) {
                ledger_expiry_next_update(ledger);
                return 0;
        }
        log_error("ledger: checkpoint refused reason=\"%s\"", why);
        ledger_state_reset(ledger);
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
