/*
 * test_ledger_conformance.c: replays the golden corpus (tests/conformance/seed-*.jsonl, requests
 * recorded from TigerBeetle 0.16.68 with its exact replies) directly against the ledger.
 *
 * Each file runs against a fresh ledger. Requests get TigerBeetle's timestamps: T = max(previous
 * + 1, clock) + events, the fake clock starting near the recording date and advancing 1000 ns
 * per request. Symbolic timestamps in requests ({"$ts": recorded, "add": k}) are replaced by the
 * value this ledger gave the same object, and reply timestamps are compared structurally like
 * tests/conformance/replay.js does: one-to-one, order-preserving, exact spacing inside one
 * create request, imported timestamps exact. Everything else is compared field by field.
 *
 * The directory can be moved with TALLY_CONFORMANCE_DIR (default tests/conformance, relative to
 * the repository root where `make unit-test` runs). Each file is one test function; the number
 * of mismatching requests is printed per file, with the first differences of each.
 *
 * The JSON reader is purpose-built for the corpus lines: objects, arrays, strings without
 * escapes that matter (notes are skipped), numbers kept as text. Nesting is at most 4 deep.
 */
#include "test.h"

#include <errno.h>

#include "ledger/ledger.h"
#include "wire/multi_batch.h"
#include "wire/types.h"

#define MAX63 ((uint64_t)INT64_MAX)

/* ------------------------------------------------------------------------------------------ */
/* JSON */

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json {
        enum json_type type;
        const char *text; /* number or string contents (not terminated) */
        uint32_t length;
        const char *key; /* when a member of an object */
        uint32_t key_length;
        struct json *child;
        struct json *next;
};

static struct json *json_pool;
static size_t json_pool_used;
static size_t json_pool_size;

static struct json *json_new(void)
{
        if (json_pool_used == json_pool_size) return NULL;
        struct json *j = &json_pool[json_pool_used++];
        memset(j, 0, sizeof(*j));
        return j;
}

static const char *json_skip_space(const char *p)
{
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        return p;
}

static const char *json_parse_string(const char *p, const char **text, uint32_t *length)
{
        tally_assert(*p == '"');
        p++;
        const char *start = p;
        while (*p && *p != '"') {
                if (*p == '\\' && p[1]) p++;
                p++;
        }
        if (*p != '"') return NULL;
        *text = start;
        *length = (uint32_t)(p - start);
        return p + 1;
}

static const char *json_parse(const char *p, struct json **out, int depth)
{
        if (depth > 8) return NULL;
        p = json_skip_space(p);
        struct json *j = json_new();
        if (j == NULL) return NULL;
        *out = j;
        if (*p == '{' || *p == '[') {
                bool object = *p == '{';
                j->type = object ? JSON_OBJECT : JSON_ARRAY;
                p = json_skip_space(p + 1);
                struct json **tail = &j->child;
                if (*p == (object ? '}' : ']')) return p + 1;
                for (;;) {
                        const char *key = NULL;
                        uint32_t key_length = 0;
                        if (object) {
                                p = json_skip_space(p);
                                if (*p != '"') return NULL;
                                p = json_parse_string(p, &key, &key_length);
                                if (p == NULL) return NULL;
                                p = json_skip_space(p);
                                if (*p != ':') return NULL;
                                p++;
                        }
                        struct json *member;
                        p = json_parse(p, &member, depth + 1);
                        if (p == NULL) return NULL;
                        member->key = key;
                        member->key_length = key_length;
                        *tail = member;
                        tail = &member->next;
                        p = json_skip_space(p);
                        if (*p == ',') {
                                p++;
                                continue;
                        }
                        if (*p == (object ? '}' : ']')) return p + 1;
                        return NULL;
                }
        }
        if (*p == '"') {
                j->type = JSON_STRING;
                return json_parse_string(p, &j->text, &j->length);
        }
        if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
                j->type = JSON_BOOL;
                j->text = p;
                return p + (*p == 't' ? 4 : 5);
        }
        if (strncmp(p, "null", 4) == 0) {
                j->type = JSON_NULL;
                return p + 4;
        }
        if (*p == '-' || (*p >= '0' && *p <= '9')) {
                j->type = JSON_NUMBER;
                j->text = p;
                while (*p == '-' || (*p >= '0' && *p <= '9')) p++;
                j->length = (uint32_t)(p - j->text);
                return p;
        }
        return NULL;
}

