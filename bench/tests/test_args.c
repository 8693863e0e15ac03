/* Command-line parsing and the grid it expands to. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bench_tests.h"

static int parse(bench_opts *o, char *err, int n, ...)
{
    char *argv[32] = {"dipole-bench"};
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++)
        argv[i + 1] = va_arg(ap, char *);
    va_end(ap);
    return bench_parse_args(n + 1, argv, o, err, 256);
}

START_TEST(defaults)
{
    bench_opts o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 0), 0);
    ck_assert(!o.quick && !o.all && !o.list && !o.backward && !o.inject_error);
    ck_assert(o.peaks && o.decode);
    ck_assert_int_eq(o.ndevices, 0);
    ck_assert(!o.seqs.set && !o.variants.set && !o.bh.set && !o.dtypes.set);
    ck_assert_ptr_null(o.json);
}
END_TEST

START_TEST(lists_and_ranges)
{
    bench_opts o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 11, "--seq", "512..4096", "--head-dims=64,128",
                           "--variants", "two_pole,softmax", "--batch-heads", "2x16:4,8",
                           "--causal", "on", "--path", "gemm"),
                     0);
    ck_assert(o.seqs.set);
    ck_assert_int_eq(o.seqs.n, 4);
    ck_assert_int_eq(o.seqs.v[0], 512);
    ck_assert_int_eq(o.seqs.v[3], 4096);
    ck_assert_int_eq(o.head_dims.n, 2);
    ck_assert_int_eq(o.head_dims.v[1], 128);
    ck_assert_int_eq(o.variants.n, 2);
    ck_assert_int_eq(o.variants.v[0], DIPOLE_TWO_POLE);
    ck_assert_int_eq(o.variants.v[1], DIPOLE_SOFTMAX);
    ck_assert_int_eq(o.bh.n, 2);
    ck_assert_int_eq(o.bh.v[0].batch, 2);
    ck_assert_int_eq(o.bh.v[0].heads_q, 16);
    ck_assert_int_eq(o.bh.v[0].heads_kv, 4);
    ck_assert_int_eq(o.bh.v[1].batch, 1);
    ck_assert_int_eq(o.bh.v[1].heads_q, 8);
    ck_assert_int_eq(o.bh.v[1].heads_kv, 8);
    ck_assert_int_eq(o.causal.n, 1);
    ck_assert_int_eq(o.causal.v[0], 1);
    ck_assert_int_eq(o.paths.n, 1);
    ck_assert_int_eq(o.paths.v[0], DIPOLE_PATH_GEMM);
}
END_TEST

START_TEST(devices_outputs_switches)
{
    bench_opts o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 16, "--device", "0:0", "--device", "gpu", "--json", "r.json",
                           "--csv", "r.csv", "--plot", "r.PNG", "--compare", "old.json",
                           "--quick", "--backward", "--no-peaks", "--inject-error"),
                     0);
    ck_assert_int_eq(o.ndevices, 2);
    ck_assert_str_eq(o.devices[0], "0:0");
    ck_assert_str_eq(o.devices[1], "gpu");
    ck_assert_str_eq(o.json, "r.json");
    ck_assert_str_eq(o.csv, "r.csv");
    ck_assert_str_eq(o.plot, "r.PNG");
    ck_assert_str_eq(o.compare, "old.json");
    ck_assert(o.quick && o.backward && !o.peaks && o.inject_error);
    ck_assert_int_eq(parse(&o, err, 5, "--budget-ms=50", "--rows", "4", "--decode", "off"), 0);
    ck_assert_double_eq(o.budget_ms, 50);
    ck_assert(o.budget_set && !o.decode);
    ck_assert_int_eq(o.sample_rows, 4);
}
END_TEST

/* Each bad command line is refused with a message naming the flag. */
START_TEST(rejects)
{
    static const struct {
        const char *a, *b, *needle;
    } bad[] = {
        {"--seq", "0", "--seq"},
        {"--seq", "1024..512", "--seq"},
        {"--seq", "12x", "--seq"},
        {"--head-dims", "", "--head-dims"},
        {"--variants", "cosine", "cosine"},
        {"--batch-heads", "2x16:3", "divide"},
        {"--batch-heads", "x4", "--batch-heads"},
        {"--causal", "maybe", "--causal"},
        {"--path", "cpu", "--path"},
        {"--dtype", "f64", "--dtype: unknown value 'f64' (known: f32, f16, bf16)"},
        {"--dtype", ",", "--dtype: expected a comma list"},
        {"--plot", "r.pdf", ".svg"},
        {"--budget-ms", "-1", "--budget-ms"},
        {"--rows", "0", "--rows"},
        {"--decode", "yes", "--decode"},
        {"--frobnicate", "1", "unknown option"},
        {"positional", "x", "unexpected"},
        {"--all", "--device=gpu", "exclude"},
        {"--quick=1", "--all", "no value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bench_opts o;
        char err[256];
        ck_assert_msg(parse(&o, err, 2, bad[i].a, bad[i].b) == -1, "accepted %s %s", bad[i].a,
                      bad[i].b);
        ck_assert_msg(strstr(err, bad[i].needle) != NULL, "%s %s: message '%s' lacks '%s'",
                      bad[i].a, bad[i].b, err, bad[i].needle);
    }
    bench_opts o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 1, "--json"), -1);
    ck_assert_ptr_nonnull(strstr(err, "needs a value"));
}
END_TEST

