/* dipole-bench: the types every part of the benchmark shares. One job per source file:
 * args.c (command line), grid.c (points to run), metrics.c (flops, bytes, ratios),
 * devices.c (listing and describing devices), timer.c (clocks and events), peak.c (device
 * ceilings), sweep.c (running points), validate.c (sampled rows against dipole_reference),
 * report_table.c / report_csv.c / report_json.c / plot.c (outputs), compare.c (--compare: a
 * saved run read with jansson), main.c. */
#ifndef DIPOLE_BENCH_H
#define DIPOLE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <dipole/dipole.h>

#define BENCH_FORMAT_VERSION 1
#define BENCH_MAX_LIST 16
#define BENCH_MAX_DEVICES 16

/* Exit statuses: 0 every row ok/unsupported/skipped, 1 an error row or failed output,
 * 2 bad command line, 3 no OpenCL device at all. */
enum { BENCH_EXIT_OK = 0, BENCH_EXIT_ERROR = 1, BENCH_EXIT_USAGE = 2, BENCH_EXIT_NO_DEVICE = 3 };

typedef struct bench_bh {
    int batch, heads_q, heads_kv;
} bench_bh;

/* A list flag: the values, and whether the user gave it (else the device's default). */
typedef struct bench_ilist {
    int n;
    int v[BENCH_MAX_LIST];
    bool set;
} bench_ilist;

typedef struct bench_bhlist {
    int n;
    bench_bh v[BENCH_MAX_LIST];
    bool set;
} bench_bhlist;

typedef struct bench_opts {
    bool help, list, all, quick, backward, inject_error, peaks, decode, tune;
    bool decode_only; /* --decode only: no prefill rows */
    int page_size;    /* --paged: decode rows also from a paged cache of these pages; 0 off */
    bool varlen;      /* --varlen: prefill rows also as a packed batch and its padded twin */
    bool diff_twin;   /* --diff: DIFF rows also as two SOFTMAX calls on the pole views */
    int head_dim_v;   /* --head-dim-v: v's and out's head dim for every point; 0 = head_dim */
    unsigned varlen_seed; /* --varlen=SEED: draws the sequence lengths (1) */
    int ndevices;
    const char *devices[BENCH_MAX_DEVICES]; /* selectors; none = dipole_ctx_create(NULL) */
    bench_ilist variants, head_dims, seqs, causal, paths, dtypes;
    bench_bhlist bh;
    double budget_ms;     /* timed repetitions per point */
    double max_call_ms;   /* points predicted slower than this per call are skipped */
    int sample_rows;      /* query rows validated per point */
    double atol, rtol;
    bool budget_set, max_call_set;
    const char *csv, *json, *plot, *compare;
    const char *tune_prior; /* test-only: saved as the tuned config before --tune starts */
} bench_opts;

/* Parses argv into o. Returns 0, or -1 with a message in err. */
int bench_parse_args(int argc, char **argv, bench_opts *o, char *err, size_t cap);
void bench_usage(FILE *f);

/* ---- grid.c */
typedef enum bench_pass { BENCH_FWD = 0, BENCH_BWD = 1 } bench_pass;

/* How a point's batch is laid out. FIXED: [batch, seq_q] rows, every sequence full length.
 * The --varlen twins hold sequences of drawn lengths L_b (varlen.c): PACKED, one batch of
 * sum L_b rows with cu_seqlens; PADDED, [batch, max L_b] rows with key_lengths = L_b, what a
 * caller without packed batches runs. */
typedef enum bench_batching { BENCH_FIXED = 0, BENCH_PACKED = 1, BENCH_PADDED = 2 } bench_batching;

typedef struct bench_point {
    int device;            /* index into the run's devices */
    bench_pass pass;
    dipole_variant variant;
    dipole_path path;
    dipole_dtype dtype;    /* storage of the tensors (desc.dtype) */
    int batch, heads_q, heads_kv, seq_q, seq_k, head_dim;
    int causal;
    int page_size;         /* K/V from a paged cache of pages this size; 0: contiguous */
    bench_batching batching;
    unsigned varlen_seed;  /* PACKED, PADDED: with batch and seq_q, draws the lengths */
    int head_dim_v;        /* of v, v2, out; 0 = head_dim */
    bool two_sm;           /* --diff twin: the DIFF point as two SOFTMAX calls, one per pole,
                            * on q and k views (offset + p stride_head, stride_head doubled) */
} bench_point;

