/*
 * backup.c: `tally backup` copies a live cluster's newest durable checkpoint into a checked
 * backup file (cli/backup_file.h), without stopping or pausing any replica.
 *
 * How: it connects to one replica as a *backup* (net/peer_auth.h, PEER_AUTH_DIALER_BACKUP:
 * it proves the cluster key when the cluster has one, and is never taken for a replica), and
 * asks for the checkpoint the way a syncing replica does: request_blocks for each chunk of its
 * image (every grid block the checkpoint needs, the root first, BACKUP_BLOCK_SIZE bytes each),
 * then request_reply for each session's cached reply. A durable checkpoint is committed state
 * and its blocks never change: the copy is consistent whatever the cluster does meanwhile.
 *
 * The source checkpoints every 256 ops, which under load can be every fraction of a second,
 * faster than a large checkpoint is copied. So unlike state sync (which starts over when its
 * source checkpoints) the copy keeps the old checkpoint: the first request pins the source's
 * durable checkpoint for this connection (ledger_hold: its blocks are not reused by later
 * checkpoints until the connection closes), and every later request reads that one. Only the
 * sessions' replies are not pinned (a reply slot is reused by the second checkpoint after its
 * own): they are fetched as soon as the root block, which holds the session table, has
 * arrived, within milliseconds,
 * and if they are gone all the same the copy starts over from a newer checkpoint (at most
 * BACKUP_RESTARTS_MAX times), as it does if another backup takes the pin.
 *
 * Which replica: with more than one, a backup (not the primary) when one answers, so that
 * the primary's loop, which every request goes through, never serves chunks; the cluster
 * commits with the primary and any other backup meanwhile. --replica picks one.
 *
 * Cost to the source: BACKUP_WINDOW requests outstanding at most, each one chunk (15 blocks,
 * 960 KiB; with --development's 32 KiB messages a part of a block) read from its data file,
 * checked and checksummed in its loop.
 *
 * Then the file is read back from disk, every checksum checked, and the ledger loaded and its
 * invariants verified (backup_file.h). Exit status 0 only if all of that passed.
 */
#include "cli/backup_file.h"
#include "cli/cli.h"
#include "io/address.h"
#include "io/io.h"
#include "ledger/ledger.h"
#include "lib/flags.h"
#include "net/peer_auth.h"
#include "vsr/replica.h"
#include "wire/checksum.h"
#include "wire/header.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Chunk requests outstanding at once: enough to keep the link busy, few enough that the
 * source's loop does at most this many chunk reads between other work. */
#define BACKUP_WINDOW 4u
/* A source that checkpoints faster than we copy: give up after this many fresh starts. */
#define BACKUP_RESTARTS_MAX 16u
/* No answer for this long: ask again (a dropped answer), on the same connection. */
#define BACKUP_RESEND_MS 2000u
/* A source silent for this long: give up on it. */
#define BACKUP_SILENT_MS 10000u

struct backup_link {
        int fd;
        u128 cluster;
        uint8_t replica;
        bool keyed;
        struct peer_auth_session send;
        struct peer_auth_session recv;
        _Alignas(16) uint8_t buffer[WIRE_MESSAGE_SIZE_MAX];
};

static struct backup_link link_;

static int64_t now_ms(void)
{
        return (int64_t)(io_monotonic_ns() / 1000000u);
}

