/*
 * tree.h: one LSM tree of fixed-size values (docs/storage.md, "One tree").
 *
 * Why: the ledger's objects and indexes must live on disk with a memory cost that does not grow
 * with them, and every write must be cheap whatever order keys arrive in (transfer ids are
 * random). A tree takes the values of one bar (a fixed number of ops) into a memtable in
 * memory; at the end of the bar the memtable is sorted and written as level-0 tables; when a
 * level holds more tables than its budget, compaction merges them into the next level. Reads
 * look in the memtable, then the levels from newest to oldest: the newest version of a key wins.
 *
 * Levels: level 0 holds flushed tables, whose key ranges may overlap (newest last), up to a fill
 * of LSM_LEVEL0_FILL_MAX (lsm_tree_level0_fill: its runs, a run being tables in key order that
 * do not overlap, as one flush's are, or its tables over those of one full flush, whichever is
 * more); level i >= 1 holds non-overlapping tables sorted by key, up to
 * LSM_GROWTH_FACTOR^i of them (twice that for filtered layouts: lsm_tree_level_budget). Compaction of level 0 first moves down, unchanged, each table
 * that overlaps no other level-0 table and no level-1 table, then merges the rest with the
 * tables of level 1 they overlap; compaction of level i >= 1 takes one table (round robin over the key space) and
 * merges it with the tables of level i + 1 it overlaps, or moves it down unchanged when it
 * overlaps none (tables of keys that only grow, like timestamps, are never rewritten). Blocks of
 * replaced tables are released to the grid, free after the next checkpoint.
 *
 * Flushes are synchronous; compaction runs as a job that advances by a budget of values per
 * call (lsm_tree_compact_step: a beat's share), so that no single op pays for a whole merge,
 * or, with a compactor, merges on the worker's thread while beats grant its values. Values are never deleted (the ledger
 * only inserts and updates), so there are no tombstones yet.
 */
#ifndef TALLY_LSM_TREE_H
#define TALLY_LSM_TREE_H

#include "lsm/table.h"

#define LSM_LEVELS 7u
/*
 * Level 0 is measured by its fill (lsm_tree_level0_fill), not by its tables: a lookup looks at
 * one table per run, and the id maps' tables, whose key filters fill their index blocks, are
 * small (35,464 ids): a full flush makes four of them. Counted in tables, level 0 of an id map
 * took two flushes before a job merged it into the whole of level 1 (random keys overlap all of
 * it): at 20 M transfers 9.04 values merged per id, against 4.81 counted in runs, and twice
 * the index trees' (whose flushes make one table each, so their fill is unchanged).
 */
#define LSM_LEVEL0_FILL_MAX 8u
/* Past this fill writes have outpaced compaction: the embedder compacts the whole tree at once
 * (back-pressure), and lsm_tree_compaction_pace paces jobs to end before it. A tree's own
 * budget (lsm_tree.level0_budget, LSM_LEVEL0_FILL_MAX unless its embedder sets another) and
 * stall point (lsm_tree_level0_stall, twice that) are what the code uses. */
#define LSM_LEVEL0_FILL_STALL (2u * LSM_LEVEL0_FILL_MAX)
/* Level 0's runs are tracked up to this many (a lookup then looks at one table per run); past
 * it, the fill counts tables and lookups look at every table. */
#define LSM_LEVEL0_RUNS_TRACKED 64u
#define LSM_GROWTH_FACTOR 8u

struct lsm_level {
        struct lsm_table_info *tables;
        uint32_t count;
        uint32_t capacity;
        uint64_t value_count; /* of its tables */
};

struct lsm_tree_stats {
        uint64_t flushes;
        uint64_t tables_written;
        uint64_t tables_moved; /* moved down a level without a rewrite */
        uint64_t compactions;
        uint64_t values_compacted; /* values read by compactions */
        uint64_t values_in_runs;   /* of those, handed to the table builder in runs of 2 or more */
        uint64_t puts;             /* values put into the memtable */
};

