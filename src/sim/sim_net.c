/*
 * sim_net.c: the simulated network.
 *
 * Endpoints are numbered: replicas 0..n-1, then clients n..n+c-1. A message is copied when it
 * is sent (the bus copies bytes onto a socket too) and queued in a heap ordered by delivery
 * time, then send order. Each message gets its own random delay, so messages overtake each
 * other; some are dropped or delivered twice; a partition (blocked[from][to]) drops whatever
 * crosses it at send or at delivery time.
 *
 * Clients reach replicas over connections with ids the simulator assigns (what the bus's
 * connection ids are in `tally start`); closing one tells the replica through
 * replica_on_connection_closed(). Replica-to-replica messages are delivered on a connection id
 * per (receiver, sender) pair that is renewed when either end crashes. A message sent by an
 * incarnation of a replica that has crashed since is lost with its connection.
 */
#include "sim/sim_internal.h"
#include "wire/checksum.h"

#include <stdlib.h>
#include <string.h>

void sim_net_init(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        memset(net, 0, sizeof(*net));
        net->delay_min_ms = 1;
        net->delay_max_ms = 5;
}

void sim_net_deinit(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        for (uint32_t i = 0; i < net->heap_count; i++)
                free(net->heap[i].bytes);
        free(net->heap);
        free(net->connections);
        memset(net, 0, sizeof(*net));
}

replica_connection sim_connection_open(struct sim *sim, bool peer, uint32_t replica,
                                       uint32_t other_or_client)
{
        struct sim_network *net = &sim->net;
        if (net->connection_count == net->connection_capacity) {
                net->connection_capacity = MAX(64u, net->connection_capacity * 2);
                net->connections = realloc(net->connections, net->connection_capacity *
                                                                     sizeof(*net->connections));
                tally_assert(net->connections != NULL);
        }
        struct sim_connection *c = &net->connections[net->connection_count++];
        memset(c, 0, sizeof(*c));
        c->open = true;
        c->peer = peer;
        c->replica = (uint8_t)replica;
        if (peer)
                c->other = (uint8_t)other_or_client;
        else
                c->client = other_or_client;
        return net->connection_count; /* ids start at 1: 0 means "no connection" */
}

struct sim_connection *sim_connection_get(struct sim *sim, replica_connection id)
{
        if (id == 0 || id > sim->net.connection_count)
                return NULL;
        return &sim->net.connections[id - 1];
}

void sim_connection_close(struct sim *sim, replica_connection id)
{
        struct sim_connection *c = sim_connection_get(sim, id);
        if (c == NULL || !c->open)
                return;
        c->open = false;
        struct sim_replica *sr = &sim->replicas[c->replica];
        if (c->peer) {
                if (sr->peer_connection[c->other] == id)
                        sr->peer_connection[c->other] = 0;
        } else if (c->client != SIM_OUTSIDER_CLIENT) {
                sim_client_on_close(sim, &sim->clients[c->client], c->replica);
        }
        if (sr->up) {
                sim_enter(sr);
                SIM_REPLICA_CALL(sim, sr, replica_on_connection_closed(&sr->replica, id));
        }
}

/* ---- the heap of messages in flight ------------------------------------------------------ */

static bool packet_before(const struct sim_packet *a, const struct sim_packet *b)
{
        return a->at_ns < b->at_ns || (a->at_ns == b->at_ns && a->sequence < b->sequence);
}

static void heap_push(struct sim_network *net, const struct sim_packet *packet)
{
        if (net->heap_count == net->heap_capacity) {
                net->heap_capacity = MAX(256u, net->heap_capacity * 2);
                net->heap = realloc(net->heap, net->heap_capacity * sizeof(*net->heap));
                tally_assert(net->heap != NULL);
        }
        uint32_t i = net->heap_count++;
        net->heap[i] = *packet;
        while (i > 0) {
                uint32_t parent = (i - 1) / 2;
                if (!packet_before(&net->heap[i], &net->heap[parent]))
                        break;
                struct sim_packet t = net->heap[i];
                net->heap[i] = net->heap[parent];
                net->heap[parent] = t;
                i = parent;
        }
}

static void heap_pop(struct sim_network *net, struct sim_packet *out)
{
        tally_assert(net->heap_count > 0);
        *out = net->heap[0];
        net->heap[0] = net->heap[--net->heap_count];
        uint32_t i = 0;
        for (;;) {
                uint32_t l = 2 * i + 1, r = l + 1, m = i;
                if (l < net->heap_count && packet_before(&net->heap[l], &net->heap[m]))
                        m = l;
                if (r < net->heap_count && packet_before(&net->heap[r], &net->heap[m]))
                        m = r;
                if (m == i)
                        break;
                struct sim_packet t = net->heap[i];
                net->heap[i] = net->heap[m];
                net->heap[m] = t;
                i = m;
        }
}

