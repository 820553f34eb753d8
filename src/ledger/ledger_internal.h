/*
 * ledger_internal.h: the ledger's state, shared by the files of src/ledger/ only.
 *
 * The state lives in LSM trees on a grid of blocks (docs/storage.md), so memory does not grow
 * with it:
 *
 * - accounts: a groove (lsm/groove.h) of Account objects by timestamp, with the id map and an
 *   index per query field (user_data_128/64/32, ledger, code).
 * - transfers: a groove of Transfer objects, with the id map (which also marks ids burned by a
 *   transient failure, with timestamp 0) and indexes on debit_account_id, credit_account_id,
 *   user_data_128/64/32, ledger and code (get_account_transfers, query_transfers).
 * - status: (timestamp, status) of every pending transfer: pending, posted, voided, expired.
 * - expiry: (expires_at, timestamp) of every pending transfer with a timeout, scanned in order
 *   by the pulse from a cursor; entries of transfers posted or voided since are skipped there.
 * - history: (account id, timestamp) -> the account's balances after that transfer, for
 *   accounts with flags.history (get_account_balances).
 * - counters (accounts, transfers, the last timestamps, the expiry cursor) in the checkpoint's
 *   root block.
 *
 * Execution is synchronous: a create batch reads the objects it names through a working set
 * (ledger_state.c), which loads each from the trees once (block cache, then the device) and
 * keeps every change of the operation; a linked chain that fails is undone from the working
 * set's undo log. When the operation ends, the changed objects go into the trees' memtables.
 * The trees are flushed and compacted when a memtable could not take the next operation's worst
 * case, and at every checkpoint: both are functions of the operations executed, never of time or
 * I/O, so replicas that execute the same operations write the same blocks.
 */
#ifndef TALLY_LEDGER_INTERNAL_H
#define TALLY_LEDGER_INTERNAL_H

#include "ledger/ledger.h"
#include "lsm/compactor.h"
#include "lsm/device_memory.h"
#include "lsm/groove.h"
#include "wire/types.h"

#define LEDGER_MAX63 ((uint64_t)INT64_MAX)
#define LEDGER_NS_PER_S 1000000000ull

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

/* Tree ids in the forest (stable: they are written into every block and the manifest). */
enum ledger_tree {
        LEDGER_TREE_ACCOUNTS = 0,   /* 0 objects, 1 ids, 2..6 indexes */
        LEDGER_TREE_TRANSFERS = 8,  /* 8 objects, 9 ids, 10..16 indexes */
        LEDGER_TREE_STATUS = 20,
        LEDGER_TREE_EXPIRY = 21,
        LEDGER_TREE_HISTORY = 22,
};

/* Index numbers of the transfers groove (lsm_groove_filter.present[]). */
enum {
        TRANSFER_INDEX_DEBIT_ACCOUNT = 0,
        TRANSFER_INDEX_CREDIT_ACCOUNT = 1,
        TRANSFER_INDEX_USER_DATA_128 = 2,
        TRANSFER_INDEX_USER_DATA_64 = 3,
        TRANSFER_INDEX_USER_DATA_32 = 4,
        TRANSFER_INDEX_LEDGER = 5,
        TRANSFER_INDEX_CODE = 6,
        TRANSFER_INDEX_COUNT = 7,
};
/* ... and of the accounts groove. */
enum {
        ACCOUNT_INDEX_USER_DATA_128 = 0,
        ACCOUNT_INDEX_USER_DATA_64 = 1,
        ACCOUNT_INDEX_USER_DATA_32 = 2,
        ACCOUNT_INDEX_LEDGER = 3,
        ACCOUNT_INDEX_CODE = 4,
        ACCOUNT_INDEX_COUNT = 5,
};

struct status_value {
        uint64_t timestamp; /* key */
        uint8_t status;     /* enum transfer_status */
        uint8_t reserved[7];
};
_Static_assert(sizeof(struct status_value) == 16, "status value size");

struct expiry_value {
        uint64_t expires_at; /* key: (expires_at, timestamp) */
        uint64_t timestamp;
};
_Static_assert(sizeof(struct expiry_value) == 16, "expiry value size");

struct history_value {
        u128 account_id;    /* key: (account_id, timestamp) */
        uint64_t timestamp; /* of the transfer */
        uint64_t reserved;
        u128 debits_pending;
        u128 debits_posted;
        u128 credits_pending;
        u128 credits_posted;
};
_Static_assert(sizeof(struct history_value) == 96, "history value size");

/* Everything that is not in a tree; kept in the checkpoint's root block. */
struct ledger_counters {
        uint64_t account_count;
        uint64_t transfer_count;
        uint64_t failed_count;
        uint64_t history_count;
        uint64_t pending_live;
        uint64_t account_timestamp_last; /* 0: no account yet */
        uint64_t transfer_timestamp_last;
        /* The pulse has handled every expiry entry up to (expires_at, timestamp). */
        uint64_t expiry_done_expires_at;
        uint64_t expiry_done_timestamp;
        uint64_t reserved[7];
};
_Static_assert(sizeof(struct ledger_counters) == 128, "counters size");

