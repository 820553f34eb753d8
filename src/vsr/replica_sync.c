/*
 * replica_sync.c: state sync. A replica so far behind that its peers no longer journal the
 * ops it lacks (after a long absence, or a wiped data file) copies the primary's latest durable
 * checkpoint instead: its image (every grid block the checkpoint needs, the root first) in
 * chunks, each block written straight to this replica's grid at its own address, then each
 * session's cached reply; then it opens the ledger from the copied root, writes it as its own
 * checkpoint, and repairs the ops after it from the journals as usual.
 *
 * The checkpoint is committed state, so taking it from any peer is safe. Blocks go to the grid
 * only once the superblock says the grid is being overwritten (grid_syncing, durable): a crash
 * in the middle then finds no checkpoint to trust and syncs again. Nothing executes meanwhile
 * (the ledger's own blocks are being overwritten). If the source's durable checkpoint moves on
 * during the copy, the copy starts again from the new one.
 *
 * Messages (our own use of TigerBeetle's commands between replicas):
 *   request_blocks: want the chunk at `offset` of your durable checkpoint
 *   block:          checkpoint op, blob size, anchor checksum, timestamp, offset; body = chunk
 *   request_reply:  want the reply in `slot` with checksum `checksum` of that checkpoint
 *   reply:          (from a replica, while syncing) that reply
 */
#include "vsr/replica_internal.h"
#include "lib/log.h"
#include "wire/checksum.h"

#include <stdlib.h>
#include <string.h>

/* Whole blocks per chunk when messages are large; with small messages, part of a block. */
#define SYNC_CHUNK_SIZE (WIRE_BODY_SIZE_MAX / LSM_BLOCK_SIZE * LSM_BLOCK_SIZE)
#define SYNC_WINDOW REPLICA_SYNC_WINDOW

#define sync_fields replica_sync_fields /* replica.h: `tally backup` speaks them too */
_Static_assert(sizeof(struct sync_fields) <= 128, "sync fields fit in a header");

/* ---- the image of a checkpoint ------------------------------------------------------------ */

static int image_add(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        (void)kind;
        struct replica *r = context;
        if (r->image.count == r->image.capacity) {
                uint64_t capacity = MAX(r->image.capacity * 2, 1024u);
                struct lsm_block_ref *blocks = realloc(r->image.blocks,
                                                       capacity * sizeof(*blocks));
                if (blocks == NULL)
                        return -1;
                r->image.blocks = blocks;
                r->image.capacity = capacity;
        }
        r->image.blocks[r->image.count++] = ref;
        return 0;
}

uint64_t replica_image_blocks(struct replica *r, struct lsm_block_ref root)
{
        if (root.address == 0)
                return 0;
        if (r->image.root.address == root.address && r->image.root.checksum == root.checksum)
                return r->image.count;
        r->image.count = 0;
        r->image.root = (struct lsm_block_ref){0};
        if (ledger_checkpoint_blocks(r->ledger, root, image_add, r) != 0) {
                log_error("a checkpoint's blocks cannot be listed root=%llu",
                          (unsigned long long)root.address);
                r->image.count = 0;
                return 0;
        }
        r->image.root = root;
        return r->image.count;
}

int64_t replica_image_read(struct replica *r, struct lsm_block_ref root, uint64_t offset,
                           uint8_t *into, uint32_t size)
{
        uint64_t blocks = replica_image_blocks(r, root);
        if (blocks == 0)
                return -1;
        uint64_t end = MIN(offset + size, blocks * LSM_BLOCK_SIZE);
        uint32_t done = 0;
        static uint8_t *scratch;
        while (offset + done < end) {
                uint64_t at = offset + done;
                uint64_t i = at / LSM_BLOCK_SIZE;
                uint32_t within = (uint32_t)(at % LSM_BLOCK_SIZE);
                uint32_t piece = (uint32_t)MIN((uint64_t)(LSM_BLOCK_SIZE - within), end - at);
                if (within == 0 && piece == LSM_BLOCK_SIZE) {
                        if (ledger_block_read(r->ledger, r->image.blocks[i], into + done) != 0)
                                return -1;
                } else {
                        /* Part of a block (messages smaller than a block): read it whole. */
                        if (scratch == NULL && (scratch = malloc(LSM_BLOCK_SIZE)) == NULL)
                                return -1;
                        if (ledger_block_read(r->ledger, r->image.blocks[i], scratch) != 0)
                                return -1;
                        memcpy(into + done, scratch + within, piece);
                }
                done += piece;
        }
        return done;
}