/* The compaction in progress: inputs stay visible to lookups until it installs its output. */
struct lsm_merge;
struct lsm_compaction {
        bool active;
        uint32_t from; /* the level whose tables are merged into from + 1 */
        uint32_t upper_count;
        uint32_t overlap_first; /* in level from + 1 */
        uint32_t overlap_count;
        struct lsm_table_info *inputs; /* upper, then overlapping */
        struct lsm_merge *merge;       /* the inputs' cursors */
        uint64_t values_total;         /* in the inputs */
        uint64_t values_done;          /* merged so far (on the worker: granted so far) */
        struct lsm_stage stage;        /* the blocks it reserved (grid.h) */
        struct lsm_reserve reserve;    /* its output's addresses, taken in order */
        /* On the compaction worker (compactor.h): the loop grants values_done by beats and
         * installs once they reach values_total, waiting for the merge if need be. */
        bool on_worker;
        bool merged;      /* in the loop: every value merged, grants go on until values_total */
        bool worker_done; /* under the compactor's mutex */
        bool worker_ok;
        bool worker_damaged; /* it failed reading a block (a peer may hold a good copy) */
        int cancel;       /* __atomic: the loop drops the job; the worker stops soon */
        uint64_t values_in_runs; /* the job's values handed over in runs */
        /* Input values the worker has merged, an older version of a key dropped or written,
         * as the grants count them (the worker's own). */
        uint64_t worker_merged;
        uint64_t worker_granted; /* values_done for the worker to read (__atomic) */
        bool worker_urgent;      /* the loop waits for it (under the compactor's mutex) */
        uint64_t worker_progress; /* worker_merged as of its last chunk (under that mutex) */
        uint64_t blocks_written; /* by the worker's grid, for the loop's counts */
        uint64_t blocks_read;
        char worker_error[192];
        /* Copies of the index blocks the worker wrote, for the loop's cache at install (up to
         * LSM_JOB_KEPT_MAX; lookups read the others). */
        uint8_t **kept;
        struct lsm_block_ref *kept_refs;
        uint32_t kept_count;
};

#define LSM_JOB_KEPT_MAX 512u /* 32 MiB at most, for a merge into 512 tables or more */

struct lsm_tree {
        char name[32];
        struct lsm_layout layout;
        struct lsm_grid *grid;
        /*
         * Memtable: values in arrival order; `hash` maps a key to its position (+1) in the low
         * `hash_position_bits`, with the high bits of the key's hash above (a probe compares a
         * value only when they match). Layouts with insert_only have no hash: lookups binary
         * search the sorted view.
         */
        uint8_t *memtable;
        uint32_t memtable_count;
        uint32_t memtable_max;
        /*
         * Values the memtable takes before lsm_tree_has_room says no: memtable_max less an
         * eighteenth per (tree id mod 9), up to 44 %. Trees that fill at the same rate (a transfer's id, its
         * object and every index) would otherwise all flush in the same op, whose latency is
         * then the sum of their flushes; staggered, their flushes fall on different ops.
         */
        uint32_t room_max;
        uint32_t *hash;
        uint32_t hash_mask;
        uint32_t hash_position_bits;
        uint32_t *sorted;      /* positions in key order, valid while !sorted_dirty */
        uint32_t sorted_count; /* the sorted view's length: one position per key, the newest */
        bool sorted_dirty;
        bool in_order;         /* every value appended had a larger key than the one before */
        uint64_t *sort_scratch; /* 2 x memtable_max: (key prefix, position) for a radix sort */
        uint32_t filter_offset_legacy; /* lsm_table_filter_offset_legacy if filtered, else 0 */
        uint8_t *filter_pages; /* filtered: a block's room for filter pages read past the cache */
        uint32_t budget_scale;         /* lsm_tree_level_budget */
        /* Level 0's fill before a job starts: LSM_LEVEL0_FILL_MAX, or larger for a tree whose
         * every flush overlaps all of level 1 and that no lookup reads by key (the ledger's
         * trees keyed by account: LEDGER_LEVEL0_BUDGET_BY_ACCOUNT); scans pay for it. */
        uint32_t level0_budget;
        struct lsm_level levels[LSM_LEVELS];
        /* Level 0's runs: the index of each run's first table, oldest run first (level0_runs
         * says how many; LSM_LEVEL0_RUNS_TRACKED + 1 when there are more than that). */
        uint32_t level0_run_start[LSM_LEVEL0_RUNS_TRACKED];
        uint32_t level0_runs;
        uint32_t level0_flush_tables; /* tables a full memtable flushes into (at least 1) */
        /* Tables that count one in level 0's fill: level0_flush_tables for filtered layouts
         * (a flush adds one), 1 for others (their fill is their tables, as their budget always
         * counted). */
        uint32_t level0_tables_per_fill;
        uint8_t compact_cursor[LSM_LEVELS][LSM_KEY_SIZE_MAX]; /* round robin per level */
        bool compact_cursor_set[LSM_LEVELS];
        struct lsm_table_builder builder;       /* the compaction job's output */
        struct lsm_level built;                 /* tables the job produced so far */
        struct lsm_table_builder flush_builder; /* memtable flushes (while a job runs too) */
        struct lsm_compaction job;
        /* Tests: compactions merge through the heap one value at a time (merge_run_bulk writes
         * the same tables; test_tree_bulk_merge compares them). */
        bool merge_heap_only;
        /* Set: jobs merge on this worker (compactor.h); NULL: in the loop, by beats. */
        struct lsm_compactor *compactor;
        /* A grant waits for the worker to come within this many values of it (job_grant);
         * lsm_tree_init sets it, tests make it small. */
        uint64_t worker_keep_up_lag;
        struct lsm_tree_stats stats;
        uint64_t version; /* changes with every put, flush, compaction: lookups restart */
};

