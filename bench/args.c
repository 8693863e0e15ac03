/* dipole-bench's command line: flags into a bench_opts, and --help. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench.h"

void bench_usage(FILE *f)
{
    fputs(
        "usage: dipole-bench [options]\n"
        "Times dipole attention over a grid of problems on OpenCL devices, checks every point\n"
        "against the CPU reference, and compares it with the device's measured ceilings.\n"
        "\n"
        "devices:\n"
        "  --list                 list every platform and device, then exit\n"
        "  --device SEL           a device: P:D, gpu, cpu, accelerator or a name substring\n"
        "                         (repeatable; default: $DIPOLE_DEVICE, else the best GPU)\n"
        "  --all                  every device of every platform\n"
        "grid (comma lists; each has a default, smaller on CPU devices):\n"
        "  --variants LIST        softmax,signexp,routed,two_pole,diff or all\n"
        "                         [softmax,signexp,routed,two_pole; with --diff also diff]\n"
        "  --head-dims LIST       head_dim values                          [GPU 64,128; CPU 64]\n"
        "  --seq LIST             seq_q = seq_k values; A..B doubles from A to B\n"
        "                         [GPU 512..8192; CPU 256..1024]\n"
        "  --decode on|off|only   also (only) decode rows: seq_q = 1, seq_k from --seq  [on]\n"
        "  --paged PAGE_SIZE      each forward decode row also read from a paged KV cache\n"
        "                         (pages of PAGE_SIZE tokens in shuffled order, written by\n"
        "                         dipole_paged_kv_write; column kv)          [off]\n"
        "  --varlen[=SEED]        each prefill row (forward and backward) also as a packed\n"
        "                         batch (cu_seqlens) of B sequences of lengths drawn in\n"
        "                         [N/8, N] from SEED [1], and as its padded twin [B, max L]\n"
        "                         with key_lengths; both count the real tokens' flops and\n"
        "                         bytes; column kv (pack, pad), x_pad = padded time / packed\n"
        "                         time on the packed row; without --batch-heads the default\n"
        "                         shapes become quick 4x1, CPU 4x2, GPU 8x4  [off]\n"
        "  --diff                 each DIFF row (forward and backward) also as two SOFTMAX\n"
        "                         calls, one per pole, on views of q and k (offset +\n"
        "                         p stride_head, stride_head doubled), each into its own out\n"
        "                         (the backward: its own out, lse and dv), without the\n"
        "                         combine; x_2sm = two calls' time / the fused call's, on\n"
        "                         the fused row; the twin is timed, not validated  [off]\n"
        "  --head-dim-v N         v's and out's head dim for every point; 0 = head_dim  [0]\n"
        "  --batch-heads LIST     BxH or BxHq:Hkv (GQA) items               [GPU 2x16; CPU 1x8]\n"
        "                         (heads of the query: DIFF's q and k hold two a head)\n"
        "  --causal LIST          off,on                                    [off,on]\n"
        "  --path LIST            tiled,gemm,auto                           [tiled,gemm]\n"
        "  --dtype LIST           f32,f16,bf16 or all: storage of q, k, v, v2, out and the\n"
        "                         gradients (compute stays float32)         [f32]\n"
        "  --backward             also time dipole_attention_backward\n"
        "  --quick                small grid (d 64, N 128,256, 1x4) and short budgets\n"
        "timing and checking:\n"
        "  --budget-ms MS         time spent in timed repetitions per point [GPU 200; CPU 100]\n"
        "  --max-call-ms MS       skip points predicted slower than this per call [GPU 5000;\n"
        "                         CPU 3000]\n"
        "  --rows N               (batch, head, row) triples validated per point [16]\n"
        "  --atol X --rtol X      validation: |got-ref| <= atol + rtol |ref|  [5e-5, 5e-4];\n"
        "                         f16 and bf16 rows raise rtol to at least 2^-10 and 2^-7 (the\n"
        "                         output's rounding); their backward rows, whose dq carries\n"
        "                         the rounded forward out, allow atol + rtol (|ref| + 8 rms)\n"
        "                         with rms over the checked reference row\n"
        "  --no-peaks             skip measuring the device ceilings\n"
        "tuning:\n"
        "  --tune                 instead of the grid: time tile configurations of the tiled\n"
        "                         forward (SIGNEXP; CPU N 2048, --quick 1024, d 64; GPU N 4096,\n"
        "                         d 64 and 128) on each device, check each against the\n"
        "                         reference, and save the fastest valid one in the cache\n"
        "                         directory when it beats the current configuration by > 3%\n"
        "outputs (the table always goes to stdout; not with --tune):\n"
        "  --csv FILE  --json FILE  --plot FILE.svg|FILE.png  --compare OLD.json\n"
        "\n"
        "GFLOP/s = flops / median time, flops = sum over batch, heads_q and each visible\n"
        "(query, key) pair of 4*d (2d for Q.K^T, 2d for P.V); causal counts only unmasked\n"
        "pairs exactly; TWO_POLE counts its second P.V, 6*d per pair; DIFF its second Q.K^T\n"
        "and P.V, 8*d; with --head-dim-v a P.V counts 2*dv; backward = 2.5 x forward.\n"
        "GB/s = bytes of q, k, v, (v2), out (backward: + dout and the gradients) once / time,\n"
        "in the row's dtype. x_sm = time / the softmax row's, x_f32 = time / the f32 row's.\n"
        "--varlen twins count only their real tokens (sequence b as an L_b x L_b problem), so\n"
        "packed and padded GFLOP/s compare per token; x_pad > 1: the packed call is faster.\n"
        "The padded twin is the work a caller without packing runs, not the same mask: with\n"
        "key_lengths, row i of sequence b sees keys j < L_b and, causal, j <= i + L_b - max L\n"
        "(the diagonal meets the last row), so only a sequence stored in its last L_b rows\n"
        "keeps its causal mask; the padding rows are still launched (unmasked they attend to\n"
        "all L_b keys, causal they see none). The drawn lengths are listed below the table.\n"
        "Exit status: 0 no error rows, 1 an error row (validation or a failed call),\n"
        "2 bad arguments, 3 no OpenCL device.\n",
        f);
}

static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static bool parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

/* Splits a comma list into items (writable copy). Returns the count, or -1 if too many. */
static int split(char *s, char *items[], int cap)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == cap)
            return -1;
        items[n++] = tok;
    }
    return n;
}

