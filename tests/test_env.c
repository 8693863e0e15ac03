/* The environment going wrong: no OpenCL platform at all (its own suite, run with an empty ICD
 * directory), and cache directories that are unwritable, full or hold tampered files beyond
 * what test_cache.c covers. Each case: dipole still answers correctly, or with a status. */
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

/* ------------------------------------------------------------------ no platform */

/* Run as its own process: the ICD loader reads OCL_ICD_VENDORS once, at the first OpenCL call,
 * so nothing before this test may touch OpenCL. */
START_TEST(test_no_platform)
{
    char dir[] = "/tmp/dipole-noicd-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    setenv("OCL_ICD_VENDORS", dir, 1);
    unsetenv("OCL_ICD_FILENAMES");
    for (int round = 0; round < 3; round++) {
        const char *selectors[] = {NULL, "0:0", "gpu", "pocl"};
        for (int s = 0; s < 4; s++) {
            dipole_ctx *ctx = (dipole_ctx *)0x1;
            ck_assert_int_eq(dipole_ctx_create(&ctx, selectors[s]), DIPOLE_ERR_NO_PLATFORM);
            ck_assert_ptr_null(ctx);
            ck_assert_msg(strstr(dipole_thread_last_error(), "no OpenCL platform"), "message: %s",
                          dipole_thread_last_error());
        }
    }
    /* Everything that needs no device still works. */
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = d.seq_k = 3, d.head_dim = 2;
    ck_assert_int_eq(dipole_attn_desc_validate(&d), DIPOLE_SUCCESS);
    float q[6] = {1, 0, 0, 1, 1, 1}, out[6];
    ck_assert_int_eq(dipole_reference(&d, q, q, q, NULL, out), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_attention_host(NULL, &d, q, q, q, NULL, out), DIPOLE_ERR_INVALID_ARG);
    unsetenv("OCL_ICD_VENDORS");
    rmdir(dir);
}
END_TEST

Suite *noplatform_suite(void)
{
    Suite *s = suite_create("noplatform");
    TCase *tc = tcase_create("noplatform");
    tcase_add_test(tc, test_no_platform);
    suite_add_tcase(s, tc);
    return s;
}

/* ------------------------------------------------------------------ cache directories */

typedef struct counts {
    int built, hits, unusable;
} counts;

static void count_log(void *user, const char *msg)
{
    counts *c = user;
    c->built += strstr(msg, ": built") != NULL;
    c->hits += strstr(msg, "disk cache hit") != NULL;
    c->unusable += strstr(msg, "unusable") || strstr(msg, "rejected") || strstr(msg, "failed to build");
}

/* A fresh context runs one small attention (its own configuration, so nothing else shares the
 * cache file); *ok says whether it matched the reference. No Check assertions inside: the
 * "full disk" case runs it while Check's own result file cannot grow. */
static counts run_quiet(bool *ok)
{
    counts c = {0, 0, 0};
    *ok = false;
    dipole_ctx *ctx;
    if (dipole_ctx_create(&ctx, NULL) != DIPOLE_SUCCESS)
        return c;
    dipole_ctx_set_log(ctx, count_log, &c);
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_TWO_POLE;
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = d.seq_k = 11, d.head_dim = 6;
    d.path = DIPOLE_PATH_TILED;
    enum { N = 66 };
    float q[N], k[N], v[N], v2[N], out[N], ref[N];
    for (int i = 0; i < N; i++) {
        q[i] = sinf(0.7f * (float)i), k[i] = cosf(0.3f * (float)i);
        v[i] = sinf(0.2f * (float)i + 1), v2[i] = cosf(0.9f * (float)i);
    }
    *ok = dipole_attention_host(ctx, &d, q, k, v, v2, out) == DIPOLE_SUCCESS &&
          dipole_reference(&d, q, k, v, v2, ref) == DIPOLE_SUCCESS &&
          tu_compare(out, ref, N, 1e-5, 1e-4).worst_ratio <= 1;
    dipole_ctx_destroy(ctx);
    return c;
}

static counts run_fresh(void)
{
    bool ok;
    counts c = run_quiet(&ok);
    ck_assert_msg(ok, "the call failed or differs from the reference");
    return c;
}

/* Number of files in dir whose name contains text. */
static int count_files(const char *dir, const char *text, char *last, size_t cap)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)))
        if (strstr(e->d_name, text)) {
            n++;
            if (last)
                snprintf(last, cap, "%s/%s", dir, e->d_name);
        }
    closedir(dp);
    return n;
}

static void clean_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    char path[512];
    while (dp && (e = readdir(dp)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0)
                rmdir(path);
        }
    if (dp)
        closedir(dp);
    rmdir(dir);
}

/* Unusable directories: a regular file, a path through a regular file, a disk that is full
 * (writes beyond RLIMIT_FSIZE fail, as on a full disk). Dipole works, uncached, and leaves no
 * temporary file. */
