/*
 * sim_disk.c: a replica's simulated data file, and the env functions that use it.
 *
 * The disk holds what `tally start`'s data file holds: the view state, one durable checkpoint
 * (its root in the grid, op, prepare checksum, timestamp), the grid of the ledger's blocks, the WAL as a headers zone and a prepares zone with one
 * slot per op modulo the slot count, and the client replies zone. Reads apply exactly the checks
 * storage.c applies to what it reads back (checksums, sizes, header against prepare): the bytes
 * themselves may be anything, and the replica must cope with what those checks let through.
 *
 * Writes are acknowledged after a simulated latency, in the order they were issued, and only
 * then are they durable. At a crash, the writes in flight land, land torn or vanish. Faults
 * that hit acknowledged data (a bit flip in a stored entry, a write acknowledged but stored
 * damaged, a wipe) are recorded in `damaged_op` / `wiped`, so sim.c can keep them on fewer
 * replicas than could lose a committed op; they heal when the slot is written again or a
 * checkpoint covers the op. A disk that acknowledges a write and silently keeps the old
 * contents is not simulated: a replica cannot tell that from a write it never made, and with
 * the other holder of a just-committed op away no protocol keeps that op (see README).
 *
 * The grid (the ledger's blocks) is written synchronously by the ledger, as the data file's
 * grid is, through sim_grid_device: its reads and writes meet the grid faults. A read may fail
 * (-EIO, transient); a block at rest may rot (a bit flips); a write may be misdirected (it lands
 * at another address, overwriting that block, and its own address keeps what it held). These
 * three may hit blocks the durable checkpoint names, so they are damage kept within
 * sim_damage_allowed, on replicas of three or more only (one replica has no peer to copy from,
 * two tolerate no damage): but a single replica meets transient read errors too, which abort it
 * and a restart reads again. And a replica may crash in the middle of a block write (the block
 * lands whole, torn or not at all) and unwind out of its op: such a block is never named by the
 * durable checkpoint (blocks are written after it, at addresses it leaves free), so a crash
 * there is not damage, and reading a torn block afterwards is a bug the simulator reports.
 * Damage lasts until the block is written again. The grid faults draw from their own random
 * stream (sim->grid_prng), as the outsider does: a run they never touch is the run it was
 * without them.
 */
#include "sim/sim_internal.h"
#include "wire/checksum.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void sim_disk_init(struct sim *sim, struct sim_disk *disk)
{
        (void)sim;
        memset(disk, 0, sizeof(*disk));
        disk->view_state = (struct replica_view_state){.fresh = true}; /* as formatted */
        disk->headers = calloc(SIM_WAL_SLOTS, WIRE_HEADER_SIZE);
        disk->prepares = calloc(SIM_WAL_SLOTS, sizeof(*disk->prepares));
        disk->replies = calloc(SIM_REPLY_SLOTS, sizeof(*disk->replies));
        disk->damaged_op = calloc(SIM_WAL_SLOTS, sizeof(*disk->damaged_op));
        tally_assert(disk->headers != NULL && disk->prepares != NULL && disk->replies != NULL &&
                     disk->damaged_op != NULL);
        lsm_device_memory_init(&disk->grid, SIM_GRID_BLOCKS);
        for (uint32_t i = 0; i < SIM_GRID_PENDING_MAX; i++) {
                disk->grid_pending[i].block = malloc(LSM_BLOCK_SIZE);
                tally_assert(disk->grid_pending[i].block != NULL);
        }
}

void sim_disk_format(struct sim *sim, struct sim_disk *disk)
{
        (void)sim;
        tally_assert(disk->write_count == 0 && !disk->checkpoint_pending &&
                     disk->grid_pending_count == 0);
        disk->view_state = (struct replica_view_state){.fresh = true};
        disk->checkpoint_present = false;
        disk->checkpoint_root = (struct lsm_block_ref){0};
        disk->checkpoint_blocks = 0;
        lsm_device_memory_deinit(&disk->grid);
        lsm_device_memory_init(&disk->grid, SIM_GRID_BLOCKS);
        disk->grid_damage_count = 0;
        disk->grid_written_max = 0;
        disk->grid_met = false;
        disk->grid_repairing = false;
        disk->checkpoint_op = 0;
        disk->checkpoint_prepare_checksum = 0;
        disk->checkpoint_timestamp = 0;
        memset(disk->headers, 0, (size_t)SIM_WAL_SLOTS * WIRE_HEADER_SIZE);
        for (uint32_t s = 0; s < SIM_WAL_SLOTS; s++) {
                free(disk->prepares[s]);
                disk->prepares[s] = NULL;
                disk->damaged_op[s] = 0;
        }
        for (uint32_t s = 0; s < SIM_REPLY_SLOTS; s++) {
                free(disk->replies[s]);
                disk->replies[s] = NULL;
        }
}