static struct json *json_get(const struct json *object, const char *key)
{
        size_t n = strlen(key);
        for (struct json *m = object->child; m; m = m->next) {
                if (m->key_length == n && memcmp(m->key, key, n) == 0) return m;
        }
        return NULL;
}

static uint32_t json_count(const struct json *array)
{
        uint32_t n = 0;
        for (struct json *m = array->child; m; m = m->next) n++;
        return n;
}

static bool json_is(const struct json *j, const char *text)
{
        size_t n = strlen(text);
        return j && j->length == n && memcmp(j->text, text, n) == 0;
}

/* A decimal string or number as u128 (the corpus never exceeds 2^128 - 1). */
static u128 json_u128(const struct json *j)
{
        u128 v = 0;
        for (uint32_t i = 0; i < j->length; i++) {
                char c = j->text[i];
                tally_assert(c >= '0' && c <= '9');
                v = v * 10 + (u128)(c - '0');
        }
        return v;
}

static int64_t json_i64(const struct json *j)
{
        bool negative = j->length > 0 && j->text[0] == '-';
        int64_t v = 0;
        for (uint32_t i = negative ? 1 : 0; i < j->length; i++) v = v * 10 + (j->text[i] - '0');
        return negative ? -v : v;
}

static const char *u128_text(u128 v, char *buffer)
{
        char digits[48];
        int n = 0;
        do {
                digits[n++] = (char)('0' + (int)(v % 10));
                v /= 10;
        } while (v != 0);
        for (int i = 0; i < n; i++) buffer[i] = digits[n - 1 - i];
        buffer[n] = 0;
        return buffer;
}

/* ------------------------------------------------------------------------------------------ */
/* Structural timestamp map, one per file (the rules of replay.js's Timestamps). */

struct ts_pair {
        uint64_t recorded;
        uint64_t observed;
};

struct ts_group {
        uint32_t line;
        int64_t delta;
};

#define TS_MAX 65536
#define GROUP_MAX 4096
static struct ts_pair ts_pairs[TS_MAX]; /* sorted by recorded */
static uint32_t ts_count;
static struct ts_group ts_groups[GROUP_MAX];
static uint32_t ts_group_count;

static void ts_reset(void)
{
        ts_count = 0;
        ts_group_count = 0;
}

static uint32_t ts_find(uint64_t recorded)
{
        uint32_t lo = 0, hi = ts_count;
        while (lo < hi) {
                uint32_t mid = (lo + hi) / 2;
                if (ts_pairs[mid].recorded < recorded) lo = mid + 1;
                else hi = mid;
        }
        return lo;
}

static bool ts_resolve(uint64_t recorded, uint64_t *observed)
{
        uint32_t i = ts_find(recorded);
        if (i < ts_count && ts_pairs[i].recorded == recorded) {
                *observed = ts_pairs[i].observed;
                return true;
        }
        return false;
}

/* NULL if fine, else why not. `group` is the creating request's line, 0 for none. */
static const char *ts_check(uint64_t recorded, uint64_t observed, uint32_t group)
{
        static char why[160];
        if (observed == 0) return "timestamp is 0";
        if (observed > MAX63) return "timestamp above 2^63-1";
        uint32_t i = ts_find(recorded);
        bool known = i < ts_count && ts_pairs[i].recorded == recorded;
        if (known) {
                if (ts_pairs[i].observed != observed) {
                        snprintf(why, sizeof(why), "timestamp %llu differs from %llu seen before",
                                 (unsigned long long)observed,
                                 (unsigned long long)ts_pairs[i].observed);
                        return why;
                }
        } else {
                for (uint32_t k = 0; k < ts_count; k++) {
                        if (ts_pairs[k].observed == observed)
                                return "timestamp already returned for a different object";
                }
                if (i > 0 && !(ts_pairs[i - 1].observed < observed))
                        return "timestamp not after that of an object created earlier";
                if (i < ts_count && !(observed < ts_pairs[i].observed))
                        return "timestamp not before that of an object created later";
        }
        if (group != 0) {
                int64_t delta = (int64_t)(observed - recorded);
                uint32_t g = 0;
                while (g < ts_group_count && ts_groups[g].line != group) g++;
                if (g < ts_group_count) {
                        if (ts_groups[g].delta != delta) return "breaks the spacing of its request";
                } else {
                        tally_assert(ts_group_count < GROUP_MAX);
                        ts_groups[ts_group_count++] = (struct ts_group){group, delta};
                }
        }
        if (!known) {
                tally_assert(ts_count < TS_MAX);
                memmove(&ts_pairs[i + 1], &ts_pairs[i], (ts_count - i) * sizeof(ts_pairs[0]));
                ts_pairs[i] = (struct ts_pair){recorded, observed};
                ts_count++;
        }
        return NULL;
}

