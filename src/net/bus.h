/*
 * bus.h: the message bus. Accepts TCP connections, frames the byte stream into checked
 * messages, and queues outgoing messages per connection.
 *
 * What reaches the replica has passed every framing check: header checksum, size bounds, body
 * checksum, cluster, and the header validity rules. A connection that sends a bad checksum, an
 * impossible size or another cluster's id is closed with a log line; a well-framed but invalid
 * header is dropped with a log line. One slow or hostile peer never holds up others: receives
 * are re-armed only after what arrived was handled, and each connection's send queue is
 * bounded (a message that does not fit is dropped; clients retransmit).
 *
 * Replicas (bus_peers_start): `--addresses` names every replica, index i = address i, and
 * there is exactly one connection per pair: replica i connects to every replica j > i and
 * accepts the connections of every j < i. An outgoing connection is replica j's as soon as
 * it is connected. An accepted connection is anonymous (a client, as far as the bus knows)
 * until it delivers a valid message that only a replica sends and that names its sender
 * (bus_command_names_sender: ping, pong, prepare_ok, commit, view change, repair and sync
 * messages; not a reply, which clients receive too, and not a prepare, which is relayed
 * unchanged in repair) whose header says replica j < i; from then on it is replica j's, and a
 * ping or pong on it from another replica (a misconfigured --addresses) closes it. A newer
 * connection from the same replica replaces the older one only if the older one has been
 * silent for BUS_PEER_LIVE_MS (it may be half-dead after the peer restarted): a live peer's
 * connection is never displaced by a newcomer that merely claims its index, and peers keep
 * each other's connections live with on_peer_idle pings. The bus reports each peer's connections with on_peer_connected /
 * on_peer_disconnected, strictly alternating per peer; the replica is expected to send a ping
 * at once on on_peer_connected, so that the other side can identify an accepted connection.
 *
 * With a cluster key (bus_auth_key_set, `--cluster-key-file`) identity is proven instead of
 * claimed: a peer connection is established only by the handshake of net/peer_auth.h, every
 * message on it carries a tag under a per-connection session key, and a replica-only command
 * on any other connection closes that connection. Clients are unaffected.
 *
 * `tally backup` opens a connection with a handshake of its own identity (dialer
 * PEER_AUTH_DIALER_BACKUP, proving the key if the cluster has one): the connection is then a
 * backup connection, never a peer's, and carries only the checkpoint reads of state sync
 * (request_blocks, request_reply); anything else on it closes it.
 *
 * Outgoing connections are retried forever, with exponential backoff and jitter, and a host
 * name is resolved again before every attempt (pod addresses change on restart) without
 * blocking the loop (net/resolver.h). Timers run on bus_tick().
 *
 * Limits per connection (a client, or an accepted connection not yet identified as a replica),
 * so that one connection cannot starve the others of message buffers or of the loop:
 *   - backpressure: a connection whose replies are not being read (its send queue is full, or
 *     it has replies queued while all client queues together hold BUS_CLIENT_SEND_QUEUED_MAX)
 *     is not read from until they drain, so it stops producing replies nobody reads;
 *   - at most BUS_CLIENT_MESSAGES_PER_TURN_MAX of its messages are handled per receive;
 *   - it is closed when it never completes a message (BUS_IDLE_TIMEOUT_MS, or
 *     BUS_IDLE_TIMEOUT_FULL_MS while every client slot is taken), or stops in the middle of
 *     one (BUS_PARTIAL_TIMEOUT_MS);
 *   - when the client slots are full, an accepted connection may take one of
 *     BUS_PEER_RESERVED_SLOTS, but must identify as a replica within
 *     BUS_PEER_IDENTIFY_TIMEOUT_MS and may send no client message there.
 * Each kind of refusal is counted in bus_stats.refusals and logged at warn at most once per
 * BUS_REFUSAL_LOG_INTERVAL_MS (the others at debug). Connections of identified replicas are
 * exempt: their queues are deeper and the kernel's timeouts watch them.
 */
#ifndef TALLY_NET_BUS_H
#define TALLY_NET_BUS_H

