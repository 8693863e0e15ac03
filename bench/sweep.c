/* Running the grid on one device: shared input buffers (one copy per dtype), then per point the
 * first call (JIT build or cache load, timed apart), warm-up, repetitions calibrated to the
 * time budget, and validation of sampled rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* OUT1, LSE1, DV1: a --diff twin's second SOFTMAX call's out, lse and dv (pole 1). */
enum { Q, K, V, V2, OUT, LSE, DOUT, DQ, DK, DV, DV2, OUT1, LSE1, DV1, NBUF };
enum { NDTYPE = 3 }; /* DIPOLE_F32, DIPOLE_F16, DIPOLE_BF16 */

typedef struct sweep_state {
    dipole_ctx *ctx;
    cl_context context;
    cl_command_queue queue;
    const bench_opts *o;
    const bench_device *dev;
    /* Inputs (Q, K, V, V2, DOUT) per dtype, from the same random floats so that the dtypes time
     * the same problem; outputs one per slot, 4 bytes an element, which any dtype fits. */
    cl_mem in[NDTYPE][NBUF], buf[NBUF];
    size_t elems[NBUF], in_elems[NDTYPE][NBUF]; /* the most any point uses (of that dtype) */
    float *host[NDTYPE][NBUF]; /* the inputs as each dtype stores them, widened: for validation */
    bool injected;
    /* what the log said during the first call */
    bool log_built, log_disk, log_forward;
    /* ms per flop of the last ok row per (pass, variant, path, dtype, decode): predicts slow
     * points */
    double rate[2][5][3][NDTYPE][2];
} sweep_state;

static bool is_input(int b)
{
    return b == Q || b == K || b == V || b == V2 || b == DOUT;
}

static void capture_log(void *user, const char *msg)
{
    sweep_state *s = user;
    if (strstr(msg, "disk cache hit"))
        s->log_disk = true;
    else if (strstr(msg, ": built"))
        s->log_built = true;
    if (s->log_forward)
        fprintf(stderr, "dipole: %s\n", msg);
}

static size_t elems_of(const bench_point *p, int which)
{
    const bench_layout l = bench_point_layout(p);
    const size_t ns = (size_t)bench_score_maps(p->variant), dv = (size_t)bench_head_dim_v(p);
    const size_t rq = (size_t)l.batch * (size_t)l.rows_q * (size_t)p->heads_q;
    const size_t rk = (size_t)l.batch * (size_t)l.rows_k * (size_t)p->heads_kv;
    const size_t q = rq * ns * (size_t)p->head_dim, o = rq * dv;
    const size_t k = rk * ns * (size_t)p->head_dim, v = rk * dv;
    const bool bwd = p->pass == BENCH_BWD, v2 = bench_reads_v2(p->variant);
    const size_t rows = (size_t)l.batch * (size_t)p->heads_q * (size_t)l.rows_q;
    switch (which) {
    case Q:
        return q;
    case OUT:
        return o;
    case K:
        return k;
    case V:
        return v;
    case V2:
        return v2 ? v : 0;
    case LSE:
        return bwd ? (size_t)dipole_lse_count(p->variant) * rows : 0;
    case DOUT:
        return bwd ? o : 0;
    case DQ:
        return bwd ? q : 0;
    case DK:
        return bwd ? k : 0;
    case DV:
        return bwd ? v : 0;
    case DV2:
        return bwd && v2 ? v : 0;
    case OUT1:
        return p->two_sm ? o : 0;
    case LSE1:
        return p->two_sm && bwd ? rows : 0;
    case DV1:
        return p->two_sm && bwd ? v : 0;
    }
    return 0;
}

/* Why a point cannot run on this device at all, or NULL. copies: bytes per input element over
 * every dtype the run uses, since it keeps the inputs in each of them resident at once. */