void sim_disk_deinit(struct sim_disk *disk)
{
        tally_assert(disk->write_count == 0 && !disk->checkpoint_pending);
        lsm_device_memory_deinit(&disk->grid);
        for (uint32_t i = 0; i < SIM_GRID_PENDING_MAX; i++)
                free(disk->grid_pending[i].block);
        for (uint32_t s = 0; s < SIM_WAL_SLOTS; s++)
                free(disk->prepares[s]);
        for (uint32_t s = 0; s < SIM_REPLY_SLOTS; s++)
                free(disk->replies[s]);
        free(disk->headers);
        free(disk->prepares);
        free(disk->replies);
        free(disk->damaged_op);
        memset(disk, 0, sizeof(*disk));
}

/* ---- the checks storage.c makes on what it reads ---------------------------------------- */

static bool header_read(const struct sim *sim, const struct sim_disk *disk, uint32_t slot,
                        struct wire_header *into)
{
        memcpy(into, disk->headers[slot], WIRE_HEADER_SIZE);
        return into->command == COMMAND_PREPARE && into->cluster == sim->config.cluster &&
               wire_header_checksum_valid(into) && into->size >= WIRE_HEADER_SIZE &&
               into->size <= SIM_REQUEST_SIZE_MAX;
}

static bool prepare_read(const struct sim_disk *disk, uint32_t slot,
                         const struct wire_header *header, struct message *into)
{
        if (disk->prepares[slot] == NULL)
                return false;
        if (header == NULL) {
                /* Whatever intact prepare the slot holds, checked by its own checksums. */
                memcpy(into->buffer, disk->prepares[slot], WIRE_HEADER_SIZE);
                const struct wire_header *h = into->header;
                if (!wire_header_checksum_valid(h) || h->command != COMMAND_PREPARE ||
                    h->size < WIRE_HEADER_SIZE || h->size > SIM_REQUEST_SIZE_MAX)
                        return false;
                memcpy(into->buffer, disk->prepares[slot], h->size);
                return wire_body_checksum_valid(h, into->buffer + WIRE_HEADER_SIZE);
        }
        memcpy(into->buffer, disk->prepares[slot], header->size);
        return memcmp(into->header, header, WIRE_HEADER_SIZE) == 0 &&
               wire_body_checksum_valid(into->header, into->buffer + WIRE_HEADER_SIZE);
}

static bool slot_intact(const struct sim *sim, const struct sim_disk *disk, uint32_t slot,
                        uint64_t op, struct message *scratch)
{
        struct wire_header header;
        return header_read(sim, disk, slot, &header) && header.prepare.op == op &&
               prepare_read(disk, slot, &header, scratch);
}

static int read_reply(void *context, uint32_t slot, u128 checksum, struct message *into)
{
        struct sim_replica *sr = context;
        const struct sim_disk *disk = &sr->disk;
        if (slot >= SIM_REPLY_SLOTS || disk->replies[slot] == NULL)
                return -1;
        memcpy(into->buffer, disk->replies[slot], WIRE_HEADER_SIZE);
        const struct wire_header *h = into->header;
        if (h->checksum != checksum || !wire_header_checksum_valid(h) ||
            h->size < WIRE_HEADER_SIZE || h->size > SIM_REQUEST_SIZE_MAX)
                return -1;
        memcpy(into->buffer, disk->replies[slot], h->size);
        return wire_body_checksum_valid(h, into->buffer + WIRE_HEADER_SIZE) ? 0 : -1;
}

bool sim_env_reply_read(void *context, uint32_t slot, u128 checksum, struct message *into)
{
        return read_reply(context, slot, checksum, into) == 0;
}

static bool read_header(void *context, uint32_t slot, struct wire_header *into)
{
        struct sim_replica *sr = context;
        tally_assert(slot < SIM_WAL_SLOTS);
        return header_read(sr->sim, &sr->disk, slot, into);
}

static bool read_prepare(void *context, uint32_t slot, const struct wire_header *header,
                         struct message *into)
{
        struct sim_replica *sr = context;
        tally_assert(slot < SIM_WAL_SLOTS);
        return prepare_read(&sr->disk, slot, header, into);
}

void sim_disk_durable(struct sim *sim, struct sim_replica *sr, struct replica_durable *durable)
{
        (void)sim;
        struct sim_disk *disk = &sr->disk;
        memset(durable, 0, sizeof(*durable));
        durable->view_state = disk->view_state;
        durable->context = sr;
        durable->read_reply = read_reply;
        durable->read_header = read_header;
        durable->read_prepare = read_prepare;
        if (disk->checkpoint_present) {
                durable->checkpoint_root = disk->checkpoint_root;
                durable->checkpoint_blocks = disk->checkpoint_blocks;
                durable->checkpoint_op = disk->checkpoint_op;
                durable->checkpoint_prepare_checksum = disk->checkpoint_prepare_checksum;
                durable->checkpoint_timestamp = disk->checkpoint_timestamp;
        }
}

/* ---- journal ----------------------------------------------------------------------------- */

static void store_prepare(struct sim_disk *disk, const struct message *m)
{
        uint32_t slot = (uint32_t)(m->header->prepare.op % SIM_WAL_SLOTS);
        memcpy(disk->headers[slot], m->header, WIRE_HEADER_SIZE);
        if (disk->prepares[slot] == NULL) {
                disk->prepares[slot] = malloc(SIM_REQUEST_SIZE_MAX);
                tally_assert(disk->prepares[slot] != NULL);
        }
        memcpy(disk->prepares[slot], m->buffer, m->header->size);
        disk->damaged_op[slot] = 0;
}

