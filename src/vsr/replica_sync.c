/*
 * replica_sync.c: state sync. A replica so far behind that its peers no longer journal the
 * ops it lacks (after a long absence, or a wiped data file) copies a peer's latest durable
 * checkpoint instead, and only the blocks of it that its own grid does not already hold:
 *
 *   1. the list: every block the checkpoint needs, (address, checksum) each, the root first;
 *   2. each block of the list is looked up here: named by our own durable checkpoint with the
 *      same (address, checksum), written by this copy, or found whole at its address by a
 *      read. A block is named by both, so one found here is the very block wanted;
 *   3. the rest is asked for in runs, a window ahead, and written straight to our grid at its
 *      own address; then each session's cached reply; then the ledger opens from the copied
 *      root, writes it as its own checkpoint, and repairs the ops after it from the journals.
 *
 * A replica away for a while shares all but the tables written since it left, a re-formatted
 * one nothing; a second copy, after the cluster moved past the journals during the first,
 * copies only what changed meanwhile, so copies under load get small and converge.
 *
 * The checkpoint is committed state, so taking it from any peer is safe. Blocks go to the grid
 * only once the superblock says the grid is being overwritten (grid_syncing, durable): a crash
 * in the middle then finds no checkpoint to trust and syncs again (finding by reads what it
 * had copied). Nothing executes meanwhile (the ledger's own blocks are being overwritten). The
 * source holds the checkpoint being copied (ledger_hold); if it lets go of it, it answers
 * with its newer checkpoint's list and the copy goes on from there.
 *
 * Messages (our own use of TigerBeetle's commands between replicas; `kind`, replica.h):
 *   request_blocks: want the list's or the image's bytes at `offset` of a checkpoint
 *   block:          checkpoint op, size, anchor checksum, timestamp, offset; body = bytes
 *   request_reply:  want the reply in `slot` with checksum `checksum` of that checkpoint
 *   reply:          (from a replica, while syncing) that reply
 */
#include "vsr/replica_internal.h"
#include "lib/log.h"
#include "lib/mix.h"
#include "wire/checksum.h"

#include <stdlib.h>
#include <string.h>

/* Whole blocks per chunk when messages are large; with small messages, part of a block. */
#define SYNC_CHUNK_SIZE (WIRE_BODY_SIZE_MAX / LSM_BLOCK_SIZE * LSM_BLOCK_SIZE)
#define SYNC_WINDOW REPLICA_SYNC_WINDOW

#define sync_fields replica_sync_fields /* replica.h: `tally backup` speaks them too */
_Static_assert(sizeof(struct sync_fields) <= 128, "sync fields fit in a header");

/* ---- the image of a checkpoint ------------------------------------------------------------ */

static int list_add(struct replica_image_list *list, struct lsm_block_ref ref, uint8_t kind)
{
        if (list->count == list->capacity) {
                uint64_t capacity = MAX(list->capacity * 2, 1024u);
                struct lsm_block_ref *blocks = realloc(list->blocks, capacity * sizeof(*blocks));
                if (blocks == NULL)
                        return -1;
                list->blocks = blocks;
                uint8_t *kinds = realloc(list->kinds, capacity);
                if (kinds == NULL)
                        return -1;
                list->kinds = kinds;
                list->capacity = capacity;
        }
        list->kinds[list->count] = kind;
        list->blocks[list->count++] = ref;
        return 0;
}

static int image_add(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        struct replica *r = context;
        return list_add(&r->image.list, ref, kind);
}

void replica_image_free(struct replica *r)
{
        free(r->block_repair.block);
        memset(&r->block_repair, 0, sizeof(r->block_repair));
        free(r->image.list.blocks);
        free(r->image.list.kinds);
        free(r->image.previous.blocks);
        free(r->image.previous.kinds);
        memset(&r->image, 0, sizeof(r->image));
}

/* While a checkpoint is listed: the previous list's tables by index block address. */
struct image_listing {
        struct replica *r;
        uint64_t *tables; /* open addressing: position in the previous list + 1 */
        uint64_t mask;    /* slots - 1 */
};

/* Indexes the previous list's tables; false if there are none (or memory is short). */
static bool image_tables_index(struct image_listing *listing)
{
        const struct replica_image_list *previous = &listing->r->image.previous;
        uint64_t tables = 0;
        for (uint64_t i = 0; i < previous->count; i++)
                tables += previous->kinds[i] == LSM_BLOCK_TABLE_INDEX;
        if (tables == 0)
                return false;
        uint64_t slots = 16;
        while (slots < tables * 2)
                slots *= 2;
        listing->tables = calloc(slots, sizeof(*listing->tables));
        if (listing->tables == NULL)
                return false;
        listing->mask = slots - 1;
        for (uint64_t i = 0; i < previous->count; i++) {
                if (previous->kinds[i] != LSM_BLOCK_TABLE_INDEX)
                        continue;
                uint64_t h = mix64(previous->blocks[i].address) & listing->mask;
                while (listing->tables[h] != 0)
                        h = (h + 1) & listing->mask;
                listing->tables[h] = i + 1;
        }
        return true;
}

static int listing_add(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        const struct image_listing *listing = context;
        return image_add(listing->r, ref, kind);
}

/* lsm_forest_blocks_known's question: a table of the previous list is copied from it. */
static int listing_table_known(void *context, struct lsm_block_ref index)
{
        const struct image_listing *listing = context;
        struct replica *r = listing->r;
        const struct replica_image_list *previous = &r->image.previous;
        uint64_t h = mix64(index.address) & listing->mask;
        for (; listing->tables[h] != 0; h = (h + 1) & listing->mask) {
                uint64_t at = listing->tables[h] - 1;
                const struct lsm_block_ref *ref = &previous->blocks[at];
                if (ref->address != index.address)
                        continue;
                if (ref->checksum != index.checksum)
                        return 0; /* the address was reused for another table */
                uint64_t end = at + 1;
                while (end < previous->count && previous->kinds[end] == LSM_BLOCK_TABLE_DATA)
                        end++;
                for (uint64_t i = at; i < end; i++) {
                        if (list_add(&r->image.list, previous->blocks[i], previous->kinds[i]) != 0)
                                return -1;
                }
                r->image.tables_reused++;
                return 1;
        }
        return 0;
}

/*
 * A block's worth of scratch for a read that is used at once (a probe, a piece of a block, a
 * block served whole): one for the module, allocated on first use; NULL without memory. No
 * caller holds it across a call that may use it too.
 */
static uint8_t *sync_scratch_block(void)
{
        static uint8_t *block;
        if (block == NULL)
                block = malloc(LSM_BLOCK_SIZE);
        return block;
}

/*
 * The bytes of blocks a source sends per message: whole blocks when messages are large, else a
 * piece of one (a multiple of 4096 bytes).
 */
