/*
 * hostile_peers.c: forged, replayed and impersonating replica traffic against a running
 * 3-replica cluster, from plain TCP connections that never prove the cluster key.
 *
 * Usage: hostile_peers key|nokey <port0,port1,port2> <pid0,pid1,pid2> [seed]
 * (tests/server/hostile_peers.sh starts the cluster, runs this twice and checks the logs).
 *
 * Every attack opens fresh connections to each replica in turn, sends messages an outsider
 * can build (valid checksums, the right cluster, replica-only commands claiming to come from a
 * replica), and expects the replica to close the connection: with a cluster key nothing but the
 * handshake proves a peer, without one a live peer's identity cannot be taken over and an
 * unidentified connection may not send a replica command. After each attack a well-behaved
 * client, connected to one replica at a time, must register and create accounts and a transfer
 * within CLIENT_DEADLINE_MS, and all three processes must still run. The last case stops each
 * replica in turn (SIGSTOP) and reads every acknowledged object back through the other two:
 * present exactly as sent, balances equal to the transfers, and nothing a forger sent.
 */
#include "client/client.h"
#include "net/bus.h"
#include "net/peer_auth.h"
#include "test.h"
#include "wire/checksum.h"
#include "wire/types.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REPLICAS 3u
/* A well-behaved client's register + create accounts + create transfer, per replica. */
#define CLIENT_DEADLINE_MS 5000
/* Reading back through two replicas while the third is stopped: includes a view change. */
#define LOOKUP_DEADLINE_MS 20000
/* The first check after start: the cluster elects its first primary. */
#define START_DEADLINE_MS 30000
/* A forged message's connection must be closed by then. */
#define CLOSE_WAIT_MS 2000
/* After a connection in a case was not closed, shorter waits keep a broken build's run short. */
#define CLOSE_WAIT_AFTER_FAILURE_MS 200
#define ACKED_MAX 512u
#define FORGED_MAX 256u
#define RECORDED_MAX 64u
#define RECORDED_SIZE_MAX 4096u
#define TAKEOVER_CONNECTIONS 200u
#define TAKEOVER_BATCH 50u

static struct sockaddr_storage addresses[REPLICAS];
static pid_t pids[REPLICAS];
static bool keyed;
static uint64_t rng_state;
static int close_wait_ms = CLOSE_WAIT_MS;
static uint32_t kept_open;      /* connections not closed in the current case */
static uint32_t cluster_view;   /* highest view seen in pongs and replies */
static uint64_t cluster_op_max; /* highest op seen in replies */

static struct wire_account accounts[ACKED_MAX];
static uint32_t account_count;
static struct wire_transfer transfers[ACKED_MAX];
static uint32_t transfer_count;
static u128 forged_ids[FORGED_MAX]; /* ids of accounts forged prepares tried to create */
static uint32_t forged_count;
static uint64_t id_next = 1000;

