/* Prints the group-layout kernel builds that each GPU class would compile — the tile table's
 * entry for the class, fitted to the class's limits by the library's own planner functions
 * (tiles.c) and turned into options by dp_build_options — as lines CLASS|FILE|OPTIONS for
 * tests/gpu_isa.sh. Each variant, head dims 32, 64, 128, 256, causal, in float storage; and in
 * fp16 and bf16 storage at 64 and 128, the head dims models use (their loads and stores are the
 * only lines that change, which is what the check would catch: a conversion that spills); and
 * the decode build (split over key chunks, GQA 8:1, from a paged cache) at 64 and 128 in float
 * and fp16 storage (DIFF's from a contiguous cache: paged caches refuse it); and DIFF in the
 * Diff Transformer's layout, values twice the query head dim, at 64 and 128. Links the
 * library's objects: these functions are not exported. */
#include <stdio.h>
#include <string.h>

#include "tiles.h"

typedef struct gpu_class {
    const char *name;
    const char *vendor, *platform;
    cl_ulong local_mem;
    size_t max_work_group;
} gpu_class;

/* What the drivers report: 48 KiB of local memory per work-group on NVIDIA's OpenCL, 64 KiB on
 * AMD's (ROCm) and Intel's (DG2, compute-runtime); 1024 work-items. */
static const gpu_class classes[] = {
    {"nvidia", "NVIDIA Corporation", "NVIDIA CUDA", 48 << 10, 1024},
    {"amd", "Advanced Micro Devices, Inc.", "AMD Accelerated Parallel Processing", 64 << 10, 1024},
    {"intel", "Intel(R) Corporation", "Intel(R) OpenCL Graphics", 64 << 10, 1024},
};

static dipole_ctx ctx; /* dp_build_options reads the device's vendor and platform only */

static void print_build(const char *cls, const dp_kernel_config *cfg)
{
    char opts[512];
    dp_build_options(&ctx, cfg, opts, sizeof opts);
    printf("%s|%s|%s\n", cls, dp_kernel_file(cfg->kind), opts);
}

int main(void)
{
    static const struct {
        dipole_dtype dtype;
        int head_dim, head_dim_v; /* head_dim_v set: DIFF's builds only */
    } builds[] = {{DIPOLE_F32, 32, 0},  {DIPOLE_F32, 64, 0},   {DIPOLE_F32, 128, 0},
                  {DIPOLE_F32, 256, 0}, {DIPOLE_F16, 64, 0},   {DIPOLE_F16, 128, 0},
                  {DIPOLE_BF16, 64, 0}, {DIPOLE_BF16, 128, 0}, {DIPOLE_F32, 64, 128},
                  {DIPOLE_F32, 128, 256}};
    int failed = 0;
    for (size_t c = 0; c < sizeof classes / sizeof classes[0]; c++) {
        memset(&ctx, 0, sizeof ctx);
        dp_device_props *dev = &ctx.props;
        dev->type = CL_DEVICE_TYPE_GPU;
        snprintf(dev->vendor, sizeof dev->vendor, "%s", classes[c].vendor);
        snprintf(dev->platform_name, sizeof dev->platform_name, "%s", classes[c].platform);
        dev->local_mem = classes[c].local_mem;
        dev->max_work_group = classes[c].max_work_group;
        dp_tile_config tc;
        dp_tile_table_entry(dev, &tc);
        for (int v = 0; v <= DIPOLE_DIFF; v++)
            for (size_t i = 0; i < sizeof builds / sizeof builds[0]; i++) {
                if (builds[i].head_dim_v && v != DIPOLE_DIFF)
                    continue;
                dipole_attn_desc d;
                dipole_attn_desc_default(&d);
                d.variant = (dipole_variant)v;
                d.dtype = builds[i].dtype;
                d.head_dim = builds[i].head_dim;
                d.head_dim_v = builds[i].head_dim_v;
                d.causal = 1;
                d.batch = d.heads_q = d.heads_kv = 1;
                d.seq_q = d.seq_k = 4096;
                dp_problem p;
                if (dp_problem_init(NULL, &d, &p) != DIPOLE_SUCCESS) {
                    fprintf(stderr, "kernel-options: bad problem (variant %d, d %d)\n", v,
                            builds[i].head_dim);
                    return 1;
                }
                char why[200];
                dp_kernel_config cfg;
                if (dp_group_fwd_config(&tc, &p, dev, &cfg, why, sizeof why))
                    print_build(classes[c].name, &cfg);
                else
                    fprintf(stderr, "%s: forward, variant %d, d %d: %s\n", classes[c].name, v,
                            builds[i].head_dim, why), failed = 1;
                if (dp_group_bwd_config(&tc, &p, dev, &cfg, why, sizeof why))
                    print_build(classes[c].name, &cfg);
                else
                    fprintf(stderr, "%s: backward, variant %d, d %d: %s\n", classes[c].name, v,
                            builds[i].head_dim, why), failed = 1;
                /* decode from a paged cache, GQA 8:1 (the largest tile rows of one query row)
                 * at the head dims models use */
                if ((builds[i].head_dim != 64 && builds[i].head_dim != 128) ||
                    builds[i].dtype == DIPOLE_BF16 || builds[i].head_dim_v)
                    continue;
                d.seq_q = 1;
                d.heads_q = 8;
                if (dp_problem_init(NULL, &d, &p) != DIPOLE_SUCCESS)
                    return 1;
                p.paged = v != DIPOLE_DIFF;
                if (dp_group_split_config(&tc, &p, dev, &cfg))
                    print_build(classes[c].name, &cfg);
                else
                    fprintf(stderr, "%s: split decode, variant %d, d %d: no tile\n",
                            classes[c].name, v, builds[i].head_dim), failed = 1;
            }
    }
    return failed;
}