#include "io/address.h"
#include "io/io.h"
#include "net/peer_auth.h"
#include "wire/message.h"

/* Messages queued for sending on one client connection before further ones are dropped. */
#define BUS_SEND_QUEUE_MAX 16u
/*
 * The same for a connection to another replica: deeper, since the primary fans every prepare
 * out to each backup and repair can send a burst of prepares or headers at once. 64 is eight
 * pipelines' worth of prepares; the messages themselves are shared, not copied.
 */
#define BUS_SEND_QUEUE_PEER_MAX 64u

/* Slots for outgoing connections, beyond `connections_max` for accepted ones: clients can never
 * use them up. Two per peer: a closing connection can still hold its slot while the next
 * attempt starts. */
#define BUS_OUTGOING_SLOTS (2u * ADDRESSES_MAX)

/*
 * Reconnect backoff: the first retry after about 50 ms (a peer that is starting), doubling to
 * 250 ms, each delay drawn from [d/2, d] so that replicas restarted together do not retry in
 * lockstep. A connection that delivered a message resets it. A peer that is down costs one SYN
 * about every 0.4 s: nothing, next to how soon a healed partition must be noticed (below).
 */
#define BUS_PEER_BACKOFF_MIN_MS 50u
#define BUS_PEER_BACKOFF_MAX_MS 250u
/*
 * A connect that has not completed by then is aborted (a peer host that drops SYNs). Seven
 * attempts in eight wait only BUS_PEER_CONNECT_QUICK_MS, far less than the kernel's first SYN
 * retransmission (1 s): an attempt started during a partition otherwise holds the peer until
 * its timeout after the partition heals, and the majority it belongs to cannot change views
 * meanwhile (the partition suite measured 1.9 s from a heal to the connection with 2 s
 * attempts, and about 1.1 s with 500 ms attempts, three in four, and a 500 ms backoff: then
 * kill-during-partition, whose majority needs that link, measured 2.26 s without service in
 * CI). Every eighth waits BUS_PEER_CONNECT_TIMEOUT_MS, so a peer farther than 250 ms still
 * connects.
 */
#define BUS_PEER_CONNECT_TIMEOUT_MS 2000u
#define BUS_PEER_CONNECT_QUICK_MS 250u
#define BUS_PEER_CONNECT_LONG_EVERY 8u
/*
 * A peer whose last connect completed within BUS_PEER_CONNECT_NEAR_MS is near: a quick attempt
 * reaches it, so it gets long attempts only after BUS_PEER_CONNECT_NEAR_FAILURES failures in a
 * row (it may have moved far away). A long attempt started during a partition holds the peer up
 * to its timeout after the heal (the kernel retransmits its SYN at 1 s, then 3 s): about 40 % of
 * heals landed inside one, and the link came back up to 1.3 s late (the partition suite's
 * kill-during-partition, whose majority needs that link: 0.73-1.55 s without service, 2.26 s
 * once, against its 2 s bound).
 */
#define BUS_PEER_CONNECT_NEAR_MS 100u
#define BUS_PEER_CONNECT_NEAR_FAILURES 64u
/*
 * A peer connection whose sent data stays unacknowledged this long is dropped and redialled
 * (TCP_USER_TIMEOUT; TCP keepalive probes cover an idle one). Without it a peer host that
 * vanished without a reset (a node lost, a pod moved to another IP) would hold its connection
 * for the kernel's ~15 minutes of retransmissions.
 */
#define BUS_PEER_TCP_TIMEOUT_MS 10000u
/*
 * A peer connection that delivered a message this recently is live: a newer connection that
 * claims the same replica index (without a cluster key nothing else identifies it) is closed
 * rather than allowed to take its place. Five keepalive intervals, so a live peer is never
 * mistaken for a dead one, and short enough that a restarted peer's new connection wins soon.
 */