/* Forged messages, sent again on new connections by the replay case. */
static uint8_t recorded[RECORDED_MAX][RECORDED_SIZE_MAX] __attribute__((aligned(16)));
static uint32_t recorded_count;
static _Alignas(16) uint8_t handshake_step1[WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)];
static _Alignas(16) uint8_t handshake_step3[WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)];
static bool handshake_recorded;

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t random_u64(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static void random_bytes(void *bytes, size_t size)
{
        uint8_t *p = bytes;
        for (size_t i = 0; i < size; i++)
                p[i] = (uint8_t)random_u64();
}

/* ---- processes ---------------------------------------------------------------------------- */

/* True if the process exists and is not a zombie (kill(pid, 0) succeeds on a zombie). */
static bool process_alive(pid_t pid)
{
        char path[64], stat[256];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (f == NULL)
                return false;
        size_t n = fread(stat, 1, sizeof(stat) - 1, f);
        fclose(f);
        stat[n] = '\0';
        const char *end = strrchr(stat, ')');
        return end != NULL && end[1] == ' ' && end[2] != 'Z' && end[2] != 'X';
}

static void check_all_alive(void)
{
        for (uint32_t r = 0; r < REPLICAS; r++) {
                if (!process_alive(pids[r])) {
                        fprintf(stderr, "  replica %u (pid %d) is gone\n", r, (int)pids[r]);
                        CHECK(process_alive(pids[r]));
                }
        }
}

/* ---- a well-behaved client ---------------------------------------------------------------- */

/* A request, retransmitted every second until a reply or the deadline. */
static int request_until(struct client *c, uint8_t operation, const void *body, uint32_t size,
                         int64_t deadline_ms, const struct wire_header **reply)
{
        int64_t left = deadline_ms - now_ms();
        c->timeout_ms = (int)(left < 1 ? 1 : left > 1000 ? 1000 : left);
        int rc = client_request(c, operation, body, size, reply);
        while (rc == CLIENT_ERROR_TIMEOUT && (left = deadline_ms - now_ms()) > 0) {
                c->timeout_ms = (int)(left > 1000 ? 1000 : left);
                rc = client_retransmit(c, reply);
        }
        if (rc == CLIENT_OK) {
                cluster_view = MAX(cluster_view, (*reply)->view);
                cluster_op_max = MAX(cluster_op_max, (*reply)->reply.op);
        }
        return rc;
}

/* Opens a client on `replica` and registers it; false (with a line saying why) if it fails. */
static bool client_start(struct client *c, uint32_t replica, int64_t deadline_ms)
{
        int rc = client_open(c, &addresses[replica], sizeof(struct sockaddr_in), 0, 0,
                             CLIENT_DEADLINE_MS);
        if (rc != CLIENT_OK) {
                fprintf(stderr, "  replica %u: cannot connect: %s\n", replica,
                        c->error ? c->error : "?");
                return false;
        }
        uint8_t body[sizeof(struct wire_register_request)];
        memset(body, 0, sizeof(body));
        const struct wire_header *reply;
        rc = request_until(c, OPERATION_REGISTER, body, sizeof(body), deadline_ms, &reply);
        if (rc != CLIENT_OK) {
                fprintf(stderr, "  replica %u: register failed rc=%d: %s\n", replica, rc,
                        c->error ? c->error : "?");
                client_close(c);
                return false;
        }
        c->session = reply->reply.commit;
        return true;
}

/* A create request whose reply must report no failure. */
static bool create_ok(struct client *c, uint32_t replica, uint8_t operation, const void *events,
                      uint32_t count, int64_t deadline_ms)
{
        static _Alignas(16) uint8_t body[4096];
        memcpy(body, events, count * 128u);
        uint32_t size = client_body_single_batch(body, 128, count);
        const struct wire_header *reply;
        int rc = request_until(c, operation, body, size, deadline_ms, &reply);
        if (rc != CLIENT_OK) {
                fprintf(stderr, "  replica %u: %s failed rc=%d: %s\n", replica,
                        operation == OPERATION_CREATE_ACCOUNTS ? "create_accounts"
                                                               : "create_transfers",
                        rc, c->error ? c->error : "?");
                return false;
        }
        const uint8_t *results;
        uint32_t result_count = 0;
        bool parsed =
            client_reply_single_batch((const uint8_t *)reply + WIRE_HEADER_SIZE,
                                      reply->size - WIRE_HEADER_SIZE, 8, &results, &result_count);
        if (!parsed || result_count != 0) {
                fprintf(stderr, "  replica %u: create reported %u failures\n", replica,
                        result_count);
                return false;
        }
        return true;
}

/* Register, two accounts and a transfer between them through `replica`, all acknowledged. */
static bool serves(uint32_t replica, int deadline_from_now_ms)
{
        int64_t deadline = now_ms() + deadline_from_now_ms;
        struct client c;
        if (!client_start(&c, replica, deadline))
                return false;
        tally_assert(account_count + 2 <= ACKED_MAX && transfer_count + 1 <= ACKED_MAX);
        struct wire_account pair[2];
        memset(pair, 0, sizeof(pair));
        for (int i = 0; i < 2; i++) {
                pair[i].id = id_next++;
                pair[i].user_data_128 = random_u64();
                pair[i].user_data_64 = random_u64();
                pair[i].user_data_32 = (uint32_t)random_u64();
                pair[i].ledger = 1;
                pair[i].code = (uint16_t)(1 + random_u64() % 1000);
        }
        bool ok = create_ok(&c, replica, OPERATION_CREATE_ACCOUNTS, pair, 2, deadline);
        if (ok) {
                accounts[account_count++] = pair[0];
                accounts[account_count++] = pair[1];
                struct wire_transfer t;
                memset(&t, 0, sizeof(t));
                t.id = id_next++;
                t.debit_account_id = pair[0].id;
                t.credit_account_id = pair[1].id;
                t.amount = 1 + random_u64() % 1000000;
                t.user_data_64 = random_u64();
                t.ledger = 1;
                t.code = 7;
                ok = create_ok(&c, replica, OPERATION_CREATE_TRANSFERS, &t, 1, deadline);
                if (ok)
                        transfers[transfer_count++] = t;
        }
        client_close(&c);
        return ok;
}

/* After every attack: all three alive, and each serves a client on its own. */
static void check_cluster(int deadline_ms)
{
        check_all_alive();
        for (uint32_t r = 0; r < REPLICAS; r++) {
                int64_t start = now_ms();
                bool ok = serves(r, deadline_ms);
                if (!ok)
                        fprintf(stderr, "  replica %u did not serve within %d ms (took %lld)\n", r,
                                deadline_ms, (long long)(now_ms() - start));
                CHECK(ok);
        }
        check_all_alive();
}

/* The view the cluster is in, from a pong_client of any replica (the highest seen). */
static void learn_view(void)
{
        for (uint32_t r = 0; r < REPLICAS; r++) {
                struct client c;
                if (client_open(&c, &addresses[r], sizeof(struct sockaddr_in), 0, 0, 1000) !=
                    CLIENT_OK)
                        continue;
                struct wire_header ping;
                wire_header_init(&ping, COMMAND_PING_CLIENT, 0, 0, WIRE_RELEASE_NODE_CLIENT, 0);
                ping.ping_client.client = c.id;
                wire_header_set_checksum(&ping);
                const struct wire_header *pong;
                if (client_send_raw(&c, &ping, sizeof(ping)) == CLIENT_OK &&
                    client_receive(&c, &pong) == CLIENT_OK && pong->command == COMMAND_PONG_CLIENT)
                        cluster_view = MAX(cluster_view, pong->view);
                client_close(&c);
        }
}

/* ---- an attacker's connection ------------------------------------------------------------- */

static int attacker_open(uint32_t replica)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        struct timeval tv = {.tv_sec = 1};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (const struct sockaddr *)&addresses[replica], sizeof(struct sockaddr_in)) !=
            0) {
                fprintf(stderr, "  cannot connect to replica %u: %s\n", replica, strerror(errno));
                close(fd);
                return -1;
        }
        return fd;
}