bool sim_env_journal_write(void *context, struct message *prepare,
                           void (*done)(void *replica, struct message *prepare), void *replica)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        struct sim_disk *disk = &sr->disk;
        const struct wire_header *h = prepare->header;
        if (h->command != COMMAND_PREPARE || h->prepare.op == 0 || h->size > SIM_REQUEST_SIZE_MAX ||
            !wire_header_checksum_valid(h)) {
                sim_fail(sim, "replica %u journals an invalid prepare op=%llu", sr->index,
                         (unsigned long long)h->prepare.op);
                return false;
        }
        if (disk->write_count == SIM_WRITES_MAX)
                return false;
        if (sim_fault_on(sim, SIM_FAULT_BUSY) && !sim->healing &&
            sim_prng_chance(&sim->prng, 5000)) {
                sim_count_fault(sim, SIM_FAULT_BUSY);
                return false;
        }
        uint64_t latency_ms = sim_prng_chance(&sim->prng, 10000) ? sim_prng_range(&sim->prng, 10, 60)
                                                                  : sim_prng_range(&sim->prng, 1, 4);
        uint64_t at = sim->now_ns + latency_ms * SIM_NS_PER_MS;
        if (disk->write_count > 0) {
                const struct sim_write *last =
                        &disk->writes[(disk->write_head + disk->write_count - 1) % SIM_WRITES_MAX];
                at = MAX(at, last->at_ns); /* one queue: completions keep the issue order */
        }
        struct sim_write *w = &disk->writes[(disk->write_head + disk->write_count) % SIM_WRITES_MAX];
        w->prepare = message_ref(prepare);
        w->done = done;
        w->done_context = replica;
        w->at_ns = at;
        disk->write_count++;
        return true;
}

bool sim_env_journal_read(void *context, uint64_t op, u128 checksum, struct message *into)
{
        struct sim_replica *sr = context;
        uint32_t slot = (uint32_t)(op % SIM_WAL_SLOTS);
        struct wire_header header;
        return header_read(sr->sim, &sr->disk, slot, &header) && header.prepare.op == op &&
               (checksum == 0 || header.checksum == checksum) &&
               prepare_read(&sr->disk, slot, &header, into);
}

/* ---- view state and checkpoints ---------------------------------------------------------- */

bool sim_env_view_write(void *context, const struct replica_view_state *state,
                        void (*done)(void *replica), void *replica)
{
        uint32_t view = state->view, log_view = state->log_view;
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        struct sim_disk *disk = &sr->disk;
        if (disk->view_pending)
                return false;
        if (log_view > view) {
                sim_fail(sim, "replica %u persists log_view=%u > view=%u", sr->index, log_view,
                         view);
                return false;
        }
        disk->view_pending = true;
        disk->view_state_next = *state;
        disk->view_at_ns = sim->now_ns + sim_prng_range(&sim->prng, 1, 5) * SIM_NS_PER_MS;
        disk->view_done = done;
        disk->view_done_context = replica;
        return true;
}

bool sim_env_checkpoint(void *context, const struct replica_checkpoint *checkpoint,
                        void (*done)(void *replica, bool ok), void *replica)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        struct sim_disk *disk = &sr->disk;
        if (disk->checkpoint_pending)
                return false;
        disk->checkpoint_pending = true;
        disk->checkpoint_next = *checkpoint;
        for (uint32_t i = 0; i < checkpoint->reply_count; i++)
                message_ref(checkpoint->replies[i].reply);
        disk->checkpoint_at_ns = sim->now_ns + sim_prng_range(&sim->prng, 2, 30) * SIM_NS_PER_MS;
        disk->checkpoint_done = done;
        disk->checkpoint_done_context = replica;
        return true;
}

static void checkpoint_release(struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        for (uint32_t i = 0; i < disk->checkpoint_next.reply_count; i++)
                message_unref(&sr->pool, disk->checkpoint_next.replies[i].reply);
        disk->checkpoint_pending = false;
}

/* The checkpoint's blocks and replies are written, then the superblock switches to it. */
static void checkpoint_complete(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        const struct replica_checkpoint *cp = &disk->checkpoint_next;
        if (cp->root.address == 0)
                sim_fail(sim, "replica %u checkpoints without a root op=%llu", sr->index,
                         (unsigned long long)cp->op);
        for (uint32_t i = 0; i < cp->reply_count; i++) {
                const struct message *reply = cp->replies[i].reply;
                uint32_t slot = cp->replies[i].slot;
                tally_assert(slot < SIM_REPLY_SLOTS);
                if (disk->replies[slot] == NULL) {
                        disk->replies[slot] = malloc(SIM_REQUEST_SIZE_MAX);
                        tally_assert(disk->replies[slot] != NULL);
                }
                memcpy(disk->replies[slot], reply->buffer, reply->header->size);
        }
        disk->checkpoint_root = cp->root;
        disk->checkpoint_blocks = cp->blocks;
        disk->view_state.grid_syncing = false; /* the superblock names our own checkpoint */
        disk->grid_repairing = false;
        disk->checkpoint_present = true;
        disk->checkpoint_op = cp->op;
        disk->checkpoint_prepare_checksum = cp->prepare_checksum;
        disk->checkpoint_timestamp = cp->timestamp;
        sim->report->checkpoints++;
        sim_note(sim, "checkpoint durable replica=%u op=%llu", sr->index,
                 (unsigned long long)cp->op);
        void (*done)(void *, bool) = disk->checkpoint_done;
        void *done_context = disk->checkpoint_done_context;
        checkpoint_release(sr);
        sim_disk_heal_check(sim, sr);
        SIM_REPLICA_CALL(sim, sr, done(done_context, true));
}

