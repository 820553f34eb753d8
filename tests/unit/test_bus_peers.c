/*
 * test_bus_peers.c: replica-to-replica connections of the message bus, on loopback.
 *
 * Several buses live in this process, each with its own io_uring loop, message pool and
 * listening port, and the test drives their loops in turn. A node pings a peer as soon as the
 * bus reports it connected, as the replica does, so that the accepting side can identify the
 * connection. Checked: exactly one identified connection per pair, messages both ways (small
 * and half a megabyte), reconnect after a close from either side and after a restart, host
 * names resolved through the resolver, an unresolvable name and a connect that hangs retried
 * without harm, identification rules (a mismatching replica closes, a newer connection
 * replaces an older one only once that one is silent, a reply identifies nothing, a replica
 * message on an unidentified connection closes it), the deeper peer send queue, the slots
 * reserved for peers, the idle and partial-message timeouts of client connections, and the
 * cluster key: authenticated pairs, a wrong or missing key, and an outsider's forged, replayed
 * and untagged messages and stalled handshakes.
 */
#include "test.h"

#include "io/address.h"
#include "io/io.h"
#include "lib/log.h"
#include "net/bus.h"
#include "wire/header.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define NODES_MAX 3u
#define CLUSTER ((u128)77)
#define MESSAGES_PER_NODE 160u

struct node {
        bool up;
        uint8_t index;
        uint16_t port;
        struct io io;
        struct message_pool pool;
        struct bus bus;
        bool ping_on_connect;
        const struct peer_auth_key *key; /* set before node_join: peers must prove it */
        bool peer_up[ADDRESSES_MAX];
        int connected[ADDRESSES_MAX];
        int disconnected[ADDRESSES_MAX];
        int alternation_errors;
        int from[ADDRESSES_MAX];  /* messages of replica j delivered on j's connection */
        int unidentified;         /* messages delivered on a connection of no replica */
        uint64_t bytes_from[ADDRESSES_MAX];
};

static struct node nodes[NODES_MAX];

static void send_message(struct node *n, uint8_t to, uint8_t command, uint32_t body_size)
{
        struct message *m = message_pool_get(&n->pool);
        tally_assert(m != NULL);
        wire_header_init(m->header, command, CLUSTER, 0, WIRE_RELEASE_SERVER, n->index);
        m->header->size = WIRE_HEADER_SIZE + body_size;
        for (uint32_t i = 0; i < body_size; i++)
                message_body(m)[i] = (uint8_t)(i * 7 + to);
        wire_header_set_checksum_body(m->header, message_body(m), body_size);
        wire_header_set_checksum(m->header);
        bus_send_to_replica(&n->bus, to, m);
        message_unref(&n->pool, m);
}

static void on_message(void *context, bus_connection_id connection, struct message *message)
{
        struct node *n = context;
        int replica = bus_connection_replica(&n->bus, connection);
        if (replica >= 0 && replica == message->header->replica) {
                n->from[replica]++;
                n->bytes_from[replica] += message->header->size;
        } else {
                n->unidentified++;
        }
}

static void on_close(void *context, bus_connection_id connection)
{
        (void)context;
        (void)connection;
}

static void on_peer_connected(void *context, uint8_t replica)
{
        struct node *n = context;
        if (n->peer_up[replica])
                n->alternation_errors++;
        n->peer_up[replica] = true;
        n->connected[replica]++;
        if (n->ping_on_connect)
                send_message(n, replica, COMMAND_PING, 0);
}

static void on_peer_disconnected(void *context, uint8_t replica)
{
        struct node *n = context;
        if (!n->peer_up[replica])
                n->alternation_errors++;
        n->peer_up[replica] = false;
        n->disconnected[replica]++;
}

/* Initializes the node and listens on 127.0.0.1:port (0: any free port). */
static bool node_listen(struct node *n, uint8_t index, uint16_t port)
{
        memset(n, 0, sizeof(*n));
        n->index = index;
        n->ping_on_connect = true;
        if (io_init(&n->io, 64) != 0 || message_pool_init(&n->pool, MESSAGES_PER_NODE) != 0)
                return false;
        struct bus_callbacks callbacks = {
                .context = n,
                .on_message = on_message,
                .on_close = on_close,
                .on_peer_connected = on_peer_connected,
                .on_peer_disconnected = on_peer_disconnected,
        };
        if (bus_init(&n->bus, &n->io, &n->pool, CLUSTER, 16, &callbacks) != 0)
                return false;
        struct address address;
        uint32_t count = 0;
        char text[32], error[128];
        snprintf(text, sizeof(text), "127.0.0.1:%u", port == 0 ? 1u : port);
        if (address_parse_list(text, &address, &count, error, sizeof(error)) != 0)
                return false;
        ((struct sockaddr_in *)&address.sockaddr)->sin_port = htons(port);
        struct sockaddr_storage bound;
        if (bus_listen(&n->bus, &address, &bound) != 0)
                return false;
        n->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
        n->up = true;
        return true;
}

static bool node_join(struct node *n, const char *list)
{
        struct address addresses[ADDRESSES_MAX];
        uint32_t count = 0;
        char error[128];
        if (address_parse_list(list, addresses, &count, error, sizeof(error)) != 0) {
                fprintf(stderr, "  bad address list %s: %s\n", list, error);
                return false;
        }
        if (n->key != NULL)
                bus_auth_key_set(&n->bus, n->key);
        return bus_peers_start(&n->bus, n->index, addresses, (uint8_t)count) == 0;
}