static const char *too_big(const bench_device *dev, const bench_point *p, double copies,
                           char *buf, size_t cap)
{
    double total = 0;
    for (int b = 0; b < NBUF; b++) {
        const double elems = (double)elems_of(p, b);
        const double bytes = elems * (double)(is_input(b) ? dipole_dtype_size(p->dtype) : 4);
        total += is_input(b) ? elems * copies : bytes;
        if (bytes > (double)dev->max_alloc) {
            snprintf(buf, cap, "a tensor needs %.0f MiB, over the device's max allocation of "
                               "%llu MiB", bytes / 1048576, dev->max_alloc >> 20);
            return buf;
        }
    }
    if (total > 0.7 * (double)dev->global_mem) {
        snprintf(buf, cap, "needs %.0f MiB of buffers, over 70%% of the device's %llu MiB",
                 total / 1048576, dev->global_mem >> 20);
        return buf;
    }
    return NULL;
}

static void fill_random(float *x, size_t n, unsigned long long seed)
{
    /* Uniform with unit variance: scores q.k/sqrt(d) then have unit variance too. */
    unsigned long long s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((double)(s >> 11) * (1.0 / 9007199254740992.0) * 3.4641016 - 1.7320508);
    }
}

static cl_int new_buffer(sweep_state *s, size_t bytes, const void *init, cl_mem *m)
{
    cl_int e;
    *m = clCreateBuffer(s->context, CL_MEM_READ_WRITE, bytes, NULL, &e);
    if (e == CL_SUCCESS && init)
        e = clEnqueueWriteBuffer(s->queue, *m, CL_TRUE, 0, bytes, init, 0, NULL, NULL);
    return e;
}

/* Input b in dtype dt: stored (scratch of 4 bytes an element) receives src rounded to dt and
 * goes to the device; the host copy is that rounding widened back, what the kernels read. */
static int upload_input(sweep_state *s, int b, dipole_dtype dt, const float *src, void *stored,
                        char *err, size_t cap)
{
    const size_t n = s->in_elems[dt][b], bytes = n * dipole_dtype_size(dt);
    float *host = s->host[dt][b] = malloc(n * sizeof *host);
    if (!host) {
        snprintf(err, cap, "out of host memory for %zu MiB of inputs", (n * sizeof *host) >> 20);
        return -1;
    }
    if (dipole_convert(dt, stored, DIPOLE_F32, src, n) != DIPOLE_SUCCESS ||
        dipole_convert(DIPOLE_F32, host, dt, stored, n) != DIPOLE_SUCCESS) {
        snprintf(err, cap, "dipole_convert to %s: %s", dipole_dtype_name(dt),
                 dipole_thread_last_error());
        return -1;
    }
    const cl_int e = new_buffer(s, bytes, stored, &s->in[dt][b]);
    if (e != CL_SUCCESS) {
        snprintf(err, cap, "allocating %zu MiB on the device failed: %s", bytes >> 20,
                 dipole_status_string((dipole_status)e));
        return -1;
    }
    return 0;
}

/* One random input, in every dtype the run uses; a shorter copy holds a prefix of the same
 * values, so every dtype times the same problem. */
static int setup_input(sweep_state *s, int b, char *err, size_t cap)
{
    const size_t n = s->elems[b];
    float *src = malloc(n * sizeof *src);
    void *stored = malloc(n * sizeof(float));
    int rc = 0;
    if (!src || !stored) {
        snprintf(err, cap, "out of host memory for %zu MiB of inputs", (n * sizeof *src) >> 20);
        rc = -1;
    } else {
        fill_random(src, n, (unsigned long long)b + 11);
    }
    for (int dt = 0; dt < NDTYPE && rc == 0; dt++)
        if (s->in_elems[dt][b])
            rc = upload_input(s, b, (dipole_dtype)dt, src, stored, err, cap);
    free(src);
    free(stored);
    return rc;
}

static int setup_buffers(sweep_state *s, const bench_point *pts, int n, const bool *skip,
                         char *err, size_t cap)
{
    for (int i = 0; i < n; i++)
        for (int b = 0; !skip[i] && b < NBUF; b++) {
            const size_t e = elems_of(&pts[i], b);
            size_t *in = &s->in_elems[pts[i].dtype][b];
            s->elems[b] = e > s->elems[b] ? e : s->elems[b];
            *in = e > *in ? e : *in;
        }
    for (int b = 0; b < NBUF; b++) {
        if (!s->elems[b])
            continue;
        if (is_input(b)) {
            if (setup_input(s, b, err, cap) != 0)
                return -1;
            continue;
        }
        const size_t bytes = s->elems[b] * sizeof(float);
        const cl_int e = new_buffer(s, bytes, NULL, &s->buf[b]);
        if (e != CL_SUCCESS) {
            snprintf(err, cap, "allocating %zu MiB on the device failed: %s", bytes >> 20,
                     dipole_status_string((dipole_status)e));
            return -1;
        }
    }
    return 0;
}

