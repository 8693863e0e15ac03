/* Concurrency: one context shared by several threads gives exactly the serial results; error
 * messages stay with their thread; contexts created and destroyed in a loop (and from several
 * threads at once) work every time — run under valgrind/ASan, nothing leaks. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

enum { NTHREADS = 4, NJOBS = 8, REPEATS = 3 };

/* DIPOLE_TEST_LIGHT=1 (the valgrind setup) runs fewer jobs and rounds: under memcheck every
 * kernel build and launch is tens of times slower, and a few already show a leak or a race. */
static int light(void)
{
    const char *e = getenv("DIPOLE_TEST_LIGHT");
    return e && e[0] == '1';
}

typedef struct job {
    dipole_attn_desc d;
    float *q, *k, *v, *v2, *serial;
    size_t nq;
} job;

static job jobs[NJOBS];

static void jobs_make(void)
{
    for (int j = 0; j < NJOBS; j++) {
        job *b = &jobs[j];
        dipole_attn_desc_default(&b->d);
        b->d.variant = (dipole_variant)(j % 4);
        b->d.batch = 1 + j % 2;
        b->d.heads_q = 2, b->d.heads_kv = j % 3 ? 1 : 2;
        b->d.seq_q = 17 + 5 * j, b->d.seq_k = 23 + 3 * j, b->d.head_dim = 8 + 8 * (j % 3);
        b->d.causal = j % 2;
        b->d.window_left = j >= 4 ? 7 : -1;
        b->nq = tu_q_elems(&b->d);
        const size_t nk = tu_kv_elems(&b->d);
        b->q = tu_random(b->nq, 300 + j, 1), b->k = tu_random(nk, 400 + j, 1);
        b->v = tu_random(nk, 500 + j, 1), b->v2 = tu_random(nk, 600 + j, 1);
        b->serial = malloc(sizeof(float) * b->nq);
        ck_assert_ptr_nonnull(b->serial);
    }
}

static void jobs_free(void)
{
    for (int j = 0; j < NJOBS; j++)
        free(jobs[j].q), free(jobs[j].k), free(jobs[j].v), free(jobs[j].v2), free(jobs[j].serial);
}

typedef struct worker {
    dipole_ctx *ctx;
    int id;
    int mismatches;
    int failures;
    int foreign_messages;
    char first_error[256];
} worker;

/* Check's assertions are not thread-safe: workers only count, the main thread asserts. */
static void *work(void *arg)
{
    worker *w = arg;
    float *out = NULL;
    const int repeats = light() ? 1 : REPEATS, njobs = light() ? 2 : NJOBS;
    for (int r = 0; r < repeats; r++)
        for (int n = 0; n < njobs; n++) {
            const job *b = &jobs[(n + w->id + r) % njobs];
            float *grown = realloc(out, sizeof(float) * b->nq);
            if (!grown) {
                w->failures++;
                continue;
            }
            out = grown;
            dipole_status st = dipole_attention_host(w->ctx, &b->d, b->q, b->k, b->v, b->v2, out);
            if (st != DIPOLE_SUCCESS) {
                if (!w->failures++)
                    snprintf(w->first_error, sizeof w->first_error, "%s: %s",
                             dipole_status_string(st), dipole_thread_last_error());
                continue;
            }
            if (memcmp(out, b->serial, sizeof(float) * b->nq) != 0)
                w->mismatches++;
            /* A failure on this thread leaves this thread's message, whatever the others do. */
            dipole_attn_desc bad = b->d;
            bad.seq_q = -100 - w->id;
            char want[64];
            snprintf(want, sizeof want, "desc.seq_q = %d", bad.seq_q);
            if (dipole_attn_desc_validate(&bad) != DIPOLE_ERR_INVALID_ARG ||
                !strstr(dipole_thread_last_error(), want))
                w->foreign_messages++;
        }
    free(out);
    return NULL;
}