static int add(bench_ilist *l, int v)
{
    for (int i = 0; i < l->n; i++)
        if (l->v[i] == v)
            return 0; /* duplicates would only repeat rows */
    if (l->n == BENCH_MAX_LIST)
        return -1;
    l->v[l->n++] = v;
    return 0;
}

/* Integer list with A..B ranges (doubling), each value in [lo, hi]. */
static int parse_ilist(const char *flag, const char *arg, int lo, int hi, bench_ilist *l,
                       char *err, size_t cap)
{
    char buf[512], *items[BENCH_MAX_LIST * 2];
    snprintf(buf, sizeof buf, "%s", arg);
    int n = split(buf, items, BENCH_MAX_LIST * 2);
    if (n <= 0)
        return fail(err, cap, "%s: expected a comma list, got '%s'", flag, arg);
    l->n = 0;
    l->set = true;
    for (int i = 0; i < n; i++) {
        char *dots = strstr(items[i], "..");
        int a, b;
        if (dots) {
            *dots = '\0';
            if (!parse_int(items[i], lo, hi, &a) || !parse_int(dots + 2, lo, hi, &b) || b < a)
                return fail(err, cap, "%s: bad range '%s..%s' (want A..B, %d <= A <= B <= %d)",
                            flag, items[i], dots + 2, lo, hi);
            for (long x = a; x <= b; x *= 2)
                if (add(l, (int)x))
                    return fail(err, cap, "%s: more than %d values", flag, BENCH_MAX_LIST);
        } else {
            if (!parse_int(items[i], lo, hi, &a))
                return fail(err, cap, "%s: '%s' is not an integer in [%d, %d]", flag, items[i],
                            lo, hi);
            if (add(l, a))
                return fail(err, cap, "%s: more than %d values", flag, BENCH_MAX_LIST);
        }
    }
    return 0;
}

