/*
 * types.h: the ledger objects exactly as they travel on the wire (TigerBeetle 0.16.68 layouts).
 *
 * Plain structs with natural alignment; every size and offset is asserted so that a change of a
 * field can never silently change the bytes a client sees. These same structs are what the
 * ledger stores, so a reply is a memcpy.
 */
#ifndef TALLY_WIRE_TYPES_H
#define TALLY_WIRE_TYPES_H

#include "lib/common.h"

/* Operation numbers (the `operation` byte of request, prepare and reply headers). */
enum wire_operation {
        OPERATION_RESERVED = 0,
        OPERATION_ROOT = 1,
        OPERATION_REGISTER = 2,
        OPERATION_RECONFIGURE = 3,
        OPERATION_VSR_PULSE = 4,
        OPERATION_UPGRADE = 5,
        OPERATION_NOOP = 6,
        /* 7..127 are reserved: an invalid header. */
        OPERATION_PULSE = 128, /* state-machine expiry pulse, prepared by the primary only */
        OPERATION_DEPRECATED_CREATE_ACCOUNTS_UNBATCHED = 129,
        OPERATION_DEPRECATED_CREATE_TRANSFERS_UNBATCHED = 130,
        OPERATION_DEPRECATED_LOOKUP_ACCOUNTS_UNBATCHED = 131,
        OPERATION_DEPRECATED_LOOKUP_TRANSFERS_UNBATCHED = 132,
        OPERATION_DEPRECATED_GET_ACCOUNT_TRANSFERS_UNBATCHED = 133,
        OPERATION_DEPRECATED_GET_ACCOUNT_BALANCES_UNBATCHED = 134,
        OPERATION_DEPRECATED_QUERY_ACCOUNTS_UNBATCHED = 135,
        OPERATION_DEPRECATED_QUERY_TRANSFERS_UNBATCHED = 136,
        OPERATION_GET_CHANGE_EVENTS = 137,
        OPERATION_CREATE_ACCOUNTS = 138,
        OPERATION_CREATE_TRANSFERS = 139,
        OPERATION_LOOKUP_ACCOUNTS = 140,
        OPERATION_LOOKUP_TRANSFERS = 141,
        OPERATION_GET_ACCOUNT_TRANSFERS = 142,
        OPERATION_GET_ACCOUNT_BALANCES = 143,
        OPERATION_QUERY_ACCOUNTS = 144,
        OPERATION_QUERY_TRANSFERS = 145,
};

/* Account flags (u16). */
#define ACCOUNT_FLAG_LINKED 0x0001u
#define ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS 0x0002u
#define ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS 0x0004u
#define ACCOUNT_FLAG_HISTORY 0x0008u
#define ACCOUNT_FLAG_IMPORTED 0x0010u
#define ACCOUNT_FLAG_CLOSED 0x0020u
#define ACCOUNT_FLAGS_PADDING 0xFFC0u

/* Transfer flags (u16). */
#define TRANSFER_FLAG_LINKED 0x0001u
#define TRANSFER_FLAG_PENDING 0x0002u
#define TRANSFER_FLAG_POST_PENDING 0x0004u
#define TRANSFER_FLAG_VOID_PENDING 0x0008u
#define TRANSFER_FLAG_BALANCING_DEBIT 0x0010u
#define TRANSFER_FLAG_BALANCING_CREDIT 0x0020u
#define TRANSFER_FLAG_CLOSING_DEBIT 0x0040u
#define TRANSFER_FLAG_CLOSING_CREDIT 0x0080u
#define TRANSFER_FLAG_IMPORTED 0x0100u
#define TRANSFER_FLAGS_PADDING 0xFE00u

/* AccountFilter flags (u32). */
#define ACCOUNT_FILTER_FLAG_DEBITS 0x1u
#define ACCOUNT_FILTER_FLAG_CREDITS 0x2u
#define ACCOUNT_FILTER_FLAG_REVERSED 0x4u
#define ACCOUNT_FILTER_FLAGS_PADDING 0xFFFFFFF8u

/* QueryFilter flags (u32). */
#define QUERY_FILTER_FLAG_REVERSED 0x1u
#define QUERY_FILTER_FLAGS_PADDING 0xFFFFFFFEu

struct wire_account {
        u128 id;
        u128 debits_pending;
        u128 debits_posted;
        u128 credits_pending;
        u128 credits_posted;
        u128 user_data_128;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint32_t reserved;
        uint32_t ledger;
        uint16_t code;
        uint16_t flags;
        uint64_t timestamp;
};

struct wire_transfer {
        u128 id;
        u128 debit_account_id;
        u128 credit_account_id;
        u128 amount;
        u128 pending_id;
        u128 user_data_128;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint32_t timeout; /* seconds */
        uint32_t ledger;
        uint16_t code;
        uint16_t flags;
        uint64_t timestamp;
};

struct wire_account_filter {
        u128 account_id;
        u128 user_data_128;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint16_t code;
        uint8_t reserved[58];
        uint64_t timestamp_min;
        uint64_t timestamp_max;
        uint32_t limit;
        uint32_t flags;
};

struct wire_query_filter {
        u128 user_data_128;
        uint64_t user_data_64;
        uint32_t user_data_32;
        uint32_t ledger;
        uint16_t code;
        uint8_t reserved[6];
        uint64_t timestamp_min;
        uint64_t timestamp_max;
        uint32_t limit;
        uint32_t flags;
};

struct wire_account_balance {
        u128 debits_pending;
        u128 debits_posted;
        u128 credits_pending;
        u128 credits_posted;
        uint64_t timestamp;
        uint8_t reserved[56];
};

