/*
 * sim_client.c: simulated clients that behave like the official client (wire-protocol.md
 * sections 4.1-4.8) and check every reply as it does.
 *
 * A client registers, then keeps one request in flight: a small random create_accounts,
 * create_transfers, lookup or query. It sends to its primary guess (view mod the number of
 * addresses it was given) and one random other replica, and after a timeout (600 ms, then
 * 2 * rtt + backoff) sends the same bytes again. A client given all addresses follows the view
 * from replies and pongs; a client given one address only talks to that replica, as behind a
 * Kubernetes Service. A reply is accepted only if it answers the request in flight; the checks
 * where the official client would panic fail the seed instead. Every accepted reply must equal,
 * byte for byte, what the replicas computed for that op (sim.c records it on commit).
 */
#include "client/client.h"
#include "sim/sim_internal.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <stdlib.h>
#include <string.h>

static void identity_new(struct sim *sim, struct sim_client *c)
{
        if (sim->identity_count == sim->identity_capacity) {
                sim->identity_capacity = MAX(64u, sim->identity_capacity * 2);
                sim->identities = realloc(sim->identities,
                                          sim->identity_capacity * sizeof(*sim->identities));
                tally_assert(sim->identities != NULL);
        }
        struct sim_identity *id = &sim->identities[sim->identity_count];
        memset(id, 0, sizeof(*id));
        do {
                id->id = ((u128)sim_prng_next(&sim->prng) << 64) | sim_prng_next(&sim->prng);
        } while (id->id == 0 || sim_identity_find(sim, id->id) != NULL);
        id->client = c->index;
        c->identity = sim->identity_count++;
        c->id = id->id;
        c->state = SIM_CLIENT_UNREGISTERED;
        c->view = 0;
        c->session = 0;
        c->request_number = 0;
        c->parent = 0;
        c->pending_id_count = 0;
}

struct sim_identity *sim_identity_find(struct sim *sim, u128 id)
{
        for (uint32_t i = 0; i < sim->identity_count; i++)
                if (sim->identities[i].id == id)
                        return &sim->identities[i];
        return NULL;
}

void sim_client_init(struct sim *sim, struct sim_client *c, uint32_t index)
{
        memset(c, 0, sizeof(*c));
        c->index = index;
        c->request = malloc(SIM_REQUEST_SIZE_MAX);
        tally_assert(c->request != NULL);
        /* Some clients know one address only and rely on that replica to serve them. */
        c->single = sim->replica_count > 1 && sim_prng_chance(&sim->prng, 250000);
        c->single_replica = (uint8_t)sim_prng_below(&sim->prng, sim->replica_count);
        c->rtt_ns = 300 * SIM_NS_PER_MS;
        c->ping_next_ns = sim->now_ns + sim_prng_range(&sim->prng, 0, 1000) * SIM_NS_PER_MS;
        c->think_until_ns = sim->now_ns + sim_prng_range(&sim->prng, 0, 500) * SIM_NS_PER_MS;
        identity_new(sim, c);
}

void sim_client_deinit(struct sim_client *c)
{
        free(c->request);
        c->request = NULL;
}

void sim_client_on_close(struct sim *sim, struct sim_client *c, uint32_t replica)
{
        (void)sim;
        c->connection[replica] = 0;
}

/* Sends on the connection to `replica`, connecting first (refused while it is down). */
static void send_to(struct sim *sim, struct sim_client *c, uint32_t replica, const uint8_t *bytes,
                    uint32_t size)
{
        if (c->connection[replica] == 0) {
                if (!sim->replicas[replica].up)
                        return;
                c->connection[replica] = sim_connection_open(sim, false, replica, c->index);
        }
        sim_net_send(sim, sim->replica_count + c->index, replica, c->connection[replica], bytes,
                     size);
}

static void send_request(struct sim *sim, struct sim_client *c)
{
        const struct wire_header *h = (const struct wire_header *)c->request;
        if (c->single) {
                send_to(sim, c, c->single_replica, c->request, h->size);
                return;
        }
        uint32_t n = sim->replica_count;
        uint32_t primary = c->view % n;
        send_to(sim, c, primary, c->request, h->size);
        if (n > 1) {
                uint32_t other = (primary + 1 + (uint32_t)sim_prng_below(&sim->prng, n - 1)) % n;
                send_to(sim, c, other, c->request, h->size);
        }
}

