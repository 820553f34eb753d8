/*
 * crash.c: kill -9 the server at random moments while a client writes, restart it, and check
 * that nothing acknowledged was lost and nothing unacknowledged was half-applied.
 *
 * Usage: crash <tally binary> <work dir> <kills> <seed>
 *
 * One client writes batches of transfers (random sizes, random accounts) and keeps a model of
 * every acknowledged transfer and of the balances they imply. A killer process SIGKILLs the
 * server after a random delay. After each restart the SAME client session retransmits its
 * in-flight request, byte for byte: the server must answer it exactly once (from its durable
 * reply cache if it had committed it, by executing it if it had not), so every event's result is
 * `ok` either way. Then every account's balances and a sample of transfers are compared with
 * the model.
 */
#include "client/client.h"
#include "io/address.h"
#include "test.h"
#include "wire/types.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ACCOUNTS 64
#define BATCH_MAX 600
#define TRANSFERS_MAX 2000000

static const char *tally;
static char data_path[512];
static char log_path[512];
static uint16_t port;
static pid_t server_pid;
static uint64_t rng_state;

static uint64_t rng_next(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static struct sockaddr_storage server_address(void)
{
        struct sockaddr_storage ss;
        address_loopback(port, &ss);
        return ss;
}

static int run(char *const argv[])
{
        pid_t pid = fork();
        if (pid == 0) {
                int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
                dup2(fd, 2);
                dup2(fd, 1);
                execv(argv[0], argv);
                _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Prints the end of the server's log, so that a failed start says why. */
static void server_log_tail(void)
{
        char text[4096];
        int fd = open(log_path, O_RDONLY);
        if (fd < 0)
                return;
        off_t end = lseek(fd, 0, SEEK_END);
        off_t from = end > (off_t)sizeof(text) - 1 ? end - (off_t)sizeof(text) + 1 : 0;
        ssize_t got = pread(fd, text, sizeof(text) - 1, from);
        close(fd);
        if (got <= 0)
                return;
        text[got] = 0;
        fprintf(stderr, "  server log (%s), last %zd bytes:\n%s\n", log_path, got, text);
}

static double seconds_now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Starts the server and waits (up to 60 s) until it answers a ping. */
static bool server_start(void)
{
        char addresses[64];
        snprintf(addresses, sizeof(addresses), "--addresses=127.0.0.1:%u", port);
        server_pid = fork();
        if (server_pid == 0) {
                int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
                dup2(fd, 2);
                dup2(fd, 1);
                execl(tally, tally, "start", addresses, data_path, (char *)NULL);
                _exit(127);
        }
        /*
         * Ready means a pong from the new process: a killed server's listening socket can
         * outlive the process briefly (io_uring tears down asynchronously) and still accept.
         * The wait is in time, not attempts: a sanitizer build on a loaded machine recovers
         * slowly, and a server that cannot start exits by itself (it says why in its log).
         */
        struct sockaddr_storage ss = server_address();
        double started = seconds_now();
        while (seconds_now() - started < 60.0) {
                struct client probe;
                if (client_open(&probe, &ss, sizeof(struct sockaddr_in), 0, 0, 200) ==
                    CLIENT_OK) {
                        struct wire_header ping;
                        wire_header_init(&ping, COMMAND_PING_CLIENT, 0, 0,
                                         WIRE_RELEASE_NODE_CLIENT, 0);
                        ping.ping_client.client = probe.id;
                        wire_header_set_checksum(&ping);
                        const struct wire_header *pong;
                        if (client_send_raw(&probe, &ping, sizeof(ping)) == CLIENT_OK &&
                            client_receive(&probe, &pong) == CLIENT_OK &&
                            pong->command == COMMAND_PONG_CLIENT) {
                                client_close(&probe);
                                return true;
                        }
                }
                client_close(&probe);
                int status;
                if (waitpid(server_pid, &status, WNOHANG) == server_pid) {
                        fprintf(stderr, "  server exited during start (status %d)\n", status);
                        server_pid = 0;
                        server_log_tail();
                        return false;
                }
                usleep(20000);
        }
        fprintf(stderr, "  server did not answer a ping within 60 s\n");
        server_log_tail();
        return false;
}

/*
 * A port below the kernel's ephemeral range that nothing is bound to: inside that range another
 * process's outgoing connection can hold the port, and the server cannot listen (CI once: the
 * sanitizer run's first start failed, its port chosen as 20000 + pid % 20000).
 */
static uint16_t port_choose(void)
{
        unsigned low = 32768, high = 60999;
        FILE *range = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
        if (range != NULL) {
                if (fscanf(range, "%u %u", &low, &high) != 2)
                        low = 32768;
                fclose(range);
        }
        if (low <= 11000)
                low = 65535; /* No room below: any port above 10000 that is free. */
        uint32_t spread = (uint32_t)getpid() * 2654435761u;
        for (uint32_t attempt = 0; attempt < 1000; attempt++) {
                spread = spread * 1664525u + 1013904223u; /* not the test's generator: replays */
                uint16_t candidate = (uint16_t)(10000 + (spread >> 8) % (low - 10000));
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                struct sockaddr_storage ss;
                address_loopback(candidate, &ss);
                bool free_port = bind(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) == 0;
                close(fd);
                if (free_port)
                        return candidate;
        }
        return (uint16_t)(10000 + getpid() % 10000);
}

static void server_kill(void)
{
        if (server_pid <= 0)
                return;
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
}

/* Points the client at a fresh connection, keeping its id, session and request number. */
static bool client_reconnect(struct client *c)
{
        if (c->fd >= 0)
                close(c->fd);
        c->recv_size = 0;
        c->consumed_size = 0;
        struct sockaddr_storage ss = server_address();
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(c->fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) != 0)
                return false;
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        return true;
}

static struct wire_transfer *model_transfers;
static uint64_t model_count;
static u128 debits[ACCOUNTS + 1];
static u128 credits[ACCOUNTS + 1];

/* A one-batch multi-batch body of `count` elements of `size` bytes from `events`. */
static uint32_t build_body(uint8_t *body, const void *events, uint32_t count, uint32_t size)
{
        memcpy(body, events, (size_t)count * size);
        return client_body_single_batch(body, size, count);
}

static bool create_accounts(struct client *c)
{
        static struct wire_account accounts[ACCOUNTS];
        memset(accounts, 0, sizeof(accounts));
        for (uint32_t i = 0; i < ACCOUNTS; i++) {
                accounts[i].id = i + 1;
                accounts[i].ledger = 1;
                accounts[i].code = 1;
        }
        static uint8_t body[(ACCOUNTS + 1) * 128];
        uint32_t size = build_body(body, accounts, ACCOUNTS, 128);
        const struct wire_header *reply;
        return client_request(c, OPERATION_CREATE_ACCOUNTS, body, size, &reply) == CLIENT_OK &&
               reply->size == WIRE_HEADER_SIZE + 8;
}

static void model_apply(const struct wire_transfer *t, uint32_t count)
{
        for (uint32_t i = 0; i < count; i++) {
                debits[(uint64_t)t[i].debit_account_id] += t[i].amount;
                credits[(uint64_t)t[i].credit_account_id] += t[i].amount;
                model_transfers[model_count++] = t[i];
        }
}

/* Balances of every account and a sample of transfers against the model. */
static void verify(struct client *c)
{
        static u128 ids[ACCOUNTS];
        for (uint32_t i = 0; i < ACCOUNTS; i++)
                ids[i] = i + 1;
        static uint8_t body[1 << 20];
        uint32_t size = build_body(body, ids, ACCOUNTS, 16);
        const struct wire_header *reply;
        int rc = client_request(c, OPERATION_LOOKUP_ACCOUNTS, body, size, &reply);
        CHECK_EQ_U64(rc, CLIENT_OK);
        if (rc != CLIENT_OK)
                return;
        CHECK_EQ_U64(reply->size, WIRE_HEADER_SIZE + (ACCOUNTS + 1) * 128);
        const uint8_t *p = (const uint8_t *)reply + WIRE_HEADER_SIZE;
        uint32_t mismatched = 0;
        for (uint32_t i = 0; i < ACCOUNTS && reply->size >= WIRE_HEADER_SIZE + (i + 1) * 128;
             i++) {
                struct wire_account a;
                memcpy(&a, p + i * 128, sizeof(a));
                if (a.id != i + 1 || a.debits_posted != debits[i + 1] ||
                    a.credits_posted != credits[i + 1])
                        mismatched++;
        }
        CHECK_EQ_U64(mismatched, 0);
        /* Up to 2000 acknowledged transfers, field for field (the newest and random ones). */
        uint32_t sample = (uint32_t)MIN(model_count, 2000u);
        static u128 tids[2000];
        static uint64_t index[2000];
        for (uint32_t i = 0; i < sample; i++) {
                index[i] = i < 1000 ? model_count - 1 - i : rng_next() % model_count;
                tids[i] = model_transfers[index[i]].id;
        }
        size = build_body(body, tids, sample, 16);
        rc = client_request(c, OPERATION_LOOKUP_TRANSFERS, body, size, &reply);
        CHECK_EQ_U64(rc, CLIENT_OK);
        if (rc != CLIENT_OK)
                return;
        CHECK_EQ_U64(reply->size, WIRE_HEADER_SIZE + (uint64_t)sample * 128 + (sample ? 128 : 0));
        p = (const uint8_t *)reply + WIRE_HEADER_SIZE;
        mismatched = 0;
        for (uint32_t i = 0; i < sample && reply->size >= WIRE_HEADER_SIZE + (i + 1) * 128; i++) {
                struct wire_transfer t, expected = model_transfers[index[i]];
                memcpy(&t, p + i * 128, sizeof(t));
                expected.timestamp = t.timestamp; /* assigned by the server */
                if (memcmp(&t, &expected, sizeof(t)) != 0 || t.timestamp == 0)
                        mismatched++;
        }
        CHECK_EQ_U64(mismatched, 0);
}

static void test_crash_rounds(int kills)
{
        struct sockaddr_storage ss = server_address();
        struct client c;
        if (!server_start()) {
                CHECK(false);
                return;
        }
        int opened = client_open(&c, &ss, sizeof(struct sockaddr_in), 0, 0, 5000);
        CHECK_EQ_U64(opened, CLIENT_OK);
        if (opened != CLIENT_OK || client_register(&c) != CLIENT_OK || !create_accounts(&c)) {
                CHECK(false);
                client_close(&c);
                return;
        }
        static struct wire_transfer batch[BATCH_MAX];
        static uint8_t body[(BATCH_MAX + 1) * 128];
        uint64_t id_next = 1;
        int kill_count = 0;
        uint64_t acknowledged_before_kill = 0;
        while (kill_count < kills) {
                /* The killer: SIGKILL the server after 20..400 ms. */
                uint64_t delay_us = 20000 + rng_next() % 380000;
                pid_t killer = fork();
                if (killer == 0) {
                        usleep((useconds_t)delay_us);
                        kill(server_pid, SIGKILL);
                        _exit(0);
                }
                bool in_flight = false;
                uint32_t count = 0;
                for (;;) {
                        if (model_count + BATCH_MAX > TRANSFERS_MAX) {
                                /* The model is full: let the killer strike an idle server. */
                                waitpid(killer, NULL, 0);
                                killer = -1;
                                break;
                        }
                        count = 1 + (uint32_t)(rng_next() % BATCH_MAX);
                        memset(batch, 0, sizeof(batch[0]) * count);
                        for (uint32_t i = 0; i < count; i++) {
                                uint64_t dr = 1 + rng_next() % ACCOUNTS;
                                uint64_t cr = 1 + rng_next() % (ACCOUNTS - 1);
                                if (cr >= dr)
                                        cr++;
                                batch[i].id = id_next + i;
                                batch[i].debit_account_id = dr;
                                batch[i].credit_account_id = cr;
                                batch[i].amount = 1 + rng_next() % 1000;
                                batch[i].ledger = 1;
                                batch[i].code = 1;
                                batch[i].user_data_64 = id_next + i;
                        }
                        uint32_t size = build_body(body, batch, count, 128);
                        const struct wire_header *reply;
                        int rc = client_request(&c, OPERATION_CREATE_TRANSFERS, body, size,
                                                &reply);
                        if (rc != CLIENT_OK) {
                                in_flight = true;
                                break;
                        }
                        CHECK_EQ_U64(reply->size, WIRE_HEADER_SIZE + 8);
                        model_apply(batch, count);
                        id_next += count;
                        acknowledged_before_kill++;
                }
                if (killer > 0)
                        waitpid(killer, NULL, 0);
                waitpid(server_pid, NULL, 0);
                kill_count++;
                if (!server_start()) {
                        CHECK(false);
                        break;
                }
                CHECK(client_reconnect(&c));
                if (in_flight) {
                        /* The same request again: answered once, with every event ok. */
                        const struct wire_header *reply;
                        int rc = client_retransmit(&c, &reply);
                        CHECK_EQ_U64(rc, CLIENT_OK);
                        if (rc != CLIENT_OK) {
                                int status = 0;
                                pid_t gone = waitpid(server_pid, &status, WNOHANG);
                                fprintf(stderr,
                                        "  retransmit after restart: %s (errno %d); server %s "
                                        "status=%d\n",
                                        c.error, errno, gone == server_pid ? "exited" : "alive",
                                        status);
                                if (getenv("CRASH_PAUSE_ON_FAILURE") != NULL)
                                        sleep(30);
                                break;
                        }
                        CHECK_EQ_U64(reply->size, WIRE_HEADER_SIZE + 8);
                        model_apply(batch, count);
                        id_next += count;
                }
                verify(&c);
                if (test_checks_failed_in_current > 0) {
                        fprintf(stderr, "  failed after kill %d (%llu transfers acknowledged)\n",
                                kill_count, (unsigned long long)model_count);
                        break;
                }
        }
        printf("kills=%d transfers_acknowledged=%llu requests=%llu\n", kill_count,
               (unsigned long long)model_count, (unsigned long long)acknowledged_before_kill);
        client_close(&c);
}

static int kills_wanted;
static void test_crash(void)
{
        test_crash_rounds(kills_wanted);
}

int main(int argc, char **argv)
{
        if (argc != 5) {
                fprintf(stderr, "usage: crash <tally> <work dir> <kills> <seed>\n");
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        /* Line by line: a sanitizer that reports a leak exits without flushing stdio. */
        setvbuf(stdout, NULL, _IOLBF, 0);
        tally = argv[1];
        kills_wanted = atoi(argv[3]);
        rng_state = strtoull(argv[4], NULL, 10) * 2654435761u + 1;
        snprintf(data_path, sizeof(data_path), "%s/crash.tally", argv[2]);
        snprintf(log_path, sizeof(log_path), "%s/crash-server.log", argv[2]);
        port = port_choose();
        model_transfers = calloc(TRANSFERS_MAX, sizeof(struct wire_transfer));
        unlink(data_path);
        char *format[] = {(char *)tally, "format", "--cluster=0", "--replica=0",
                          "--replica-count=1", data_path, NULL};
        if (run(format) != 0) {
                fprintf(stderr, "format failed\n");
                return 1;
        }
        printf("seed=%s (replay: crash %s %s %s %s)\n", argv[4], argv[1], argv[2], argv[3],
               argv[4]);
        TEST_RUN(test_crash);
        /* On every path, never leave a server behind. */
        if (server_pid > 0)
                server_kill();
        unlink(data_path);
        TEST_MAIN_END();
}