/* A list of names, each mapped through names[] (index = value); "all" = every name. */
static int parse_names(const char *flag, const char *arg, const char *const names[],
                       const int values[], int count, bench_ilist *l, char *err, size_t cap)
{
    char buf[512], *items[BENCH_MAX_LIST];
    snprintf(buf, sizeof buf, "%s", arg);
    int n = split(buf, items, BENCH_MAX_LIST);
    if (n <= 0)
        return fail(err, cap, "%s: expected a comma list, got '%s'", flag, arg);
    l->n = 0;
    l->set = true;
    for (int i = 0; i < n; i++) {
        if (!strcasecmp(items[i], "all")) {
            for (int j = 0; j < count; j++)
                add(l, values[j]);
            continue;
        }
        int j = 0;
        while (j < count && strcasecmp(items[i], names[j]) != 0)
            j++;
        if (j == count) {
            char known[256] = "";
            for (int k = 0; k < count; k++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                         k ? ", " : "", names[k]);
            return fail(err, cap, "%s: unknown value '%s' (known: %s)", flag, items[i], known);
        }
        add(l, values[j]);
    }
    return 0;
}

/* BxH or BxHq:Hkv items; a bare H means batch 1. */
static int parse_bh(const char *arg, bench_bhlist *l, char *err, size_t cap)
{
    char buf[512], *items[BENCH_MAX_LIST];
    snprintf(buf, sizeof buf, "%s", arg);
    int n = split(buf, items, BENCH_MAX_LIST);
    if (n <= 0)
        return fail(err, cap, "--batch-heads: expected BxH items, got '%s'", arg);
    l->n = 0;
    l->set = true;
    for (int i = 0; i < n; i++) {
        char *s = items[i], *x = strchr(s, 'x'), *colon = strchr(s, ':');
        bench_bh bh = {1, 0, 0};
        if (colon)
            *colon = '\0';
        if (x) {
            *x = '\0';
            if (!parse_int(s, 1, 1 << 16, &bh.batch))
                goto bad;
            s = x + 1;
        }
        if (!parse_int(s, 1, 1 << 16, &bh.heads_q))
            goto bad;
        bh.heads_kv = bh.heads_q;
        if (colon && (!parse_int(colon + 1, 1, bh.heads_q, &bh.heads_kv) ||
                      bh.heads_q % bh.heads_kv != 0))
            return fail(err, cap, "--batch-heads: Hkv '%s' must divide Hq %d", colon + 1,
                        bh.heads_q);
        l->v[l->n++] = bh;
        continue;
    bad:
        return fail(err, cap, "--batch-heads: bad item '%s' (want BxH or BxHq:Hkv)", items[i]);
    }
    return 0;
}

static int parse_onoff(const char *flag, const char *arg, bool *out, char *err, size_t cap)
{
    if (!strcasecmp(arg, "on") || !strcmp(arg, "1"))
        *out = true;
    else if (!strcasecmp(arg, "off") || !strcmp(arg, "0"))
        *out = false;
    else
        return fail(err, cap, "%s: expected on or off, got '%s'", flag, arg);
    return 0;
}

