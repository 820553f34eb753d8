/*
 * ledger_internal.h: the ledger's state, shared by the files of src/ledger/ only.
 *
 * Layout (every array is reserved once in ledger_create() with mmap(MAP_NORESERVE), so a large
 * capacity costs address space, not memory, until it is used):
 *
 * - accounts[]: every account, in insertion order, which is also strictly increasing timestamp
 *   order (an imported account must be newer than every account, a cluster timestamp is newer
 *   than everything). account_index[] parallels it with the head/tail of the account's list of
 *   transfer positions.
 * - transfers[]: every transfer, append-only, in strictly increasing timestamp order for the same
 *   reason. transfer_status[] parallels it (pending status of pending transfers).
 * - failed_ids[]: ids burned by a transient failure, append-only.
 * - Two open-addressing hash tables map an id to its position: accounts_table, and
 *   transfers_table, which also holds the failed ids (tagged), so one probe answers both
 *   "exists" and "id_already_failed".
 * - chunks[]: per-account lists of transfer positions (get_account_transfers), 13 positions per
 *   64-byte chunk, doubly linked, allocated LIFO from a bump pointer.
 * - history[]: balance snapshots after each transfer, one per side whose account has
 *   flags.history, in (transfer position, side) order.
 * - expiry[]: a binary min-heap of (expires_at, timestamp, position) for pending transfers with a
 *   timeout. Entries of posted/voided transfers are left in place and dropped lazily when they
 *   surface at the top.
 *
 * Rollback of a linked chain needs no separate undo log: everything a chain creates is appended
 * at the end of these arrays, and every balance change can be undone exactly by re-reading the
 * chain's own transfers backwards (5.6, 5.8 of ledger-semantics.md).
 */
#ifndef TALLY_LEDGER_INTERNAL_H
#define TALLY_LEDGER_INTERNAL_H

#include "ledger/ledger.h"
#include "wire/types.h"

#define LEDGER_MAX63 ((uint64_t)INT64_MAX)
#define LEDGER_NS_PER_S 1000000000ull

/* Capacities are kept below 2^31 so a position fits the 31-bit reference of a table slot. */
#define LEDGER_CAPACITY_LIMIT ((1u << 31) - 2)

/* Results of a multi-batch query / lookup reply: (1 048 320 - 128) / 128. */
#define LEDGER_RESULT_MAX_MULTI 8189u
/* Results of an unbatched reply: 1 048 320 / 128. */
#define LEDGER_RESULT_MAX_SINGLE 8190u
/* Largest create batch of any operation (8190 for the unbatched forms). */
#define LEDGER_BATCH_EVENTS_MAX 8190u

enum transfer_status {
        TRANSFER_STATUS_NONE = 0,
        TRANSFER_STATUS_PENDING = 1,
        TRANSFER_STATUS_POSTED = 2,
        TRANSFER_STATUS_VOIDED = 3,
        TRANSFER_STATUS_EXPIRED = 4,
};

/* One slot: high 32 bits a fingerprint of the key's hash, low 32 bits the reference. */
struct id_table {
        uint64_t *slots;
        uint64_t mask;
        uint64_t count;
};
#define TABLE_REF_FAILED 0x80000000u

#define CHUNK_ITEMS 13u
struct edge_chunk {
        uint32_t prev;  /* chunk index + 1, 0 for none */
        uint32_t next;  /* chunk index + 1, 0 for none */
        uint32_t count; /* items used */
        uint32_t items[CHUNK_ITEMS];
};
_Static_assert(sizeof(struct edge_chunk) == 64, "edge_chunk is one cache line");

struct account_index {
        uint32_t head; /* chunk index + 1, 0 for none */
        uint32_t tail;
};

struct history_record {
        uint32_t transfer; /* position in transfers[] */
        uint32_t side;     /* 0: the debit account, 1: the credit account */
        uint64_t reserved;
        u128 debits_pending;
        u128 debits_posted;
        u128 credits_pending;
        u128 credits_posted;
};
_Static_assert(sizeof(struct history_record) == 80, "history_record size");

