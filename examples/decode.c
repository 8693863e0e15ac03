/*
 * A tiny decoder on dipole's paged KV cache, driven the way an inference engine drives it.
 *
 * Model (random weights): three pre-norm layers, each RMSNorm -> Q/K/V projections with
 * rotary positions -> GQA attention (4 query heads over 2 KV heads of dim 64) -> output
 * projection -> residual -> RMSNorm -> SiLU MLP -> residual; a final RMSNorm and the logits.
 * The first and last layer use softmax attention, the one between them SIGNEXP (Cog
 * attention), as Cogformer does. All host math is plain fp32 C loops; only attention runs on
 * the device.
 *
 * Engine: two sequences of different prompt lengths in one batch. The page pools and the
 * block table are allocated once; each sequence's pages are shuffled over the pool. One
 * chunked prefill call (seq_q = the longer prompt, the shorter one left-padded), then 64
 * greedy decode steps (seq_q = 1). In every layer of every call the new keys and values go
 * into their pages with dipole_paged_kv_write and the queries attend over the pages with
 * dipole_attention_paged, key_lengths telling each sequence's cache length.
 *
 * Check: after the prefill and after every decode step, each sequence's newest logits are
 * recomputed from its tokens alone with no cache: every layer's attention over the whole
 * sequence so far with dipole_reference (the double-precision CPU reference, causal). Both
 * runs share the host functions around attention, so the comparison covers the cache
 * (writes, pages, lengths, masks) and the device's attention. Exit status 1 if any logit
 * differs by more than TOLERANCE times the largest |logit| of its vector; 77 if there is no
 * OpenCL device.
 */
#include <dipole/dipole.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    VOCAB = 256,
    D_MODEL = 256,
    LAYERS = 3,
    HEADS_Q = 4,
    HEADS_KV = 2,
    HEAD_DIM = 64,
    HALF_DIM = HEAD_DIM / 2,
    Q_DIM = HEADS_Q * HEAD_DIM,
    KV_DIM = HEADS_KV * HEAD_DIM,
    D_FF = 512,
    BATCH = 2,
    SHORT_PROMPT = 20,
    LONG_PROMPT = 33,
    GEN_STEPS = 64,
    MAX_LEN = LONG_PROMPT + GEN_STEPS, /* the longest cache, after the last step */
    PAGE_SIZE = 16,
    MAX_PAGES = (MAX_LEN + PAGE_SIZE - 1) / PAGE_SIZE,
    /* Spare pages nobody uses, so that no sequence's pages are simply the first ones. */
    POOL_PAGES = BATCH * MAX_PAGES + 3
};

static const int PROMPT_LEN[BATCH] = {SHORT_PROMPT, LONG_PROMPT};

/* fp32 everywhere: the device's attention differs from the double reference by ~1e-6 of the
 * values' scale, and the layers carry that through; a cache bug (a wrong page, slot, length
 * or mask) moves the logits by a sizeable part of their scale. */
#define TOLERANCE 1e-3
#define ROPE_BASE 10000.0

/* ---------------------------------------------------------------- errors */

/* Prints a failed dipole call with the context's message; nonzero when the call succeeded. */
static int dp_ok(const dipole_ctx *ctx, dipole_status st, const char *what)
{
    if (st == DIPOLE_SUCCESS)
        return 1;
    fprintf(stderr, "%s: %s: %s\n", what, dipole_status_string(st),
            ctx ? dipole_ctx_last_error(ctx) : dipole_thread_last_error());
    return 0;
}

/* Prints a failed OpenCL call; its code passes through dipole_status_string by name. */
static int cl_ok(cl_int err, const char *what)
{
    if (err == CL_SUCCESS)
        return 1;
    fprintf(stderr, "%s: %s\n", what, dipole_status_string((dipole_status)err));
    return 0;
}

/* Wall-clock seconds; C11's timespec_get, so that the file builds as plain C11 outside meson
 * too (clock_gettime would need a POSIX feature macro). */
static double seconds_now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- random numbers */

/* splitmix64: a fixed seed gives the same weights and prompts on every machine. */
static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_uniform(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 40) * 0x1p-23 - 1.0);
}

/* ---------------------------------------------------------------- the model */