static void send_pings(struct sim *sim, struct sim_client *c)
{
        struct wire_header h;
        wire_header_init(&h, COMMAND_PING_CLIENT, sim->config.cluster, 0, WIRE_RELEASE_NODE_CLIENT,
                         0);
        h.ping_client.client = c->id;
        h.ping_client.ping_timestamp_monotonic = sim->now_ns;
        wire_header_set_checksum_body(&h, NULL, 0);
        wire_header_set_checksum(&h);
        for (uint32_t r = 0; r < sim->replica_count; r++)
                if (!c->single || r == c->single_replica)
                        send_to(sim, c, r, (const uint8_t *)&h, WIRE_HEADER_SIZE);
}

/* ---- the workload ------------------------------------------------------------------------ */

static u128 account_id(struct sim *sim)
{
        return sim_prng_range(&sim->prng, 1, SIM_ACCOUNTS);
}

static uint32_t body_accounts(struct sim *sim, uint8_t *body, uint32_t *expected)
{
        uint32_t n = (uint32_t)sim_prng_range(&sim->prng, 1, 8);
        for (uint32_t i = 0; i < n; i++) {
                struct wire_account a;
                memset(&a, 0, sizeof(a));
                a.id = account_id(sim);
                a.ledger = sim_prng_chance(&sim->prng, 50000) ? 2 : 1;
                a.code = (uint16_t)sim_prng_range(&sim->prng, 1, 3);
                a.user_data_64 = sim_prng_below(&sim->prng, 4);
                if (sim_prng_chance(&sim->prng, 200000))
                        a.flags |= ACCOUNT_FLAG_HISTORY;
                if (sim_prng_chance(&sim->prng, 100000))
                        a.flags |= ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS;
                else if (sim_prng_chance(&sim->prng, 50000))
                        a.flags |= ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS;
                if (sim_prng_chance(&sim->prng, 50000))
                        a.flags |= ACCOUNT_FLAG_LINKED;
                memcpy(body + i * sizeof(a), &a, sizeof(a));
        }
        *expected = n;
        return client_body_single_batch(body, sizeof(struct wire_account), n);
}

static uint32_t body_transfers(struct sim *sim, struct sim_client *c, uint8_t *body,
                               uint32_t *expected)
{
        uint32_t n = (uint32_t)sim_prng_range(&sim->prng, 1, 8);
        for (uint32_t i = 0; i < n; i++) {
                struct wire_transfer t;
                memset(&t, 0, sizeof(t));
                t.id = ((u128)(c->index + 1) << 64) | sim_prng_range(&sim->prng, 1, 1u << 16);
                t.debit_account_id = account_id(sim);
                t.credit_account_id = account_id(sim);
                t.amount = sim_prng_range(&sim->prng, 1, 1000);
                t.ledger = 1;
                t.code = 1;
                uint64_t kind = sim_prng_below(&sim->prng, 100);
                if (kind < 12) {
                        t.flags = TRANSFER_FLAG_PENDING;
                        t.timeout = (uint32_t)sim_prng_below(&sim->prng, 3); /* seconds */
                        c->pending_ids[c->pending_id_count % ARRAY_LEN(c->pending_ids)] = t.id;
                        c->pending_id_count++;
                } else if (kind < 22 && c->pending_id_count > 0) {
                        uint32_t known = MIN(c->pending_id_count, (uint32_t)ARRAY_LEN(c->pending_ids));
                        t.pending_id = c->pending_ids[sim_prng_below(&sim->prng, known)];
                        t.flags = sim_prng_below(&sim->prng, 2) ? TRANSFER_FLAG_POST_PENDING
                                                                : TRANSFER_FLAG_VOID_PENDING;
                        t.debit_account_id = 0;
                        t.credit_account_id = 0;
                        t.ledger = 0;
                        t.code = 0;
                        t.amount = sim_prng_below(&sim->prng, 2) ? 0 : t.amount;
                } else if (kind < 26) {
                        t.flags = TRANSFER_FLAG_BALANCING_DEBIT;
                } else if (kind < 28) {
                        t.id = 0; /* id_must_not_be_zero */
                }
                if (i + 1 < n && sim_prng_chance(&sim->prng, 80000))
                        t.flags |= TRANSFER_FLAG_LINKED;
                memcpy(body + i * sizeof(t), &t, sizeof(t));
        }
        *expected = n;
        return client_body_single_batch(body, sizeof(struct wire_transfer), n);
}