static int link_write(struct backup_link *l, const void *data, size_t size)
{
        const uint8_t *p = data;
        while (size > 0) {
                ssize_t n = send(l->fd, p, size, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                size -= (size_t)n;
        }
        return 0;
}

/* Reads exactly `size` bytes by `deadline_ms`; 0, -1 on error or close, -2 on timeout. */
static int link_read(struct backup_link *l, void *data, size_t size, int64_t deadline_ms)
{
        uint8_t *p = data;
        while (size > 0) {
                int64_t wait = deadline_ms - now_ms();
                if (wait <= 0)
                        return -2;
                struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
                int ready = poll(&pfd, 1, (int)wait);
                if (ready < 0 && errno == EINTR)
                        continue;
                if (ready <= 0)
                        return ready == 0 ? -2 : -1;
                ssize_t n = recv(l->fd, p, size, 0);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                size -= (size_t)n;
        }
        return 0;
}

/* Sends a header-and-body message, tagged under the session key on a keyed link. */
static int link_send(struct backup_link *l, struct wire_header *h, const void *body)
{
        uint32_t body_size = h->size - WIRE_HEADER_SIZE;
        wire_header_set_checksum_body(h, body, body_size);
        wire_header_set_checksum(h);
        struct wire_header copy = *h;
        if (l->keyed)
                copy.checksum = peer_auth_tag(&l->send, h, body);
        if (link_write(l, &copy, sizeof(copy)) != 0 || link_write(l, body, body_size) != 0)
                return -1;
        return 0;
}

/*
 * The next message into l->buffer, checked (tag on a keyed link, then both checksums and the
 * cluster). 0, -1 (closed or invalid: the reason in `why`), -2 (nothing by the deadline).
 */
static int link_receive(struct backup_link *l, int64_t deadline_ms, const char **why)
{
        struct wire_header *h = (struct wire_header *)l->buffer;
        int rc = link_read(l, h, WIRE_HEADER_SIZE, deadline_ms);
        if (rc != 0) {
                *why = "the replica closed the connection";
                return rc;
        }
        if (h->size < WIRE_HEADER_SIZE || h->size > WIRE_MESSAGE_SIZE_MAX) {
                *why = "a message of an impossible size";
                return -1;
        }
        rc = link_read(l, l->buffer + WIRE_HEADER_SIZE, h->size - WIRE_HEADER_SIZE,
                       deadline_ms + (int64_t)BACKUP_SILENT_MS);
        if (rc != 0) {
                *why = "the replica closed the connection in the middle of a message";
                return -1;
        }
        if (l->keyed && h->command != PEER_AUTH_COMMAND) {
                u128 tag = peer_auth_tag(&l->recv, h, l->buffer + WIRE_HEADER_SIZE);
                uint8_t expected[16], received[16];
                memcpy(expected, &tag, 16);
                memcpy(received, &h->checksum, 16);
                if (!peer_auth_equal(expected, received)) {
                        *why = "a message failed authentication";
                        return -1;
                }
                wire_header_set_checksum(h);
        }
        if (!wire_header_checksum_valid(h) ||
            !wire_body_checksum_valid(h, l->buffer + WIRE_HEADER_SIZE) ||
            h->cluster != l->cluster) {
                *why = "a message failed its checksum or names another cluster";
                return -1;
        }
        return 0;
}

static void link_close(struct backup_link *l)
{
        if (l->fd >= 0)
                close(l->fd);
        l->fd = -1;
}

/*
 * Connects to replica `replica` and runs the backup handshake. 0, or -1 with the reason; a
 * reason that no other replica would change (a key mismatch) sets *fatal.
 */
static int link_open(struct backup_link *l, struct address *address, uint8_t replica,
                     u128 cluster, const struct peer_auth_key *key, char *error,
                     size_t error_size, bool *fatal)
{
        memset(&l->send, 0, sizeof(l->send));
        memset(&l->recv, 0, sizeof(l->recv));
        l->fd = -1;
        l->cluster = cluster;
        l->replica = replica;
        l->keyed = false;
        char reason[256];
        if (address_resolve(address, reason, sizeof(reason)) != 0) {
                snprintf(error, error_size, "replica %u: %s", replica, reason);
                return -1;
        }
        l->fd = socket(address->sockaddr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l->fd < 0 || connect(l->fd, (const struct sockaddr *)&address->sockaddr,
                                 address->sockaddr_size) != 0) {
                snprintf(error, error_size, "replica %u (%s:%u): cannot connect: %s", replica,
                         address->host, address->port, strerror(errno));
                link_close(l);
                return -1;
        }
        int one = 1;
        setsockopt(l->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct peer_auth_hello hello;
        memset(&hello, 0, sizeof(hello));
        memcpy(hello.magic, PEER_AUTH_MAGIC, sizeof(hello.magic));
        hello.step = 1;
        hello.dialer = (uint8_t)PEER_AUTH_DIALER_BACKUP;
        hello.acceptor = replica;
        if (!peer_auth_random(hello.nonce_dial, sizeof(hello.nonce_dial))) {
                snprintf(error, error_size, "no random bytes from the kernel");
                link_close(l);
                return -1;
        }
        struct wire_header *h = (struct wire_header *)l->buffer;
        peer_auth_hello_message(h, cluster, (uint8_t)PEER_AUTH_DIALER_BACKUP, &hello);
        const char *why = NULL;
        if (link_write(l, l->buffer, h->size) != 0 ||
            link_receive(l, now_ms() + (int64_t)BACKUP_SILENT_MS, &why) != 0) {
                snprintf(error, error_size,
                         "replica %u closed the backup handshake (%s; a tally without backup "
                         "support, or another cluster id?)",
                         replica, why != NULL ? why : "cannot send");
                link_close(l);
                return -1;
        }
        const struct peer_auth_hello *answer = NULL;
        if (h->command == PEER_AUTH_COMMAND)
                answer = peer_auth_hello_parse(h, &why);
        if (answer == NULL || answer->step != 2 || answer->acceptor != replica ||
            !peer_auth_equal(answer->nonce_dial, hello.nonce_dial)) {
                snprintf(error, error_size, "replica %u answered the handshake wrongly",
                         replica);
                link_close(l);
                return -1;
        }
        bool keyless = (answer->flags & PEER_AUTH_FLAG_NO_KEY) != 0;
        if (keyless && key != NULL) {
                snprintf(error, error_size,
                         "replica %u has no cluster key, yet --cluster-key-file was given "
                         "(a replica without the key proves nothing: drop the flag only if "
                         "the cluster runs without a key)",
                         replica);
                *fatal = true;
                link_close(l);
                return -1;
        }
        if (keyless)
                return 0;
        if (key == NULL) {
                snprintf(error, error_size,
                         "replica %u requires the cluster key: pass --cluster-key-file", replica);
                *fatal = true;
                link_close(l);
                return -1;
        }
        hello = *answer;
        uint8_t expected[16];
        peer_auth_proof(key, cluster, &hello, false, expected);
        if (!peer_auth_equal(expected, hello.proof)) {
                snprintf(error, error_size,
                         "replica %u does not hold this cluster key (the same file as the "
                         "replicas' --cluster-key-file?)",
                         replica);
                *fatal = true;
                link_close(l);
                return -1;
        }
        hello.step = 3;
        peer_auth_proof(key, cluster, &hello, true, hello.proof);
        peer_auth_hello_message(h, cluster, (uint8_t)PEER_AUTH_DIALER_BACKUP, &hello);
        if (link_write(l, l->buffer, h->size) != 0) {
                snprintf(error, error_size, "replica %u closed the connection", replica);
                link_close(l);
                return -1;
        }
        peer_auth_session(key, cluster, &hello, true, &l->send);
        peer_auth_session(key, cluster, &hello, false, &l->recv);
        l->keyed = true;
        return 0;
}

static int request_send(struct backup_link *l, uint8_t command,
                        const struct replica_sync_fields *f)
{
        _Alignas(16) struct wire_header h;
        wire_header_init(&h, command, l->cluster, 0, WIRE_RELEASE_SERVER, 0);
        memcpy(h.raw, f, sizeof(*f));
        h.size = WIRE_HEADER_SIZE;
        return link_send(l, &h, NULL);
}

/* The copy in progress, of one checkpoint of the source. */
struct copy {
        struct replica_sync_fields checkpoint; /* op, size, anchor, timestamp, root */
        uint8_t *image;
        uint64_t capacity;
        uint64_t have;     /* bytes received in order */
        uint64_t next;     /* the next offset to ask for */
        uint32_t chunk;    /* the source's chunk size, from its first answer */
        uint32_t outstanding;
        uint32_t restarts;
        uint32_t view;     /* the source's view, from its answers */
        uint64_t bytes_received;
        struct replica_checkpoint_session sessions[REPLICA_CLIENTS_MAX];
        struct message_slot {
                uint8_t *data; /* malloc'd copy of the reply */
                uint32_t size;
        } replies[REPLICA_CLIENTS_MAX];
        uint64_t replies_missing;
};

static void copy_replies_free(struct copy *c)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                free(c->replies[i].data);
                c->replies[i].data = NULL;
        }
        c->replies_missing = 0;
}

