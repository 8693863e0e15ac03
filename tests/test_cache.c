/* The on-disk program cache: a second context hits it; corrupt, truncated or foreign files are
 * misses that get rebuilt (never a crash or a wrong kernel); "off" writes nothing. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

typedef struct log_counts {
    int built, hits, unusable;
} log_counts;

static void count_log(void *user, const char *msg)
{
    log_counts *c = user;
    if (strstr(msg, ": built"))
        c->built++;
    if (strstr(msg, "disk cache hit"))
        c->hits++;
    if (strstr(msg, "unusable") || strstr(msg, "rejected") || strstr(msg, "failed to build"))
        c->unusable++;
}

/* Runs one small attention in a fresh context and checks it against the reference. */
static log_counts run_fresh(void)
{
    log_counts c = {0, 0, 0};
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    dipole_ctx_set_log(ctx, count_log, &c);
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_SIGNEXP;
    d.batch = 1, d.heads_q = d.heads_kv = 2, d.seq_q = d.seq_k = 19, d.head_dim = 12;
    d.path = DIPOLE_PATH_TILED;
    const size_t n = tu_q_elems(&d);
    float *q = tu_random(n, 5, 1), *k = tu_random(n, 6, 1), *v = tu_random(n, 7, 1);
    float *out = malloc(n * 4), *ref = malloc(n * 4);
    ck_assert_int_eq(dipole_attention_host(ctx, &d, q, k, v, NULL, out), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, q, k, v, NULL, ref), DIPOLE_SUCCESS);
    ck_assert(tu_compare(out, ref, n, 1e-5, 1e-4).worst_ratio <= 1);
    dipole_ctx_destroy(ctx);
    free(q), free(k), free(v), free(out), free(ref);
    return c;
}

/* The one .bin file in dir (asserts there is exactly one). */
static void only_bin(const char *dir, char *path, size_t cap)
{
    DIR *dp = opendir(dir);
    ck_assert_ptr_nonnull(dp);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dp)))
        if (strstr(e->d_name, ".bin")) {
            snprintf(path, cap, "%s/%s", dir, e->d_name);
            n++;
        }
    closedir(dp);
    ck_assert_int_eq(n, 1);
}

static void clean_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    char path[512];
    while (dp && (e = readdir(dp)))
        if (e->d_name[0] != '.' || strstr(e->d_name, ".tmp")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    if (dp)
        closedir(dp);
    rmdir(dir);
}

START_TEST(test_disk_cache_roundtrip_and_corruption)
{
    tu_ctx(); /* skip without a device */
    char dir[] = "/tmp/dipole-cache-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    setenv("DIPOLE_CACHE_DIR", dir, 1);

    log_counts c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    ck_assert_int_eq(c.hits, 0);
    char bin[512];
    only_bin(dir, bin, sizeof bin);

    c = run_fresh();
    ck_assert_int_eq(c.hits, 1);
    ck_assert_int_eq(c.built, 0);

    /* Flip bytes in the payload: the checksum must reject it. */
    FILE *f = fopen(bin, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, 200, SEEK_SET);
    fputs("garbage garbage garbage", f);
    fclose(f);
    c = run_fresh();
    ck_assert_int_eq(c.unusable, 1);
    ck_assert_int_eq(c.built, 1);
    c = run_fresh(); /* the rebuild rewrote a good file */
    ck_assert_int_eq(c.hits, 1);

    /* Truncate it. */
    ck_assert_int_eq(truncate(bin, 40), 0);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    /* Replace it with a foreign file of the same name. */
    f = fopen(bin, "wb");
    fputs("not a dipole cache file at all", f);
    fclose(f);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    c = run_fresh();
    ck_assert_int_eq(c.hits, 1);

    unsetenv("DIPOLE_CACHE_DIR");
    clean_dir(dir);
}
END_TEST

START_TEST(test_disk_cache_off_and_unwritable)
{
    tu_ctx();
    setenv("DIPOLE_CACHE_DIR", "off", 1);
    log_counts c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    ck_assert_int_eq(c.hits, 0);
    /* A directory that cannot be created: still works, uncached. */
    setenv("DIPOLE_CACHE_DIR", "/proc/dipole-cannot-exist/cache", 1);
    c = run_fresh();
    ck_assert_int_eq(c.built, 1);
    unsetenv("DIPOLE_CACHE_DIR");
}
END_TEST

/* Tile configurations: a context's own, then a tuned one saved per device, each visible in the
 * plan and each giving the reference answer; bad strings are refused with the item named. */