/* Fills o's unset lists with the defaults for a device of this kind (quick, CPU or GPU). */
void bench_grid_defaults(const bench_opts *o, bool cpu, bench_opts *out);
/* Expands the lists into points (prefill rows, then decode rows seq_q = 1). Returns the
 * count, or -1 when out of memory; *points is malloc'd. */
int bench_grid_expand(const bench_opts *o, int device, bench_point **points);

/* ---- metrics.c */
/* (query row, key) pairs the mask leaves visible, summed over batch and heads. A --varlen twin
 * counts its real tokens alone, sequence b as an L_b x L_b problem, padded or not: the two
 * rows then compare per token. */
double bench_visible_pairs(const bench_point *p);
/* 2 d for Q.K^T and 2 dv for P.V per visible pair; TWO_POLE a second P.V, DIFF a second
 * Q.K^T and P.V (its --diff twin the same: the same problem); backward 2.5 times the
 * forward. */
double bench_flops(const bench_point *p);
/* Bytes of q, k, v, (v2), out read or written once (backward adds dout and the gradients), in
 * the point's dtype; a --varlen twin counts the real tokens' rows. */
double bench_bytes(const bench_point *p);
bool bench_is_decode(const bench_point *p);
bool bench_reads_v2(dipole_variant v);
/* v's and out's head dim: head_dim_v, else head_dim. */
int bench_head_dim_v(const bench_point *p);
/* Heads of q and k per query and key head: 2 for DIFF (one per pole), else 1. */
int bench_score_maps(dipole_variant v);
/* The table's kv column: "-" contiguous, "pN" paged, "pack" / "pad" the --varlen twins. */
void bench_kv_label(const bench_point *p, char *buf, size_t cap);

/* ---- varlen.c (--varlen) */
/* Sequence b's length: seq_q for a FIXED point; else drawn in [max(1, seq_q / 8), seq_q] from
 * (varlen_seed, batch, seq_q, b) alone, so that the twins of one point, and its every variant,
 * dtype, path and pass, hold the same sequences. */
int bench_seq_length(const bench_point *p, int b);
int bench_total_tokens(const bench_point *p); /* sum of the sequence lengths */
int bench_max_length(const bench_point *p);
/* The dense tensors a point's call reads: q and out [batch, rows_q], k and v [batch, rows_k].
 * FIXED: the point's sizes; PACKED: one batch of the total; PADDED: [batch, max length]. */
typedef struct bench_layout {
    int batch, rows_q, rows_k;
} bench_layout;
bench_layout bench_point_layout(const bench_point *p);
/* The prefix sums [batch + 1] of the lengths (cu_seqlens), malloc'd; NULL when out of memory. */
int *bench_cu_seqlens(const bench_point *p);
/* Where sequence b sits in the layout l (bench_point_layout) and which keys its rows see:
 * query row i (0 <= i < lq) is layout row q0 + i of layout batch lb and sees keys k0 + j for
 * j < min(lk, i + lk - lq + 1) with a causal mask, j < lk without. cu: bench_cu_seqlens (only
 * read for PACKED). */
typedef struct bench_seq_view {
    int lb, q0, k0, lq, lk;
} bench_seq_view;
bench_seq_view bench_seq_of(const bench_point *p, const bench_layout *l, const int *cu, int b);
/* "fixed", "packed" or "padded" (the CSV and JSON field batching). */
const char *bench_batching_name(bench_batching b);

/* ---- devices.c */
typedef struct bench_ceilings {
    double fma_gflops;   /* 0 = not measured */
    char fma_kernel[32];
    double sgemm_gflops;
    int sgemm_n;
    double copy_gbps;
    size_t copy_bytes;
    char note[256];      /* why something was not measured */
} bench_ceilings;

