/*
 * test_replication.c: three (and five) replicas in one process over a perfect in-memory
 * network and disk, driven step by step: normal operation, a primary that dies and the view
 * change that follows, a client served through a backup, a backup that falls behind and
 * repairs, and a restarted replica that rejoins. The deterministic simulator (src/sim) covers
 * faults at random; these are the cases spelled out.
 */
#include "client/client.h"
#include "ledger/ledger.h"
#include "lsm/device_memory.h"
#include "lib/log.h"
#include "test.h"
#include "vsr/replica.h"
#include "vsr/replica_internal.h" /* replica_install */
#include "wire/checksum.h"
#include "wire/types.h"

#define REPLICAS_MAX 5
#define EVENTS_MAX 65536
#define STORE_OPS 4096

enum event_kind { EVENT_MESSAGE, EVENT_DURABLE, EVENT_VIEW_DURABLE, EVENT_CHECKPOINT_DONE };

struct event {
        enum event_kind kind;
        uint8_t to;
        replica_connection connection;
        struct message *message;
        void (*done_prepare)(void *replica, struct message *prepare);
        void (*done_view)(void *replica);
        void (*done_checkpoint)(void *replica, bool ok);
};

static struct message_pool pool;
static struct replica replicas[REPLICAS_MAX];
static struct ledger *ledgers[REPLICAS_MAX];
static struct message *store[REPLICAS_MAX][STORE_OPS];
static bool alive[REPLICAS_MAX];
static uint8_t replica_count;
static struct event events[EVENTS_MAX];
static uint32_t event_head, event_count;
static uint64_t clock_ns = 1700000000000000000ull;
/* The client's view of things. */
static struct message *last_reply;
static uint32_t replies_received;

static void push(struct event e)
{
        tally_assert(event_count < EVENTS_MAX);
        events[(event_head + event_count++) % EVENTS_MAX] = e;
}

/* Connection ids: 1000 + i is replica i's connection to the client; 1..5 are peers. */
static uint8_t index_of(void *context)
{
        return (uint8_t)((struct replica *)context - replicas);
}

static bool env_send(void *context, replica_connection connection, struct message *m)
{
        (void)context;
        if (connection >= 1000) {
                if (m->header->command == COMMAND_REPLY) {
                        if (last_reply != NULL)
                                message_unref(&pool, last_reply);
                        last_reply = message_ref(m);
                        replies_received++;
                }
                return true;
        }
        return false;
}

static bool env_alive(void *context, replica_connection connection)
{
        (void)context;
        (void)connection;
        return true;
}

static bool env_is_replica(void *context, replica_connection connection)
{
        (void)context;
        return connection >= 1 && connection <= REPLICAS_MAX;
}

static int env_connection_replica(void *context, replica_connection connection)
{
        (void)context;
        return connection >= 1 && connection <= REPLICAS_MAX ? (int)connection - 1 : -1;
}

static bool only_commits_to[REPLICAS_MAX]; /* it hears of commits, and nothing else */
static uint32_t dropped_to[REPLICAS_MAX];   /* bit c: messages of command c to it are lost */
/*
 * A slow state sync: the blocks (not lists) sent to replica sync_slow_to wait in a queue, and
 * one arrives every sync_slow_ticks (0: none waits). The copy makes progress, only slowly.
 */
static int sync_slow_to = -1;
static uint32_t sync_slow_ticks;
static struct event sync_slow_queue[64];
static uint32_t sync_slow_count;

static void env_send_to_replica(void *context, uint8_t to, struct message *m)
{
        uint8_t from = index_of(context);
        if (!alive[from] || !alive[to])
                return;
        if (only_commits_to[to] && m->header->command != COMMAND_COMMIT)
                return;
        if (m->header->command < 32 && (dropped_to[to] & (1u << m->header->command)))
                return;
        if (to == sync_slow_to && m->header->command == COMMAND_BLOCK) {
                struct replica_sync_fields f;
                memcpy(&f, m->header->raw, sizeof(f));
                if (f.kind == REPLICA_SYNC_BLOCKS) {
                        if (sync_slow_count < ARRAY_LEN(sync_slow_queue))
                                sync_slow_queue[sync_slow_count++] = (struct event){
                                        .kind = EVENT_MESSAGE, .to = to,
                                        .connection = from + 1u, .message = message_ref(m)};
                        return;
                }
        }
        push((struct event){.kind = EVENT_MESSAGE, .to = to, .connection = from + 1u,
                            .message = message_ref(m)});
}

static bool env_journal_write(void *context, struct message *prepare,
                              void (*done)(void *replica, struct message *prepare), void *replica)
{
        uint8_t i = index_of(context);
        uint64_t op = prepare->header->prepare.op;
        tally_assert(op < STORE_OPS);
        if (store[i][op] != NULL)
                message_unref(&pool, store[i][op]);
        store[i][op] = message_ref(prepare);
        push((struct event){.kind = EVENT_DURABLE, .to = i, .message = message_ref(prepare),
                            .done_prepare = done});
        (void)replica;
        return true;
}

static uint64_t prepare_damaged[REPLICAS_MAX]; /* this op's prepare fails its checksum */

static bool env_journal_read(void *context, uint64_t op, u128 checksum, struct message *into)
{
        uint8_t i = index_of(context);
        struct message *m = op < STORE_OPS && prepare_damaged[i] != op ? store[i][op] : NULL;
        if (m == NULL || (checksum != 0 && m->header->checksum != checksum))
                return false;
        memcpy(into->buffer, m->buffer, m->header->size);
        return true;
}

static struct replica_view_state durable_state[REPLICAS_MAX];

static bool env_view_write(void *context, const struct replica_view_state *state,
                           void (*done)(void *replica), void *replica)
{
        (void)replica;
        durable_state[index_of(context)] = *state; /* this disk never loses a write */
        push((struct event){.kind = EVENT_VIEW_DURABLE, .to = index_of(context), .done_view = done});
        return true;
}

/* Each replica's grid (its ledger's blocks, kept across restarts) and replies by slot. */
static struct lsm_device_memory grids[REPLICAS_MAX];
static struct message *checkpoint_replies[REPLICAS_MAX][128];

/*
 * Checkpoints whose chain anchor is not the checksum of the prepare at their op (as some
 * replica journaled it): a restart would replay the journal from a wrong anchor and drop every
 * entry after it. Checked for every checkpoint of every scenario.
 */
static uint32_t checkpoint_anchor_wrong;
static uint32_t checkpoint_anchor_checked;

/*
 * Primaries running a view on a log whose end (anchor) their disk does not say: a restart
 * would recover another log in the same log_view. A new primary that cut ops 291-297 started
 * view 10 at 290 before the cut was durable, crashed, came back with 297, and the views rotated
 * forever (simulator, seed 824 on 3 replicas). Checked after every event of every scenario.
 */
static uint32_t primary_anchor_unwritten;
static uint32_t primary_anchor_checked;

/* Replica i's storage refuses to start checkpoints (busy, as with a view-state write). */
static bool checkpoint_busy[REPLICAS_MAX];

static bool env_checkpoint(void *context, const struct replica_checkpoint *cp,
                           void (*done)(void *replica, bool ok), void *replica)
{
        (void)replica;
        uint8_t i = index_of(context);
        if (checkpoint_busy[i])
                return false;
        for (uint8_t j = 0; j < REPLICAS_MAX && cp->op < STORE_OPS; j++) {
                const struct message *p = store[j][cp->op];
                if (p != NULL && p->header->prepare.op == cp->op)
                        checkpoint_anchor_checked++;
                if (p != NULL && p->header->prepare.op == cp->op &&
                    p->header->checksum != cp->prepare_checksum) {
                        checkpoint_anchor_wrong++;
                        fprintf(stderr, "  replica %u checkpoint at op %llu names another "
                                        "checksum than replica %u's prepare\n",
                                i, (unsigned long long)cp->op, j);
                        break;
                }
        }
        if (cp->root.address == 0)
                checkpoint_anchor_wrong++; /* a checkpoint must name its root */
        for (uint32_t k = 0; k < cp->reply_count; k++) {
                struct message **slot = &checkpoint_replies[i][cp->replies[k].slot];
                if (*slot != NULL)
                        message_unref(&pool, *slot);
                *slot = message_ref(cp->replies[k].reply);
        }
        push((struct event){.kind = EVENT_CHECKPOINT_DONE, .to = index_of(context),
                            .done_checkpoint = done});
        return true;
}

static bool env_reply_read(void *context, uint32_t slot, u128 checksum, struct message *into)
{
        struct message *m = checkpoint_replies[index_of(context)][slot];
        if (m == NULL || m->header->checksum != checksum)
                return false;
        memcpy(into->buffer, m->buffer, m->header->size);
        return true;
}

static uint64_t env_time(void *context)
{
        (void)context;
        return clock_ns;
}

/* The replicas' request_size_max and journal ring (a test may lower them, then restore them). */
static uint32_t request_size_max = WIRE_MESSAGE_SIZE_MAX;
static uint32_t wal_slot_count = 1024;

static void replica_start(uint8_t i)
{
        struct replica_config config = {
                .cluster = 0,
                .replica = i,
                .replica_count = replica_count,
                .request_size_max = request_size_max,
                .checkpoint_interval = wal_slot_count / 4,
                .wal_slot_count = wal_slot_count,
        };
        struct replica_env env = {
                .context = &replicas[i],
                .send = env_send,
                .connection_alive = env_alive,
                .journal_write = env_journal_write,
                .realtime_ns = env_time,
                .checkpoint = env_checkpoint,
                .connection_is_replica = env_is_replica,
                .connection_replica = env_connection_replica,
                .send_to_replica = env_send_to_replica,
                .journal_read = env_journal_read,
                .view_write = env_view_write,
                .reply_read = env_reply_read,
        };
        struct ledger_config lc = {.accounts_max = 1000,
                                   .transfers_max = 1000,
                                   .device = lsm_device_memory(&grids[i]),
                                   .grid_blocks_max = 1u << 16,
                                   .memtable_max = 512,
                                   .table_data_blocks_max = 2};
        ledgers[i] = ledger_create(&lc);
        tally_assert(replica_init(&replicas[i], &config, &env, &pool, ledgers[i]) == 0);
        alive[i] = true;
}

static bool read_header_none(void *context, uint32_t slot, struct wire_header *into)
{
        (void)context;
        (void)slot;
        (void)into;
        return false;
}

static bool read_prepare_none(void *context, uint32_t slot, const struct wire_header *h,
                              struct message *into)
{
        (void)context;
        (void)slot;
        (void)h;
        (void)into;
        return false;
}