/* One round of every live node's loop. */
static void run_once(void)
{
        for (uint32_t i = 0; i < NODES_MAX; i++) {
                struct node *n = &nodes[i];
                if (!n->up)
                        continue;
                tally_assert(io_run(&n->io, 0, false) == 0);
                bus_tick(&n->bus);
        }
        usleep(500);
}

static void run_ms(uint32_t ms)
{
        uint64_t deadline = io_monotonic_ns() + (uint64_t)ms * 1000000ull;
        while (io_monotonic_ns() < deadline)
                run_once();
}

#define RUN_UNTIL(cond, ms)                                                                       \
        ({                                                                                        \
                uint64_t deadline_ = io_monotonic_ns() + (uint64_t)(ms) * 1000000ull;             \
                while (!(cond) && io_monotonic_ns() < deadline_)                                  \
                        run_once();                                                               \
                (cond);                                                                           \
        })

static void node_stop(struct node *n)
{
        if (!n->up)
                return;
        bus_stop(&n->bus);
        uint64_t deadline = io_monotonic_ns() + 2000000000ull;
        while (n->bus.stats.connections_active > 0 && io_monotonic_ns() < deadline) {
                io_run(&n->io, 1000000ull, true);
        }
        CHECK_EQ_U64(n->bus.stats.connections_active, 0);
        bus_deinit(&n->bus);
        message_pool_deinit(&n->pool);
        io_deinit(&n->io);
        n->up = false;
}

static void stop_all(void)
{
        for (uint32_t i = 0; i < NODES_MAX; i++)
                node_stop(&nodes[i]);
}

/* Established connections of node n that belong to replica j. */
static uint32_t connections_of(const struct node *n, uint8_t j)
{
        uint32_t count = 0;
        for (uint32_t s = 0; s < n->bus.slot_count; s++) {
                const struct bus_connection *c = &n->bus.connections[s];
                if (c->active && !c->closing && c->established && c->replica == (int8_t)j)
                        count++;
        }
        return count;
}

static bool all_connected(uint32_t count)
{
        for (uint32_t i = 0; i < count; i++) {
                for (uint32_t j = 0; j < count; j++) {
                        if (i == j)
                                continue;
                        if (!nodes[i].up || !bus_peer_connected(&nodes[i].bus, (uint8_t)j))
                                return false;
                }
        }
        return true;
}

/* `count` nodes that know each other; with `key`, every pair must prove it. */
static bool start_cluster_keyed(uint32_t count, const struct peer_auth_key *key)
{
        for (uint32_t i = 0; i < count; i++) {
                if (!node_listen(&nodes[i], (uint8_t)i, 0))
                        return false;
                nodes[i].key = key;
        }
        char list[128] = "";
        for (uint32_t i = 0; i < count; i++) {
                size_t used = strlen(list);
                snprintf(list + used, sizeof(list) - used, "%s127.0.0.1:%u", i == 0 ? "" : ",",
                         nodes[i].port);
        }
        for (uint32_t i = 0; i < count; i++) {
                if (!node_join(&nodes[i], list))
                        return false;
        }
        return true;
}

static bool start_cluster(uint32_t count)
{
        return start_cluster_keyed(count, NULL);
}

static void test_one_connection_per_pair(void)
{
        CHECK(start_cluster(3));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        run_ms(200); /* nothing more should happen */
        for (uint8_t i = 0; i < 3; i++) {
                struct node *n = &nodes[i];
                CHECK_EQ_U64(n->bus.stats.connections_active, 2);
                CHECK_EQ_U64(n->bus.stats.connections_accepted, i);
                CHECK_EQ_U64(n->alternation_errors, 0);
                CHECK_EQ_U64(n->unidentified, 0);
                for (uint8_t j = 0; j < 3; j++) {
                        if (i == j)
                                continue;
                        CHECK_EQ_U64(connections_of(n, j), 1);
                        CHECK_EQ_U64(n->connected[j], 1);
                        CHECK_EQ_U64(n->disconnected[j], 0);
                        CHECK(n->from[j] >= 1); /* the ping sent on connect */
                        /* Each dialled peer, on loopback, is near (bus_peer.near). */
                        if (n->bus.peers[j].state == BUS_PEER_CONNECTED)
                                CHECK(n->bus.peers[j].near);
                }
        }
        stop_all();
}

/*
 * How long each attempt to a peer may take: every eighth long (the configured timeout) for a
 * peer never reached or far, so one farther than a quick attempt still connects; a near one
 * gets quick attempts only, until it has failed BUS_PEER_CONNECT_NEAR_FAILURES times in a row.
 */
static void test_attempt_timeouts(void)
{
        struct bus_peer peer;
        memset(&peer, 0, sizeof(peer));
        uint32_t longs = 0, quick = 0;
        for (peer.failures = 0; peer.failures < 64; peer.failures++) {
                uint32_t t = bus_peer_attempt_timeout_ms(&peer, 2000);
                longs += t == 2000;
                quick += t == BUS_PEER_CONNECT_QUICK_MS;
        }
        CHECK_EQ_U64(longs, 8);
        CHECK_EQ_U64(quick, 56);
        peer.near = true;
        longs = 0;
        for (peer.failures = 0; peer.failures < BUS_PEER_CONNECT_NEAR_FAILURES; peer.failures++)
                longs += bus_peer_attempt_timeout_ms(&peer, 2000) == 2000;
        CHECK_EQ_U64(longs, 0);
        for (uint32_t k = 0; k < 64; k++, peer.failures++)
                longs += bus_peer_attempt_timeout_ms(&peer, 2000) == 2000;
        CHECK_EQ_U64(longs, 8);
        /* A configured timeout under the quick one bounds every attempt. */
        peer.near = false;
        for (peer.failures = 0; peer.failures < 16; peer.failures++)
                CHECK_EQ_U64(bus_peer_attempt_timeout_ms(&peer, 100), 100);
}