/* Sends bytes as they are; a peer that already closed is not an error here. */
static void attacker_send_raw(int fd, const void *bytes, uint32_t size)
{
        const uint8_t *p = bytes;
        while (size > 0) {
                ssize_t n = send(fd, p, size, MSG_NOSIGNAL);
                if (n <= 0)
                        return;
                p += n;
                size -= (uint32_t)n;
        }
}

static void record(const void *message, uint32_t size)
{
        if (recorded_count < RECORDED_MAX && size <= RECORDED_SIZE_MAX && random_u64() % 4 == 0)
                memcpy(recorded[recorded_count++], message, size);
}

/* Completes `h` (size, both checksums) over the body that follows it, records and sends it. */
static void attacker_send(int fd, struct wire_header *h, uint32_t body_size)
{
        h->size = WIRE_HEADER_SIZE + body_size;
        wire_header_set_checksum_body(h, (const uint8_t *)h + WIRE_HEADER_SIZE, body_size);
        wire_header_set_checksum(h);
        tally_assert(wire_header_invalid(h) == NULL);
        record(h, h->size);
        attacker_send_raw(fd, h, h->size);
}

/*
 * Reads one whole message into `buffer` within timeout_ms: 1, or 0 if the server closed the
 * connection, or -1 on a timeout.
 */
static int attacker_receive(int fd, uint8_t *buffer, uint32_t buffer_size, int timeout_ms)
{
        int64_t deadline = now_ms() + timeout_ms;
        uint32_t have = 0;
        for (;;) {
                if (have >= WIRE_HEADER_SIZE) {
                        uint32_t size = ((const struct wire_header *)buffer)->size;
                        if (size < WIRE_HEADER_SIZE || size > buffer_size)
                                return -1;
                        if (have >= size)
                                return 1;
                }
                int64_t left = deadline - now_ms();
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                if (left <= 0 || poll(&pfd, 1, (int)left) != 1)
                        return -1;
                ssize_t n = recv(fd, buffer + have, buffer_size - have, 0);
                if (n <= 0)
                        return 0;
                have += (uint32_t)n;
        }
}