typedef struct layer {
    dipole_variant variant;
    float *attn_gain, *mlp_gain; /* [D_MODEL] RMSNorm gains */
    /* Matrices are stored input-major, [in][out], so that a projection adds scaled rows of
     * the matrix, a loop the compiler vectorises without reordering any sum. */
    float *wq, *wk, *wv; /* [D_MODEL][Q_DIM], [D_MODEL][KV_DIM] x 2 */
    float *wo;           /* [Q_DIM][D_MODEL] */
    float *w_up;         /* [D_MODEL][D_FF] */
    float *w_down;       /* [D_FF][D_MODEL] */
} layer;

typedef struct model {
    layer layers[LAYERS];
    float *embed;      /* [VOCAB][D_MODEL] */
    float *final_gain; /* [D_MODEL] */
    float *w_logits;   /* [D_MODEL][VOCAB] */
    float *rope_cos, *rope_sin; /* [MAX_LEN][HALF_DIM] */
    float *arena;      /* every array above, in one allocation */
} model;

static size_t model_floats(void)
{
    const size_t per_layer = 2 * D_MODEL + (size_t)D_MODEL * (Q_DIM + 2 * KV_DIM) +
                             (size_t)Q_DIM * D_MODEL + 2 * (size_t)D_MODEL * D_FF;
    return LAYERS * per_layer + (size_t)VOCAB * D_MODEL + D_MODEL + (size_t)D_MODEL * VOCAB +
           2 * (size_t)MAX_LEN * HALF_DIM;
}

/* The next n floats of the arena. */
static float *take(float **next, size_t n)
{
    float *p = *next;
    *next += n;
    return p;
}

static float *random_array(float **next, size_t n, float scale, uint64_t *rng)
{
    float *p = take(next, n);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * rng_uniform(rng);
    return p;
}

/* RMSNorm gains near 1, so the norms are not all the identity. */
static float *random_gain(float **next, uint64_t *rng)
{
    float *p = take(next, D_MODEL);
    for (int i = 0; i < D_MODEL; i++)
        p[i] = 1.0f + 0.1f * rng_uniform(rng);
    return p;
}

/* Uniform [-a, a) has variance a^2 / 3: a = sqrt(3 / fan_in) keeps activations near unit
 * variance through a projection. */
static float init_scale(int fan_in)
{
    return sqrtf(3.0f / (float)fan_in);
}

static void rope_tables(model *m, float **next)
{
    m->rope_cos = take(next, (size_t)MAX_LEN * HALF_DIM);
    m->rope_sin = take(next, (size_t)MAX_LEN * HALF_DIM);
    for (int pos = 0; pos < MAX_LEN; pos++)
        for (int i = 0; i < HALF_DIM; i++) {
            const double angle = pos * pow(ROPE_BASE, -(double)i / HALF_DIM);
            m->rope_cos[pos * HALF_DIM + i] = (float)cos(angle);
            m->rope_sin[pos * HALF_DIM + i] = (float)sin(angle);
        }
}

static int model_init(model *m, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    m->arena = malloc(model_floats() * sizeof(float));
    if (!m->arena) {
        fprintf(stderr, "out of host memory for the weights\n");
        return 0;
    }
    float *next = m->arena;
    uint64_t rng = seed;
    for (int i = 0; i < LAYERS; i++) {
        layer *l = &m->layers[i];
        l->variant = i == 0 || i == LAYERS - 1 ? DIPOLE_SOFTMAX : DIPOLE_SIGNEXP;
        l->attn_gain = random_gain(&next, &rng);
        l->mlp_gain = random_gain(&next, &rng);
        l->wq = random_array(&next, (size_t)D_MODEL * Q_DIM, init_scale(D_MODEL), &rng);
        l->wk = random_array(&next, (size_t)D_MODEL * KV_DIM, init_scale(D_MODEL), &rng);
        l->wv = random_array(&next, (size_t)D_MODEL * KV_DIM, init_scale(D_MODEL), &rng);
        l->wo = random_array(&next, (size_t)Q_DIM * D_MODEL, init_scale(Q_DIM), &rng);
        l->w_up = random_array(&next, (size_t)D_MODEL * D_FF, init_scale(D_MODEL), &rng);
        l->w_down = random_array(&next, (size_t)D_FF * D_MODEL, init_scale(D_FF), &rng);
    }
    m->embed = random_array(&next, (size_t)VOCAB * D_MODEL, 1.0f, &rng);
    m->final_gain = random_gain(&next, &rng);
    m->w_logits = random_array(&next, (size_t)D_MODEL * VOCAB, init_scale(D_MODEL), &rng);
    rope_tables(m, &next);
    return 1;
}

/* ---------------------------------------------------------------- host math, one token */

