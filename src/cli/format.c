/*
 * format.c: `tally format`: create a replica's data file.
 */
#include "cli/cli.h"
#include "io/address.h"
#include "lib/flags.h"
#include "lib/log.h"
#include "storage/storage.h"

#include <stdio.h>

int cli_format(int argc, char **argv)
{
        struct flag flags[] = {
                {.name = "cluster", .kind = FLAG_U128, .required = true},
                {.name = "replica", .kind = FLAG_U64, .required = true},
                {.name = "replica-count", .kind = FLAG_U64, .required = true},
                {.name = "development", .kind = FLAG_SWITCH},
        };
        const char *positional[1];
        uint32_t positional_count = 0;
        char error[512];
        if (flags_parse(argc, argv, flags, ARRAY_LEN(flags), positional, 1, &positional_count,
                        error, sizeof(error)) != 0) {
                cli_error("format: %s", error);
                return 2;
        }
        if (positional_count != 1) {
                cli_error("format: missing the data file path");
                return 2;
        }
        uint64_t replica_count = flags[2].u64;
        uint64_t replica = flags[1].u64;
        if (replica_count < 1 || replica_count > ADDRESSES_MAX) {
                cli_error("format: --replica-count must be between 1 and %u", ADDRESSES_MAX);
                return 2;
        }
        if (replica >= replica_count) {
                cli_error("format: --replica=%llu must be less than --replica-count=%llu",
                          (unsigned long long)replica, (unsigned long long)replica_count);
                return 2;
        }
        struct storage_format_options options = {
                .cluster = flags[0].u128,
                .replica = (uint8_t)replica,
                .replica_count = (uint8_t)replica_count,
                .development = flags[3].present,
        };
        enum storage_error rc = storage_format(positional[0], &options, error, sizeof(error));
        if (rc != STORAGE_OK) {
                cli_error("format: %s", error);
                return 1;
        }
        char cluster[40];
        format_u128(options.cluster, cluster);
        log_info("formatted data file path=%s cluster=%s replica=%u replica_count=%u", positional[0],
                 cluster, options.replica, options.replica_count);
        return 0;
}