static void test_messages_both_ways(void)
{
        CHECK(start_cluster(3));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        run_ms(100); /* the pings of the accepting sides, answering identification */
        int before[3][3];
        for (uint8_t i = 0; i < 3; i++)
                for (uint8_t j = 0; j < 3; j++)
                        before[i][j] = nodes[i].from[j];
        for (uint8_t i = 0; i < 3; i++) {
                for (uint8_t j = 0; j < 3; j++) {
                        if (i == j)
                                continue;
                        for (int k = 0; k < 10; k++)
                                send_message(&nodes[i], j, COMMAND_COMMIT, 0);
                        /* Half a megabyte: arrives in many receives, framed back together. */
                        send_message(&nodes[i], j, COMMAND_HEADERS, 512u * 1024u);
                }
        }
        bool done = RUN_UNTIL(({
                                      bool all = true;
                                      for (uint8_t i = 0; i < 3; i++)
                                              for (uint8_t j = 0; j < 3; j++)
                                                      if (i != j &&
                                                          nodes[j].from[i] - before[j][i] < 11)
                                                              all = false;
                                      all;
                              }),
                              3000);
        CHECK(done);
        for (uint8_t i = 0; i < 3; i++) {
                for (uint8_t j = 0; j < 3; j++) {
                        if (i == j)
                                continue;
                        CHECK_EQ_U64(nodes[j].from[i] - before[j][i], 11);
                        CHECK(nodes[j].bytes_from[i] >= 512u * 1024u);
                }
                CHECK_EQ_U64(nodes[i].bus.stats.connections_closed_bad_input, 0);
        }
        stop_all();
}

static void test_reconnect_after_close(void)
{
        CHECK(start_cluster(3));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        /* The connecting side closes: both sides see it go, then come back. */
        bus_close(&nodes[0].bus, nodes[0].bus.peers[1].connection, "test");
        CHECK(!bus_peer_connected(&nodes[0].bus, 1));
        CHECK_EQ_U64(nodes[0].disconnected[1], 1);
        CHECK(RUN_UNTIL(nodes[1].disconnected[0] == 1, 1000));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        CHECK_EQ_U64(nodes[0].connected[1], 2);
        CHECK_EQ_U64(nodes[1].connected[0], 2);
        /* The accepting side closes: the connecting side reconnects. */
        bus_close(&nodes[2].bus, nodes[2].bus.peers[1].connection, "test");
        CHECK(RUN_UNTIL(nodes[1].disconnected[2] == 1, 1000));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        CHECK_EQ_U64(nodes[1].connected[2], 2);
        CHECK_EQ_U64(nodes[2].connected[1], 2);
        int before = nodes[2].from[1];
        send_message(&nodes[1], 2, COMMAND_PREPARE_OK, 0);
        CHECK(RUN_UNTIL(nodes[2].from[1] == before + 1, 1000));
        for (uint8_t i = 0; i < 3; i++) {
                CHECK_EQ_U64(nodes[i].alternation_errors, 0);
                CHECK_EQ_U64(nodes[i].bus.stats.connections_active, 2);
        }
        stop_all();
}

static void test_restart(void)
{
        CHECK(start_cluster(3));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        /* Replica 2 goes away: 0 and 1 keep retrying until it is back on its port. */
        uint16_t port = nodes[2].port;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u", nodes[0].port,
                 nodes[1].port, port);
        node_stop(&nodes[2]);
        CHECK(RUN_UNTIL(nodes[0].disconnected[2] == 1 && nodes[1].disconnected[2] == 1, 1000));
        run_ms(500);
        CHECK(nodes[0].bus.stats.peer_connect_failures >= 1);
        CHECK(node_listen(&nodes[2], 2, port));
        CHECK(node_join(&nodes[2], list));
        CHECK(RUN_UNTIL(all_connected(3), 4000));
        CHECK_EQ_U64(nodes[0].connected[2], 2);
        CHECK_EQ_U64(nodes[2].connected[0], 1);
        CHECK_EQ_U64(connections_of(&nodes[2], 0), 1);
        CHECK_EQ_U64(connections_of(&nodes[2], 1), 1);
        for (uint8_t i = 0; i < 3; i++)
                CHECK_EQ_U64(nodes[i].alternation_errors, 0);
        stop_all();
}

static void test_host_names(void)
{
        CHECK(node_listen(&nodes[0], 0, 0));
        CHECK(node_listen(&nodes[1], 1, 0));
        char list[128];
        snprintf(list, sizeof(list), "localhost:%u,localhost:%u", nodes[0].port, nodes[1].port);
        CHECK(node_join(&nodes[0], list));
        CHECK(node_join(&nodes[1], list));
        CHECK(nodes[0].bus.peers[1].address.is_name);
        CHECK(RUN_UNTIL(all_connected(2), 3000));
        CHECK_EQ_U64(nodes[0].bus.stats.peer_resolve_failures, 0);
        CHECK(strcmp(nodes[0].bus.peers[1].target_text, "") != 0);
        /* Resolved again on reconnect. */
        bus_close(&nodes[0].bus, nodes[0].bus.peers[1].connection, "test");
        CHECK(RUN_UNTIL(all_connected(2), 3000));
        CHECK_EQ_U64(nodes[0].connected[1], 2);
        stop_all();
}