static void cluster_start(uint8_t count)
{
        replica_count = count;
        for (uint8_t i = 0; i < count; i++) {
                lsm_device_memory_init(&grids[i], 1u << 16);
                replica_start(i);
                durable_state[i] = (struct replica_view_state){.fresh = true}; /* as formatted */
                struct replica_durable d = {.view_state = durable_state[i],
                                            .read_header = read_header_none,
                                            .read_prepare = read_prepare_none};
                char error[128];
                tally_assert(replica_open(&replicas[i], &d, error, sizeof(error)) == 0);
        }
}

static uint8_t restoring;

static bool read_header_store(void *context, uint32_t slot, struct wire_header *into)
{
        (void)context;
        for (uint32_t op = 1; op < STORE_OPS; op++) {
                struct message *m = store[restoring][op];
                if (m != NULL && op % wal_slot_count == slot) {
                        memcpy(into, m->header, sizeof(*into));
                        return true;
                }
        }
        return false;
}

static bool read_prepare_store(void *context, uint32_t slot, const struct wire_header *h,
                               struct message *into)
{
        (void)context;
        if (h == NULL)
                return false; /* this store has no separate headers zone to lose */
        (void)slot;
        if (prepare_damaged[restoring] == h->prepare.op)
                return false;
        struct message *m = store[restoring][h->prepare.op];
        if (m == NULL || m->header->checksum != h->checksum)
                return false;
        memcpy(into->buffer, m->buffer, m->header->size);
        return true;
}

/* What a restarted replica reads from its disk (store, view state), without a checkpoint. */
static struct replica_durable durable_of(uint8_t i)
{
        restoring = i;
        return (struct replica_durable){.view_state = durable_state[i],
                                        .read_header = read_header_store,
                                        .read_prepare = read_prepare_store};
}

/* A crash and restart: the replica's memory is gone; its disk (store, view) is not. */
static void replica_restart(uint8_t i)
{
        replica_deinit(&replicas[i]);
        ledger_destroy(ledgers[i]);
        replica_start(i);
        struct replica_durable d = durable_of(i);
        char error[128];
        tally_assert(replica_open(&replicas[i], &d, error, sizeof(error)) == 0);
}

static void cluster_stop(void)
{
        /* Drain without delivering. */
        while (event_count > 0) {
                struct event *e = &events[event_head];
                event_head = (event_head + 1) % EVENTS_MAX;
                event_count--;
                if (e->message != NULL)
                        message_unref(&pool, e->message);
        }
        for (uint8_t i = 0; i < replica_count; i++) {
                replica_deinit(&replicas[i]);
                ledger_destroy(ledgers[i]);
                for (uint32_t op = 0; op < STORE_OPS; op++) {
                        if (store[i][op] != NULL)
                                message_unref(&pool, store[i][op]);
                        store[i][op] = NULL;
                }
        }
        if (last_reply != NULL)
                message_unref(&pool, last_reply);
        last_reply = NULL;
        for (uint8_t i = 0; i < REPLICAS_MAX; i++) {
                if (grids[i].block_count_max != 0)
                        lsm_device_memory_deinit(&grids[i]);
                for (uint32_t k = 0; k < 128; k++) {
                        if (checkpoint_replies[i][k] != NULL)
                                message_unref(&pool, checkpoint_replies[i][k]);
                        checkpoint_replies[i][k] = NULL;
                }
        }
        memset(durable_state, 0, sizeof(durable_state));
        for (uint32_t k = 0; k < sync_slow_count; k++)
                message_unref(&pool, sync_slow_queue[k].message);
        sync_slow_count = 0;
        sync_slow_to = -1;
}

/* Delivers events until none is left; ticks every replica every `per_tick` events. */
static void run(uint32_t ticks)
{
        for (uint32_t t = 0; t < ticks; t++) {
                uint32_t budget = 2000;
                while (event_count > 0 && budget-- > 0) {
                        struct event e = events[event_head];
                        event_head = (event_head + 1) % EVENTS_MAX;
                        event_count--;
                        if (alive[e.to]) {
                                struct replica *r = &replicas[e.to];
                                switch (e.kind) {
                                case EVENT_MESSAGE:
                                        replica_on_message(r, e.connection, e.message);
                                        break;
                                case EVENT_DURABLE:
                                        e.done_prepare(r, e.message);
                                        break;
                                case EVENT_VIEW_DURABLE:
                                        e.done_view(r);
                                        break;
                                case EVENT_CHECKPOINT_DONE:
                                        e.done_checkpoint(r, true);
                                        break;
                                }
                                if (r->status == REPLICA_STATUS_NORMAL &&
                                    r->view % replica_count == e.to && r->log_view == r->view) {
                                        primary_anchor_checked++;
                                        if (durable_state[e.to].log_view != r->view ||
                                            durable_state[e.to].anchor_op != r->anchor_op ||
                                            durable_state[e.to].anchor_checksum !=
                                                    r->anchor_checksum)
                                                primary_anchor_unwritten++;
                                }
                        }
                        if (e.message != NULL)
                                message_unref(&pool, e.message);
                }
                clock_ns += 10000000ull;
                /* The slow copy's next block, or all of them once it is not slow. */
                static uint64_t ticks_run;
                ticks_run++;
                while (sync_slow_count > 0 &&
                       (sync_slow_to < 0 || ticks_run % sync_slow_ticks == 0)) {
                        push(sync_slow_queue[0]);
                        memmove(&sync_slow_queue[0], &sync_slow_queue[1],
                                --sync_slow_count * sizeof(sync_slow_queue[0]));
                        if (sync_slow_to >= 0)
                                break;
                }
                for (uint8_t i = 0; i < replica_count; i++) {
                        if (alive[i])
                                replica_tick(&replicas[i]);
                }
        }
}

/* The client: one session, one request at a time, to replica `to`. */
static u128 client_id = 77;
static uint64_t session;
static uint32_t request_number;
static u128 parent;

static struct message *client_message(uint8_t operation, const void *body, uint32_t size)
{
        struct message *m = message_pool_get(&pool);
        struct wire_header *h = m->header;
        wire_header_init(h, COMMAND_REQUEST, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
        h->size = WIRE_HEADER_SIZE + size;
        h->request.client = client_id;
        h->request.operation = operation;
        if (operation != OPERATION_REGISTER) {
                h->request.parent = parent;
                h->request.session = session;
                h->request.request = request_number + 1;
        }
        memcpy(m->buffer + WIRE_HEADER_SIZE, body, size);
        wire_header_set_checksum_body(h, m->buffer + WIRE_HEADER_SIZE, size);
        wire_header_set_checksum(h);
        return m;
}

/* A reply to `m` arrived since `before` replies (a late duplicate's reply does not count). */
static bool answered_to(const struct message *m, uint32_t before)
{
        return replies_received != before &&
               last_reply->header->reply.request_checksum == m->header->checksum;
}

/* The client's message `m`, once, straight to replica `to` (no resend). */
static void send_once(uint8_t to, struct message *m)
{
        push((struct event){.kind = EVENT_MESSAGE, .to = to, .connection = 1000u + to,
                            .message = message_ref(m)});
}

/* Runs until `m` is answered (a reply since `before` replies); false after `ticks`. */
static bool run_until_answered(const struct message *m, uint32_t before, uint32_t ticks)
{
        for (uint32_t t = 0; t < ticks; t++) {
                run(1);
                if (answered_to(m, before))
                        return true;
        }
        return false;
}

/* Sends (and resends every 100 ticks) until the reply arrives; false after `ticks`. */
static bool client_call(uint8_t to, uint8_t operation, const void *body, uint32_t size,
                        uint32_t ticks)
{
        struct message *m = client_message(operation, body, size);
        for (uint32_t t = 0; t < ticks; t += 100) {
                uint32_t before = replies_received;
                uint8_t target = to == 0xFF ? (uint8_t)(t / 100 % replica_count) : to;
                if (alive[target])
                        send_once(target, m);
                /* Replies to older requests (late duplicates) do not end the wait. */
                if (run_until_answered(m, before, 100)) {
                        if (operation == OPERATION_REGISTER)
                                session = last_reply->header->reply.commit;
                        else
                                request_number++;
                        parent = last_reply->header->reply.context;
                        message_unref(&pool, m);
                        return true;
                }
        }
        message_unref(&pool, m);
        return false;
}

static uint32_t accounts_body(uint8_t *body, uint64_t first, uint32_t count)
{
        memset(body, 0, (size_t)(count + 1) * 128);
        for (uint32_t i = 0; i < count; i++) {
                struct wire_account a = {.id = first + i, .ledger = 1, .code = 1};
                memcpy(body + i * 128, &a, sizeof(a));
        }
        return client_body_single_batch(body, 128, count);
}

static bool create_accounts(uint8_t to, uint64_t first, uint32_t count, uint32_t ticks)
{
        static uint8_t body[64 * 128];
        uint32_t size = accounts_body(body, first, count);
        if (!client_call(to, OPERATION_CREATE_ACCOUNTS, body, size, ticks)) {
                fprintf(stderr, "  create_accounts %llu: no reply\n", (unsigned long long)first);
                for (uint8_t i = 0; i < replica_count; i++) {
                        struct replica *r = &replicas[i];
                        fprintf(stderr,
                                "  replica %u: alive=%d status=%d view=%u op=%llu commit=%llu "
                                "commit_max=%llu pipeline=%u queue=%u ok=%x fresh=%d\n",
                                i, alive[i], r->status, r->view, (unsigned long long)r->op,
                                (unsigned long long)r->commit,
                                (unsigned long long)r->commit_max, r->pipeline_count,
                                r->queue_count,
                                r->pipeline_count ? r->pipeline[r->pipeline_head].ok : 0,
                                r->fresh);
                }
                return false;
        }
        if (last_reply->header->size != WIRE_HEADER_SIZE + 8) { /* failures reported */
                struct wire_create_result result;
                memcpy(&result, last_reply->buffer + WIRE_HEADER_SIZE, sizeof(result));
                fprintf(stderr, "  create_accounts %llu: event %u result %u\n",
                        (unsigned long long)first, result.index, result.result);
                return false;
        }
        return true;
}

/* Op k of a run: account k + 1 created while k < accounts, else a lookup (an op, no account). */
static bool create_or_lookup(uint32_t k, uint32_t accounts)
{
        if (k < accounts)
                return create_accounts(0, 1 + k, 1, 1000);
        uint8_t lookup[256] = {0};
        u128 id = k;
        memcpy(lookup, &id, sizeof(id));
        uint32_t size = client_body_single_batch(lookup, sizeof(id), 1);
        return client_call(0, OPERATION_LOOKUP_ACCOUNTS, lookup, size, 1000);
}

/* Ops `first` to `end` - 1 of such a run; false at the first one not answered. */
static bool creates_or_lookups(uint32_t first, uint32_t end, uint32_t accounts)
{
        for (uint32_t k = first; k < end; k++) {
                if (!create_or_lookup(k, accounts))
                        return false;
        }
        return true;
}

static uint64_t accounts_on(uint8_t i)
{
        struct ledger_stats stats;
        ledger_get_stats(ledgers[i], &stats);
        return stats.accounts;
}

static void client_reset(void)
{
        client_id++;
        session = 0;
        request_number = 0;
        parent = 0;
}

/* A cluster of `count` that registered a session and committed `creates` requests of 2
 * accounts each. */
static void cluster_with_creates(uint8_t count, uint64_t creates)
{
        cluster_start(count);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0xFF, OPERATION_REGISTER, body, sizeof(body), 1000));
        for (uint64_t k = 0; k < creates; k++)
                CHECK(create_accounts(0xFF, 1 + 2 * k, 2, 1000));
        run(100);
}