static void release_buffers(sweep_state *s)
{
    for (int b = 0; b < NBUF; b++) {
        if (s->buf[b])
            clReleaseMemObject(s->buf[b]);
        for (int dt = 0; dt < NDTYPE; dt++) {
            if (s->in[dt][b])
                clReleaseMemObject(s->in[dt][b]);
            free(s->host[dt][b]);
        }
    }
}

typedef struct call_args {
    dipole_attn_desc desc;
    dipole_tensor t[NBUF];
    const bench_point *p;
    bench_paged pg; /* a paged point's pools */
    int *lengths;   /* a --varlen twin's cu_seqlens (packed) or key lengths (padded) */
} call_args;

static void make_args(const sweep_state *s, const bench_point *p, call_args *a)
{
    const bench_layout l = bench_point_layout(p);
    memset(a, 0, sizeof *a);
    a->p = p;
    dipole_attn_desc_default(&a->desc);
    a->desc.variant = p->variant;
    a->desc.batch = p->batch; /* a packed batch keeps its count of sequences */
    a->desc.heads_q = p->heads_q;
    a->desc.heads_kv = p->heads_kv;
    a->desc.seq_q = l.rows_q;
    a->desc.seq_k = l.rows_k;
    a->desc.head_dim = p->head_dim;
    a->desc.head_dim_v = p->head_dim_v;
    a->desc.causal = p->causal;
    a->desc.path = p->path;
    a->desc.dtype = p->dtype;
    if (p->two_sm)
        a->desc.variant = DIPOLE_SOFTMAX; /* on each pole's views (call) */
    const int ns = bench_score_maps(p->variant), dv = bench_head_dim_v(p);
    for (int b = 0; b < NBUF; b++) {
        const bool query = b == Q || b == OUT || b == DOUT || b == DQ || b == OUT1;
        const bool scores = b == Q || b == K || b == DQ || b == DK; /* head_dim, ns heads */
        a->t[b] = dipole_tensor_dense(is_input(b) ? s->in[p->dtype][b] : s->buf[b],
                                      query ? l.rows_q : l.rows_k,
                                      (query ? p->heads_q : p->heads_kv) * (scores ? ns : 1),
                                      scores ? p->head_dim : dv);
    }
}

/* Pole p's heads of a DIFF q or k (or dq, dk): every other head from the p-th. */
static dipole_tensor pole_view(const dipole_tensor *t, int p, int head_dim)
{
    dipole_tensor v = *t;
    v.offset += (size_t)p * (size_t)head_dim;
    v.stride_head *= 2;
    return v;
}

/* A --diff twin: two SOFTMAX calls, one per pole, each into its own out (and lse, dv); the
 * combine is left out. The event is the second call's, which ends after the first. */
static dipole_status call_two_sm(sweep_state *s, call_args *a, bool with_lse, cl_event *ev)
{
    dipole_status st = DIPOLE_SUCCESS;
    const int d = a->p->head_dim;
    for (int p = 0; p < 2 && st == DIPOLE_SUCCESS; p++) {
        const dipole_tensor q = pole_view(&a->t[Q], p, d), k = pole_view(&a->t[K], p, d);
        const dipole_tensor *out = &a->t[p ? OUT1 : OUT];
        cl_mem lse = s->buf[p ? LSE1 : LSE];
        cl_event *e = p ? ev : NULL;
        if (a->p->pass == BENCH_FWD || with_lse) {
            st = dipole_attention(s->ctx, &a->desc, &q, &k, &a->t[V], NULL, out,
                                  with_lse ? lse : NULL, e);
        } else {
            const dipole_tensor dq = pole_view(&a->t[DQ], p, d), dk = pole_view(&a->t[DK], p, d);
            st = dipole_attention_backward(s->ctx, &a->desc, &q, &k, &a->t[V], NULL, out,
                                           &a->t[DOUT], lse, &dq, &dk, &a->t[p ? DV1 : DV],
                                           NULL, NULL, NULL, e);
        }
    }
    return st;
}