static void test_unresolvable_name(void)
{
        CHECK(node_listen(&nodes[0], 0, 0));
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:%u,no-such-host.invalid:%u", nodes[0].port,
                 nodes[0].port + 1);
        CHECK(node_join(&nodes[0], list));
        /* Failures are retried with backoff, never fatal, and however long DNS takes to say no,
         * the loop never waits for it. */
        uint64_t round_ns_max = 0;
        uint64_t deadline = io_monotonic_ns() + 15000000000ull;
        while (nodes[0].bus.stats.peer_resolve_failures < 2 && io_monotonic_ns() < deadline) {
                uint64_t started = io_monotonic_ns();
                run_once();
                round_ns_max = MAX(round_ns_max, io_monotonic_ns() - started);
        }
        CHECK(nodes[0].bus.stats.peer_resolve_failures >= 2);
        CHECK(round_ns_max < 100000000ull);
        CHECK(!bus_peer_connected(&nodes[0].bus, 1));
        CHECK(nodes[0].bus.peers[1].backoff_ms > BUS_PEER_BACKOFF_MIN_MS);
        stop_all();
}

/* A listener whose accept queue is full: connects to it hang in SYN_SENT. */
static int hanging_listener(uint16_t *port, int fills[2])
{
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        socklen_t size = sizeof(a);
        if (bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(l, 0) != 0 ||
            getsockname(l, (struct sockaddr *)&a, &size) != 0)
                return -1;
        for (int i = 0; i < 2; i++) {
                fills[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                connect(fills[i], (struct sockaddr *)&a, sizeof(a));
        }
        *port = ntohs(a.sin_port);
        return l;
}

static void test_connect_timeout(void)
{
        uint16_t port = 0;
        int fills[2] = {-1, -1};
        int l = hanging_listener(&port, fills);
        CHECK(l >= 0);
        CHECK(node_listen(&nodes[0], 0, 0));
        nodes[0].bus.connect_timeout_ms = 200;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:%u,127.0.0.1:%u", nodes[0].port, port);
        CHECK(node_join(&nodes[0], list));
        CHECK(RUN_UNTIL(nodes[0].bus.peers[1].state == BUS_PEER_CONNECTING, 1000));
        run_ms(100);
        CHECK(nodes[0].bus.peers[1].state == BUS_PEER_CONNECTING);
        CHECK(RUN_UNTIL(nodes[0].bus.stats.peer_connect_failures >= 2, 3000));
        CHECK(!bus_peer_connected(&nodes[0].bus, 1));
        stop_all();
        close(fills[0]);
        close(fills[1]);
        close(l);
}

/* A raw TCP connection that claims to be a replica, to test identification. */
static int raw_connect(uint16_t port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static bool raw_send(int fd, uint8_t command, uint8_t replica)
{
        struct wire_header h;
        wire_header_init(&h, command, CLUSTER, 0, WIRE_RELEASE_SERVER, replica);
        if (command == COMMAND_PREPARE) {
                h.prepare.op = 5;
                h.prepare.commit = 4;
                h.prepare.operation = 139; /* create_transfers */
        }
        if (command == COMMAND_PING_CLIENT)
                h.ping_client.client = 5;
        if (command == COMMAND_REPLY) {
                h.reply.client = 5;
                h.reply.request = 1;
                h.reply.op = 1;
                h.reply.commit = 1;
                h.reply.timestamp = 1;
                h.reply.operation = 140; /* lookup_accounts */
        }
        wire_header_set_checksum_body(&h, NULL, 0);
        wire_header_set_checksum(&h);
        return send(fd, &h, sizeof(h), MSG_NOSIGNAL) == (ssize_t)sizeof(h);
}

static void test_identification(void)
{
        /* Node 0 of a 3-replica cluster whose peers 1 and 2 do not exist: it identifies only
         * lower replicas on accepted connections, so make this node replica 2. */
        CHECK(node_listen(&nodes[0], 2, 0));
        nodes[0].ping_on_connect = false;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:1,127.0.0.1:2,127.0.0.1:%u", nodes[0].port);
        CHECK(node_join(&nodes[0], list));
        struct node *n = &nodes[0];
        char byte;
        /* A reply (clients get them too) identifies nothing and is delivered as a client's. */
        int a = raw_connect(n->port);
        CHECK(a >= 0);
        CHECK(raw_send(a, COMMAND_REPLY, 1));
        CHECK(RUN_UNTIL(n->unidentified == 1, 1000));
        /* A prepare (it names its author, not its sender) on a connection no replica
         * identified is refused: the connection is closed, nothing delivered. */
        CHECK(raw_send(a, COMMAND_PREPARE, 1));
        run_ms(100);
        CHECK(recv(a, &byte, 1, 0) == 0);
        close(a);
        /* So is a ping claiming to be ourselves. */
        a = raw_connect(n->port);
        CHECK(a >= 0);
        CHECK(raw_send(a, COMMAND_PING, 2));
        run_ms(100);
        CHECK(recv(a, &byte, 1, 0) == 0);
        close(a);
        CHECK_EQ_U64(n->unidentified, 1);
        CHECK_EQ_U64(n->bus.stats.replica_messages_unauthenticated, 2);
        /* A ping from replica 1 identifies a connection. */
        a = raw_connect(n->port);
        CHECK(a >= 0);
        CHECK(raw_send(a, COMMAND_PING, 1));
        CHECK(RUN_UNTIL(bus_peer_connected(&n->bus, 1), 1000));
        CHECK_EQ_U64(n->connected[1], 1);
        CHECK_EQ_U64(n->from[1], 1);
        /* A second connection claiming replica 1 while the first is live is refused... */
        int b = raw_connect(n->port);
        CHECK(b >= 0);
        CHECK(raw_send(b, COMMAND_PONG, 1));
        run_ms(100);
        CHECK(recv(b, &byte, 1, 0) == 0);
        close(b);
        CHECK_EQ_U64(n->connected[1], 1);
        CHECK_EQ_U64(n->bus.stats.peer_claims_refused, 1);
        CHECK(bus_peer_connected(&n->bus, 1));
        /* ...but replaces it once the first has been silent for BUS_PEER_LIVE_MS (the peer
         * restarted and its old connection is half-dead). */
        run_ms(BUS_PEER_LIVE_MS + 100);
        b = raw_connect(n->port);
        CHECK(b >= 0);
        CHECK(raw_send(b, COMMAND_PONG, 1));
        CHECK(RUN_UNTIL(n->connected[1] == 2, 1000));
        CHECK_EQ_U64(n->disconnected[1], 1);
        CHECK_EQ_U64(connections_of(n, 1), 1);
        CHECK(recv(a, &byte, 1, 0) == 0); /* the old one was closed */
        /* Replica 1 relays replica 0's prepare: fine. */
        CHECK(raw_send(b, COMMAND_PREPARE, 0));
        CHECK(RUN_UNTIL(n->unidentified == 2, 1000));
        CHECK(bus_peer_connected(&n->bus, 1));
        /* A ping from replica 0 on replica 1's connection: misconfigured, closed, peer lost. */
        CHECK(raw_send(b, COMMAND_PING, 0));
        CHECK(RUN_UNTIL(n->disconnected[1] == 2, 1000));
        CHECK(!bus_peer_connected(&n->bus, 1));
        CHECK_EQ_U64(n->bus.stats.connections_closed_bad_input, 1);
        CHECK_EQ_U64(n->alternation_errors, 0);
        close(a);
        close(b);
        stop_all();
}

/* ---- cluster key -------------------------------------------------------------------- */

static struct peer_auth_key key_a, key_b;

static void keys_init(void)
{
        for (uint32_t i = 0; i < PEER_AUTH_KEY_SIZE; i++) {
                key_a.bytes[i] = (uint8_t)(i * 13 + 1);
                key_b.bytes[i] = (uint8_t)(i * 13 + 2);
        }
}

/* Every pair connects and authenticates; messages of every size arrive, identified. */
static void test_auth_cluster(void)
{
        keys_init();
        CHECK(start_cluster_keyed(3, &key_a));
        CHECK(RUN_UNTIL(all_connected(3), 3000));
        run_ms(100);
        for (uint8_t i = 0; i < 3; i++) {
                for (uint8_t j = 0; j < 3; j++) {
                        if (i == j)
                                continue;
                        for (int k = 0; k < 10; k++)
                                send_message(&nodes[i], j, COMMAND_COMMIT, 0);
                        send_message(&nodes[i], j, COMMAND_HEADERS, 512u * 1024u);
                }
        }
        bool done = RUN_UNTIL(({
                                      bool all = true;
                                      for (uint8_t i = 0; i < 3; i++)
                                              for (uint8_t j = 0; j < 3; j++)
                                                      if (i != j && nodes[j].from[i] < 12)
                                                              all = false;
                                      all;
                              }),
                              3000);
        CHECK(done);
        for (uint8_t i = 0; i < 3; i++) {
                for (uint8_t j = 0; j < 3; j++) {
                        if (i != j)
                                CHECK_EQ_U64(nodes[j].from[i], 12); /* the ping and 11 */
                }
                CHECK_EQ_U64(nodes[i].unidentified, 0);
                CHECK_EQ_U64(nodes[i].bus.stats.peer_auth_failures, 0);
                CHECK_EQ_U64(nodes[i].bus.stats.connections_closed_bad_input, 0);
                CHECK_EQ_U64(nodes[i].alternation_errors, 0);
        }
        /* A restarted replica authenticates again and replaces its old connection. */
        node_stop(&nodes[1]);
        uint16_t port = nodes[1].port;
        CHECK(node_listen(&nodes[1], 1, port));
        nodes[1].key = &key_a;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:%u,127.0.0.1:%u,127.0.0.1:%u", nodes[0].port,
                 nodes[1].port, nodes[2].port);
        CHECK(node_join(&nodes[1], list));
        CHECK(RUN_UNTIL(all_connected(3), 5000));
        stop_all();
        for (uint32_t i = 0; i < NODES_MAX; i++)
                nodes[i].key = NULL;
}

/* Replicas with different keys, or one without, never connect. */
static void test_auth_wrong_key(void)
{
        keys_init();
        const struct peer_auth_key *second[2] = {&key_b, NULL};
        for (uint32_t round = 0; round < 2; round++) {
                CHECK(node_listen(&nodes[0], 0, 0));
                CHECK(node_listen(&nodes[1], 1, 0));
                nodes[0].key = &key_a;
                nodes[1].key = second[round];
                char list[128];
                snprintf(list, sizeof(list), "127.0.0.1:%u,127.0.0.1:%u", nodes[0].port,
                         nodes[1].port);
                CHECK(node_join(&nodes[0], list));
                CHECK(node_join(&nodes[1], list));
                run_ms(1500);
                CHECK(!bus_peer_connected(&nodes[0].bus, 1));
                CHECK(!bus_peer_connected(&nodes[1].bus, 0));
                CHECK_EQ_U64(nodes[0].connected[1] + nodes[1].connected[0], 0);
                if (round == 0) {
                        /* Both sides saw the other fail to prove the key. */
                        CHECK(nodes[0].bus.stats.peer_auth_failures > 0);
                        CHECK(nodes[1].bus.stats.peer_auth_failures == 0 ||
                              nodes[1].bus.stats.peer_auth_failures > 0);
                }
                stop_all();
                nodes[0].key = nodes[1].key = NULL;
        }
}

/* Handshake steps by hand, as an outsider (no key) and as an insider (the key) would. */
static bool hello_send(int fd, uint8_t sender, const struct peer_auth_hello *hello)
{
        _Alignas(16) uint8_t buffer[WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)];
        peer_auth_hello_message((struct wire_header *)buffer, CLUSTER, sender, hello);
        return send(fd, buffer, sizeof(buffer), MSG_NOSIGNAL) == (ssize_t)sizeof(buffer);
}