void sim_disk_complete_due(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        sim_enter(sr);
        while (!sim->failed && sr->up && disk->write_count > 0 &&
               disk->writes[disk->write_head].at_ns <= sim->now_ns) {
                struct sim_write w = disk->writes[disk->write_head];
                disk->write_head = (disk->write_head + 1) % SIM_WRITES_MAX;
                disk->write_count--;
                uint64_t op = w.prepare->header->prepare.op;
                store_prepare(disk, w.prepare);
                if (sim_fault_on(sim, SIM_FAULT_BAD_WRITE) && !sim->healing &&
                    sim_prng_chance(&sim->prng, 5000) && sim_damage_allowed(sim, sr->index)) {
                        /* Acknowledged, but what the disk holds is damaged. */
                        uint32_t slot = (uint32_t)(op % SIM_WAL_SLOTS);
                        disk->prepares[slot][sim_prng_below(&sim->prng, w.prepare->header->size)] ^=
                                (uint8_t)(1u << sim_prng_below(&sim->prng, 8));
                        disk->damaged_op[slot] = op;
                        sim_count_fault(sim, SIM_FAULT_BAD_WRITE);
                        sim_note(sim, "bad write replica=%u op=%llu", sr->index,
                                 (unsigned long long)op);
                }
                SIM_REPLICA_CALL(sim, sr, w.done(w.done_context, w.prepare));
                if (!sr->up)
                        return; /* crashed in it: its pool is a new one */
                message_unref(&sr->pool, w.prepare);
        }
        if (!sim->failed && sr->up && disk->view_pending && disk->view_at_ns <= sim->now_ns) {
                disk->view_pending = false;
                disk->view_state = disk->view_state_next;
                SIM_REPLICA_CALL(sim, sr, disk->view_done(disk->view_done_context));
        }
        if (!sim->failed && sr->up && disk->checkpoint_pending &&
            disk->checkpoint_at_ns <= sim->now_ns)
                checkpoint_complete(sim, sr);
}

/* ---- crashes and damage ------------------------------------------------------------------ */

/* Part of a write reached the disk: a prefix of the header, or of the prepare, or only one. */
static void tear(struct sim *sim, struct sim_disk *disk, const struct message *m)
{
        uint32_t slot = (uint32_t)(m->header->prepare.op % SIM_WAL_SLOTS);
        if (disk->prepares[slot] == NULL) {
                disk->prepares[slot] = calloc(1, SIM_REQUEST_SIZE_MAX);
                tally_assert(disk->prepares[slot] != NULL);
        }
        switch (sim_prng_below(&sim->prng, 3)) {
        case 0: /* the header, and a prefix of the prepare */
                memcpy(disk->headers[slot], m->header, WIRE_HEADER_SIZE);
                memcpy(disk->prepares[slot], m->buffer,
                       sim_prng_below(&sim->prng, m->header->size));
                break;
        case 1: /* the prepare, not the header */
                memcpy(disk->prepares[slot], m->buffer, m->header->size);
                break;
        default: /* a prefix of the header */
                memcpy(disk->headers[slot], m->header,
                       1 + sim_prng_below(&sim->prng, WIRE_HEADER_SIZE - 1));
                break;
        }
}

/* True if `slot` holds exactly this prepare, intact: tearing it would damage acknowledged data. */
static bool slot_holds(struct sim *sim, struct sim_disk *disk, const struct message *m)
{
        uint32_t slot = (uint32_t)(m->header->prepare.op % SIM_WAL_SLOTS);
        struct wire_header header;
        return header_read(sim, disk, slot, &header) && header.checksum == m->header->checksum;
}

