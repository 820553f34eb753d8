/*
 * prefetch.c: lookups that step through cached blocks, and the reads that feed them (see
 * prefetch.h).
 */
#include "lsm/prefetch.h"

#include <string.h>

/* ---- one lookup ---------------------------------------------------------------------------- */

static void lookup_restart(struct lsm_lookup *l)
{
        l->tree_version = l->tree->version;
        l->level = 0;
        l->table = l->tree->levels[0].count;
        l->in_table = false;
        l->data.address = 0;
        l->need.address = 0;
}

void lsm_lookup_init(struct lsm_lookup *lookup, struct lsm_tree *tree, const void *key,
                     void *out)
{
        memset(lookup, 0, sizeof(*lookup));
        lookup->tree = tree;
        memcpy(lookup->key, key, tree->layout.key_size);
        lookup->out = out;
        lookup->state = LSM_LOOKUP_PENDING;
        lookup->next_waiter = -1;
        lookup_restart(lookup);
        if (lsm_tree_memtable_get(tree, key, out))
                lookup->state = LSM_LOOKUP_FOUND;
}

/* The next table that may hold the key, into l->current; false when none is left. */
static bool lookup_next_table(struct lsm_lookup *l)
{
        const struct lsm_tree *tree = l->tree;
        const struct lsm_layout *layout = &tree->layout;
        while (l->level == 0 && l->table > 0) {
                const struct lsm_table_info *t = &tree->levels[0].tables[--l->table];
                if (lsm_key_compare(layout, l->key, t->key_min) >= 0 &&
                    lsm_key_compare(layout, l->key, t->key_max) <= 0) {
                        l->current = *t;
                        return true;
                }
        }
        if (l->level == 0)
                l->level = 1;
        while (l->level < LSM_LEVELS) {
                const struct lsm_table_info *t = lsm_tree_level_find(tree, l->level, l->key);
                l->level++;
                if (t != NULL) {
                        l->current = *t;
                        return true;
                }
        }
        return false;
}

enum lsm_lookup_state lsm_lookup_step(struct lsm_lookup *l)
{
        if (l->state != LSM_LOOKUP_PENDING)
                return l->state;
        struct lsm_tree *tree = l->tree;
        if (tree->version != l->tree_version) {
                lookup_restart(l);
                if (lsm_tree_memtable_get(tree, l->key, l->out))
                        return l->state = LSM_LOOKUP_FOUND;
        }
        for (;;) {
                if (!l->in_table) {
                        if (!lookup_next_table(l))
                                return l->state = LSM_LOOKUP_ABSENT;
                        l->in_table = true;
                        l->data.address = 0;
                }
                if (l->data.address == 0) {
                        const uint8_t *index = lsm_grid_cached(tree->grid, l->current.index);
                        if (index == NULL) {
                                l->need = l->current.index;
                                return LSM_LOOKUP_PENDING;
                        }
                        if (!lsm_table_index_find(&tree->layout, index, l->key, &l->data)) {
                                l->in_table = false;
                                continue;
                        }
                }
                const uint8_t *data = lsm_grid_cached(tree->grid, l->data);
                if (data == NULL) {
                        l->need = l->data;
                        return LSM_LOOKUP_PENDING;
                }
                if (lsm_table_data_find(&tree->layout, data, l->key, l->out))
                        return l->state = LSM_LOOKUP_FOUND;
                l->in_table = false; /* an older table may hold it */
        }
}

/* ---- many lookups, shared reads -------------------------------------------------------------- */

static void advance(struct lsm_prefetch *p, uint32_t i);

static enum lsm_block_kind need_kind(const struct lsm_lookup *l)
{
        return l->need.address == l->current.index.address &&
                               l->need.checksum == l->current.index.checksum
                       ? LSM_BLOCK_TABLE_INDEX
                       : LSM_BLOCK_TABLE_DATA;
}

static void finish_maybe(struct lsm_prefetch *p)
{
        if (p->running || p->pending > 0 || p->done == NULL)
                return;
        tally_assert(p->reads_active == 0);
        void (*done)(void *context) = p->done;
        p->done = NULL;
        done(p->context);
}

static void resolved(struct lsm_prefetch *p)
{
        tally_assert(p->pending > 0);
        p->pending--;
}

/* Retries the lookups that found no free read. */
static void unblock(struct lsm_prefetch *p)
{
        int32_t chain = p->blocked;
        p->blocked = -1;
        while (chain >= 0) {
                int32_t next = p->lookups[chain].next_waiter;
                p->lookups[chain].next_waiter = -1;
                advance(p, (uint32_t)chain);
                chain = next;
        }
}

