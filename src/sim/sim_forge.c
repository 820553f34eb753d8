/*
 * sim_forge.c: the Byzantine outsider of the simulator (fault "forge").
 *
 * Why: a replica must never act on a replica message that did not come from a peer's
 * connection; the real server's bus authenticates peers, and the replica itself drops replica
 * messages that arrive off a peer connection or that name another sender (replica.c,
 * peer_message_acceptable). The outsider holds ordinary client connections to every replica and
 * sends on them, at random moments of the fault phase:
 *   - replays: byte-for-byte copies of replica-to-replica messages it saw on the network;
 *   - forgeries: replica commands with valid checksums, a random claimed sender and views and
 *     ops from plausible (the target's own view, the next) to absurd (2^32 - 1).
 * Every one must be dropped: the replica's drop counter must move, else the run fails. The
 * outsider draws from its own PRNG, so enabling it never changes what the other faults do, and
 * it injects straight into the target (as the bus delivers), not through the network's faults.
 */
#include "sim/sim_internal.h"
#include "wire/checksum.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t replica_commands[] = {
        COMMAND_PING,           COMMAND_PONG,           COMMAND_PREPARE,
        COMMAND_PREPARE_OK,     COMMAND_COMMIT,         COMMAND_START_VIEW_CHANGE,
        COMMAND_DO_VIEW_CHANGE, COMMAND_REQUEST_START_VIEW, COMMAND_REQUEST_HEADERS,
        COMMAND_REQUEST_PREPARE, COMMAND_REQUEST_REPLY, COMMAND_HEADERS,
        COMMAND_START_VIEW,
};

void sim_forge_init(struct sim *sim)
{
        sim_prng_init(&sim->forge_prng, sim->options.seed ^ 0x6f75747369646572ull);
        sim->forge_next_ns = 100 * SIM_NS_PER_MS;
        memset(sim->forge_connection, 0, sizeof(sim->forge_connection));
        memset(sim->forge_captured, 0, sizeof(sim->forge_captured));
}

void sim_forge_deinit(struct sim *sim)
{
        for (uint32_t i = 0; i < SIM_FORGE_CAPTURED; i++) {
                free(sim->forge_captured[i]);
                sim->forge_captured[i] = NULL;
        }
}

void sim_forge_capture(struct sim *sim, const uint8_t *bytes, uint32_t size)
{
        /* Forwarded requests, replies and evictions also travel between replicas, but a client
         * may send or see those: only replica commands are the outsider's to replay. */
        if (!wire_command_between_replicas(((const struct wire_header *)bytes)->command))
                return;
        if (!sim_prng_chance(&sim->forge_prng, 50000)) /* keep 5 %: a spread of commands */
                return;
        uint32_t slot = (uint32_t)sim_prng_below(&sim->forge_prng, SIM_FORGE_CAPTURED);
        free(sim->forge_captured[slot]);
        sim->forge_captured[slot] = malloc(size);
        tally_assert(sim->forge_captured[slot] != NULL);
        memcpy(sim->forge_captured[slot], bytes, size);
        sim->forge_captured_size[slot] = size;
}

/* A view from the plausible to the absurd. */
static uint32_t forged_view(struct sim *sim, uint32_t current)
{
        struct sim_prng *prng = &sim->forge_prng;
        switch (sim_prng_below(prng, 5)) {
        case 0:
                return current;
        case 1:
                return current + 1;
        case 2:
                return current + (uint32_t)sim_prng_range(prng, 2, 1000);
        case 3:
                return REPLICA_VIEW_MAX + 1;
        default:
                return UINT32_MAX;
        }
}

static uint64_t forged_op(struct sim *sim)
{
        struct sim_prng *prng = &sim->forge_prng;
        switch (sim_prng_below(prng, 4)) {
        case 0:
                return sim->commit_max + sim_prng_below(prng, 4);
        case 1:
                return sim_prng_below(prng, sim->commit_max + 1);
        case 2:
                return REPLICA_OP_MAX + 1;
        default:
                return UINT64_MAX;
        }
}