void sim_disk_crash(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        bool torn_on = sim_fault_on(sim, SIM_FAULT_TORN);
        /* One replica has no peer to repair a gap from: only the head of its journal may tear.
         * With peers, each write in flight independently lands, tears or vanishes. */
        uint32_t landed = (uint32_t)sim_prng_below(&sim->prng, disk->write_count + 1);
        for (uint32_t k = 0; k < disk->write_count; k++) {
                struct sim_write *w = &disk->writes[(disk->write_head + k) % SIM_WRITES_MAX];
                uint32_t fate; /* 0 lands, 1 tears, 2 vanishes */
                if (sim->replica_count == 1)
                        fate = k < landed ? 0 : k == landed && torn_on ? 1 : 2;
                else
                        fate = (uint32_t)sim_prng_below(&sim->prng, torn_on ? 3 : 2) * (torn_on ? 1 : 2);
                if (fate == 1 && slot_holds(sim, disk, w->prepare)) {
                        if (sim_damage_allowed(sim, sr->index))
                                disk->damaged_op[w->prepare->header->prepare.op % SIM_WAL_SLOTS] =
                                        w->prepare->header->prepare.op;
                        else
                                fate = 0;
                }
                if (fate == 0)
                        store_prepare(disk, w->prepare);
                else if (fate == 1) {
                        tear(sim, disk, w->prepare);
                        sim_count_fault(sim, SIM_FAULT_TORN);
                }
                message_unref(&sr->pool, w->prepare);
        }
        disk->write_count = 0;
        disk->write_head = 0;
        sim_grid_crash(sim, sr);
        if (disk->view_pending && sim_prng_chance(&sim->prng, 500000)) {
                disk->view_state = disk->view_state_next; /* written, just not acknowledged */
        }
        disk->view_pending = false;
        if (disk->checkpoint_pending)
                checkpoint_release(sr); /* the superblock still names the previous one */
}

void sim_disk_corrupt_one(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        for (uint32_t attempt = 0; attempt < 8; attempt++) {
                uint32_t slot = (uint32_t)sim_prng_below(&sim->prng, SIM_WAL_SLOTS);
                struct wire_header header;
                if (!header_read(sim, disk, slot, &header) ||
                    (disk->checkpoint_present && header.prepare.op <= disk->checkpoint_op))
                        continue;
                uint32_t bit = (uint32_t)sim_prng_below(&sim->prng, 8);
                if (sim_prng_below(&sim->prng, 2) == 0 || disk->prepares[slot] == NULL)
                        disk->headers[slot][sim_prng_below(&sim->prng, WIRE_HEADER_SIZE)] ^=
                                (uint8_t)(1u << bit);
                else
                        disk->prepares[slot][sim_prng_below(&sim->prng, header.size)] ^=
                                (uint8_t)(1u << bit);
                disk->damaged_op[slot] = header.prepare.op;
                sim_count_fault(sim, SIM_FAULT_CORRUPT);
                sim_note(sim, "corrupt replica=%u op=%llu", sr->index,
                         (unsigned long long)header.prepare.op);
                return;
        }
}

bool sim_disk_holds(struct sim *sim, struct sim_replica *sr, const struct wire_header *prepare)
{
        const struct sim_disk *disk = &sr->disk;
        uint64_t op = prepare->prepare.op;
        uint32_t slot = (uint32_t)(op % SIM_WAL_SLOTS);
        if (disk->checkpoint_present && disk->checkpoint_op >= op)
                return true;
        if (disk->damaged_op[slot] == op || disk->wiped)
                return true; /* a fault the simulator injected: it counts as held */
        struct wire_header header;
        struct message scratch = {.header = (struct wire_header *)sim->scratch,
                                  .buffer = sim->scratch};
        if (header_read(sim, disk, slot, &header) && header.checksum == prepare->checksum &&
            prepare_read(disk, slot, &header, &scratch))
                return true;
        /* The prepare zone's own copy counts too: recovery reads it when the header is torn. */
        return prepare_read(disk, slot, NULL, &scratch) &&
               scratch.header->checksum == prepare->checksum;
}

bool sim_disk_damaged(const struct sim *sim, const struct sim_disk *disk)
{
        (void)sim;
        /* Without a checkpoint it trusts (repairing its grid, or a state sync interrupted by
         * a crash), a replica is one of the faulty ones: a second must not lose its state. */
        if (disk->wiped || disk->grid_repairing || disk->view_state.grid_syncing ||
            disk->repair_catching_up)
                return true;
        for (uint32_t i = 0; i < disk->grid_damage_count; i++)
                if (disk->grid_damage[i].kind != SIM_GRID_TORN)
                        return true;
        for (uint32_t s = 0; s < SIM_WAL_SLOTS; s++)
                if (disk->damaged_op[s] != 0)
                        return true;
        return false;
}

/* Damage is gone once a checkpoint covers the op or the slot holds an intact copy again. */
void sim_disk_heal_check(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        uint64_t covered = disk->checkpoint_present ? disk->checkpoint_op : 0;
        struct message *scratch = (struct message *)NULL;
        struct message scratch_message = {.header = (struct wire_header *)sim->scratch,
                                          .buffer = sim->scratch};
        scratch = &scratch_message;
        for (uint32_t s = 0; s < SIM_WAL_SLOTS; s++) {
                if (disk->damaged_op[s] != 0 &&
                    (disk->damaged_op[s] <= covered ||
                     slot_intact(sim, disk, s, disk->damaged_op[s], scratch)))
                        disk->damaged_op[s] = 0;
        }
        if (disk->wiped) {
                uint64_t op = covered + 1;
                while (op <= disk->wiped_commit_max &&
                       slot_intact(sim, disk, (uint32_t)(op % SIM_WAL_SLOTS), op, scratch))
                        op++;
                if (op > disk->wiped_commit_max) {
                        disk->wiped = false;
                        sim_note(sim, "replica %u caught up after its wipe", sr->index);
                }
        }
}

/* ---- the grid ---------------------------------------------------------------------------- */

