/* A small recursive-descent JSON reader, enough to load a saved run for --compare. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MAX_DEPTH 64

typedef struct parser {
    const char *s, *start;
    char *err;
    size_t cap;
    bool failed;
} parser;

static void perr(parser *p, const char *fmt, ...)
{
    if (p->failed)
        return;
    p->failed = true;
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->err, p->cap, "JSON: %s at byte %ld", msg, (long)(p->s - p->start));
}

static void ws(parser *p)
{
    while (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')
        p->s++;
}

static void json_clear(bench_json *j)
{
    for (int i = 0; i < j->n; i++) {
        json_clear(&j->items[i]);
        if (j->keys)
            free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    free(j->str);
    memset(j, 0, sizeof *j);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static char *parse_string(parser *p)
{
    if (*p->s != '"') {
        perr(p, "expected a string");
        return NULL;
    }
    p->s++;
    size_t cap = 16, n = 0;
    char *out = malloc(cap);
    while (out && *p->s != '"') {
        unsigned cp;
        if (!*p->s || (unsigned char)*p->s < 0x20) {
            perr(p, "unterminated string");
            break;
        }
        if (*p->s != '\\') {
            cp = (unsigned char)*p->s++;
        } else {
            const char e = p->s[1];
            p->s += 2;
            if (e == 'u') {
                int v = 0;
                for (int i = 0; i < 4; i++) {
                    const int h = hexval(p->s[i]);
                    if (h < 0) {
                        perr(p, "bad \\u escape");
                        break;
                    }
                    v = v * 16 + h;
                }
                if (p->failed)
                    break;
                p->s += 4;
                cp = (v >= 0xd800 && v < 0xe000) ? '?' : (unsigned)v; /* surrogates: unused here */
            } else {
                const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
                const char *at = e ? strchr(from, e) : NULL;
                if (!at) {
                    perr(p, "bad escape");
                    break;
                }
                cp = (unsigned char)to[at - from];
            }
        }
        if (n + 4 >= cap) {
            char *grown = realloc(out, cap *= 2);
            if (!grown) {
                free(out);
                out = NULL;
                break;
            }
            out = grown;
        }
        if (cp < 0x80 || cp > 0xffff) { /* bytes from the text pass through as they are */
            out[n++] = (char)cp;
        } else if (cp < 0x800) {
            out[n++] = (char)(0xc0 | (cp >> 6));
            out[n++] = (char)(0x80 | (cp & 0x3f));
        } else {
            out[n++] = (char)(0xe0 | (cp >> 12));
            out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            out[n++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    if (!out)
        perr(p, "out of memory");
    if (p->failed) {
        free(out);
        return NULL;
    }
    p->s++;
    out[n] = '\0';
    return out;
}

static bool parse_value(parser *p, bench_json *j, int depth);

static bool push(parser *p, bench_json *j, char *key)
{
    if ((j->n & (j->n - 1)) == 0) { /* grow at powers of two */
        const size_t cap = j->n ? (size_t)j->n * 2 : 1;
        bench_json *items = realloc(j->items, cap * sizeof *items);
        if (items)
            j->items = items;
        char **keys = j->type == BENCH_JOBJ ? realloc(j->keys, cap * sizeof *keys) : NULL;
        if (keys)
            j->keys = keys;
        if (!items || (j->type == BENCH_JOBJ && !keys)) {
            perr(p, "out of memory");
            free(key);
            return false;
        }
    }
    memset(&j->items[j->n], 0, sizeof j->items[0]);
    if (j->type == BENCH_JOBJ)
        j->keys[j->n] = key;
    j->n++;
    return true;
}

static bool parse_container(parser *p, bench_json *j, int depth)
{
    const bool obj = *p->s == '{';
    const char close = obj ? '}' : ']';
    j->type = obj ? BENCH_JOBJ : BENCH_JARR;
    p->s++;
    ws(p);
    if (*p->s == close) {
        p->s++;
        return true;
    }
    for (;;) {
        char *key = NULL;
        ws(p);
        if (obj) {
            if (!(key = parse_string(p)))
                return false;
            ws(p);
            if (*p->s != ':') {
                free(key);
                perr(p, "expected ':'");
                return false;
            }
            p->s++;
        }
        if (!push(p, j, key) || !parse_value(p, &j->items[j->n - 1], depth + 1))
            return false;
        ws(p);
        if (*p->s == ',') {
            p->s++;
            continue;
        }
        if (*p->s == close) {
            p->s++;
            return true;
        }
        perr(p, "expected ',' or '%c'", close);
        return false;
    }
}

static bool parse_value(parser *p, bench_json *j, int depth)
{
    if (depth > MAX_DEPTH) {
        perr(p, "nested too deeply");
        return false;
    }
    ws(p);
    const char c = *p->s;
    if (c == '{' || c == '[')
        return parse_container(p, j, depth);
    if (c == '"') {
        j->type = BENCH_JSTR;
        return (j->str = parse_string(p)) != NULL;
    }
    static const struct {
        const char *word;
        bench_jtype type;
        double num;
    } words[] = {{"true", BENCH_JBOOL, 1}, {"false", BENCH_JBOOL, 0}, {"null", BENCH_JNULL, 0}};
    for (size_t i = 0; i < 3; i++)
        if (!strncmp(p->s, words[i].word, strlen(words[i].word))) {
            j->type = words[i].type;
            j->num = words[i].num;
            p->s += strlen(words[i].word);
            return true;
        }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char *end;
        j->type = BENCH_JNUM;
        j->num = strtod(p->s, &end);
        p->s = end;
        return true;
    }
    perr(p, c ? "unexpected character '%c'" : "unexpected end%c", c ? c : ' ');
    return false;
}

bench_json *bench_json_parse(const char *text, char *err, size_t cap)
{
    parser p = {text, text, err, cap, false};
    bench_json *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, cap, "JSON: out of memory");
        return NULL;
    }
    if (parse_value(&p, j, 0)) {
        ws(&p);
        if (*p.s)
            perr(&p, "trailing text");
    }
    if (p.failed) {
        bench_json_free(j);
        return NULL;
    }
    return j;
}

void bench_json_free(bench_json *j)
{
    if (!j)
        return;
    json_clear(j);
    free(j);
}

const bench_json *bench_json_get(const bench_json *obj, const char *key)
{
    if (!obj || obj->type != BENCH_JOBJ)
        return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key))
            return &obj->items[i];
    return NULL;
}