/* One record per failed event of create_accounts / create_transfers. */
struct wire_create_result {
        uint32_t index;
        uint32_t result;
};

struct wire_change_events_filter {
        uint64_t timestamp_min;
        uint64_t timestamp_max;
        uint32_t limit;
        uint8_t reserved[44];
};

#define WIRE_STATIC_OFFSET(type, field, off)                                                      \
        _Static_assert(offsetof(type, field) == (off), #type "." #field " offset")

_Static_assert(sizeof(struct wire_account) == 128, "Account size");
WIRE_STATIC_OFFSET(struct wire_account, id, 0);
WIRE_STATIC_OFFSET(struct wire_account, debits_pending, 16);
WIRE_STATIC_OFFSET(struct wire_account, debits_posted, 32);
WIRE_STATIC_OFFSET(struct wire_account, credits_pending, 48);
WIRE_STATIC_OFFSET(struct wire_account, credits_posted, 64);
WIRE_STATIC_OFFSET(struct wire_account, user_data_128, 80);
WIRE_STATIC_OFFSET(struct wire_account, user_data_64, 96);
WIRE_STATIC_OFFSET(struct wire_account, user_data_32, 104);
WIRE_STATIC_OFFSET(struct wire_account, reserved, 108);
WIRE_STATIC_OFFSET(struct wire_account, ledger, 112);
WIRE_STATIC_OFFSET(struct wire_account, code, 116);
WIRE_STATIC_OFFSET(struct wire_account, flags, 118);
WIRE_STATIC_OFFSET(struct wire_account, timestamp, 120);

_Static_assert(sizeof(struct wire_transfer) == 128, "Transfer size");
WIRE_STATIC_OFFSET(struct wire_transfer, id, 0);
WIRE_STATIC_OFFSET(struct wire_transfer, debit_account_id, 16);
WIRE_STATIC_OFFSET(struct wire_transfer, credit_account_id, 32);
WIRE_STATIC_OFFSET(struct wire_transfer, amount, 48);
WIRE_STATIC_OFFSET(struct wire_transfer, pending_id, 64);
WIRE_STATIC_OFFSET(struct wire_transfer, user_data_128, 80);
WIRE_STATIC_OFFSET(struct wire_transfer, user_data_64, 96);
WIRE_STATIC_OFFSET(struct wire_transfer, user_data_32, 104);
WIRE_STATIC_OFFSET(struct wire_transfer, timeout, 108);
WIRE_STATIC_OFFSET(struct wire_transfer, ledger, 112);
WIRE_STATIC_OFFSET(struct wire_transfer, code, 116);
WIRE_STATIC_OFFSET(struct wire_transfer, flags, 118);
WIRE_STATIC_OFFSET(struct wire_transfer, timestamp, 120);

_Static_assert(sizeof(struct wire_account_filter) == 128, "AccountFilter size");
WIRE_STATIC_OFFSET(struct wire_account_filter, account_id, 0);
WIRE_STATIC_OFFSET(struct wire_account_filter, user_data_128, 16);
WIRE_STATIC_OFFSET(struct wire_account_filter, user_data_64, 32);
WIRE_STATIC_OFFSET(struct wire_account_filter, user_data_32, 40);
WIRE_STATIC_OFFSET(struct wire_account_filter, code, 44);
WIRE_STATIC_OFFSET(struct wire_account_filter, reserved, 46);
WIRE_STATIC_OFFSET(struct wire_account_filter, timestamp_min, 104);
WIRE_STATIC_OFFSET(struct wire_account_filter, timestamp_max, 112);
WIRE_STATIC_OFFSET(struct wire_account_filter, limit, 120);
WIRE_STATIC_OFFSET(struct wire_account_filter, flags, 124);

_Static_assert(sizeof(struct wire_query_filter) == 64, "QueryFilter size");
WIRE_STATIC_OFFSET(struct wire_query_filter, user_data_128, 0);
WIRE_STATIC_OFFSET(struct wire_query_filter, user_data_64, 16);
WIRE_STATIC_OFFSET(struct wire_query_filter, user_data_32, 24);
WIRE_STATIC_OFFSET(struct wire_query_filter, ledger, 28);
WIRE_STATIC_OFFSET(struct wire_query_filter, code, 32);
WIRE_STATIC_OFFSET(struct wire_query_filter, reserved, 34);
WIRE_STATIC_OFFSET(struct wire_query_filter, timestamp_min, 40);
WIRE_STATIC_OFFSET(struct wire_query_filter, timestamp_max, 48);
WIRE_STATIC_OFFSET(struct wire_query_filter, limit, 56);
WIRE_STATIC_OFFSET(struct wire_query_filter, flags, 60);

_Static_assert(sizeof(struct wire_account_balance) == 128, "AccountBalance size");
WIRE_STATIC_OFFSET(struct wire_account_balance, debits_pending, 0);
WIRE_STATIC_OFFSET(struct wire_account_balance, debits_posted, 16);
WIRE_STATIC_OFFSET(struct wire_account_balance, credits_pending, 32);
WIRE_STATIC_OFFSET(struct wire_account_balance, credits_posted, 48);
WIRE_STATIC_OFFSET(struct wire_account_balance, timestamp, 64);
WIRE_STATIC_OFFSET(struct wire_account_balance, reserved, 72);

_Static_assert(sizeof(struct wire_create_result) == 8, "CreateResult size");
WIRE_STATIC_OFFSET(struct wire_create_result, index, 0);
WIRE_STATIC_OFFSET(struct wire_create_result, result, 4);

_Static_assert(sizeof(struct wire_change_events_filter) == 64, "ChangeEventsFilter size");
WIRE_STATIC_OFFSET(struct wire_change_events_filter, limit, 16);

#endif