/* y[out] = x[in] W for W stored [in][out]. */
static void matvec(const float *x, const float *w, int in, int out, float *y)
{
    memset(y, 0, sizeof(float) * (size_t)out);
    for (int i = 0; i < in; i++) {
        const float xi = x[i];
        const float *row = w + (size_t)i * (size_t)out;
        for (int j = 0; j < out; j++)
            y[j] += xi * row[j];
    }
}

static void rmsnorm(const float *x, const float *gain, float *y)
{
    double ss = 0;
    for (int i = 0; i < D_MODEL; i++)
        ss += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(ss / D_MODEL + 1e-6));
    for (int i = 0; i < D_MODEL; i++)
        y[i] = x[i] * r * gain[i];
}

/* Rotary position embedding on each head of v: the pairs (i, i + HALF_DIM) turned by the
 * angles of position pos. */
static void rope(const model *m, float *v, int heads, int pos)
{
    const float *c = m->rope_cos + (size_t)pos * HALF_DIM, *s = m->rope_sin + (size_t)pos * HALF_DIM;
    for (int h = 0; h < heads; h++) {
        float *x = v + h * HEAD_DIM;
        for (int i = 0; i < HALF_DIM; i++) {
            const float a = x[i], b = x[i + HALF_DIM];
            x[i] = a * c[i] - b * s[i];
            x[i + HALF_DIM] = a * s[i] + b * c[i];
        }
    }
}

/* One token's attention inputs from its residual h: q [Q_DIM], k and v [KV_DIM]. */
static void attn_inputs(const model *m, const layer *l, const float *h, int pos, float *q,
                        float *k, float *v)
{
    float x[D_MODEL];
    rmsnorm(h, l->attn_gain, x);
    matvec(x, l->wq, D_MODEL, Q_DIM, q);
    matvec(x, l->wk, D_MODEL, KV_DIM, k);
    matvec(x, l->wv, D_MODEL, KV_DIM, v);
    rope(m, q, HEADS_Q, pos);
    rope(m, k, HEADS_KV, pos);
}

/* The rest of the layer for one token: the output projection of its attention result att,
 * then the MLP, each added to the residual h. */
static void attn_outputs(const layer *l, const float *att, float *h)
{
    float t[D_MODEL], x[D_MODEL], u[D_FF];
    matvec(att, l->wo, Q_DIM, D_MODEL, t);
    for (int i = 0; i < D_MODEL; i++)
        h[i] += t[i];
    rmsnorm(h, l->mlp_gain, x);
    matvec(x, l->w_up, D_MODEL, D_FF, u);
    for (int j = 0; j < D_FF; j++)
        u[j] = u[j] / (1.0f + expf(-u[j])); /* SiLU */
    matvec(u, l->w_down, D_FF, D_MODEL, t);
    for (int i = 0; i < D_MODEL; i++)
        h[i] += t[i];
}