/*
 * Chances per block write: a 3-replica run writes about 3,000 blocks in its fault phase, so
 * about one of each per run. (A read error is armed by the fault schedule instead, so that
 * the random stream does not follow the count of reads, which the debug build's invariant
 * scans change: a seed runs alike in both builds until a fault lands differently.)
 */
#define GRID_CRASH_PPM 500u
#define GRID_MISDIRECT_PPM 500u
#define GRID_SECTOR 4096u /* a torn write lands whole sectors */

static struct sim_grid_damage *grid_damage_find(struct sim_disk *disk, uint64_t address)
{
        for (uint32_t i = 0; i < disk->grid_damage_count; i++)
                if (disk->grid_damage[i].address == address)
                        return &disk->grid_damage[i];
        return NULL;
}

/* False if the disk keeps track of as many damaged blocks as it can (no fault then). */
static bool grid_damage_room(const struct sim_disk *disk, uint32_t blocks)
{
        return disk->grid_damage_count + blocks <= SIM_GRID_DAMAGE_MAX;
}

static void grid_damage_add(struct sim_disk *disk, uint64_t address, enum sim_grid_damage_kind kind)
{
        struct sim_grid_damage *d = grid_damage_find(disk, address);
        if (d == NULL) {
                tally_assert(disk->grid_damage_count < SIM_GRID_DAMAGE_MAX);
                d = &disk->grid_damage[disk->grid_damage_count++];
                d->address = address;
        }
        d->kind = (uint8_t)kind;
}

/* The block was written whole again. */
static void grid_damage_remove(struct sim_disk *disk, uint64_t address)
{
        struct sim_grid_damage *d = grid_damage_find(disk, address);
        if (d != NULL)
                *d = disk->grid_damage[--disk->grid_damage_count];
}

/* The block reaches the disk whole. */
static void grid_land(struct sim_disk *disk, uint64_t address, const uint8_t *block)
{
        struct lsm_device device = lsm_device_memory(&disk->grid);
        tally_assert(device.write(device.context, address, block) == 0);
        grid_damage_remove(disk, address);
        disk->grid_written_max = MAX(disk->grid_written_max, address);
}

static struct sim_grid_pending *grid_pending_find(struct sim_disk *disk, uint64_t address)
{
        for (uint32_t i = 0; disk->grid_pending_count > 0 && i < SIM_GRID_PENDING_MAX; i++) {
                if (disk->grid_pending[i].address == address)
                        return &disk->grid_pending[i];
        }
        return NULL;
}

static bool grid_faults_now(const struct sim *sim, const struct sim_replica *sr,
                            enum sim_fault fault)
{
        return sr->guarded && !sim->healing && sim_fault_on(sim, fault);
}

/*
 * A failed read is damage (the replica restarts without its checkpoint), except on one
 * replica: it stops, is restarted, and reads again (not while opening: a single replica that
 * cannot read its checkpoint stays down, which no transient error should cause).
 */
static bool grid_read_fault_allowed(struct sim *sim, struct sim_replica *sr)
{
        if (sim->replica_count == 1)
                return !sr->opening;
        return sim_damage_allowed(sim, sr->index);
}

static int grid_read(void *context, uint64_t address, uint8_t *block)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        struct sim_disk *disk = &sr->disk;
        const struct sim_grid_pending *p = grid_pending_find(disk, address);
        if (p != NULL) {
                memcpy(block, p->block, LSM_BLOCK_SIZE); /* from its buffer: no device read */
                return 0;
        }
        if (disk->grid_read_armed && grid_faults_now(sim, sr, SIM_FAULT_GRID_READ) &&
            grid_read_fault_allowed(sim, sr)) {
                disk->grid_read_armed = false;
                disk->grid_met = true;
                disk->grid_repairing = sim->replica_count > 1;
                sim_count_fault(sim, SIM_FAULT_GRID_READ);
                sim_note(sim, "grid read error replica=%u address=%llu", sr->index,
                         (unsigned long long)address);
                return -EIO;
        }
        struct lsm_device device = lsm_device_memory(&disk->grid);
        int rc = device.read(device.context, address, block);
        const struct sim_grid_damage *d = grid_damage_find(disk, address);
        if (d == NULL)
                return rc;
        if (d->kind == SIM_GRID_TORN) {
                /* Only a block some checkpoint or table names is read, and none names it. */
                sim_fail(sim, "replica %u read grid block %llu, torn by a crash in its write, "
                              "which no checkpoint names",
                         sr->index, (unsigned long long)address);
                return rc;
        }
        disk->grid_met = true;
        /* Met while opening the checkpoint, it is lost: damage until the next one. */
        if (sim->replica_count > 1)
                disk->grid_repairing = true;
        return rc;
}

static void grid_pending_land(struct sim_disk *disk, struct sim_grid_pending *p)
{
        tally_assert(p->address != 0 && disk->grid_pending_count > 0);
        grid_land(disk, p->address, p->block);
        p->address = 0;
        disk->grid_pending_count--;
}

/* Lands every pending write, in an order of the grid stream's choosing. */
static void grid_pending_land_all(struct sim *sim, struct sim_disk *disk)
{
        while (disk->grid_pending_count > 0) {
                uint32_t i =
                        (uint32_t)sim_prng_below(&sim->grid_write_prng, SIM_GRID_PENDING_MAX);
                if (disk->grid_pending[i].address != 0)
                        grid_pending_land(disk, &disk->grid_pending[i]);
        }
}