/* A block answer; 1 when it started a new checkpoint, 0 otherwise, -1 on error. */
static int copy_on_block(struct copy *c, const struct wire_header *h, const uint8_t *body,
                         char *error, size_t error_size)
{
        struct replica_sync_fields f;
        memcpy(&f, h->raw, sizeof(f));
        uint32_t size = h->size - WIRE_HEADER_SIZE;
        c->view = h->view;
        bool same = f.checkpoint_op == c->checkpoint.checkpoint_op &&
                    f.size == c->checkpoint.size && c->checkpoint.size != 0 &&
                    f.root_address == c->checkpoint.root_address &&
                    f.root_checksum == c->checkpoint.root_checksum;
        if (!same && f.offset != 0)
                return 0; /* an answer about a checkpoint we no longer copy */
        int started = 0;
        if (!same) {
                if (c->checkpoint.size != 0 && ++c->restarts > BACKUP_RESTARTS_MAX) {
                        snprintf(error, error_size,
                                 "the source checkpointed %u times during the copy; copy when "
                                 "the load is lower (a copy must finish within a checkpoint "
                                 "interval of the cluster's ops)",
                                 c->restarts - 1);
                        return -1;
                }
                if (f.size == 0 || size == 0 || size > f.size) {
                        snprintf(error, error_size, "the source has no checkpoint yet");
                        return -1;
                }
                if (f.size % BACKUP_BLOCK_SIZE != 0 || f.root_address == 0) {
                        snprintf(error, error_size,
                                 "the source's checkpoint image is malformed (%llu bytes, root "
                                 "block %llu)",
                                 (unsigned long long)f.size, (unsigned long long)f.root_address);
                        return -1;
                }
                if (f.size > c->capacity) {
                        uint8_t *grown = realloc(c->image, f.size);
                        if (grown == NULL) {
                                snprintf(error, error_size, "out of memory for %llu bytes",
                                         (unsigned long long)f.size);
                                return -1;
                        }
                        c->image = grown;
                        c->capacity = f.size;
                }
                c->checkpoint = f;
                c->checkpoint.offset = 0;
                c->chunk = size;
                c->have = 0;
                c->next = 0;
                copy_replies_free(c);
                started = 1;
        }
        if (f.offset != c->have || size > f.size - f.offset ||
            (size != c->chunk && f.offset + size != f.size))
                return started; /* a duplicate (first chunks after a restart), or stale */
        memcpy(c->image + f.offset, body, size);
        c->have += size;
        c->next = MAX(c->next, c->have);
        c->bytes_received += size;
        return started;
}

