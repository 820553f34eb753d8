/*
 * message.c: the message pool (see message.h).
 */
#include "wire/message.h"
#include "lib/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int message_pool_init(struct message_pool *pool, uint32_t count)
{
        memset(pool, 0, sizeof(*pool));
        tally_assert(count > 0);
        size_t bytes = (size_t)count * WIRE_MESSAGE_SIZE_MAX;
        pool->memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (pool->memory == MAP_FAILED) {
                pool->memory = NULL;
                log_error("cannot reserve message pool messages=%u bytes=%zu", count, bytes);
                return -ENOMEM;
        }
        pool->messages = calloc(count, sizeof(struct message));
        if (pool->messages == NULL) {
                munmap(pool->memory, bytes);
                return -ENOMEM;
        }
        pool->count = count;
        /* Push in reverse so that the lowest buffers are handed out first and stay warm. */
        for (uint32_t i = count; i-- > 0;) {
                struct message *m = &pool->messages[i];
                m->buffer = pool->memory + (size_t)i * WIRE_MESSAGE_SIZE_MAX;
                m->header = (struct wire_header *)m->buffer;
                m->next_free = pool->free_list;
                pool->free_list = m;
        }
        pool->free_count = count;
        return 0;
}

void message_pool_deinit(struct message_pool *pool)
{
        if (pool->memory != NULL)
                munmap(pool->memory, (size_t)pool->count * WIRE_MESSAGE_SIZE_MAX);
        free(pool->messages);
        memset(pool, 0, sizeof(*pool));
}

struct message *message_pool_get(struct message_pool *pool)
{
        struct message *m = pool->free_list;
        if (m == NULL)
                return NULL;
        pool->free_list = m->next_free;
        pool->free_count--;
        tally_assert(m->references == 0);
        m->next_free = NULL;
        m->references = 1;
        memset(m->header, 0, sizeof(*m->header));
        return m;
}

struct message *message_ref(struct message *message)
{
        tally_assert(message->references > 0);
        message->references++;
        return message;
}

void message_unref(struct message_pool *pool, struct message *message)
{
        tally_assert(message->references > 0);
        message->references--;
        if (message->references > 0)
                return;
        message->next_free = pool->free_list;
        pool->free_list = message;
        pool->free_count++;
        tally_assert(pool->free_count <= pool->count);
}