/* True if the server closes the connection within close_wait_ms (whatever it sends first). */
static bool closed_by_server(int fd)
{
        int64_t deadline = now_ms() + close_wait_ms;
        uint8_t scratch[4096];
        for (;;) {
                int64_t left = deadline - now_ms();
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                if (left <= 0 || poll(&pfd, 1, (int)left) != 1)
                        return false;
                ssize_t n = recv(fd, scratch, sizeof(scratch), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                        return true;
        }
}

/* The connection must be closed by the replica; closes our end either way. */
static void expect_closed(int fd, uint32_t replica, const char *what)
{
        if (fd < 0) {
                CHECK(fd >= 0);
                return;
        }
        bool closed = closed_by_server(fd);
        if (!closed) {
                if (kept_open++ < 3)
                        fprintf(stderr, "  replica %u kept a connection open after %s\n", replica,
                                what);
                close_wait_ms = CLOSE_WAIT_AFTER_FAILURE_MS;
        }
        if (kept_open <= 3)
                CHECK(closed);
        else
                test_checks_failed_in_current++; /* counted, not printed again */
        close(fd);
}

static _Alignas(16) uint8_t message_buffer[WIRE_HEADER_SIZE + RECORDED_SIZE_MAX];

static struct wire_header *forge(uint8_t command, uint32_t view, uint8_t replica)
{
        struct wire_header *h = (struct wire_header *)message_buffer;
        wire_header_init(h, command, 0, view, WIRE_RELEASE_SERVER, replica);
        return h;
}

static uint8_t *forged_body(void)
{
        return message_buffer + WIRE_HEADER_SIZE;
}

static uint8_t primary_of(uint32_t view)
{
        return (uint8_t)(view % REPLICAS);
}

/* A create_accounts body for a forged prepare: one account no client ever asked for. */
static uint32_t forged_accounts_body(uint8_t *body)
{
        struct wire_account a;
        memset(&a, 0, sizeof(a));
        a.id = ((u128)0xF0F0F0F0u << 64) | (random_u64() >> 16);
        a.ledger = 1;
        a.code = 1;
        if (forged_count < FORGED_MAX)
                forged_ids[forged_count++] = a.id;
        memcpy(body, &a, sizeof(a));
        return client_body_single_batch(body, sizeof(a), 1);
}

/* ---- the attacks -------------------------------------------------------------------------- */

/*
 * Replicas log refusals at most once a second: a case whose refusal the runner looks for in
 * the logs starts after a quiet second, so its first refusal is the one logged.
 */
static void log_window(void)
{
        struct timespec pause = {.tv_sec = 1, .tv_nsec = 100 * 1000000};
        nanosleep(&pause, NULL);
}

static void test_cluster_serves_at_start(void)
{
        check_cluster(START_DEADLINE_MS);
        learn_view();
}

/* Issue 13, 1: start_view claiming replica 0 at view 2^32-1, then at a plausible next view. */
static void test_start_view_forged(void)
{
        log_window();
        learn_view();
        for (uint32_t target = 0; target < REPLICAS; target++) {
                for (int plausible = 0; plausible < 2; plausible++) {
                        uint32_t view = plausible ? cluster_view + 1 : 0xFFFFFFFFu;
                        uint8_t claimed = plausible ? primary_of(view) : 0;
                        int fd = attacker_open(target);
                        if (fd < 0) {
                                CHECK(fd >= 0);
                                continue;
                        }
                        struct wire_header *h = forge(COMMAND_START_VIEW, view, claimed);
                        h->start_view.nonce = random_u64();
                        h->start_view.op = cluster_op_max;
                        h->start_view.commit_max = cluster_op_max;
                        /* The body: one header of a prepare at the claimed op. */
                        struct wire_header suffix;
                        wire_header_init(&suffix, COMMAND_PREPARE, 0, view, WIRE_RELEASE_SERVER,
                                         claimed);
                        suffix.prepare.op = cluster_op_max;
                        suffix.prepare.commit = cluster_op_max;
                        suffix.prepare.operation = OPERATION_CREATE_ACCOUNTS;
                        random_bytes(&suffix.prepare.parent, sizeof(suffix.prepare.parent));
                        wire_header_set_checksum(&suffix);
                        memcpy(forged_body(), &suffix, sizeof(suffix));
                        attacker_send(fd, h, sizeof(suffix));
                        expect_closed(fd, target,
                                      plausible ? "start_view at the next view"
                                                : "start_view at view 4294967295");
                }
        }
        check_cluster(CLIENT_DEADLINE_MS);
}

/*
 * Issue 13, 2: claim a replica with a ping, ask for the latest prepare (a backup that believed
 * us would send it), and chain a forged create_accounts prepare and a commit onto it. Tried
 * several times per replica: a vulnerable bus lets the claim win a race with the real peer.
 */
static void test_ping_then_forged_prepare(void)
{
        learn_view();
        for (uint32_t target = 0; target < REPLICAS; target++) {
                for (int attempt = 0; attempt < 8; attempt++) {
                        uint8_t claimed = (uint8_t)(target > 0 ? (uint32_t)attempt % target
                                                               : 1u + (uint32_t)attempt % 2u);
                        int fd = attacker_open(target);
                        if (fd < 0) {
                                CHECK(fd >= 0);
                                continue;
                        }
                        struct wire_header *h = forge(COMMAND_PING, cluster_view, claimed);
                        attacker_send(fd, h, 0);
                        h = forge(COMMAND_REQUEST_PREPARE, cluster_view, claimed);
                        memcpy(h->raw + 32, &cluster_op_max, sizeof(cluster_op_max));
                        attacker_send(fd, h, 0);
                        /* A prepare comes back only from a replica that believed the ping. */
                        static _Alignas(16) uint8_t answer[WIRE_MESSAGE_SIZE_MAX];
                        u128 parent = ((u128)random_u64() << 64) | random_u64();
                        uint64_t op = cluster_op_max + 1;
                        int64_t until = now_ms() + 300;
                        while (now_ms() < until) {
                                if (attacker_receive(fd, answer, sizeof(answer), 100) != 1)
                                        break;
                                const struct wire_header *a = (const struct wire_header *)answer;
                                if (a->command == COMMAND_PREPARE) {
                                        parent = a->checksum;
                                        op = a->prepare.op + 1;
                                        fprintf(stderr,
                                                "  replica %u sent its prepare op=%llu "
                                                "to a forger\n",
                                                target, (unsigned long long)a->prepare.op);
                                        CHECK(a->command != COMMAND_PREPARE);
                                        break;
                                }
                        }
                        uint8_t author = primary_of(cluster_view);
                        h = forge(COMMAND_PREPARE, cluster_view, author);
                        h->prepare.parent = parent;
                        h->prepare.client = ((u128)random_u64() << 64) | random_u64();
                        h->prepare.request_checksum = random_u64();
                        h->prepare.op = op;
                        h->prepare.commit = op - 1;
                        h->prepare.timestamp = (uint64_t)time(NULL) * 1000000000ull + 1;
                        h->prepare.request = 1;
                        h->prepare.operation = OPERATION_CREATE_ACCOUNTS;
                        attacker_send(fd, h, forged_accounts_body(forged_body()));
                        h = forge(COMMAND_COMMIT, cluster_view, author);
                        h->commit.commit = op;
                        attacker_send(fd, h, 0);
                        expect_closed(fd, target, "a ping claiming a replica and a prepare");
                }
        }
        check_cluster(CLIENT_DEADLINE_MS);
}

static const uint8_t replica_commands[] = {
    COMMAND_PING,
    COMMAND_PONG,
    COMMAND_PREPARE,
    COMMAND_PREPARE_OK,
    COMMAND_COMMIT,
    COMMAND_START_VIEW_CHANGE,
    COMMAND_DO_VIEW_CHANGE,
    COMMAND_REQUEST_START_VIEW,
    COMMAND_REQUEST_HEADERS,
    COMMAND_REQUEST_PREPARE,
    COMMAND_REQUEST_REPLY,
    COMMAND_HEADERS,
    COMMAND_REQUEST_BLOCKS,
    COMMAND_BLOCK,
    COMMAND_START_VIEW,
};

/*
 * One forged message of `command`: plausible (the cluster's view or the next, small ops in
 * every op-like field, a short body) or absurd (random fields, random view, a random body).
 * Either way a header a receiver must check further than its checksums.
 */
static void forge_random(uint8_t command, uint8_t claimed, bool plausible, uint32_t *body_size)
{
        uint32_t view = plausible ? cluster_view + (uint32_t)(random_u64() % 2)
                                  : (random_u64() % 3 == 0 ? 0xFFFFFFFFu : (uint32_t)random_u64());
        struct wire_header *h = forge(command, view, claimed);
        uint32_t size = 0;
        if (plausible) {
                for (uint32_t offset = 0; offset + 8 <= sizeof(h->raw); offset += 8) {
                        if (random_u64() % 2 == 0)
                                continue;
                        uint64_t op = cluster_op_max + random_u64() % 4;
                        memcpy(h->raw + offset, &op, sizeof(op));
                }
                size = (uint32_t)(random_u64() % 3) * WIRE_HEADER_SIZE;
        } else {
                random_bytes(h->raw, sizeof(h->raw));
                size = (uint32_t)(random_u64() % RECORDED_SIZE_MAX);
        }
        if (command == COMMAND_PREPARE) {
                /* The validity rules a prepare header must pass to be looked at at all. */
                h->prepare.parent_padding = 0;
                h->prepare.request_checksum_padding = 0;
                memset(h->prepare.reserved, 0, sizeof(h->prepare.reserved));
                if (h->prepare.op < h->prepare.commit)
                        h->prepare.op = h->prepare.commit;
                if (h->prepare.operation == OPERATION_RESERVED)
                        h->prepare.operation = OPERATION_CREATE_ACCOUNTS;
        }
        random_bytes(forged_body(), size);
        *body_size = size;
}

/* Issue 13, 6(a): every replica-only command, claiming every replica index, to every replica. */
static void test_every_replica_command(void)
{
        learn_view();
        for (uint32_t target = 0; target < REPLICAS; target++) {
                for (uint32_t i = 0; i < ARRAY_LEN(replica_commands); i++) {
                        for (uint8_t claimed = 0; claimed < REPLICAS; claimed++) {
                                for (int plausible = 0; plausible < 2; plausible++) {
                                        int fd = attacker_open(target);
                                        uint32_t body_size;
                                        forge_random(replica_commands[i], claimed, plausible,
                                                     &body_size);
                                        if (fd >= 0)
                                                attacker_send(fd,
                                                              (struct wire_header *)message_buffer,
                                                              body_size);
                                        expect_closed(fd, target,
                                                      wire_command_name(replica_commands[i]));
                                }
                        }
                }
                check_all_alive();
        }
        check_cluster(CLIENT_DEADLINE_MS);
}

/*
 * Issue 13, 4: many quick connections claim replica 0 or 1 to the replicas that accept those
 * peers, each with a ping and then a start_view_change vote for the next view: none may take
 * the real peer's place.
 */
static void test_identity_takeover(void)
{
        log_window();
        learn_view();
        static int fds[TAKEOVER_BATCH];
        static const struct {
                uint8_t claimed;
                uint8_t target;
        } races[] = {{0, 1}, {0, 2}, {1, 2}, {1, 0}, {2, 1}};
        for (uint32_t race = 0; race < ARRAY_LEN(races); race++) {
                uint32_t opened = 0, closed = 0;
                for (uint32_t sent = 0; sent < TAKEOVER_CONNECTIONS; sent += TAKEOVER_BATCH) {
                        for (uint32_t i = 0; i < TAKEOVER_BATCH; i++) {
                                fds[i] = attacker_open(races[race].target);
                                if (fds[i] < 0)
                                        continue;
                                opened++;
                                struct wire_header *h =
                                    forge(COMMAND_PING, cluster_view, races[race].claimed);
                                attacker_send(fds[i], h, 0);
                                h = forge(COMMAND_START_VIEW_CHANGE, cluster_view + 1,
                                          races[race].claimed);
                                attacker_send(fds[i], h, 0);
                        }
                        for (uint32_t i = 0; i < TAKEOVER_BATCH; i++) {
                                if (fds[i] < 0)
                                        continue;
                                if (closed_by_server(fds[i]))
                                        closed++;
                                else
                                        close_wait_ms = CLOSE_WAIT_AFTER_FAILURE_MS;
                                close(fds[i]);
                        }
                }
                if (closed != TAKEOVER_CONNECTIONS)
                        fprintf(stderr,
                                "  claiming replica %u to replica %u: %u of %u connections "
                                "opened, %u closed\n",
                                races[race].claimed, races[race].target, opened,
                                TAKEOVER_CONNECTIONS, closed);
                CHECK_EQ_U64(closed, TAKEOVER_CONNECTIONS);
                check_all_alive();
        }
        check_cluster(CLIENT_DEADLINE_MS);
}

/* A handshake message of `step` from `dialer` to `acceptor`, nonces and proof random. */
static uint32_t forge_hello(uint8_t *buffer, uint32_t step, uint8_t dialer, uint8_t acceptor)
{
        struct peer_auth_hello hello;
        memset(&hello, 0, sizeof(hello));
        memcpy(hello.magic, PEER_AUTH_MAGIC, sizeof(hello.magic));
        hello.step = step;
        hello.dialer = dialer;
        hello.acceptor = acceptor;
        random_bytes(hello.nonce_dial, sizeof(hello.nonce_dial));
        if (step > 1) {
                random_bytes(hello.nonce_accept, sizeof(hello.nonce_accept));
                random_bytes(hello.proof, sizeof(hello.proof));
        }
        peer_auth_hello_message((struct wire_header *)buffer, 0, step == 2 ? acceptor : dialer,
                                &hello);
        return ((struct wire_header *)buffer)->size;
}

/*
 * With a key a replica answers step 1 with its step 2; without one it closes. Returns the
 * acceptor's step 2 (in `answer`) if there was one, else false; never leaves a message unread.
 */
static bool expect_step2(int fd, uint32_t target, uint8_t *answer, uint32_t answer_size)
{
        int got = attacker_receive(fd, answer, answer_size, CLOSE_WAIT_MS);
        const struct wire_header *a = (const struct wire_header *)answer;
        if (!keyed) {
                CHECK(got != 1);
                return false;
        }
        bool step2 = got == 1 && a->command == PEER_AUTH_COMMAND &&
                     a->size == WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello);
        if (!step2)
                fprintf(stderr, "  replica %u did not answer a handshake step 1 (got=%d)\n", target,
                        got);
        CHECK(step2);
        return step2;
}