#define BUS_PEER_LIVE_MS 1000u
/* A peer connection we have sent nothing on for this long gets an on_peer_idle ping. */
#define BUS_PEER_KEEPALIVE_MS 200u
/*
 * A peer connection that delivered nothing for this long is closed and dialled again. Healthy
 * peers hear from each other at least every BUS_PEER_KEEPALIVE_MS (the pings above), so this
 * only fires on a connection that is dead without TCP knowing: after a partition heals, TCP
 * would otherwise resume only at its next retransmission (exponential backoff) or after
 * BUS_PEER_TCP_TIMEOUT_MS, and a connected majority would wait that long to talk.
 */
#define BUS_PEER_SILENT_MS 2000u
/* A peer handshake (cluster key) not finished by then is abandoned: the dialer retries. */
#define BUS_PEER_AUTH_TIMEOUT_MS 2000u
/* Repeated failures to reach one peer are logged at warn at most this often (else debug). */
#define BUS_PEER_WARN_INTERVAL_MS 10000u

/*
 * Slots for accepted connections beyond `connections_max`, for replicas of lower index only:
 * a flood of clients cannot keep a peer out. Two per peer, as for BUS_OUTGOING_SLOTS.
 */
#define BUS_PEER_RESERVED_SLOTS (2u * ADDRESSES_MAX)
/*
 * An accepted connection in a reserved slot must identify as a replica within this. A replica
 * pings the moment its connect completes, so a real peer needs one round trip; 2 s is the
 * outgoing connect timeout too, and leaves room for a handshake of a few round trips.
 */
#define BUS_PEER_IDENTIFY_TIMEOUT_MS 2000u

/*
 * A client connection that has never completed a message is closed after this. The official
 * client connects to every replica at once but talks only to the primary: its connections to
 * the others carry nothing until its first ping_client, 30 s later (TigerBeetle's client
 * ping_timeout, repeated every 30 s). Twice that keeps every real client.
 */
#define BUS_IDLE_TIMEOUT_MS 60000u
/*
 * The same while every client slot is taken: then a silent connection holds a slot a new
 * client needs. A client sending a request connects and sends within a round trip; an idle
 * official client's silent connection to a backup is closed too, and redialled by the client.
 */
#define BUS_IDLE_TIMEOUT_FULL_MS 5000u
/*
 * A connection that sent part of a message and nothing more for this long, while we were
 * waiting to read, is closed. A real sender writes a message in one go; 10 s covers five
 * TCP retransmissions of a lost segment (0.2 s doubling: 6.2 s) with room to spare.
 */
#define BUS_PARTIAL_TIMEOUT_MS 10000u
/*
 * Messages queued on all client connections together before a connection that has replies
 * queued stops being read. Bounds what unread replies hold: at most this many, plus one per
 * connection (a connection with an empty queue is always read, so a new client is never
 * starved by the others). 256 replies is many times what well-behaved clients have queued
 * at once (each has one request in flight).
 */
#define BUS_CLIENT_SEND_QUEUED_MAX 256u
/*
 * Messages from one client connection handled per receive; the rest wait for the next tick
 * (10 ms), so one connection sending a megabyte of small messages does not hold the loop.
 * A client has one request in flight per session, so this costs real clients nothing.
 */
#define BUS_CLIENT_MESSAGES_PER_TURN_MAX 64u
/* Each kind of refusal is logged at warn at most this often (counted always). */
#define BUS_REFUSAL_LOG_INTERVAL_MS 10000u
/*
 * The most pool messages accepted connections can hold at once: a receive buffer each, one
 * queued reply each beyond the shared budget, and the budget. Size the pool with it (plus
 * what the replica and the peer connections need), so no client can exhaust it.
 */
#define BUS_CLIENT_MESSAGES_MAX(connections_max)                                                   \
        (2u * ((connections_max) + BUS_PEER_RESERVED_SLOTS) + BUS_CLIENT_SEND_QUEUED_MAX)

/* Warnings about replica traffic, each kind logged at most once a second. */
enum bus_warn {
        BUS_WARN_REPLICA_MESSAGE_REFUSED, /* a replica command off a peer connection */
        BUS_WARN_CLAIM_REFUSED,           /* a newcomer claimed a live peer's index */
        BUS_WARN_AUTH_FAILED,             /* a handshake or message failed the cluster key */
        BUS_WARN_NO_KEY,                  /* a peer authenticates, we have no key */
        BUS_WARN_UNEXPECTED_REPLICA,      /* a replica index that does not connect to us */
        BUS_WARN_INVALID_HEADER,          /* a well-framed message with an invalid header */
        BUS_WARN_COUNT,
};