static dipole_status call(sweep_state *s, call_args *a, bool with_lse, cl_event *ev)
{
    const bool v2 = bench_reads_v2(a->p->variant);
    if (a->p->two_sm)
        return call_two_sm(s, a, with_lse, ev);
    if (a->p->page_size > 0)
        return dipole_attention_paged(s->ctx, &a->desc, &a->t[Q], &a->pg.t[0], &a->pg.t[1],
                                      v2 ? &a->pg.t[2] : NULL, &a->pg.paged, &a->t[OUT],
                                      with_lse ? s->buf[LSE] : NULL, ev);
    if (a->p->pass == BENCH_FWD || with_lse)
        return dipole_attention(s->ctx, &a->desc, &a->t[Q], &a->t[K], &a->t[V],
                                v2 ? &a->t[V2] : NULL, &a->t[OUT], with_lse ? s->buf[LSE] : NULL,
                                ev);
    return dipole_attention_backward(s->ctx, &a->desc, &a->t[Q], &a->t[K], &a->t[V],
                                     v2 ? &a->t[V2] : NULL, &a->t[OUT], &a->t[DOUT], s->buf[LSE],
                                     &a->t[DQ], &a->t[DK], &a->t[DV], v2 ? &a->t[DV2] : NULL,
                                     NULL, NULL, ev);
}

/* One call, waited for; wall ms or -1. */
static double call_wall(sweep_state *s, call_args *a, dipole_status *st)
{
    const double t0 = bench_now_ms();
    *st = call(s, a, false, NULL);
    if (*st == DIPOLE_SUCCESS)
        *st = (dipole_status)clFinish(s->queue);
    return *st == DIPOLE_SUCCESS ? bench_now_ms() - t0 : -1;
}

typedef struct fetch_ctx {
    sweep_state *s;
    const bench_point *p;
    int buf;
    int rows_q; /* query rows per batch of the layout */
    void *raw;  /* one row in the point's dtype */
} fetch_ctx;

static int fetch_row(void *user, int b, int i, int h, float *dst)
{
    const fetch_ctx *f = user;
    const bench_point *p = f->p;
    /* a row of out (head_dim_v) or of dq (DIFF: both pole heads, adjacent) */
    const size_t d = f->buf == OUT ? (size_t)bench_head_dim_v(p)
                                   : (size_t)bench_score_maps(p->variant) * (size_t)p->head_dim;
    const size_t es = dipole_dtype_size(p->dtype);
    const size_t at = (((size_t)b * f->rows_q + (size_t)i) * (size_t)p->heads_q + (size_t)h) * d;
    if (clEnqueueReadBuffer(f->s->queue, f->s->buf[f->buf], CL_TRUE, at * es, d * es, f->raw, 0,
                            NULL, NULL) != CL_SUCCESS)
        return -1;
    return dipole_convert(DIPOLE_F32, dst, p->dtype, f->raw, d) == DIPOLE_SUCCESS ? 0 : -1;
}

static void set_failure(bench_row *r, dipole_ctx *ctx, dipole_status st, const char *what)
{
    r->status = st == DIPOLE_ERR_UNSUPPORTED ? BENCH_UNSUPPORTED : BENCH_ERROR;
    const char *msg = dipole_ctx_last_error(ctx);
    snprintf(r->reason, sizeof r->reason, "%s%s%s", st == DIPOLE_ERR_UNSUPPORTED ? "" : what,
             st == DIPOLE_ERR_UNSUPPORTED ? "" : ": ",
             msg && *msg ? msg : dipole_status_string(st));
}

/* Repetitions with profiling events: each one spans from the end of the previous call's last
 * command (a marker before the first) to the end of its own, so a path that enqueues several
 * kernels is timed whole. Returns the count of times, 0 when the events gave none. */