static void test_normal_operation(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        for (uint32_t k = 0; k < 10; k++)
                CHECK(create_accounts(0, 1 + k * 5, 5, 1000));
        run(50);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(accounts_on(i), 50);
                CHECK_EQ_U64(replicas[i].commit, 11);
                CHECK_EQ_U64(replicas[i].view, replicas[0].view);
        }
        cluster_stop();
}

static void test_client_through_backup(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(2, OPERATION_REGISTER, body, sizeof(body), 2000));
        CHECK(create_accounts(2, 100, 3, 2000));
        CHECK(create_accounts(1, 200, 3, 2000));
        run(50);
        for (uint8_t i = 0; i < 3; i++)
                CHECK_EQ_U64(accounts_on(i), 6);
        cluster_stop();
}

static void test_primary_dies(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        CHECK(create_accounts(0, 1, 5, 1000));
        alive[0] = false; /* the primary of view 0 is gone */
        CHECK(create_accounts(0xFF, 10, 5, 3000));
        CHECK(replicas[1].view >= 1);
        CHECK_EQ_U64(replicas[1].view, replicas[2].view);
        CHECK_EQ_U64(accounts_on(1), 10);
        CHECK_EQ_U64(accounts_on(2), 10);
        /* It comes back (same memory, as after a pause) and catches up. */
        alive[0] = true;
        CHECK(create_accounts(0xFF, 20, 5, 3000));
        run(300);
        CHECK_EQ_U64(accounts_on(0), 15);
        CHECK_EQ_U64(replicas[0].view, replicas[1].view);
        cluster_stop();
}

/* Three replicas, a registered session, accounts 1-5; `body` is the caller's scratch. */
static void cluster_with_five_accounts(uint8_t *body)
{
        cluster_start(3);
        client_reset();
        memset(body, 0, 256);
        CHECK(client_call(0, OPERATION_REGISTER, body, 256, 1000));
        CHECK(create_accounts(0, 1, 5, 1000));
}

/* A request creating `count` accounts from `first`, sent once to replica `to` only; *before:
 * the replies received until then (for answered_to). The caller unrefs it. */
static struct message *creates_sent_once(uint8_t to, uint8_t *body, uint64_t first,
                                         uint32_t count, uint32_t *before)
{
        uint32_t size = accounts_body(body, first, count);
        struct message *m = client_message(OPERATION_CREATE_ACCOUNTS, body, size);
        *before = replies_received;
        send_once(to, m);
        return m;
}

/* The current view of a cluster of 3: its primary, the next view's, and the third replica. */
static uint32_t view_roles(uint8_t *primary, uint8_t *next, uint8_t *third)
{
        uint32_t view = replicas[0].view;
        *primary = (uint8_t)(view % 3);
        *next = (uint8_t)((view + 1) % 3);
        *third = (uint8_t)(3 - *primary - *next);
        return view;
}

/*
 * A request that reaches the next primary during the view change is kept and answered once the
 * view starts, without a resend: the official client resends only after a timeout that
 * doubles with each attempt.
 */
static void test_request_kept_through_a_view_change(void)
{
        uint8_t body[64 * 128];
        cluster_with_five_accounts(body);
        /* The primary is gone; the next one hears no do_view_change: it cannot start the view
         * yet. */
        uint32_t view = replicas[0].view;
        uint8_t next = (uint8_t)((view + 1) % 3);
        alive[view % 3] = false;
        dropped_to[next] = 1u << COMMAND_DO_VIEW_CHANGE;
        uint32_t waited = 0;
        while (replicas[next].status == REPLICA_STATUS_NORMAL && waited++ < 1000)
                run(1);
        CHECK(replicas[next].status != REPLICA_STATUS_NORMAL);
        uint32_t size = accounts_body(body, 10, 5);
        struct message *m = client_message(OPERATION_CREATE_ACCOUNTS, body, size);
        uint32_t before = replies_received;
        /* Once, to the next primary, while it is not serving. */
        send_once(next, m);
        run(50);
        CHECK_EQ_U64(replicas[next].parked_count, 1);
        CHECK(replicas[next].status != REPLICA_STATUS_NORMAL);
        /* A late copy of the client's previous request does not replace it. */
        request_number--;
        struct message *older = client_message(OPERATION_CREATE_ACCOUNTS, body, size);
        request_number++;
        send_once(next, older);
        message_unref(&pool, older);
        run(5);
        CHECK_EQ_U64(replicas[next].parked_count, 1);
        CHECK(replicas[next].parked[0].request->header->checksum == m->header->checksum);
        dropped_to[next] = 0;
        CHECK(run_until_answered(m, before, 1000));
        CHECK(replicas[next].view > view);
        CHECK(replicas[next].stats.requests_parked >= 1);
        CHECK_EQ_U64(replicas[next].parked_count, 0);
        CHECK_EQ_U64(accounts_on(next), 10);
        message_unref(&pool, m);
        cluster_stop();
}

/*
 * A backup whose primary is gone, with no quorum for a view change (the third replica is cut
 * off too), keeps a client's request instead of forwarding it to the silent primary, and it is
 * answered once a view starts, without a resend. Forwarded, it was lost, and the official
 * client resent it only after a timeout grown through the outage (the partition suite's
 * kill-during-partition: 1.4-2.9 s without service after the new view started).
 */
static void test_request_to_a_backup_of_a_silent_primary_is_kept(void)
{
        uint8_t body[64 * 128];
        cluster_with_five_accounts(body);
        uint8_t old, b, t;
        uint32_t view = view_roles(&old, &b, &t);
        alive[old] = false;
        alive[t] = false;
        run(100); /* well past TICKS_PRIMARY_SILENT */
        CHECK(replicas[b].status == REPLICA_STATUS_NORMAL && replicas[b].view == view);
        uint32_t before;
        struct message *m = creates_sent_once(b, body, 6, 5, &before);
        run(20);
        CHECK_EQ_U64(replicas[b].parked_count, 1);
        CHECK(!answered_to(m, before));
        alive[t] = true;
        CHECK(run_until_answered(m, before, 2000));
        CHECK(replicas[b].view > view);
        CHECK_EQ_U64(replicas[b].parked_count, 0);
        CHECK_EQ_U64(accounts_on(b), 10);
        message_unref(&pool, m);
        cluster_stop();
}

/*
 * A new primary holds the client's last request uncommitted (the old primary committed it and
 * replied, and died before the backups heard of the commit). The client's next request,
 * arriving before that op commits again, looks as if it skipped one: it is kept and answered
 * once the op commits, without a resend (dropped, it cost the official client a request
 * timeout; the partition suite's lagging-backup-then-primary went 3.8 s without service).
 */
static void test_request_after_an_uncommitted_one_is_kept(void)
{
        uint8_t body[64 * 128];
        cluster_with_five_accounts(body);
        uint8_t old, next, other;
        uint32_t view = view_roles(&old, &next, &other);
        /* Accounts 6-10 commit on the old primary only: no backup hears of the commit. */
        dropped_to[next] = dropped_to[other] = 1u << COMMAND_COMMIT;
        CHECK(create_accounts(old, 6, 5, 1000));
        uint64_t committed = replicas[old].commit;
        alive[old] = false;
        CHECK(replicas[next].commit < committed);
        /* The next primary cannot commit that op again yet (its backup's acks are lost). */
        dropped_to[next] = 1u << COMMAND_PREPARE_OK;
        dropped_to[other] = 0;
        uint32_t waited = 0;
        while (!(replicas[next].status == REPLICA_STATUS_NORMAL && replicas[next].view > view) &&
               waited++ < 3000)
                run(1);
        CHECK(replicas[next].view > view);
        CHECK(replicas[next].pipeline_count >= 1);
        CHECK(replicas[next].commit < committed);
        uint64_t parked_before = replicas[next].stats.requests_parked;
        uint32_t before;
        struct message *m = creates_sent_once(next, body, 11, 5, &before);
        run(20);
        CHECK_EQ_U64(replicas[next].parked_count, 1);
        CHECK(replicas[next].stats.requests_parked > parked_before);
        CHECK(!answered_to(m, before));
        dropped_to[next] = 0;
        CHECK(run_until_answered(m, before, 1000));
        CHECK_EQ_U64(replicas[next].parked_count, 0);
        CHECK_EQ_U64(accounts_on(next), 15);
        message_unref(&pool, m);
        cluster_stop();
}

/*
 * An op prepared in one view and committed by the next is answered with the new view (the
 * official client sends its next request to the primary of the view its last reply named: told
 * the old one, it sent that request to the old primary, gone, and waited a request timeout;
 * the partition suite's lagging-backup-then-primary went 1.2 s without service after the new
 * view had started). The reply still chains the client's next request.
 */
static void test_reply_names_the_view_that_committed_it(void)
{
        uint8_t body[64 * 128];
        cluster_with_five_accounts(body);
        uint8_t old, next, other;
        uint32_t view = view_roles(&old, &next, &other);
        /* The request reaches the next primary, which forwards it; the old primary prepares it
         * and hears no ok. */
        dropped_to[old] = 1u << COMMAND_PREPARE_OK;
        uint32_t before;
        struct message *m = creates_sent_once(next, body, 6, 5, &before);
        run(20);
        CHECK(replicas[next].op > replicas[next].commit);
        CHECK(!answered_to(m, before));
        alive[old] = false;
        dropped_to[old] = 0;
        CHECK(run_until_answered(m, before, 3000));
        CHECK(replicas[next].view > view);
        CHECK_EQ_U64(last_reply->header->view, replicas[next].view);
        CHECK(wire_header_checksum_valid(last_reply->header));
        CHECK(wire_header_invalid(last_reply->header) == NULL);
        request_number++;
        parent = last_reply->header->reply.context;
        message_unref(&pool, m);
        /* The next request, chained on that reply, is served. */
        CHECK(create_accounts(next, 11, 5, 1000));
        CHECK_EQ_U64(accounts_on(next), 15);
        cluster_stop();
}