/* Which request created an object (kind 0 account, 1 transfer), per the recording. */
struct created {
        u128 id;
        uint32_t line;
        uint8_t kind;
        bool imported;
};
#define CREATED_MAX 16384
static struct created created[CREATED_MAX];
static uint32_t created_count;

static uint32_t created_group(uint8_t kind, u128 id)
{
        for (uint32_t i = 0; i < created_count; i++) {
                if (created[i].kind == kind && created[i].id == id) {
                        return created[i].imported ? 0 : created[i].line;
                }
        }
        return 0;
}

static void created_add(uint8_t kind, u128 id, uint32_t line, bool imported)
{
        for (uint32_t i = 0; i < created_count; i++) {
                if (created[i].kind == kind && created[i].id == id) {
                        created[i].line = line;
                        created[i].imported = imported;
                        return;
                }
        }
        tally_assert(created_count < CREATED_MAX);
        created[created_count++] = (struct created){id, line, kind, imported};
}

/* ------------------------------------------------------------------------------------------ */
/* Replay */

enum op {
        OP_CREATE_ACCOUNTS,
        OP_CREATE_TRANSFERS,
        OP_LOOKUP_ACCOUNTS,
        OP_LOOKUP_TRANSFERS,
        OP_GET_ACCOUNT_TRANSFERS,
        OP_GET_ACCOUNT_BALANCES,
        OP_QUERY_ACCOUNTS,
        OP_QUERY_TRANSFERS,
        OP_COUNT,
};

static const struct {
        const char *name;
        uint8_t operation;
        uint32_t event_size;
        uint32_t result_size;
} ops[OP_COUNT] = {
        {"create_accounts", OPERATION_CREATE_ACCOUNTS, 128, 8},
        {"create_transfers", OPERATION_CREATE_TRANSFERS, 128, 8},
        {"lookup_accounts", OPERATION_LOOKUP_ACCOUNTS, 16, 128},
        {"lookup_transfers", OPERATION_LOOKUP_TRANSFERS, 16, 128},
        {"get_account_transfers", OPERATION_GET_ACCOUNT_TRANSFERS, 128, 128},
        {"get_account_balances", OPERATION_GET_ACCOUNT_BALANCES, 128, 128},
        {"query_accounts", OPERATION_QUERY_ACCOUNTS, 64, 128},
        {"query_transfers", OPERATION_QUERY_TRANSFERS, 64, 128},
};

struct replay {
        struct ledger *ledger;
        uint64_t clock;
        uint64_t last_timestamp;
        uint32_t line;
        uint32_t diffs;
        bool unresolved;
        /* imported timestamps accepted by TigerBeetle: recorded -> sent */
        uint32_t binding_count;
        struct ts_pair bindings[8192];
};

static uint8_t request[LEDGER_BODY_SIZE_MAX];
static uint8_t reply[LEDGER_BODY_SIZE_MAX];

static void diff(struct replay *r, const char *fmt, const char *a, const char *b)
{
        if (r->diffs < 6) {
                fprintf(stderr, "    ");
                fprintf(stderr, fmt, a, b);
                fprintf(stderr, "\n");
        }
        r->diffs++;
}

/* A request field that may be a symbolic timestamp; `*recorded` gets the recorded value. */
static uint64_t field_timestamp(struct replay *r, const struct json *j, uint64_t *recorded)
{
        if (j->type == JSON_OBJECT) {
                uint64_t base = (uint64_t)json_u128(json_get(j, "$ts"));
                int64_t add = 0;
                const struct json *a = json_get(j, "add");
                if (a) add = json_i64(a);
                uint64_t observed = 0;
                if (!ts_resolve(base, &observed)) {
                        r->unresolved = true;
                        return 0;
                }
                *recorded = base + (uint64_t)add;
                return observed + (uint64_t)add;
        }
        uint64_t v = (uint64_t)json_u128(j);
        *recorded = v;
        return v;
}

static u128 field(const struct json *object, const char *key)
{
        const struct json *j = json_get(object, key);
        tally_assert(j != NULL);
        return json_u128(j);
}