/* Asks for chunks until BACKUP_WINDOW are outstanding. */
static int copy_request_chunks(struct backup_link *l, struct copy *c)
{
        while (c->outstanding < BACKUP_WINDOW &&
               (c->checkpoint.size == 0 ? c->outstanding == 0 : c->next < c->checkpoint.size)) {
                struct replica_sync_fields f = {.checkpoint_op = c->checkpoint.checkpoint_op,
                                                .offset = c->next,
                                                .root_address = c->checkpoint.root_address,
                                                .root_checksum = c->checkpoint.root_checksum};
                if (request_send(l, COMMAND_REQUEST_BLOCKS, &f) != 0)
                        return -1;
                c->outstanding++;
                if (c->checkpoint.size == 0)
                        break; /* the chunk size is not known before the first answer */
                c->next += c->chunk;
        }
        return 0;
}

static int copy_request_replies(struct backup_link *l, struct copy *c)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (!(c->replies_missing & (1ull << i)))
                        continue;
                struct replica_sync_fields f = {.checkpoint_op = c->checkpoint.checkpoint_op,
                                                .slot = c->sessions[i].slot,
                                                .checksum = c->sessions[i].reply_checksum};
                if (request_send(l, COMMAND_REQUEST_REPLY, &f) != 0)
                        return -1;
        }
        return 0;
}

