/* Flop and byte counts against brute-force counting with the library's mask rule. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench_tests.h"

static bench_point point(int nq, int nk, int causal)
{
    bench_point p = {0};
    p.variant = DIPOLE_SOFTMAX;
    p.path = DIPOLE_PATH_TILED;
    p.batch = 2, p.heads_q = 3, p.heads_kv = 3, p.head_dim = 8;
    p.seq_q = nq, p.seq_k = nk, p.causal = causal;
    return p;
}

/* Row i sees key j when j <= i + nk - nq (README: causal is aligned bottom-right). */
static double brute_pairs(int nq, int nk, int causal)
{
    double n = 0;
    for (int i = 0; i < nq; i++)
        for (int j = 0; j < nk; j++)
            n += !causal || j <= i + nk - nq;
    return n;
}

START_TEST(visible_pairs_exact)
{
    static const int sizes[][2] = {{1, 1},  {1, 7},  {7, 1},  {5, 5},   {4, 9},
                                   {9, 4},  {64, 64}, {1, 512}, {300, 17}, {17, 300}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int causal = 0; causal <= 1; causal++) {
            bench_point p = point(sizes[s][0], sizes[s][1], causal);
            const double want = brute_pairs(p.seq_q, p.seq_k, causal) * p.batch * p.heads_q;
            ck_assert_msg(bench_visible_pairs(&p) == want, "nq %d nk %d causal %d: %g != %g",
                          p.seq_q, p.seq_k, causal, bench_visible_pairs(&p), want);
        }
}
END_TEST

START_TEST(flops_formula)
{
    bench_point p = point(128, 128, 0);
    const double base = 4.0 * 2 * 3 * 128 * 128 * 8;
    ck_assert_double_eq(bench_flops(&p), base);
    p.causal = 1;
    ck_assert_double_eq(bench_flops(&p), 4.0 * 2 * 3 * (128.0 * 129 / 2) * 8);
    p.causal = 0;
    p.variant = DIPOLE_SIGNEXP;
    ck_assert_double_eq(bench_flops(&p), base);
    p.variant = DIPOLE_ROUTED; /* each pair's weight goes to v or v2, never both */
    ck_assert_double_eq(bench_flops(&p), base);
    p.variant = DIPOLE_TWO_POLE; /* a second P.V: 2d + 2d + 2d per pair */
    ck_assert_double_eq(bench_flops(&p), 1.5 * base);
    p.pass = BENCH_BWD;
    ck_assert_double_eq(bench_flops(&p), 2.5 * 1.5 * base);
    p.pass = BENCH_FWD;
    p.variant = DIPOLE_DIFF; /* a second Q.K^T and P.V: 8d per pair */
    ck_assert_double_eq(bench_flops(&p), 2 * base);
    p.two_sm = true; /* its twin: the same problem */
    ck_assert_double_eq(bench_flops(&p), 2 * base);
    p.two_sm = false;
    p.head_dim_v = 24; /* P.V counts 2 dv: 2 (2 8 + 2 24) per pair for DIFF */
    ck_assert_double_eq(bench_flops(&p), 2 * 3 * 128 * 128 * (2.0 * (2 * 8 + 2 * 24)));
    p.variant = DIPOLE_SOFTMAX;
    ck_assert_double_eq(bench_flops(&p), 2 * 3 * 128 * 128 * (2.0 * 8 + 2.0 * 24));
}
END_TEST

/* DIFF's q and k hold two heads a head; v, out keep heads and take head_dim_v. */
START_TEST(bytes_diff_and_head_dim_v)
{
    bench_point p = point(128, 64, 0);
    p.variant = DIPOLE_DIFF;
    p.head_dim_v = 16;
    const double nq = 2.0 * 128, nk = 2.0 * 64;
    const double want = 4.0 * (nq * 3 * 2 * 8 + nq * 3 * 16 + nk * 3 * 2 * 8 + nk * 3 * 16);
    ck_assert_double_eq(bench_bytes(&p), want);
    p.pass = BENCH_BWD;
    ck_assert_double_eq(bench_bytes(&p), 2 * want);
}
END_TEST

/* two_sm_over_fused sits on the DIFF row: its twin's time over its own, same path; the keys
 * of the twin and of a head_dim_v row are their own. */