/* ---- the working set (ledger_state.c) ----------------------------------------------------- */

enum ws_kind { WS_ACCOUNT = 1, WS_TRANSFER = 2 };
enum ws_state {
        WS_ABSENT = 0,  /* looked up: no such object */
        WS_PRESENT = 1, /* the object */
        WS_FAILED = 2,  /* a transfer id burned by a transient failure */
};

struct ws_entry {
        u128 id;
        uint8_t kind;
        uint8_t state;
        bool created;      /* by this operation: inserted, not updated */
        bool dirty;        /* the object changed */
        uint8_t status;    /* transfers: enum transfer_status (pending transfers only) */
        bool status_dirty;
        uint8_t reserved[2];
        uint32_t undo_chain; /* the chain whose undo log saved this entry last */
        uint32_t reserved_1;
        union {
                struct wire_account account;
                struct wire_transfer transfer;
        } object;
};

struct ws_undo {
        uint32_t entry;
        uint8_t state;
        bool created;
        bool dirty;
        uint8_t status;
        bool status_dirty;
        uint8_t reserved[7];
        union {
                struct wire_account account;
                struct wire_transfer transfer;
        } object;
};

/*
 * Entries one operation can touch: per event its transfer, a pending transfer, two accounts
 * (a post's accounts are the pending transfer's), with room to spare.
 */
#define WS_ENTRIES_MAX (8u * LEDGER_BATCH_EVENTS_MAX)
#define WS_SLOTS (2u * 65536u) /* hash slots, a power of two > 2 x WS_ENTRIES_MAX */

struct working_set {
        struct ws_entry *entries;
        uint32_t count;
        uint32_t *slots; /* entry index + 1, 0: empty */
        struct ws_undo *undo;
        uint32_t undo_count;
        uint32_t chain; /* the open chain's number, 0: none */
        /* In creation order: accounts and transfers created (entry indexes). */
        uint32_t *created_accounts;
        uint32_t created_account_count;
        uint32_t *created_transfers;
        uint32_t created_transfer_count;
        /* Balances after each transfer, for accounts with flags.history. */
        struct history_value *history;
        uint32_t history_count;
        /* Expiry entries of pending transfers whose chain committed. */
        struct expiry_value *expiry;
        uint32_t expiry_count;
        /* Ids burned by a transient failure. */
        u128 *failed;
        uint32_t failed_count;
        /*
         * Of the batch's events (ws_transfers_hint): false if the id map cannot hold the
         * event's id (so it is new, unless an earlier event of the batch named it: the working
         * set says). Valid while the id map's version is `id_maybe_version` and for the first
         * id_maybe_count events.
         */
        bool *id_maybe;
        uint32_t id_maybe_count;
        uint64_t id_maybe_version;
};

/* What ledger_execute_finish still has to do for the op ledger_execute_begin ran. */
enum ledger_finish {
        LEDGER_FINISH_NONE = 0, /* nothing begun (or a pulse, done at once) */
        LEDGER_FINISH_READ,     /* the compaction beat */
        LEDGER_FINISH_ACCOUNTS, /* the working set's writes, then the beat */
        LEDGER_FINISH_TRANSFERS /* and the next expiry */
};

struct ledger {
        struct ledger_config config;
        uint64_t memory_bytes;
        enum ledger_finish finish;
        uint32_t finish_events; /* the op's events, for ws_reserve in ledger_execute_finish */

        struct lsm_device_memory memory_device; /* when the config names no device */
        struct lsm_grid grid;
        struct lsm_compactor compactor; /* running if config.compaction_worker (and it could) */
        struct lsm_forest forest;
        struct lsm_groove accounts;
        struct lsm_groove transfers;
        struct lsm_layout status_layout, expiry_layout, history_layout;
        struct lsm_tree status;
        struct lsm_tree expiry;
        struct lsm_tree history;

        struct ledger_counters counters;
        uint64_t forced_compactions; /* tree_backpressure compacted a whole tree at once */
        uint64_t beat_puts[LSM_FOREST_TREES_MAX]; /* each tree's stats.puts at the last beat */
        bool compaction_deferred; /* ledger_defer_compaction: beats and back-pressure wait */
        /*
         * After a deferral, a tree whose level 0 ended over its budget catches up paced
         * against this fill of level 0 rather than its stall point (lsm_tree_level0_stall), and
         * back-pressure waits until level 0 passes it (0: not catching up).
         */
        uint32_t catch_up_stall[LSM_FOREST_TREES_MAX];
        /* Counters as the open chain found them (restored by a rollback). */
        struct ledger_counters chain_counters;
        uint32_t chain_created_accounts;
        uint32_t chain_created_transfers;
        uint32_t chain_history;
        /* The earliest expires_at among entries after the expiry cursor (UINT64_MAX: none). */
        uint64_t expiry_next;

