/* --tune: its flag, the candidate lists by device kind, and the shapes it times. */
#include <string.h>

#include "bench_tests.h"

START_TEST(flag)
{
    bench_opts o;
    char err[256];
    char *ok[] = {"dipole-bench", "--tune", "--quick", "--device", "cpu"};
    ck_assert_int_eq(bench_parse_args(5, ok, &o, err, sizeof err), 0);
    ck_assert(o.tune && o.quick);
    char *plain[] = {"dipole-bench"};
    ck_assert_int_eq(bench_parse_args(1, plain, &o, err, sizeof err), 0);
    ck_assert(!o.tune);
    /* The tuner prints its own table: an output flag would be silently ignored. */
    static const char *const outputs[] = {"--json", "--csv", "--plot", "--compare"};
    for (size_t i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
        char *bad[] = {"dipole-bench", "--tune", (char *)outputs[i], "r.svg"};
        ck_assert_int_eq(bench_parse_args(4, bad, &o, err, sizeof err), -1);
        ck_assert_ptr_nonnull(strstr(err, "--tune"));
    }
    char *prior[] = {"dipole-bench", "--tune", "--tune-prior", "block_m=16,block_n=8"};
    ck_assert_int_eq(bench_parse_args(4, prior, &o, err, sizeof err), 0);
    ck_assert_str_eq(o.tune_prior, "block_m=16,block_n=8");
    ck_assert_int_eq(bench_parse_args(3, prior + 1, &o, err, sizeof err), -1); /* no --tune */
    ck_assert_ptr_nonnull(strstr(err, "needs --tune"));
    char *value[] = {"dipole-bench", "--tune=1"};
    ck_assert_int_eq(bench_parse_args(2, value, &o, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no value"));
}
END_TEST

static int count_with(char c[][BENCH_TUNE_LEN], int n, const char *needle)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += strstr(c[i], needle) != NULL;
    return k;
}

START_TEST(cpu_candidates)
{
    char c[BENCH_TUNE_MAX][BENCH_TUNE_LEN];
    /* The table default is on the grid: listed once. */
    int n = bench_tune_candidates(true, 4096, "layout=cpu,block_m=256,block_n=64", c,
                                  BENCH_TUNE_MAX);
    ck_assert_int_eq(n, 9);
    ck_assert_str_eq(c[0], "layout=cpu,block_m=64,block_n=32");
    ck_assert_str_eq(c[8], "layout=cpu,block_m=256,block_n=128");
    ck_assert_int_eq(count_with(c, n, "layout=cpu,"), 9);
    ck_assert_int_eq(count_with(c, n, "block_m=256,block_n=64"), 1);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            ck_assert_str_ne(c[i], c[j]);
    /* A current configuration off the grid is added last. */
    n = bench_tune_candidates(true, 4096, "layout=cpu,block_m=32,block_n=16", c, BENCH_TUNE_MAX);
    ck_assert_int_eq(n, 10);
    ck_assert_str_eq(c[9], "layout=cpu,block_m=32,block_n=16");
    /* The work-group limit means nothing to the CPU layout (one work-item per block). */
    ck_assert_int_eq(bench_tune_candidates(true, 1, "", c, BENCH_TUNE_MAX), 9);
    ck_assert_int_eq(bench_tune_candidates(true, 4096, NULL, c, 4), 4);
}
END_TEST

START_TEST(gpu_candidates)
{
    char c[BENCH_TUNE_MAX][BENCH_TUNE_LEN];
    int n = bench_tune_candidates(false, 1024, "layout=group,block_m=64,block_n=32", c,
                                  BENCH_TUNE_MAX);
    /* 3 query tiles x 2 key tiles x 2 rows per item, then the current one */
    ck_assert_int_eq(n, 13);
    ck_assert_int_eq(count_with(c, n, "layout=group,"), 13);
    ck_assert_int_eq(count_with(c, n, "block_m=128,"), 4);
    ck_assert_int_eq(count_with(c, n, "rpi=2"), 6);
    ck_assert_str_eq(c[0], "layout=group,block_m=32,block_n=32,wg_cols=16,rpi=2");
    ck_assert_str_eq(c[12], "layout=group,block_m=64,block_n=32");
    /* Work-groups beyond the device's limit are left out: 256 work-items take 32 rows in
     * 2-row items or up to 64 in 4-row items. */
    n = bench_tune_candidates(false, 256, "", c, BENCH_TUNE_MAX);
    ck_assert_int_eq(n, 6);
    ck_assert_int_eq(count_with(c, n, "block_m=128,"), 0);
    ck_assert_int_eq(count_with(c, n, "block_m=64,block_n=32,wg_cols=16,rpi=2"), 0);
    ck_assert_int_eq(count_with(c, n, "block_m=64,block_n=32,wg_cols=16,rpi=4"), 1);
    /* Below every grid: the narrowest that fits. */
    n = bench_tune_candidates(false, 8, "", c, BENCH_TUNE_MAX);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(c[0], "layout=group,block_m=4,block_n=8,wg_cols=8,rpi=4");
}
END_TEST

START_TEST(shapes)
{
    bench_point p[4];
    ck_assert_int_eq(bench_tune_shapes(true, true, p, 4), 1);
    ck_assert_int_eq(p[0].seq_q, 1024);
    ck_assert_int_eq(p[0].seq_k, 1024);
    ck_assert_int_eq(p[0].head_dim, 64);
    ck_assert_int_eq(p[0].batch * p[0].heads_q, 8);
    ck_assert_int_eq(p[0].variant, DIPOLE_SIGNEXP);
    ck_assert_int_eq(p[0].path, DIPOLE_PATH_TILED);
    ck_assert_int_eq(p[0].pass, BENCH_FWD);
    ck_assert_int_eq(p[0].causal, 0);
    ck_assert_int_eq(bench_tune_shapes(true, false, p, 4), 1);
    ck_assert_int_eq(p[0].seq_q, 2048);
    ck_assert_int_eq(bench_tune_shapes(false, true, p, 4), 2);
    ck_assert_int_eq(p[0].seq_q, 4096);
    ck_assert_int_eq(p[0].head_dim, 64);
    ck_assert_int_eq(p[1].head_dim, 128);
    ck_assert_int_eq(bench_tune_shapes(false, false, p, 1), 1);
}
END_TEST

Suite *bench_tune_suite(void)
{
    Suite *s = suite_create("tune");
    TCase *tc = tcase_create("tune");
    tcase_add_test(tc, flag);
    tcase_add_test(tc, cpu_candidates);
    tcase_add_test(tc, gpu_candidates);
    tcase_add_test(tc, shapes);
    suite_add_tcase(s, tc);
    return s;
}