/*
 * A backup executes an op only under a known chain from its log's head: an entry the chain
 * contradicts (here forged in place: another prepare at the same op with the same parent) is
 * dropped and repaired from a peer, never executed. (Simulator seed 2109 on 5 replicas,
 * 2026-12-05: a new primary executed its own ops of an older view found under a gap of the best
 * log, where another view had committed other prepares.)
 */
static void test_backup_executes_only_a_chained_entry(void)
{
        uint8_t body[64 * 128];
        cluster_with_five_accounts(body);
        run(50);
        uint8_t p = (uint8_t)(replicas[0].view % 3), b = (uint8_t)((p + 1) % 3);
        /* b hears of commits only from the next prepare's header. */
        dropped_to[b] = 1u << COMMAND_COMMIT;
        CHECK(create_accounts(p, 10, 5, 1000));
        uint64_t x = replicas[p].commit;
        run(10);
        CHECK(replicas[b].commit < x);
        CHECK(store[b][x] != NULL);
        /* b's copy of op x becomes another prepare: same op, parent and timestamp, 7 accounts. */
        struct message *forged = message_pool_get(&pool);
        uint32_t size = accounts_body(body, 100, 7);
        memcpy(forged->header, store[b][x]->header, sizeof(struct wire_header));
        forged->header->size = WIRE_HEADER_SIZE + size;
        memcpy(forged->buffer + WIRE_HEADER_SIZE, body, size);
        wire_header_set_checksum_body(forged->header, forged->buffer + WIRE_HEADER_SIZE, size);
        wire_header_set_checksum(forged->header);
        u128 forged_checksum = forged->header->checksum;
        message_unref(&pool, store[b][x]);
        store[b][x] = forged;
        replicas[b].journal_headers[x % replicas[b].config.wal_slot_count] = *forged->header;
        /* The next op names the real x as its parent, and tells b that x is committed. */
        CHECK(create_accounts(p, 20, 5, 1000));
        dropped_to[b] = 0;
        run(300);
        CHECK_EQ_U64(replicas[b].commit, replicas[p].commit);
        CHECK_EQ_U64(accounts_on(p), 15);
        CHECK_EQ_U64(accounts_on(b), 15);
        CHECK(store[b][x] != NULL && store[b][x]->header->checksum != forged_checksum);
        cluster_stop();
}

static void test_backup_behind_repairs(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        alive[2] = false; /* misses everything below */
        for (uint32_t k = 0; k < 20; k++)
                CHECK(create_accounts(0, 1 + k * 2, 2, 1000));
        alive[2] = true;
        CHECK(create_accounts(0, 100, 2, 1000));
        run(500);
        CHECK_EQ_U64(accounts_on(2), 42);
        CHECK_EQ_U64(replicas[2].commit, replicas[0].commit);
        cluster_stop();
}

static void test_five_replicas_two_down(void)
{
        cluster_start(5);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        CHECK(create_accounts(0, 1, 3, 1000));
        alive[0] = false;
        alive[4] = false;
        CHECK(create_accounts(0xFF, 10, 3, 5000));
        for (uint8_t i = 1; i < 4; i++)
                CHECK_EQ_U64(accounts_on(i), 6);
        cluster_stop();
}

/*
 * Of 5 replicas, one backup acknowledges an op no other backup receives, then loses its disk
 * (re-formatted) and rejoins the same view. Its ok went with its disk: the op must not commit
 * until three replicas hold it. Counted, a third backup's ok committed it with two copies
 * (simulator, seed 3140 on 5 replicas: op 4 committed held by replicas 0 and 3).
 */
static void test_rejoined_replica_oks_do_not_count(void)
{
        cluster_with_creates(5, 1);
        uint8_t p = 0;
        while (p < 4 && !(replicas[p].status == REPLICA_STATUS_NORMAL && replicas[p].view % 5 == p))
                p++;
        uint8_t b = (uint8_t)((p + 1) % 5), c = (uint8_t)((p + 2) % 5);
        uint64_t x = replicas[p].op + 1;
        for (uint8_t i = 0; i < 5; i++)
                dropped_to[i] = i == p || i == b ? 0 : 1u << COMMAND_PREPARE;
        CHECK(!create_accounts(p, 10, 1, 100));
        CHECK(store[b][x] != NULL);
        CHECK(replicas[p].commit < x);
        /* b comes back wiped, and hears no prepare: it cannot hold x again. */
        replica_deinit(&replicas[b]);
        ledger_destroy(ledgers[b]);
        for (uint32_t op = 0; op < STORE_OPS; op++) {
                if (store[b][op] != NULL)
                        message_unref(&pool, store[b][op]);
                store[b][op] = NULL;
        }
        lsm_device_memory_deinit(&grids[b]);
        lsm_device_memory_init(&grids[b], 1u << 16);
        replica_start(b);
        struct replica_durable d = {.view_state = {.fresh = true},
                                    .read_header = read_header_none,
                                    .read_prepare = read_prepare_none};
        char error[128];
        CHECK(replica_open(&replicas[b], &d, error, sizeof(error)) == 0);
        dropped_to[b] = 1u << COMMAND_PREPARE;
        run(300);
        CHECK(replicas[b].view == replicas[p].view);
        /* c now receives x and acknowledges it: two copies, p's and c's. */
        dropped_to[c] = 0;
        run(300);
        CHECK(store[c][x] != NULL);
        CHECK(store[b][x] == NULL);
        CHECK(replicas[p].commit < x);
        for (uint8_t i = 0; i < 5; i++)
                dropped_to[i] = 0;
        run(300);
        CHECK(replicas[p].commit >= x);
        cluster_stop();
}

static void test_backup_restarts(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        CHECK(create_accounts(0, 1, 4, 1000));
        replica_restart(2);
        CHECK_EQ_U64(replicas[2].status, REPLICA_STATUS_RECOVERING);
        CHECK(create_accounts(0, 10, 4, 1000));
        run(300);
        CHECK_EQ_U64(replicas[2].status, REPLICA_STATUS_NORMAL);
        CHECK_EQ_U64(accounts_on(2), 8);
        cluster_stop();
}

/* Three replicas, a registered session, accounts 1 to `count` created one per request. */
static void cluster_with_accounts(uint32_t count)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        for (uint32_t k = 0; k < count; k++) {
                if (!create_accounts(0, 1 + k, 1, 1000)) {
                        CHECK(false);
                        break;
                }
        }
}

/* Three replicas that committed a register and 8 account creations; replica 2's op. */
static uint64_t three_replicas_eight_ops(void)
{
        cluster_with_accounts(8);
        run(100);
        return replicas[2].op;
}

/* After two more accounts, replica 2 holds what replica 0 does (all 10). */
static void replica_2_caught_up(void)
{
        CHECK(create_accounts(0, 100, 2, 1000));
        run(300);
        CHECK_EQ_U64(replicas[2].commit, replicas[0].commit);
        CHECK_EQ_U64(accounts_on(2), 10);
        cluster_stop();
}

/*
 * A backup acknowledges each prepare it holds, gaps or not: one that missed an op (never
 * received) and acknowledged the next ones must still hold those after a restart, or an op
 * committed with its acknowledgement could be lost with one more damaged copy.
 */
static void test_backup_gap_survives_restart(void)
{
        uint64_t op = three_replicas_eight_ops();
        CHECK(op >= 4);
        CHECK_EQ_U64(replicas[0].op, op);
        /* Its copy of an op in the middle never arrived; the later ones did. */
        uint64_t gap = op - 2;
        CHECK(store[2][gap] != NULL);
        message_unref(&pool, store[2][gap]);
        store[2][gap] = NULL;
        replica_restart(2);
        CHECK_EQ_U64(replicas[2].op, op);
        CHECK_EQ_U64(replicas[2].journal_state[op % 1024], SLOT_DURABLE);
        CHECK_EQ_U64(replicas[2].journal_state[(op - 1) % 1024], SLOT_DURABLE);
        CHECK_EQ_U64(replicas[2].journal_headers[op % 1024].prepare.op, op);
        replica_2_caught_up(); /* the gap repaired from a peer */
}

/*
 * A backup joined a view whose log replaced part of its own (a branch the view change cut),
 * and crashed before repairing it: under the view's anchor its disk still holds a prepare of
 * the cut branch, which chains onto the ops before it. Recovery must not splice that branch
 * onto the view's log (a request would execute twice): the ops under the break are unknown,
 * faulty placeholders, and repaired from peers.
 */
static void test_recovery_cut_branch(void)
{
        uint64_t op = three_replicas_eight_ops();
        CHECK(op >= 6);
        /* Its view began at its head (the anchor); op - 2 on its disk is of another branch. */
        durable_state[2].anchor_op = op;
        durable_state[2].anchor_checksum = store[2][op]->header->checksum;
        uint64_t cut = op - 2;
        struct message *stale = message_pool_get(&pool);
        memcpy(stale->buffer, store[2][cut]->buffer, store[2][cut]->header->size);
        stale->header->prepare.timestamp += 1; /* another prepare of that op */
        wire_header_set_checksum(stale->header);
        message_unref(&pool, store[2][cut]);
        store[2][cut] = stale;
        replica_restart(2);
        CHECK_EQ_U64(replicas[2].op, op);
        CHECK_EQ_U64(replicas[2].journal_state[cut % 1024], SLOT_FAULTY);
        CHECK(replicas[2].journal_headers[cut % 1024].checksum == 0);
        CHECK(replicas[2].journal_headers[(cut + 1) % 1024].checksum != 0);
        replica_2_caught_up(); /* repaired from peers: the same log as theirs */
}

static void test_all_restart(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        CHECK(create_accounts(0, 1, 4, 1000));
        alive[0] = false;
        CHECK(create_accounts(0xFF, 10, 4, 3000)); /* view 1 */
        alive[0] = true;
        /* More ops than a pipeline holds, none of them known committed after the restart. */
        for (uint32_t k = 0; k < 30; k++)
                CHECK(create_accounts(0xFF, 100 + k * 2, 2, 3000));
        for (uint8_t i = 0; i < 3; i++)
                replica_restart(i);
        /* Nobody is primary until the restarted replicas agree on a new view. */
        CHECK(create_accounts(0xFF, 20, 4, 5000));
        run(300);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(accounts_on(i), 72);
                CHECK(replicas[i].view >= 2);
        }
        /* The session survived: the client carried on without registering again. */
        cluster_stop();
}