static void logits_of(const model *m, const float *h, float *logits)
{
    float x[D_MODEL];
    rmsnorm(h, m->final_gain, x);
    matvec(x, m->w_logits, D_MODEL, VOCAB, logits);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* ---------------------------------------------------------------- the paged engine */

typedef struct engine {
    dipole_ctx *ctx;
    cl_mem k_pool[LAYERS], v_pool[LAYERS]; /* [POOL_PAGES, PAGE_SIZE, HEADS_KV, HEAD_DIM] */
    cl_mem block_table;                    /* int32 [BATCH, MAX_PAGES], shared by the layers */
    dipole_paged_kv paged;
    /* One call's rows on the device, [BATCH, rows, heads, HEAD_DIM] with rows <= LONG_PROMPT. */
    cl_mem q, k, v, out;
    int length[BATCH]; /* tokens in each sequence's cache */
    /* The rows in flight on the host, [BATCH][rows][...]. */
    float *h, *qh, *kh, *vh, *ah;
    int positions[BATCH * LONG_PROMPT]; /* each row's position in its sequence, -1: padding */
} engine;

/* A device buffer, zero-filled where no initial contents are given, so that the warm-up
 * calls read defined values. */
static cl_mem device_buffer(dipole_ctx *ctx, size_t bytes, const void *init, const char *what)
{
    cl_int err;
    cl_mem m = clCreateBuffer(dipole_ctx_cl_context(ctx),
                              CL_MEM_READ_WRITE | (init ? CL_MEM_COPY_HOST_PTR : 0), bytes,
                              (void *)init, &err);
    if (!cl_ok(err, what))
        return NULL;
    if (!init) {
        const cl_float zero = 0;
        err = clEnqueueFillBuffer(dipole_ctx_queue(ctx), m, &zero, sizeof zero, 0, bytes, 0,
                                  NULL, NULL);
        if (!cl_ok(err, what)) {
            clReleaseMemObject(m);
            return NULL;
        }
    }
    return m;
}

/* Each sequence's MAX_PAGES pages drawn from a shuffled pool, as an allocator that has served
 * and freed other sequences would hand them out. */
static void shuffled_block_table(cl_int *table, uint64_t seed)
{
    int perm[POOL_PAGES];
    for (int i = 0; i < POOL_PAGES; i++)
        perm[i] = i;
    uint64_t rng = seed;
    for (int i = POOL_PAGES - 1; i > 0; i--) {
        const int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < BATCH * MAX_PAGES; i++)
        table[i] = perm[i];
}

static void engine_destroy(engine *e)
{
    for (int l = 0; l < LAYERS; l++) {
        if (e->k_pool[l])
            clReleaseMemObject(e->k_pool[l]);
        if (e->v_pool[l])
            clReleaseMemObject(e->v_pool[l]);
    }
    cl_mem *const bufs[] = {&e->block_table, &e->q, &e->k, &e->v, &e->out};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (*bufs[i])
            clReleaseMemObject(*bufs[i]);
    free(e->h);
    free(e->qh);
    free(e->kh);
    free(e->vh);
    free(e->ah);
    memset(e, 0, sizeof *e);
}

static int engine_init(engine *e, dipole_ctx *ctx, cl_int *table)
{
    memset(e, 0, sizeof *e);
    e->ctx = ctx;
    const size_t rows = (size_t)BATCH * LONG_PROMPT, fb = sizeof(float);
    const size_t pool_bytes = (size_t)POOL_PAGES * PAGE_SIZE * KV_DIM * fb;
    int ok = 1;
    for (int l = 0; l < LAYERS && ok; l++) {
        e->k_pool[l] = device_buffer(ctx, pool_bytes, NULL, "K page pool");
        e->v_pool[l] = device_buffer(ctx, pool_bytes, NULL, "V page pool");
        ok = e->k_pool[l] && e->v_pool[l];
    }
    shuffled_block_table(table, 0x5eed5u);
    if (ok)
        ok = (e->block_table = device_buffer(ctx, sizeof(cl_int) * BATCH * MAX_PAGES, table,
                                             "block table")) != NULL &&
             (e->q = device_buffer(ctx, rows * Q_DIM * fb, NULL, "q")) != NULL &&
             (e->k = device_buffer(ctx, rows * KV_DIM * fb, NULL, "k")) != NULL &&
             (e->v = device_buffer(ctx, rows * KV_DIM * fb, NULL, "v")) != NULL &&
             (e->out = device_buffer(ctx, rows * Q_DIM * fb, NULL, "out")) != NULL;
    e->paged = (dipole_paged_kv){e->block_table, MAX_PAGES, PAGE_SIZE};
    e->h = malloc(rows * D_MODEL * fb);
    e->qh = malloc(rows * Q_DIM * fb);
    e->kh = malloc(rows * KV_DIM * fb);
    e->vh = malloc(rows * KV_DIM * fb);
    e->ah = malloc(rows * Q_DIM * fb);
    if (ok && !(e->h && e->qh && e->kh && e->vh && e->ah)) {
        fprintf(stderr, "out of host memory for the engine\n");
        ok = 0;
    }
    if (!ok)
        engine_destroy(e);
    return ok;
}

static int upload(const engine *e, cl_mem dst, const float *src, size_t floats, const char *what)
{
    return cl_ok(clEnqueueWriteBuffer(dipole_ctx_queue(e->ctx), dst, CL_TRUE, 0,
                                      floats * sizeof(float), src, 0, NULL, NULL),
                 what);
}

/* The attention descriptor of one call: rows query rows per sequence over caches of
 * key_lengths tokens. */
static dipole_attn_desc call_desc(dipole_variant variant, int rows, const int *key_lengths)
{
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = variant;
    d.batch = BATCH;
    d.heads_q = HEADS_Q;
    d.heads_kv = HEADS_KV;
    d.head_dim = HEAD_DIM;
    d.seq_q = rows;
    d.seq_k = 0;
    for (int b = 0; b < BATCH; b++)
        d.seq_k = key_lengths[b] > d.seq_k ? key_lengths[b] : d.seq_k;
    /* Bottom-right to each sequence's length: a row sees its own position and those before. */
    d.causal = 1;
    d.key_lengths = key_lengths;
    return d;
}

/* The device half of a layer: the new rows' keys and values into their pages, then every
 * row's attention over its sequence's pages, read back into e->ah. */
static int attend_paged(engine *e, int li, const dipole_attn_desc *d)
{
    const int rows = d->seq_q;
    const size_t n = (size_t)BATCH * (size_t)rows;
    if (!upload(e, e->q, e->qh, n * Q_DIM, "upload q") ||
        !upload(e, e->k, e->kh, n * KV_DIM, "upload k") ||
        !upload(e, e->v, e->vh, n * KV_DIM, "upload v"))
        return 0;
    const dipole_tensor q = dipole_tensor_dense(e->q, rows, HEADS_Q, HEAD_DIM),
                        k_new = dipole_tensor_dense(e->k, rows, HEADS_KV, HEAD_DIM),
                        v_new = dipole_tensor_dense(e->v, rows, HEADS_KV, HEAD_DIM),
                        out = dipole_tensor_dense(e->out, rows, HEADS_Q, HEAD_DIM),
                        k_pages = dipole_tensor_dense(e->k_pool[li], PAGE_SIZE, HEADS_KV, HEAD_DIM),
                        v_pages = dipole_tensor_dense(e->v_pool[li], PAGE_SIZE, HEADS_KV, HEAD_DIM);
    if (!dp_ok(e->ctx,
               dipole_paged_kv_write(e->ctx, d, &e->paged, rows, e->positions, &k_new, &v_new,
                                     NULL, &k_pages, &v_pages, NULL, NULL),
               "dipole_paged_kv_write"))
        return 0;
    if (!dp_ok(e->ctx,
               dipole_attention_paged(e->ctx, d, &q, &k_pages, &v_pages, NULL, &e->paged, &out,
                                      NULL, NULL),
               "dipole_attention_paged"))
        return 0;
    return cl_ok(clEnqueueReadBuffer(dipole_ctx_queue(e->ctx), e->out, CL_TRUE, 0,
                                     n * Q_DIM * sizeof(float), e->ah, 0, NULL, NULL),
                 "read attention output");
}

/* One layer over the rows in flight; padding rows (position -1) stay zero and are skipped. */
static int layer_paged(engine *e, const model *m, int li, const dipole_attn_desc *d)
{
    const layer *l = &m->layers[li];
    const size_t n = (size_t)BATCH * (size_t)d->seq_q;
    memset(e->qh, 0, n * Q_DIM * sizeof(float));
    memset(e->kh, 0, n * KV_DIM * sizeof(float));
    memset(e->vh, 0, n * KV_DIM * sizeof(float));
    for (size_t r = 0; r < n; r++)
        if (e->positions[r] >= 0)
            attn_inputs(m, l, e->h + r * D_MODEL, e->positions[r], e->qh + r * Q_DIM,
                        e->kh + r * KV_DIM, e->vh + r * KV_DIM);
    if (!attend_paged(e, li, d))
        return 0;
    for (size_t r = 0; r < n; r++)
        if (e->positions[r] >= 0)
            attn_outputs(l, e->ah + r * Q_DIM, e->h + r * D_MODEL);
    return 1;
}

/* Runs one call: tokens [BATCH][rows], each sequence's new tokens at the end of its rows and
 * -1 before them (a shorter prompt is left-padded, so that every sequence's newest token is
 * in the last row, where bottom-right causal alignment puts it at its cache's end). Appends
 * the new tokens' keys and values to the cache and writes each sequence's logits for its
 * next token into logits [BATCH][VOCAB]. */
static int forward_paged(engine *e, const model *m, int rows, const int *tokens, float *logits)
{
    int key_lengths[BATCH];
    for (int b = 0; b < BATCH; b++) {
        int fresh = 0;
        for (int i = 0; i < rows; i++)
            fresh += tokens[b * rows + i] >= 0;
        for (int i = 0; i < rows; i++) {
            const int r = b * rows + i, first = rows - fresh;
            e->positions[r] = i >= first ? e->length[b] + i - first : -1;
            if (e->positions[r] >= 0)
                memcpy(e->h + (size_t)r * D_MODEL, m->embed + (size_t)tokens[r] * D_MODEL,
                       sizeof(float) * D_MODEL);
        }
        key_lengths[b] = e->length[b] + fresh;
    }
    for (int li = 0; li < LAYERS; li++) {
        const dipole_attn_desc d = call_desc(m->layers[li].variant, rows, key_lengths);
        if (!layer_paged(e, m, li, &d))
            return 0;
    }
    for (int b = 0; b < BATCH; b++) {
        logits_of(m, e->h + ((size_t)b * rows + rows - 1) * D_MODEL, logits + b * VOCAB);
        e->length[b] = key_lengths[b];
    }
    return 1;
}

/* Builds (or loads from the disk cache) the kernels that calls of rows rows over caches of
 * key_lengths tokens use, so that what is timed next is the work and not the compiler: a
 * cache write with no token (positions -1) and one attention call per variant over the cache
 * as it is, its output discarded. An engine does the same when it loads a model. */
static int warm_up(engine *e, int rows, const int *key_lengths)
{
    static const dipole_variant variants[] = {DIPOLE_SOFTMAX, DIPOLE_SIGNEXP};
    for (int i = 0; i < BATCH * rows; i++)
        e->positions[i] = -1;
    const dipole_tensor q = dipole_tensor_dense(e->q, rows, HEADS_Q, HEAD_DIM),
                        k_new = dipole_tensor_dense(e->k, rows, HEADS_KV, HEAD_DIM),
                        v_new = dipole_tensor_dense(e->v, rows, HEADS_KV, HEAD_DIM),
                        out = dipole_tensor_dense(e->out, rows, HEADS_Q, HEAD_DIM),
                        k_pages = dipole_tensor_dense(e->k_pool[0], PAGE_SIZE, HEADS_KV, HEAD_DIM),
                        v_pages = dipole_tensor_dense(e->v_pool[0], PAGE_SIZE, HEADS_KV, HEAD_DIM);
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        const dipole_attn_desc d = call_desc(variants[i], rows, key_lengths);
        if (!dp_ok(e->ctx,
                   dipole_paged_kv_write(e->ctx, &d, &e->paged, rows, e->positions, &k_new,
                                         &v_new, NULL, &k_pages, &v_pages, NULL, NULL),
                   "warm-up dipole_paged_kv_write") ||
            !dp_ok(e->ctx,
                   dipole_attention_paged(e->ctx, &d, &q, &k_pages, &v_pages, NULL, &e->paged,
                                          &out, NULL, NULL),
                   "warm-up dipole_attention_paged"))
            return 0;
    }
    return cl_ok(clFinish(dipole_ctx_queue(e->ctx)), "clFinish after warm-up");
}

