/* The PyTorch golden outputs in ../shared/golden (computed in float64 from the reference
 * codebases' formulas; nobody here wrote them): every case, every variant, on the device and
 * through the CPU reference. Shapes come from the .npy files; a case is causal (bottom-right)
 * exactly when it ships mask.npy, which is checked against dipole's own mask rule. Every case
 * also runs in fp16 and bf16 storage. */
#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "npy.h"
#include "testutil.h"

/* PyTorch's own float32 run is within ~3e-7 of these outputs (manifest "checks"). */
#define GOLD_ATOL 2e-6
#define GOLD_RTOL 2e-5
/* Half storage (the inputs rounded to f16 / bf16, the device run in that dtype): against the
 * reference on the same rounded inputs, the output's own rounding (rtol 2^-10 / 2^-7, as the
 * dtype suite); against PyTorch's outputs of the unrounded inputs, also what rounding the
 * inputs moved: each score by a few ulps of |q||k| and each value by half an ulp, which the
 * softmax carries to the output on the scale of the row's values, so that bound is
 * atol + rtol (|want| + HALF_GOLD_RMS rms(want)) with the same rtol; the worst case of these
 * cases used 0.53 of it (DIPOLE_TEST_VERBOSE=1 prints each). */
#define HALF_ATOL 3e-5
#define HALF_GOLD_RMS 4

static const char *golden_dir(void)
{
    const char *env = getenv("DIPOLE_GOLDEN_DIR");
    return env && *env ? env : DIPOLE_DEFAULT_GOLDEN_DIR;
}