static void test_state_sync(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        alive[2] = false; /* away for four checkpoints: beyond repair's reach */
        CHECK(creates_or_lookups(0, 1100, 600));
        CHECK(replicas[0].checkpoint_op_durable >= 1024);
        /* It comes back wiped: a fresh, empty replica. */
        replica_deinit(&replicas[2]);
        ledger_destroy(ledgers[2]);
        for (uint32_t op = 0; op < STORE_OPS; op++) {
                if (store[2][op] != NULL)
                        message_unref(&pool, store[2][op]);
                store[2][op] = NULL;
        }
        replica_start(2);
        struct replica_durable d = {.view_state = {.fresh = true},
                                    .read_header = read_header_none,
                                    .read_prepare = read_prepare_none};
        char error[128];
        CHECK(replica_open(&replicas[2], &d, error, sizeof(error)) == 0);
        CHECK(create_accounts(0, 5000, 1, 1000));
        run(1000);
        CHECK_EQ_U64(replicas[2].commit, replicas[0].commit);
        CHECK_EQ_U64(accounts_on(2), 601);
        CHECK(!replicas[2].fresh);
        CHECK(replicas[2].checkpoint_op_durable >= 1024);
        CHECK_EQ_U64(replicas[2].stats.state_syncs_installed, 1);
        cluster_stop();
}

/*
 * A backup copying a checkpoint (state sync) while the other backup is down is half the
 * quorum: the copy must not stop the cluster when it lasts longer than the journal's ring. It
 * journals new ops only while they fit after the checkpoint it copies, so it asks its source
 * for a newer one as the ring fills, and goes on copying that. Without this the cluster
 * stopped until the copy ended (the partition suite's lagging-backup-then-primary: 2.5 s
 * without service in CI). Here the copy is slow: a block arrives every 10 ticks.
 */
static void test_copy_longer_than_the_ring_keeps_the_quorum(void)
{
        /* A ring of 256 ops (interval 64); blocks come in pieces: over a hundred messages. */
        wal_slot_count = 256;
        request_size_max = 16384;
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        alive[2] = false; /* away for four checkpoints: beyond repair's reach */
        CHECK(creates_or_lookups(0, 300, 200));
        CHECK(replicas[0].checkpoint_op_durable >= 256);
        sync_slow_to = 2;
        sync_slow_ticks = 10;
        alive[2] = true;
        run(300);
        CHECK(replicas[2].sync.active);
        CHECK(replicas[2].view_state_durable.grid_syncing);
        uint64_t target = replicas[2].sync.checkpoint_op;
        alive[1] = false;
        /* Three rings' worth of ops, each committed with replica 2's ok. */
        uint64_t op = replicas[0].op;
        CHECK(creates_or_lookups(300, 300 + 3 * 256, 200));
        CHECK(replicas[0].commit >= op + 3 * 256);
        CHECK(replicas[2].sync.active); /* still copying */
        CHECK(replicas[2].sync.checkpoint_op > target);
        CHECK(replicas[2].stats.state_sync_retargets > 0);
        sync_slow_to = -1;
        alive[1] = true;
        run(2000);
        CHECK_EQ_U64(replicas[2].commit, replicas[0].commit);
        CHECK_EQ_U64(accounts_on(2), 200);
        CHECK_EQ_U64(replicas[2].stats.state_syncs_installed, 1);
        cluster_stop();
        request_size_max = WIRE_MESSAGE_SIZE_MAX;
        wal_slot_count = 1024;
}

/*
 * A block of a replica's durable checkpoint rots on its disk. Listing that checkpoint for a
 * peer's copy meets it; the replica asks its peers for the block by (address, checksum) and
 * writes their copy back in place, and the next listing succeeds. Without this the copy could
 * not be served, and peers behind that checkpoint never caught up (the simulator's seed 169 on
 * 3 replicas stalled).
 */
static void test_damaged_block_of_a_served_checkpoint_is_repaired_from_a_peer(void)
{
        cluster_with_accounts(600); /* past two checkpoints (interval 256) */
        run(100);
        struct replica *r = &replicas[0];
        struct lsm_block_ref root = r->checkpoint_root_durable;
        CHECK(root.address != 0);
        uint64_t blocks = replica_image_blocks(r, root);
        CHECK(blocks > 0);
        /* A table index block, held at the same address by a peer (replicas write the same). */
        struct lsm_block_ref damaged = {0};
        for (uint64_t i = 0; i < r->image.list.count && damaged.address == 0; i++) {
                if (r->image.list.kinds[i] == LSM_BLOCK_TABLE_INDEX)
                        damaged = r->image.list.blocks[i];
        }
        CHECK(damaged.address != 0);
        if (damaged.address == 0) {
                cluster_stop();
                return;
        }
        CHECK(grids[1].blocks[damaged.address] != NULL &&
              memcmp(grids[1].blocks[damaged.address], grids[0].blocks[damaged.address],
                     LSM_BLOCK_SIZE) == 0);
        grids[0].blocks[damaged.address][LSM_BLOCK_HEADER_SIZE + 5] ^= 0x40;
        ledger_cache_drop(ledgers[0]); /* the disk's copy is read */
        r->image.root = (struct lsm_block_ref){0}; /* listed anew */
        r->image.previous.count = 0;
        CHECK_EQ_U64(replica_image_blocks(r, root), 0); /* cannot be listed */
        CHECK(r->block_repair.ref.address == damaged.address);
        CHECK(r->block_repair.active);
        run(100);
        CHECK(!r->block_repair.active);
        CHECK_EQ_U64(r->stats.grid_blocks_repaired, 1);
        CHECK(memcmp(grids[1].blocks[damaged.address], grids[0].blocks[damaged.address],
                     LSM_BLOCK_SIZE) == 0);
        CHECK_EQ_U64(replica_image_blocks(r, root), blocks);
        /* The cluster goes on. */
        CHECK(create_accounts(0xFF, 1000, 1, 2000));
        cluster_stop();
}

/*
 * A state sync whose checkpoint does not install (a damaged block of it) loses the state it was
 * replacing, never the journal's log: the replica may have acknowledged any op of it. Forgotten,
 * a replica reported op 0 in its log_view after acknowledging ops 87 to 96, and the other two
 * gave op 87 to another request (simulator, seed 2700 on 3 replicas).
 */
static void test_failed_install_keeps_the_log(void)
{
        cluster_with_creates(3, 3);
        struct replica *r = &replicas[2];
        uint64_t op = r->op;
        u128 head = r->parent;
        CHECK(op >= 4);
        struct lsm_block_ref damaged = {.address = 12345, .checksum = 0x77};
        CHECK(replica_install(r, damaged, 1, op + 10, 0x99, 0, NULL) != 0);
        CHECK_EQ_U64(r->op, op);
        CHECK(r->parent == head);
        for (uint64_t x = 1; x <= op; x++)
                CHECK(journal_state_of(r, x) == SLOT_DURABLE);
        cluster_stop();
}

/*
 * A replica away for a while (its own checkpoint intact, four checkpoints behind) copies only
 * the blocks of the peer's checkpoint it does not hold: the tables written while it was away,
 * not those before.
 */
static void test_state_sync_copies_what_it_lacks(void)
{
        cluster_with_accounts(300);
        run(200);
        CHECK(replicas[2].checkpoint_op_durable >= 256);
        alive[2] = false;
        CHECK(creates_or_lookups(300, 1400, 900));
        CHECK(replicas[0].checkpoint_op_durable >= 1280);
        uint64_t copied = replicas[2].stats.state_sync_blocks_copied;
        uint64_t kept = replicas[2].stats.state_sync_blocks_kept;
        alive[2] = true;
        CHECK(create_accounts(0, 5000, 1, 1000));
        run(1000);
        CHECK_EQ_U64(replicas[2].commit, replicas[0].commit);
        CHECK_EQ_U64(accounts_on(2), 901);
        CHECK_EQ_U64(replicas[2].stats.state_syncs_installed, 1);
        copied = replicas[2].stats.state_sync_blocks_copied - copied;
        kept = replicas[2].stats.state_sync_blocks_kept - kept;
        CHECK(copied > 0);
        CHECK(kept > 0);
        cluster_stop();
}

/*
 * The blocks of a newer checkpoint, listed with the previous list at hand (its unchanged
 * tables taken from it, their index blocks not read again), are exactly those a fresh listing
 * finds, in the same order (a peer asks for them by position).
 */
static void test_image_lists_a_newer_checkpoint_from_the_last(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        for (uint32_t k = 0; k < 600; k++) {
                if (!create_or_lookup(k, 600)) {
                        CHECK(false);
                        break;
                }
                if (replicas[0].checkpoint_op_durable >= 256)
                        break;
        }
        struct replica *r = &replicas[0];
        struct lsm_block_ref first = r->checkpoint_root_durable;
        CHECK(first.address != 0);
        uint64_t first_count = replica_image_blocks(r, first);
        CHECK(first_count > 0);
        for (uint32_t k = 0; k < 1200 && r->checkpoint_op_durable < 512; k++) {
                if (!create_or_lookup(k + 600, 1200)) {
                        CHECK(false);
                        break;
                }
        }
        struct lsm_block_ref second = r->checkpoint_root_durable;
        CHECK(second.address != first.address);
        uint64_t count = replica_image_blocks(r, second);
        CHECK(count > 0);
        CHECK(r->image.tables_reused > 0);
        struct lsm_block_ref *listed = malloc(count * sizeof(*listed));
        tally_assert(listed != NULL);
        memcpy(listed, r->image.list.blocks, count * sizeof(*listed));
        replica_image_free(r); /* no previous list: every index block is read */
        CHECK_EQ_U64(replica_image_blocks(r, second), count);
        CHECK_EQ_U64(r->image.tables_reused, 0);
        CHECK(memcmp(listed, r->image.list.blocks, count * sizeof(*listed)) == 0);
        free(listed);
        cluster_stop();
}

/*
 * A backup's checkpoint turns out unreadable at restart (here: not a checkpoint at all). It
 * starts without state but with its journal's log, copies a peer's checkpoint and catches up; a
 * single replica in the same position refuses to start.
 */