static struct message *sync_message(struct replica *r, uint8_t command,
                                    const struct sync_fields *f)
{
        struct message *m = message_pool_get(r->pool);
        if (m == NULL)
                return NULL;
        wire_header_init(m->header, command, r->config.cluster, r->view, WIRE_RELEASE_SERVER,
                         r->config.replica);
        memcpy(m->header->raw, f, sizeof(*f));
        return m;
}

static void sync_send(struct replica *r, struct message *m, uint8_t to)
{
        wire_header_set_checksum_body(m->header, message_body(m),
                                      m->header->size - WIRE_HEADER_SIZE);
        wire_header_set_checksum(m->header);
        r->env.send_to_replica(r->env.context, to, m);
        message_unref(r->pool, m);
}

static void request_chunk_at(struct replica *r, uint64_t offset)
{
        struct sync_fields f = {.checkpoint_op = r->sync.checkpoint_op,
                                .offset = offset,
                                .root_address = r->sync.root.address,
                                .root_checksum = r->sync.root.checksum};
        struct message *m = sync_message(r, COMMAND_REQUEST_BLOCKS, &f);
        if (m == NULL)
                return;
        r->sync.tick = r->tick;
        sync_send(r, m, r->sync.source);
}

/*
 * Asks for the chunks of a window ahead of the one awaited (one per round trip, a 135 MB image
 * in 28 KiB chunks took 1.3 s of round trips on loopback while a quorum waited for it). The
 * source answers in order over one connection, so chunks arrive in order; a chunk beyond the
 * one awaited means one was lost, and the window is asked for again from there (on_block).
 * Until the source's chunk size is known (its first chunk), one chunk is asked for.
 */
static void request_chunks(struct replica *r)
{
        if (r->sync.chunk == 0 || r->sync.size == 0) {
                request_chunk_at(r, r->sync.offset);
                return;
        }
        if (r->sync.requested < r->sync.offset)
                r->sync.requested = r->sync.offset;
        while (r->sync.requested < r->sync.size &&
               r->sync.requested < r->sync.offset + (uint64_t)SYNC_WINDOW * r->sync.chunk) {
                request_chunk_at(r, r->sync.requested);
                r->sync.requested += r->sync.chunk;
        }
}

/* From the chunk awaited again: after a loss, a retry, or a new source or checkpoint. */
static void request_chunks_again(struct replica *r)
{
        r->sync.requested = r->sync.offset;
        request_chunks(r);
}

static void request_replies(struct replica *r)
{
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (r->sync.root_block == NULL ||
            replica_checkpoint_sessions(r->sync.root_block, LSM_BLOCK_SIZE, sessions) != 0)
                return;
        r->sync.tick = r->tick;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (!(r->sync.replies_missing & (1ull << i)))
                        continue;
                struct sync_fields f = {.checkpoint_op = r->sync.checkpoint_op,
                                        .slot = sessions[i].slot,
                                        .checksum = sessions[i].reply_checksum};
                struct message *m = sync_message(r, COMMAND_REQUEST_REPLY, &f);
                if (m == NULL)
                        return;
                sync_send(r, m, r->sync.source);
        }
}

/* Forgets the chunks kept for later: a new source or checkpoint, or the end. */
static void sync_early_release(struct replica *r)
{
        for (uint32_t i = 0; i < SYNC_WINDOW; i++) {
                if (r->sync.early[i] != NULL)
                        message_unref(r->pool, r->sync.early[i]);
                r->sync.early[i] = NULL;
        }
}