static uint32_t serve_chunk_size(const struct replica *r)
{
        uint32_t body_max = r->config.request_size_max - WIRE_HEADER_SIZE;
        return body_max >= LSM_BLOCK_SIZE
                       ? MIN(SYNC_CHUNK_SIZE, body_max / LSM_BLOCK_SIZE * LSM_BLOCK_SIZE)
                       : body_max / 4096u * 4096u;
}

/* A piece of a block at `within` (pieces of `chunk`) into `block`: true once all are in. */
static bool piece_gather(uint8_t *block, uint32_t *mask, uint32_t within, uint32_t chunk,
                         const uint8_t *piece, uint32_t size)
{
        memcpy(block + within, piece, size);
        *mask |= 1u << (within / chunk);
        uint32_t pieces = (LSM_BLOCK_SIZE + chunk - 1) / chunk;
        return *mask == (1u << pieces) - 1;
}

/* ---- one damaged block, from a peer -------------------------------------------------------- */

/*
 * A block of our checkpoint that fails its check when we list the checkpoint for a peer's copy
 * (it rotted on disk). Every replica that copied that checkpoint, or the one it was copied
 * from, holds the same block at the same address, so it is asked of the peers in turn by
 * (address, checksum) and written back in place; the next listing finds it whole. Without
 * this the copy could not be served, and peers behind our checkpoint, with none of their own
 * to offer, never caught up (the simulator's seed 169 on 3 replicas: the cluster stalled).
 */

/*
 * True while `root` is a checkpoint whose blocks stay at their addresses here: our durable one,
 * or the one we serve under a hold, and no copy is overwriting our grid. Only then may a
 * block of it be written back: an address a newer checkpoint freed may hold another block.
 */
static bool block_repair_root_ours(const struct replica *r, struct lsm_block_ref root)
{
        if (r->grid_syncing || r->view_state_durable.grid_syncing || root.address == 0)
                return false;
        return (root.address == r->checkpoint_root_durable.address &&
                root.checksum == r->checkpoint_root_durable.checksum) ||
               (r->serving.active && root.address == r->serving.root.address &&
                root.checksum == r->serving.root.checksum);
}

static void block_repair_start(struct replica *r, struct lsm_block_ref root,
                               struct lsm_block_ref ref)
{
        if (r->config.replica_count == 1 || !block_repair_root_ours(r, root))
                return;
        if (r->block_repair.active && r->block_repair.ref.address == ref.address &&
            r->block_repair.ref.checksum == ref.checksum)
                return;
        log_warn("grid block damaged; asking the peers for their copy address=%llu",
                 (unsigned long long)ref.address);
        r->block_repair.active = true;
        r->block_repair.ref = ref;
        r->block_repair.root = root;
        r->block_repair.mask = 0;
        r->block_repair.chunk = 0;
        r->block_repair.tick = 0; /* ask at once */
        r->block_repair.peer = r->config.replica;
}

static struct message *sync_message(struct replica *r, uint8_t command,
                                    const struct sync_fields *f);
static void sync_send(struct replica *r, struct message *m, uint8_t to);

/* Asks the next peer for the whole block (its pieces, if its messages are small). */
static void block_repair_tick(struct replica *r)
{
        if (r->block_repair.active && !block_repair_root_ours(r, r->block_repair.root))
                r->block_repair.active = false; /* a newer checkpoint, or a copy: not ours now */
        if (!r->block_repair.active || (r->block_repair.tick != 0 &&
                                        r->tick - r->block_repair.tick < TICKS_SYNC_AGAIN))
                return;
        r->block_repair.tick = MAX(r->tick, 1);
        r->block_repair.peer = (uint8_t)((r->block_repair.peer + 1) % r->config.replica_count);
        if (r->block_repair.peer == r->config.replica)
                r->block_repair.peer =
                        (uint8_t)((r->block_repair.peer + 1) % r->config.replica_count);
        r->block_repair.mask = 0;
        struct sync_fields f = {.kind = REPLICA_SYNC_ONE_BLOCK,
                                .root_address = r->block_repair.ref.address,
                                .root_checksum = r->block_repair.ref.checksum,
                                .size = LSM_BLOCK_SIZE};
        struct message *m = sync_message(r, COMMAND_REQUEST_BLOCKS, &f);
        if (m != NULL)
                sync_send(r, m, r->block_repair.peer);
}

/* A peer asks for a block of ours by (address, checksum): sent if we hold it whole. */
static void serve_one_block(struct replica *r, const struct message *request)
{
        struct sync_fields want;
        memcpy(&want, request->header->raw, sizeof(want));
        struct lsm_block_ref ref = {.address = want.root_address, .checksum = want.root_checksum};
        if (ref.address == 0 || ref.address > ledger_grid_blocks_max(r->ledger))
                return;
        uint8_t *block = sync_scratch_block();
        if (block == NULL || !ledger_block_present(r->ledger, ref, block))
                return;
        uint32_t chunk = MIN(serve_chunk_size(r), LSM_BLOCK_SIZE);
        for (uint32_t offset = 0; offset < LSM_BLOCK_SIZE; offset += chunk) {
                uint32_t size = MIN(chunk, LSM_BLOCK_SIZE - offset);
                struct sync_fields f = {.kind = REPLICA_SYNC_ONE_BLOCK,
                                        .root_address = ref.address,
                                        .root_checksum = ref.checksum,
                                        .size = LSM_BLOCK_SIZE,
                                        .offset = offset,
                                        .chunk = chunk};
                struct message *m = sync_message(r, COMMAND_BLOCK, &f);
                if (m == NULL)
                        return;
                memcpy(message_body(m), block + offset, size);
                m->header->size = WIRE_HEADER_SIZE + size;
                sync_send(r, m, request->header->replica);
        }
}

/* A piece of the block asked for: once all are in, the block is checked and written back. */
static void on_one_block(struct replica *r, const struct message *m)
{
        struct sync_fields f;
        memcpy(&f, m->header->raw, sizeof(f));
        uint32_t size = m->header->size - WIRE_HEADER_SIZE;
        if (!r->block_repair.active || f.root_address != r->block_repair.ref.address ||
            f.root_checksum != r->block_repair.ref.checksum || f.chunk == 0 ||
            f.chunk % 4096u != 0 || f.chunk > LSM_BLOCK_SIZE || f.offset % f.chunk != 0 ||
            f.offset >= LSM_BLOCK_SIZE || size != MIN(f.chunk, LSM_BLOCK_SIZE - f.offset))
                return;
        if (r->block_repair.block == NULL &&
            (r->block_repair.block = malloc(LSM_BLOCK_SIZE)) == NULL)
                return;
        if (f.chunk != r->block_repair.chunk) {
                r->block_repair.chunk = f.chunk;
                r->block_repair.mask = 0;
        }
        if (!piece_gather(r->block_repair.block, &r->block_repair.mask, (uint32_t)f.offset, f.chunk,
                          message_body(m), size))
                return;
        const struct lsm_block_header *h = (const struct lsm_block_header *)r->block_repair.block;
        if (!block_repair_root_ours(r, r->block_repair.root)) {
                r->block_repair.active = false;
                return;
        }
        if (h->address != r->block_repair.ref.address ||
            h->checksum != r->block_repair.ref.checksum ||
            ledger_block_install(r->ledger, r->block_repair.block) != 0) {
                r->block_repair.mask = 0; /* the next peer, at the next round */
                return;
        }
        ledger_blocks_flush(r->ledger);
        log_info("grid block repaired from a peer's copy address=%llu peer=%u",
                 (unsigned long long)h->address, m->header->replica);
        r->stats.grid_blocks_repaired++;
        r->block_repair.active = false;
}