static void test_checkpoint_lost(void)
{
        cluster_with_accounts(600);
        run(200);
        CHECK(replicas[2].checkpoint_op_durable >= 512);
        CHECK(!replicas[2].fresh);
        replica_deinit(&replicas[2]);
        ledger_destroy(ledgers[2]);
        replica_start(2);
        /* A root that names a block the grid does not hold as named. */
        struct lsm_block_ref damaged = {.address = 7, .checksum = ~(u128)0 / 3};
        struct replica_durable d = durable_of(2);
        d.checkpoint_root = damaged;
        d.checkpoint_op = 512;
        char error[128];
        CHECK(replica_open(&replicas[2], &d, error, sizeof(error)) == 0);
        CHECK(replicas[2].checkpoint_lost);
        CHECK(!replicas[2].fresh);
        CHECK_EQ_U64(replicas[2].commit, 0);
        CHECK_EQ_U64(accounts_on(2), 0);
        /* Its log is the one it had: the view's, up to the last op it journaled. */
        CHECK_EQ_U64(replicas[2].log_view, replicas[0].view);
        CHECK_EQ_U64(replicas[2].op, replicas[0].op);
        /* Without state, it still serves a prepare its journal holds whole, asked by checksum. */
        uint64_t op = replicas[0].commit;
        CHECK(store[2][op] != NULL);
        if (store[2][op] != NULL) {
                struct message *ask = message_pool_get(&pool);
                wire_header_init(ask->header, COMMAND_REQUEST_PREPARE, 0, replicas[0].view,
                                 WIRE_RELEASE_SERVER, 0);
                struct {
                        u128 checksum;
                        u128 padding;
                        uint64_t op;
                } request = {.checksum = store[2][op]->header->checksum, .op = op};
                memcpy(ask->header->raw, &request, sizeof(request));
                uint32_t before = event_count;
                replica_on_message(&replicas[2], 1, ask);
                message_unref(&pool, ask);
                bool served = false;
                for (uint32_t k = before; k < event_count; k++) {
                        const struct event *e = &events[(event_head + k) % EVENTS_MAX];
                        served |= e->kind == EVENT_MESSAGE && e->to == 0 &&
                                  e->message->header->command == COMMAND_PREPARE &&
                                  e->message->header->checksum == request.checksum;
                }
                CHECK(served);
        }
        CHECK(create_accounts(0, 5000, 1, 1000));
        run(1000);
        CHECK_EQ_U64(replicas[2].commit, replicas[0].commit);
        CHECK_EQ_U64(accounts_on(2), 601);
        CHECK(!replicas[2].fresh);
        CHECK(!durable_state[2].fresh);
        CHECK(replicas[2].checkpoint_op_durable >= 512);
        cluster_stop();

        /* One replica: nothing to copy from. */
        cluster_start(1);
        replica_deinit(&replicas[0]);
        ledger_destroy(ledgers[0]);
        replica_start(0);
        d = durable_of(0);
        d.checkpoint_root = damaged;
        d.checkpoint_op = 512;
        CHECK(replica_open(&replicas[0], &d, error, sizeof(error)) != 0);
        CHECK(strstr(error, "checkpoint") != NULL);
        d = durable_of(0);
        d.checkpoint_lost = true;
        CHECK(replica_open(&replicas[0], &d, error, sizeof(error)) != 0);
        CHECK(strstr(error, "no peer") != NULL);
        cluster_stop();
}

/*
 * The two replicas that hold the latest committed ops restart without state (their checkpoints
 * unreadable), and the third is behind: it never received those ops, and heard of their
 * commit or not (`heard`). The two still hold their logs and report them, so the view that
 * starts keeps the committed ops, and both copy a checkpoint and catch up. Reported as no log
 * (as they once were), a view started from the third's log gave the committed ops to new
 * requests when it had not heard of the commit (the simulator's seed 358 on 3 replicas, with
 * a state sync change), and the cluster stopped for good when it had.
 */
static void two_without_state_keep_the_commits(bool heard)
{
        cluster_with_accounts(600); /* past a checkpoint (interval 256) */
        run(200);
        CHECK(replicas[2].checkpoint_op_durable >= 512);
        if (heard)
                only_commits_to[2] = true;
        else
                dropped_to[2] = ~0u;
        for (uint32_t k = 0; k < 4; k++)
                CHECK(create_accounts(0, 1000 + k, 1, 1000));
        run(100);
        uint64_t committed = replicas[0].commit;
        CHECK(replicas[2].op < committed);
        CHECK(heard ? replicas[2].commit_max == committed : replicas[2].commit_max < committed);
        u128 checksums[STORE_OPS] = {0};
        for (uint64_t op = 1; op <= committed; op++)
                checksums[op] = store[0][op] != NULL ? store[0][op]->header->checksum : 0;
        for (uint8_t i = 0; i < 2; i++) {
                replica_deinit(&replicas[i]);
                ledger_destroy(ledgers[i]);
                replica_start(i);
                struct replica_durable d = durable_of(i);
                d.checkpoint_lost = true;
                char error[128];
                CHECK(replica_open(&replicas[i], &d, error, sizeof(error)) == 0);
                CHECK(!replicas[i].fresh);
                CHECK(replicas[i].grid_syncing);
                CHECK_EQ_U64(replicas[i].op, committed);
        }
        only_commits_to[2] = false;
        dropped_to[2] = 0;
        CHECK(create_accounts(0xFF, 2000, 1, 3000));
        run(1000);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(accounts_on(i), 605);
                CHECK_EQ_U64(replicas[i].commit, replicas[2].commit);
                CHECK(!replicas[i].grid_syncing);
                bool same = true;
                for (uint64_t op = 1; op <= committed; op++) {
                        if (store[i][op] != NULL && checksums[op] != 0 &&
                            store[i][op]->header->checksum != checksums[op])
                                same = false;
                }
                CHECK(same);
        }
        cluster_stop();
}

static void test_two_without_state_keep_commits_the_third_never_heard_of(void)
{
        two_without_state_keep_the_commits(false);
}

static void test_two_without_state_keep_commits_the_third_heard_of(void)
{
        two_without_state_keep_the_commits(true);
}

/*
 * A backup's checkpoint is refused by busy storage at its commit, and no op commits after:
 * the checkpoint still starts, from the tick. Left for a commit that never comes, a backup
 * whose journal reaches its end stops acknowledging (the partition suite's one-way scenario
 * stalled 6 s so).
 */
static void test_checkpoint_refused_then_no_commit(void)
{
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        checkpoint_busy[1] = true;
        CHECK(creates_or_lookups(1, 256, 300));
        run(50);
        CHECK_EQ_U64(replicas[1].commit, 256);
        CHECK_EQ_U64(replicas[1].checkpoint_op_durable, 0); /* refused at op 256 */
        CHECK(replicas[0].checkpoint_op_durable >= 256);
        checkpoint_busy[1] = false;
        run(200); /* no request: nothing commits */
        CHECK_EQ_U64(replicas[1].commit, 256);
        CHECK_EQ_U64(replicas[1].checkpoint_op_durable, 256);
        cluster_stop();
}

/*
 * Ops whose bodies and replies carry REPLICA_CHECKPOINT_WORK_REQUESTS full requests' worth of
 * bytes make a checkpoint due before the interval (256 ops here): with 16 KiB requests, lookups
 * of 60 accounts (976 bytes asked, 7,808 returned, trailers included) reach the 512 KiB of work
 * at about op 62.
 */
static void test_checkpoint_by_work(void)
{
        request_size_max = 16384;
        cluster_start(3);
        client_reset();
        uint8_t body[256] = {0};
        CHECK(client_call(0, OPERATION_REGISTER, body, sizeof(body), 1000));
        CHECK(create_accounts(0, 1, 60, 1000));
        static uint8_t lookup[61 * 16];
        for (uint32_t k = 0; k < 100; k++) {
                memset(lookup, 0, sizeof(lookup));
                for (uint32_t i = 0; i < 60; i++) {
                        u128 id = 1 + i;
                        memcpy(lookup + i * 16, &id, sizeof(id));
                }
                uint32_t size = client_body_single_batch(lookup, 16, 60);
                if (!client_call(0, OPERATION_LOOKUP_ACCOUNTS, lookup, size, 1000) ||
                    last_reply->header->size != WIRE_HEADER_SIZE + 61 * 128) { /* + trailer */
                        CHECK(false);
                        break;
                }
        }
        run(50);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(replicas[i].commit, 102);
                CHECK(replicas[i].checkpoint_op_durable >= 55);
                CHECK(replicas[i].checkpoint_op_durable <= 70);
                CHECK(replicas[i].checkpoint_work < 32ull * 16384);
        }
        cluster_stop();
        request_size_max = WIRE_MESSAGE_SIZE_MAX;
}

/*
 * A new cluster's first primary prepares an op that no backup receives (nor the start_view: no
 * backup joins a view, so all but the primary stay fresh), and then its own copy is damaged.
 * The op was never committed, and the backups' journals prove it: a fresh replica that never
 * joined a view acknowledged nothing since its format, so its nack counts unless its disk is
 * one of the damaged ones the cluster tolerates. Answered as "may have acknowledged it"
 * instead, no quorum of nacks could form, and the views rotated forever (simulator, seed 73 on
 * 3 replicas).
 */
static void test_new_cluster_cuts_an_op_only_a_damaged_copy_held(void)
{
        cluster_start(3);
        client_reset();
        for (uint8_t i = 0; i < 3; i++)
                dropped_to[i] = (1u << COMMAND_START_VIEW) | (1u << COMMAND_PREPARE);
        uint8_t body[256] = {0};
        CHECK(!client_call(0xFF, OPERATION_REGISTER, body, sizeof(body), 600));
        uint32_t holders = 0;
        uint8_t holder = 0;
        for (uint8_t i = 0; i < 3; i++) {
                if (store[i][1] != NULL) {
                        holders++;
                        holder = i;
                }
        }
        CHECK_EQ_U64(holders, 1);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK(i == holder || durable_state[i].fresh);
                CHECK(!durable_state[i].fresh_joined);
                dropped_to[i] = 0;
        }
        prepare_damaged[holder] = 1;
        for (uint8_t i = 0; i < 3; i++)
                replica_restart(i);
        client_reset();
        CHECK(client_call(0xFF, OPERATION_REGISTER, body, sizeof(body), 3000));
        CHECK(create_accounts(0xFF, 1, 4, 3000));
        run(100);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(accounts_on(i), 4);
                CHECK(!replicas[i].fresh);
        }
        prepare_damaged[holder] = 0;
        cluster_stop();
}