static void build_account(struct replay *r, const struct json *e, uint32_t index, bool failed,
                          uint8_t *out)
{
        struct wire_account a;
        memset(&a, 0, sizeof(a));
        a.id = field(e, "id");
        a.debits_pending = field(e, "debits_pending");
        a.debits_posted = field(e, "debits_posted");
        a.credits_pending = field(e, "credits_pending");
        a.credits_posted = field(e, "credits_posted");
        a.user_data_128 = field(e, "user_data_128");
        a.user_data_64 = (uint64_t)field(e, "user_data_64");
        a.user_data_32 = (uint32_t)field(e, "user_data_32");
        a.reserved = (uint32_t)field(e, "reserved");
        a.ledger = (uint32_t)field(e, "ledger");
        a.code = (uint16_t)field(e, "code");
        a.flags = (uint16_t)field(e, "flags");
        uint64_t recorded = 0;
        a.timestamp = field_timestamp(r, json_get(e, "timestamp"), &recorded);
        if ((a.flags & ACCOUNT_FLAG_IMPORTED) && !failed && a.timestamp != 0) {
                r->bindings[r->binding_count++] = (struct ts_pair){recorded, a.timestamp};
        }
        (void)index;
        memcpy(out, &a, sizeof(a));
}

static void build_transfer(struct replay *r, const struct json *e, bool failed, uint8_t *out)
{
        struct wire_transfer t;
        memset(&t, 0, sizeof(t));
        t.id = field(e, "id");
        t.debit_account_id = field(e, "debit_account_id");
        t.credit_account_id = field(e, "credit_account_id");
        t.amount = field(e, "amount");
        t.pending_id = field(e, "pending_id");
        t.user_data_128 = field(e, "user_data_128");
        t.user_data_64 = (uint64_t)field(e, "user_data_64");
        t.user_data_32 = (uint32_t)field(e, "user_data_32");
        t.timeout = (uint32_t)field(e, "timeout");
        t.ledger = (uint32_t)field(e, "ledger");
        t.code = (uint16_t)field(e, "code");
        t.flags = (uint16_t)field(e, "flags");
        uint64_t recorded = 0;
        t.timestamp = field_timestamp(r, json_get(e, "timestamp"), &recorded);
        if ((t.flags & TRANSFER_FLAG_IMPORTED) && !failed && t.timestamp != 0) {
                r->bindings[r->binding_count++] = (struct ts_pair){recorded, t.timestamp};
        }
        memcpy(out, &t, sizeof(t));
}

static void build_account_filter(struct replay *r, const struct json *e, uint8_t *out)
{
        struct wire_account_filter f;
        memset(&f, 0, sizeof(f));
        uint64_t recorded;
        f.account_id = field(e, "account_id");
        f.user_data_128 = field(e, "user_data_128");
        f.user_data_64 = (uint64_t)field(e, "user_data_64");
        f.user_data_32 = (uint32_t)field(e, "user_data_32");
        f.code = (uint16_t)field(e, "code");
        f.timestamp_min = field_timestamp(r, json_get(e, "timestamp_min"), &recorded);
        f.timestamp_max = field_timestamp(r, json_get(e, "timestamp_max"), &recorded);
        f.limit = (uint32_t)field(e, "limit");
        f.flags = (uint32_t)field(e, "flags");
        memcpy(out, &f, sizeof(f));
}

static void build_query_filter(struct replay *r, const struct json *e, uint8_t *out)
{
        struct wire_query_filter f;
        memset(&f, 0, sizeof(f));
        uint64_t recorded;
        f.user_data_128 = field(e, "user_data_128");
        f.user_data_64 = (uint64_t)field(e, "user_data_64");
        f.user_data_32 = (uint32_t)field(e, "user_data_32");
        f.ledger = (uint32_t)field(e, "ledger");
        f.code = (uint16_t)field(e, "code");
        f.timestamp_min = field_timestamp(r, json_get(e, "timestamp_min"), &recorded);
        f.timestamp_max = field_timestamp(r, json_get(e, "timestamp_max"), &recorded);
        f.limit = (uint32_t)field(e, "limit");
        f.flags = (uint32_t)field(e, "flags");
        memcpy(out, &f, sizeof(f));
}

static bool index_failed(const struct json *expected, uint32_t index)
{
        for (struct json *x = expected->child; x; x = x->next) {
                if ((uint32_t)json_i64(json_get(x, "index")) == index) return true;
        }
        return false;
}