START_TEST(derive_two_sm)
{
    bench_run run;
    bt_sample_run(&run);
    bench_row *rows = realloc(run.rows, 4 * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    run.rows = rows;
    run.nrows = run.cap = 4;
    /* 0: softmax 2 ms, 1: diff 3 ms, 2: its twin 4.5 ms, 3: diff gemm 6 ms (no gemm twin) */
    for (int i = 1; i < 4; i++)
        rows[i] = rows[0];
    rows[1].pt.variant = rows[2].pt.variant = rows[3].pt.variant = DIPOLE_DIFF;
    rows[2].pt.two_sm = true;
    rows[3].pt.path = DIPOLE_PATH_GEMM;
    rows[1].median_ms = 3, rows[2].median_ms = 4.5, rows[3].median_ms = 6;
    bench_derive(&run);
    ck_assert(isnan(rows[0].two_sm_over_fused));
    ck_assert_double_eq_tol(rows[1].two_sm_over_fused, 1.5, 1e-12);
    ck_assert(isnan(rows[2].two_sm_over_fused));
    ck_assert(isnan(rows[3].two_sm_over_fused));
    ck_assert_double_eq_tol(rows[1].over_softmax, 1.5, 1e-12);
    ck_assert(isnan(rows[2].over_softmax)); /* a twin has no softmax row of its kind */
    char a[256], b[256];
    bench_row_key("dev", &rows[1].pt, a, sizeof a);
    bench_row_key("dev", &rows[2].pt, b, sizeof b);
    ck_assert_str_ne(a, b);
    ck_assert_ptr_nonnull(strstr(b, "|2sm"));
    rows[1].pt.head_dim_v = 32;
    bench_row_key("dev", &rows[1].pt, a, sizeof a);
    ck_assert_ptr_nonnull(strstr(a, "|dv32"));
    bench_derive(&run); /* another head_dim_v: not the twin's problem */
    ck_assert(isnan(rows[1].two_sm_over_fused));
    free(run.rows);
}
END_TEST

START_TEST(bytes_formula)
{
    bench_point p = point(1, 1024, 0); /* decode */
    p.heads_kv = 1;                    /* MQA: one K/V head */
    ck_assert(bench_is_decode(&p));
    const double q = 2.0 * 1 * 3 * 8, kv = 2.0 * 1024 * 1 * 8;
    ck_assert_double_eq(bench_bytes(&p), 4 * (2 * q + 2 * kv));
    p.variant = DIPOLE_ROUTED;
    ck_assert_double_eq(bench_bytes(&p), 4 * (2 * q + 3 * kv));
    p.pass = BENCH_BWD;
    ck_assert_double_eq(bench_bytes(&p), 8 * (2 * q + 3 * kv));
    /* Half storage: every tensor counted is stored in 2 bytes an element. */
    p.dtype = DIPOLE_F16;
    ck_assert_double_eq(bench_bytes(&p), 4 * (2 * q + 3 * kv));
    p.dtype = DIPOLE_BF16;
    p.pass = BENCH_FWD;
    ck_assert_double_eq(bench_bytes(&p), 2 * (2 * q + 3 * kv));
    p = point(16, 16, 1);
    ck_assert(!bench_is_decode(&p));
}
END_TEST

START_TEST(row_key)
{
    bench_point p = point(64, 128, 1);
    char key[256];
    bench_row_key("dev", &p, key, sizeof key);
    /* f32 keeps the key of runs saved before --dtype */
    ck_assert_str_eq(key, "dev|fwd|softmax|tiled|2|3|3|64|128|8|1");
    p.dtype = DIPOLE_F16;
    bench_row_key("dev", &p, key, sizeof key);
    ck_assert_str_eq(key, "dev|fwd|softmax|tiled|2|3|3|64|128|8|1|f16");
    p.dtype = DIPOLE_BF16;
    p.pass = BENCH_BWD;
    bench_row_key("dev", &p, key, sizeof key);
    ck_assert_str_eq(key, "dev|bwd|softmax|tiled|2|3|3|64|128|8|1|bf16");
}
END_TEST

START_TEST(derive_ratios_and_percentages)
{
    bench_run run;
    bt_sample_run(&run);
    run.dev[0].ceil.fma_gflops = 100;
    run.dev[0].ceil.sgemm_gflops = 50;
    run.dev[0].ceil.copy_gbps = 10;
    /* make row 1 an ok gemm twin of row 0, twice as slow */
    run.rows[1].status = BENCH_OK;
    run.rows[1].median_ms = 2 * run.rows[0].median_ms;
    run.rows[1].gflops = run.rows[0].gflops / 2;
    bench_derive(&run);
    ck_assert_double_eq_tol(run.rows[0].pct_fma, run.rows[0].gflops, 1e-9);
    ck_assert_double_eq_tol(run.rows[0].pct_sgemm, 2 * run.rows[0].gflops, 1e-9);
    ck_assert_double_eq_tol(run.rows[0].pct_copy, 10 * run.rows[0].gbps, 1e-9);
    ck_assert_double_eq_tol(run.rows[0].tiled_over_gemm, 2.0, 1e-12);
    ck_assert(isnan(run.rows[1].tiled_over_gemm));
    /* SOFTMAX rows are their own reference; another path is not */
    ck_assert_double_eq_tol(run.rows[0].over_softmax, 1.0, 1e-12);
    ck_assert_double_eq_tol(run.rows[1].over_softmax, 1.0, 1e-12);
    /* a variant row against the SOFTMAX row of its point and path */
    run.rows[1].pt.path = DIPOLE_PATH_TILED;
    run.rows[1].pt.variant = DIPOLE_SIGNEXP;
    bench_derive(&run);
    ck_assert_double_eq_tol(run.rows[1].over_softmax, 2.0, 1e-12);
    run.rows[1].pt.causal = 1; /* another point: no reference */
    bench_derive(&run);
    ck_assert(isnan(run.rows[1].over_softmax));
    run.rows[1].pt.causal = 0;
    run.rows[1].pt.path = DIPOLE_PATH_GEMM;
    run.rows[1].pt.variant = DIPOLE_SOFTMAX;
    /* every row is f32 here: its own reference */
    ck_assert_double_eq_tol(run.rows[0].over_f32, 1.0, 1e-12);
    ck_assert(!bench_any_error(&run));
    run.rows[1].status = BENCH_ERROR;
    ck_assert(bench_any_error(&run));
    free(run.rows);
}
END_TEST

/* over_dense compares a paged row with its contiguous twin (same point, variant, dtype and
 * path); the other ratios stay within one kind of cache, and a paged row has its own key. */
START_TEST(derive_over_dense)
{
    bench_run run;
    bt_sample_run(&run);
    bench_row *rows = realloc(run.rows, 3 * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    run.rows = rows;
    run.nrows = run.cap = 3;
    /* 0: dense 2 ms, 1: paged 3 ms, 2: paged on the other path 1 ms */
    rows[1] = rows[0];
    rows[1].pt.page_size = 16;
    rows[1].median_ms = 3;
    rows[2] = rows[1];
    rows[2].pt.path = DIPOLE_PATH_GEMM;
    rows[2].median_ms = 1;
    bench_derive(&run);
    ck_assert(isnan(rows[0].over_dense));
    ck_assert_double_eq_tol(rows[1].over_dense, 1.5, 1e-12);
    ck_assert(isnan(rows[2].over_dense)); /* no dense gemm row */
    ck_assert_double_eq_tol(rows[1].over_softmax, 1.0, 1e-12); /* its own softmax reference */
    ck_assert_double_eq_tol(rows[1].tiled_over_gemm, 1.0 / 3, 1e-12); /* paged against paged */
    char a[256], b[256];
    bench_row_key("dev", &rows[0].pt, a, sizeof a);
    bench_row_key("dev", &rows[1].pt, b, sizeof b);
    ck_assert_str_ne(a, b);
    ck_assert_ptr_nonnull(strstr(b, "|paged16"));
    free(run.rows);
}
END_TEST

/* --varlen lengths: in [max(1, N/8), N], a function of (seed, batch, N, b) alone; the twins
 * count their real tokens, padded or packed alike; the layouts follow. */
START_TEST(varlen_lengths_and_counts)
{
    bench_point p = point(200, 200, 0);
    p.batch = 5;
    p.batching = BENCH_PACKED;
    p.varlen_seed = 3;
    int len[5], total = 0, max = 0;
    bool differ = false;
    for (int b = 0; b < 5; b++) {
        len[b] = bench_seq_length(&p, b);
        ck_assert_int_ge(len[b], 25);
        ck_assert_int_le(len[b], 200);
        differ |= b && len[b] != len[0];
        total += len[b];
        max = len[b] > max ? len[b] : max;
    }
    ck_assert(differ);
    ck_assert_int_eq(bench_total_tokens(&p), total);
    ck_assert_int_eq(bench_max_length(&p), max);
    bench_layout l = bench_point_layout(&p);
    ck_assert(l.batch == 1 && l.rows_q == total && l.rows_k == total);
    int *cu = bench_cu_seqlens(&p);
    ck_assert_ptr_nonnull(cu);
    ck_assert_int_eq(cu[0], 0);
    ck_assert_int_eq(cu[5], total);
    bench_seq_view v = bench_seq_of(&p, &l, cu, 2);
    ck_assert(v.lb == 0 && v.q0 == len[0] + len[1] && v.k0 == v.q0 && v.lq == len[2] &&
              v.lk == len[2]);

    /* the padded twin: the same lengths, [batch, max] rows, key length L_b */
    bench_point pad = p;
    pad.batching = BENCH_PADDED;
    pad.variant = DIPOLE_TWO_POLE, pad.pass = BENCH_BWD, pad.causal = 1; /* not in the seed */
    for (int b = 0; b < 5; b++)
        ck_assert_int_eq(bench_seq_length(&pad, b), len[b]);
    l = bench_point_layout(&pad);
    ck_assert(l.batch == 5 && l.rows_q == max && l.rows_k == max);
    v = bench_seq_of(&pad, &l, cu, 2);
    ck_assert(v.lb == 2 && v.q0 == 0 && v.k0 == 0 && v.lq == max && v.lk == len[2]);
    free(cu);

    /* another seed, batch or N draws other lengths */
    bench_point other = p;
    other.varlen_seed = 4;
    bool moved = false;
    for (int b = 0; b < 5; b++)
        moved |= bench_seq_length(&other, b) != len[b];
    ck_assert(moved);

    /* flops and bytes from the real tokens, the same for both twins */
    double pairs = 0, causal_pairs = 0;
    for (int b = 0; b < 5; b++) {
        pairs += brute_pairs(len[b], len[b], 0);
        causal_pairs += brute_pairs(len[b], len[b], 1);
    }
    ck_assert_double_eq(bench_visible_pairs(&p), pairs * p.heads_q);
    pad = p;
    pad.batching = BENCH_PADDED;
    ck_assert_double_eq(bench_visible_pairs(&pad), pairs * p.heads_q);
    p.causal = pad.causal = 1;
    ck_assert_double_eq(bench_visible_pairs(&p), causal_pairs * p.heads_q);
    ck_assert_double_eq(bench_visible_pairs(&pad), causal_pairs * p.heads_q);
    const double q = (double)total * 3 * 8, kv = q; /* heads_q = heads_kv = 3 */
    ck_assert_double_eq(bench_bytes(&p), 4 * (2 * q + 2 * kv));
    ck_assert_double_eq(bench_bytes(&pad), bench_bytes(&p));
    /* a fixed point is unchanged */
    bench_point fixed = point(200, 200, 0);
    ck_assert_int_eq(bench_seq_length(&fixed, 0), 200);
    ck_assert_int_eq(bench_total_tokens(&fixed), 2 * 200);
    /* N below 8: lengths from 1 */
    bench_point tiny = p;
    tiny.seq_q = tiny.seq_k = 3;
    for (int b = 0; b < 5; b++)
        ck_assert(bench_seq_length(&tiny, b) >= 1 && bench_seq_length(&tiny, b) <= 3);
}
END_TEST

/* padded_over_packed sits on the packed row: its padded twin's time over its own, same
 * variant, dtype and path; the twins keep their ratios among themselves and their own keys. */
START_TEST(derive_padded_over_packed)
{
    bench_run run;
    bt_sample_run(&run);
    bench_row *rows = realloc(run.rows, 5 * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    run.rows = rows;
    run.nrows = run.cap = 5;
    /* 0: fixed 2 ms, 1: packed 1 ms, 2: padded 1.5 ms, 3: packed gemm 4 ms (no padded gemm),
     * 4: packed with another seed 1 ms */
    for (int i = 1; i < 5; i++)
        rows[i] = rows[0];
    rows[1].pt.batching = rows[3].pt.batching = rows[4].pt.batching = BENCH_PACKED;
    rows[2].pt.batching = BENCH_PADDED;
    rows[1].pt.varlen_seed = rows[2].pt.varlen_seed = rows[3].pt.varlen_seed = 1;
    rows[4].pt.varlen_seed = 2;
    rows[1].median_ms = 1, rows[2].median_ms = 1.5, rows[3].median_ms = 4, rows[4].median_ms = 1;
    rows[3].pt.path = DIPOLE_PATH_GEMM;
    bench_derive(&run);
    ck_assert(isnan(rows[0].padded_over_packed));
    ck_assert_double_eq_tol(rows[1].padded_over_packed, 1.5, 1e-12);
    ck_assert(isnan(rows[2].padded_over_packed)); /* on the packed row only */
    ck_assert(isnan(rows[3].padded_over_packed));
    ck_assert(isnan(rows[4].padded_over_packed)); /* other lengths: not its twin */
    ck_assert_double_eq_tol(rows[1].tiled_over_gemm, 4.0, 1e-12); /* packed against packed */
    ck_assert(isnan(rows[0].tiled_over_gemm));                      /* no fixed gemm row */
    ck_assert(isnan(rows[4].tiled_over_gemm));
    ck_assert_double_eq_tol(rows[2].over_softmax, 1.0, 1e-12); /* its own softmax reference */
    char a[256], b[256], c[256];
    bench_row_key("dev", &rows[0].pt, a, sizeof a);
    bench_row_key("dev", &rows[1].pt, b, sizeof b);
    bench_row_key("dev", &rows[2].pt, c, sizeof c);
    ck_assert_str_ne(a, b);
    ck_assert_ptr_nonnull(strstr(b, "|packed1"));
    ck_assert_ptr_nonnull(strstr(c, "|padded1"));
    free(run.rows);
}
END_TEST

/* over_f32 compares a dtype with f32 at the same point, variant and path; the other ratios
 * stay within one dtype. */
START_TEST(derive_over_f32)
{
    bench_run run;
    bt_sample_run(&run);
    bench_row *rows = realloc(run.rows, 4 * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    run.rows = rows;
    run.nrows = run.cap = 4;
    /* 0: f32 tiled 2 ms, 1: f32 gemm 4 ms, 2: f16 tiled 1 ms, 3: bf16 signexp tiled 3 ms */
    rows[1] = rows[0];
    rows[1].pt.path = DIPOLE_PATH_GEMM;
    rows[1].median_ms = 4;
    rows[2] = rows[0];
    rows[2].pt.dtype = DIPOLE_F16;
    rows[2].median_ms = 1;
    rows[3] = rows[0];
    rows[3].pt.dtype = DIPOLE_BF16;
    rows[3].pt.variant = DIPOLE_SIGNEXP;
    rows[3].median_ms = 3;
    bench_derive(&run);
    ck_assert_double_eq_tol(rows[0].over_f32, 1.0, 1e-12);
    ck_assert_double_eq_tol(rows[1].over_f32, 1.0, 1e-12);
    ck_assert_double_eq_tol(rows[2].over_f32, 0.5, 1e-12);
    ck_assert(isnan(rows[3].over_f32)); /* no f32 signexp row */
    ck_assert_double_eq_tol(rows[0].tiled_over_gemm, 2.0, 1e-12);
    ck_assert(isnan(rows[2].tiled_over_gemm)); /* the gemm row is f32 */
    ck_assert_double_eq_tol(rows[2].over_softmax, 1.0, 1e-12);
    ck_assert(isnan(rows[3].over_softmax)); /* no bf16 softmax row */
    rows[0].status = BENCH_UNSUPPORTED; /* the f32 twin of rows 2 and 3 */
    rows[3].pt.variant = DIPOLE_SOFTMAX;
    bench_derive(&run);
    ck_assert(isnan(rows[0].over_f32));
    ck_assert(isnan(rows[2].over_f32));
    ck_assert(isnan(rows[3].over_f32));
    ck_assert_double_eq_tol(rows[1].over_f32, 1.0, 1e-12);
    rows[0].status = BENCH_OK;
    rows[2].pt.causal = 1; /* another point */
    bench_derive(&run);
    ck_assert(isnan(rows[2].over_f32));
    ck_assert_double_eq_tol(rows[3].over_f32, 1.5, 1e-12);
    free(run.rows);
}
END_TEST

Suite *bench_metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_add_test(tc, visible_pairs_exact);
    tcase_add_test(tc, flops_formula);
    tcase_add_test(tc, bytes_formula);
    tcase_add_test(tc, derive_ratios_and_percentages);
    tcase_add_test(tc, row_key);
    tcase_add_test(tc, derive_over_f32);
    tcase_add_test(tc, derive_over_dense);
    tcase_add_test(tc, varlen_lengths_and_counts);
    tcase_add_test(tc, derive_padded_over_packed);
    tcase_add_test(tc, bytes_diff_and_head_dim_v);
    tcase_add_test(tc, derive_two_sm);
    suite_add_tcase(s, tc);
    return s;
}