START_TEST(test_unusable_cache_dirs)
{
    tu_ctx();
    char dir[] = "/tmp/dipole-envcache-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char file[600], below[700];
    snprintf(file, sizeof file, "%s/plain-file", dir);
    FILE *f = fopen(file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    snprintf(below, sizeof below, "%s/sub/cache", file);
    const char *dirs[2] = {file, below};
    for (int i = 0; i < 2; i++) {
        setenv("DIPOLE_CACHE_DIR", dirs[i], 1);
        counts c = run_fresh();
        ck_assert_int_eq(c.built, 1);
        c = run_fresh();
        ck_assert_int_eq(c.built, 1); /* nothing was cached */
        ck_assert_int_eq(c.hits, 0);
    }

    /* Full: a 4 KiB tmpfs (a program binary is larger). Mounting needs root, as CI has; a
     * PoCL build itself needs disk, so only dipole's cache directory may be the full one. */
    char full[600];
    snprintf(full, sizeof full, "%s/full", dir);
    ck_assert_int_eq(mkdir(full, 0755), 0);
    if (mount("tmpfs", full, "tmpfs", 0, "size=4k") != 0) {
        fprintf(stderr, "test_unusable_cache_dirs: cannot mount a small tmpfs (%s); the full-disk "
                        "case is not run\n", strerror(errno));
    } else {
        setenv("DIPOLE_CACHE_DIR", full, 1);
        bool ok;
        counts c = run_quiet(&ok);
        const int files = count_files(full, ".bin", NULL, 0) + count_files(full, ".tmp", NULL, 0);
        const bool was_full = count_files(full, "", NULL, 0) == 2; /* ".", ".." */
        umount2(full, MNT_DETACH);
        ck_assert_msg(ok, "with a full disk the call failed or differs from the reference");
        ck_assert_int_eq(c.built, 1);
        ck_assert_int_eq(files, 0); /* no half-written file left behind */
        ck_assert(was_full);
        c = run_fresh(); /* space again: now it caches */
        ck_assert_int_eq(c.built, 1);
        ck_assert_int_eq(count_files(full, ".bin", NULL, 0), 1);
        c = run_fresh();
        ck_assert_int_eq(c.hits, 1);
    }
    unsetenv("DIPOLE_CACHE_DIR");
    clean_dir(full);
    clean_dir(dir);
}
END_TEST

/* The cache's checksum, recomputed here to forge a file that passes it. */
static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Tampering test_cache.c does not try: an empty file, a header claiming a huge payload, a
 * directory in the file's place, and a garbage payload with a valid header and checksum (so
 * the driver itself must refuse it). Each: rebuilt, correct, then cached again. */
START_TEST(test_tampered_cache_files)
{
    tu_ctx();
    char dir[] = "/tmp/dipole-tamper-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    setenv("DIPOLE_CACHE_DIR", dir, 1);
    counts c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    char bin[600];
    ck_assert_int_eq(count_files(dir, ".bin", bin, sizeof bin), 1);
    FILE *f = fopen(bin, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    const long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *good = malloc((size_t)size);
    ck_assert_int_eq(fread(good, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    /* Header: magic[8], format, reserved, key[2], size, checksum: 48 bytes. */
    const size_t hdr = 48;
    ck_assert_int_gt(size, (long)hdr);

    /* Empty. */
    f = fopen(bin, "wb");
    fclose(f);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    /* A payload size of 2^62 (the file is not that long). */
    unsigned char *bad = malloc((size_t)size);
    memcpy(bad, good, (size_t)size);
    const uint64_t huge = (uint64_t)1 << 62;
    memcpy(bad + 32, &huge, 8);
    f = fopen(bin, "wb");
    fwrite(bad, 1, (size_t)size, f);
    fclose(f);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    ck_assert_int_ge(c.unusable, 1);
    /* Garbage payload, header and checksum consistent. */
    memcpy(bad, good, (size_t)size);
    for (long i = (long)hdr; i < size; i++)
        bad[i] = (unsigned char)(i * 131 + 7);
    const uint64_t sum = fnv1a(bad + hdr, (size_t)size - hdr);
    memcpy(bad + 40, &sum, 8);
    f = fopen(bin, "wb");
    fwrite(bad, 1, (size_t)size, f);
    fclose(f);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    ck_assert_int_ge(c.unusable, 1);
    c = run_fresh(); /* the rebuild replaced it */
    ck_assert_int_eq(c.hits, 1);
    /* A directory where the file should be: rebuilt, and the write fails quietly. */
    unlink(bin);
    ck_assert_int_eq(mkdir(bin, 0755), 0);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    ck_assert_int_eq(count_files(dir, ".tmp", NULL, 0), 0);
    rmdir(bin);
    free(good);
    free(bad);
    unsetenv("DIPOLE_CACHE_DIR");
    clean_dir(dir);
}
END_TEST

Suite *env_suite(void)
{
    Suite *s = suite_create("env");
    TCase *tc = tcase_create("cache");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_unusable_cache_dirs);
    tcase_add_test(tc, test_tampered_cache_files);
    suite_add_tcase(s, tc);
    return s;
}