static uint32_t body_lookup(struct sim *sim, struct sim_client *c, uint8_t operation,
                            uint8_t *body, uint32_t *expected)
{
        uint32_t n = (uint32_t)sim_prng_range(&sim->prng, 1, 8);
        for (uint32_t i = 0; i < n; i++) {
                u128 id = account_id(sim);
                if (operation == OPERATION_LOOKUP_TRANSFERS) {
                        uint32_t known = MIN(c->pending_id_count, (uint32_t)ARRAY_LEN(c->pending_ids));
                        id = known > 0 ? c->pending_ids[sim_prng_below(&sim->prng, known)]
                                       : ((u128)(c->index + 1) << 64) |
                                                 sim_prng_range(&sim->prng, 1, 1u << 16);
                }
                memcpy(body + i * sizeof(id), &id, sizeof(id));
        }
        *expected = n;
        return client_body_single_batch(body, sizeof(u128), n);
}

static uint32_t body_filter(struct sim *sim, uint8_t operation, uint8_t *body, uint32_t *expected)
{
        uint32_t limit = (uint32_t)sim_prng_range(&sim->prng, 1, 8);
        *expected = limit;
        if (operation == OPERATION_GET_ACCOUNT_TRANSFERS ||
            operation == OPERATION_GET_ACCOUNT_BALANCES) {
                struct wire_account_filter f;
                memset(&f, 0, sizeof(f));
                f.account_id = account_id(sim);
                f.limit = limit;
                f.flags = (uint32_t)sim_prng_range(&sim->prng, 1, 3);
                if (sim_prng_below(&sim->prng, 2))
                        f.flags |= ACCOUNT_FILTER_FLAG_REVERSED;
                memcpy(body, &f, sizeof(f));
                return client_body_single_batch(body, sizeof(f), 1);
        }
        struct wire_query_filter f;
        memset(&f, 0, sizeof(f));
        f.ledger = (uint32_t)sim_prng_below(&sim->prng, 2);
        f.code = (uint16_t)sim_prng_below(&sim->prng, 2);
        f.limit = limit;
        f.flags = (uint32_t)sim_prng_below(&sim->prng, 2) ? QUERY_FILTER_FLAG_REVERSED : 0;
        memcpy(body, &f, sizeof(f));
        return client_body_single_batch(body, sizeof(f), 1);
}

static uint8_t next_operation(struct sim *sim)
{
        uint64_t k = sim_prng_below(&sim->prng, 100);
        if (k < 20)
                return OPERATION_CREATE_ACCOUNTS;
        if (k < 65)
                return OPERATION_CREATE_TRANSFERS;
        if (k < 75)
                return OPERATION_LOOKUP_ACCOUNTS;
        if (k < 83)
                return OPERATION_LOOKUP_TRANSFERS;
        if (k < 88)
                return OPERATION_GET_ACCOUNT_TRANSFERS;
        if (k < 93)
                return OPERATION_GET_ACCOUNT_BALANCES;
        if (k < 97)
                return OPERATION_QUERY_ACCOUNTS;
        return OPERATION_QUERY_TRANSFERS;
}

/* Writes the next request (a register first) into c->request and sends it. */
static void request_start(struct sim *sim, struct sim_client *c)
{
        struct wire_header *h = (struct wire_header *)c->request;
        uint8_t *body = c->request + WIRE_HEADER_SIZE;
        uint32_t body_size = 0;
        uint8_t operation = OPERATION_REGISTER;
        if (c->state == SIM_CLIENT_UNREGISTERED) {
                body_size = sizeof(struct wire_register_request);
                memset(body, 0, body_size);
                c->expected_results_max = 0;
        } else {
                operation = next_operation(sim);
                switch (operation) {
                case OPERATION_CREATE_ACCOUNTS:
                        body_size = body_accounts(sim, body, &c->expected_results_max);
                        break;
                case OPERATION_CREATE_TRANSFERS:
                        body_size = body_transfers(sim, c, body, &c->expected_results_max);
                        break;
                case OPERATION_LOOKUP_ACCOUNTS:
                case OPERATION_LOOKUP_TRANSFERS:
                        body_size = body_lookup(sim, c, operation, body, &c->expected_results_max);
                        break;
                default:
                        body_size = body_filter(sim, operation, body, &c->expected_results_max);
                        break;
                }
        }
        wire_header_init(h, COMMAND_REQUEST, sim->config.cluster, c->view,
                         WIRE_RELEASE_NODE_CLIENT, 0);
        h->size = WIRE_HEADER_SIZE + body_size;
        h->request.client = c->id;
        h->request.operation = operation;
        if (operation != OPERATION_REGISTER) {
                h->request.parent = c->parent;
                h->request.session = c->session;
                h->request.request = ++c->request_number;
        }
        wire_header_set_checksum_body(h, body, body_size);
        wire_header_set_checksum(h);
        c->operation = operation;
        c->state = SIM_CLIENT_IN_FLIGHT;
        c->first_sent_ns = sim->now_ns;
        c->timeout_ns = sim->now_ns + 600 * SIM_NS_PER_MS; /* the first firing: 60 ticks */
        c->attempts = 0;
        send_request(sim, c);
}