START_TEST(dtypes)
{
    bench_opts o;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 2, "--dtype", "bf16,F16"), 0);
    ck_assert(o.dtypes.set);
    ck_assert_int_eq(o.dtypes.n, 2);
    ck_assert_int_eq(o.dtypes.v[0], DIPOLE_BF16);
    ck_assert_int_eq(o.dtypes.v[1], DIPOLE_F16);
    ck_assert_int_eq(parse(&o, err, 1, "--dtype=all"), 0);
    ck_assert_int_eq(o.dtypes.n, 3);
    ck_assert_int_eq(o.dtypes.v[0], DIPOLE_F32);
    ck_assert_int_eq(o.dtypes.v[2], DIPOLE_BF16);
    ck_assert_int_eq(parse(&o, err, 2, "--dtype", "f16,all,f16"), 0);
    ck_assert_int_eq(o.dtypes.n, 3); /* duplicates only repeat rows */
    ck_assert_int_eq(parse(&o, err, 1, "--dtype"), -1);
    ck_assert_ptr_nonnull(strstr(err, "--dtype needs a value"));

    /* Unset: f32 only, as before the flag. */
    bench_opts d;
    ck_assert_int_eq(parse(&o, err, 3, "--quick", "--decode", "off"), 0);
    bench_grid_defaults(&o, true, &d);
    ck_assert_int_eq(d.dtypes.n, 1);
    ck_assert_int_eq(d.dtypes.v[0], DIPOLE_F32);
    bench_point *p;
    int n = bench_grid_expand(&d, 0, &p);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(p[i].dtype, DIPOLE_F32);
    free(p);

    /* The dtypes of a shape and variant run back to back, just inside the variant. */
    ck_assert_int_eq(parse(&o, err, 9, "--quick", "--decode", "off", "--dtype", "f32,bf16",
                           "--variants", "softmax,signexp", "--causal", "off"),
                     0);
    bench_grid_defaults(&o, true, &d);
    n = bench_grid_expand(&d, 0, &p);
    /* 2 seqs x 2 variants x 2 dtypes x 2 paths */
    ck_assert_int_eq(n, 2 * 2 * 2 * 2);
    static const int want[][3] = {
        {DIPOLE_SOFTMAX, DIPOLE_F32, DIPOLE_PATH_TILED},
        {DIPOLE_SOFTMAX, DIPOLE_F32, DIPOLE_PATH_GEMM},
        {DIPOLE_SOFTMAX, DIPOLE_BF16, DIPOLE_PATH_TILED},
        {DIPOLE_SOFTMAX, DIPOLE_BF16, DIPOLE_PATH_GEMM},
        {DIPOLE_SIGNEXP, DIPOLE_F32, DIPOLE_PATH_TILED},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ck_assert_int_eq(p[i].variant, want[i][0]);
        ck_assert_int_eq(p[i].dtype, want[i][1]);
        ck_assert_int_eq(p[i].path, want[i][2]);
        ck_assert_int_eq(p[i].seq_k, 128);
    }
    ck_assert_int_eq(p[8].seq_k, 256);
    ck_assert_int_eq(p[8].dtype, DIPOLE_F32);
    free(p);
}
END_TEST