/* ---------------------------------------------------------------- the check */

/* Scratch for a recomputation of up to MAX_LEN tokens. */
typedef struct recompute {
    float *h, *q, *k, *v, *a;
} recompute;

static void recompute_free(recompute *w)
{
    free(w->h);
    free(w->q);
    free(w->k);
    free(w->v);
    free(w->a);
}

static int recompute_init(recompute *w)
{
    const size_t fb = sizeof(float) * MAX_LEN;
    w->h = malloc(fb * D_MODEL);
    w->q = malloc(fb * Q_DIM);
    w->k = malloc(fb * KV_DIM);
    w->v = malloc(fb * KV_DIM);
    w->a = malloc(fb * Q_DIM);
    if (w->h && w->q && w->k && w->v && w->a)
        return 1;
    fprintf(stderr, "out of host memory for the check\n");
    recompute_free(w);
    return 0;
}

/* The logits after the last of tokens[0..n), from the tokens alone: no cache, every layer's
 * attention over the whole sequence with the double-precision reference. */
static int forward_reference(const model *m, recompute *w, const int *tokens, int n,
                             float *logits)
{
    for (int t = 0; t < n; t++)
        memcpy(w->h + (size_t)t * D_MODEL, m->embed + (size_t)tokens[t] * D_MODEL,
               sizeof(float) * D_MODEL);
    for (int li = 0; li < LAYERS; li++) {
        const layer *l = &m->layers[li];
        for (int t = 0; t < n; t++)
            attn_inputs(m, l, w->h + (size_t)t * D_MODEL, t, w->q + (size_t)t * Q_DIM,
                        w->k + (size_t)t * KV_DIM, w->v + (size_t)t * KV_DIM);
        /* Only the newest row of the last layer reaches the logits: there, its query alone,
         * which bottom-right causal alignment puts at the last key. */
        const int first = li == LAYERS - 1 ? n - 1 : 0;
        dipole_attn_desc d;
        dipole_attn_desc_default(&d);
        d.variant = l->variant;
        d.batch = 1;
        d.heads_q = HEADS_Q;
        d.heads_kv = HEADS_KV;
        d.head_dim = HEAD_DIM;
        d.seq_q = n - first;
        d.seq_k = n;
        d.causal = 1;
        if (!dp_ok(NULL,
                   dipole_reference(&d, w->q + (size_t)first * Q_DIM, w->k, w->v, NULL,
                                    w->a + (size_t)first * Q_DIM),
                   "dipole_reference"))
            return 0;
        for (int t = first; t < n; t++)
            attn_outputs(l, w->a + (size_t)t * Q_DIM, w->h + (size_t)t * D_MODEL);
    }
    logits_of(m, w->h + (size_t)(n - 1) * D_MODEL, logits);
    return 1;
}