static void on_read(void *context, bool ok)
{
        struct lsm_prefetch_read *read = context;
        struct lsm_prefetch *p = read->prefetch;
        tally_assert(read->active);
        read->active = false;
        p->reads_active--;
        int32_t chain = read->waiters;
        read->waiters = -1;
        /* Every waiter steps now, while its block is surely cached, before any new read. */
        int32_t again = -1;
        while (chain >= 0) {
                struct lsm_lookup *l = &p->lookups[chain];
                int32_t next = l->next_waiter;
                l->next_waiter = -1;
                if (!ok) {
                        l->state = LSM_LOOKUP_FAULT;
                        resolved(p);
                } else if (lsm_lookup_step(l) != LSM_LOOKUP_PENDING) {
                        resolved(p);
                } else {
                        l->next_waiter = again;
                        again = chain;
                }
                chain = next;
        }
        p->running = true;
        while (again >= 0) {
                int32_t next = p->lookups[again].next_waiter;
                p->lookups[again].next_waiter = -1;
                advance(p, (uint32_t)again);
                again = next;
        }
        unblock(p);
        p->running = false;
        finish_maybe(p);
}

/* Steps lookup i until it resolves or waits for a read. */
static void advance(struct lsm_prefetch *p, uint32_t i)
{
        struct lsm_lookup *l = &p->lookups[i];
        for (;;) {
                if (lsm_lookup_step(l) != LSM_LOOKUP_PENDING) {
                        resolved(p);
                        return;
                }
                /* Join a read of the same block in flight. */
                for (uint32_t r = 0; r < LSM_GRID_READS_MAX; r++) {
                        struct lsm_prefetch_read *read = &p->reads[r];
                        if (read->active && read->ref.address == l->need.address &&
                            read->ref.checksum == l->need.checksum) {
                                l->next_waiter = read->waiters;
                                read->waiters = (int32_t)i;
                                p->stats.reads_shared++;
                                return;
                        }
                }
                struct lsm_prefetch_read *read = NULL;
                for (uint32_t r = 0; r < LSM_GRID_READS_MAX && read == NULL; r++)
                        if (!p->reads[r].active)
                                read = &p->reads[r];
                if (read == NULL) {
                        l->next_waiter = p->blocked;
                        p->blocked = (int32_t)i;
                        return;
                }
                read->prefetch = p;
                read->ref = l->need;
                read->kind = (uint8_t)need_kind(l);
                read->waiters = (int32_t)i;
                l->next_waiter = -1;
                read->active = true;
                p->reads_active++;
                enum lsm_read_start started = lsm_grid_read_start(
                        p->grid, l->need, (enum lsm_block_kind)read->kind, on_read, read);
                if (started == LSM_READ_STARTED) {
                        p->stats.reads++;
                        p->stats.in_flight_max = MAX(p->stats.in_flight_max, p->reads_active);
                        return;
                }
                read->active = false;
                read->waiters = -1;
                p->reads_active--;
                if (started == LSM_READ_FAULT) {
                        l->state = LSM_LOOKUP_FAULT;
                        resolved(p);
                        return;
                }
                if (started == LSM_READ_BUSY) {
                        /* The grid's reads or cache ways are all busy: after the next read. */
                        tally_assert(p->reads_active > 0); /* one prefetch per grid at once */
                        l->next_waiter = p->blocked;
                        p->blocked = (int32_t)i;
                        return;
                }
                /* LSM_READ_CACHED (a synchronous device): step on. */
                p->stats.reads++;
        }
}

void lsm_prefetch_start(struct lsm_prefetch *p, struct lsm_grid *grid, struct lsm_lookup *lookups,
                        uint32_t count, void (*done)(void *context), void *context)
{
        tally_assert(count <= INT32_MAX);
        memset(p, 0, sizeof(*p));
        p->grid = grid;
        p->lookups = lookups;
        p->count = count;
        p->pending = count;
        p->blocked = -1;
        p->done = done;
        p->context = context;
        for (uint32_t r = 0; r < LSM_GRID_READS_MAX; r++)
                p->reads[r].waiters = -1;
        p->running = true;
        for (uint32_t i = 0; i < count; i++) {
                lookups[i].next_waiter = -1;
                advance(p, i);
        }
        p->running = false;
        finish_maybe(p);
}

bool lsm_prefetch_busy(const struct lsm_prefetch *p)
{
        return p->done != NULL;
}