/* The process dies while this block is being written: it lands whole, torn or not at all. */
static const char *grid_write_interrupted(struct sim *sim, struct sim_replica *sr,
                                          struct sim_prng *prng, uint64_t address,
                                          const uint8_t *block)
{
        struct sim_disk *disk = &sr->disk;
        struct lsm_device device = lsm_device_memory(&disk->grid);
        uint32_t fate = (uint32_t)sim_prng_below(prng, 3);
        if (fate == 0) {
                grid_land(disk, address, block);
        } else if (fate == 1 && sim_fault_on(sim, SIM_FAULT_GRID_TORN) &&
                   grid_damage_room(disk, 1)) {
                /* Whole sectors of the new block, then what the old one held. */
                uint8_t *torn = sim->grid_scratch;
                tally_assert(device.read(device.context, address, torn) == 0);
                uint32_t sectors = (uint32_t)sim_prng_range(prng, 1,
                                                            LSM_BLOCK_SIZE / GRID_SECTOR - 1);
                memcpy(torn, block, (size_t)sectors * GRID_SECTOR);
                /* Every byte the checksum covers is the new block's: whole, not torn. That is
                 * so when those bytes landed, and also when the old block held the same bytes
                 * past the sectors that did (two versions of a table block that differ only
                 * near its start): a read then finds the new block intact. */
                const struct lsm_block_header *h = (const struct lsm_block_header *)block;
                bool whole = (uint64_t)sectors * GRID_SECTOR >= h->size ||
                             memcmp(torn, block, MIN(h->size, LSM_BLOCK_SIZE)) == 0;
                if (whole) {
                        grid_land(disk, address, torn);
                } else if (device.write(device.context, address, torn) == 0) {
                        grid_damage_add(disk, address, SIM_GRID_TORN);
                        disk->grid_written_max = MAX(disk->grid_written_max, address);
                        sim_count_fault(sim, SIM_FAULT_GRID_TORN);
                }
        }
        return fate == 0 ? "landed" : fate == 1 ? "torn" : "lost";
}

void sim_grid_crash(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        for (uint32_t i = 0; disk->grid_pending_count > 0 && i < SIM_GRID_PENDING_MAX; i++) {
                struct sim_grid_pending *p = &disk->grid_pending[i];
                if (p->address == 0)
                        continue;
                const char *fate = grid_write_interrupted(sim, sr, &sim->grid_write_prng,
                                                          p->address, p->block);
                sim_note(sim, "replica %u crashes with grid block %llu in flight (%s)", sr->index,
                         (unsigned long long)p->address, fate);
                sim->report->grid_writes_in_flight_at_crash++;
                p->address = 0;
                disk->grid_pending_count--;
        }
}

static _Noreturn void grid_crash_in_write(struct sim *sim, struct sim_replica *sr,
                                          uint64_t address, const uint8_t *block)
{
        const char *fate = grid_write_interrupted(sim, sr, &sim->grid_prng, address, block);
        sim_count_fault(sim, SIM_FAULT_GRID_CRASH);
        sim_note(sim, "replica %u crashes writing grid block %llu (%s)", sr->index,
                 (unsigned long long)address, fate);
        sim_grid_unwind(sr, SIM_FAULT_MODE_CRASH);
}

/* The block lands at another address; its own keeps what it held. True if it did. */
static bool grid_misdirect(struct sim *sim, struct sim_replica *sr, uint64_t address,
                           const uint8_t *block)
{
        struct sim_disk *disk = &sr->disk;
        if (disk->grid_written_max < 2 || !grid_damage_room(disk, 2) ||
            !sim_damage_allowed(sim, sr->index))
                return false;
        uint64_t other = sim_prng_range(&sim->grid_prng, 1, disk->grid_written_max);
        if (other == address)
                other = address == 1 ? 2 : address - 1;
        struct lsm_device device = lsm_device_memory(&disk->grid);
        if (device.write(device.context, other, block) != 0)
                return false;
        grid_damage_add(disk, other, SIM_GRID_OVER);
        grid_damage_add(disk, address, SIM_GRID_STALE);
        sim_count_fault(sim, SIM_FAULT_GRID_MISDIRECT);
        sim_note(sim, "grid write misdirected replica=%u address=%llu landed=%llu", sr->index,
                 (unsigned long long)address, (unsigned long long)other);
        return true;
}