/*
 * Lists the blocks of `root` (the image), once per root. Listing reads every table's index
 * block, synchronously: 17-220 ms with the partition suite's checkpoints (5,000 blocks), on the
 * loop of the primary a peer copies from, at every newer checkpoint it serves while the peer
 * chases the cluster (every 64 ops with --development): the new primary of a view whose
 * quorum waited for that copy stopped for 220 ms. The tables both lists have are taken from
 * the previous list instead; only new tables' index blocks are read.
 */
uint64_t replica_image_blocks(struct replica *r, struct lsm_block_ref root)
{
        if (root.address == 0)
                return 0;
        if (r->image.root.address == root.address && r->image.root.checksum == root.checksum)
                return r->image.list.count;
        /* The current list becomes the previous one; its buffers take the new list. */
        struct replica_image_list spare = r->image.previous;
        r->image.previous = r->image.list;
        if (r->image.root.address == 0)
                r->image.previous.count = 0; /* the last listing failed */
        r->image.list = spare;
        r->image.list.count = 0;
        r->image.root = (struct lsm_block_ref){0};
        struct image_listing listing = {.r = r};
        ledger_damaged_block_forget(r->ledger); /* a block found damaged is one of this list */
        /* Without a previous list, the forest reads every index block at once instead. */
        int rc = image_tables_index(&listing)
                         ? ledger_checkpoint_blocks_known(r->ledger, root, listing_add,
                                                          listing_table_known, &listing)
                         : ledger_checkpoint_blocks(r->ledger, root, image_add, r);
        free(listing.tables);
        if (rc != 0) {
                log_error("a checkpoint's blocks cannot be listed root=%llu",
                          (unsigned long long)root.address);
                r->image.list.count = 0;
                struct lsm_block_ref damaged;
                if (ledger_damaged_block(r->ledger, &damaged))
                        block_repair_start(r, root, damaged);
                return 0;
        }
        r->image.root = root;
        return r->image.list.count;
}

