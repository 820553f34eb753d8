/*
 * device_memory.c: grid blocks in memory (device_memory.h).
 */
#include "lsm/device_memory.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define SLAB_BYTES_MIN (2u << 20)
#define SLAB_BYTES_MAX (64u << 20)
#define HUGE_PAGE_BYTES (2u << 20)

void lsm_device_memory_init(struct lsm_device_memory *memory, uint64_t block_count_max)
{
        memset(memory, 0, sizeof(*memory));
        memory->block_count_max = block_count_max;
        pthread_mutex_init(&memory->mutex, NULL);
}

void lsm_device_memory_deinit(struct lsm_device_memory *memory)
{
        for (uint32_t i = 0; i < memory->slab_count; i++)
                free(memory->slabs[i]);
        free(memory->slabs);
        free(memory->blocks);
        pthread_mutex_destroy(&memory->mutex);
        memset(memory, 0, sizeof(*memory));
}

static int memory_read(void *context, uint64_t address, uint8_t *block)
{
        struct lsm_device_memory *memory = context;
        if (address == 0 || address > memory->block_count_max)
                return -EINVAL;
        pthread_mutex_lock(&memory->mutex);
        if (address >= memory->capacity || memory->blocks[address] == NULL)
                memset(block, 0, LSM_BLOCK_SIZE);
        else
                memcpy(block, memory->blocks[address], LSM_BLOCK_SIZE);
        pthread_mutex_unlock(&memory->mutex);
        return 0;
}

/* A block's memory from the newest slab, or a new slab twice as large as the last. */
static uint8_t *block_alloc(struct lsm_device_memory *memory)
{
        if (memory->slab_blocks_used == memory->slab_blocks) {
                if (memory->slab_count == memory->slab_capacity) {
                        uint32_t capacity = memory->slab_capacity ? 2 * memory->slab_capacity : 16;
                        uint8_t **slabs = realloc(memory->slabs, capacity * sizeof(*slabs));
                        if (slabs == NULL)
                                return NULL;
                        memory->slabs = slabs;
                        memory->slab_capacity = capacity;
                }
                uint64_t bytes = memory->slab_blocks == 0
                                         ? SLAB_BYTES_MIN
                                         : MIN((uint64_t)memory->slab_blocks * LSM_BLOCK_SIZE * 2,
                                               (uint64_t)SLAB_BYTES_MAX);
                void *slab = NULL;
                if (posix_memalign(&slab, HUGE_PAGE_BYTES, bytes) != 0)
                        return NULL;
                (void)madvise(slab, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
                memory->slabs[memory->slab_count++] = slab;
                memory->slab_blocks = (uint32_t)(bytes / LSM_BLOCK_SIZE);
                memory->slab_blocks_used = 0;
        }
        uint8_t *slab = memory->slabs[memory->slab_count - 1];
        return slab + (size_t)memory->slab_blocks_used++ * LSM_BLOCK_SIZE;
}

static int memory_write_locked(struct lsm_device_memory *memory, uint64_t address,
                               const uint8_t *block)
{
        if (address >= memory->capacity) {
                uint64_t capacity = memory->capacity ? memory->capacity : 64;
                while (capacity <= address)
                        capacity *= 2;
                uint8_t **blocks = realloc(memory->blocks, capacity * sizeof(*blocks));
                if (blocks == NULL)
                        return -ENOMEM;
                memset(blocks + memory->capacity, 0,
                       (capacity - memory->capacity) * sizeof(*blocks));
                memory->blocks = blocks;
                memory->capacity = capacity;
        }
        if (memory->blocks[address] == NULL) {
                memory->blocks[address] = block_alloc(memory);
                if (memory->blocks[address] == NULL)
                        return -ENOMEM;
                memory->bytes += LSM_BLOCK_SIZE;
        }
        memcpy(memory->blocks[address], block, LSM_BLOCK_SIZE);
        return 0;
}

static int memory_write(void *context, uint64_t address, const uint8_t *block)
{
        struct lsm_device_memory *memory = context;
        if (address == 0 || address > memory->block_count_max)
                return -EINVAL;
        pthread_mutex_lock(&memory->mutex);
        int rc = memory_write_locked(memory, address, block);
        pthread_mutex_unlock(&memory->mutex);
        return rc;
}

struct lsm_device lsm_device_memory(struct lsm_device_memory *memory)
{
        return (struct lsm_device){
                .context = memory,
                .read = memory_read,
                .write = memory_write,
        };
}