/*
 * A running cluster of 3 (two accounts created) whose primary then journals one more op that
 * no backup receives, and is cut off (alive false). Returns the primary; *op and *checksum
 * name its lone prepare.
 */
static uint8_t primary_cut_off_with_a_lone_op(uint64_t *op, u128 *checksum)
{
        cluster_with_creates(3, 1);
        uint8_t p = 0;
        for (uint8_t i = 0; i < 3; i++)
                if (replicas[i].status == REPLICA_STATUS_NORMAL && replicas[i].view % 3 == i)
                        p = i;
        *op = replicas[p].op + 1;
        for (uint8_t i = 0; i < 3; i++)
                dropped_to[i] = i == p ? 0 : 1u << COMMAND_PREPARE;
        CHECK(!create_accounts(p, 10, 1, 100));
        CHECK(store[p][*op] != NULL);
        *checksum = store[p][*op] != NULL ? store[p][*op]->header->checksum : 0;
        alive[p] = false;
        for (uint8_t i = 0; i < 3; i++)
                dropped_to[i] = 0;
        return p;
}

/*
 * The simulator's seed 91 on 3 replicas, played: an uncommitted op whose one intact copy is
 * lost. The primary of view v journals op X that neither backup receives, and crashes. The
 * backups start view v + 1 at X - 1; its primary q journals another prepare as X, which the
 * other backup never receives, and q's copy is then damaged. The old primary comes back
 * without state (its checkpoint unreadable), its journal still holding view v's X. Its
 * do_view_change reports that journal's log, of view v: it holds another prepare of X, so it
 * never acknowledged q's. With q's damaged copy and the third replica's lost write, that is
 * enough to cut X. Reported as "may have acknowledged it" instead, X could never be cut, and
 * the views rotated forever. (A replica without state once reported no log but the prepares
 * its journal held, nostate_checksums, as a fresh one still does.)
 */
static void test_view_change_hears_a_replica_without_state(void)
{
        uint64_t x;
        u128 old_checksum;
        uint8_t p = primary_cut_off_with_a_lone_op(&x, &old_checksum);
        uint8_t body[256] = {0};
        /* The backups elect q; q's own X reaches nobody. */
        run(300);
        uint8_t q = 0xFF, b = 0xFF;
        for (uint8_t i = 0; i < 3; i++) {
                if (i == p)
                        continue;
                if (replicas[i].status == REPLICA_STATUS_NORMAL &&
                    replicas[i].view % 3 == i)
                        q = i;
                else
                        b = i;
        }
        CHECK(q != 0xFF && b != 0xFF);
        if (q == 0xFF || b == 0xFF) {
                cluster_stop();
                return;
        }
        dropped_to[b] = 1u << COMMAND_PREPARE;
        CHECK(!create_accounts(q, 20, 1, 100));
        CHECK(store[q][x] != NULL && store[q][x]->header->checksum != old_checksum);
        CHECK(store[b][x] == NULL);
        dropped_to[b] = 0;
        prepare_damaged[q] = x;
        alive[p] = true;
        for (uint8_t i = 0; i < 3; i++) {
                replica_deinit(&replicas[i]);
                ledger_destroy(ledgers[i]);
                replica_start(i);
                struct replica_durable d = durable_of(i);
                d.checkpoint_lost = i == p;
                char error[128];
                CHECK(replica_open(&replicas[i], &d, error, sizeof(error)) == 0);
        }
        CHECK(!replicas[p].fresh && replicas[p].grid_syncing);
        CHECK(replicas[p].log_view < replicas[q].log_view);
        CHECK(replicas[p].journal_state[x % 1024] == SLOT_DURABLE &&
              replicas[p].journal_headers[x % 1024].checksum == old_checksum);
        client_reset();
        CHECK(client_call(0xFF, OPERATION_REGISTER, body, sizeof(body), 3000));
        CHECK(create_accounts(0xFF, 30, 1, 3000));
        run(1000);
        for (uint8_t i = 0; i < 3; i++) {
                if (i != p)
                        CHECK_EQ_U64(accounts_on(i), 3);
                CHECK(store[i][x] != NULL && store[i][x]->header->checksum != old_checksum);
        }
        prepare_damaged[q] = 0;
        cluster_stop();
}

/*
 * A primary prepares ops no backup receives and is cut off; the backups start a view whose log
 * has other prepares at those ops. The old primary joins that view but gets none of its
 * prepares, so its journal still holds its own, and nothing at the new log's end: a gap the
 * chain back from the view's anchor cannot cross. After a restart its own prepares still chain
 * from its checkpoint; taken as the log, a view it led would commit them in place of the ops
 * the cluster acknowledged (simulator, seed 372 on 3 replicas). The view state names the log's
 * prepares under the anchor (view_prefixes), so recovery makes them placeholders to repair.
 */
static void test_recovery_ignores_a_cut_branch_under_a_gap(void)
{
        uint64_t x;
        u128 cut;
        uint8_t p = primary_cut_off_with_a_lone_op(&x, &cut);
        uint8_t body[256] = {0};
        client_reset();
        CHECK(client_call(0xFF, OPERATION_REGISTER, body, sizeof(body), 3000)); /* op x again */
        CHECK(create_accounts(0xFF, 20, 1, 3000));
        uint8_t q = (uint8_t)((p + 1) % 3);
        CHECK(store[q][x] != NULL && store[q][x]->header->checksum != cut);
        /* p joins the view, without a single prepare of it. */
        dropped_to[p] = 1u << COMMAND_PREPARE;
        alive[p] = true;
        run(300);
        CHECK(replicas[p].log_view > 0 && replicas[p].log_view == replicas[q].log_view);
        CHECK(store[p][x] != NULL && store[p][x]->header->checksum == cut);
        CHECK(store[p][x + 1] == NULL);
        replica_restart(p);
        uint32_t slot = (uint32_t)(x % replicas[p].config.wal_slot_count);
        bool took_cut = replicas[p].journal_state[slot] != SLOT_EMPTY &&
                        replicas[p].journal_headers[slot].prepare.op == x &&
                        replicas[p].journal_headers[slot].checksum == cut;
        CHECK(!took_cut);
        dropped_to[p] = 0;
        CHECK(create_accounts(0xFF, 30, 1, 3000));
        run(500);
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(accounts_on(i), 4);
                CHECK(store[i][x] != NULL && store[i][x]->header->checksum != cut);
        }
        cluster_stop();
}

/*
 * A start_view whose log ends at its sender's checkpoint carries no header of its head, only
 * the head's checksum. A backup whose own entry at that op is of a replaced log (here: a cut-off
 * primary's lone op) must not take it as the head: it would check the chain under it against
 * it and execute it as committed (simulator, seed 355 on 3 replicas: op 64 committed as two
 * different prepares).
 */
static void test_start_view_names_its_head_by_checksum(void)
{
        uint64_t x;
        u128 lone;
        uint8_t p = primary_cut_off_with_a_lone_op(&x, &lone);
        alive[p] = true;
        CHECK(replicas[p].op == x && replicas[p].commit == x - 1);
        uint32_t view = replicas[p].view + 1;
        uint8_t sender = (uint8_t)(view % 3);
        if (sender == p)
                sender = (uint8_t)((++view) % 3);
        struct message *sv = message_pool_get(&pool);
        wire_header_init(sv->header, COMMAND_START_VIEW, 0, view, WIRE_RELEASE_SERVER, sender);
        sv->header->start_view.op = x;
        sv->header->start_view.commit_max = x;
        u128 other = lone ^ 0x5555;
        memcpy(sv->header->start_view.op_checksum, &other, sizeof(other));
        replica_on_message(&replicas[p], (replica_connection)(sender + 1), sv);
        message_unref(&pool, sv);
        CHECK_EQ_U64(replicas[p].view, view);
        CHECK(replicas[p].commit < x); /* its lone op is not executed */
        uint32_t slot = (uint32_t)(x % 1024);
        CHECK(replicas[p].journal_state[slot] == SLOT_EMPTY ||
              replicas[p].journal_headers[slot].checksum != lone);
        CHECK(replicas[p].parent == other);
        cluster_stop();
}

/* A do_view_change without headers (its fields as send_do_view_change writes them). */
struct dvc_fields {
        uint8_t sender;
        uint32_t view;
        uint64_t op, commit_max, log_view;
        u128 head, present, faulty;
        bool fresh_joined;
        uint64_t joined_op;
        const struct wire_header *headers; /* ascending by op */
        uint32_t header_count;
};

static void dvc_deliver(uint8_t to, struct dvc_fields f)
{
        struct message *dvc = message_pool_get(&pool);
        wire_header_init(dvc->header, COMMAND_DO_VIEW_CHANGE, 0, f.view, WIRE_RELEASE_SERVER,
                         f.sender);
        uint64_t fields[4] = {f.op, f.commit_max, replicas[to].checkpoint_op_durable, f.log_view};
        memcpy(dvc->header->raw, &f.present, sizeof(f.present));
        memcpy(dvc->header->raw + 16, &f.faulty, sizeof(f.faulty));
        memcpy(dvc->header->raw + 32, fields, sizeof(fields));
        dvc->header->raw[64] = f.fresh_joined ? 1 : 0;
        dvc->header->raw[65] = f.fresh_joined ? 1 : 0;
        memcpy(dvc->header->raw + 96, &f.joined_op, sizeof(f.joined_op));
        memcpy(dvc->header->raw + 112, &f.head, sizeof(f.head));
        if (f.header_count > 0)
                memcpy(dvc->buffer + WIRE_HEADER_SIZE, f.headers,
                       (size_t)f.header_count * WIRE_HEADER_SIZE);
        dvc->header->size = WIRE_HEADER_SIZE + f.header_count * WIRE_HEADER_SIZE;
        replica_on_message(&replicas[to], (replica_connection)(f.sender + 1), dvc);
        message_unref(&pool, dvc);
}

/*
 * A do_view_change whose log is newer but carries no header (its sender restarted with its
 * journal's headers unreadable: it knows only its op and its head's checksum). The new primary
 * installs that log: its own entries under the head are of an older view and cannot be shown
 * to chain to it, so they must not stay as the log's prepares. Kept, the simulator's seed 1979
 * on 3 replicas had a new primary execute its own ops 403 and 404 of view 5 under the head of
 * view 6, and a request twice (it was also at op 405).
 */