/* The kinds of refusal, each counted in bus_stats.refusals and logged (rate limited). */
enum bus_refusal {
        BUS_REFUSAL_SLOTS_FULL,        /* accept: every client (and reserved) slot in use */
        BUS_REFUSAL_IDLE,              /* closed: never completed a message */
        BUS_REFUSAL_PARTIAL,           /* closed: stalled in the middle of a message */
        BUS_REFUSAL_PEER_SLOT_TIMEOUT, /* closed: reserved slot, not identified in time */
        BUS_REFUSAL_PEER_SLOT_CLIENT,  /* closed: reserved slot, a client message */
        BUS_REFUSAL_READ_PAUSED,       /* reading paused: its replies are not being read */
        BUS_REFUSAL_SEND_QUEUE_FULL,   /* a message dropped: the send queue is full */
        BUS_REFUSAL_COUNT,
};

/* A connection handle: slot index and generation, so a stale handle never hits a new peer. */
typedef uint64_t bus_connection_id;
#define BUS_CONNECTION_NONE ((bus_connection_id)0)

struct bus;

struct bus_callbacks {
        void *context;
        /* A checked message; the callee takes its own reference if it keeps it. */
        void (*on_message)(void *context, bus_connection_id connection, struct message *message);
        /* The connection is gone; its id will never be used again. */
        void (*on_close)(void *context, bus_connection_id connection);
        /* Optional, replicas only: a connection to `replica` is usable by bus_send_to_replica. */
        void (*on_peer_connected)(void *context, uint8_t replica);
        /* Optional: that connection is closing; messages to `replica` are dropped until the next
         * on_peer_connected. May run inside bus_close() and bus_stop(). */
        void (*on_peer_disconnected)(void *context, uint8_t replica);
        /* Optional: nothing was sent to `replica` for BUS_PEER_KEEPALIVE_MS; send it a ping. */
        void (*on_peer_idle)(void *context, uint8_t replica);
};

enum bus_auth_state {
        BUS_AUTH_NONE = 0,    /* no handshake: a client, or a peer of a cluster without a key */
        BUS_AUTH_DIAL_SENT,   /* outgoing: step 1 sent, waiting for the acceptor's proof */
        BUS_AUTH_ACCEPT_SENT, /* accepted: step 2 sent, waiting for the dialer's proof */
        BUS_AUTH_DONE,        /* every message on the connection carries a tag */
};

struct bus_connection {
        int fd;
        uint32_t generation;
        bool active;
        bool closing;
        bool recv_pending;
        bool recv_paused; /* no free message to receive into; resumed on tick */
        bool send_pending;
        bool connect_pending; /* outgoing: the connect uses recv_completion */
        bool outgoing;        /* we connected, to replica `replica` */
        bool established;     /* replica `replica`'s connection, announced by on_peer_connected */
        bool received;        /* at least one message was delivered */
        bool warned_identity; /* logged once that a replica message did not identify it */
        bool backup;          /* `tally backup` (peer_auth.h): checkpoint reads only */
        int8_t replica;       /* the peer replica, or -1: a client or not yet identified */
        bool front_verified;  /* the message at the front of the buffer passed its tag */
        bool send_tagged;     /* send_header holds the tagged header of the message sending */
        uint8_t auth_state;   /* enum bus_auth_state */
        uint64_t last_received_ns; /* when a message was last delivered */
        uint64_t last_sent_ns;     /* when a message was last queued */
        uint64_t auth_deadline_ns; /* the handshake must finish by then */
        struct peer_auth_hello auth_hello;  /* the handshake so far */
        struct peer_auth_session auth_send; /* tags of messages we send */
        struct peer_auth_session auth_recv; /* tags of messages we receive */
        struct wire_header send_header;     /* the tagged copy of the header being sent */
        uint32_t send_queue_max;
        struct io_completion recv_completion;
        struct io_completion send_completion;
        struct message *recv_message;
        uint32_t recv_size;
        struct message *send_queue[BUS_SEND_QUEUE_PEER_MAX]; /* ring; send_queue_max used */
        uint32_t send_head;
        uint32_t send_count;
        uint32_t send_offset;
        char peer[64];
        /* Limits (see the top of this file). */
        bool client_budget;     /* accepted and not a replica: its queue counts in the budget */
        bool peer_slot;         /* in a reserved slot: must identify as a replica in time */
        bool read_paused;       /* paused by backpressure; logged once per episode */
        uint32_t recv_consumed; /* bytes at the front of recv_message already handled */
        uint64_t accepted_ns;
        uint64_t recv_armed_ns; /* the receive was last (re)armed: data arrived, or resumed */
};