static bool hello_recv(int fd, struct peer_auth_hello *hello)
{
        _Alignas(16) uint8_t buffer[WIRE_HEADER_SIZE + sizeof(struct peer_auth_hello)];
        size_t got = 0;
        uint64_t deadline = io_monotonic_ns() + 1000000000ull;
        while (got < sizeof(buffer) && io_monotonic_ns() < deadline) {
                run_once();
                ssize_t n = recv(fd, buffer + got, sizeof(buffer) - got, MSG_DONTWAIT);
                if (n == 0)
                        return false;
                if (n > 0)
                        got += (size_t)n;
        }
        if (got < sizeof(buffer))
                return false;
        memcpy(hello, buffer + WIRE_HEADER_SIZE, sizeof(*hello));
        return true;
}

/* True if the bus closed fd within a second. */
static bool closed_by_bus(int fd)
{
        uint64_t deadline = io_monotonic_ns() + 1000000000ull;
        while (io_monotonic_ns() < deadline) {
                run_once();
                char byte;
                ssize_t n = recv(fd, &byte, 1, MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
                        return true;
        }
        return false;
}

/* A tagged header-only message of `command` from replica 1, sent as the session's next. */
static bool tagged_send(int fd, struct peer_auth_session *session, uint8_t command,
                        struct wire_header *sent)
{
        struct wire_header h;
        wire_header_init(&h, command, CLUSTER, 0, WIRE_RELEASE_SERVER, 1);
        wire_header_set_checksum_body(&h, NULL, 0);
        wire_header_set_checksum(&h);
        h.checksum = peer_auth_tag(session, &h, NULL);
        if (sent != NULL)
                *sent = h;
        return send(fd, &h, sizeof(h), MSG_NOSIGNAL) == (ssize_t)sizeof(h);
}

static void test_auth_outsider(void)
{
        keys_init();
        CHECK(node_listen(&nodes[0], 2, 0));
        nodes[0].ping_on_connect = false;
        nodes[0].key = &key_a;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:1,127.0.0.1:2,127.0.0.1:%u", nodes[0].port);
        CHECK(node_join(&nodes[0], list));
        struct node *n = &nodes[0];

        /* A client's message is served as ever; a replica's closes the connection. */
        int fd = raw_connect(n->port);
        CHECK(fd >= 0);
        CHECK(raw_send(fd, COMMAND_REPLY, 1));
        CHECK(RUN_UNTIL(n->unidentified == 1, 1000));
        CHECK(raw_send(fd, COMMAND_PING, 1));
        CHECK(closed_by_bus(fd));
        close(fd);
        CHECK(!bus_peer_connected(&n->bus, 1));

        /* Step 1 without the key gets step 2; a made-up proof in step 3 is refused. */
        struct peer_auth_hello hello;
        memset(&hello, 0, sizeof(hello));
        memcpy(hello.magic, PEER_AUTH_MAGIC, sizeof(hello.magic));
        hello.step = 1;
        hello.dialer = 1;
        hello.acceptor = 2;
        memset(hello.nonce_dial, 0x5a, sizeof(hello.nonce_dial));
        fd = raw_connect(n->port);
        CHECK(fd >= 0);
        CHECK(hello_send(fd, 1, &hello));
        struct peer_auth_hello answer;
        CHECK(hello_recv(fd, &answer));
        CHECK_EQ_U64(answer.step, 2);
        uint8_t proof[16];
        peer_auth_proof(&key_a, CLUSTER, &answer, false, proof);
        CHECK(peer_auth_equal(proof, answer.proof)); /* the acceptor proved the key */
        struct peer_auth_hello forged = answer;
        forged.step = 3;
        memset(forged.proof, 0x11, sizeof(forged.proof));
        CHECK(hello_send(fd, 1, &forged));
        CHECK(closed_by_bus(fd));
        close(fd);
        CHECK(!bus_peer_connected(&n->bus, 1));
        uint64_t failures = n->bus.stats.peer_auth_failures;
        CHECK(failures >= 1);

        /* An outsider replaying an insider's step 3 on a new connection: the acceptor's new
         * nonce makes the old proof worthless. First a real handshake (the test holds the
         * key), recorded. */
        fd = raw_connect(n->port);
        CHECK(fd >= 0);
        CHECK(hello_send(fd, 1, &hello));
        CHECK(hello_recv(fd, &answer));
        struct peer_auth_hello proof3 = answer;
        proof3.step = 3;
        peer_auth_proof(&key_a, CLUSTER, &proof3, true, proof3.proof);
        CHECK(hello_send(fd, 1, &proof3));
        CHECK(RUN_UNTIL(bus_peer_connected(&n->bus, 1), 1000));
        struct peer_auth_session session;
        peer_auth_session(&key_a, CLUSTER, &proof3, true, &session);
        /* Tagged messages are delivered as replica 1's. */
        struct wire_header first;
        CHECK(tagged_send(fd, &session, COMMAND_PING, &first));
        CHECK(RUN_UNTIL(n->from[1] == 1, 1000));
        CHECK(tagged_send(fd, &session, COMMAND_COMMIT, NULL));
        CHECK(RUN_UNTIL(n->from[1] == 2, 1000));
        /* The first message again, byte for byte: a replay, closed. */
        CHECK(send(fd, &first, sizeof(first), MSG_NOSIGNAL) == (ssize_t)sizeof(first));
        CHECK(closed_by_bus(fd));
        close(fd);
        CHECK(RUN_UNTIL(!bus_peer_connected(&n->bus, 1), 1000));
        CHECK_EQ_U64(n->from[1], 2);

        /* The recorded step 1 and step 3 replayed on a new connection. */
        fd = raw_connect(n->port);
        CHECK(fd >= 0);
        CHECK(hello_send(fd, 1, &hello));
        CHECK(hello_recv(fd, &answer));
        CHECK(!peer_auth_equal(answer.nonce_accept, proof3.nonce_accept));
        CHECK(hello_send(fd, 1, &proof3));
        CHECK(closed_by_bus(fd));
        close(fd);
        CHECK(!bus_peer_connected(&n->bus, 1));

        /* An untagged (ordinary) message after a proper handshake is refused. */
        fd = raw_connect(n->port);
        CHECK(fd >= 0);
        CHECK(hello_send(fd, 1, &hello));
        CHECK(hello_recv(fd, &answer));
        proof3 = answer;
        proof3.step = 3;
        peer_auth_proof(&key_a, CLUSTER, &proof3, true, proof3.proof);
        CHECK(hello_send(fd, 1, &proof3));
        CHECK(RUN_UNTIL(bus_peer_connected(&n->bus, 1), 1000));
        CHECK(raw_send(fd, COMMAND_COMMIT, 1));
        CHECK(closed_by_bus(fd));
        close(fd);
        CHECK_EQ_U64(n->from[1], 2);

        /* A handshake that stops half-way is closed after BUS_PEER_AUTH_TIMEOUT_MS. */
        fd = raw_connect(n->port);
        CHECK(fd >= 0);
        CHECK(hello_send(fd, 1, &hello));
        CHECK(hello_recv(fd, &answer));
        run_ms(BUS_PEER_AUTH_TIMEOUT_MS + 200);
        CHECK(closed_by_bus(fd));
        close(fd);
        CHECK_EQ_U64(n->alternation_errors, 0);
        stop_all();
        nodes[0].key = NULL;
}

/* A peer that never reads: our queue to it takes 64 messages, a client's 16. */
static void test_peer_send_queue(void)
{
        CHECK(node_listen(&nodes[0], 1, 0));
        nodes[0].ping_on_connect = false;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:1,127.0.0.1:%u", nodes[0].port);
        CHECK(node_join(&nodes[0], list));
        struct node *n = &nodes[0];
        int a = raw_connect(n->port);
        CHECK(a >= 0);
        CHECK(raw_send(a, COMMAND_PING, 0));
        CHECK(RUN_UNTIL(bus_peer_connected(&n->bus, 0), 1000));
        struct message *m = message_pool_get(&n->pool);
        wire_header_init(m->header, COMMAND_COMMIT, CLUSTER, 0, WIRE_RELEASE_SERVER, 1);
        wire_header_set_checksum(m->header);
        uint32_t queued = 0;
        for (uint32_t i = 0; i < BUS_SEND_QUEUE_PEER_MAX + 10; i++)
                queued += bus_send_to_replica(&n->bus, 0, m) ? 1u : 0u;
        CHECK_EQ_U64(queued, BUS_SEND_QUEUE_PEER_MAX);
        CHECK_EQ_U64(n->bus.stats.messages_dropped_send_queue_full, 10);
        message_unref(&n->pool, m);
        /* No connection to replica 0 any more: dropped, counted. */
        close(a);
        CHECK(RUN_UNTIL(!bus_peer_connected(&n->bus, 0), 1000));
        m = message_pool_get(&n->pool);
        wire_header_init(m->header, COMMAND_COMMIT, CLUSTER, 0, WIRE_RELEASE_SERVER, 1);
        CHECK(!bus_send_to_replica(&n->bus, 0, m));
        CHECK_EQ_U64(n->bus.stats.messages_dropped_no_peer, 1);
        message_unref(&n->pool, m);
        stop_all();
}

/* True once the server side has closed `fd` (a read sees the end), waiting up to `ms`. */
static bool raw_closed(int fd, uint32_t ms)
{
        char byte;
        return RUN_UNTIL(recv(fd, &byte, 1, MSG_DONTWAIT) == 0, ms);
}

/*
 * With every client slot taken, a replica of lower index still gets in (a reserved slot);
 * a connection there that does not identify in time, or sends a client message, is closed.
 */
static void test_reserved_peer_slots(void)
{
        CHECK(node_listen(&nodes[0], 1, 0));
        nodes[0].ping_on_connect = false;
        char list[128];
        snprintf(list, sizeof(list), "127.0.0.1:1,127.0.0.1:%u", nodes[0].port);
        CHECK(node_join(&nodes[0], list));
        struct node *n = &nodes[0];
        n->bus.peer_identify_timeout_ms = 300;
        static int clients[16];
        tally_assert(ARRAY_LEN(clients) == n->bus.connections_max);
        for (uint32_t i = 0; i < ARRAY_LEN(clients); i++)
                clients[i] = raw_connect(n->port);
        CHECK(RUN_UNTIL(n->bus.stats.connections_accepted == ARRAY_LEN(clients), 1000));
        /* Silent in a reserved slot: closed after the identification deadline. */
        int silent = raw_connect(n->port);
        CHECK(silent >= 0);
        CHECK(raw_closed(silent, 2000));
        CHECK_EQ_U64(n->bus.stats.refusals[BUS_REFUSAL_PEER_SLOT_TIMEOUT], 1);
        /* A client message in a reserved slot: closed at once. */
        int client = raw_connect(n->port);
        CHECK(client >= 0);
        CHECK(raw_send(client, COMMAND_PING_CLIENT, 0));
        CHECK(raw_closed(client, 200));
        CHECK_EQ_U64(n->bus.stats.refusals[BUS_REFUSAL_PEER_SLOT_CLIENT], 1);
        CHECK_EQ_U64(n->unidentified, 0);
        /* Replica 0 gets in, identifies, and stays past the deadline. */
        int peer = raw_connect(n->port);
        CHECK(peer >= 0);
        CHECK(raw_send(peer, COMMAND_PING, 0));
        CHECK(RUN_UNTIL(bus_peer_connected(&n->bus, 0), 1000));
        run_ms(500);
        CHECK(bus_peer_connected(&n->bus, 0));
        CHECK_EQ_U64(n->bus.stats.connections_refused, 0);
        close(silent);
        close(client);
        close(peer);
        for (uint32_t i = 0; i < ARRAY_LEN(clients); i++)
                close(clients[i]);
        stop_all();
}

/* A client connection that never completes a message, or stops in the middle of one. */
static void test_client_timeouts(void)
{
        CHECK(node_listen(&nodes[0], 0, 0));
        struct node *n = &nodes[0];
        n->bus.idle_timeout_ms = 300;
        n->bus.partial_timeout_ms = 300;
        int silent = raw_connect(n->port);
        CHECK(silent >= 0);
        CHECK(raw_closed(silent, 2000));
        CHECK_EQ_U64(n->bus.stats.refusals[BUS_REFUSAL_IDLE], 1);
        /* A complete message, then half of another: the partial-message timeout. */
        int partial = raw_connect(n->port);
        CHECK(partial >= 0);
        CHECK(raw_send(partial, COMMAND_PING_CLIENT, 0));
        CHECK(RUN_UNTIL(n->unidentified == 1, 1000));
        struct wire_header h;
        wire_header_init(&h, COMMAND_PING_CLIENT, CLUSTER, 0, WIRE_RELEASE_SERVER, 0);
        wire_header_set_checksum(&h);
        CHECK(send(partial, &h, 100, MSG_NOSIGNAL) == 100);
        CHECK(raw_closed(partial, 2000));
        CHECK_EQ_U64(n->bus.stats.refusals[BUS_REFUSAL_PARTIAL], 1);
        CHECK_EQ_U64(n->bus.stats.refusals[BUS_REFUSAL_IDLE], 1);
        /* One that keeps sending whole messages stays. */
        int busy = raw_connect(n->port);
        CHECK(busy >= 0);
        for (int i = 0; i < 5; i++) {
                CHECK(raw_send(busy, COMMAND_PING_CLIENT, 0));
                run_ms(100);
        }
        char byte;
        CHECK(recv(busy, &byte, 1, MSG_DONTWAIT) < 0); /* still open, nothing to read */
        close(silent);
        close(partial);
        close(busy);
        stop_all();
}

int main(void)
{
        if (getenv("TALLY_LOG") != NULL)
                log_init_from_env();
        else
                log_set_level(LOG_ERROR);
        /* test_unresolvable_name waits for two failed lookups. A machine whose DNS server never
         * answers takes glibc's default 2 attempts x 5 s per lookup to say no, and the test
         * failed so; it is about the bus, not DNS, so one 1 s attempt per lookup. */
        setenv("RES_OPTIONS", "timeout:1 attempts:1", 1);
        TEST_RUN(test_one_connection_per_pair);
        TEST_RUN(test_attempt_timeouts);
        TEST_RUN(test_messages_both_ways);
        TEST_RUN(test_reconnect_after_close);
        TEST_RUN(test_restart);
        TEST_RUN(test_host_names);
        TEST_RUN(test_unresolvable_name);
        TEST_RUN(test_connect_timeout);
        TEST_RUN(test_identification);
        TEST_RUN(test_peer_send_queue);
        TEST_RUN(test_auth_cluster);
        TEST_RUN(test_auth_wrong_key);
        TEST_RUN(test_auth_outsider);
        TEST_RUN(test_reserved_peer_slots);
        TEST_RUN(test_client_timeouts);
        TEST_MAIN_END();
}