START_TEST(test_tile_config_overrides)
{
    tu_ctx();
    char dir[] = "/tmp/dipole-tune-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    setenv("DIPOLE_CACHE_DIR", dir, 1);
    unsetenv("DIPOLE_TILE_CONFIG");
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = DIPOLE_ROUTED;
    d.batch = 1, d.heads_q = 2, d.heads_kv = 1, d.seq_q = 40, d.seq_k = 50, d.head_dim = 24;
    d.causal = 1;
    dipole_plan plan;

    ck_assert_int_eq(dipole_ctx_set_tile_config(ctx, "block_m=8,bogus=1"), DIPOLE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(dipole_ctx_last_error(ctx), "bogus=1"));
    ck_assert_int_eq(dipole_ctx_set_tile_config(ctx, "layout=diagonal"), DIPOLE_ERR_INVALID_ARG);
    ck_assert_int_eq(dipole_ctx_save_tuned_config(ctx, "block_n=-4"), DIPOLE_ERR_INVALID_ARG);

    ck_assert_int_eq(dipole_ctx_set_tile_config(ctx, "layout=group,block_m=8,block_n=16"),
                     DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_msg(plan.config_source == DIPOLE_CONFIG_CONTEXT, "%s", plan.reason);
    ck_assert_str_eq(plan.config_label, "context tile config");
    ck_assert_int_eq(plan.layout, DIPOLE_LAYOUT_GROUP);
    ck_assert_int_eq(plan.block_m, 8);
    ck_assert_int_eq(plan.block_n, 16);

    /* Saved for the device: a fresh context picks it up... */
    ck_assert_int_eq(dipole_ctx_save_tuned_config(ctx, "layout=group,block_m=4,block_n=8"),
                     DIPOLE_SUCCESS);
    dipole_ctx_destroy(ctx);
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_msg(plan.config_source == DIPOLE_CONFIG_TUNED, "%s", plan.reason);
    ck_assert_int_eq(plan.block_m, 4);
    ck_assert_int_eq(plan.block_n, 8);
    dipole_ctx_destroy(ctx);
    tu_check_against_reference(&d, 77, 1.0f, 2e-5, 2e-4); /* shared ctx: table config */

    /* ...and the environment beats it. */
    setenv("DIPOLE_TILE_CONFIG", "layout=group,block_m=2,block_n=4", 1);
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_msg(plan.config_source == DIPOLE_CONFIG_ENV, "%s", plan.reason);
    ck_assert_int_eq(plan.block_m, 2);
    unsetenv("DIPOLE_TILE_CONFIG");
    /* Removing it restores the built-in table. */
    ck_assert_int_eq(dipole_ctx_save_tuned_config(ctx, NULL), DIPOLE_SUCCESS);
    dipole_ctx_destroy(ctx);
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_attention_plan(ctx, &d, &plan), DIPOLE_SUCCESS);
    ck_assert_msg(plan.config_source == DIPOLE_CONFIG_TABLE, "%s", plan.reason);
    dipole_ctx_destroy(ctx);
    unsetenv("DIPOLE_CACHE_DIR");
    clean_dir(dir);
}
END_TEST

/* dipole_ctx_cache_dir names the directory a context chose: DIPOLE_CACHE_DIR, else
 * $XDG_CACHE_HOME/dipole, else $HOME/.cache/dipole; "" when off, unusable or too long for a
 * path (and the context still computes, uncached). */
static void expect_cache_dir(const char *want)
{
    dipole_ctx *ctx;
    ck_assert_int_eq(dipole_ctx_create(&ctx, NULL), DIPOLE_SUCCESS);
    ck_assert_str_eq(dipole_ctx_cache_dir(ctx), want);
    dipole_ctx_destroy(ctx);
}

START_TEST(test_cache_dir_rule)
{
    tu_ctx();
    char dir[] = "/tmp/dipole-rule-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *saved_xdg = getenv("XDG_CACHE_HOME") ? strdup(getenv("XDG_CACHE_HOME")) : NULL;
    char *saved_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    char want[700];
    setenv("DIPOLE_CACHE_DIR", dir, 1);
    expect_cache_dir(dir);
    unsetenv("DIPOLE_CACHE_DIR");
    setenv("XDG_CACHE_HOME", dir, 1);
    snprintf(want, sizeof want, "%s/dipole", dir);
    expect_cache_dir(want);
    unsetenv("XDG_CACHE_HOME");
    setenv("HOME", dir, 1);
    snprintf(want, sizeof want, "%s/.cache/dipole", dir);
    expect_cache_dir(want);
    unsetenv("HOME");
    expect_cache_dir(""); /* none of the three */
    setenv("DIPOLE_CACHE_DIR", "off", 1);
    expect_cache_dir("");
    static char longdir[3000];
    memset(longdir, 'a', sizeof longdir - 1);
    longdir[0] = '/';
    setenv("DIPOLE_CACHE_DIR", longdir, 1);
    expect_cache_dir("");
    log_counts c = run_fresh();
    ck_assert_int_eq(c.hits, 0);
    unsetenv("DIPOLE_CACHE_DIR");
    if (saved_xdg)
        setenv("XDG_CACHE_HOME", saved_xdg, 1);
    if (saved_home)
        setenv("HOME", saved_home, 1);
    free(saved_xdg);
    free(saved_home);
    const char *made[] = {"dipole", ".cache/dipole", ".cache"}; /* by the contexts, empty */
    for (size_t i = 0; i < sizeof made / sizeof made[0]; i++) {
        snprintf(want, sizeof want, "%s/%s", dir, made[i]);
        ck_assert_int_eq(rmdir(want), 0);
    }
    clean_dir(dir);
}
END_TEST

Suite *cache_suite(void)
{
    Suite *s = suite_create("cache");
    TCase *tc = tcase_create("disk");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_disk_cache_roundtrip_and_corruption);
    tcase_add_test(tc, test_disk_cache_off_and_unwritable);
    tcase_add_test(tc, test_tile_config_overrides);
    tcase_add_test(tc, test_cache_dir_rule);
    suite_add_tcase(s, tc);
    return s;
}