START_TEST(test_shared_ctx_matches_serial)
{
    dipole_ctx *ctx = tu_ctx();
    jobs_make();
    for (int j = 0; j < (light() ? 2 : NJOBS); j++) {
        job *b = &jobs[j];
        ck_assert_int_eq(dipole_attention_host(ctx, &b->d, b->q, b->k, b->v, b->v2, b->serial),
                         DIPOLE_SUCCESS);
        /* The serial results are right, so equality below means right. */
        float *ref = malloc(sizeof(float) * b->nq);
        ck_assert_int_eq(dipole_reference(&b->d, b->q, b->k, b->v, b->v2, ref), DIPOLE_SUCCESS);
        ck_assert(tu_compare(b->serial, ref, b->nq, 1e-5, 1e-4).worst_ratio <= 1);
        free(ref);
    }
    pthread_t th[NTHREADS];
    worker w[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        memset(&w[t], 0, sizeof w[t]);
        w[t].ctx = ctx;
        w[t].id = t;
        ck_assert_int_eq(pthread_create(&th[t], NULL, work, &w[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    for (int t = 0; t < NTHREADS; t++) {
        ck_assert_msg(w[t].failures == 0, "thread %d: %d failed calls, first: %s", t,
                      w[t].failures, w[t].first_error);
        ck_assert_msg(w[t].mismatches == 0, "thread %d: %d results differ from the serial ones",
                      t, w[t].mismatches);
        ck_assert_msg(w[t].foreign_messages == 0, "thread %d saw another thread's message", t);
    }
    jobs_free();
}
END_TEST

/* Create, use, destroy: each round must work (leaks show under valgrind / ASan). */
static int ctx_round(int seed)
{
    dipole_ctx *ctx;
    if (dipole_ctx_create(&ctx, NULL) != DIPOLE_SUCCESS)
        return 1;
    dipole_attn_desc d;
    dipole_attn_desc_default(&d);
    d.variant = (dipole_variant)(seed % 4);
    d.batch = 1, d.heads_q = d.heads_kv = 1, d.seq_q = d.seq_k = 9, d.head_dim = 8;
    float q[72], k[72], v[72], v2[72], out[72], ref[72];
    for (int i = 0; i < 72; i++) {
        q[i] = (float)((i * 7 + seed) % 13) / 13.0f - 0.5f;
        k[i] = (float)((i * 5 + 3 * seed) % 11) / 11.0f - 0.5f;
        v[i] = (float)((i * 3 + seed) % 17) / 17.0f;
        v2[i] = -v[i];
    }
    int bad = dipole_attention_host(ctx, &d, q, k, v, v2, out) != DIPOLE_SUCCESS;
    bad |= dipole_reference(&d, q, k, v, v2, ref) != DIPOLE_SUCCESS;
    /* A failed call before destroy must not leak either. */
    dipole_attn_desc broken = d;
    broken.head_dim = 0;
    bad |= dipole_attention_host(ctx, &broken, q, k, v, v2, out) != DIPOLE_ERR_INVALID_ARG;
    dipole_ctx_destroy(ctx);
    if (!bad)
        for (int i = 0; i < 72; i++)
            bad |= !(fabsf(out[i] - ref[i]) <= 1e-5f + 1e-4f * fabsf(ref[i]));
    return bad;
}

static void *ctx_loop(void *arg)
{
    int *bad = arg;
    for (int r = 0; r < (light() ? 1 : 4); r++)
        *bad += ctx_round(light() ? 0 : r);
    return NULL;
}

START_TEST(test_ctx_create_destroy_loop)
{
    tu_ctx();
    for (int r = 0; r < (light() ? 3 : 8); r++)
        ck_assert_msg(ctx_round(light() ? 0 : r) == 0, "round %d", r);
    /* Two threads creating and destroying their own contexts at once. */
    pthread_t th[2];
    int bad[2] = {0, 0};
    for (int t = 0; t < 2; t++)
        ck_assert_int_eq(pthread_create(&th[t], NULL, ctx_loop, &bad[t]), 0);
    for (int t = 0; t < 2; t++)
        ck_assert_int_eq(pthread_join(th[t], NULL), 0);
    ck_assert_int_eq(bad[0] + bad[1], 0);
}
END_TEST

Suite *threads_suite(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("threads");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_shared_ctx_matches_serial);
    tcase_add_test(tc, test_ctx_create_destroy_loop);
    suite_add_tcase(s, tc);
    return s;
}