static int grid_write(void *context, uint64_t address, const uint8_t *block)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        struct sim_disk *disk = &sr->disk;
        if (address == 0 || address > disk->grid.block_count_max)
                return -EINVAL;
        /* A second write of one address goes after the first (the storage waits for it, so a
         * crash in the middle of the second finds the first landed). */
        struct sim_grid_pending *earlier = grid_pending_find(disk, address);
        if (earlier != NULL)
                grid_pending_land(disk, earlier);
        if (grid_faults_now(sim, sr, SIM_FAULT_GRID_CRASH) &&
            sim_prng_chance(&sim->grid_prng, GRID_CRASH_PPM))
                grid_crash_in_write(sim, sr, address, block);
        if (grid_faults_now(sim, sr, SIM_FAULT_GRID_MISDIRECT) &&
            sim_prng_chance(&sim->grid_prng, GRID_MISDIRECT_PPM)) {
                grid_pending_land_all(sim, disk); /* none in flight where it lands */
                if (grid_misdirect(sim, sr, address, block))
                        return 0; /* acknowledged: the disk does not know */
        }
        /* Earlier writes land now or later, in any order; this one joins them. */
        for (uint32_t i = 0; i < SIM_GRID_PENDING_MAX; i++) {
                struct sim_grid_pending *p = &disk->grid_pending[i];
                if (p->address != 0 && sim_prng_chance(&sim->grid_write_prng, 250000))
                        grid_pending_land(disk, p);
        }
        while (disk->grid_pending_count == SIM_GRID_PENDING_MAX) {
                uint32_t i =
                        (uint32_t)sim_prng_below(&sim->grid_write_prng, SIM_GRID_PENDING_MAX);
                grid_pending_land(disk, &disk->grid_pending[i]);
        }
        struct sim_grid_pending *p = NULL;
        for (uint32_t i = 0; i < SIM_GRID_PENDING_MAX && p == NULL; i++)
                if (disk->grid_pending[i].address == 0)
                        p = &disk->grid_pending[i];
        tally_assert(p != NULL);
        memcpy(p->block, block, LSM_BLOCK_SIZE);
        p->address = address;
        disk->grid_pending_count++;
        return 0;
}

static int grid_flush(void *context)
{
        struct sim_replica *sr = context;
        grid_pending_land_all(sr->sim, &sr->disk);
        return 0;
}

/*
 * State sync looking for a block it may already hold: whatever is at the address, torn or
 * rotten, is returned for its checksum to judge (no fault injected, nothing reported).
 */
static int grid_probe(void *context, uint64_t address, uint8_t *block)
{
        struct sim_replica *sr = context;
        const struct sim_grid_pending *p = grid_pending_find(&sr->disk, address);
        if (p != NULL) {
                memcpy(block, p->block, LSM_BLOCK_SIZE);
                return 0;
        }
        struct lsm_device device = lsm_device_memory(&sr->disk.grid);
        return device.read(device.context, address, block);
}

/*
 * Reads ahead for lsm_grid_prefetch, at once, as grid_probe reads (no fault injected, nothing
 * reported): a damaged block fails its check there and is left out, and the lookup that needs
 * it meets the damage (or an injected read error) as any read does.
 */
static uint32_t grid_read_many_start(void *context, const uint64_t *addresses,
                                     uint8_t *const *blocks, uint32_t count)
{
        struct sim_replica *sr = context;
        uint32_t n = MIN(count, LSM_GRID_PREFETCH_MAX);
        for (uint32_t i = 0; i < n; i++)
                sr->disk.grid_read_many_results[i] = grid_probe(context, addresses[i], blocks[i]);
        return n;
}

static int grid_read_many_wait(void *context, uint32_t index)
{
        struct sim_replica *sr = context;
        tally_assert(index < LSM_GRID_PREFETCH_MAX);
        return sr->disk.grid_read_many_results[index];
}

struct lsm_device sim_grid_device(struct sim_replica *sr)
{
        return (struct lsm_device){
                .context = sr,
                .read = grid_read,
                .write = grid_write,
                .probe = grid_probe,
                .flush = grid_flush,
                .read_many_start = grid_read_many_start,
                .read_many_wait = grid_read_many_wait};
}

void sim_grid_corrupt_one(struct sim *sim, struct sim_replica *sr)
{
        struct sim_disk *disk = &sr->disk;
        struct lsm_device_memory *memory = &disk->grid;
        if (disk->grid_written_max == 0 || !grid_damage_room(disk, 1))
                return;
        uint64_t address = sim_prng_range(&sim->grid_prng, 1, disk->grid_written_max);
        if (address >= memory->capacity || memory->blocks[address] == NULL)
                return;
        uint8_t *block = memory->blocks[address];
        /* Within the bytes the checksum covers (a flip in the unused tail is never seen). */
        const struct lsm_block_header *h = (const struct lsm_block_header *)block;
        uint32_t size = h->size >= LSM_BLOCK_HEADER_SIZE && h->size <= LSM_BLOCK_SIZE
                                ? h->size
                                : LSM_BLOCK_SIZE;
        block[sim_prng_below(&sim->grid_prng, size)] ^= (uint8_t)(1u << sim_prng_below(&sim->grid_prng, 8));
        grid_damage_add(disk, address, SIM_GRID_ROT);
        sim_count_fault(sim, SIM_FAULT_GRID_CORRUPT);
        sim_note(sim, "grid block rots replica=%u address=%llu", sr->index,
                 (unsigned long long)address);
}

bool sim_grid_fault_injected(struct sim *sim, struct sim_replica *sr, const char *fault)
{
        if (sr->disk.grid_met)
                return true;
        sim_fail(sim, "replica %u found grid damage the simulator did not inject: %s", sr->index,
                 fault);
        return false;
}