typedef struct check_stats {
    double worst_abs;   /* max |paged - recomputed| over every logit checked */
    double worst_rel;   /* the same, each over its vector's largest |recomputed logit| */
    int vectors;        /* logit vectors checked */
    int argmax_differs; /* of them, how many pick another greedy token (only a near-tie may) */
} check_stats;

/* Recomputes each sequence's newest logits and folds the differences into s. */
static int check_step(const model *m, recompute *w, int (*tokens)[MAX_LEN + 1],
                      const int *count, const float *logits, check_stats *s)
{
    float want[VOCAB];
    for (int b = 0; b < BATCH; b++) {
        if (!forward_reference(m, w, tokens[b], count[b], want))
            return 0;
        const float *got = logits + b * VOCAB;
        double scale = 0, diff = 0;
        for (int i = 0; i < VOCAB; i++) {
            scale = fmax(scale, fabs((double)want[i]));
            diff = fmax(diff, fabs((double)got[i] - want[i]));
        }
        s->worst_abs = fmax(s->worst_abs, diff);
        s->worst_rel = fmax(s->worst_rel, scale > 0 ? diff / scale : diff);
        s->vectors++;
        s->argmax_differs += argmax(got, VOCAB) != argmax(want, VOCAB);
    }
    return 1;
}