/* Issue 13, 5: handshakes without the key, out of order, malformed, stalled. */
static void test_handshake_forged(void)
{
        log_window();
        static _Alignas(16) uint8_t step[WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)];
        static _Alignas(16) uint8_t answer[4096];
        for (uint32_t target = 1; target < REPLICAS; target++) {
                uint8_t dialer = (uint8_t)(target - 1);
                /* Step 1, then step 3 with a made-up proof over the acceptor's real nonces. */
                int fd = attacker_open(target);
                uint32_t size = forge_hello(step, 1, dialer, (uint8_t)target);
                if (!handshake_recorded)
                        memcpy(handshake_step1, step, size);
                attacker_send_raw(fd, step, size);
                if (expect_step2(fd, target, answer, sizeof(answer))) {
                        const struct peer_auth_hello *two =
                            (const struct peer_auth_hello *)(answer + WIRE_HEADER_SIZE);
                        struct peer_auth_hello three = *two;
                        three.step = 3;
                        random_bytes(three.proof, sizeof(three.proof));
                        peer_auth_hello_message((struct wire_header *)step, 0, dialer, &three);
                        if (!handshake_recorded)
                                memcpy(handshake_step3, step, size);
                        handshake_recorded = true;
                        attacker_send_raw(fd, step, size);
                }
                expect_closed(fd, target, "a handshake step 3 with a made-up proof");
                /* Step 2 or step 3 first. */
                for (uint32_t s = 2; s <= 3; s++) {
                        fd = attacker_open(target);
                        size = forge_hello(step, s, dialer, (uint8_t)target);
                        attacker_send_raw(fd, step, size);
                        expect_closed(fd, target, "a handshake message out of turn");
                }
                /* Step 1 twice; step 1 then an untagged replica message. */
                for (int then_ping = 0; then_ping < 2; then_ping++) {
                        fd = attacker_open(target);
                        size = forge_hello(step, 1, dialer, (uint8_t)target);
                        attacker_send_raw(fd, step, size);
                        expect_step2(fd, target, answer, sizeof(answer));
                        if (then_ping) {
                                attacker_send(fd, forge(COMMAND_PING, cluster_view, dialer), 0);
                        } else {
                                size = forge_hello(step, 1, dialer, (uint8_t)target);
                                attacker_send_raw(fd, step, size);
                        }
                        expect_closed(fd, target,
                                      then_ping ? "a ping during a handshake"
                                                : "a second handshake step 1");
                }
                /* Step 1 for another replica; a hello of another protocol version. */
                fd = attacker_open(target);
                size = forge_hello(step, 1, 0, (uint8_t)(target == 1 ? 2 : 1));
                attacker_send_raw(fd, step, size);
                expect_closed(fd, target, "a handshake for another replica");
                fd = attacker_open(target);
                size = forge_hello(step, 1, dialer, (uint8_t)target);
                struct wire_header *h = (struct wire_header *)step;
                memcpy(step + WIRE_HEADER_SIZE, "tally-peer-auth9", 16);
                wire_header_set_checksum_body(h, step + WIRE_HEADER_SIZE, size - WIRE_HEADER_SIZE);
                wire_header_set_checksum(h);
                attacker_send_raw(fd, step, size);
                expect_closed(fd, target, "a handshake of another version");
        }
        /* Step 1 and then silence: the handshake times out (BUS_PEER_AUTH_TIMEOUT_MS). */
        int stalled[REPLICAS];
        for (uint32_t target = 1; target < REPLICAS; target++) {
                stalled[target] = attacker_open(target);
                uint32_t size = forge_hello(step, 1, (uint8_t)(target - 1), (uint8_t)target);
                attacker_send_raw(stalled[target], step, size);
        }
        int saved = close_wait_ms;
        close_wait_ms =
            saved == CLOSE_WAIT_MS ? (int)BUS_PEER_AUTH_TIMEOUT_MS + CLOSE_WAIT_MS : saved;
        for (uint32_t target = 1; target < REPLICAS; target++)
                expect_closed(stalled[target], target, "a handshake step 1 and silence");
        if (close_wait_ms > CLOSE_WAIT_MS)
                close_wait_ms = saved;
        check_cluster(CLIENT_DEADLINE_MS);
}

