/* Tile configurations: the table by device class, the text form of an override, and the
 * work-group layout's tiles for a device's limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tiles.h"

/* Tile configurations by device class, most specific first: device type and vendor, then the
 * type's default, then the default for anything. CPU, measured on PoCL (AVX-512, 2 cores): 8
 * groups of 32 rows (two float16 vectors) per work-item sharing 64-key tiles beat 1 group by
 * ~1.6x and 4 groups by ~5-10% (each tile's trip from L3 pays for 8x the arithmetic); split-K
 * decode with 512-key chunks. GPUs, from the compilers' reports (bench/RESULTS.md): forward
 * tiles of 64 query rows x 32 keys on a grid of 16 columns (a row's items in one half-warp or
 * quarter-wave) and 4-row items, which the local-memory rule halves to 32 rows at head dim
 * 128 on 48 KiB, and the register rule halves to 2-row items where an item's per-row state
 * (O chunks, scores, max and sum per pole) passes acc floats: 64 keeps NVIDIA free of stack
 * frames, 48 AMD free of scratch on gfx1100 (TWO_POLE spilled at 64), 32 Intel's SIMD8 free of
 * spills; backward tiles of 16 rows x 32 keys (32 x 32 on Intel). Decode (up to 4 query rows)
 * splits its keys into chunks of up to 512 on every layout: on the group layout a work-group
 * per chunk and KV head takes all the heads that share it. */
static const struct {
    cl_device_type type; /* 0: any */
    const char *vendor;  /* substring of CL_DEVICE_VENDOR, NULL: any */
    const char *label;
    dp_tile_config cfg;
} tile_table[] = {
    {CL_DEVICE_TYPE_GPU, "NVIDIA", "GPU/NVIDIA", {DP_LAYOUT_GROUP, 64, 32, 4, 512, 16, 4, 64, 16, 32}},
    {CL_DEVICE_TYPE_GPU, "Advanced Micro Devices", "GPU/AMD",
     {DP_LAYOUT_GROUP, 64, 32, 4, 512, 16, 4, 48, 16, 32}},
    {CL_DEVICE_TYPE_GPU, "AMD", "GPU/AMD", {DP_LAYOUT_GROUP, 64, 32, 4, 512, 16, 4, 48, 16, 32}},
    {CL_DEVICE_TYPE_GPU, "Intel", "GPU/Intel", {DP_LAYOUT_GROUP, 32, 32, 4, 512, 16, 4, 32, 32, 32}},
    {CL_DEVICE_TYPE_GPU, NULL, "GPU", {DP_LAYOUT_GROUP, 32, 32, 4, 512, 16, 4, 32, 16, 32}},
    {CL_DEVICE_TYPE_CPU, NULL, "CPU", {DP_LAYOUT_CPU, 256, 64, 4, 512, 16, 4, 64, 16, 32}},
    {0, NULL, "default", {DP_LAYOUT_GROUP, 16, 64, 4, 512, 16, 4, 64, 16, 32}},
};

const char *dp_tile_table_entry(const dp_device_props *dev, dp_tile_config *cfg)
{
    size_t i = 0;
    const size_t n = sizeof tile_table / sizeof tile_table[0];
    for (; i + 1 < n; i++)
        if ((!tile_table[i].type || (dev->type & tile_table[i].type)) &&
            (!tile_table[i].vendor || strstr(dev->vendor, tile_table[i].vendor)))
            break;
    *cfg = tile_table[i].cfg;
    return tile_table[i].label;
}

bool dp_tile_config_parse(const char *text, dp_tile_config *cfg, char *why, size_t cap)
{
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf) {
        snprintf(why, cap, "longer than %zu characters", sizeof buf - 1);
        return false;
    }
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            snprintf(why, cap, "\"%s\" has no '='", item);
            return false;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "layout")) {
            if (strcmp(val, "cpu") != 0 && strcmp(val, "group") != 0) {
                snprintf(why, cap, "layout must be cpu or group, not \"%s\"", val);
                return false;
            }
            cfg->layout = !strcmp(val, "cpu") ? DP_LAYOUT_CPU : DP_LAYOUT_GROUP;
            continue;
        }
        char *end;
        const long n = strtol(val, &end, 10);
        int *field = !strcmp(key, "block_m")        ? &cfg->block_m
                     : !strcmp(key, "block_n")      ? &cfg->block_n
                     : !strcmp(key, "splitk_q")     ? &cfg->splitk_max_q
                     : !strcmp(key, "splitk_chunk") ? &cfg->splitk_chunk
                     : !strcmp(key, "wg_cols")      ? &cfg->wg_cols
                     : !strcmp(key, "rpi")          ? &cfg->rows_per_item
                     : !strcmp(key, "acc")          ? &cfg->acc_floats
                                                    : NULL;
        if (!field || end == val || *end != '\0' || n < 0 || n > 4096 ||
            (n == 0 && field != &cfg->splitk_max_q)) {
            snprintf(why, cap, "bad item %s=%s", key, val);
            return false;
        }
        *field = (int)n;
    }
    return true;
}