static void test_view_change_checks_own_entries_under_a_head_without_headers(void)
{
        uint64_t x;
        u128 lone;
        uint8_t p = primary_cut_off_with_a_lone_op(&x, &lone);
        for (uint8_t i = 0; i < 3; i++)
                alive[i] = i == p; /* p alone hears: the do_view_change below is all it gets */
        CHECK(replicas[p].op == x && replicas[p].commit == x - 1);
        uint32_t view = replicas[p].view + 1;
        while (view % 3 != p)
                view++;
        u128 head = lone ^ 0x5555;
        /* Ops x + 1 and x faulty there: it may have acknowledged them. */
        dvc_deliver(p, (struct dvc_fields){.sender = (uint8_t)((p + 1) % 3), .view = view,
                                           .op = x + 1, .commit_max = x - 1,
                                           .log_view = replicas[p].log_view + 1, .head = head,
                                           .faulty = 3});
        run(5);
        CHECK_EQ_U64(replicas[p].view, view);
        CHECK_EQ_U64(replicas[p].op, x + 1);
        CHECK(replicas[p].parent == head);
        uint32_t slot = (uint32_t)(x % 1024);
        bool kept_lone = replicas[p].journal_state[slot] != SLOT_EMPTY &&
                         replicas[p].journal_headers[slot].checksum == lone;
        CHECK(!kept_lone);
        CHECK(replicas[p].commit < x);
        cluster_stop();
}

/* A prepare header of `op` that no replica holds, naming `parent` (a forged log's). */
static struct wire_header header_forged(const struct wire_header *like, uint32_t view,
                                        u128 parent_of)
{
        struct wire_header h = *like;
        h.view = view;
        h.prepare.parent = parent_of;
        h.prepare.timestamp += 7;
        wire_header_set_checksum(&h);
        return h;
}

/*
 * A do_view_change whose log carries headers for ops n - 3 and n but not for n - 2 and n - 1
 * (its sender lost them). The new primary's own n - 1 is not the prepare the carried n names
 * as its parent, and its own n - 2 does not name the carried n - 3 as its own: neither is of
 * this log. Kept (gaps between carried headers were not checked), a new primary of 5 replicas
 * kept its own ops 721 and 722 of view 8 between carried ops 720 and 723 of view 9, cut 722 and
 * 723 as never acknowledged, made its own 721 the head, and the log's 720 no longer chained
 * under it: no op committed again (simulator, seed 3097 on 5 replicas).
 */
static void test_view_change_checks_own_entries_in_gaps_between_headers(void)
{
        cluster_with_creates(3, 5);
        uint8_t p = 0;
        uint64_t n = replicas[p].op;
        CHECK(n >= 6);
        const struct message *own[4];
        for (uint32_t i = 0; i < 4; i++) {
                own[i] = store[p][n - 3 + i];
                CHECK(own[i] != NULL);
        }
        if (own[0] == NULL || own[1] == NULL || own[2] == NULL || own[3] == NULL) {
                cluster_stop();
                return;
        }
        /* p restarts with no checkpoint: ops 1 to n are all above its commit. */
        replica_restart(p);
        for (uint8_t i = 0; i < 3; i++)
                alive[i] = i == p; /* the do_view_change below is all it hears */
        CHECK_EQ_U64(replicas[p].commit, 0);
        uint32_t view = replicas[p].view + 1;
        while (view % 3 != p)
                view++;
        struct wire_header carried[2];
        carried[0] = header_forged(own[0]->header, view - 1, own[0]->header->prepare.parent);
        carried[1] = header_forged(own[3]->header, view - 1, 0x5a5a);
        dvc_deliver(p, (struct dvc_fields){.sender = (uint8_t)((p + 1) % 3), .view = view,
                                           .op = n, .commit_max = 0,
                                           .log_view = replicas[p].log_view + 1,
                                           .head = carried[1].checksum, .headers = carried,
                                           .header_count = 2,
                                           /* It may have acknowledged n - 2 and n - 1: */
                                           .present = ~(u128)6, .faulty = 6});
        run(5);
        CHECK_EQ_U64(replicas[p].view, view);
        for (uint32_t i = 1; i <= 2; i++) {
                uint64_t op = n - 3 + i;
                uint32_t slot = (uint32_t)(op % 1024);
                bool kept = replicas[p].journal_state[slot] != SLOT_EMPTY &&
                            replicas[p].journal_headers[slot].checksum == own[i]->header->checksum;
                CHECK(!kept);
        }
        cluster_stop();
}

/*
 * An uncommitted op whose one copy is damaged (on the new primary), which a fresh replica that
 * joined a view at that op and has state since never wrote (a lost write), and the third never
 * received: cut. The fresh one reports its journal as any replica does; what it lacks there is
 * a lost write at worst, counted against the damaged disks the cluster tolerates. Answered as
 * "may have acknowledged it" (as a fresh replica without state answers for ops it does not
 * report), two such answers left one nack, and the views rotated forever (simulator, seed 2065
 * on 3 replicas).
 */
static void test_fresh_replica_with_state_nacks_from_its_journal(void)
{
        uint64_t x;
        u128 lone;
        uint8_t p = primary_cut_off_with_a_lone_op(&x, &lone);
        for (uint8_t i = 0; i < 3; i++)
                alive[i] = i == p;
        prepare_damaged[p] = x;
        replica_restart(p);
        CHECK_EQ_U64(replicas[p].op, x);
        CHECK(replicas[p].journal_state[x % 1024] == SLOT_FAULTY);
        uint32_t log_view = replicas[p].log_view;
        uint32_t view = replicas[p].view + 1;
        while (view % 3 != p)
                view++;
        uint8_t fresh = (uint8_t)((p + 1) % 3), other = (uint8_t)((p + 2) % 3);
        u128 all = ~(u128)0;
        /* The fresh one joined at x and lost its write of it; the other never had it. */
        dvc_deliver(p, (struct dvc_fields){.sender = fresh, .view = view, .op = x,
                                           .commit_max = x - 1, .log_view = log_view,
                                           .head = lone, .present = all << 1,
                                           .fresh_joined = true, .joined_op = x});
        dvc_deliver(p, (struct dvc_fields){.sender = other, .view = view, .op = x - 1,
                                           .commit_max = x - 1, .log_view = log_view,
                                           .head = store[p][x - 1]->header->checksum,
                                           .present = all});
        run(5);
        CHECK_EQ_U64(replicas[p].view, view);
        CHECK_EQ_U64(replicas[p].op, x - 1); /* x cut */
        CHECK(replicas[p].status == REPLICA_STATUS_NORMAL);
        prepare_damaged[p] = 0;
        cluster_stop();
}

/*
 * A backup whose recovery found its copy of an op damaged (a read error that then passed) reads
 * it back from its own journal when repair comes to it, instead of asking only its peers, which
 * here cannot answer: the simulator's seed 1505 on 3 replicas stalled on an op committed with
 * such a copy while the other two were lost or damaged.
 */
static void test_repair_reads_its_own_journal_first(void)
{
        three_replicas_eight_ops();
        uint8_t b = 0;
        while (b < 2 && replicas[b].view % 3 == b)
                b++;
        uint64_t x = replicas[b].commit;
        CHECK(x >= 4 && store[b][x] != NULL);
        prepare_damaged[b] = x;
        replica_restart(b);
        uint32_t slot = (uint32_t)(x % 1024);
        CHECK(replicas[b].journal_state[slot] == SLOT_FAULTY);
        prepare_damaged[b] = 0;            /* the read error passed */
        dropped_to[b] = 1u << COMMAND_PREPARE; /* no peer's copy reaches it */
        run(500);
        CHECK(replicas[b].journal_state[slot] == SLOT_DURABLE);
        CHECK(replicas[b].commit >= x);
        CHECK_EQ_U64(accounts_on(b), 8);
        dropped_to[b] = 0;
        cluster_stop();
}

/* Every checkpoint above was anchored at its own op's prepare (see env_checkpoint). */
static void test_checkpoint_anchors(void)
{
        CHECK(checkpoint_anchor_checked > 0);
        CHECK_EQ_U64(checkpoint_anchor_wrong, 0);
        CHECK(primary_anchor_checked > 0);
        CHECK_EQ_U64(primary_anchor_unwritten, 0);
}

int main(void)
{
        log_set_level(getenv("TEST_LOG") ? LOG_DEBUG : LOG_ERROR);
        if (message_pool_init(&pool, 4096) != 0)
                return 1;
        TEST_RUN(test_normal_operation);
        TEST_RUN(test_client_through_backup);
        TEST_RUN(test_primary_dies);
        TEST_RUN(test_request_kept_through_a_view_change);
        TEST_RUN(test_request_after_an_uncommitted_one_is_kept);
        TEST_RUN(test_request_to_a_backup_of_a_silent_primary_is_kept);
        TEST_RUN(test_image_lists_a_newer_checkpoint_from_the_last);
        TEST_RUN(test_reply_names_the_view_that_committed_it);
        TEST_RUN(test_backup_executes_only_a_chained_entry);
        TEST_RUN(test_backup_behind_repairs);
        TEST_RUN(test_five_replicas_two_down);
        TEST_RUN(test_rejoined_replica_oks_do_not_count);
        TEST_RUN(test_backup_restarts);
        TEST_RUN(test_backup_gap_survives_restart);
        TEST_RUN(test_recovery_cut_branch);
        TEST_RUN(test_all_restart);
        TEST_RUN(test_state_sync);
        TEST_RUN(test_copy_longer_than_the_ring_keeps_the_quorum);
        TEST_RUN(test_damaged_block_of_a_served_checkpoint_is_repaired_from_a_peer);
        TEST_RUN(test_failed_install_keeps_the_log);
        TEST_RUN(test_state_sync_copies_what_it_lacks);
        TEST_RUN(test_checkpoint_lost);
        TEST_RUN(test_two_without_state_keep_commits_the_third_never_heard_of);
        TEST_RUN(test_two_without_state_keep_commits_the_third_heard_of);
        TEST_RUN(test_checkpoint_refused_then_no_commit);
        TEST_RUN(test_checkpoint_by_work);
        TEST_RUN(test_new_cluster_cuts_an_op_only_a_damaged_copy_held);
        TEST_RUN(test_view_change_hears_a_replica_without_state);
        TEST_RUN(test_recovery_ignores_a_cut_branch_under_a_gap);
        TEST_RUN(test_start_view_names_its_head_by_checksum);
        TEST_RUN(test_view_change_checks_own_entries_under_a_head_without_headers);
        TEST_RUN(test_view_change_checks_own_entries_in_gaps_between_headers);
        TEST_RUN(test_fresh_replica_with_state_nacks_from_its_journal);
        TEST_RUN(test_repair_reads_its_own_journal_first);
        TEST_RUN(test_checkpoint_anchors);
        TEST_MAIN_END();
}