/* Issue 13, 6: the forged messages and handshake of earlier cases again, on new connections. */
static void test_replays(void)
{
        CHECK(recorded_count > 0);
        for (uint32_t target = 0; target < REPLICAS; target++) {
                for (uint32_t i = 0; i < recorded_count; i++) {
                        int fd = attacker_open(target);
                        const struct wire_header *h = (const struct wire_header *)recorded[i];
                        if (fd >= 0)
                                attacker_send_raw(fd, recorded[i], h->size);
                        expect_closed(fd, target, "a replayed forged message");
                }
        }
        if (keyed)
                CHECK(handshake_recorded);
        if (handshake_recorded) {
                static _Alignas(16) uint8_t answer[4096];
                for (uint32_t target = 1; target < REPLICAS; target++) {
                        int fd = attacker_open(target);
                        const struct wire_header *one = (const struct wire_header *)handshake_step1;
                        if (((const struct peer_auth_hello *)(handshake_step1 + WIRE_HEADER_SIZE))
                                ->acceptor != target) {
                                close(fd);
                                continue;
                        }
                        attacker_send_raw(fd, handshake_step1, one->size);
                        expect_step2(fd, target, answer, sizeof(answer));
                        attacker_send_raw(fd, handshake_step3, one->size);
                        expect_closed(fd, target, "a replayed handshake");
                }
        }
        check_cluster(CLIENT_DEADLINE_MS);
}