static void sync_replies_release(struct replica *r)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (r->sync.replies[i] != NULL)
                        message_unref(r->pool, r->sync.replies[i]);
                r->sync.replies[i] = NULL;
        }
        r->sync.replies_missing = 0;
}

static void sync_reset(struct replica *r)
{
        sync_early_release(r);
        sync_replies_release(r);
        free(r->sync.root_block);
        free(r->sync.block);
        free(r->sync.legacy_blob);
        memset(&r->sync, 0, sizeof(r->sync));
}

void sync_deinit(struct replica *r)
{
        sync_reset(r);
}

void sync_maybe(struct replica *r, uint8_t source, uint64_t checkpoint_op)
{
        if (r->sync.active || r->checkpoint_in_progress || r->config.replica_count == 1 ||
            source == r->config.replica)
                return;
        /* Within an interval of the source's checkpoint its journal still has what we lack
         * (unless an earlier sync left our grid half overwritten: then only a copy helps). */
        if (checkpoint_op <= r->commit + r->config.checkpoint_interval && !r->grid_syncing)
                return;
        log_info("state sync started source=%u checkpoint_op=%llu commit=%llu", source,
                 (unsigned long long)checkpoint_op, (unsigned long long)r->commit);
        sync_reset(r);
        r->sync.active = true;
        r->stats.state_syncs_started++;
        r->sync.source = source;
        r->sync.checkpoint_op = checkpoint_op;
        request_chunks(r);
}

/*
 * The checkpoint to serve a request from: the one the peer is copying, while this replica
 * holds it; else the durable one, held from now on. False if there is none.
 */
static bool serving_pick(struct replica *r, const struct sync_fields *want)
{
        if (r->serving.active && want->root_address == r->serving.root.address &&
            want->root_checksum == r->serving.root.checksum &&
            want->checkpoint_op == r->serving.op) {
                r->serving.tick = r->tick;
                return true;
        }
        if (r->checkpoint_op_durable == 0 || r->checkpoint_root_durable.address == 0)
                return false;
        if (r->serving.active && r->serving.root.address == r->checkpoint_root_durable.address &&
            r->serving.root.checksum == r->checkpoint_root_durable.checksum) {
                r->serving.tick = r->tick;
                return true;
        }
        if (!r->serving.active && ledger_hold(r->ledger) != 0)
                return false;
        /* A hold keeps every block from now on: the durable checkpoint's among them. */
        r->serving.active = true;
        r->serving.op = r->checkpoint_op_durable;
        r->serving.root = r->checkpoint_root_durable;
        r->serving.prepare_checksum = r->checkpoint_checksum_durable;
        r->serving.timestamp = r->checkpoint_timestamp_durable;
        r->serving.tick = r->tick;
        return true;
}

static void serve_chunk(struct replica *r, const struct message *request)
{
        struct sync_fields want;
        memcpy(&want, request->header->raw, sizeof(want));
        bool continuing = r->serving.active && want.root_address == r->serving.root.address &&
                          want.root_checksum == r->serving.root.checksum &&
                          want.checkpoint_op == r->serving.op;
        if (!serving_pick(r, &want))
                return;
        uint64_t blocks = replica_image_blocks(r, r->serving.root);
        if (blocks == 0)
                return;
        struct sync_fields f = {
                .checkpoint_op = r->serving.op,
                .size = blocks * LSM_BLOCK_SIZE,
                .prepare_checksum = r->serving.prepare_checksum,
                .timestamp = r->serving.timestamp,
                .offset = continuing ? want.offset : 0,
                .root_address = r->serving.root.address,
                .root_checksum = r->serving.root.checksum,
        };
        struct message *m = sync_message(r, COMMAND_BLOCK, &f);
        if (m == NULL)
                return;
        uint32_t body_max = r->config.request_size_max - WIRE_HEADER_SIZE;
        uint32_t chunk = body_max >= LSM_BLOCK_SIZE ? MIN(SYNC_CHUNK_SIZE, body_max / LSM_BLOCK_SIZE *
                                                                              LSM_BLOCK_SIZE)
                                                    : body_max / 4096u * 4096u;
        uint32_t size = (uint32_t)MIN((uint64_t)chunk, f.size - MIN(f.size, f.offset));
        int64_t n = size == 0 ? 0 : replica_image_read(r, r->serving.root, f.offset,
                                                       message_body(m), size);
        if (n < 0 || (uint32_t)n != size) {
                message_unref(r->pool, m);
                return;
        }
        m->header->size = WIRE_HEADER_SIZE + size;
        sync_send(r, m, request->header->replica);
}