static void copy_on_reply(struct copy *c, const struct wire_header *h)
{
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (!(c->replies_missing & (1ull << i)) ||
                    c->sessions[i].reply_checksum != h->checksum)
                        continue;
                c->replies[i].data = malloc(h->size);
                if (c->replies[i].data == NULL)
                        return;
                memcpy(c->replies[i].data, h, h->size);
                c->replies[i].size = h->size;
                c->replies_missing &= ~(1ull << i);
        }
}

/*
 * The root block (the image's first) is here: it is the one the source named, and its session
 * table says which replies the checkpoint needs.
 */
static int copy_sessions_known(struct copy *c)
{
        struct lsm_block_ref root = {.address = c->checkpoint.root_address,
                                     .checksum = c->checkpoint.root_checksum};
        if (lsm_block_check(c->image, root, LSM_BLOCK_ROOT) != NULL ||
            replica_checkpoint_sessions(c->image, BACKUP_BLOCK_SIZE, c->sessions) != 0)
                return -1;
        c->replies_missing = 0;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (c->sessions[i].used)
                        c->replies_missing |= 1ull << i;
        }
        return 0;
}

/* Starts over from the source's current durable checkpoint (a new pin). */
static void copy_forget(struct copy *c)
{
        copy_replies_free(c);
        memset(&c->checkpoint, 0, sizeof(c->checkpoint));
        c->have = c->next = 0;
        c->outstanding = 0;
}

/*
 * Copies the source's durable checkpoint, which it pins for us (see start.c), and its replies,
 * asked for as soon as the session table is here: a reply stays in its slot only until the
 * second checkpoint after its own. 0 when whole; -1 with the reason. `primary_check`: return
 * 1 as soon as the source turns out to be the primary.
 */
static int copy_run(struct backup_link *l, struct copy *c, uint8_t replica_count,
                    bool primary_check, char *error, size_t error_size)
{
        int64_t last_progress = now_ms();
        bool replies_asked = false;
        uint32_t reply_timeouts = 0;
        if (copy_request_chunks(l, c) != 0)
                goto closed;
        for (;;) {
                bool image_done = c->checkpoint.size != 0 && c->have == c->checkpoint.size;
                if (image_done && replies_asked && c->replies_missing == 0)
                        return 0;
                const char *why = NULL;
                int rc = link_receive(l, now_ms() + (int64_t)BACKUP_RESEND_MS, &why);
                if (rc == -1) {
                        snprintf(error, error_size, "replica %u: %s", l->replica, why);
                        return -1;
                }
                if (rc == -2) {
                        if (now_ms() - last_progress > (int64_t)BACKUP_SILENT_MS) {
                                snprintf(error, error_size, "replica %u stopped answering",
                                         l->replica);
                                return -1;
                        }
                        if (image_done && ++reply_timeouts >= 2) {
                                /* Its replies were overwritten: copy a newer checkpoint. */
                                copy_forget(c);
                                c->restarts++;
                                replies_asked = false;
                                reply_timeouts = 0;
                        }
                        /* An answer was dropped (the source was short of buffers): ask again
                         * for what we lack. */
                        c->outstanding = 0;
                        c->next = c->have;
                        if (copy_request_chunks(l, c) != 0 ||
                            (replies_asked && copy_request_replies(l, c) != 0))
                                goto closed;
                        continue;
                }
                const struct wire_header *h = (const struct wire_header *)l->buffer;
                if (h->command == COMMAND_REPLY && replies_asked) {
                        copy_on_reply(c, h);
                        last_progress = now_ms();
                        continue;
                }
                if (h->command != COMMAND_BLOCK)
                        continue;
                struct replica_sync_fields fields;
                memcpy(&fields, h->raw, sizeof(fields));
                if (fields.checkpoint_op == 0) {
                        snprintf(error, error_size,
                                 "replica %u has no durable checkpoint yet (a replica writes one "
                                 "every 256 ops, 64 with --development; until then there is "
                                 "nothing to back up)",
                                 l->replica);
                        return -2;
                }
                last_progress = now_ms();
                if (c->outstanding > 0)
                        c->outstanding--;
                int started = copy_on_block(c, h, l->buffer + WIRE_HEADER_SIZE, error,
                                            error_size);
                if (started < 0)
                        return -1;
                if (primary_check && replica_count > 1 && h->view % replica_count == l->replica)
                        return 1;
                if (started == 1)
                        replies_asked = false; /* another checkpoint: its own replies */
                if (!replies_asked && c->have >= BACKUP_BLOCK_SIZE) {
                        if (copy_sessions_known(c) != 0) {
                                snprintf(error, error_size,
                                         "the source's first block is not the root it names, "
                                         "or has no valid session table");
                                return -1;
                        }
                        replies_asked = true;
                        if (copy_request_replies(l, c) != 0)
                                goto closed;
                }
                if (copy_request_chunks(l, c) != 0)
                        goto closed;
        }
closed:
        snprintf(error, error_size, "replica %u closed the connection", l->replica);
        return -1;
}