static uint64_t delay_ns(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        uint64_t ms = sim_prng_range(&sim->prng, net->delay_min_ms, net->delay_max_ms);
        /* A rare long stall, as a congested link or a retransmitting TCP would have. */
        if (sim_fault_on(sim, SIM_FAULT_DELAY) && !sim->healing &&
            sim_prng_chance(&sim->prng, 2000)) {
                ms += sim_prng_range(&sim->prng, 100, 1500);
                sim_count_fault(sim, SIM_FAULT_DELAY);
        }
        return ms * SIM_NS_PER_MS;
}

void sim_net_send(struct sim *sim, uint32_t from, uint32_t to, replica_connection connection,
                  const uint8_t *bytes, uint32_t size)
{
        struct sim_network *net = &sim->net;
        tally_assert(from < SIM_ENDPOINTS_MAX && to < SIM_ENDPOINTS_MAX);
        if (net->blocked[from][to])
                return;
        if (net->loss_ppm > 0 && sim_prng_chance(&sim->prng, net->loss_ppm)) {
                sim_count_fault(sim, SIM_FAULT_LOSS);
                return;
        }
        uint32_t copies = 1;
        if (net->duplicate_ppm > 0 && sim_prng_chance(&sim->prng, net->duplicate_ppm)) {
                sim_count_fault(sim, SIM_FAULT_DUPLICATE);
                copies = 2;
        }
        for (uint32_t k = 0; k < copies; k++) {
                struct sim_packet p = {
                        .at_ns = sim->now_ns + delay_ns(sim),
                        .sequence = net->sequence++,
                        .from = (uint16_t)from,
                        .to = (uint16_t)to,
                        .from_incarnation =
                                from < sim->replica_count ? sim->replicas[from].incarnation : 0,
                        .connection = connection,
                        .size = size,
                        .bytes = malloc(size),
                };
                tally_assert(p.bytes != NULL);
                memcpy(p.bytes, bytes, size);
                heap_push(net, &p);
        }
}

/* Separate from its callers, whose locals a longjmp would clobber. */
static void deliver_guarded(struct sim *sim, struct sim_replica *sr,
                            replica_connection connection, struct message *m)
{
        SIM_REPLICA_CALL(sim, sr, replica_on_message(&sr->replica, connection, m));
}

static void connected_guarded(struct sim *sim, struct sim_replica *sr, uint32_t peer)
{
        SIM_REPLICA_CALL(sim, sr, replica_on_peer_connected(&sr->replica, (uint8_t)peer));
}

static void deliver_to_replica(struct sim *sim, const struct sim_packet *p)
{
        struct sim_replica *sr = &sim->replicas[p->to];
        if (!sr->up)
                return;
        replica_connection connection = p->connection;
        if (p->from < sim->replica_count) {
                struct sim_replica *sender = &sim->replicas[p->from];
                if (sender->incarnation != p->from_incarnation)
                        return; /* its connection died with it */
                if (sim_fault_on(sim, SIM_FAULT_FORGE))
                        sim_forge_capture(sim, p->bytes, p->size);
                if (sr->peer_connection[p->from] == 0)
                        sr->peer_connection[p->from] =
                                sim_connection_open(sim, true, p->to, p->from);
                connection = sr->peer_connection[p->from];
        } else {
                struct sim_connection *c = sim_connection_get(sim, connection);
                if (c == NULL || !c->open)
                        return;
        }
        struct message *m = message_pool_get(&sr->pool);
        if (m == NULL)
                return; /* as the bus does when no message is free: the sender retries */
        memcpy(m->buffer, p->bytes, p->size);
        sim_enter(sr);
        deliver_guarded(sim, sr, connection, m);
        if (sr->up) /* else it crashed in the call, and its pool is a new one */
                message_unref(&sr->pool, m);
}

void sim_net_deliver_due(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        while (!sim->failed && net->heap_count > 0 && net->heap[0].at_ns <= sim->now_ns) {
                struct sim_packet p;
                heap_pop(net, &p);
                if (!net->blocked[p.from][p.to]) {
                        if (p.to < sim->replica_count) {
                                deliver_to_replica(sim, &p);
                        } else {
                                struct sim_connection *c = sim_connection_get(sim, p.connection);
                                if (c != NULL && c->open)
                                        sim_client_on_message(
                                                sim, &sim->clients[p.to - sim->replica_count],
                                                p.from, p.bytes, p.size);
                        }
                }
                free(p.bytes);
        }
}

/* ---- what replicas send ----------------------------------------------------------------- */