/* ---------------------------------------------------------------- the run */

typedef struct run_times {
    double warm_up, prefill, decode;
} run_times;

/* Prefill, then GEN_STEPS greedy decode steps, checking every step's logits. tokens[b] holds
 * the prompt on entry and the generated tokens after it on return. */
static int generate(engine *e, const model *m, recompute *w, int (*tokens)[MAX_LEN + 1],
                    int *count, check_stats *s, run_times *t)
{
    float logits[BATCH * VOCAB];
    int call[BATCH * LONG_PROMPT];
    for (int b = 0; b < BATCH; b++)
        for (int i = 0; i < LONG_PROMPT; i++) {
            const int pad = LONG_PROMPT - PROMPT_LEN[b];
            call[b * LONG_PROMPT + i] = i >= pad ? tokens[b][i - pad] : -1;
        }
    double t0 = seconds_now();
    if (!warm_up(e, LONG_PROMPT, PROMPT_LEN))
        return 0;
    t->warm_up = seconds_now() - t0;

    t0 = seconds_now();
    if (!forward_paged(e, m, LONG_PROMPT, call, logits))
        return 0;
    t->prefill = seconds_now() - t0;
    if (!check_step(m, w, tokens, count, logits, s))
        return 0;
    for (int b = 0; b < BATCH; b++)
        tokens[b][count[b]++] = argmax(logits + b * VOCAB, VOCAB);

    t0 = seconds_now();
    if (!warm_up(e, 1, e->length))
        return 0;
    t->warm_up += seconds_now() - t0;

    t->decode = 0;
    for (int step = 0; step < GEN_STEPS; step++) {
        for (int b = 0; b < BATCH; b++)
            call[b] = tokens[b][count[b] - 1];
        t0 = seconds_now();
        if (!forward_paged(e, m, 1, call, logits))
            return 0;
        t->decode += seconds_now() - t0;
        if (!check_step(m, w, tokens, count, logits, s))
            return 0;
        for (int b = 0; b < BATCH; b++)
            tokens[b][count[b]++] = argmax(logits + b * VOCAB, VOCAB);
    }
    return 1;
}