int64_t replica_image_read(struct replica *r, struct lsm_block_ref root, uint64_t offset,
                           uint8_t *into, uint32_t size)
{
        uint64_t blocks = replica_image_blocks(r, root);
        if (blocks == 0)
                return -1;
        uint64_t end = MIN(offset + size, blocks * LSM_BLOCK_SIZE);
        uint32_t done = 0;
        while (offset + done < end) {
                uint64_t at = offset + done;
                uint64_t i = at / LSM_BLOCK_SIZE;
                uint32_t within = (uint32_t)(at % LSM_BLOCK_SIZE);
                uint32_t piece = (uint32_t)MIN((uint64_t)(LSM_BLOCK_SIZE - within), end - at);
                if (within == 0 && piece == LSM_BLOCK_SIZE) {
                        if (ledger_block_read(r->ledger, r->image.list.blocks[i], into + done) != 0)
                                return -1;
                } else {
                        /* Part of a block (messages smaller than a block): read it whole. */
                        uint8_t *scratch = sync_scratch_block();
                        if (scratch == NULL)
                                return -1;
                        if (ledger_block_read(r->ledger, r->image.list.blocks[i], scratch) != 0)
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

/* Asks the source for `size` bytes (0: a chunk) of the list or the image at `offset`. */
static void request_at(struct replica *r, uint32_t kind, uint64_t offset, uint64_t size)
{
        struct sync_fields f = {.checkpoint_op = r->sync.checkpoint_op,
                                .size = size,
                                .offset = offset,
                                .kind = kind,
                                .root_address = r->sync.root.address,
                                .root_checksum = r->sync.root.checksum};
        struct message *m = sync_message(r, COMMAND_REQUEST_BLOCKS, &f);
        if (m == NULL)
                return;
        r->sync.tick = r->tick;
        sync_send(r, m, r->sync.source);
}

/*
 * The list (or a format 1 replica's blob) comes in order: asks for the chunks of a window
 * ahead of the one awaited (one per round trip made a large copy a long wait on round trips).
 * The source answers in order over one connection, so chunks arrive in order; a chunk beyond
 * the one awaited means one was lost, and the window is asked for again from there (on_block).
 * Until the source's chunk size is known (its first chunk), one chunk is asked for.
 */
static void request_chunks(struct replica *r)
{
        if (r->sync.chunk == 0 || r->sync.size == 0) {
                request_at(r, REPLICA_SYNC_LIST, r->sync.offset, 0);
                return;
        }
        if (r->sync.requested < r->sync.offset)
                r->sync.requested = r->sync.offset;
        while (r->sync.requested < r->sync.size &&
               r->sync.requested < r->sync.offset + (uint64_t)SYNC_WINDOW * r->sync.chunk) {
                request_at(r, REPLICA_SYNC_LIST, r->sync.requested, 0);
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

/* Blocks half gathered from pieces are dropped (they are asked for again whole). */
static void sync_pieces_release(struct replica *r)
{
        for (uint32_t i = 0; i < SYNC_WINDOW; i++) {
                r->sync.pieces[i].used = false;
                r->sync.pieces[i].mask = 0;
        }
}

/* Forgets the checkpoint being copied (not what our grid is known to hold): a new one. */
static void sync_target_forget(struct replica *r)
{
        sync_early_release(r);
        sync_replies_release(r);
        sync_pieces_release(r);
        free(r->sync.list);
        free(r->sync.block_state);
        /* A format 1 peer's blob is sized for its checkpoint: a newer one is gathered anew. */
        free(r->sync.legacy_blob);
        r->sync.legacy_blob = NULL;
        r->sync.list = NULL;
        r->sync.blocks = NULL;
        r->sync.block_state = NULL;
        r->sync.block_count = 0;
        r->sync.classified = 0;
        r->sync.present = 0;
        r->sync.cursor = 0;
        r->sync.inflight = 0;
        r->sync.target_copied = 0;
        r->sync.phase = REPLICA_SYNC_PHASE_LIST;
        r->sync.size = 0;
        r->sync.offset = 0;
        r->sync.requested = 0;
        r->sync.root = (struct lsm_block_ref){0};
}

void sync_free_memory(struct replica *r)
{
        free(r->sync.list);
        free(r->sync.block_state);
        free(r->sync.known);
        for (uint32_t i = 0; i < SYNC_WINDOW; i++)
                free(r->sync.pieces[i].block);
        free(r->sync.root_block);
        free(r->sync.legacy_blob);
}

static void sync_reset(struct replica *r)
{
        sync_early_release(r);
        sync_replies_release(r);
        sync_free_memory(r);
        memset(&r->sync, 0, sizeof(r->sync));
}

void sync_deinit(struct replica *r)
{
        sync_reset(r);
}

/* ---- what our grid holds -------------------------------------------------------------- */

static bool known_set(struct replica *r, uint64_t address, u128 checksum)
{
        if (address >= r->sync.known_count) {
                uint64_t count = MAX(address + 1, MAX(r->sync.known_count * 2, 4096u));
                u128 *known = realloc(r->sync.known, count * sizeof(*known));
                if (known == NULL)
                        return false;
                memset(known + r->sync.known_count, 0,
                       (count - r->sync.known_count) * sizeof(*known));
                r->sync.known = known;
                r->sync.known_count = count;
        }
        r->sync.known[address] = checksum;
        return true;
}

/* What is known of the block at ref's address: 0 not known, 1 it is here, -1 it is not. */
static int known_of(const struct replica *r, struct lsm_block_ref ref)
{
        if (ref.address >= r->sync.known_count || r->sync.known[ref.address] == 0)
                return 0;
        return r->sync.known[ref.address] == ref.checksum ? 1 : -1;
}

static int known_add(void *context, struct lsm_block_ref ref, uint8_t kind)
{
        (void)kind;
        return known_set(context, ref.address, ref.checksum) ? 0 : -1;
}

/*
 * Whether a peer whose durable checkpoint is `checkpoint_op` still journals the ops after our
 * commit, so that repair catches us up (unless an earlier sync left our grid half overwritten:
 * then only a copy helps). A replica overwrites only ops its durable checkpoint covers, and
 * its head runs about an interval past that checkpoint, so its journal reaches back about
 * wal_slot_count - interval ops before the checkpoint. A copy costs far more than catching up
 * by repair, and a replica that just installed one is necessarily behind: an interval (the
 * source's head past its checkpoint) plus the ops of the copy's duration. With two intervals
 * such a replica copied again at once, 190 times in 3 minutes (bench/resync_under_load.sh,
 * 20 M transfers, 1,200 requests/s); with one, a replica catching up by repair a few hundred
 * ops behind did. Should the peer's head run further ahead, repair finds nothing, the replica
 * falls further behind, and the copy starts then.
 */
static bool sync_journals_cover(const struct replica *r, uint64_t checkpoint_op)
{
        return checkpoint_op <= r->commit + r->config.wal_slot_count - r->config.checkpoint_interval;
}

static void sync_start(struct replica *r, uint8_t source, uint64_t checkpoint_op);

void sync_maybe(struct replica *r, uint8_t source, uint64_t checkpoint_op)
{
        if (sync_journals_cover(r, checkpoint_op) && !r->grid_syncing)
                return;
        sync_start(r, source, checkpoint_op);
}

void sync_repair_stuck(struct replica *r, uint8_t source, uint64_t checkpoint_op)
{
        if (checkpoint_op <= r->commit)
                return; /* a copy would not bring us further */
        if (!r->sync.active)
                log_info("state sync: repair made no progress for %u ms; copying instead "
                         "commit=%llu commit_max=%llu",
                         TICKS_REPAIR_STUCK * 10u, (unsigned long long)r->commit,
                         (unsigned long long)r->commit_max);
        bool started = !r->sync.active;
        sync_start(r, source, checkpoint_op);
        if (started && r->sync.active)
                r->sync.forced = true;
}

/* False if ops journaled during a copy would not all fit after `checkpoint_op` (see below). */
static bool sync_target_keeps_journal(const struct replica *r, uint64_t checkpoint_op)
{
        return r->sync_journaled_max == 0 ||
               checkpoint_op + r->config.wal_slot_count > r->sync_journaled_max;
}

/*
 * A backup copying a checkpoint still takes part in replication: the log after the checkpoint
 * being copied is this view's log, which install keeps (replica_install keeps what chains onto
 * the installed op), so new prepares that chain onto it are journaled and acknowledged as
 * usual. Without that, a cluster whose quorum needs this replica (another one down) stops for
 * the whole copy, and then for the repair of every op since the checkpoint.
 *
 * Only once the superblock says grid_syncing: from then on the old checkpoint is not trusted,
 * nothing executes until the copy installs, and a restart copies again, so the journal's ops
 * up to the copied checkpoint are never needed again and their slots may take newer ops. And
 * only while the log from that checkpoint to our head is known and chains: every journaled op
 * must survive the install, or an acknowledged op could be forgotten.
 */
bool sync_may_journal(const struct replica *r, uint64_t op)
{
        uint64_t target = r->sync.checkpoint_op;
        if (!r->sync.active || !r->view_state_durable.grid_syncing || op <= target ||
            r->op < target || r->op - target >= r->config.wal_slot_count)
                return false;
        u128 expected = r->parent;
        for (uint64_t x = r->op; x > target; x--) {
                const struct wire_header *h = journal_header(r, x);
                if (h == NULL || h->checksum == 0 || h->checksum != expected)
                        return false;
                expected = h->prepare.parent;
        }
        const struct wire_header *t = journal_header(r, target);
        if (t != NULL && t->checksum != 0)
                return t->checksum == expected;
        return r->sync.prepare_checksum != 0 && r->sync.prepare_checksum == expected;
}

uint64_t sync_journal_base(const struct replica *r)
{
        if (r->sync.active && r->view_state_durable.grid_syncing &&
            r->sync.checkpoint_op > r->checkpoint_op_durable)
                return r->sync.checkpoint_op;
        return r->checkpoint_op_durable;
}

static void sync_start(struct replica *r, uint8_t source, uint64_t checkpoint_op)
{
        if (r->sync.active || r->checkpoint_in_progress || r->config.replica_count == 1 ||
            source == r->config.replica)
                return;
        /*
         * Our commit is there already: such a copy never installs (sync_finish), yet while it
         * runs our prepares are refused. A replica whose installed checkpoint was not durable
         * yet (still grid_syncing) restarted one at every heartbeat, and its cluster, whose
         * quorum needed it, stalled for seconds.
         */
        if (checkpoint_op <= r->commit || !sync_target_keeps_journal(r, checkpoint_op))
                return;
        log_info("state sync started source=%u checkpoint_op=%llu commit=%llu", source,
                 (unsigned long long)checkpoint_op, (unsigned long long)r->commit);
        sync_reset(r);
        r->sync.active = true;
        r->stats.state_syncs_started++;
        r->sync.source = source;
        r->sync.checkpoint_op = checkpoint_op;
        /*
         * Our own durable checkpoint's blocks stay as they are until it is superseded (none
         * can be while a sync is active), so what it names is here. Without one we trust (an
         * interrupted sync, a repair), blocks are looked for by reads.
         */
        if (!r->grid_syncing && r->checkpoint_root_durable.address != 0 &&
            ledger_checkpoint_blocks(r->ledger, r->checkpoint_root_durable, known_add, r) != 0) {
                free(r->sync.known);
                r->sync.known = NULL;
                r->sync.known_count = 0;
        }
        request_chunks(r);
}

/* ---- the source ------------------------------------------------------------------------ */

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

/* The list's bytes at `offset`: 32 per block, as lsm_block_ref lays them out. */
static uint32_t list_read(struct replica *r, uint64_t offset, uint8_t *into, uint32_t size)
{
        uint64_t bytes = r->image.list.count * sizeof(struct lsm_block_ref);
        uint32_t n = (uint32_t)MIN((uint64_t)size, bytes - MIN(bytes, offset));
        memcpy(into, (const uint8_t *)r->image.list.blocks + offset, n);
        return n;
}

_Static_assert(sizeof(struct lsm_block_ref) == 32, "a list entry is 32 bytes");

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
        /* A receiver copying a checkpoint we no longer serve gets our durable one's list. */
        uint32_t kind = want.kind;
        if (kind == REPLICA_SYNC_BLOCKS && !continuing)
                kind = REPLICA_SYNC_LIST;
        if (kind != REPLICA_SYNC_LIST && kind != REPLICA_SYNC_BLOCKS)
                kind = REPLICA_SYNC_IMAGE;
        uint32_t chunk = serve_chunk_size(r);
        struct sync_fields f = {
                .checkpoint_op = r->serving.op,
                .size = kind == REPLICA_SYNC_LIST ? blocks * sizeof(struct lsm_block_ref)
                                                  : blocks * LSM_BLOCK_SIZE,
                .prepare_checksum = r->serving.prepare_checksum,
                .timestamp = r->serving.timestamp,
                .offset = continuing ? want.offset : 0,
                .kind = kind,
                .root_address = r->serving.root.address,
                .root_checksum = r->serving.root.checksum,
                .chunk = chunk,
        };
        struct message *m = sync_message(r, COMMAND_BLOCK, &f);
        if (m == NULL)
                return;
        if (kind == REPLICA_SYNC_BLOCKS && want.size != 0)
                chunk = (uint32_t)MIN((uint64_t)chunk, want.size);
        uint32_t size = (uint32_t)MIN((uint64_t)chunk, f.size - MIN(f.size, f.offset));
        int64_t n;
        if (kind == REPLICA_SYNC_LIST)
                n = list_read(r, f.offset, message_body(m), size);
        else
                n = size == 0 ? 0 : replica_image_read(r, r->serving.root, f.offset,
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
                /* Gone with a later checkpoint: the first chunk of the durable one's list
                 * restarts the copy (asking on would never be answered). */
                struct sync_fields fresh = want;
                fresh.root_address = 0;
                fresh.root_checksum = 0;
                fresh.checkpoint_op = 0;
                fresh.kind = REPLICA_SYNC_LIST;
                fresh.offset = 0;
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

/* ---- the receiver ---------------------------------------------------------------------- */

static void sync_finish(struct replica *r)
{
        if (r->commit >= r->sync.checkpoint_op) {
                /* Caught up by repair meanwhile: installing would go back in time. */
                sync_reset(r);
                return;
        }
        ledger_blocks_flush(r->ledger); /* the superblock will name what was copied */
        if (replica_install(r, r->sync.root, r->sync.install_blocks, r->sync.checkpoint_op,
                            r->sync.prepare_checksum, r->sync.timestamp, r->sync.replies) != 0) {
                sync_reset(r);
                return;
        }
        r->stats.state_syncs_installed++;
        log_info("state sync installed checkpoint_op=%llu blocks=%llu blocks_copied=%llu "
                 "bytes_copied=%llu",
                 (unsigned long long)r->sync.checkpoint_op,
                 (unsigned long long)r->sync.install_blocks, (unsigned long long)r->sync.copied,
                 (unsigned long long)(r->sync.copied * LSM_BLOCK_SIZE));
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
 * Our grid is about to be overwritten: the superblock must say so first. False until it
 * does (the tick the mark is durable goes on: sync_tick).
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
                r->sync.chunk = f->chunk != 0 ? f->chunk : size; /* a format 1 peer: its first */
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
        if (size == 0 || f->offset + size > f->size || f->size > (1ull << 36) ||
            f->size != r->sync.size) {
                log_error("state sync: the peer's format 1 checkpoint is malformed bytes=%llu",
                          (unsigned long long)f->size);
                sync_reset(r);
                return;
        }
        if (!sync_mark_durable(r)) /* loading it rewrites our grid */
                return;
        if (r->sync.legacy_blob == NULL) {
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
        r->sync.install_blocks = 1;
        r->sync.phase = REPLICA_SYNC_PHASE_REPLIES;
        sync_sessions_known(r);
}

enum { BLOCK_UNKNOWN = 0, BLOCK_PRESENT = 1, BLOCK_NEEDED = 2 };

/* Probes of our own grid per call of blocks_pump: a copy goes on between them. */
#define SYNC_PROBES_PER_PUMP 256u

static void blocks_done(struct replica *r);

/* One block of the list is here now. */
static void block_present(struct replica *r, uint64_t index)
{
        r->sync.block_state[index] = BLOCK_PRESENT;
        r->sync.present++;
}

/*
 * Looks up which blocks are here (a few probes at a time), then asks for runs of those that
 * are not, a window of requests ahead; the copy is done when every block is here.
 */
static void blocks_pump(struct replica *r)
{
        if (r->sync.phase != REPLICA_SYNC_PHASE_BLOCKS || r->sync.awaiting_mark)
                return;
        uint8_t *probe = sync_scratch_block();
        if (probe == NULL)
                return;
        uint32_t probes = 0;
        while (r->sync.classified < r->sync.block_count) {
                uint64_t i = r->sync.classified;
                struct lsm_block_ref ref = r->sync.blocks[i];
                int known = known_of(r, ref);
                if (known == 0) {
                        if (probes == SYNC_PROBES_PER_PUMP)
                                break;
                        probes++;
                        known = ledger_block_present(r->ledger, ref, probe) ? 1 : -1;
                        if (!known_set(r, ref.address,
                                       known > 0 ? ref.checksum : REPLICA_SYNC_NOT_HERE)) {
                                sync_reset(r);
                                return;
                        }
                }
                if (known > 0) {
                        block_present(r, i);
                } else {
                        r->sync.block_state[i] = BLOCK_NEEDED;
                }
                r->sync.classified++;
        }
        if (probes > 0)
                r->sync.tick = r->tick; /* progress, not silence */
        uint32_t chunk = r->sync.chunk;
        while (r->sync.inflight < SYNC_WINDOW &&
               r->sync.cursor < r->sync.classified * LSM_BLOCK_SIZE) {
                uint64_t i = r->sync.cursor / LSM_BLOCK_SIZE;
                uint32_t within = (uint32_t)(r->sync.cursor % LSM_BLOCK_SIZE);
                if (r->sync.block_state[i] != BLOCK_NEEDED) {
                        r->sync.cursor = (i + 1) * LSM_BLOCK_SIZE;
                        continue;
                }
                uint64_t size;
                if (chunk >= LSM_BLOCK_SIZE) {
                        uint64_t j = i + 1;
                        while (j < r->sync.classified && r->sync.block_state[j] == BLOCK_NEEDED &&
                               (j + 1 - i) * LSM_BLOCK_SIZE <= chunk)
                                j++;
                        size = (j - i) * LSM_BLOCK_SIZE;
                } else {
                        size = MIN(chunk, LSM_BLOCK_SIZE - within);
                }
                request_at(r, REPLICA_SYNC_BLOCKS, r->sync.cursor, size);
                r->sync.inflight++;
                r->sync.cursor += size;
        }
        if (r->sync.present == r->sync.block_count)
                blocks_done(r);
}

/* The list is in: each block of it is looked for here, and the rest asked for. */
static void list_done(struct replica *r)
{
        uint64_t count = r->sync.size / sizeof(struct lsm_block_ref);
        r->sync.blocks = (struct lsm_block_ref *)r->sync.list;
        r->sync.block_count = count;
        r->sync.block_state = calloc(count, 1);
        if (r->sync.block_state == NULL) {
                sync_reset(r);
                return;
        }
        struct lsm_block_ref first = r->sync.blocks[0];
        if (first.address != r->sync.root.address || first.checksum != r->sync.root.checksum) {
                log_error("state sync: the list's first block is not the root named");
                sync_reset(r);
                return;
        }
        uint64_t address_max = ledger_grid_blocks_max(r->ledger);
        for (uint64_t i = 0; i < count; i++) {
                uint64_t address = r->sync.blocks[i].address;
                if (address == 0 || address > address_max) {
                        log_error("state sync: the peer's block list is malformed: block %llu "
                                  "at address %llu (this grid takes 1 to %llu)",
                                  (unsigned long long)i, (unsigned long long)address,
                                  (unsigned long long)address_max);
                        sync_reset(r);
                        return;
                }
        }
        r->sync.phase = REPLICA_SYNC_PHASE_BLOCKS;
        r->sync.install_blocks = count;
        if (sync_mark_durable(r))
                blocks_pump(r);
}

/* Every block is here: the root's session table names the replies to fetch. */
static void blocks_done(struct replica *r)
{
        if (r->sync.root_block == NULL && (r->sync.root_block = malloc(LSM_BLOCK_SIZE)) == NULL) {
                sync_reset(r);
                return;
        }
        if (ledger_block_read(r->ledger, r->sync.root, r->sync.root_block) != 0) {
                sync_reset(r);
                return;
        }
        r->stats.state_sync_blocks_kept += r->sync.block_count - r->sync.target_copied;
        log_info("state sync: every block is here checkpoint_op=%llu blocks=%llu copied=%llu",
                 (unsigned long long)r->sync.checkpoint_op,
                 (unsigned long long)r->sync.block_count, (unsigned long long)r->sync.copied);
        r->sync.phase = REPLICA_SYNC_PHASE_REPLIES;
        sync_sessions_known(r);
}

/* A whole block of the list arrived: written to our grid at its address. False on failure. */
static bool block_install(struct replica *r, uint64_t index, const uint8_t *block)
{
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        struct lsm_block_ref want = r->sync.blocks[index];
        const char *why = h->kind == LSM_BLOCK_NONE || h->kind >= LSM_BLOCK_KIND_COUNT
                                  ? "no block kind"
                                  : lsm_block_check(block, want, (enum lsm_block_kind)h->kind);
        if (why != NULL) {
                log_warn("state sync: a block is not the one listed address=%llu: %s",
                         (unsigned long long)want.address, why);
                return true; /* asked for again */
        }
        if (ledger_block_install(r->ledger, block) != 0) {
                ledger_blocks_flush(r->ledger); /* stops here if the device failed for good */
                return false;
        }
        if (!known_set(r, want.address, want.checksum))
                return false;
        block_present(r, index);
        r->sync.copied++;
        r->sync.target_copied++;
        r->stats.state_sync_blocks_copied++;
        return true;
}

/* A piece of block `index` (messages smaller than a block): the block once all are in. */
static bool block_piece(struct replica *r, uint64_t index, uint32_t within, const uint8_t *piece,
                        uint32_t size)
{
        uint32_t chunk = r->sync.chunk;
        if (chunk == 0 || within % chunk != 0)
                return true;
        uint32_t slot = SYNC_WINDOW;
        for (uint32_t k = 0; k < SYNC_WINDOW; k++) {
                if (r->sync.pieces[k].used && r->sync.pieces[k].index == index)
                        slot = k;
        }
        for (uint32_t k = 0; k < SYNC_WINDOW && slot == SYNC_WINDOW; k++) {
                if (!r->sync.pieces[k].used)
                        slot = k;
        }
        if (slot == SYNC_WINDOW)
                slot = (uint32_t)(index % SYNC_WINDOW); /* leftovers of lost pieces */
        if (r->sync.pieces[slot].block == NULL &&
            (r->sync.pieces[slot].block = malloc(LSM_BLOCK_SIZE)) == NULL)
                return false;
        if (!r->sync.pieces[slot].used || r->sync.pieces[slot].index != index) {
                r->sync.pieces[slot].used = true;
                r->sync.pieces[slot].index = index;
                r->sync.pieces[slot].mask = 0;
        }
        if (!piece_gather(r->sync.pieces[slot].block, &r->sync.pieces[slot].mask, within, chunk,
                          piece, size))
                return true;
        r->sync.pieces[slot].used = false;
        return block_install(r, index, r->sync.pieces[slot].block);
}

/* A run of blocks (or a piece of one) of the checkpoint being copied. */
static void on_blocks(struct replica *r, const struct sync_fields *f, const uint8_t *body,
                      uint32_t size)
{
        uint64_t image = r->sync.block_count * LSM_BLOCK_SIZE;
        r->sync.source_retries = 0;
        if (r->sync.inflight > 0)
                r->sync.inflight--;
        if (size == 0 || f->size != image || f->offset >= image || size > image - f->offset)
                return;
        for (uint32_t at = 0; at < size;) {
                uint64_t index = (f->offset + at) / LSM_BLOCK_SIZE;
                uint32_t within = (uint32_t)((f->offset + at) % LSM_BLOCK_SIZE);
                uint32_t piece = MIN(size - at, LSM_BLOCK_SIZE - within);
                bool ok = true;
                if (r->sync.block_state[index] != BLOCK_PRESENT)
                        ok = piece == LSM_BLOCK_SIZE ? block_install(r, index, body + at)
                                                     : block_piece(r, index, within, body + at,
                                                                   piece);
                if (!ok) {
                        sync_reset(r);
                        return;
                }
                at += piece;
        }
        blocks_pump(r);
}

/* The list's chunk at f->offset, in order (the ordered stream: on_block). */
static void on_list_chunk(struct replica *r, const struct sync_fields *f, const uint8_t *body,
                          uint32_t size)
{
        if (f->offset == 0 && r->sync.list == NULL) {
                if (f->size == 0 || f->size % sizeof(struct lsm_block_ref) != 0 ||
                    f->size / sizeof(struct lsm_block_ref) > ledger_grid_blocks_max(r->ledger)) {
                        log_error("state sync: the peer's block list is malformed bytes=%llu",
                                  (unsigned long long)f->size);
                        sync_reset(r);
                        return;
                }
                if (f->chunk < 4096 || f->chunk % 4096 != 0) {
                        log_error("state sync: the peer's chunk size is malformed chunk=%u",
                                  f->chunk);
                        sync_reset(r);
                        return;
                }
                r->sync.list = malloc(f->size);
                if (r->sync.list == NULL) {
                        log_error("state sync: no memory for a block list bytes=%llu",
                                  (unsigned long long)f->size);
                        sync_reset(r);
                        return;
                }
        }
        if (r->sync.list == NULL || size == 0 || f->offset + size > f->size) {
                sync_reset(r);
                return;
        }
        memcpy(r->sync.list + f->offset, body, size);
        r->sync.source_retries = 0;
        if (sync_chunk_done(r, f, size))
                list_done(r);
}

static void on_block(struct replica *r, struct message *m)
{
        struct sync_fields f;
        memcpy(&f, m->header->raw, sizeof(f));
        if (!r->sync.active || m->header->replica != r->sync.source)
                return;
        uint32_t size = m->header->size - WIRE_HEADER_SIZE;
        bool legacy = f.root_address == 0 && f.root_checksum == 0 && f.size > 0;
        bool same = f.checkpoint_op == r->sync.checkpoint_op &&
                    f.root_address == r->sync.root.address &&
                    f.root_checksum == r->sync.root.checksum;
        if (f.kind == REPLICA_SYNC_BLOCKS) {
                if (same && r->sync.phase == REPLICA_SYNC_PHASE_BLOCKS)
                        on_blocks(r, &f, message_body(m), size);
                return;
        }
        if (f.kind != REPLICA_SYNC_LIST && !legacy) {
                log_warn("state sync: the source does not list its blocks (an older build) "
                         "source=%u", r->sync.source);
                return;
        }
        if (!same || f.size != r->sync.size) {
                if (f.offset != 0)
                        return;
                if (!sync_target_keeps_journal(r, f.checkpoint_op)) {
                        log_info("state sync: the source's checkpoint is older than ops "
                                 "journaled meanwhile source=%u checkpoint_op=%llu op=%llu",
                                 r->sync.source, (unsigned long long)f.checkpoint_op,
                                 (unsigned long long)r->sync_journaled_max);
                        return;
                }
                if (sync_journals_cover(r, f.checkpoint_op) && !r->grid_syncing &&
                    !r->sync.forced) {
                        /* This source's journal has what we lack (see sync_maybe). */
                        log_info("state sync ended: the source's journal covers us source=%u "
                                 "checkpoint_op=%llu commit=%llu",
                                 r->sync.source, (unsigned long long)f.checkpoint_op,
                                 (unsigned long long)r->commit);
                        sync_reset(r);
                        return;
                }
                /* The first, or the source moved on to a newer checkpoint: copy that one. */
                if (r->sync.phase != REPLICA_SYNC_PHASE_LIST || r->sync.root.address != 0)
                        log_info("state sync: the source serves a newer checkpoint source=%u "
                                 "checkpoint_op=%llu",
                                 r->sync.source, (unsigned long long)f.checkpoint_op);
                uint32_t chunk = r->sync.chunk;
                sync_target_forget(r);
                r->sync.chunk = chunk;
                r->sync.checkpoint_op = f.checkpoint_op;
                r->sync.size = f.size;
                r->sync.root = (struct lsm_block_ref){.address = f.root_address,
                                                      .checksum = f.root_checksum};
        }
        if (r->sync.phase != REPLICA_SYNC_PHASE_LIST)
                return; /* the list again, already in */
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
                                request_at(r, REPLICA_SYNC_LIST, r->sync.offset, 0);
                        }
                }
                return;
        }
        if (legacy)
                on_legacy_chunk(r, &f, message_body(m), size);
        else
                on_list_chunk(r, &f, message_body(m), size);
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
        if (!r->sync.active || r->sync.phase != REPLICA_SYNC_PHASE_REPLIES)
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
        uint32_t kind = ((const struct sync_fields *)m->header->raw)->kind;
        switch (m->header->command) {
        case COMMAND_REQUEST_BLOCKS:
                if (kind == REPLICA_SYNC_ONE_BLOCK)
                        serve_one_block(r, m);
                else
                        serve_chunk(r, m);
                break;
        case COMMAND_BLOCK:
                if (kind == REPLICA_SYNC_ONE_BLOCK)
                        on_one_block(r, m);
                else
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
 * primary, else the next one, starting from its list (what we copied stays: known).
 */
/* Everything still lacking is asked for again (of a new source, or answers were lost). */
static void sync_ask_again(struct replica *r)
{
        switch (r->sync.phase) {
        case REPLICA_SYNC_PHASE_LIST:
                request_chunks_again(r);
                break;
        case REPLICA_SYNC_PHASE_BLOCKS:
                r->sync.inflight = 0;
                r->sync.cursor = 0;
                sync_pieces_release(r);
                blocks_pump(r);
                break;
        default:
                request_replies(r);
                break;
        }
}

/*
 * Another source: the view's primary if it was heard lately, else the peer heard most recently
 * (never the one left: it just went quiet). Leaving a cut-off source for the primary of a view
 * that is itself cut off, and back, cost a lagging replica seconds.
 */
static void sync_source_next(struct replica *r)
{
        uint8_t n = r->config.replica_count;
        uint8_t primary = (uint8_t)replica_primary_index(r, r->view);
        int next = -1;
        if (primary != r->config.replica && primary != r->sync.source &&
            r->tick - r->peer_heard_tick[primary] < TICKS_SYNC_SOURCE_QUIET)
                next = primary;
        if (next < 0) {
                for (uint8_t k = 1; k < n; k++) {
                        uint8_t j = (uint8_t)((r->sync.source + k) % n);
                        if (j == r->config.replica)
                                continue;
                        if (next < 0 || r->peer_heard_tick[j] > r->peer_heard_tick[next])
                                next = j;
                }
        }
        if (next < 0 || next == r->sync.source)
                return; /* no other replica to ask */
        log_info("state sync source silent; asking another source=%d from=%u checkpoint_op=%llu",
                 next, r->sync.source, (unsigned long long)r->sync.checkpoint_op);
        sync_target_forget(r);
        free(r->sync.legacy_blob);
        r->sync.legacy_blob = NULL;
        r->sync.source = (uint8_t)next;
        r->sync.source_heard_tick = r->peer_heard_tick[next];
        r->sync.tick = r->tick;
        r->sync.chunk = 0; /* its messages may be of another size */
}

/*
 * A copy that lasts as long as the journal's ring stops this replica's part in the quorum: it
 * journals the view's new ops only while they fit after the checkpoint being copied
 * (sync_may_journal), and the primary's newer checkpoints move nothing while we copy an older
 * one. With another replica down, the majority then commits nothing until the copy ends: the
 * partition suite's lagging-backup-then-primary (a --development ring of 256 ops, about 0.2 s
 * of its load) went 2.5 s without service in CI, and 3.7-3.9 s in 2 of 5 runs here with the
 * copying replica's writes limited to 20 MB/s. Likewise when the log from that checkpoint to
 * our head is not all known (a start_view carries only the headers its message holds): not one
 * op is journaled. So once the ring is within an interval of full, or the next op could not be
 * journaled, and the primary has a newer durable checkpoint, the source is asked for its list:
 * serving its durable checkpoint (the hold keeps every block of it), it answers with that
 * one's list if newer, and the copy goes on from there, keeping the blocks it has (known);
 * the ring then starts at that checkpoint. Ops it covers need no slot here any more: nothing
 * executes before the install, and the install keeps only what chains onto it.
 */
static void sync_retarget(struct replica *r)
{
        if (r->sync.phase != REPLICA_SYNC_PHASE_LIST && r->sync.phase != REPLICA_SYNC_PHASE_BLOCKS)
                return;
        uint64_t target = r->sync.checkpoint_op;
        if (!r->view_state_durable.grid_syncing || r->sync.awaiting_mark ||
            r->primary_checkpoint_op <= target ||
            r->tick - r->sync.retarget_tick < TICKS_SYNC_RETARGET)
                return;
        bool ring_filling = r->op >= target && r->op - target >= r->config.wal_slot_count -
                                                                     r->config.checkpoint_interval;
        if (!ring_filling && sync_may_journal(r, r->op + 1))
                return;
        r->sync.retarget_tick = r->tick;
        r->stats.state_sync_retargets++;
        struct sync_fields f = {.kind = REPLICA_SYNC_LIST}; /* no checkpoint named: the newest */
        struct message *m = sync_message(r, COMMAND_REQUEST_BLOCKS, &f);
        if (m != NULL)
                sync_send(r, m, r->sync.source);
}

void sync_tick(struct replica *r)
{
        /*
         * The mark is durable: go on now. Waiting for the retry instead cost half a second,
         * then another on a dead source, while a cluster whose quorum needs this replica
         * cannot commit.
         */
        if (r->sync.active && r->sync.awaiting_mark && r->view_state_durable.grid_syncing) {
                r->sync.awaiting_mark = false;
                if (r->sync.phase != REPLICA_SYNC_PHASE_BLOCKS)
                        request_chunks_again(r); /* blocks: pumped just below */
        }
        if (r->serving.active && r->tick - r->serving.tick > TICKS_SYNC_SERVE_IDLE) {
                ledger_unhold(r->ledger);
                r->serving.active = false;
        }
        if (r->sync.active && r->sync.phase == REPLICA_SYNC_PHASE_BLOCKS)
                blocks_pump(r); /* the probes left from the last call */
        block_repair_tick(r);
        if (!r->sync.active)
                return;
        sync_retarget(r);
        /*
         * A source that is our view's primary sends a heartbeat every TICKS_HEARTBEAT: quiet
         * for TICKS_SYNC_SOURCE_QUIET while answers are awaited, it is cut off (a partition,
         * a crash). A new view is on its way, whose quorum may need our copy: go on with
         * another source now rather than after TICKS_SYNC_RETRY.
         */
        if (r->sync.source == replica_primary_index(r, r->view) &&
            r->tick - r->sync.source_heard_tick >= TICKS_SYNC_SOURCE_QUIET &&
            r->tick - r->sync.tick >= TICKS_SYNC_SOURCE_QUIET && r->config.replica_count > 2) {
                r->sync.source_retries = 0;
                sync_source_next(r);
                sync_ask_again(r);
                return;
        }
        if (r->tick - r->sync.tick < TICKS_SYNC_AGAIN)
                return;
        /*
         * No answer, yet the source is heard (its prepares and commits come): its answers
         * were dropped (a full send queue behind the prepares it sends us meanwhile) or its
         * loop was busy. Asked again before another source: a copy from another replica
         * shares fewer blocks (its allocations differ where a hold kept blocks), and the
         * first one of 5 GB switched sources twice for this. A source that never answers
         * (a damaged block) is left after SYNC_SOURCE_RETRIES.
         */
        bool heard = r->tick - r->sync.source_heard_tick < TICKS_SYNC_AGAIN;
        if (heard && r->sync.source_retries < SYNC_SOURCE_RETRIES) {
                r->sync.source_retries++;
        } else {
                if (r->tick - r->sync.tick < TICKS_SYNC_RETRY)
                        return;
                r->sync.source_retries = 0;
                if (r->config.replica_count > 2)
                        sync_source_next(r);
        }
        sync_ask_again(r);
}

void sync_view_joined(struct replica *r)
{
        uint8_t primary = (uint8_t)replica_primary_index(r, r->view);
        if (!r->sync.active || r->sync.source == primary || primary == r->config.replica ||
            r->tick - r->sync.source_heard_tick < TICKS_SYNC_SOURCE_QUIET)
                return;
        /*
         * The source went quiet and a new view began without it as primary: it is most
         * likely cut off, and this cluster's quorum may wait for our copy. The new primary
         * was just heard; asking it now saves the half second of silence sync_tick waits.
         */
        r->sync.source_retries = 0;
        sync_source_next(r);
        sync_ask_again(r);
}