START_TEST(grid_defaults_and_expansion)
{
    bench_opts o, d;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 0), 0);
    bench_grid_defaults(&o, false, &d);
    ck_assert_int_eq(d.seqs.n, 5);
    ck_assert_int_eq(d.seqs.v[4], 8192);
    ck_assert_int_eq(d.head_dims.n, 2);
    bench_grid_defaults(&o, true, &d);
    ck_assert_int_eq(d.seqs.v[d.seqs.n - 1], 1024);
    ck_assert_int_eq(parse(&o, err, 3, "--quick", "--seq", "64"), 0);
    bench_grid_defaults(&o, false, &d);
    ck_assert_int_eq(d.seqs.n, 1); /* the user's list wins over the quick default */
    ck_assert_int_eq(d.seqs.v[0], 64);
    ck_assert_int_eq(d.bh.v[0].heads_q, 4);

    bench_point *p;
    const int n = bench_grid_expand(&d, 3, &p);
    /* 4 variants x 2 causal x 2 paths prefill + 4 x 2 paths decode */
    ck_assert_int_eq(n, 4 * 2 * 2 + 4 * 2);
    int decode = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(p[i].device, 3);
        ck_assert_int_eq(p[i].seq_k, 64);
        decode += p[i].seq_q == 1;
    }
    ck_assert_int_eq(decode, 8);
    free(p);
    ck_assert_int_eq(parse(&o, err, 5, "--quick", "--seq", "64", "--decode", "only"), 0);
    bench_grid_defaults(&o, false, &d);
    ck_assert_int_eq(bench_grid_expand(&d, 0, &p), 4 * 2);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(p[i].seq_q, 1);
    free(p);
    /* --paged: every forward decode row gets a paged twin right after it */
    ck_assert_int_eq(parse(&o, err, 7, "--quick", "--seq", "64", "--paged", "16", "--backward",
                           "--variants=softmax"), 0);
    bench_grid_defaults(&o, false, &d);
    ck_assert_int_eq(bench_grid_expand(&d, 0, &p), 2 * 2 * 2 + 2 * 2 + 2);
    int paged = 0;
    for (int i = 0; i < 2 * 2 * 2 + 2 * 2 + 2; i++)
        if (p[i].page_size) {
            paged++;
            ck_assert_int_eq(p[i].page_size, 16);
            ck_assert_int_eq(p[i].seq_q, 1);
            ck_assert_int_eq(p[i].pass, BENCH_FWD);
            ck_assert_int_eq(p[i - 1].page_size, 0); /* after its contiguous twin */
            ck_assert_int_eq(p[i - 1].path, p[i].path);
        }
    ck_assert_int_eq(paged, 2);
    free(p);
    ck_assert_int_eq(parse(&o, err, 2, "--paged", "0"), -1);
    ck_assert_ptr_nonnull(strstr(err, "--paged"));
    ck_assert_int_eq(parse(&o, err, 2, "--decode", "maybe"), -1);
    ck_assert_ptr_nonnull(strstr(err, "on, off or only"));
    ck_assert_int_eq(parse(&o, err, 4, "--backward", "--decode", "off", "--quick"), 0);
    bench_grid_defaults(&o, true, &d);
    ck_assert_int_eq(bench_grid_expand(&d, 0, &p), 4 * 2 * 2 * 2 * 2);
    ck_assert_int_eq(p[1].pass, BENCH_BWD);
    free(p);
}
END_TEST

/* --varlen[=SEED]: each prefill row (both passes) followed by its packed and padded twins;
 * decode rows have none; without --batch-heads the defaults trade heads for a batch. */