/* ---- agreement ---------------------------------------------------------------------------- */

/* Looks up `ids` through `c`; the found objects (128 bytes each) land in `found`. */
static bool lookup(struct client *c, uint8_t operation, const u128 *ids, uint32_t count,
                   uint8_t *found, uint32_t *found_count, int64_t deadline_ms)
{
        static _Alignas(16) uint8_t body[ACKED_MAX * 16 + 64];
        tally_assert(count <= ACKED_MAX);
        memcpy(body, ids, count * 16u);
        uint32_t size = client_body_single_batch(body, 16, count);
        const struct wire_header *reply;
        int rc = request_until(c, operation, body, size, deadline_ms, &reply);
        if (rc != CLIENT_OK) {
                fprintf(stderr, "  lookup failed rc=%d: %s\n", rc, c->error ? c->error : "?");
                return false;
        }
        const uint8_t *elements;
        if (!client_reply_single_batch((const uint8_t *)reply + WIRE_HEADER_SIZE,
                                       reply->size - WIRE_HEADER_SIZE, 128, &elements, found_count))
                return false;
        memcpy(found, elements, *found_count * 128u);
        return true;
}

static u128 balance_expected(u128 id, bool debits)
{
        u128 sum = 0;
        for (uint32_t i = 0; i < transfer_count; i++) {
                if ((debits ? transfers[i].debit_account_id : transfers[i].credit_account_id) == id)
                        sum += transfers[i].amount;
        }
        return sum;
}

/* Every acknowledged account and transfer through `replica`, exactly as sent. */
static bool check_acknowledged_through(uint32_t replica)
{
        int64_t deadline = now_ms() + LOOKUP_DEADLINE_MS;
        struct client c;
        bool started = client_start(&c, replica, deadline);
        CHECK(started);
        if (!started)
                return false;
        static u128 ids[ACKED_MAX];
        static _Alignas(16) uint8_t found[ACKED_MAX * 128];
        uint32_t found_count = 0;
        for (uint32_t i = 0; i < account_count; i++)
                ids[i] = accounts[i].id;
        bool ok = lookup(&c, OPERATION_LOOKUP_ACCOUNTS, ids, account_count, found, &found_count,
                         deadline);
        CHECK(ok);
        if (ok) {
                CHECK_EQ_U64(found_count, account_count);
                for (uint32_t i = 0; i < found_count && i < account_count; i++) {
                        struct wire_account a;
                        memcpy(&a, found + 128 * i, sizeof(a));
                        CHECK(a.debits_posted == balance_expected(a.id, true));
                        CHECK(a.credits_posted == balance_expected(a.id, false));
                        CHECK(a.timestamp != 0);
                        a.debits_posted = a.credits_posted = 0;
                        a.timestamp = 0;
                        CHECK(memcmp(&a, &accounts[i], sizeof(a)) == 0);
                }
        }
        for (uint32_t i = 0; i < transfer_count; i++)
                ids[i] = transfers[i].id;
        ok = lookup(&c, OPERATION_LOOKUP_TRANSFERS, ids, transfer_count, found, &found_count,
                    deadline);
        CHECK(ok);
        if (ok) {
                CHECK_EQ_U64(found_count, transfer_count);
                for (uint32_t i = 0; i < found_count && i < transfer_count; i++) {
                        struct wire_transfer t;
                        memcpy(&t, found + 128 * i, sizeof(t));
                        CHECK(t.timestamp != 0);
                        t.timestamp = 0;
                        CHECK(memcmp(&t, &transfers[i], sizeof(t)) == 0);
                }
        }
        /* Nothing a forged prepare carried. */
        ok = lookup(&c, OPERATION_LOOKUP_ACCOUNTS, forged_ids, forged_count, found, &found_count,
                    deadline);
        CHECK(ok);
        if (ok && found_count != 0)
                fprintf(stderr, "  %u forged accounts exist (through replica %u)\n", found_count,
                        replica);
        CHECK(!ok || found_count == 0);
        client_close(&c);
        return ok;
}