static void print_setup(const dipole_ctx *ctx, const cl_int *table)
{
    printf("dipole %s on %s\n", dipole_version(), dipole_ctx_device_name(ctx));
    printf("model: %d layers (", LAYERS);
    for (int i = 0; i < LAYERS; i++)
        printf("%s%s", i ? ", " : "",
               dipole_variant_name(i == 0 || i == LAYERS - 1 ? DIPOLE_SOFTMAX : DIPOLE_SIGNEXP));
    printf("), d_model %d, %d query heads : %d KV heads of dim %d, MLP %d, vocab %d, "
           "random weights, fp32\n",
           D_MODEL, HEADS_Q, HEADS_KV, HEAD_DIM, D_FF, VOCAB);
    printf("cache: %d sequences, prompts of %d and %d tokens, pages of %d tokens, a pool of %d "
           "pages per layer for K and for V\n",
           BATCH, PROMPT_LEN[0], PROMPT_LEN[1], PAGE_SIZE, POOL_PAGES);
    for (int b = 0; b < BATCH; b++) {
        printf("  block table of sequence %d:", b);
        for (int c = 0; c < MAX_PAGES; c++)
            printf(" %d", table[b * MAX_PAGES + c]);
        printf("\n");
    }
}

static void print_tokens(int (*tokens)[MAX_LEN + 1], const int *count)
{
    for (int b = 0; b < BATCH; b++) {
        printf("sequence %d: %d prompt tokens + %d generated:", b, PROMPT_LEN[b],
               count[b] - PROMPT_LEN[b]);
        for (int i = PROMPT_LEN[b]; i < count[b]; i++)
            printf(" %d", tokens[b][i]);
        printf("\n");
    }
}

int main(void)
{
    dipole_ctx *ctx = NULL;
    dipole_status st = dipole_ctx_create(&ctx, NULL);
    if (st != DIPOLE_SUCCESS) {
        fprintf(stderr, "no device: %s: %s\n", dipole_status_string(st),
                dipole_thread_last_error());
        return st == DIPOLE_ERR_NO_PLATFORM || st == DIPOLE_ERR_NO_DEVICE ? 77 : 1;
    }
    static model m;
    static engine e;
    static recompute w;
    static int tokens[BATCH][MAX_LEN + 1];
    cl_int table[BATCH * MAX_PAGES];
    int count[BATCH], ok = 0;
    check_stats s = {0};
    run_times t = {0};
    if (!model_init(&m, 0xd1901eu))
        goto done_ctx;
    if (!engine_init(&e, ctx, table))
        goto done_model;
    if (!recompute_init(&w))
        goto done_engine;
    print_setup(ctx, table);

    uint64_t rng = 0x9e0u;
    for (int b = 0; b < BATCH; b++) {
        for (int i = 0; i < PROMPT_LEN[b]; i++)
            tokens[b][i] = (int)(rng_next(&rng) % VOCAB);
        count[b] = PROMPT_LEN[b];
    }
    if (!generate(&e, &m, &w, tokens, count, &s, &t))
        goto done_all;

    print_tokens(tokens, count);
    printf("kernels built or loaded beforehand in %.2f s\n", t.warm_up);
    printf("prefill: %d + %d tokens in one call (seq_q %d): %.1f ms, %.0f tokens/s\n",
           PROMPT_LEN[0], PROMPT_LEN[1], LONG_PROMPT, 1e3 * t.prefill,
           (PROMPT_LEN[0] + PROMPT_LEN[1]) / t.prefill);
    printf("decode: %d steps x %d sequences (seq_q 1, caches up to %d tokens): %.3f s, "
           "%.0f tokens/s (%.2f ms a step)\n",
           GEN_STEPS, BATCH, MAX_LEN, t.decode, GEN_STEPS * BATCH / t.decode,
           1e3 * t.decode / GEN_STEPS);
    ok = s.worst_rel <= TOLERANCE;
    printf("check: %d logit vectors against a recomputation without cache (dipole_reference): "
           "max |diff| %.3g, max |diff| / max |logit| %.3g, tolerance %g: %s\n",
           s.vectors, s.worst_abs, s.worst_rel, TOLERANCE, ok ? "ok" : "FAILED");
    if (s.argmax_differs)
        printf("%d greedy tokens differ between the two%s\n", s.argmax_differs,
               ok ? " (near-ties of the top two logits)" : "");

done_all:
    recompute_free(&w);
done_engine:
    engine_destroy(&e);
done_model:
    free(m.arena);
done_ctx:
    dipole_ctx_destroy(ctx);
    return ok ? 0 : 1;
}