static int time_events(sweep_state *s, call_args *a, int reps, double *times, dipole_status *st)
{
    cl_event *ev = calloc((size_t)reps + 1, sizeof *ev);
    int got = 0;
    if (!ev)
        return 0;
    *st = (dipole_status)clEnqueueMarkerWithWaitList(s->queue, 0, NULL, &ev[0]);
    for (int r = 0; r < reps && *st == DIPOLE_SUCCESS; r++)
        *st = call(s, a, false, &ev[r + 1]);
    if (*st == DIPOLE_SUCCESS)
        *st = (dipole_status)clFinish(s->queue);
    if (*st == DIPOLE_SUCCESS) {
        for (int r = 0; r < reps; r++) {
            const double t = ev[r] && ev[r + 1] ? bench_event_end_gap_ms(ev[r], ev[r + 1]) : -1;
            if (t <= 0) {
                got = 0;
                break;
            }
            times[got++] = t;
        }
    } else {
        clFinish(s->queue);
    }
    for (int r = 0; r <= reps; r++)
        if (ev[r])
            clReleaseEvent(ev[r]);
    free(ev);
    return got;
}

/* Without events: batches of calls with one finish each; each batch gives its mean. */
static int time_wall(sweep_state *s, call_args *a, int reps, double *times, dipole_status *st)
{
    const int batches = reps < 5 ? reps : 5, per = reps / batches;
    for (int bt = 0; bt < batches; bt++) {
        const double t0 = bench_now_ms();
        for (int r = 0; r < per; r++)
            if ((*st = call(s, a, false, NULL)) != DIPOLE_SUCCESS)
                return 0;
        if ((*st = (dipole_status)clFinish(s->queue)) != DIPOLE_SUCCESS)
            return 0;
        times[bt] = (bench_now_ms() - t0) / per;
    }
    return batches;
}

static double *rate_slot(sweep_state *s, const bench_point *p)
{
    return &s->rate[p->pass][p->variant % 5][p->path % 3][p->dtype % NDTYPE][bench_is_decode(p)];
}