static void compare_create(struct replay *r, const struct json *expected, const uint8_t *results,
                           uint32_t count)
{
        uint32_t n = json_count(expected);
        char a[64], b[64];
        uint32_t i = 0;
        for (struct json *x = expected->child; x; x = x->next, i++) {
                uint32_t index = (uint32_t)json_i64(json_get(x, "index"));
                uint32_t result = (uint32_t)json_i64(json_get(x, "result"));
                struct wire_create_result got = {0, 0};
                if (i < count) memcpy(&got, results + i * 8, 8);
                if (i >= count || got.index != index || got.result != result) {
                        snprintf(a, sizeof(a), "(%u, %u)", index, result);
                        if (i < count) snprintf(b, sizeof(b), "(%u, %u)", got.index, got.result);
                        else snprintf(b, sizeof(b), "nothing");
                        diff(r, "result: expected %s, got %s", a, b);
                }
        }
        for (; i < count; i++) {
                struct wire_create_result got;
                memcpy(&got, results + i * 8, 8);
                snprintf(b, sizeof(b), "(%u, %u)", got.index, got.result);
                diff(r, "result: %s unexpected %s", "", b);
        }
        (void)n;
}

struct field_spec {
        const char *name;
        uint32_t offset;
        uint32_t size; /* 2, 4, 8, 16; 0 for the timestamp */
};

static const struct field_spec account_fields[] = {
        {"id", 0, 16},
        {"debits_pending", 16, 16},
        {"debits_posted", 32, 16},
        {"credits_pending", 48, 16},
        {"credits_posted", 64, 16},
        {"user_data_128", 80, 16},
        {"user_data_64", 96, 8},
        {"user_data_32", 104, 4},
        {"reserved", 108, 4},
        {"ledger", 112, 4},
        {"code", 116, 2},
        {"flags", 118, 2},
        {"timestamp", 120, 0},
        {NULL, 0, 0},
};

static const struct field_spec transfer_fields[] = {
        {"id", 0, 16},
        {"debit_account_id", 16, 16},
        {"credit_account_id", 32, 16},
        {"amount", 48, 16},
        {"pending_id", 64, 16},
        {"user_data_128", 80, 16},
        {"user_data_64", 96, 8},
        {"user_data_32", 104, 4},
        {"timeout", 108, 4},
        {"ledger", 112, 4},
        {"code", 116, 2},
        {"flags", 118, 2},
        {"timestamp", 120, 0},
        {NULL, 0, 0},
};

static const struct field_spec balance_fields[] = {
        {"debits_pending", 0, 16},
        {"debits_posted", 16, 16},
        {"credits_pending", 32, 16},
        {"credits_posted", 48, 16},
        {"timestamp", 64, 0},
        {NULL, 0, 0},
};

static u128 load_field(const uint8_t *object, const struct field_spec *f)
{
        u128 v = 0;
        memcpy(&v, object + f->offset, f->size);
        return v;
}

static void compare_objects(struct replay *r, enum op op, const struct json *expected,
                            const uint8_t *objects, uint32_t count)
{
        const struct field_spec *fields = account_fields;
        int kind = 0; /* 0 account, 1 transfer, -1 balance */
        if (op == OP_LOOKUP_TRANSFERS || op == OP_GET_ACCOUNT_TRANSFERS ||
            op == OP_QUERY_TRANSFERS) {
                fields = transfer_fields;
                kind = 1;
        } else if (op == OP_GET_ACCOUNT_BALANCES) {
                fields = balance_fields;
                kind = -1;
        }
        uint32_t n = json_count(expected);
        char a[64], b[64];
        if (n != count) {
                snprintf(a, sizeof(a), "%u", n);
                snprintf(b, sizeof(b), "%u", count);
                diff(r, "expected %s objects, got %s", a, b);
        }
        uint32_t i = 0;
        for (struct json *x = expected->child; x && i < count; x = x->next, i++) {
                const uint8_t *o = objects + (size_t)i * 128;
                for (const struct field_spec *f = fields; f->name; f++) {
                        const struct json *j = json_get(x, f->name);
                        tally_assert(j != NULL);
                        if (f->size == 0) {
                                uint64_t observed;
                                memcpy(&observed, o + f->offset, 8);
                                uint64_t recorded = (uint64_t)json_u128(json_get(j, "$ts"));
                                uint32_t group = 0;
                                if (kind >= 0) group = created_group((uint8_t)kind, load_field(o, &fields[0]));
                                const char *why = ts_check(recorded, observed, group);
                                if (why) {
                                        snprintf(a, sizeof(a), "[%u].timestamp", i);
                                        diff(r, "%s: %s", a, why);
                                }
                                continue;
                        }
                        u128 want = json_u128(j);
                        u128 got = load_field(o, f);
                        if (want != got) {
                                char field_name[64];
                                snprintf(field_name, sizeof(field_name), "[%u].%s", i, f->name);
                                char texts[192];
                                snprintf(texts, sizeof(texts), "expected %s got %s",
                                         u128_text(want, a), u128_text(got, b));
                                diff(r, "%s: %s", field_name, texts);
                        }
                }
        }
}