static void serve_reply(struct replica *r, const struct message *request)
{
        struct sync_fields want;
        memcpy(&want, request->header->raw, sizeof(want));
        if (r->env.reply_read == NULL)
                return;
        struct message *m = message_pool_get(r->pool);
        if (m == NULL)
                return;
        /* The slot still holds that reply (its checksum says so), whichever checkpoint. */
        bool read = r->env.reply_read(r->env.context, want.slot, want.checksum, m);
        if (read)
                r->env.send_to_replica(r->env.context, request->header->replica, m);
        message_unref(r->pool, m);
        if (!read) {
                /* Gone with a later checkpoint: the first chunk of the durable one restarts the
                 * copy (asking on would never be answered). */
                struct sync_fields fresh = want;
                fresh.root_address = 0;
                fresh.root_checksum = 0;
                fresh.checkpoint_op = 0;
                if (r->serving.active) {
                        ledger_unhold(r->ledger);
                        r->serving.active = false;
                }
                struct message copy;
                struct wire_header h = *request->header;
                memcpy(h.raw, &fresh, sizeof(fresh));
                copy.header = &h;
                copy.buffer = (uint8_t *)&h;
                serve_chunk(r, &copy);
        }
}

static void sync_finish(struct replica *r)
{
        if (r->commit >= r->sync.checkpoint_op) {
                /* Caught up by repair meanwhile: installing would go back in time. */
                sync_reset(r);
                return;
        }
        if (replica_install(r, r->sync.root, r->sync.size / LSM_BLOCK_SIZE,
                            r->sync.checkpoint_op, r->sync.prepare_checksum, r->sync.timestamp,
                            r->sync.replies) != 0) {
                sync_reset(r);
                return;
        }
        r->stats.state_syncs_installed++;
        log_info("state sync installed checkpoint_op=%llu bytes_copied=%llu",
                 (unsigned long long)r->sync.checkpoint_op, (unsigned long long)r->sync.size);
        u128 anchor = r->sync.prepare_checksum;
        sync_reset(r);
        replica_checkpoint_installed(r, anchor);
}

static void sync_sessions_known(struct replica *r);

static void on_block(struct replica *r, struct message *m);

/* The chunk awaited next, if it came early: handled now (true), else false. */
static bool sync_take_early(struct replica *r)
{
        uint32_t slot = (uint32_t)((r->sync.offset / r->sync.chunk) % SYNC_WINDOW);
        struct message *next = r->sync.early[slot];
        if (next == NULL)
                return false;
        r->sync.early[slot] = NULL;
        struct sync_fields f;
        memcpy(&f, next->header->raw, sizeof(f));
        bool awaited = f.offset == r->sync.offset;
        if (awaited)
                on_block(r, next); /* at most a window deep */
        message_unref(r->pool, next);
        return awaited;
}

/*
 * Our grid is about to be overwritten: the superblock must say so first. False (the chunk is
 * dropped, and asked for again the tick the mark is durable) until it does.
 */
static bool sync_mark_durable(struct replica *r)
{
        r->grid_syncing = true;
        if (r->view_state_durable.grid_syncing)
                return true;
        r->sync.tick = r->tick;
        r->sync.awaiting_mark = true;
        return false;
}

