/*
 * groove.h: one kind of object (accounts, transfers) in LSM trees: by timestamp, by id, and by
 * each indexed field, with queries served through the indexes (docs/storage.md, "Trees").
 *
 * Why: a query for ten results with a `code` or `user_data_128` filter must not read every
 * object stored. A groove keeps, besides the objects (keyed by their unique timestamp) and the id
 * map, one index tree per filterable field whose values are (field value, timestamp) pairs. A
 * query opens a cursor per filtered field over (value, [timestamp_min, timestamp_max]) and
 * intersects them by leapfrogging: the cursor that is behind seeks to the timestamp the others
 * reached, so the cost follows the results and the seeks, not the objects stored. Without a field
 * filter the objects tree is walked over the timestamp range. "Either field A or field B equals
 * v" (get_account_transfers: debit or credit account) is two leapfrogs merged by timestamp.
 *
 * Zero values are not indexed (a filter of 0 means "any field value" in every query TigerBeetle
 * has), which saves the space of unused user_data fields. Index values are 16 bytes for fields of
 * up to 8 bytes and 32 bytes for 16-byte fields.
 *
 * Objects are inserted once; an update (an account's balances, a pending transfer's status)
 * rewrites the object but never an indexed field or the id, so the indexes never need deletes.
 */
#ifndef TALLY_LSM_GROOVE_H
#define TALLY_LSM_GROOVE_H

#include "lsm/forest.h"

#define LSM_GROOVE_INDEXES_MAX 8u

struct lsm_groove_index_config {
        const char *name;
        uint16_t offset; /* of the field in the object */
        uint8_t size;    /* 1, 2, 4, 8 or 16 bytes, little-endian */
        /* Level 0's budget of its tree (lsm_tree.level0_budget); 0: LSM_LEVEL0_FILL_MAX. */
        uint32_t level0_budget;
};

struct lsm_groove_config {
        const char *name;
        uint8_t tree_base; /* trees base (objects), base + 1 (ids), base + 2 + i (index i) */
        uint16_t object_size;
        uint16_t id_offset;        /* u128 */
        uint16_t timestamp_offset; /* u64, unique and never 0 */
        uint32_t index_count;
        struct lsm_groove_index_config indexes[LSM_GROOVE_INDEXES_MAX];
        uint32_t memtable_max;          /* objects per bar */
        uint32_t table_data_blocks_max; /* 0: the default (tests make small tables) */
        /* Objects are never updated (lsm_groove_update is not used): no memtable hash. */
        bool objects_insert_only;
        /* Bytes of the object cache (below); 0: none. */
        uint64_t cache_bytes;
};

/*
 * The object cache: the latest version of recently inserted, updated or looked-up objects, by
 * id, in fixed memory (set-associative, CLOCK eviction within a set). Why: a lookup by id
 * through the trees is an id-map lookup then an object lookup, each a few block searches, and
 * the hot accounts of a payment system are looked up by every batch; a hit is one probe. The
 * trees stay the truth: the cache holds nothing they do not (every update writes through it; a
 * new object, whose id no entry can hold, is cached only if its creator says it will be read
 * soon) and forgetting it changes no answer, so it is neither checkpointed nor the same on
 * every replica.
 */
#define LSM_GROOVE_CACHE_WAYS 8u

struct lsm_groove_cache {
        uint32_t set_count; /* a power of two; 0: no cache */
        uint32_t *tags;     /* per way: a hash of the id, 0 if empty */
        uint8_t *referenced;
        uint8_t *hands;     /* per set */
        uint8_t *objects;   /* per way: object_size bytes */
        uint64_t hits, misses;
};

struct lsm_groove {
        struct lsm_groove_config config;
        struct lsm_layout layouts[2 + LSM_GROOVE_INDEXES_MAX];
        struct lsm_tree objects;
        struct lsm_tree ids;
        struct lsm_tree indexes[LSM_GROOVE_INDEXES_MAX];
        struct lsm_groove_cache cache;
        /* lsm_groove_ids_may_contain's data blocks to read (grown to the largest batch). */
        struct lsm_block_ref *id_candidates;
        uint32_t id_candidates_max;
};