typedef struct bench_device {
    char selector[64];
    char platform[256];
    char name[256];
    char label[520];     /* as dipole_ctx_device_name */
    char driver[256];
    char version[256];
    bool cpu;
    unsigned compute_units, clock_mhz;
    unsigned long long local_mem, global_mem, max_alloc;
    size_t max_work_group;
    bool fp16, fp64, profiling;
    bench_ceilings ceil;
} bench_device;

/* Prints every platform and device (--list). Returns 0, or BENCH_EXIT_NO_DEVICE. */
int bench_list_devices(FILE *f);
/* The "P:D" selectors of every device (--all). Returns the count (0 when none). */
int bench_all_selectors(char sel[][16], int cap);
/* Describes the device behind a context. */
void bench_describe(dipole_ctx *ctx, const char *selector, bench_device *d);

/* ---- timer.c */
double bench_now_ms(void);
/* Milliseconds between two events' CL_PROFILING_COMMAND_END, or -1 on failure. */
double bench_event_end_gap_ms(cl_event a, cl_event b);
double bench_median(double *v, int n); /* sorts v */
double bench_min(const double *v, int n);

/* ---- peak.c */
/* Measures the FMA peak, streaming copy and CLBlast SGEMM on ctx's device. */
void bench_measure_ceilings(dipole_ctx *ctx, bench_device *dev, bool quick);

/* ---- paged.c (--paged) */
typedef struct bench_paged {
    cl_mem pool[3], table; /* pools of K, V (V2); block table [batch, pages per sequence] */
    dipole_tensor t[3];
    dipole_paged_kv paged;
    int *kl; /* key lengths: seq_k for every sequence */
} bench_paged;

/* Page pools for point p (page_size > 0) filled from src (K, V, V2 as contiguous tensors of
 * the point) through dipole_paged_kv_write. Returns 0, or -1 with a message in err (nothing
 * left to free). */
int bench_paged_make(dipole_ctx *ctx, const bench_point *p, const dipole_tensor *src,
                     bench_paged *pg, char *err, size_t cap);
void bench_paged_free(bench_paged *pg);

/* ---- sweep.c / validate.c */
typedef enum bench_status {
    BENCH_OK = 0,
    BENCH_UNSUPPORTED,
    BENCH_SKIPPED,
    BENCH_ERROR
} bench_status;

const char *bench_status_name(bench_status s);

typedef struct bench_row {
    bench_point pt;
    bench_status status;
    char reason[512];
    char plan[256];      /* the library's plan reason for the path it used */
    double first_ms;     /* plan + first call + finish: includes any JIT build */
    double jit_ms;       /* first_ms minus the steady median */
    char cache[16];      /* "built", "disk", "memory" or "-" */
    char timer[8];       /* "events" or "wall" */
    int reps;
    double median_ms, min_ms;
    double gflops, gbps; /* from the median */
    /* filled after the sweep from the device's ceilings; NaN when not applicable */
    double pct_fma, pct_sgemm, pct_copy, tiled_over_gemm;
    double over_softmax; /* median time / the SOFTMAX row's at the same point and requested path */
    double over_f32;     /* median time / the F32 row's at the same point, variant and path */
    double over_dense;   /* a paged row's median time / its contiguous twin's */
    double padded_over_packed; /* a packed row's padded twin's median time / its own */
    double two_sm_over_fused;  /* a DIFF row's --diff twin's median time / its own */
    int checked_rows;
    double max_abs_err, worst_ratio; /* worst |got-ref| / (atol + rtol |ref|) */
} bench_row;

typedef struct bench_run {
    bench_device dev[BENCH_MAX_DEVICES];
    int ndev;
    bench_row *rows;
    int nrows, cap;
    char command[1024];
    char date[32];
} bench_run;

/* Runs every point on ctx, appending rows. progress: print to stderr. */
int bench_sweep(dipole_ctx *ctx, const bench_opts *o, const bench_device *dev,
                const bench_point *pts, int npts, bench_run *run, int *done, int total,
                bool progress);