struct bus_stats {
        uint64_t connections_accepted;
        uint64_t connections_refused; /* no free slot */
        uint64_t connections_closed_bad_input;
        uint64_t messages_received;
        uint64_t messages_dropped_invalid;
        uint64_t messages_sent;
        uint64_t messages_dropped_send_queue_full;
        uint64_t messages_dropped_no_peer; /* bus_send_to_replica without a connection */
        uint64_t peer_connects;            /* peer connections established (both directions) */
        uint64_t peer_connect_failures;    /* outgoing attempts that never connected */
        uint64_t peer_resolve_failures;
        uint64_t peer_auth_failures;     /* handshakes or message tags that failed */
        uint64_t peer_claims_refused;    /* newer connections refused a live peer's identity */
        uint64_t peer_silent_closes;     /* peer connections closed after BUS_PEER_SILENT_MS */
        uint64_t replica_messages_unauthenticated; /* replica commands off peer connections */
        uint32_t connections_active;
        uint64_t refusals[BUS_REFUSAL_COUNT];
};

/* Rate limit of one kind of refusal's log line. */
struct bus_refusal_log {
        uint64_t warn_after_ns;
        uint64_t suppressed; /* logged at debug since the last warning */
};

enum bus_peer_state {
        BUS_PEER_INCOMING,   /* a lower index (it connects to us), or ourselves */
        BUS_PEER_WAITING,    /* until attempt_at_ns */
        BUS_PEER_RESOLVING,  /* the host name is being resolved */
        BUS_PEER_CONNECTING, /* `connecting` is in flight */
        BUS_PEER_CONNECTED,  /* `connection` is established */
};

struct resolver_query;

struct bus_peer {
        struct address address;       /* as configured: a literal or a name */
        enum bus_peer_state state;    /* of our outgoing connection to it */
        bus_connection_id connection; /* established, or BUS_CONNECTION_NONE */
        bus_connection_id connecting; /* the attempt in flight */
        struct resolver_query *query; /* host names only */
        uint64_t attempt_at_ns;
        uint64_t connect_deadline_ns;
        uint32_t backoff_ms;
        uint32_t failures;        /* attempts failed since the last connection */
        uint64_t connect_started_ns; /* of the attempt in flight */
        bool near;                /* the last connect took under BUS_PEER_CONNECT_NEAR_MS */
        uint64_t warn_after_ns;   /* the next failure is logged at warn from then on */
        char address_text[ADDRESS_HOST_SIZE_MAX + 16]; /* "host:port" as configured */
        char target_text[80];     /* the IP this attempt connects to */
};

/* How long the next connect attempt to `peer` may take (connect_timeout_ms: the longest). */
uint32_t bus_peer_attempt_timeout_ms(const struct bus_peer *peer, uint32_t connect_timeout_ms);