/* A replica must only ever send what a receiver's bus accepts. */
static bool message_valid(struct sim *sim, uint32_t replica, const struct message *m, bool peer)
{
        const struct wire_header *h = m->header;
        const char *why = NULL;
        uint32_t limit = SIM_REQUEST_SIZE_MAX;
        if (peer && sim->options.peer_message_size_max != 0)
                limit = sim->options.peer_message_size_max;
        if (!wire_header_checksum_valid(h))
                why = "header checksum";
        else if (h->size < WIRE_HEADER_SIZE || h->size > limit)
                why = "size";
        else if (!wire_body_checksum_valid(h, m->buffer + WIRE_HEADER_SIZE))
                why = "body checksum";
        else if (h->cluster != sim->config.cluster)
                why = "cluster";
        else
                why = wire_header_invalid(h);
        if (why != NULL)
                sim_fail(sim, "replica %u sent an invalid %s message: %s (size=%u, limit=%u)",
                         replica, wire_command_name(h->command), why, h->size, limit);
        return why == NULL;
}

bool sim_env_send(void *context, replica_connection connection, struct message *message)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        struct sim_connection *c = sim_connection_get(sim, connection);
        if (c == NULL || !c->open || c->replica != sr->index)
                return false;
        if (!c->peer && c->client == SIM_OUTSIDER_CLIENT)
                return false; /* the outsider never reads */
        if (!message_valid(sim, sr->index, message, c->peer))
                return false;
        uint32_t to = c->peer ? c->other : sim->replica_count + c->client;
        sim_net_send(sim, sr->index, to, c->peer ? 0 : connection, message->buffer,
                     message->header->size);
        return true;
}

bool sim_env_connection_is_replica(void *context, replica_connection connection)
{
        struct sim_replica *sr = context;
        struct sim_connection *c = sim_connection_get(sr->sim, connection);
        return c != NULL && c->peer && c->replica == sr->index;
}

int sim_env_connection_replica(void *context, replica_connection connection)
{
        struct sim_replica *sr = context;
        struct sim_connection *c = sim_connection_get(sr->sim, connection);
        if (c == NULL || !c->peer || c->replica != sr->index)
                return -1;
        return (int)c->other;
}

void sim_net_connect_peers(struct sim *sim, uint32_t r)
{
        struct sim_replica *sr = &sim->replicas[r];
        for (uint32_t p = 0; p < sim->replica_count && !sim->failed; p++) {
                struct sim_replica *peer = &sim->replicas[p];
                if (p == r || !peer->up)
                        continue;
                tally_assert(sr->peer_connection[p] == 0 && peer->peer_connection[r] == 0);
                sr->peer_connection[p] = sim_connection_open(sim, true, r, p);
                peer->peer_connection[r] = sim_connection_open(sim, true, p, r);
                sim_enter(sr);
                connected_guarded(sim, sr, p);
                if (!sr->up)
                        return;
                if (!sim->failed && peer->up) {
                        sim_enter(peer);
                        connected_guarded(sim, peer, r);
                }
        }
}

bool sim_env_connection_alive(void *context, replica_connection connection)
{
        struct sim_replica *sr = context;
        struct sim_connection *c = sim_connection_get(sr->sim, connection);
        return c != NULL && c->open && c->replica == sr->index;
}

void sim_env_send_to_replica(void *context, uint8_t replica, struct message *message)
{
        struct sim_replica *sr = context;
        struct sim *sim = sr->sim;
        if (replica >= sim->replica_count || replica == sr->index) {
                sim_fail(sim, "replica %u sent to replica %u of %u", sr->index, replica,
                         sim->replica_count);
                return;
        }
        if (!message_valid(sim, sr->index, message, true))
                return;
        sim_net_send(sim, sr->index, replica, 0, message->buffer, message->header->size);
}

/* ---- faults ------------------------------------------------------------------------------ */

static void block_both(struct sim_network *net, uint32_t a, uint32_t b)
{
        net->blocked[a][b] = true;
        net->blocked[b][a] = true;
}