int lsm_groove_init(struct lsm_groove *groove, const struct lsm_groove_config *config,
                    struct lsm_grid *grid);
void lsm_groove_deinit(struct lsm_groove *groove);
void lsm_groove_add_to_forest(struct lsm_groove *groove, struct lsm_forest *forest);

/* Room for `count` more objects in this bar (else flush first). */
bool lsm_groove_has_room(const struct lsm_groove *groove, uint32_t count);
void lsm_groove_insert(struct lsm_groove *groove, const void *object);
/* A hint that `object` will be inserted soon (lsm_tree_put_prefetch of its hashed trees). */
void lsm_groove_insert_prefetch(const struct lsm_groove *groove, const void *object);
/* The object with the same id and timestamp changed in fields that are not indexed. */
void lsm_groove_update(struct lsm_groove *groove, const void *object);

/*
 * The id map alone: 1 and the id's timestamp in *timestamp, 0 if absent, -1 on a read fault.
 * A timestamp of 0 is a marker the caller put there with lsm_groove_put_id (the ledger marks
 * ids burned by a transient failure so).
 */
int lsm_groove_get_id(struct lsm_groove *groove, u128 id, uint64_t *timestamp);
/*
 * lsm_tree_may_contain for the id map (`ids` are u128s `stride` bytes apart), then the data
 * blocks that the lookups of the ids it may hold will read are read into the cache at once
 * (lsm_grid_prefetch): one at a time, in the lookups, those reads were 30 % of the loop's time
 * at 70-80 M transfers stored, where they go to the disk.
 */
void lsm_groove_ids_may_contain(struct lsm_groove *groove, const void *ids, size_t stride,
                                uint32_t count, bool *maybe);
void lsm_groove_put_id(struct lsm_groove *groove, u128 id, uint64_t timestamp);
/* 1 and the object in `out`, 0 if absent, -1 on a read fault (grid->error). */
int lsm_groove_get_by_timestamp(struct lsm_groove *groove, uint64_t timestamp, void *out);
/* Through the object cache first. */
int lsm_groove_get_by_id(struct lsm_groove *groove, u128 id, void *out);
/*
 * A hint that the object cache is asked for `id`, or updated with it, soon: its set's tags
 * (`near` false), then, a few objects later, the way whose tag matches (`near`). Changes nothing.
 */
void lsm_groove_cache_prefetch(const struct lsm_groove *groove, u128 id, bool near);
/* The object cache alone: true and the object in `out` if it holds `id`. */
bool lsm_groove_cached(struct lsm_groove *groove, u128 id, void *out);
/* Remembers `object`, just read from the trees or inserted, in the object cache. */
void lsm_groove_cache_put(struct lsm_groove *groove, const void *object);

bool lsm_groove_flush(struct lsm_groove *groove);
bool lsm_groove_compact(struct lsm_groove *groove);

struct lsm_groove_filter {
        bool present[LSM_GROOVE_INDEXES_MAX]; /* filter on index i's field ... */
        u128 value[LSM_GROOVE_INDEXES_MAX];   /* ... equal to this (never 0) */
        /*
         * Either of two fields equal to either_value (either_count 2; 0: none): a union, as
         * get_account_transfers asks for (debit_account_id = X or credit_account_id = X), with
         * every other filter still applied to both.
         */
        uint32_t either_count;
        uint32_t either[2];
        u128 either_value;
        uint64_t timestamp_min;               /* 0: no bound */
        uint64_t timestamp_max;               /* 0: no bound */
        bool reversed;
        uint32_t limit;
};

struct lsm_groove_query_stats {
        uint64_t steps; /* cursor moves and seeks */
        uint64_t seeks;
};

/*
 * The objects matching every filter, in timestamp order (or reversed), at most `limit`, into
 * `out` (limit x object_size bytes). Returns how many, or -1 on a read fault (grid->error).
 */
int64_t lsm_groove_query(struct lsm_groove *groove, const struct lsm_groove_filter *filter,
                         void *out, struct lsm_groove_query_stats *stats);

#endif
