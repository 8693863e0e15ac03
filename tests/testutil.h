/* Helpers shared by the Check suites: inputs, tolerances, the shared device context. */
#ifndef DIPOLE_TESTUTIL_H
#define DIPOLE_TESTUTIL_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dipole/dipole.h"

/* The context every device test uses; created once. Exits 77 (skipped) without a device. */
dipole_ctx *tu_ctx(void);
void tu_ctx_release(void);

/* DIPOLE_TEST_SWEEP=classes: a suite covers head dims by class instead of every value, which
 * spares the kernel builds (each head dim is its own program). The plain `forward` suite keeps
 * the whole sweep; tests/meson.build sets classes where a layout or checker runs it again. */
bool tu_sweep_classes(void);

/* Deterministic inputs: normal(0, 1) * mult from a seeded generator. */
float *tu_random(size_t n, uint64_t seed, float mult);
/* x's n floats in dt's storage (malloc'd); x is rounded in place to the values stored, so that
 * a reference run on x sees exactly what the device reads. */
void *tu_round_to(dipole_dtype dt, float *x, size_t n);

/* Element counts of a descriptor's tensors. */
size_t tu_q_elems(const dipole_attn_desc *d);
size_t tu_kv_elems(const dipole_attn_desc *d);

typedef struct tu_err {
    double max_abs;     /* largest |got - ref| */
    size_t worst;       /* index of the worst element (by tolerance ratio) */
    double worst_ratio; /* |got - ref| / (atol + rtol |ref|); <= 1 passes */
    size_t nonfinite;   /* elements of got that are NaN or inf where ref is finite */
} tu_err;

/* Compares with absolute AND relative tolerance: |got - ref| <= atol + rtol * |ref|. */
tu_err tu_compare(const float *got, const float *ref, size_t n, double atol, double rtol);
/* Asserts |got - ref| <= atol + rtol (|ref| + rms_weight rms(ref)) (rms over ref's finite
 * elements), naming the case (what) and the tensor. */
void tu_expect_within(const char *what, const char *tensor, const float *got, const float *ref,
                      size_t n, double atol, double rtol, double rms_weight);

/* Runs desc on the device (host API) and the reference with seeded inputs scaled by mult,
 * asserts agreement within (atol, rtol), and returns the measured error. */
tu_err tu_check_against_reference(const dipole_attn_desc *desc, uint64_t seed, float mult,
                                  double atol, double rtol);

/* Copies of n values in double and in float (malloc'd; never NULL: a failed malloc fails the
 * check). */
double *tu_to_double(const float *x, size_t n);
float *tu_narrow(const double *x, size_t n);

/* A scalar function of inputs that arg points to (a test's double forward, dotted with dO). */
typedef double (*tu_scalar_fn)(void *arg);
/* Asserts grad[i] = d f / d x[i] by central differences (step 1e-5, in double; x[i] restored),
 * within atol + rtol |fd|, naming the case (what) and the tensor: at every coordinate, or where
 * most > 0 and n > most, at about most coordinates spread over x. */
void tu_expect_gradient(const char *what, const char *tensor, tu_scalar_fn f, void *arg,
                        double *x, const float *grad, size_t n, size_t most, double atol,
                        double rtol);

/* A one-line description of a descriptor for failure messages. */
const char *tu_desc_str(const dipole_attn_desc *d, char *buf, size_t cap);

/* Suites */
Suite *api_suite(void);
Suite *forward_suite(void);
Suite *golden_suite(void);
Suite *cache_suite(void);
Suite *backward_suite(void);
/* The GEMM-path backward (CLBlast): head_dim > 256, chunking, tiled agreement. */
Suite *backward_gemm_suite(void);
Suite *gemm_suite(void);
/* N = 16384 on the GEMM path: minutes on a CPU device, so a suite of its own. */
Suite *gemm_large_suite(void);
Suite *hardening_suite(void);
Suite *threads_suite(void);
Suite *env_suite(void);
Suite *noplatform_suite(void);
Suite *oclgrind_small_suite(void);
/* Half-precision storage: conversions, and the device against the reference in f16 and bf16. */
Suite *dtype_suite(void);
/* The paged KV cache: paged against contiguous calls, the cache write, refusals. */
Suite *paged_suite(void);
Suite *varlen_suite(void);
/* The host twins over the caller's arrays: in place, at any address, overlapping outputs. */
Suite *host_suite(void);

#endif