int bench_parse_args(int argc, char **argv, bench_opts *o, char *err, size_t cap)
{
    static const char *const variant_names[] = {"softmax", "signexp", "routed", "two_pole",
                                                "diff"};
    static const int variant_values[] = {DIPOLE_SOFTMAX, DIPOLE_SIGNEXP, DIPOLE_ROUTED,
                                         DIPOLE_TWO_POLE, DIPOLE_DIFF};
    static const char *const causal_names[] = {"off", "on", "0", "1"};
    static const int causal_values[] = {0, 1, 0, 1};
    static const char *const path_names[] = {"tiled", "gemm", "auto"};
    static const int path_values[] = {DIPOLE_PATH_TILED, DIPOLE_PATH_GEMM, DIPOLE_PATH_AUTO};
    static const char *const dtype_names[] = {"f32", "f16", "bf16"};
    static const int dtype_values[] = {DIPOLE_F32, DIPOLE_F16, DIPOLE_BF16};

    enum { O_HELP = 256, O_LIST, O_ALL, O_QUICK, O_BACKWARD, O_INJECT, O_TUNE, O_NO_PEAKS,
           O_DEVICE, O_VARIANTS, O_HEAD_DIMS, O_SEQ, O_BH, O_CAUSAL, O_PATH, O_DTYPE, O_DECODE,
           O_PAGED, O_VARLEN, O_DIFF, O_HEAD_DIM_V, O_BUDGET, O_MAX_CALL, O_ROWS, O_ATOL, O_RTOL, O_TUNE_PRIOR, O_CSV,
           O_JSON, O_PLOT, O_COMPARE };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"list", no_argument, NULL, O_LIST},
        {"all", no_argument, NULL, O_ALL},
        {"quick", no_argument, NULL, O_QUICK},
        {"backward", no_argument, NULL, O_BACKWARD},
        {"inject-error", no_argument, NULL, O_INJECT},
        {"tune", no_argument, NULL, O_TUNE},
        {"no-peaks", no_argument, NULL, O_NO_PEAKS},
        {"device", required_argument, NULL, O_DEVICE},
        {"variants", required_argument, NULL, O_VARIANTS},
        {"head-dims", required_argument, NULL, O_HEAD_DIMS},
        {"seq", required_argument, NULL, O_SEQ},
        {"batch-heads", required_argument, NULL, O_BH},
        {"causal", required_argument, NULL, O_CAUSAL},
        {"path", required_argument, NULL, O_PATH},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"decode", required_argument, NULL, O_DECODE},
        {"paged", required_argument, NULL, O_PAGED},
        {"varlen", optional_argument, NULL, O_VARLEN},
        {"diff", no_argument, NULL, O_DIFF},
        {"head-dim-v", required_argument, NULL, O_HEAD_DIM_V},
        {"budget-ms", required_argument, NULL, O_BUDGET},
        {"max-call-ms", required_argument, NULL, O_MAX_CALL},
        {"rows", required_argument, NULL, O_ROWS},
        {"atol", required_argument, NULL, O_ATOL},
        {"rtol", required_argument, NULL, O_RTOL},
        {"tune-prior", required_argument, NULL, O_TUNE_PRIOR},
        {"csv", required_argument, NULL, O_CSV},
        {"json", required_argument, NULL, O_JSON},
        {"plot", required_argument, NULL, O_PLOT},
        {"compare", required_argument, NULL, O_COMPARE},
        {NULL, 0, NULL, 0},
    };

    memset(o, 0, sizeof *o);
    o->peaks = true;
    o->decode = true;
    o->varlen_seed = 1;
    o->sample_rows = 16;
    o->atol = 5e-5;
    o->rtol = 5e-4;
    err[0] = '\0';
    /* '+': stop at the first operand (there are none); ':': report a missing value ourselves.
     * optind = 0 makes glibc start afresh, since the tests parse many command lines. */
    opterr = 0;
    optind = 0;
    for (int c; (c = getopt_long(argc, argv, "+:", longopts, NULL)) != -1;) {
        char flag[64];
        const char *given = argv[optind - 1];
        snprintf(flag, sizeof flag, "%.*s", (int)strcspn(given, "="), given);
        const char *val = optarg;
        int rc = 0;
        switch (c) {
        case ':':
            return fail(err, cap, "%s needs a value", flag);
        case '?':
            if (optopt >= O_HELP && optopt <= O_NO_PEAKS)
                return fail(err, cap, "%s takes no value", flag);
            return fail(err, cap, "unknown option '%s' (see --help)", flag);
        case O_HELP: o->help = true; break;
        case O_LIST: o->list = true; break;
        case O_ALL: o->all = true; break;
        case O_QUICK: o->quick = true; break;
        case O_BACKWARD: o->backward = true; break;
        case O_INJECT: o->inject_error = true; break;
        case O_TUNE: o->tune = true; break;
        case O_NO_PEAKS: o->peaks = false; break;
        case O_DEVICE:
            if (o->ndevices == BENCH_MAX_DEVICES)
                return fail(err, cap, "--device: at most %d devices", BENCH_MAX_DEVICES);
            if (!*val)
                return fail(err, cap, "--device: empty selector");
            o->devices[o->ndevices++] = val;
            break;
        case O_VARIANTS:
            rc = parse_names("--variants", val, variant_names, variant_values, 5, &o->variants,
                             err, cap);
            break;
        case O_HEAD_DIMS:
            rc = parse_ilist("--head-dims", val, 1, 4096, &o->head_dims, err, cap);
            break;
        case O_SEQ: rc = parse_ilist("--seq", val, 1, 1 << 22, &o->seqs, err, cap); break;
        case O_BH: rc = parse_bh(val, &o->bh, err, cap); break;
        case O_CAUSAL:
            rc = parse_names("--causal", val, causal_names, causal_values, 4, &o->causal, err,
                             cap);
            break;
        case O_PATH:
            rc = parse_names("--path", val, path_names, path_values, 3, &o->paths, err, cap);
            break;
        case O_DTYPE:
            rc = parse_names("--dtype", val, dtype_names, dtype_values, 3, &o->dtypes, err, cap);
            break;
        case O_DECODE:
            o->decode_only = !strcasecmp(val, "only");
            if (!o->decode_only && parse_onoff("--decode", val, &o->decode, err, cap))
                return fail(err, cap, "--decode: expected on, off or only, got '%s'", val);
            o->decode |= o->decode_only;
            break;
        case O_PAGED:
            if (!parse_int(val, 1, 1 << 20, &o->page_size))
                return fail(err, cap, "--paged: '%s' is not a page size in [1, 1048576]", val);
            break;
        case O_VARLEN: {
            /* An optional value must be attached (--varlen=SEED): a separate word would be
             * read as an operand by getopt. */
            int seed = 1;
            if (val && !parse_int(val, 0, 1 << 30, &seed))
                return fail(err, cap, "--varlen: '%s' is not a seed in [0, 1073741824]", val);
            o->varlen = true;
            o->varlen_seed = (unsigned)seed;
            break;
        }
        case O_DIFF: o->diff_twin = true; break;
        case O_HEAD_DIM_V:
            if (!parse_int(val, 0, 4096, &o->head_dim_v))
                return fail(err, cap, "--head-dim-v: '%s' is not a head dim in [0, 4096]", val);
            break;
        case O_BUDGET:
            if (!parse_double(val, 0.1, 1e6, &o->budget_ms))
                return fail(err, cap, "--budget-ms: '%s' is not a number in [0.1, 1e6]", val);
            o->budget_set = true;
            break;
        case O_MAX_CALL:
            if (!parse_double(val, 0.1, 1e8, &o->max_call_ms))
                return fail(err, cap, "--max-call-ms: '%s' is not a number in [0.1, 1e8]", val);
            o->max_call_set = true;
            break;
        case O_ROWS:
            if (!parse_int(val, 1, 4096, &o->sample_rows))
                return fail(err, cap, "--rows: '%s' is not an integer in [1, 4096]", val);
            break;
        case O_ATOL:
        case O_RTOL:
            if (!parse_double(val, 0, 1e3, c == O_ATOL ? &o->atol : &o->rtol))
                return fail(err, cap, "%s: '%s' is not a number in [0, 1000]",
                            c == O_ATOL ? "--atol" : "--rtol", val);
            break;
        case O_TUNE_PRIOR:
            if (!*val)
                return fail(err, cap, "--tune-prior: empty configuration");
            o->tune_prior = val;
            break;
        default: { /* the output files */
            static const char *const names[] = {"--csv", "--json", "--plot", "--compare"};
            const char **dst[] = {&o->csv, &o->json, &o->plot, &o->compare};
            if (!*val)
                return fail(err, cap, "%s: empty file name", names[c - O_CSV]);
            *dst[c - O_CSV] = val;
        }
        }
        if (rc)
            return rc;
    }
    if (optind < argc)
        return fail(err, cap, "unexpected argument '%s' (see --help)", argv[optind]);
    if (o->all && o->ndevices)
        return fail(err, cap, "--all and --device exclude each other");
    if (o->diff_twin && o->variants.set) {
        bool diff = false;
        for (int i = 0; i < o->variants.n; i++)
            diff |= o->variants.v[i] == DIPOLE_DIFF;
        if (!diff)
            return fail(err, cap, "--diff twins DIFF rows: add diff to --variants");
    }
    if (o->tune_prior && !o->tune)
        return fail(err, cap, "--tune-prior needs --tune");
    if (o->tune && (o->csv || o->json || o->plot || o->compare))
        return fail(err, cap, "--tune prints its own table: no --csv, --json, --plot or --compare");
    if (o->plot) {
        const char *dot = strrchr(o->plot, '.');
        if (!dot || (strcasecmp(dot, ".svg") && strcasecmp(dot, ".png")))
            return fail(err, cap, "--plot: '%s' must end in .svg or .png", o->plot);
    }
    return 0;
}
