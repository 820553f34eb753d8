/*
 * ledger_table.h: open-addressing hash tables from a u128 id to a position (ledger-internal).
 *
 * Linear probing over a power-of-two array of 8-byte slots, at most half full (so an absent id
 * is found absent after about 1.5 probes). A slot holds 32 bits of the key's hash as a
 * fingerprint and a 32-bit reference: position + 1 in the object array, or TABLE_REF_FAILED |
 * (index + 1) in failed_ids[]; 0 is an empty slot. The fingerprint lets most probes finish
 * without touching the object array. Deletion (only on a chain rollback) shifts later entries
 * back, so there are no tombstones and the layout depends only on the sequence of operations.
 */
#ifndef TALLY_LEDGER_TABLE_H
#define TALLY_LEDGER_TABLE_H

static inline uint64_t table_hash(u128 id)
{
        /* A fixed mixer (murmur3's finaliser over both halves): deterministic, no seed. */
        uint64_t h = (uint64_t)id ^ ((uint64_t)(id >> 64) * 0x9E3779B97F4A7C15ull);
        h ^= h >> 33;
        h *= 0xFF51AFD7ED558CCDull;
        h ^= h >> 33;
        h *= 0xC4CEB9FE1A85EC53ull;
        h ^= h >> 33;
        return h;
}

static inline u128 table_key(const struct ledger *ledger, const struct id_table *table,
                             uint32_t ref)
{
        if (table == &ledger->accounts_table) return ledger->accounts[ref - 1].id;
        if (ref & TABLE_REF_FAILED) return ledger->failed_ids[(ref & ~TABLE_REF_FAILED) - 1];
        return ledger->transfers[ref - 1].id;
}

/* The reference stored for `id`, or 0 if the table does not hold it. */
static inline uint32_t table_find(const struct ledger *ledger, const struct id_table *table,
                                  u128 id)
{
        uint64_t h = table_hash(id);
        uint32_t fingerprint = (uint32_t)(h >> 32);
        uint64_t i = h & table->mask;
        for (uint64_t probe = 0; probe <= table->mask; probe++) {
                uint64_t slot = table->slots[i];
                if (slot == 0) return 0;
                if ((uint32_t)(slot >> 32) == fingerprint) {
                        uint32_t ref = (uint32_t)slot;
                        if (table_key(ledger, table, ref) == id) return ref;
                }
                i = (i + 1) & table->mask;
        }
        return 0;
}

/* Inserts an id known to be absent. */
static inline void table_insert(struct id_table *table, u128 id, uint32_t ref)
{
        tally_assert(ref != 0);
        tally_assert(table->count < (table->mask + 1) / 2);
        uint64_t h = table_hash(id);
        uint64_t i = h & table->mask;
        while (table->slots[i] != 0) i = (i + 1) & table->mask;
        table->slots[i] = ((h >> 32) << 32) | ref;
        table->count++;
}

/* Removes an id known to be present. */
static inline void table_remove(const struct ledger *ledger, struct id_table *table, u128 id)
{
        uint64_t h = table_hash(id);
        uint32_t fingerprint = (uint32_t)(h >> 32);
        uint64_t i = h & table->mask;
        for (;;) {
                uint64_t slot = table->slots[i];
                tally_assert(slot != 0);
                if ((uint32_t)(slot >> 32) == fingerprint &&
                    table_key(ledger, table, (uint32_t)slot) == id)
                        break;
                i = (i + 1) & table->mask;
        }
        /* Backward-shift deletion: move up every later entry of the cluster whose home slot is
         * not cyclically within (i, j]. */
        uint64_t j = i;
        for (;;) {
                j = (j + 1) & table->mask;
                uint64_t slot = table->slots[j];
                if (slot == 0) break;
                uint64_t home = table_hash(table_key(ledger, table, (uint32_t)slot)) & table->mask;
                bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
                if (stays) continue;
                table->slots[i] = slot;
                i = j;
        }
        table->slots[i] = 0;
        tally_assert(table->count > 0);
        table->count--;
}

static inline uint32_t account_find(const struct ledger *ledger, u128 id)
{
        return table_find(ledger, &ledger->accounts_table, id); /* position + 1, or 0 */
}

#endif
