/*
 * device_memory.c: grid blocks in memory (device_memory.h).
 */
#include "lsm/device_memory.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void lsm_device_memory_init(struct lsm_device_memory *memory, uint64_t block_count_max)
{
        memset(memory, 0, sizeof(*memory));
        memory->block_count_max = block_count_max;
}

void lsm_device_memory_deinit(struct lsm_device_memory *memory)
{
        for (uint64_t i = 0; i < memory->capacity; i++)
                free(memory->blocks[i]);
        free(memory->blocks);
        memset(memory, 0, sizeof(*memory));
}

static int memory_read(void *context, uint64_t address, uint8_t *block)
{
        struct lsm_device_memory *memory = context;
        if (address == 0 || address > memory->block_count_max)
                return -EINVAL;
        if (address >= memory->capacity || memory->blocks[address] == NULL)
                memset(block, 0, LSM_BLOCK_SIZE);
        else
                memcpy(block, memory->blocks[address], LSM_BLOCK_SIZE);
        return 0;
}

static int memory_write(void *context, uint64_t address, const uint8_t *block)
{
        struct lsm_device_memory *memory = context;
        if (address == 0 || address > memory->block_count_max)
                return -EINVAL;
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
                memory->blocks[address] = malloc(LSM_BLOCK_SIZE);
                if (memory->blocks[address] == NULL)
                        return -ENOMEM;
                memory->bytes += LSM_BLOCK_SIZE;
        }
        memcpy(memory->blocks[address], block, LSM_BLOCK_SIZE);
        return 0;
}

struct lsm_device lsm_device_memory(struct lsm_device_memory *memory)
{
        return (struct lsm_device){
                .context = memory,
                .read = memory_read,
                .write = memory_write,
        };
}