START_TEST(varlen_grid)
{
    bench_opts o, d;
    char err[256];
    bench_point *p;
    ck_assert_int_eq(parse(&o, err, 0), 0);
    ck_assert(!o.varlen);
    ck_assert_int_eq(parse(&o, err, 7, "--quick", "--varlen", "--seq", "64", "--backward",
                           "--variants=softmax", "--path=tiled"), 0);
    ck_assert(o.varlen);
    ck_assert_int_eq(o.varlen_seed, 1);
    bench_grid_defaults(&o, true, &d);
    ck_assert(d.bh.n == 1 && d.bh.v[0].batch == 4 && d.bh.v[0].heads_q == 1);
    /* 2 causal x 2 passes x (row + 2 twins) prefill, 1 decode row (forward only here) x 2 passes */
    const int n = bench_grid_expand(&d, 0, &p);
    ck_assert_int_eq(n, 2 * 2 * 3 + 2);
    int twins = 0;
    for (int i = 0; i < n; i++) {
        if (p[i].batching == BENCH_FIXED)
            continue;
        twins++;
        ck_assert_int_gt(p[i].seq_q, 1);
        ck_assert_int_eq(p[i].varlen_seed, 1);
        const bench_batching want = p[i].batching == BENCH_PACKED ? BENCH_FIXED : BENCH_PACKED;
        ck_assert_int_eq(p[i - 1].batching, want); /* fixed, packed, padded back to back */
        ck_assert_int_eq(p[i - 1].pass, p[i].pass);
        ck_assert_int_eq(p[i - 1].causal, p[i].causal);
    }
    ck_assert_int_eq(twins, 2 * 2 * 2);
    free(p);
    ck_assert_int_eq(parse(&o, err, 4, "--varlen=7", "--batch-heads", "2x3", "--quick"), 0);
    ck_assert_int_eq(o.varlen_seed, 7);
    bench_grid_defaults(&o, false, &d);
    ck_assert(d.bh.v[0].batch == 2 && d.bh.v[0].heads_q == 3); /* given: kept */
    ck_assert_int_eq(parse(&o, err, 1, "--varlen"), 0);
    bench_grid_defaults(&o, false, &d);
    ck_assert(d.bh.v[0].batch == 8 && d.bh.v[0].heads_q == 4); /* GPU 2x16 -> 8x4 */
    bench_grid_defaults(&o, true, &d);
    ck_assert(d.bh.v[0].batch == 4 && d.bh.v[0].heads_q == 2); /* CPU 1x8 -> 4x2 */
    ck_assert_int_eq(parse(&o, err, 1, "--varlen=x"), -1);
    ck_assert_ptr_nonnull(strstr(err, "--varlen"));
    /* a separate word is not its value */
    ck_assert_int_eq(parse(&o, err, 2, "--varlen", "7"), -1);
    ck_assert_ptr_nonnull(strstr(err, "unexpected argument '7'"));
}
END_TEST

/* --variants diff, --diff (its twins, right after each DIFF row) and --head-dim-v. */
START_TEST(diff_grid)
{
    bench_opts o, d;
    char err[256];
    ck_assert_int_eq(parse(&o, err, 1, "--variants=all"), 0);
    ck_assert_int_eq(o.variants.n, 5);
    ck_assert_int_eq(o.variants.v[4], DIPOLE_DIFF);
    ck_assert_int_eq(parse(&o, err, 2, "--variants=softmax", "--diff"), -1);
    ck_assert_ptr_nonnull(strstr(err, "--diff twins DIFF rows: add diff to --variants"));
    ck_assert_int_eq(parse(&o, err, 2, "--head-dim-v", "-1"), -1);
    ck_assert_ptr_nonnull(strstr(err, "--head-dim-v"));
    ck_assert_int_eq(parse(&o, err, 8, "--quick", "--seq", "64", "--decode", "off", "--diff",
                           "--head-dim-v=128", "--backward"),
                     0);
    ck_assert(o.diff_twin);
    ck_assert_int_eq(o.head_dim_v, 128);
    bench_grid_defaults(&o, false, &d);
    ck_assert_int_eq(d.variants.n, 5); /* --diff brings DIFF into the default variants */
    bench_point *p;
    const int n = bench_grid_expand(&d, 0, &p);
    /* 5 variants x 2 causal x 2 paths x 2 passes, and a twin for each DIFF row */
    ck_assert_int_eq(n, 5 * 2 * 2 * 2 + 2 * 2 * 2);
    int twins = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(p[i].head_dim_v, 128);
        if (!p[i].two_sm)
            continue;
        twins++;
        ck_assert_int_eq(p[i].variant, DIPOLE_DIFF);
        ck_assert(!p[i - 1].two_sm && p[i - 1].variant == DIPOLE_DIFF);
        ck_assert_int_eq(p[i - 1].pass, p[i].pass);
        ck_assert_int_eq(p[i - 1].path, p[i].path);
    }
    ck_assert_int_eq(twins, 2 * 2 * 2);
    free(p);
}
END_TEST

Suite *bench_args_suite(void)
{
    Suite *s = suite_create("args");
    TCase *tc = tcase_create("args");
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, lists_and_ranges);
    tcase_add_test(tc, devices_outputs_switches);
    tcase_add_test(tc, rejects);
    tcase_add_test(tc, dtypes);
    tcase_add_test(tc, grid_defaults_and_expansion);
    tcase_add_test(tc, varlen_grid);
    tcase_add_test(tc, diff_grid);
    suite_add_tcase(s, tc);
    return s;
}