/* Each replica stopped in turn: the other two serve every acknowledged object as sent. */
static void test_replicas_agree(void)
{
        for (uint32_t stopped = 0; stopped < REPLICAS; stopped++) {
                CHECK(kill(pids[stopped], SIGSTOP) == 0);
                bool answered = true;
                for (uint32_t r = 0; r < REPLICAS && answered; r++) {
                        if (r != stopped)
                                answered = check_acknowledged_through(r);
                }
                CHECK(kill(pids[stopped], SIGCONT) == 0);
                if (!answered) {
                        fprintf(stderr, "  with replica %u stopped the others did not answer\n",
                                stopped);
                        break; /* a stalled cluster: every further wait would time out too */
                }
                /* Back in the cluster before the next one stops. */
                bool ok = serves(stopped, LOOKUP_DEADLINE_MS);
                if (!ok)
                        fprintf(stderr, "  replica %u did not serve after SIGCONT\n", stopped);
                CHECK(ok);
        }
        check_all_alive();
        fprintf(stderr, "  %u accounts, %u transfers acknowledged; %u forged accounts looked for\n",
                account_count, transfer_count, forged_count);
}

/* TALLY_HOSTILE_CASES=name,name runs only those cases (to study one attack on its own). */
static bool case_selected(const char *name)
{
        const char *list = getenv("TALLY_HOSTILE_CASES");
        if (list == NULL || list[0] == '\0')
                return true;
        size_t length = strlen(name);
        for (const char *p = strstr(list, name); p != NULL; p = strstr(p + 1, name)) {
                if ((p == list || p[-1] == ',') && (p[length] == ',' || p[length] == '\0'))
                        return true;
        }
        return false;
}

#define CASE(fn)                                                                                   \
        do {                                                                                       \
                if (!case_selected(#fn))                                                           \
                        break;                                                                     \
                int failed_before = test_functions_failed;                                         \
                close_wait_ms = CLOSE_WAIT_MS;                                                     \
                kept_open = 0;                                                                     \
                int64_t start = now_ms();                                                          \
                TEST_RUN(fn);                                                                      \
                if (kept_open > 0)                                                                 \
                        fprintf(stderr, "  %u connections kept open in %s\n", kept_open, #fn);     \
                if (test_functions_failed == failed_before)                                        \
                        printf("ok %s (%lld ms)\n", #fn, (long long)(now_ms() - start));           \
        } while (0)

static bool parse_three(const char *text, long values[REPLICAS])
{
        char *end;
        for (uint32_t i = 0; i < REPLICAS; i++) {
                values[i] = strtol(text, &end, 10);
                if (end == text || (i + 1 < REPLICAS ? *end != ',' : *end != '\0'))
                        return false;
                text = end + 1;
        }
        return true;
}

int main(int argc, char **argv)
{
        long ports[REPLICAS], pid_values[REPLICAS];
        if ((argc != 4 && argc != 5) ||
            (strcmp(argv[1], "key") != 0 && strcmp(argv[1], "nokey") != 0) ||
            !parse_three(argv[2], ports) || !parse_three(argv[3], pid_values)) {
                fprintf(stderr, "usage: hostile_peers key|nokey <port0,port1,port2> "
                                "<pid0,pid1,pid2> [seed]\n");
                return 2;
        }
        setvbuf(stdout, NULL, _IOLBF, 0);
        keyed = strcmp(argv[1], "key") == 0;
        for (uint32_t r = 0; r < REPLICAS; r++) {
                struct sockaddr_in *v4 = (struct sockaddr_in *)&addresses[r];
                v4->sin_family = AF_INET;
                v4->sin_port = htons((uint16_t)ports[r]);
                v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                pids[r] = (pid_t)pid_values[r];
        }
        if (argc == 5)
                rng_state = strtoull(argv[4], NULL, 10);
        else if (getrandom(&rng_state, sizeof(rng_state), 0) != sizeof(rng_state))
                rng_state = (uint64_t)time(NULL);
        rng_state |= 1;
        fprintf(stderr, "hostile_peers %s seed=%llu\n", argv[1], (unsigned long long)rng_state);
        CASE(test_cluster_serves_at_start);
        CASE(test_start_view_forged);
        CASE(test_ping_then_forged_prepare);
        CASE(test_every_replica_command);
        CASE(test_identity_takeover);
        CASE(test_handshake_forged);
        CASE(test_replays);
        CASE(test_replicas_agree);
        TEST_MAIN_END();
}