static void run_args(sweep_state *s, const bench_point *p, bench_row *r, const call_args *args)
{
    const bench_opts *o = s->o;
    call_args a = *args;
    const double predicted = *rate_slot(s, p) * bench_flops(p);
    if (predicted > o->max_call_ms) {
        r->status = BENCH_SKIPPED;
        snprintf(r->reason, sizeof r->reason,
                 "predicted %.0f ms per call from the previous size, over --max-call-ms %.0f",
                 predicted, o->max_call_ms);
        return;
    }
    dipole_status st;
    /* The first call: plan (which builds or loads the kernel) + call + finish. */
    s->log_built = s->log_disk = false;
    const double t0 = bench_now_ms();
    if (p->pass == BENCH_FWD) {
        dipole_plan plan;
        st = dipole_attention_plan(s->ctx, &a.desc, &plan);
        if (st == DIPOLE_SUCCESS)
            snprintf(r->plan, sizeof r->plan, "%s", plan.reason);
        if (st != DIPOLE_SUCCESS) {
            set_failure(r, s->ctx, st, "dipole_attention_plan");
            return;
        }
    } else {
        /* The backward pass reads the forward's out and lse. */
        st = call(s, &a, true, NULL);
        if (st == DIPOLE_SUCCESS)
            st = (dipole_status)clFinish(s->queue);
        if (st != DIPOLE_SUCCESS) {
            set_failure(r, s->ctx, st, "forward for the backward pass");
            if (r->status == BENCH_UNSUPPORTED) { /* the backward cannot run on this path */
                char why[sizeof r->reason];
                snprintf(why, sizeof why, "%s", r->reason);
                snprintf(r->reason, sizeof r->reason, "the forward pass it needs: %.400s", why);
            }
            return;
        }
        s->log_built = s->log_disk = false; /* the cache column is about the backward kernels */
    }
    const double t1 = bench_now_ms();
    const double first_call = call_wall(s, &a, &st);
    if (st != DIPOLE_SUCCESS) {
        set_failure(r, s->ctx, st, p->pass == BENCH_FWD ? "dipole_attention"
                                                        : "dipole_attention_backward");
        return;
    }
    r->first_ms = (p->pass == BENCH_FWD ? t1 - t0 : 0) + first_call;
    snprintf(r->cache, sizeof r->cache, "%s",
             s->log_built ? "built" : s->log_disk ? "disk" : "memory");

    /* Validate the first call's output: every later call writes the same values. */
    float *const *h = s->host[p->dtype];
    bench_host_inputs in = {h[Q], h[K], h[V], h[V2], h[DOUT]};
    const size_t widest = (size_t)(bench_head_dim_v(p) > 2 * p->head_dim ? bench_head_dim_v(p)
                                                                          : 2 * p->head_dim);
    fetch_ctx fc = {s, p, p->pass == BENCH_FWD ? OUT : DQ, bench_point_layout(p).rows_q,
                    malloc(sizeof(float) * widest)};
    if (!fc.raw) {
        r->status = BENCH_ERROR;
        snprintf(r->reason, sizeof r->reason, "out of host memory");
        return;
    }
    /* A --diff twin is timed only: its outputs are the poles', not DIFF's. */
    const bool inject = o->inject_error && !s->injected && !p->two_sm;
    const bool valid = p->two_sm || bench_validate(p, &in, fetch_row, &fc, o->sample_rows,
                                                   o->atol, o->rtol, inject, r);
    s->injected |= inject;
    free(fc.raw);

    /* Warm-up: at least one call and a tenth of the budget; calibrates the repetitions. */
    double per_call = first_call, warm = 0;
    for (int w = 0; w < 20 && (w == 0 || warm < o->budget_ms / 10); w++) {
        const double t = call_wall(s, &a, &st);
        if (st != DIPOLE_SUCCESS) {
            set_failure(r, s->ctx, st, "warm-up call");
            return;
        }
        warm += t;
        per_call = w == 0 || t < per_call ? t : per_call;
    }
    int reps = per_call > 0 ? (int)ceil(o->budget_ms / per_call) : 1000;
    reps = reps < 3 ? 3 : reps > 1000 ? 1000 : reps;
    double *times = malloc(sizeof(double) * (size_t)reps);
    if (!times) {
        r->status = BENCH_ERROR;
        snprintf(r->reason, sizeof r->reason, "out of host memory");
        return;
    }
    int n = 0;
    if (s->dev->profiling) {
        n = time_events(s, &a, reps, times, &st);
        snprintf(r->timer, sizeof r->timer, "events");
    }
    if (n == 0 && st == DIPOLE_SUCCESS) {
        n = time_wall(s, &a, reps, times, &st);
        snprintf(r->timer, sizeof r->timer, "wall");
    }
    if (st != DIPOLE_SUCCESS || n == 0) {
        free(times);
        set_failure(r, s->ctx, st, "timed call");
        return;
    }
    r->reps = reps;
    r->min_ms = bench_min(times, n);
    r->median_ms = bench_median(times, n);
    free(times);
    /* JIT: what the first call took beyond a steady one (wall clock on both sides). */
    r->jit_ms = fmax(0, r->first_ms - per_call);
    r->gflops = bench_flops(p) / (r->median_ms * 1e6);
    r->gbps = bench_bytes(p) / (r->median_ms * 1e6);
    *rate_slot(s, p) = r->median_ms / bench_flops(p);
    r->status = valid ? BENCH_OK : BENCH_ERROR;
}

/* A --varlen twin's host arrays: the packed call's cu_seqlens (the same for q and k, since
 * each sequence is its own prefill) or the padded call's key lengths. Returns 0 or -1. */
static int varlen_args(const bench_point *p, call_args *a)
{
    int *cu = bench_cu_seqlens(p);
    if (!cu)
        return -1;
    a->lengths = cu;
    if (p->batching == BENCH_PACKED) {
        a->desc.cu_seqlens_q = a->desc.cu_seqlens_k = cu;
        return 0;
    }
    for (int b = 0; b < p->batch; b++)
        cu[b] = cu[b + 1] - cu[b]; /* in place: cu[b + 1] is still the prefix sum */
    a->desc.key_lengths = cu;
    return 0;
}

/* A point: its arguments (and a paged point's pools or a --varlen twin's lengths, made and
 * freed around it), then the run. */