dipole_status dp_tile_config_check(const char *text, char *why, size_t cap)
{
    dp_tile_config scratch = tile_table[0].cfg;
    return dp_tile_config_parse(text, &scratch, why, cap) ? DIPOLE_SUCCESS : DIPOLE_ERR_INVALID_ARG;
}

/* The largest divisor of n that is at most cap (>= 1). */
static int divisor_at_most(int n, int cap)
{
    int d = cap < n ? cap : n;
    while (d > 1 && n % d)
        d--;
    return d < 1 ? 1 : d;
}

/* Float4 chunks of a head-dim row, as HD4 in cl/dipole_common.cl. */
static size_t chunks4(int head_dim)
{
    return ((size_t)head_dim + 3) / 4;
}

size_t dp_group_fwd_local_bytes(const dp_kernel_config *cfg, const dp_problem *p)
{
    /* q rows are HD4 + 1 chunks, the K/V tile's rows the longer of K's HD4 + 1 and V's HD4_V,
     * P rows BLOCK_N + 4 floats, one P tile per stream, and one per-item value per row, pole
     * and grid column (cl/dipole_fwd.cl). */
    const size_t hd4 = chunks4(p->d.head_dim), hd4v = chunks4(p->dv), bm = (size_t)cfg->block_m;
    const size_t bn = (size_t)cfg->block_n, streams = p->reads_v2 || p->npoles == 2 ? 2 : 1;
    const size_t kv = hd4 + 1 > hd4v ? hd4 + 1 : hd4v;
    return (bm * (hd4 + 1) + bn * kv) * 16 + streams * bm * (bn + 4) * sizeof(float) +
           (size_t)p->npoles * bm * (size_t)cfg->wg_cols * sizeof(float);
}

/* The refusal when even one row and key do not fit. */
static bool nothing_fits(char *why, size_t cap, const char *what, const dp_problem *p,
                         size_t bytes, const dp_kernel_config *cfg, const dp_device_props *dev)
{
    snprintf(why, cap,
             "%sone query row and key of head_dim %d need %zu B of local memory and %d "
             "work-items; the device has %llu B and %zu",
             what, p->d.head_dim, bytes, cfg->work_group, (unsigned long long)dev->local_mem,
             dev->max_work_group);
    return false;
}

/* n halved, rounded down to a multiple of unit, and at least unit. */
static int halve_in_units(int n, int unit)
{
    const int h = n / 2 / unit * unit;
    return h > unit ? h : unit;
}

bool dp_group_fwd_config(const dp_tile_config *tc, const dp_problem *p,
                         const dp_device_props *dev, dp_kernel_config *cfg, char *why, size_t cap)
{
    int bm = tc->block_m, bn = tc->block_n;
    int cols = divisor_at_most(bn, tc->wg_cols > 0 ? tc->wg_cols : 16);
    int rpi = tc->rows_per_item > 0 ? tc->rows_per_item : 4;
    /* Per row and pole an item holds ceil(HD4_V / cols) float4 chunks of O, its scores of the
     * row (block_n / cols) and the row's max and sum. */
    const int cpi = (int)((chunks4(p->dv) + (size_t)cols - 1) / (size_t)cols);
    const int per_row = p->npoles * (cpi * 4 + (bn / cols > 0 ? bn / cols : 1) + 2);
    while (rpi > 1 && rpi * per_row > tc->acc_floats)
        rpi /= 2;
    rpi = divisor_at_most(bm, rpi);
    *cfg = dp_kernel_config_for(p, DP_KERNEL_FWD_TILED, bm, bn, 0);
    for (;;) {
        cfg->block_m = bm;
        cfg->block_n = bn;
        cfg->wg_cols = cols;
        cfg->work_group = bm / rpi * cols;
        if ((size_t)cfg->work_group <= dev->max_work_group &&
            dp_group_fwd_local_bytes(cfg, p) <= dev->local_mem)
            return true;
        /* Fewer rows first, then fewer keys, then a narrower grid. */
        if (bm > rpi) {
            bm = halve_in_units(bm, rpi);
        } else if (bn > cols) {
            bn = halve_in_units(bn, cols);
        } else if (cols > 1) {
            cols /= 2;
            bn = cols;
        } else if (rpi > 1) {
            rpi /= 2;
            bm = rpi;
        } else {
            return nothing_fits(why, cap, "", p, dp_group_fwd_local_bytes(cfg, p), cfg, dev);
        }
    }
}