static void load(const char *dir, const char *name, npy_array *a)
{
    char path[4096], err[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_msg(npy_load(path, a, err, sizeof err) == 0, "%s", err);
}

static bool exists(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static double rms(const float *x, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    return sqrt(ss / (double)(n ? n : 1));
}

/* The inputs in storage form and rounded back to float (what the device reads, widened). */
typedef struct half_inputs {
    void *bits[4];
    float *wide[4];
} half_inputs;

static void half_inputs_make(dipole_dtype dt, npy_array *in[4], half_inputs *h)
{
    for (int i = 0; i < 4; i++) {
        const size_t n = in[i]->count;
        ck_assert_ptr_nonnull(h->wide[i] = malloc(n * sizeof(float)));
        memcpy(h->wide[i], in[i]->data, n * sizeof(float));
        h->bits[i] = tu_round_to(dt, h->wide[i], n);
    }
}

static void half_inputs_free(half_inputs *h)
{
    for (int i = 0; i < 4; i++)
        free(h->bits[i]), free(h->wide[i]);
}

/* Whether rounding the inputs flipped the sign of one of row (b, i, h)'s scores. SIGNEXP and
 * ROUTED jump there (the weight changes sign, or the key changes value), so against outputs of
 * the unrounded inputs such a row is not comparable at all; every key is checked, masked or not,
 * which only skips more. */
static bool sign_flipped(const dipole_attn_desc *d, const float *q, const float *k,
                         const float *qr, const float *kr, int b, int i, int h)
{
    const int D = d->head_dim, hk = h / (d->heads_q / d->heads_kv);
    const size_t qo = (((size_t)b * d->seq_q + i) * d->heads_q + h) * D;
    for (int j = 0; j < d->seq_k; j++) {
        const size_t ko = (((size_t)b * d->seq_k + j) * d->heads_kv + hk) * D;
        double s = 0, sr = 0;
        for (int c = 0; c < D; c++)
            s += (double)q[qo + c] * k[ko + c], sr += (double)qr[qo + c] * kr[ko + c];
        if ((s > 0) != (sr > 0) || (s < 0) != (sr < 0))
            return true;
    }
    return false;
}

/* One variant in half storage: the device against the reference on the rounded inputs, then
 * against PyTorch's golden output (rows whose sign pattern the rounding changed left out, at
 * most a tenth of them). */
static void check_half(const char *dir, const char *file, const dipole_attn_desc *d_in,
                       dipole_dtype dt, const half_inputs *h, const float *want, size_t nq,
                       const float *q, const float *k)
{
    dipole_attn_desc d = *d_in;
    d.dtype = dt;
    const double rtol = dt == DIPOLE_F16 ? 1.0 / 1024 : 1.0 / 128;
    void *bits = malloc(nq * dipole_dtype_size(dt));
    float *got = malloc(nq * sizeof(float)), *ref = malloc(nq * sizeof(float));
    ck_assert(bits && got && ref);
    dipole_status st = dipole_attention_host(tu_ctx(), &d, h->bits[0], h->bits[1], h->bits[2],
                                             h->bits[3], bits);
    ck_assert_msg(st == DIPOLE_SUCCESS, "%s %s %s: %s %s", dir, file, dipole_dtype_name(dt),
                  dipole_status_string(st), dipole_ctx_last_error(tu_ctx()));
    ck_assert_int_eq(dipole_convert(DIPOLE_F32, got, dt, bits, nq), DIPOLE_SUCCESS);
    ck_assert_int_eq(dipole_reference(&d, h->wide[0], h->wide[1], h->wide[2], h->wide[3], ref),
                     DIPOLE_SUCCESS);
    tu_err e = tu_compare(got, ref, nq, HALF_ATOL, rtol);
    ck_assert_msg(e.worst_ratio <= 1, "%s %s %s vs the reference on the rounded inputs: "
                  "element %zu got %.9g want %.9g", dir, file, dipole_dtype_name(dt), e.worst,
                  (double)got[e.worst], (double)ref[e.worst]);
    /* Rows left out compare their golden value with itself. */
    const bool jumps = d.variant == DIPOLE_SIGNEXP || d.variant == DIPOLE_ROUTED;
    size_t skipped = 0, rows = 0;
    for (int b = 0; b < d.batch; b++)
        for (int i = 0; i < d.seq_q; i++)
            for (int hh = 0; hh < d.heads_q; hh++, rows++)
                if (jumps && sign_flipped(&d, q, k, h->wide[0], h->wide[1], b, i, hh)) {
                    const size_t at = (((size_t)b * d.seq_q + i) * d.heads_q + hh) * d.head_dim;
                    memcpy(got + at, want + at, sizeof(float) * d.head_dim);
                    skipped++;
                }
    ck_assert_msg(skipped * 10 <= rows, "%s %s %s: rounding flipped a score's sign in %zu of "
                  "%zu rows", dir, file, dipole_dtype_name(dt), skipped, rows);
    e = tu_compare(got, want, nq, HALF_ATOL + rtol * HALF_GOLD_RMS * rms(want, nq), rtol);
    ck_assert_msg(e.worst_ratio <= 1, "%s %s %s vs PyTorch: element %zu got %.9g want %.9g "
                  "(%.2f of the bound)", dir, file, dipole_dtype_name(dt), e.worst,
                  (double)got[e.worst], (double)want[e.worst], e.worst_ratio);
    if (getenv("DIPOLE_TEST_VERBOSE"))
        fprintf(stderr, "%s %s %s: %.2f of the PyTorch bound (%zu of %zu rows left out)\n",
                dir, file, dipole_dtype_name(dt), e.worst_ratio, skipped, rows);
    free(bits), free(got), free(ref);
}

static int check_case(const char *dir)
{
    npy_array q, k, v, v2;
    load(dir, "q.npy", &q);
    load(dir, "k.npy", &k);
    load(dir, "v.npy", &v);
    load(dir, "v2.npy", &v2);
    ck_assert_int_eq(q.ndim, 4);
    ck_assert_int_eq(k.ndim, 4);
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.batch = (int)q.shape[0], d.seq_q = (int)q.shape[1], d.heads_q = (int)q.shape[2];
    d.head_dim = (int)q.shape[3];
    d.seq_k = (int)k.shape[1], d.heads_kv = (int)k.shape[2];
    d.causal = exists(dir, "mask.npy");
    if (d.causal) {
        /* dipole's visibility rule must reproduce the golden mask exactly. */
        npy_array mask;
        load(dir, "mask.npy", &mask);
        ck_assert(mask.is_u8);
        const unsigned char *m = mask.data;
        for (int b = 0; b < d.batch; b++)
            for (int i = 0; i < d.seq_q; i++)
                for (int j = 0; j < d.seq_k; j++) {
                    int want = j <= i + d.seq_k - d.seq_q;
                    ck_assert_msg(m[((size_t)b * d.seq_q + i) * d.seq_k + j] == want,
                                  "%s: mask (%d,%d,%d)", dir, b, i, j);
                }
        npy_free(&mask);
    }
    float alpha[64], beta[64];
    ck_assert_int_le(d.heads_q, 64);
    for (int h = 0; h < d.heads_q; h++)
        alpha[h] = 0.75f, beta[h] = 1.25f;

    static const struct {
        dipole_variant variant;
        const char *file;
        const char *lse_file; /* golden lse of pole 0 */
    } outs[] = {
        {DIPOLE_SOFTMAX, "out_softmax.npy", "lse_softmax.npy"},
        {DIPOLE_SIGNEXP, "out_cog.npy", "lse_abs.npy"},
        {DIPOLE_ROUTED, "out_dipole_v1.npy", "lse_abs.npy"},
        {DIPOLE_TWO_POLE, "out_dipole_v2.npy", "lse_softmax.npy"},
    };
    const size_t nq = q.count;
    npy_array *ins[4] = {&q, &k, &v, &v2};
    half_inputs half[2];
    half_inputs_make(DIPOLE_F16, ins, &half[0]);
    half_inputs_make(DIPOLE_BF16, ins, &half[1]);
    float *got = malloc(nq * sizeof(float));
    float *lse = malloc(sizeof(float) * 2 * (size_t)d.batch * d.heads_q * d.seq_q);
    int checked = 0;
    for (size_t o = 0; o < sizeof outs / sizeof outs[0]; o++) {
        npy_array want, want_lse;
        load(dir, outs[o].file, &want);
        load(dir, outs[o].lse_file, &want_lse);
        ck_assert_uint_eq(want.count, nq);
        d.variant = outs[o].variant;
        d.pos_weight = d.variant == DIPOLE_TWO_POLE ? alpha : NULL;
        d.neg_weight = d.variant == DIPOLE_TWO_POLE ? beta : NULL;
        for (int path = 0; path < 2; path++) {
            dipole_status st =
                path == 0 ? dipole_attention_host_lse(tu_ctx(), &d, q.data, k.data, v.data, v2.data,
                                                      got, lse)
                          : dipole_reference_lse(&d, q.data, k.data, v.data, v2.data, got, lse);
            ck_assert_msg(st == DIPOLE_SUCCESS, "%s %s: %s %s", dir, outs[o].file,
                          dipole_status_string(st), dipole_ctx_last_error(tu_ctx()));
            tu_err e = tu_compare(got, want.data, nq, GOLD_ATOL, GOLD_RTOL);
            ck_assert_msg(e.worst_ratio <= 1, "%s %s (%s): element %zu got %.9g want %.9g", dir,
                          outs[o].file, path ? "reference" : "device", e.worst,
                          (double)got[e.worst], (double)((float *)want.data)[e.worst]);
            e = tu_compare(lse, want_lse.data, want_lse.count, GOLD_ATOL, GOLD_RTOL);
            ck_assert_msg(e.worst_ratio <= 1, "%s %s (%s): lse %zu got %.9g want %.9g", dir,
                          outs[o].lse_file, path ? "reference" : "device", e.worst,
                          (double)lse[e.worst], (double)((float *)want_lse.data)[e.worst]);
            checked++;
        }
        for (int hd = 0; hd < 2; hd++, checked++)
            check_half(dir, outs[o].file, &d, hd ? DIPOLE_BF16 : DIPOLE_F16, &half[hd],
                       want.data, nq, q.data, k.data);
        npy_free(&want);
        npy_free(&want_lse);
    }
    free(got);
    free(lse);
    half_inputs_free(&half[0]), half_inputs_free(&half[1]);
    npy_free(&q), npy_free(&k), npy_free(&v), npy_free(&v2);
    return checked;
}

START_TEST(test_golden_cases)
{
    const char *root = golden_dir();
    DIR *dir = opendir(root);
    if (!dir) {
        /* CI lays ../shared beside the clone; elsewhere the oracle may be absent. */
        ck_assert_msg(!getenv("CI"), "golden directory %s is missing", root);
        fprintf(stderr, "golden directory %s not found (set DIPOLE_GOLDEN_DIR): skipped\n", root);
        exit(77);
    }
    int cases = 0, checks = 0;
    struct dirent *ent;
    while ((ent = readdir(dir))) {
        if (ent->d_name[0] == '.')
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", root, ent->d_name);
        if (!exists(path, "q.npy"))
            continue;
        checks += check_case(path);
        cases++;
    }
    closedir(dir);
    fprintf(stderr, "golden: %d cases, %d output comparisons\n", cases, checks);
    ck_assert_int_ge(cases, 5);
}
END_TEST

Suite *golden_suite(void)
{
    Suite *s = suite_create("golden");
    TCase *tc = tcase_create("pytorch");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_golden_cases);
    suite_add_tcase(s, tc);
    return s;
}
