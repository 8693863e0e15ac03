#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t cap, const char *path, const char *why)
{
    snprintf(err, cap, "%s: %s", path, why);
    return -1;
}

int npy_load(const char *path, npy_array *out, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errcap, path, "cannot open");
    unsigned char pre[10];
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        fclose(f);
        return fail(err, errcap, path, "not an npy file");
    }
    size_t hlen;
    if (pre[6] == 1) {
        hlen = pre[8] | (size_t)pre[9] << 8;
    } else {
        unsigned char more[2];
        if (fread(more, 1, 2, f) != 2) {
            fclose(f);
            return fail(err, errcap, path, "truncated header");
        }
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    char *hdr = calloc(1, hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        free(hdr);
        fclose(f);
        return fail(err, errcap, path, "truncated header");
    }
    int ok = 1;
    if (strstr(hdr, "'descr': '<f4'"))
        out->is_u8 = 0;
    else if (strstr(hdr, "'descr': '|u1'"))
        out->is_u8 = 1;
    else
        ok = 0;
    if (!strstr(hdr, "'fortran_order': False"))
        ok = 0;
    const char *sh = strstr(hdr, "'shape': (");
    out->count = 1;
    if (ok && sh) {
        sh += strlen("'shape': (");
        while (*sh && *sh != ')' && out->ndim < 8) {
            char *end;
            unsigned long long v = strtoull(sh, &end, 10);
            if (end == sh)
                break;
            out->shape[out->ndim++] = (size_t)v;
            out->count *= (size_t)v;
            sh = end;
            while (*sh == ',' || *sh == ' ')
                sh++;
        }
    } else {
        ok = 0;
    }
    free(hdr);
    if (!ok) {
        fclose(f);
        return fail(err, errcap, path, "unsupported dtype or layout");
    }
    size_t esize = out->is_u8 ? 1 : 4;
    out->data = malloc(out->count * esize + 1);
    if (!out->data || fread(out->data, esize, out->count, f) != out->count) {
        fclose(f);
        npy_free(out);
        return fail(err, errcap, path, "truncated data");
    }
    fclose(f);
    return 0;
}

void npy_free(npy_array *a)
{
    free(a->data);
    a->data = NULL;
}