/* Inputs kept on the host for validation: the point's dtype values widened to float, exactly
 * what the device reads. */
typedef struct bench_host_inputs {
    const float *q, *k, *v, *v2, *dout;
} bench_host_inputs;

/* Checks the device output rows against dipole_reference on sampled (batch, head, row)
 * triples; fetch(b, i, h) reads row i of batch b of the point's layout (bench_point_layout:
 * a packed row of sequence b is row cu[b] + i of batch 0) from the device, widened to float.
 * The bound is
 * atol + rtol |ref|; f16 and bf16 points raise rtol to 2^-10 and 2^-7 (their stores' rounding),
 * and their backward rows add rtol 8 rms(ref row). Fills r's error fields; returns false on a
 * mismatch (r->reason says where). */
typedef int (*bench_fetch_row)(void *user, int b, int i, int h, float *dst);
bool bench_validate(const bench_point *p, const bench_host_inputs *in, bench_fetch_row fetch,
                    void *user, int samples, double atol, double rtol, bool inject, bench_row *r);

/* Derived columns: % of ceilings, tiled/gemm, variant/softmax, dtype/f32, paged/contiguous,
 * padded/packed and two-SOFTMAX/fused ratios. */
void bench_derive(bench_run *run);
/* True when any row is an error. */
bool bench_any_error(const bench_run *run);

/* ---- tune.c (--tune) */
#define BENCH_TUNE_MAX 16
#define BENCH_TUNE_LEN 96
#define BENCH_TUNE_NOISE 0.03 /* a winner must beat the current configuration by this much */

/* Tile configurations to try: CPU layout=cpu, block_m 64,128,256 x block_n 32,64,128; other
 * devices layout=group, block_m 32..256 up to max_work_group x block_n 16,32,64; then current
 * (the configuration in use, "" for none) unless already listed. Returns the count. */
int bench_tune_candidates(bool cpu, size_t max_work_group, const char *current,
                          char out[][BENCH_TUNE_LEN], int cap);
/* The shapes timed (SIGNEXP forward, tiled): CPU 1x8 heads, N 2048 (quick 1024), d 64;
 * GPU 1x8 heads, N 4096, d 64 and 128. Returns the count. */
int bench_tune_shapes(bool cpu, bool quick, bench_point pts[], int cap);
/* Tunes ctx's device (opened with selector) and prints the table to f. Returns a BENCH_EXIT_*
 * status: an error when the current configuration fails, no candidate is valid, or the winner
 * cannot be saved; a rejected candidate alone is not one. */
int bench_tune(dipole_ctx *ctx, const char *selector, const bench_opts *o,
               const bench_device *dev, FILE *f);

/* ---- outputs */
void bench_print_table(FILE *f, const bench_run *run);
int bench_write_csv(FILE *f, const bench_run *run);
int bench_write_json(FILE *f, const bench_run *run);
/* Draws GFLOP/s vs sequence length with gnuplot. Returns 0, or -1 with a message in err. */
int bench_plot(const bench_run *run, const char *path, char *err, size_t cap);
/* The gnuplot script (exposed for tests). */
int bench_plot_script(FILE *f, const bench_run *run, const char *path);
/* Prints each row's speed ratio to the matching row of a saved JSON run. Returns 0 or -1. */
int bench_compare(FILE *f, const bench_run *run, const char *old_json, char *err, size_t cap);

/* Unique key of a row for matching runs: "device|pass|variant|path|B|Hq|Hkv|Nq|Nk|d|causal",
 * then "|f16" or "|bf16" for those dtypes (so that saved runs from before --dtype still match),
 * "|pagedN" for a paged row, "|packedS" or "|paddedS" for a --varlen twin of seed S, "|dvN"
 * where head_dim_v differs from head_dim, "|2sm" for a --diff twin. */
void bench_row_key(const char *device_label, const bench_point *p, char *buf, size_t cap);
const char *bench_pass_name(bench_pass p);

#endif