void sim_client_step(struct sim *sim, struct sim_client *c)
{
        if (sim->now_ns >= c->ping_next_ns) {
                send_pings(sim, c);
                c->ping_next_ns = sim->now_ns + sim_prng_range(&sim->prng, 2000, 6000) * SIM_NS_PER_MS;
        }
        switch (c->state) {
        case SIM_CLIENT_UNREGISTERED:
                if (sim->now_ns >= c->think_until_ns)
                        request_start(sim, c);
                break;
        case SIM_CLIENT_READY:
                if (!sim->workload_stopped && sim->now_ns >= c->think_until_ns)
                        request_start(sim, c);
                break;
        case SIM_CLIENT_IN_FLIGHT:
                if (sim->now_ns >= c->timeout_ns) {
                        /* The same bytes again, with TigerBeetle's backoff. */
                        c->attempts++;
                        sim->report->retransmissions++;
                        uint64_t cap = c->attempts >= 10 ? 999 : MIN(999u, 1u << c->attempts);
                        uint64_t backoff_ticks = 1 + sim_prng_range(&sim->prng, 0, cap);
                        c->timeout_ns = sim->now_ns + 2 * c->rtt_ns + backoff_ticks * SIM_TICK_NS;
                        send_request(sim, c);
                }
                break;
        }
}

/* ---- what the client accepts ------------------------------------------------------------- */

static uint32_t reply_element_size(uint8_t operation)
{
        return operation == OPERATION_CREATE_ACCOUNTS || operation == OPERATION_CREATE_TRANSFERS
                       ? sizeof(struct wire_create_result)
                       : 128u;
}

/* The checks of wire-protocol.md 4.4 from #4 on; false (after failing the seed) on a panic. */
static bool reply_acceptable(struct sim *sim, struct sim_client *c, uint32_t replica,
                             const struct wire_header *h, const uint8_t *body)
{
        const struct wire_header *sent = (const struct wire_header *)c->request;
        if (c->state != SIM_CLIENT_IN_FLIGHT) {
                if (c->state == SIM_CLIENT_READY && h->reply.request > c->request_number)
                        sim_fail(sim, "client %u: reply from replica %u for request %u, none in "
                                      "flight and the next is %u (client panics)",
                                 c->index, replica, h->reply.request, c->request_number + 1);
                return false;
        }
        if (h->reply.request < sent->request.request)
                return false; /* stale */
        if (h->reply.request > sent->request.request ||
            h->reply.request_checksum != sent->checksum ||
            h->reply.operation != sent->request.operation) {
                sim_fail(sim, "client %u: reply from replica %u (request %u op %llu) does not "
                              "match the request in flight %u (client panics)",
                         c->index, replica, h->reply.request, (unsigned long long)h->reply.op,
                         sent->request.request);
                return false;
        }
        uint32_t body_size = h->size - WIRE_HEADER_SIZE;
        if (c->operation == OPERATION_REGISTER) {
                struct wire_register_result result;
                memcpy(&result, body, MIN(body_size, (uint32_t)sizeof(result)));
                if (h->reply.commit == 0 || h->size != WIRE_HEADER_SIZE + sizeof(result) ||
                    result.batch_size_limit == 0 || result.batch_size_limit > WIRE_BODY_SIZE_MAX) {
                        sim_fail(sim, "client %u: invalid register reply from replica %u",
                                 c->index, replica);
                        return false;
                }
                return true;
        }
        const uint8_t *elements;
        uint32_t count;
        if (!client_reply_single_batch(body, body_size, reply_element_size(c->operation),
                                       &elements, &count) ||
            count > c->expected_results_max) {
                sim_fail(sim, "client %u: reply body of op %llu from replica %u is not one batch "
                              "of at most %u results (client panics)",
                         c->index, (unsigned long long)h->reply.op, replica,
                         c->expected_results_max);
                return false;
        }
        return true;
}