/* A chunk of `size` is in: true if it was the last, else the next is handled or asked for. */
static bool sync_chunk_done(struct replica *r, const struct sync_fields *f, uint32_t size)
{
        r->sync.offset += size;
        r->sync.prepare_checksum = f->prepare_checksum;
        r->sync.timestamp = f->timestamp;
        if (r->sync.chunk == 0)
                r->sync.chunk = size;
        if (r->sync.offset < r->sync.size) {
                if (!sync_take_early(r))
                        request_chunks(r);
                return false;
        }
        sync_early_release(r);
        return true;
}

/*
 * A replica of the previous release (data file format 1, during a rolling upgrade) serves its
 * checkpoint as one blob: gathered in memory, then loaded into the ledger's trees and
 * checkpointed as a root here, after which the copy goes on as for a root (replies, install).
 */
static void on_legacy_chunk(struct replica *r, const struct sync_fields *f, const uint8_t *body,
                            uint32_t size)
{
        if (size == 0 || f->offset + size > f->size || f->size > (1ull << 36)) {
                log_error("state sync: the peer's format 1 checkpoint is malformed bytes=%llu",
                          (unsigned long long)f->size);
                sync_reset(r);
                return;
        }
        if (!sync_mark_durable(r)) /* loading it rewrites our grid */
                return;
        if (r->sync.legacy_blob == NULL) {
                r->sync.legacy = true;
                r->sync.legacy_blob = malloc(f->size);
                if (r->sync.legacy_blob == NULL) {
                        log_error("state sync: no memory for a format 1 checkpoint bytes=%llu",
                                  (unsigned long long)f->size);
                        sync_reset(r);
                        return;
                }
        }
        memcpy(r->sync.legacy_blob + f->offset, body, size);
        if (!sync_chunk_done(r, f, size))
                return;
        static uint8_t user[LEDGER_CHECKPOINT_USER_MAX];
        uint32_t user_size = 0;
        const uint8_t *part = NULL;
        uint64_t part_size = 0;
        struct lsm_block_ref root = {0};
        bool ok = replica_checkpoint_legacy(r->sync.legacy_blob, r->sync.size, user, &user_size,
                                            &part, &part_size) == 0;
        if (ok) {
                struct ledger_memory_reader reader = {.data = part, .size = part_size};
                struct ledger_stream stream = {.read = ledger_memory_read, .context = &reader};
                ok = ledger_checkpoint_read(r->ledger, &stream) == 0 &&
                     ledger_checkpoint(r->ledger, user, user_size, &root);
        }
        free(r->sync.legacy_blob);
        r->sync.legacy_blob = NULL;
        if (!ok || (r->sync.root_block == NULL &&
                    (r->sync.root_block = malloc(LSM_BLOCK_SIZE)) == NULL) ||
            ledger_block_read(r->ledger, root, r->sync.root_block) != 0) {
                log_error("state sync: the peer's format 1 checkpoint does not convert");
                sync_reset(r);
                return;
        }
        log_info("state sync: converted a format 1 checkpoint checkpoint_op=%llu bytes=%llu",
                 (unsigned long long)r->sync.checkpoint_op, (unsigned long long)r->sync.size);
        r->sync.root = root;
        r->sync.size = LSM_BLOCK_SIZE; /* what install and the replies' requests look at */
        r->sync.offset = LSM_BLOCK_SIZE;
        sync_sessions_known(r);
}