struct expiry_entry {
        uint64_t expires_at;
        uint64_t timestamp;
        uint32_t transfer;
        uint32_t reserved;
};
_Static_assert(sizeof(struct expiry_entry) == 24, "expiry_entry size");

struct ledger {
        struct ledger_config config;
        uint64_t memory_bytes;

        struct wire_account *accounts;
        struct account_index *account_index;
        uint32_t account_count;
        uint32_t accounts_max;
        struct id_table accounts_table;

        struct wire_transfer *transfers;
        uint8_t *transfer_status;
        uint32_t transfer_count;
        uint32_t transfers_max; /* created transfers + failed ids */
        u128 *failed_ids;
        uint32_t failed_count;
        struct id_table transfers_table;

        struct edge_chunk *chunks;
        uint32_t chunk_count;
        uint32_t chunks_max;

        struct history_record *history;
        uint64_t history_count;
        uint64_t history_max;

        struct expiry_entry *expiry;
        uint32_t expiry_count;
        uint32_t pending_live;

        /* Scratch: create results of one batch, or the positions a query selects. */
        uint32_t *scratch; /* LEDGER_BATCH_EVENTS_MAX x 8 bytes */

        /* Chain state while executing one create batch. */
        bool chain_open;
        uint32_t chain_transfer_count;
        uint64_t chain_history_count;
        uint32_t chain_account_count;
};

/* ledger_create.c */
void ledger_create_accounts_batch(struct ledger *ledger, uint64_t timestamp,
                                  const uint8_t *events, uint32_t count,
                                  struct wire_create_result *results, uint32_t *result_count);
void ledger_create_transfers_batch(struct ledger *ledger, uint64_t timestamp,
                                   const uint8_t *events, uint32_t count,
                                   struct wire_create_result *results, uint32_t *result_count);
void ledger_pulse(struct ledger *ledger, uint64_t timestamp);
void ledger_expiry_drop_stale(struct ledger *ledger);

/* ledger_query.c */
uint32_t ledger_lookup_accounts(const struct ledger *ledger, const uint8_t *ids, uint32_t count,
                                uint8_t *out);
uint32_t ledger_lookup_transfers(const struct ledger *ledger, const uint8_t *ids,
                                 uint32_t count, uint8_t *out);
uint32_t ledger_get_account_transfers(struct ledger *ledger, const uint8_t *filter,
                                      uint32_t result_max, uint8_t *out);
uint32_t ledger_get_account_balances(struct ledger *ledger, const uint8_t *filter,
                                     uint32_t result_max, uint8_t *out);
uint32_t ledger_query_accounts(const struct ledger *ledger, const uint8_t *filter,
                               uint32_t result_max, uint8_t *out);
uint32_t ledger_query_transfers(const struct ledger *ledger, const uint8_t *filter,
                                uint32_t result_max, uint8_t *out);

/*
 * In `count` 128-byte records sorted by the u64 timestamp at byte `offset`: the first index
 * whose timestamp is at least `timestamp` (with `after`: greater than it), or count.
 */
uint32_t ledger_timestamp_search(const uint8_t *objects, uint32_t count, size_t offset,
                                 uint64_t timestamp, bool after);

/* Accounts / transfers by timestamp (binary search); true if one has exactly `timestamp`. */
bool ledger_account_timestamp_exists(const struct ledger *ledger, uint64_t timestamp);
bool ledger_transfer_timestamp_exists(const struct ledger *ledger, uint64_t timestamp);

/* Drops every object: the state of a fresh ledger_create(). */
void ledger_reset(struct ledger *ledger);
void ledger_rebuild_tables(struct ledger *ledger);

#ifdef TALLY_DEBUG
void ledger_check_invariants(const struct ledger *ledger);
#endif

#include "ledger/ledger_table.h"

#endif
