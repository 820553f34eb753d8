/*
 * sim.h: the deterministic simulator. Several replicas and clients in one process, over a
 * simulated network, disk and clock, driven by one seed.
 *
 * Everything the replicas touch comes through struct replica_env, exactly as in `tally start`,
 * but backed by simulated parts: a network that delays, loses, duplicates, reorders and
 * partitions messages; disks that acknowledge writes after a delay and tear, lose or corrupt
 * them; grids whose block reads fail, whose blocks rot or land at the wrong address, and
 * replicas that crash in the middle of an op's block writes; clocks with skew and backward
 * jumps. Replicas crash and restart (recovering from their
 * simulated disk with replica_open, as start.c does from the data file) or come back wiped.
 * Clients behave like the official client (one request in flight, retransmission, view
 * following) and check every reply as it does.
 *
 * Time advances in steps of 1 ms; every replica is ticked every 10 ms. There are no threads,
 * no wall clock and no real I/O, and every random choice comes from one PRNG seeded from the
 * seed, so the same options give the same run, byte for byte.
 *
 * A run has a fault phase (`ticks` ticks of 10 ms with the chosen faults), then a healing
 * phase: faults stop, every replica is brought up, and each client must complete a new request
 * and all replicas must converge within `liveness_ticks`. The checks (see sim.c) stop the run
 * at the first violation, with a one-line description in the report.
 */
#ifndef TALLY_SIM_H
#define TALLY_SIM_H

#include "lib/common.h"

#define SIM_REPLICAS_MAX 6u
#define SIM_CLIENTS_MAX 128u

/* Kinds of fault, as bits of sim_options.faults and indexes of sim_report.faults. */
enum sim_fault {
        SIM_FAULT_LOSS,       /* a message is dropped */
        SIM_FAULT_DUPLICATE,  /* a message is delivered twice */
        SIM_FAULT_DELAY,      /* long delays (reordering comes with any delay) */
        SIM_FAULT_PARTITION,  /* an episode: isolate, split, one-way, client-replica */
        SIM_FAULT_CLOSE,      /* a client connection is closed */
        SIM_FAULT_CRASH,      /* a replica crashes (restarts later) */
        SIM_FAULT_TORN,       /* a write in flight at a crash lands torn */
        SIM_FAULT_CORRUPT,    /* a bit flips in a stored header or prepare */
        SIM_FAULT_BAD_WRITE,  /* a journal write is acknowledged but stored damaged */
        SIM_FAULT_WIPE,       /* a crashed replica restarts with a fresh disk */
        SIM_FAULT_CLOCK,      /* a replica's clock jumps backwards */
        SIM_FAULT_BUSY,       /* the disk refuses a write for now */
        SIM_FAULT_FORGE,      /* an outsider sends forged and replayed replica messages */
        /* The grid (the ledger's blocks): replicas repair damage by copying a peer's checkpoint. */
        SIM_FAULT_GRID_READ,     /* a block read fails (-EIO) */
        SIM_FAULT_GRID_CORRUPT,  /* a bit flips in a stored block */
        SIM_FAULT_GRID_MISDIRECT, /* a block write lands at another address */
        SIM_FAULT_GRID_CRASH,    /* a replica crashes part-way through an op's block writes */
        SIM_FAULT_GRID_TORN,     /* the block being written at such a crash lands torn */
        SIM_FAULT_COUNT,
};

#define SIM_FAULTS_ALL ((1u << SIM_FAULT_COUNT) - 1u)

struct sim_options {
        uint64_t seed;
        uint32_t replica_count;  /* 1..SIM_REPLICAS_MAX */
        uint32_t client_count;   /* 1..SIM_CLIENTS_MAX */
        uint64_t ticks;          /* of the fault phase, 10 ms each */
        uint64_t liveness_ticks; /* the bound on healing, 10 ms each */
        uint32_t faults;         /* bits of enum sim_fault */
        bool verbose;            /* print episodes (crashes, partitions) as they happen */
        /* Largest replica-to-replica message the receiving bus accepts; 0: the request size
         * limit, as the bus's message_size_max. Larger only to look past that check. */
        uint32_t peer_message_size_max;
};

struct sim_report {
        bool ok;
        char failure[768]; /* the first check that failed */
        uint64_t time_ms;  /* simulated */
        uint64_t ops_committed;
        uint64_t requests_acked;
        uint64_t retransmissions;
        uint64_t view_max;
        uint64_t view_changes; /* increases of any replica's view */
        uint64_t restarts;
        uint64_t checkpoints;
        uint64_t grid_repairs; /* restarts to copy a peer's checkpoint over a damaged grid */
        uint64_t sync_prepares; /* prepares journaled by replicas while copying a checkpoint */
        uint64_t sync_retargets; /* copies as long as the ring that asked for a newer checkpoint */
        uint64_t blocks_repaired; /* damaged blocks of a served checkpoint fetched from a peer */
        uint64_t requests_parked; /* requests kept through a view change, then taken up */
        uint64_t grid_writes_in_flight_at_crash; /* landed, torn or lost by the crash */
        uint64_t faults[SIM_FAULT_COUNT];
        u128 digest; /* of the committed history: equal runs have equal digests */
};

/* Defaults for the fields a caller leaves 0 (seed excepted). */
void sim_options_default(struct sim_options *options);
int sim_run(const struct sim_options *options, struct sim_report *report);

const char *sim_fault_name(enum sim_fault fault);
/* "all", "none", or a comma list of fault names; false on an unknown name. */
bool sim_faults_parse(const char *text, uint32_t *faults);

#endif