static void on_block(struct replica *r, struct message *m)
{
        struct sync_fields f;
        memcpy(&f, m->header->raw, sizeof(f));
        if (!r->sync.active || m->header->replica != r->sync.source)
                return;
        if (f.checkpoint_op != r->sync.checkpoint_op || f.size != r->sync.size ||
            f.root_address != r->sync.root.address || f.root_checksum != r->sync.root.checksum) {
                if (f.offset != 0)
                        return;
                if (f.checkpoint_op <= r->commit + r->config.checkpoint_interval &&
                    !r->grid_syncing) {
                        /* This source's journal has what we lack (see sync_maybe). */
                        log_info("state sync ended: the source's journal covers us source=%u "
                                 "checkpoint_op=%llu commit=%llu",
                                 r->sync.source, (unsigned long long)f.checkpoint_op,
                                 (unsigned long long)r->commit);
                        sync_reset(r);
                        return;
                }
                /* The source checkpointed again: start over with its new checkpoint. */
                r->sync.checkpoint_op = f.checkpoint_op;
                r->sync.size = f.size;
                r->sync.root = (struct lsm_block_ref){.address = f.root_address,
                                                      .checksum = f.root_checksum};
                r->sync.offset = 0;
                r->sync.requested = 0;
                sync_early_release(r);
                sync_replies_release(r);
        }
        if (f.offset != r->sync.offset) {
                /*
                 * Ahead of the chunk awaited (reordered, or that one was lost): kept for when
                 * its turn comes, and the awaited one asked for again now and then.
                 */
                uint32_t chunk = r->sync.chunk;
                if (f.offset > r->sync.offset && chunk != 0 && !r->sync.awaiting_mark &&
                    (f.offset - r->sync.offset) % chunk == 0 &&
                    (f.offset - r->sync.offset) / chunk < SYNC_WINDOW) {
                        uint32_t slot = (uint32_t)((f.offset / chunk) % SYNC_WINDOW);
                        if (r->sync.early[slot] == NULL)
                                r->sync.early[slot] = message_ref(m);
                        if (r->tick - r->sync.gap_tick >= TICKS_SYNC_GAP) {
                                r->sync.gap_tick = r->tick;
                                request_chunk_at(r, r->sync.offset);
                        }
                }
                return;
        }
        uint32_t size = m->header->size - WIRE_HEADER_SIZE;
        if (f.root_address == 0 && f.root_checksum == 0 && f.size > 0) {
                on_legacy_chunk(r, &f, message_body(m), size);
                return;
        }
        if (size == 0 || f.size % LSM_BLOCK_SIZE != 0 || f.size == 0 ||
            f.offset + size > f.size) {
                log_error("state sync: the peer's checkpoint image is malformed bytes=%llu",
                          (unsigned long long)f.size);
                sync_reset(r);
                return;
        }
        if (!sync_mark_durable(r))
                return;
        const uint8_t *body = message_body(m);
        if (r->sync.block == NULL && (r->sync.block = malloc(LSM_BLOCK_SIZE)) == NULL) {
                sync_reset(r);
                return;
        }
        for (uint32_t at = 0; at < size;) {
                /* Blocks may span messages: gather each whole before installing it. */
                uint64_t image_at = f.offset + at;
                uint32_t within = (uint32_t)(image_at % LSM_BLOCK_SIZE);
                uint32_t piece = MIN(size - at, LSM_BLOCK_SIZE - within);
                memcpy(r->sync.block + within, body + at, piece);
                at += piece;
                if (within + piece < LSM_BLOCK_SIZE)
                        continue;
                const uint8_t *block = r->sync.block;
                if (image_at - within == 0) {
                        /* The root: the one the source named, and our copy of its sessions. */
                        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
                        if (h->address != f.root_address || h->checksum != f.root_checksum) {
                                log_error("state sync: the first block is not the root named");
                                sync_reset(r);
                                return;
                        }
                        if (r->sync.root_block == NULL)
                                r->sync.root_block = malloc(LSM_BLOCK_SIZE);
                        if (r->sync.root_block == NULL) {
                                sync_reset(r);
                                return;
                        }
                        memcpy(r->sync.root_block, block, LSM_BLOCK_SIZE);
                }
                if (ledger_block_install(r->ledger, block) != 0) {
                        sync_reset(r);
                        return;
                }
        }
        if (sync_chunk_done(r, &f, size))
                sync_sessions_known(r);
}