/* The copy as a backup file's contents (replies back to back, in session order). */
static int copy_contents(const struct copy *c, u128 cluster, uint8_t replica,
                         uint8_t replica_count, struct backup_contents *out)
{
        memset(out, 0, sizeof(*out));
        struct backup_header *h = &out->header;
        h->cluster = cluster;
        h->checkpoint_op = c->checkpoint.checkpoint_op;
        h->checkpoint_timestamp = c->checkpoint.timestamp;
        h->checkpoint_prepare_checksum = c->checkpoint.prepare_checksum;
        h->block_count = c->checkpoint.size / BACKUP_BLOCK_SIZE;
        h->root_address = c->checkpoint.root_address;
        h->root_checksum = c->checkpoint.root_checksum;
        h->created_realtime_ns = io_realtime_ns();
        h->source_replica = replica;
        h->source_replica_count = replica_count;
        uint64_t replies_size = 0;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++)
                replies_size += c->sessions[i].used ? c->replies[i].size : 0;
        out->image = c->image;
        out->replies = malloc(replies_size + 1);
        if (out->replies == NULL)
                return -1;
        for (uint32_t i = 0; i < REPLICA_CLIENTS_MAX; i++) {
                if (!c->sessions[i].used)
                        continue;
                memcpy(out->replies + h->replies_size, c->replies[i].data, c->replies[i].size);
                h->replies_size += c->replies[i].size;
                h->reply_count++;
        }
        return 0;
}

static struct copy copy_;

/* Tries each replica in turn (a backup first, see the top of the file). */
static int backup_copy(struct address *addresses, uint32_t count, int32_t only, u128 cluster,
                       const struct peer_auth_key *key, uint8_t *source, char *error,
                       size_t error_size)
{
        bool avoid_primary = only < 0 && count > 1;
        for (uint32_t attempt = 0; attempt < 2 * count; attempt++) {
                uint8_t replica = only >= 0 ? (uint8_t)only : (uint8_t)(attempt % count);
                if (attempt >= count)
                        avoid_primary = false; /* no backup answered: the primary will do */
                bool fatal = false;
                if (link_open(&link_, &addresses[replica], replica, cluster, key, error,
                              error_size, &fatal) != 0) {
                        if (fatal || only >= 0)
                                return -1;
                        fprintf(stderr, "backup: %s; trying another replica\n", error);
                        continue;
                }
                /* Two replicas' roots differ in their replies' checksums: never mix them. */
                copy_forget(&copy_);
                int rc = copy_run(&link_, &copy_, (uint8_t)count, avoid_primary, error,
                                  error_size);
                link_close(&link_);
                if (rc == 0) {
                        *source = replica;
                        return 0;
                }
                if (rc == 1) {
                        fprintf(stderr, "backup: replica %u is the primary; copying from a "
                                        "backup instead\n",
                                replica);
                        continue;
                }
                if (only >= 0 || rc == -2)
                        return -1; /* no checkpoint anywhere yet: every replica says the same */
                fprintf(stderr, "backup: %s; trying another replica\n", error);
        }
        if (error[0] == '\0')
                snprintf(error, error_size, "no replica served its checkpoint");
        return -1;
}