bool dp_group_split_config(const dp_tile_config *tc, const dp_problem *p,
                           const dp_device_props *dev, dp_kernel_config *cfg)
{
    if (p->d.seq_q > tc->splitk_max_q || (long long)p->group * p->d.seq_q > 64)
        return false;
    const int rows = p->group * p->d.seq_q;
    dp_tile_config t = *tc;
    t.block_m = 1;
    while (t.block_m < rows)
        t.block_m *= 2;
    char why[160];
    if (!dp_group_fwd_config(&t, p, dev, cfg, why, sizeof why) || cfg->block_m < rows)
        return false;
    cfg->split = 1;
    return true;
}

/* Greatest common divisor (a, b > 0). */
static int gcd(int a, int b)
{
    while (b) {
        const int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

size_t dp_group_bwd_local_bytes(const dp_kernel_config *cfg, const dp_problem *p)
{
    /* q and dO tiles of block_m rows (HD4 + 1, HD4_V + 1 chunks) and one K/V tile of the
     * longer rows; dkdv's weight tiles (one per stream and dS), block_n rows of block_m + 4
     * floats, and its row ranges; dq's dS tile and pre's per-item parts are smaller
     * (cl/dipole_bwd.cl). */
    const size_t hd4 = chunks4(p->d.head_dim), hd4v = chunks4(p->dv), bm = (size_t)cfg->block_m;
    const size_t bn = (size_t)cfg->block_n, streams = p->reads_v2 || p->npoles == 2 ? 2 : 1;
    const size_t kv = hd4 > hd4v ? hd4 : hd4v;
    const size_t tiles = (bm * (hd4 + 1) + bm * (hd4v + 1) + bn * (kv + 1)) * 16;
    const size_t dkdv = (streams + 1) * bn * (bm + 4) * sizeof(float) + bm * 8;
    const size_t dq = bm * (bn + 4) * sizeof(float);
    const size_t pre = (size_t)p->npoles * bm * (size_t)cfg->wg_cols * sizeof(float);
    const size_t most = dkdv > dq ? dkdv : dq;
    return tiles + (most > pre ? most : pre);
}

bool dp_group_bwd_config(const dp_tile_config *tc, const dp_problem *p,
                         const dp_device_props *dev, dp_kernel_config *cfg, char *why, size_t cap)
{
    int bm = tc->bwd_block_m, bn = tc->bwd_block_n;
    const int values = p->reads_v2 ? 2 : 1; /* dkdv's value gradients: dv (and dv2) */
    *cfg = dp_kernel_config_for(p, DP_KERNEL_BWD, bm, bn, 0);
    for (;;) {
        /* The grid's rows and columns each divide both tiles: dq's items own rows x keys,
         * dkdv's keys x rows. dkdv holds dK (head_dim, per score map) and each value gradient
         * (head_dim_v) for block_n / rows keys: more grid rows where that passes the register
         * budget. */
        const int common = gcd(bm, bn);
        const int cols = divisor_at_most(common, 16);
        const int cpi = (int)((chunks4(p->d.head_dim) + (size_t)cols - 1) / (size_t)cols);
        const int cpi_v = (int)((chunks4(p->dv) + (size_t)cols - 1) / (size_t)cols);
        int rows = divisor_at_most(common, 8);
        while ((p->nscores * cpi + values * cpi_v) * (bn / rows) * 4 > tc->acc_floats &&
               rows < common &&
               common % (rows * 2) == 0)
            rows *= 2;
        cfg->block_m = bm;
        cfg->block_n = bn;
        cfg->wg_cols = cols;
        cfg->work_group = rows * cols;
        if ((size_t)cfg->work_group <= dev->max_work_group &&
            dp_group_bwd_local_bytes(cfg, p) <= dev->local_mem)
            return true;
        if (bn > 1 && bn >= bm) {
            bn /= 2;
        } else if (bm > 1) {
            bm /= 2;
        } else {
            return nothing_fits(why, cap, "backward: ", p, dp_group_bwd_local_bytes(cfg, p), cfg,
                                dev);
        }
    }
}