static const char *partition_start(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        uint32_t n = sim->replica_count, endpoints = n + sim->client_count;
        uint32_t shape = (uint32_t)sim_prng_below(&sim->prng, n == 1 ? 2 : 5);
        if (n == 1)
                shape = shape == 0 ? 0 : 3;
        switch (shape) {
        case 0: { /* one replica cut off from everyone */
                uint32_t r = (uint32_t)sim_prng_below(&sim->prng, n);
                for (uint32_t e = 0; e < endpoints; e++)
                        if (e != r)
                                block_both(net, r, e);
                return "isolate";
        }
        case 1: { /* two sides, clients spread over both */
                uint8_t side[SIM_ENDPOINTS_MAX];
                for (uint32_t e = 0; e < endpoints; e++)
                        side[e] = (uint8_t)sim_prng_below(&sim->prng, 2);
                side[0] = 0;
                side[1 + sim_prng_below(&sim->prng, n - 1)] = 1;
                for (uint32_t a = 0; a < endpoints; a++)
                        for (uint32_t b = 0; b < endpoints; b++)
                                if (side[a] != side[b] && (a < n || b < n))
                                        net->blocked[a][b] = true;
                return "split";
        }
        case 2: { /* one-way links between replicas */
                uint32_t count = 1 + (uint32_t)sim_prng_below(&sim->prng, n);
                for (uint32_t k = 0; k < count; k++) {
                        uint32_t a = (uint32_t)sim_prng_below(&sim->prng, n);
                        uint32_t b = (uint32_t)sim_prng_below(&sim->prng, n);
                        if (a != b)
                                net->blocked[a][b] = true;
                }
                return "one-way";
        }
        case 3: { /* some clients cut off from some replicas, maybe one way */
                uint32_t count = 1 + (uint32_t)sim_prng_below(&sim->prng, sim->client_count);
                for (uint32_t k = 0; k < count; k++) {
                        uint32_t c = n + (uint32_t)sim_prng_below(&sim->prng, sim->client_count);
                        uint32_t way = (uint32_t)sim_prng_below(&sim->prng, 3);
                        for (uint32_t r = 0; r < n; r++) {
                                if (n > 1 && sim_prng_chance(&sim->prng, 500000))
                                        continue;
                                if (way != 1)
                                        net->blocked[c][r] = true;
                                if (way != 2)
                                        net->blocked[r][c] = true;
                        }
                }
                return "clients";
        }
        default: /* every replica link independently, each direction */
                for (uint32_t a = 0; a < n; a++)
                        for (uint32_t b = 0; b < n; b++)
                                if (a != b && sim_prng_chance(&sim->prng, 300000))
                                        net->blocked[a][b] = true;
                return "chaos";
        }
}

static void network_conditions_change(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        static const uint32_t losses[] = {0, 0, 0, 1000, 10000, 50000, 200000};
        static const uint32_t duplicates[] = {0, 0, 10000, 50000};
        static const uint32_t delays[] = {2, 5, 10, 30, 100};
        net->loss_ppm = sim_fault_on(sim, SIM_FAULT_LOSS)
                                ? losses[sim_prng_below(&sim->prng, ARRAY_LEN(losses))]
                                : 0;
        net->duplicate_ppm =
                sim_fault_on(sim, SIM_FAULT_DUPLICATE)
                        ? duplicates[sim_prng_below(&sim->prng, ARRAY_LEN(duplicates))]
                        : 0;
        net->delay_min_ms = 1;
        net->delay_max_ms = sim_fault_on(sim, SIM_FAULT_DELAY)
                                    ? delays[sim_prng_below(&sim->prng, ARRAY_LEN(delays))]
                                    : 5;
        net->next_change_ns = sim->now_ns + sim_prng_range(&sim->prng, 500, 5000) * SIM_NS_PER_MS;
}

void sim_net_faults_step(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        if (sim->now_ns >= net->next_change_ns)
                network_conditions_change(sim);
        if (!sim_fault_on(sim, SIM_FAULT_PARTITION))
                return;
        if (net->partition_until_ns != 0 && sim->now_ns >= net->partition_until_ns) {
                memset(net->blocked, 0, sizeof(net->blocked));
                net->partition_until_ns = 0;
                net->partition_next_ns =
                        sim->now_ns + sim_prng_range(&sim->prng, 200, 4000) * SIM_NS_PER_MS;
                sim_note(sim, "partition healed");
        }
        if (net->partition_until_ns == 0 && sim->now_ns >= net->partition_next_ns) {
                const char *shape = partition_start(sim);
                net->partition_until_ns =
                        sim->now_ns + sim_prng_range(&sim->prng, 100, 4000) * SIM_NS_PER_MS;
                sim_count_fault(sim, SIM_FAULT_PARTITION);
                sim_note(sim, "partition shape=%s until_ms=%llu", shape,
                         (unsigned long long)(net->partition_until_ns / SIM_NS_PER_MS));
        }
}

void sim_net_heal(struct sim *sim)
{
        struct sim_network *net = &sim->net;
        memset(net->blocked, 0, sizeof(net->blocked));
        net->partition_until_ns = 0;
        net->loss_ppm = 0;
        net->duplicate_ppm = 0;
        net->delay_min_ms = 1;
        net->delay_max_ms = 5;
}