static uint32_t replay_line(struct replay *r, const char *text)
{
        json_pool_used = 0;
        struct json *root = NULL;
        if (json_parse(text, &root, 0) == NULL || root->type != JSON_OBJECT) {
                fprintf(stderr, "  line %u: not valid JSON\n", r->line);
                return 1;
        }
        const struct json *op_name = json_get(root, "op");
        const struct json *events = json_get(root, "events");
        const struct json *expected = json_get(root, "reply");
        enum op op = OP_COUNT;
        for (int i = 0; i < OP_COUNT; i++) {
                if (json_is(op_name, ops[i].name)) op = (enum op)i;
        }
        if (op == OP_COUNT || events == NULL || expected == NULL) {
                fprintf(stderr, "  line %u: not a corpus request\n", r->line);
                return 1;
        }

        /* The request: one batch, like the Node client sends it. */
        struct multi_batch_encoder encoder;
        multi_batch_encoder_init(&encoder, request, sizeof(request), ops[op].event_size);
        uint32_t room;
        uint8_t *out = multi_batch_encoder_writable(&encoder, &room);
        uint32_t count = 0;
        r->unresolved = false;
        r->binding_count = 0;
        for (struct json *e = events->child; e; e = e->next, count++) {
                uint8_t *slot = out + (size_t)count * ops[op].event_size;
                bool failed = op <= OP_CREATE_TRANSFERS && index_failed(expected, count);
                switch (op) {
                case OP_CREATE_ACCOUNTS:
                        build_account(r, e, count, failed, slot);
                        break;
                case OP_CREATE_TRANSFERS:
                        build_transfer(r, e, failed, slot);
                        break;
                case OP_LOOKUP_ACCOUNTS:
                case OP_LOOKUP_TRANSFERS: {
                        u128 id = json_u128(e);
                        memcpy(slot, &id, 16);
                        break;
                }
                case OP_GET_ACCOUNT_TRANSFERS:
                case OP_GET_ACCOUNT_BALANCES:
                        build_account_filter(r, e, slot);
                        break;
                case OP_QUERY_ACCOUNTS:
                case OP_QUERY_TRANSFERS:
                        build_query_filter(r, e, slot);
                        break;
                case OP_COUNT:
                        break;
                }
        }
        if (r->unresolved) {
                fprintf(stderr, "  line %u: refers to a timestamp no reply returned\n", r->line);
                return 1;
        }
        multi_batch_encoder_add(&encoder, count);
        uint32_t size = multi_batch_encoder_finish(&encoder);
        uint8_t operation = ops[op].operation;
        if (!ledger_input_valid(r->ledger, operation, request, size)) {
                fprintf(stderr, "  line %u: input refused\n", r->line);
                return 1;
        }

        r->clock += 1000;
        uint64_t base = MAX(r->last_timestamp + 1, r->clock);
        uint64_t timestamp = base + ledger_timestamp_delta(operation, request, size);
        r->last_timestamp = timestamp;
        uint32_t reply_size =
                ledger_execute(r->ledger, operation, timestamp, request, size, reply);

        struct multi_batch_decoder decoder;
        if (!multi_batch_decode_init(&decoder, reply, reply_size, ops[op].result_size) ||
            decoder.batch_count != 1) {
                fprintf(stderr, "  line %u: reply is not one multi-batch batch\n", r->line);
                return 1;
        }
        const uint8_t *results;
        uint32_t result_count;
        multi_batch_decode_next(&decoder, &results, &result_count);

        r->diffs = 0;
        if (op <= OP_CREATE_TRANSFERS) {
                compare_create(r, expected, results, result_count);
        } else {
                compare_objects(r, op, expected, results, result_count);
        }
        for (uint32_t i = 0; i < r->binding_count; i++) {
                const char *why = ts_check(r->bindings[i].recorded, r->bindings[i].observed, 0);
                if (why) diff(r, "imported timestamp: %s%s", why, "");
        }
        if (op <= OP_CREATE_TRANSFERS) {
                uint32_t index = 0;
                for (struct json *e = events->child; e; e = e->next, index++) {
                        if (index_failed(expected, index)) continue;
                        uint16_t flags = (uint16_t)field(e, "flags");
                        bool imported = op == OP_CREATE_ACCOUNTS
                                                ? (flags & ACCOUNT_FLAG_IMPORTED) != 0
                                                : (flags & TRANSFER_FLAG_IMPORTED) != 0;
                        created_add(op == OP_CREATE_ACCOUNTS ? 0 : 1, field(e, "id"), r->line,
                                    imported);
                }
        }
        if (r->diffs > 0) {
                const struct json *note = json_get(root, "note");
                fprintf(stderr, "FAIL line %u %s (%.*s): %u differences\n", r->line,
                        ops[op].name, note ? (int)note->length : 0, note ? note->text : "",
                        r->diffs);
                return 1;
        }
        return 0;
}