        struct working_set ws;

        /* Scratch: create results of one batch, or the objects a query selects. */
        uint8_t *scratch;
        bool chain_open;
        /* A read fault (a damaged or unreadable block): the state cannot go on. */
        char fault[256];
};

/* ---- ledger_state.c ----------------------------------------------------------------------- */

int ledger_state_init(struct ledger *ledger);
void ledger_state_deinit(struct ledger *ledger);
/* Empties every tree and counter: the state of a fresh ledger (the grid is forgotten). */
void ledger_state_reset(struct ledger *ledger);

/* The account / transfer named `id`, loaded into the working set (state says if it exists). */
/*
 * A hint that the batch looks up account `id` a few events from now (create_batch): the working
 * set's slot and the object cache's set, then (`near`) its way. Changes nothing.
 */
void ws_account_hint(struct ledger *ledger, u128 id, bool near);
struct ws_entry *ws_account(struct ledger *ledger, u128 id);
struct ws_entry *ws_transfer(struct ledger *ledger, u128 id);
/* The same, for the id of a transfer being created (usually absent: the id map first). */
struct ws_entry *ws_transfer_new(struct ledger *ledger, u128 id, uint32_t event);
/*
 * Before a batch of `count` transfers (128 bytes each, the id first): asks the id map about
 * every id at once (lsm_tree_may_contain), for ws_transfer_new's `event`.
 */
void ws_transfers_hint(struct ledger *ledger, const uint8_t *events, uint32_t count);
/* About to change `entry`: saves it in the open chain's undo log (once per chain). */
void ws_touch(struct ledger *ledger, struct ws_entry *entry);
/* Creates an account / a transfer (its entry must be absent). */
void ws_account_create(struct ledger *ledger, struct ws_entry *entry,
                       const struct wire_account *account);
void ws_transfer_create(struct ledger *ledger, struct ws_entry *entry,
                        const struct wire_transfer *transfer, uint8_t status);
void ws_history_append(struct ledger *ledger, const struct wire_account *account,
                       uint64_t timestamp);
void ws_failed(struct ledger *ledger, struct ws_entry *entry);

void ws_chain_begin(struct ledger *ledger);
void ws_chain_commit(struct ledger *ledger);
void ws_chain_rollback(struct ledger *ledger);
/* Before an operation that creates up to `events` objects: room in every memtable. */
void ws_reserve(struct ledger *ledger, uint32_t events);
/* Flushes and compacts every tree whole (between operations; bulk loads). */
void ledger_flush(struct ledger *ledger);
/* An operation ended: each tree's share of compaction (config.beat_values). */
void ledger_beat(struct ledger *ledger);
/* The operation ended: every change into the trees; the working set is emptied. */
void ws_commit(struct ledger *ledger);

/* True if an account / transfer has exactly `timestamp` (created before or in this batch). */
bool ledger_account_timestamp_exists(struct ledger *ledger, uint64_t timestamp);
bool ledger_transfer_timestamp_exists(struct ledger *ledger, uint64_t timestamp);

/* The status of a pending transfer (by its timestamp) in the trees. */
uint8_t ledger_status_get(struct ledger *ledger, uint64_t timestamp);
/* Recomputes expiry_next from the expiry tree. */
void ledger_expiry_next_update(struct ledger *ledger);

/* A read fault is fatal for a replica's state: logs what and where, and aborts. */
_Noreturn void ledger_fault(struct ledger *ledger, const char *what);

/* ---- ledger_create.c, ledger_query.c ------------------------------------------------------ */

void ledger_create_accounts_batch(struct ledger *ledger, uint64_t timestamp,
                                  const uint8_t *events, uint32_t count,
                                  struct wire_create_result *results, uint32_t *result_count);
void ledger_create_transfers_batch(struct ledger *ledger, uint64_t timestamp,
                                   const uint8_t *events, uint32_t count,
                                   struct wire_create_result *results, uint32_t *result_count);
void ledger_pulse(struct ledger *ledger, uint64_t timestamp);

uint32_t ledger_lookup_accounts(struct ledger *ledger, const uint8_t *ids, uint32_t count,
                                uint8_t *out);
uint32_t ledger_lookup_transfers(struct ledger *ledger, const uint8_t *ids, uint32_t count,
                                 uint8_t *out);
uint32_t ledger_get_account_transfers(struct ledger *ledger, const uint8_t *filter,
                                      uint32_t result_max, uint8_t *out);
uint32_t ledger_get_account_balances(struct ledger *ledger, const uint8_t *filter,
                                     uint32_t result_max, uint8_t *out);
uint32_t ledger_query_accounts(struct ledger *ledger, const uint8_t *filter,
                               uint32_t result_max, uint8_t *out);
uint32_t ledger_query_transfers(struct ledger *ledger, const uint8_t *filter,
                                uint32_t result_max, uint8_t *out);

#ifdef TALLY_DEBUG
void ledger_check_invariants(struct ledger *ledger);
#endif

#endif
