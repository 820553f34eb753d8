/*
 * vectors.h: reads the captured messages of the JSON files in tests/vectors for unit tests.
 *
 * The files are written by a JSON tool, but tests only need the "header_hex" and "body_hex"
 * strings of each message in order, so a scanner for those keys is enough and keeps the tests
 * free of a JSON library.
 */
#ifndef TALLY_TEST_VECTORS_H
#define TALLY_TEST_VECTORS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VECTOR_MESSAGES_MAX 16

struct vector_message {
        _Alignas(16) uint8_t bytes[4096];
        uint32_t size;
};

static char *vectors_read_file(const char *path)
{
        FILE *f = fopen(path, "rb");
        if (f == NULL)
                return NULL;
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *text = malloc((size_t)size + 1);
        if (text == NULL || fread(text, 1, (size_t)size, f) != (size_t)size) {
                fclose(f);
                free(text);
                return NULL;
        }
        text[size] = '\0';
        fclose(f);
        return text;
}

static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Appends the hex string that follows `key` at or after `from`; returns the end or NULL. */
static const char *vectors_take_hex(const char *from, const char *key, uint8_t *out,
                                    uint32_t *size, uint32_t capacity)
{
        const char *p = strstr(from, key);
        if (p == NULL)
                return NULL;
        p = strchr(p + strlen(key), '"');
        if (p == NULL)
                return NULL;
        p++;
        while (hex_value(p[0]) >= 0 && hex_value(p[1]) >= 0 && *size < capacity) {
                out[(*size)++] = (uint8_t)(hex_value(p[0]) << 4 | hex_value(p[1]));
                p += 2;
        }
        return p;
}

/* Loads every message (header then body) of a vectors file; returns the count or -1. */
static int vectors_load(const char *path, struct vector_message *messages, int capacity)
{
        char *text = vectors_read_file(path);
        if (text == NULL)
                return -1;
        int count = 0;
        const char *p = text;
        while (count < capacity) {
                struct vector_message *m = &messages[count];
                m->size = 0;
                const char *next = vectors_take_hex(p, "\"header_hex\"", m->bytes, &m->size,
                                                    sizeof(m->bytes));
                if (next == NULL)
                        break;
                const char *body = strstr(next, "\"body_hex\"");
                const char *following = strstr(next, "\"header_hex\"");
                if (body != NULL && (following == NULL || body < following))
                        next = vectors_take_hex(next, "\"body_hex\"", m->bytes, &m->size,
                                                sizeof(m->bytes));
                p = next;
                count++;
        }
        free(text);
        return count;
}

#endif