struct lsm_compactor;

/* Reserves the memtable (memtable_max values) and tables' bookkeeping. 0 or -ENOMEM. */
int lsm_tree_init(struct lsm_tree *tree, const char *name, const struct lsm_layout *layout,
                  struct lsm_grid *grid, uint32_t memtable_max);
void lsm_tree_deinit(struct lsm_tree *tree);

/* True if the memtable can take `count` more values (else flush first). */
bool lsm_tree_has_room(const struct lsm_tree *tree, uint32_t count);
/* Inserts or replaces (same key) a value in the memtable, which must have room. */
void lsm_tree_put(struct lsm_tree *tree, const void *value);
/*
 * A hint that a value of `key` will be put soon: starts loading the memtable's hash slot, so
 * that a loop putting many random keys overlaps their cache misses. Changes nothing.
 */
void lsm_tree_put_prefetch(const struct lsm_tree *tree, const void *key);
/*
 * The second stage of that hint, a few puts or lookups later, once the slot is loaded: starts
 * loading the memtable value the slot points at (an update of the key compares it, a lookup
 * copies it). Changes nothing.
 */
void lsm_tree_value_prefetch(const struct lsm_tree *tree, const void *key);

/* The memtable's value of `key` into `out`; false if the memtable does not hold it. */
bool lsm_tree_memtable_get(const struct lsm_tree *tree, const void *key, void *out);
/*
 * Level 0's fill, which its budget (lsm_tree_level_budget) and stall point count: its runs, or
 * its tables divided by level0_tables_per_fill (rounded up), whichever is more. A flush adds
 * one to a filtered layout's fill at most, as many as its tables to another's.
 */
uint32_t lsm_tree_level0_fill(const struct lsm_tree *tree);
/* In level >= 1: the table whose key range holds `key`, or NULL. */
const struct lsm_table_info *lsm_tree_level_find(const struct lsm_tree *tree, uint32_t level,
                                                 const void *key);

/* 1 and the newest value of `key` in `out`, 0 if absent, -1 on a read fault (grid->error). */
int lsm_tree_get(struct lsm_tree *tree, const void *key, void *out);
/*
 * Reads together the blocks that lookups of `count` keys (`stride` bytes apart) will read
 * first: for each key not in the memtable, the index block of the newest table whose range
 * holds it, then the data block that index names (lsm_grid_prefetch; what does not read is
 * left to the lookup). Changes no answer; for a query's results, read one after another.
 */
void lsm_tree_get_prefetch(struct lsm_tree *tree, const void *keys, size_t stride,
                           uint32_t count);

/*
 * The first step of many point lookups of keys that are usually absent (new ids): maybe[i] is
 * false when the tree cannot hold the i-th of `count` keys (`stride` bytes apart, keys not
 * values): every table whose range holds it has a cached index block whose filter rules it
 * out, and the memtable does not hold it. True otherwise (lsm_tree_get says). Valid until the
 * tree changes (tree->version). The keys are sorted once and each level-0 run and deeper level
 * walked in key order, its filters probed with their cache misses overlapped, then the memtable
 * the same way: asked one key at a time (lsm_tree_get), finding each key's tables and probing
 * their filters was 31 % of the loop's time at 10 M transfers stored. Layouts without filters
 * (and a level 0 of untracked runs) say true for every key.
 *
 * With `candidates` (room for `count`), each key that a table's filter lets through also names
 * the data block of that table which a lookup of it reads (the first such table met, one per
 * key): *candidate_count of them, for lsm_grid_prefetch to read at once.
 */
void lsm_tree_may_contain(struct lsm_tree *tree, const void *keys, size_t stride,
                          uint32_t count, bool *maybe, struct lsm_block_ref *candidates,
                          uint32_t *candidate_count);

/*
 * Calls `visit` with every value whose key is in [key_min, key_max] (either NULL: unbounded), in
 * key order or reversed, the newest version of each key only, until `visit` returns false.
 * Returns the values visited, or -1 on a read fault (grid->error).
 */
int64_t lsm_tree_scan(struct lsm_tree *tree, const void *key_min, const void *key_max,
                      bool reversed, bool (*visit)(void *context, const void *value),
                      void *context);

/*
 * A pull cursor over the newest version of each key in [key_min, key_max] (NULL: unbounded), in
 * order or reversed, that can also seek forward (reversed: backward) to a key: what an
 * intersection of index scans needs. The tree must not change while it is open. Opening it, and
 * a seek, read the blocks its level-0 tables and levels start in together (lsm_grid_prefetch)
 * rather than one after another.
 */