static void run_point(sweep_state *s, const bench_point *p, bench_row *r)
{
    call_args a;
    make_args(s, p, &a);
    if (p->batching != BENCH_FIXED && varlen_args(p, &a) != 0) {
        r->status = BENCH_ERROR;
        snprintf(r->reason, sizeof r->reason, "out of host memory for the sequence lengths");
        return;
    }
    if (p->page_size > 0) {
        if (bench_paged_make(s->ctx, p, &a.t[K], &a.pg, r->reason, sizeof r->reason) != 0) {
            r->status = BENCH_ERROR;
            return;
        }
        a.desc.key_lengths = a.pg.kl;
    }
    run_args(s, p, r, &a);
    bench_paged_free(&a.pg);
    free(a.lengths);
}

static bench_row *new_row(bench_run *run)
{
    if (run->nrows == run->cap) {
        const int cap = run->cap ? run->cap * 2 : 64;
        bench_row *rows = realloc(run->rows, sizeof *rows * (size_t)cap);
        if (!rows)
            return NULL;
        run->rows = rows;
        run->cap = cap;
    }
    bench_row *r = &run->rows[run->nrows++];
    memset(r, 0, sizeof *r);
    snprintf(r->cache, sizeof r->cache, "-");
    snprintf(r->timer, sizeof r->timer, "-");
    r->pct_fma = r->pct_sgemm = r->pct_copy = r->tiled_over_gemm = NAN;
    r->over_softmax = r->over_f32 = r->over_dense = r->padded_over_packed = NAN;
    r->two_sm_over_fused = NAN;
    return r;
}

int bench_sweep(dipole_ctx *ctx, const bench_opts *o, const bench_device *dev,
                const bench_point *pts, int npts, bench_run *run, int *done, int total,
                bool progress)
{
    sweep_state s;
    memset(&s, 0, sizeof s);
    s.ctx = ctx;
    s.context = dipole_ctx_cl_context(ctx);
    s.queue = dipole_ctx_queue(ctx);
    s.o = o;
    s.dev = dev;
    const char *lg = getenv("DIPOLE_LOG");
    s.log_forward = lg && *lg && strcmp(lg, "0") != 0;
    char err[256] = "", why[256];
    bool *skip = calloc((size_t)npts + 1, sizeof *skip);
    if (!skip)
        return -1;
    bool used[NDTYPE] = {false};
    double copies = 0;
    for (int i = 0; i < npts; i++)
        used[pts[i].dtype] = true;
    for (int dt = 0; dt < NDTYPE; dt++)
        copies += used[dt] ? (double)dipole_dtype_size((dipole_dtype)dt) : 0;
    for (int i = 0; i < npts; i++)
        skip[i] = too_big(dev, &pts[i], copies, why, sizeof why) != NULL;
    const int setup = setup_buffers(&s, pts, npts, skip, err, sizeof err);
    dipole_ctx_set_log(ctx, capture_log, &s);
    int rc = 0;
    for (int i = 0; i < npts; i++) {
        bench_row *r = new_row(run);
        if (!r) {
            rc = -1;
            break;
        }
        r->pt = pts[i];
        if (progress) {
            const bench_point *p = &pts[i];
            fprintf(stderr, "\r\033[K[%d/%d] %s %s %s %s N %dx%d d %d%s%s%s", ++*done, total,
                    bench_pass_name(p->pass), dipole_variant_name(p->variant),
                    dipole_path_name(p->path), dipole_dtype_name(p->dtype), p->seq_q, p->seq_k,
                    p->head_dim, p->causal ? " causal" : "", p->batching ? " " : "",
                    p->batching ? bench_batching_name(p->batching) : "");
            fflush(stderr);
        }
        if (setup != 0) {
            r->status = BENCH_ERROR;
            snprintf(r->reason, sizeof r->reason, "%s", err);
        } else if (skip[i]) {
            r->status = BENCH_SKIPPED;
            snprintf(r->reason, sizeof r->reason, "%s",
                     too_big(dev, &pts[i], copies, why, sizeof why));
        } else {
            run_point(&s, &pts[i], r);
        }
    }
    if (progress)
        fprintf(stderr, "\r\033[K");
    dipole_ctx_set_log(ctx, NULL, NULL);
    clFinish(s.queue);
    release_buffers(&s);
    free(skip);
    return rc;
}