/* The reply must be what the replicas committed for its op. */
static void reply_check_committed(struct sim *sim, struct sim_client *c, uint32_t replica,
                                  const struct wire_header *h, const uint8_t *body)
{
        uint64_t op = h->reply.op;
        if (op >= sim->op_capacity || !sim->ops[op].committed) {
                sim_fail(sim, "client %u: reply from replica %u for op %llu, which no replica "
                              "committed",
                         c->index, replica, (unsigned long long)op);
                return;
        }
        const struct sim_op *o = &sim->ops[op];
        if (o->client != c->id || o->request != h->reply.request || !o->has_reply ||
            o->reply_digest != sim_reply_digest(h, body)) {
                sim_fail(sim, "client %u: reply from replica %u for op %llu differs from what "
                              "the replicas committed",
                         c->index, replica, (unsigned long long)op);
                return;
        }
        if (o->reply_context != h->reply.context)
                sim_fail(sim, "client %u: reply context from replica %u for op %llu differs from "
                              "replica %u's (the next request's parent would not match)",
                         c->index, replica, (unsigned long long)op, o->context_replica);
}

static void on_reply(struct sim *sim, struct sim_client *c, uint32_t replica,
                     const struct wire_header *h, const uint8_t *body)
{
        if (h->release != WIRE_RELEASE_NODE_CLIENT) {
                sim_fail(sim, "client %u: reply from replica %u has release %u (client panics)",
                         c->index, replica, h->release);
                return;
        }
        if (h->reply.client != c->id || !reply_acceptable(sim, c, replica, h, body))
                return;
        reply_check_committed(sim, c, replica, h, body);
        if (sim->failed)
                return;
        struct sim_identity *id = &sim->identities[c->identity];
        c->parent = h->reply.context;
        c->view = MAX(c->view, h->view);
        if (c->operation == OPERATION_REGISTER)
                c->session = h->reply.commit;
        id->acked_max = h->reply.request;
        c->acked++;
        sim->report->requests_acked++;
        if (sim->healing && c->first_sent_ns >= sim->heal_ns)
                c->acked_after_heal++;
        c->state = SIM_CLIENT_READY;
        c->think_until_ns = sim->now_ns + sim_prng_range(&sim->prng, 0, 50) * SIM_NS_PER_MS;
}

static void on_eviction(struct sim *sim, struct sim_client *c, uint32_t replica,
                        const struct wire_header *h)
{
        if (h->eviction.client != c->id || h->view < c->view)
                return;
        /* With no more clients than sessions, nothing should ever be evicted. */
        bool legitimate = h->eviction.reason == EVICTION_NO_SESSION &&
                          sim->identity_count > REPLICA_CLIENTS_MAX;
        if (!legitimate) {
                sim_fail(sim, "client %u evicted by replica %u reason=%u state=%u request=%u",
                         c->index, replica, h->eviction.reason, c->state, c->request_number);
                return;
        }
        sim_note(sim, "client %u evicted; registering again", c->index);
        identity_new(sim, c);
}

void sim_client_on_message(struct sim *sim, struct sim_client *c, uint32_t replica,
                           const uint8_t *bytes, uint32_t size)
{
        const struct wire_header *h = (const struct wire_header *)bytes;
        tally_assert(size == h->size); /* replicas' messages were checked when sent */
        const uint8_t *body = bytes + WIRE_HEADER_SIZE;
        switch (h->command) {
        case COMMAND_REPLY:
                on_reply(sim, c, replica, h, body);
                break;
        case COMMAND_PONG_CLIENT:
                if (h->replica >= WIRE_REPLICAS_MAX) {
                        sim_fail(sim, "client %u: pong with replica=%u (client panics)", c->index,
                                 h->replica);
                        return;
                }
                c->view = MAX(c->view, h->view);
                if (h->pong_client.ping_timestamp_monotonic <= sim->now_ns)
                        c->rtt_ns = MAX(10 * SIM_NS_PER_MS,
                                        sim->now_ns - h->pong_client.ping_timestamp_monotonic);
                break;
        case COMMAND_EVICTION:
                on_eviction(sim, c, replica, h);
                break;
        default:
                sim_fail(sim, "client %u: replica %u sent it a %s message", c->index, replica,
                         wire_command_name(h->command));
                break;
        }
}