struct lsm_tree_cursor {
        struct lsm_tree *tree;
        struct lsm_merge *merge;
        uint8_t bound_min[LSM_KEY_SIZE_MAX];
        uint8_t bound_max[LSM_KEY_SIZE_MAX];
};
int lsm_tree_cursor_open(struct lsm_tree_cursor *cursor, struct lsm_tree *tree,
                         const void *key_min, const void *key_max, bool reversed);
void lsm_tree_cursor_close(struct lsm_tree_cursor *cursor);
/* The current value; NULL at the end or after a read fault (lsm_tree_cursor_failed). */
const void *lsm_tree_cursor_value(struct lsm_tree_cursor *cursor);
void lsm_tree_cursor_next(struct lsm_tree_cursor *cursor);
/* Moves to the first key >= `key` (reversed: the last key <= `key`); never moves back. */
void lsm_tree_cursor_seek(struct lsm_tree_cursor *cursor, const void *key);
bool lsm_tree_cursor_failed(const struct lsm_tree_cursor *cursor);

/* Writes the memtable as level-0 tables and empties it. False on a write fault. */
bool lsm_tree_flush(struct lsm_tree *tree);
/* Compacts until every level is within its budget. False on a read or write fault. */
bool lsm_tree_compact(struct lsm_tree *tree);
/*
 * Does at most `budget` values of compaction work (a beat's share), going on with the job in
 * progress or starting the next; *idle when no level is over its budget. Flushes may happen
 * between steps; lookups and scans always see either the inputs or the installed output.
 * False on a read or write fault (the job is abandoned, its inputs untouched).
 */
bool lsm_tree_compact_step(struct lsm_tree *tree, uint64_t budget, bool *idle);

/*
 * The compaction work (values) this op must do so that the job in progress, and the jobs the
 * levels over their budget still need after it, end before level 0 passes twice its budget,
 * given that `values_put` values went into the memtable since the last call: twice those values
 * in proportion to those puts against the values the tree can still take before the flush that
 * would take it there, at most the job's remaining values (all of them once none); 0 without a
 * job. A pace that follows the writes: a flat budget per op let a merge of level 0 into a level 1
 * of millions of random keys fall behind, and the op that found level 0 full did the rest at
 * once (6.9 M values, 892 ms, at 10 M transfers stored).
 */
uint64_t lsm_tree_compaction_pace(const struct lsm_tree *tree, uint64_t values_put);
/* The same with level 0's limit at a fill of `stall` instead (a tree catching up, ledger_state.c). */
uint64_t lsm_tree_compaction_pace_to(const struct lsm_tree *tree, uint64_t values_put,
                                     uint32_t stall);
/*
 * The compaction worker's part (compactor.c calls it on its thread): merges the next chunk of
 * the tree's job through `grid` (the worker's) into the job's reserved addresses; true once
 * the job is done, its result in the job (worker_ok). Touches nothing the loop uses meanwhile.
 */
bool lsm_tree_job_merge_step(struct lsm_tree *tree, struct lsm_grid *grid);
uint64_t lsm_tree_value_count_on_disk(const struct lsm_tree *tree); /* incl. older versions */
/* Restoring a manifest: appends a table to a level (tables come in the level's order). */
void lsm_tree_table_append(struct lsm_tree *tree, uint32_t level,
                           const struct lsm_table_info *table);
/*
 * Tables level `level` holds before compaction (level 0: its fill before a job starts; its
 * stall point is LSM_LEVEL0_FILL_STALL). A filtered layout's tables hold about half the keys 7 bits per key
 * gave them (table.h), so its budgets of levels 1 and deeper count
 * LSM_TABLE_FILTER_BITS_PER_KEY_MIN / LSM_TABLE_FILTER_BITS_PER_KEY_LEGACY times the tables
 * (budget_scale): those levels hold the values they did. With half the values per level, the
 * id maps reached a fourth level at 20 M transfers instead of 40 M, each a merge of about nine
 * values per value moved down. Level 0's budget counts its fill, not tables scaled so: scaled
 * tables (twice the small tables of a lightly loaded replica's flushes, so twice the filters per
 * lookup) made a lagging backup of the partition suite catch up too slowly twice in CI
 * (docs/storage.md); a light flush's one table is one run of the fill.
 */
uint32_t lsm_tree_level_budget(const struct lsm_tree *tree, uint32_t level);
/* Level 0's fill past which writes have outpaced compaction: twice its budget. */
static inline uint32_t lsm_tree_level0_stall(const struct lsm_tree *tree)
{
        return 2u * tree->level0_budget;
}

#endif