/* A forged header-only replica message into `m`; false if the bus would drop it anyway. */
static bool forge(struct sim *sim, struct sim_replica *target, struct message *m)
{
        struct sim_prng *prng = &sim->forge_prng;
        uint8_t command = replica_commands[sim_prng_below(prng, sizeof(replica_commands))];
        uint8_t claimed = (uint8_t)sim_prng_below(prng, sim->replica_count);
        struct wire_header *h = m->header;
        wire_header_init(h, command, sim->config.cluster,
                         forged_view(sim, target->replica.view), WIRE_RELEASE_SERVER, claimed);
        switch (command) {
        case COMMAND_PREPARE:
                h->prepare.op = forged_op(sim);
                h->prepare.commit = h->prepare.op > 0 ? h->prepare.op - 1 : 0;
                h->prepare.operation = 128; /* register: no body needed */
                h->prepare.parent = ((u128)sim_prng_next(prng) << 64) | sim_prng_next(prng);
                h->prepare.client = ((u128)sim_prng_next(prng) << 64) | 1u;
                h->prepare.timestamp = sim_prng_next(prng) >> 1;
                break;
        case COMMAND_PREPARE_OK:
                h->prepare_ok.op = forged_op(sim);
                h->prepare_ok.prepare_checksum = ((u128)sim_prng_next(prng) << 64) |
                                                 sim_prng_next(prng);
                break;
        case COMMAND_COMMIT:
                h->commit.commit = forged_op(sim);
                h->commit.checkpoint_op = forged_op(sim);
                break;
        case COMMAND_START_VIEW:
                h->start_view.op = forged_op(sim);
                h->start_view.commit_max = h->start_view.op;
                h->start_view.checkpoint_op = 0;
                break;
        default:
                break;
        }
        wire_header_set_checksum_body(h, NULL, 0);
        wire_header_set_checksum(h);
        return wire_header_invalid(h) == NULL;
}

void sim_forge_step(struct sim *sim)
{
        struct sim_prng *prng = &sim->forge_prng;
        if (sim->now_ns < sim->forge_next_ns)
                return;
        sim->forge_next_ns = sim->now_ns + sim_prng_range(prng, 20, 200) * SIM_NS_PER_MS;
        uint32_t r = (uint32_t)sim_prng_below(prng, sim->replica_count);
        struct sim_replica *sr = &sim->replicas[r];
        if (!sr->up)
                return;
        struct sim_connection *c = sim_connection_get(sim, sim->forge_connection[r]);
        if (c == NULL || !c->open)
                sim->forge_connection[r] = sim_connection_open(sim, false, r, SIM_OUTSIDER_CLIENT);
        struct message *m = message_pool_get(&sr->pool);
        if (m == NULL)
                return;
        uint32_t slot = (uint32_t)sim_prng_below(prng, SIM_FORGE_CAPTURED);
        bool replay = sim_prng_chance(prng, 500000) && sim->forge_captured[slot] != NULL;
        bool valid;
        if (replay) {
                memcpy(m->buffer, sim->forge_captured[slot], sim->forge_captured_size[slot]);
                valid = true;
        } else {
                valid = forge(sim, sr, m);
        }
        if (valid) {
                uint64_t dropped = sr->replica.peer_messages_dropped;
                uint8_t command = m->header->command;
                sim_enter(sr);
                SIM_REPLICA_CALL(sim, sr,
                                 replica_on_message(&sr->replica, sim->forge_connection[r], m));
                sim_count_fault(sim, SIM_FAULT_FORGE);
                if (!sr->up)
                        return; /* crashed in the call (a grid fault): its pool is a new one */
                if (sim->replica_count > 1 && sr->replica.peer_messages_dropped != dropped + 1)
                        sim_fail(sim, "replica %u took a %s %s message from an outsider", r,
                                 replay ? "replayed" : "forged", wire_command_name(command));
        }
        message_unref(&sr->pool, m);
}