int cli_backup(int argc, char **argv)
{
        struct flag flags[] = {
                {.name = "addresses", .kind = FLAG_STRING, .required = true},
                {.name = "cluster", .kind = FLAG_U128},
                {.name = "cluster-key-file", .kind = FLAG_STRING},
                {.name = "replica", .kind = FLAG_U64},
                {.name = "accounts-max", .kind = FLAG_U64},
                {.name = "transfers-max", .kind = FLAG_U64},
        };
        const char *positional[1];
        uint32_t positional_count = 0;
        char error[1024] = "";
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), positional, 1, &positional_count,
                        error, sizeof(error)) != 0 ||
            positional_count != 1) {
                cli_error("backup: %s", error[0] ? error : "usage: tally backup "
                                                           "--addresses=<a,b,c> <output>");
                return 2;
        }
        struct address addresses[ADDRESSES_MAX];
        uint32_t count = 0;
        if (address_parse_list(flags[0].string, addresses, &count, error, sizeof(error)) != 0) {
                cli_error("backup: --addresses: %s", error);
                return 2;
        }
        if (flags[3].present && flags[3].u64 >= count) {
                cli_error("backup: --replica=%llu: --addresses names %u replicas",
                          (unsigned long long)flags[3].u64, count);
                return 2;
        }
        struct peer_auth_key key;
        if (flags[2].present) {
                const char *why = peer_auth_key_load(flags[2].string, &key);
                if (why != NULL) {
                        cli_error("backup: --cluster-key-file: %s", why);
                        return 2;
                }
        }
        u128 cluster = flags[1].present ? flags[1].u128 : 0;
        uint64_t started = io_monotonic_ns();
        uint8_t source = 0;
        if (backup_copy(addresses, count, flags[3].present ? (int32_t)flags[3].u64 : -1, cluster,
                        flags[2].present ? &key : NULL, &source, error, sizeof(error)) != 0) {
                cli_error("backup: %s", error);
                return 1;
        }
        double copy_s = (double)(io_monotonic_ns() - started) / 1e9;
        struct backup_contents contents;
        if (copy_contents(&copy_, cluster, source, (uint8_t)count, &contents) != 0 ||
            backup_file_write(positional[0], &contents, error, sizeof(error)) != 0) {
                cli_error("backup: %s", error[0] ? error : "out of memory");
                return 1;
        }
        uint64_t op = contents.header.checkpoint_op;
        uint64_t blocks = contents.header.block_count, size = blocks * BACKUP_BLOCK_SIZE;
        uint64_t timestamp = contents.header.checkpoint_timestamp;
        uint32_t replies = contents.header.reply_count;
        free(contents.replies);
        copy_replies_free(&copy_);
        free(copy_.image);
        copy_.image = NULL;
        printf("backup: copied checkpoint op %llu timestamp %llu (%llu bytes, %llu blocks, %u "
               "replies) from replica %u in %.3f s (%.1f MB/s, %u restarts)\n",
               (unsigned long long)op, (unsigned long long)timestamp, (unsigned long long)size,
               (unsigned long long)blocks, replies, source, copy_s,
               (double)size / 1e6 / (copy_s > 0 ? copy_s : 1e-9), copy_.restarts);
        /* What is on disk is what counts: read it back and check all of it. */
        if (backup_file_read(positional[0], &contents, error, sizeof(error)) != 0) {
                cli_error("backup: the file written does not read back: %s", error);
                return 1;
        }
        char summary[512];
        int rc = backup_verify_ledger(&contents,
                                      flags[4].present ? flags[4].u64 : 0,
                                      flags[5].present ? flags[5].u64 : 0, summary,
                                      sizeof(summary));
        backup_contents_free(&contents);
        if (rc != 0) {
                cli_error("backup: %s: %s", positional[0], summary);
                return 1;
        }
        printf("backup: verified %s: every checksum; %s\n", positional[0], summary);
        return 0;
}