static char *read_file(const char *path, size_t *size)
{
        FILE *f = fopen(path, "rb");
        if (f == NULL) return NULL;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *data = malloc((size_t)n + 1);
        if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
                free(data);
                data = NULL;
        }
        fclose(f);
        if (data) data[n] = 0;
        *size = (size_t)n;
        return data;
}

static void replay_file(int seed, bool tiny)
{
        const char *dir = getenv("TALLY_CONFORMANCE_DIR");
        if (dir == NULL) dir = "tests/conformance";
        char path[512];
        snprintf(path, sizeof(path), "%s/seed-%d.jsonl", dir, seed);
        size_t size = 0;
        char *data = read_file(path, &size);
        if (data == NULL) {
                fprintf(stderr, "  cannot read %s: %s\n", path, strerror(errno));
                CHECK(data != NULL);
                return;
        }
        struct ledger_config config = {
                .accounts_max = 100000, .transfers_max = 100000, .request_body_size_max = 0};
        if (tiny) {
                /* Every flush, compaction and lookup path goes through blocks on small data. */
                config.memtable_max = 64;
                config.cache_bytes = 32u * 65536u;
                config.table_data_blocks_max = 2;
                config.beat_values = 64;
        }
        static struct replay r;
        memset(&r, 0, sizeof(r));
        r.ledger = ledger_create(&config);
        tally_assert(r.ledger != NULL);
        /* Near the recording date, so that 2^62 is in the future and 1 in the past. */
        r.clock = 1795686000000000000ull;
        ts_reset();
        created_count = 0;

        uint32_t requests = 0, mismatched = 0;
        char *line = data;
        while (*line) {
                char *end = strchr(line, '\n');
                if (end) *end = 0;
                if (*line) {
                        r.line = ++requests;
                        mismatched += replay_line(&r, line);
                } else {
                        ++requests;
                }
                if (!end) break;
                line = end + 1;
        }
        printf("== seed-%d.jsonl%s: %u requests, %u mismatched\n", seed,
               tiny ? " (tiny memtables and cache)" : "", requests, mismatched);
        CHECK_EQ_U64(mismatched, 0);
        ledger_destroy(r.ledger);
        free(data);
}

static void test_seed_1(void)
{
        replay_file(1, false);
        replay_file(1, true);
}
static void test_seed_2(void)
{
        replay_file(2, false);
        replay_file(2, true);
}
static void test_seed_3(void)
{
        replay_file(3, false);
        replay_file(3, true);
}
static void test_seed_4(void)
{
        replay_file(4, false);
        replay_file(4, true);
}
static void test_seed_5(void)
{
        replay_file(5, false);
        replay_file(5, true);
}

int main(void)
{
        json_pool_size = 1u << 20;
        json_pool = malloc(json_pool_size * sizeof(struct json));
        tally_assert(json_pool != NULL);
        TEST_RUN(test_seed_1);
        TEST_RUN(test_seed_2);
        TEST_RUN(test_seed_3);
        TEST_RUN(test_seed_4);
        TEST_RUN(test_seed_5);
        free(json_pool);
        TEST_MAIN_END();
}