struct bus {
        struct io *io;
        struct message_pool *pool;
        struct bus_callbacks callbacks;
        u128 cluster;
        uint32_t message_size_max; /* larger messages close the connection */
        int listen_fd;
        bool accept_pending;
        bool stopping;
        struct io_completion accept_completion;
        struct bus_connection *connections; /* connections_max accepted, outgoing, reserved */
        uint32_t connections_max;           /* accepted connections at once */
        uint32_t slot_count; /* connections_max + BUS_OUTGOING_SLOTS + BUS_PEER_RESERVED_SLOTS */
        struct bus_stats stats;
        /* Replicas (bus_peers_start); replica_count 0 = clients only. */
        uint8_t replica;
        uint8_t replica_count;
        struct bus_peer peers[ADDRESSES_MAX];
        uint32_t connect_timeout_ms; /* BUS_PEER_CONNECT_TIMEOUT_MS; tests shorten it */
        bool auth;                   /* a cluster key is set: peers must prove it */
        struct peer_auth_key auth_key;
        uint64_t warn_after_ns[BUS_WARN_COUNT]; /* rate limit per kind of warning */
        uint64_t warn_suppressed[BUS_WARN_COUNT];
        uint64_t random_state;       /* backoff jitter */
        /* Limits: the BUS_*_TIMEOUT_MS constants; tests shorten them. */
        uint32_t idle_timeout_ms;
        uint32_t idle_timeout_full_ms;
        uint32_t partial_timeout_ms;
        uint32_t peer_identify_timeout_ms;
        uint32_t client_send_queued; /* on connections with client_budget */
        struct bus_refusal_log refusal_logs[BUS_REFUSAL_COUNT];
};

int bus_init(struct bus *bus, struct io *io, struct message_pool *pool, u128 cluster,
             uint32_t connections_max, const struct bus_callbacks *callbacks);
/*
 * Binds and listens; returns 0 or -errno with a log line. `bound` gets the actual address.
 */
int bus_listen(struct bus *bus, const struct address *address, struct sockaddr_storage *bound);
void bus_deinit(struct bus *bus);

/* Queues `message` (takes a reference). False if the connection is gone or its queue is full. */
bool bus_send(struct bus *bus, bus_connection_id connection, struct message *message);
void bus_close(struct bus *bus, bus_connection_id connection, const char *reason);
bool bus_connection_alive(const struct bus *bus, bus_connection_id connection);
/* Resumes paused receives and enforces the timeouts; called on every tick. */
void bus_tick(struct bus *bus);
/* Stops accepting and connecting, and closes every connection. */
void bus_stop(struct bus *bus);

/*
 * Joins the cluster: `addresses[i]` is replica i (host names are kept and resolved before every
 * connection attempt) and this process is replica `replica`. Connecting starts on the next
 * bus_tick(). Call once, after bus_init(). Returns 0, or -ENOMEM.
 */
int bus_peers_start(struct bus *bus, uint8_t replica, const struct address *addresses,
                    uint8_t replica_count);
/*
 * Requires every peer to prove `key` (call before bus_peers_start). Without it the bus
 * identifies peers by what they claim, as TigerBeetle does.
 */
void bus_auth_key_set(struct bus *bus, const struct peer_auth_key *key);
/*
 * Queues `message` (takes a reference) on the connection to `replica` (not ourselves). False,
 * and the message is dropped, if there is no connection to it or its queue is full.
 */
bool bus_send_to_replica(struct bus *bus, uint8_t replica, struct message *message);
bool bus_peer_connected(const struct bus *bus, uint8_t replica);
/*
 * True if `tally backup` opened the connection with its handshake (net/peer_auth.h,
 * PEER_AUTH_DIALER_BACKUP): only request_blocks and request_reply arrive on it.
 */
bool bus_connection_is_backup(const struct bus *bus, bus_connection_id connection);
/* The replica on a connection, or -1 for a client, an unidentified or a closed connection. */
int bus_connection_replica(const struct bus *bus, bus_connection_id connection);
/*
 * True for the commands only replicas send one another and whose header.replica is always the
 * sender, so they identify an accepted connection. Not a prepare: a replica repairing another
 * sends the stored prepare unchanged (its checksum covers header.replica), so its replica field
 * is the primary that made it, not the sender.
 */
bool bus_command_names_sender(uint8_t command);
/* "slots_full", "idle_timeout", ...: for logs and reports. */
const char *bus_refusal_name(enum bus_refusal refusal);

#endif