/* Every block is in (or the checkpoint converted): the replies the sessions name, then install. */
static void sync_sessions_known(struct replica *r)
{
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (r->sync.root_block == NULL ||
            replica_checkpoint_sessions(r->sync.root_block, LSM_BLOCK_SIZE, sessions) != 0) {
                log_error("state sync: the peer's checkpoint has no valid session table");
                sync_reset(r);
                return;
        }
        r->sync.replies_missing = 0;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (sessions[i].used)
                        r->sync.replies_missing |= 1ull << i;
        }
        if (r->sync.replies_missing == 0)
                sync_finish(r);
        else
                request_replies(r);
}

static void on_sync_reply(struct replica *r, struct message *m)
{
        if (!r->sync.active || r->sync.offset < r->sync.size || r->sync.size == 0)
                return;
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        if (r->sync.root_block == NULL ||
            replica_checkpoint_sessions(r->sync.root_block, LSM_BLOCK_SIZE, sessions) != 0)
                return;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if ((r->sync.replies_missing & (1ull << i)) &&
                    sessions[i].reply_checksum == m->header->checksum) {
                        r->sync.replies[i] = message_ref(m);
                        r->sync.replies_missing &= ~(1ull << i);
                }
        }
        if (r->sync.replies_missing == 0)
                sync_finish(r);
}

void sync_on_message(struct replica *r, struct message *m)
{
        switch (m->header->command) {
        case COMMAND_REQUEST_BLOCKS:
                serve_chunk(r, m);
                break;
        case COMMAND_BLOCK:
                on_block(r, m);
                break;
        case COMMAND_REQUEST_REPLY:
                serve_reply(r, m);
                break;
        case COMMAND_REPLY:
                on_sync_reply(r, m);
                break;
        default:
                break;
        }
}

/*
 * The source did not answer for TICKS_SYNC_RETRY: it may be cut off, stopped or dead, and a
 * sync pinned to it keeps this replica from taking any prepare (accept_prepare), so a new
 * primary counting on it could commit nothing. Copy from another replica instead: this view's
 * primary, else the next one. From the first chunk: the blobs of two replicas differ in their
 * replies' checksums, so pieces of two must not be mixed.
 */
static void sync_source_next(struct replica *r)
{
        uint8_t n = r->config.replica_count;
        uint8_t next = replica_primary_index(r, r->view);
        if (next == r->config.replica || next == r->sync.source) {
                next = (uint8_t)((r->sync.source + 1) % n);
                if (next == r->config.replica)
                        next = (uint8_t)((next + 1) % n);
        }
        if (next == r->sync.source)
                return; /* no other replica to ask */
        log_info("state sync source silent; asking another source=%u from=%u checkpoint_op=%llu",
                 next, r->sync.source, (unsigned long long)r->sync.checkpoint_op);
        sync_replies_release(r);
        sync_early_release(r);
        r->sync.source = next;
        r->sync.offset = 0;
        r->sync.requested = 0;
        r->sync.chunk = 0; /* its messages may be of another size */
        r->sync.size = 0;
        r->sync.root = (struct lsm_block_ref){0};
}

void sync_tick(struct replica *r)
{
        /*
         * The mark is durable: ask for the chunk that waited for it now. Waiting for the
         * retry instead cost half a second, then another on a dead source, while a cluster
         * whose quorum needs this replica cannot commit.
         */
        if (r->sync.active && r->sync.awaiting_mark && r->view_state_durable.grid_syncing) {
                r->sync.awaiting_mark = false;
                request_chunks_again(r);
        }
        if (r->serving.active && r->tick - r->serving.tick > TICKS_SYNC_SERVE_IDLE) {
                ledger_unhold(r->ledger);
                r->serving.active = false;
        }
        if (!r->sync.active || r->tick - r->sync.tick < TICKS_SYNC_RETRY)
                return;
        if (r->config.replica_count > 2)
                sync_source_next(r);
        if (r->sync.offset < r->sync.size || r->sync.size == 0)
                request_chunks_again(r);
        else
                request_replies(r);
}
