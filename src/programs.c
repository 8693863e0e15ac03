/* Kernel programs: sources (embedded or from DIPOLE_KERNEL_DIR), compiler options, and the
 * in-memory and on-disk caches. A program is identified by its source file and its options
 * string, and every option comes from dp_build_options. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "sources.h"

#define DP_MAX_KERNELS_PER_PROGRAM 4
#define DP_COMMON_SOURCE "dipole_common.cl"

struct dp_program_entry {
    dp_program_entry *next;
    char *key; /* file + '\n' + options */
    cl_program program;
    struct {
        char name[64];
        cl_kernel kernel;
    } kernels[DP_MAX_KERNELS_PER_PROGRAM];
};

const char *dp_kernel_file(dp_kernel_kind kind)
{
    static const char *const files[DP_KERNEL_COUNT] = {
        [DP_KERNEL_FWD_TILED] = "dipole_fwd.cl",   [DP_KERNEL_FWD_CPU] = "dipole_fwd_cpu.cl",
        [DP_KERNEL_FWD_SPLITK] = "dipole_fwd_cpu.cl", [DP_KERNEL_ROWWISE] = "dipole_rowwise.cl",
        [DP_KERNEL_BWD] = "dipole_bwd.cl",    [DP_KERNEL_BWD_CPU] = "dipole_bwd_cpu.cl",
        [DP_KERNEL_UTIL] = "dipole_util.cl",
    };
    return (unsigned)kind < DP_KERNEL_COUNT ? files[kind] : NULL;
}

dp_kernel_config dp_kernel_config_for(const dp_problem *p, dp_kernel_kind kind, int block_m,
                                      int block_n, int work_group)
{
    dp_kernel_config cfg;
    memset(&cfg, 0, sizeof cfg); /* the struct's bytes are never hashed, but keep them defined */
    cfg.kind = kind;
    cfg.variant = p->d.variant;
    cfg.head_dim = p->d.head_dim;
    cfg.head_dim_v = p->dv;
    cfg.causal = p->d.causal != 0;
    cfg.has_window = p->has_window;
    cfg.block_m = block_m;
    cfg.block_n = block_n;
    cfg.work_group = work_group;
    cfg.dtype = p->d.dtype;
    cfg.paged = p->paged && (kind == DP_KERNEL_FWD_TILED || kind == DP_KERNEL_FWD_CPU ||
                             kind == DP_KERNEL_FWD_SPLITK);
    if (kind != DP_KERNEL_UTIL) {
        cfg.varlen = p->varlen;
        cfg.softcap = p->softcap;
        cfg.alibi = p->alibi;
        cfg.bias = p->bias;
    }
    return cfg;
}

dp_kernel_config dp_util_config(const dp_problem *p, int work_group)
{
    return dp_kernel_config_for(p, DP_KERNEL_UTIL, work_group, 0, work_group);
}

void dp_build_options(const dipole_ctx *ctx, const dp_kernel_config *cfg, char *buf, size_t cap)
{
    /* Vendor and platform quirks (extra flags by substring) live here and nowhere else. */
    static const struct {
        bool platform; /* match the platform name rather than the device vendor */
        const char *name;
        const char *flags;
    } quirk_table[] = {
        {false, "NVIDIA", " -cl-nv-opt-level=3"},
        /* PoCL turns clang's __builtin_prefetch into prefetch instructions, while its OpenCL
         * prefetch() is empty; other clang-based compilers (oclgrind's) reject the builtin. */
        {true, "Portable Computing Language", " -DDP_BUILTIN_PREFETCH=1"},
    };
    char quirks[128] = "";
    for (size_t i = 0; i < sizeof quirk_table / sizeof quirk_table[0]; i++) {
        const char *field = quirk_table[i].platform ? ctx->props.platform_name : ctx->props.vendor;
        if (strstr(field, quirk_table[i].name))
            strncat(quirks, quirk_table[i].flags, sizeof quirks - strlen(quirks) - 1);
    }
    if (cfg->kind == DP_KERNEL_UTIL) /* no head dim, variant, mask or tiles: one per dtype */
        snprintf(buf, cap, "-cl-std=CL1.2 -DDP_STORAGE=%d -DBLOCK_M=%d%s", (int)cfg->dtype,
                 cfg->block_m, quirks);
    else {
        char grid[128] = "";
        if (cfg->wg_cols > 0)
            snprintf(grid, sizeof grid, " -DWG_COLS=%d", cfg->wg_cols);
        /* only where set: every other build keeps its options (and its cached binary) */
        if (cfg->paged)
            strncat(grid, " -DDP_PAGED=1", sizeof grid - strlen(grid) - 1);
        if (cfg->split)
            strncat(grid, " -DDP_SPLIT=1", sizeof grid - strlen(grid) - 1);
        if (cfg->varlen)
            strncat(grid, " -DDP_VARLEN=1", sizeof grid - strlen(grid) - 1);
        if (cfg->softcap)
            strncat(grid, " -DHAS_SOFTCAP=1", sizeof grid - strlen(grid) - 1);
        if (cfg->alibi)
            strncat(grid, " -DHAS_ALIBI=1", sizeof grid - strlen(grid) - 1);
        if (cfg->bias)
            snprintf(grid + strlen(grid), sizeof grid - strlen(grid), " -DHAS_BIAS=%d", cfg->bias);
        if (cfg->head_dim_v && cfg->head_dim_v != cfg->head_dim)
            snprintf(grid + strlen(grid), sizeof grid - strlen(grid), " -DHEAD_DIM_V=%d",
                     cfg->head_dim_v);
        snprintf(buf, cap,
             "-cl-std=CL1.2 -DDP_STORAGE=%d -DVARIANT=%d -DHEAD_DIM=%d -DIS_CAUSAL=%d "
             "-DHAS_WINDOW=%d -DBLOCK_M=%d -DBLOCK_N=%d -DWORK_GROUP=%d%s%s",
             (int)cfg->dtype, (int)cfg->variant, cfg->head_dim, cfg->causal ? 1 : 0,
             cfg->has_window ? 1 : 0,
             cfg->block_m, cfg->block_n, cfg->work_group, grid, quirks);
    }
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *text = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1))) {
            if (fread(text, 1, (size_t)n, f) != (size_t)n) {
                free(text);
                text = NULL;
            } else {
                text[n] = '\0';
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return text;
}

dipole_status dp_load_source(dipole_ctx *ctx, const char *file, char **text)
{
    *text = NULL;
    const char *dir = ctx->settings.kernel_dir;
    if (dir) {
        char path[1024];
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, file);
        *text = read_file(path, &len);
        if (!*text)
            return dp_fail(ctx, DIPOLE_ERR_KERNEL_SOURCE,
                           "cannot read kernel source %s (DIPOLE_KERNEL_DIR=%s)", path, dir);
        return DIPOLE_SUCCESS;
    }
    for (const dp_embedded_source *s = dp_embedded_sources; s->name; s++)
        if (!strcmp(s->name, file)) {
            *text = strdup(s->text);
            return *text ? DIPOLE_SUCCESS
                         : dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "out of memory");
        }
    return dp_fail(ctx, DIPOLE_ERR_KERNEL_SOURCE, "kernel source %s is not built into dipole", file);
}

/* The full program text: the shared header, then the kernel file with its own line numbers. */
static dipole_status program_source(dipole_ctx *ctx, const char *file, char **out)
{
    char *common = NULL, *body = NULL;
    dipole_status st = dp_load_source(ctx, DP_COMMON_SOURCE, &common);
    if (st == DIPOLE_SUCCESS)
        st = dp_load_source(ctx, file, &body);
    if (st == DIPOLE_SUCCESS) {
        size_t n = strlen(common) + strlen(body) + strlen(file) + 32;
        *out = malloc(n);
        if (!*out)
            st = dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "out of memory");
        else
            snprintf(*out, n, "%s\n#line 1 \"%s\"\n%s", common, file, body);
    }
    free(common);
    free(body);
    return st;
}

static dipole_status build_failed(dipole_ctx *ctx, cl_program prog, cl_int err, const char *file,
                                  const char *options)
{
    dp_fail(ctx, DIPOLE_ERR_BUILD, "clBuildProgram(%s, \"%s\") failed: %s (%d); build log:\n",
            file, options, dipole_status_string((dipole_status)err), (int)err);
    size_t len = 0;
    if (clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &len) == CL_SUCCESS &&
        len > 1) {
        char *log = malloc(len + 1);
        if (log && clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, len, log, NULL) ==
                       CL_SUCCESS) {
            log[len] = '\0';
            dp_append_error(ctx, log);
        }
        free(log);
    } else {
        dp_append_error(ctx, "(the compiler left no log)");
    }
    return DIPOLE_ERR_BUILD;
}

static cl_program from_disk_cache(dipole_ctx *ctx, dp_cache_key key, const char *options)
{
    size_t size = 0;
    unsigned char *bin = dp_disk_cache_load(ctx, key, &size);
    if (!bin)
        return NULL;
    cl_int err, bin_status = CL_SUCCESS;
    const unsigned char *bins[1] = {bin};
    cl_program prog =
        clCreateProgramWithBinary(ctx->context, 1, &ctx->device, &size, bins, &bin_status, &err);
    free(bin);
    if (err != CL_SUCCESS || bin_status != CL_SUCCESS) {
        if (prog)
            clReleaseProgram(prog);
        dp_log(ctx, "cached binary rejected by the driver; rebuilding");
        return NULL;
    }
    if (clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL) != CL_SUCCESS) {
        clReleaseProgram(prog);
        dp_log(ctx, "cached binary failed to build; rebuilding");
        return NULL;
    }
    return prog;
}

static void to_disk_cache(dipole_ctx *ctx, cl_program prog, dp_cache_key key)
{
    size_t size = 0;
    if (!ctx->cache_dir[0] ||
        clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0)
        return;
    unsigned char *bin = malloc(size);
    unsigned char *bins[1] = {bin};
    if (bin && clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS)
        dp_disk_cache_store(ctx, key, bin, size);
    free(bin);
}

static dipole_status build_program(dipole_ctx *ctx, const dp_kernel_config *cfg, const char *options,
                                   cl_program *out)
{
    const char *file = dp_kernel_file(cfg->kind);
    if (!file)
        return dp_fail(ctx, DIPOLE_ERR_INTERNAL, "unknown kernel kind %d", (int)cfg->kind);
    char *source = NULL;
    dipole_status st = program_source(ctx, file, &source);
    if (st != DIPOLE_SUCCESS)
        return st;
    dp_cache_key key = dp_cache_key_make(ctx, source, options);
    cl_program prog = from_disk_cache(ctx, key, options);
    if (prog) {
        dp_log(ctx, "program %s [%s]: disk cache hit", file, options);
    } else {
        cl_int err;
        const char *srcs[1] = {source};
        prog = clCreateProgramWithSource(ctx->context, 1, srcs, NULL, &err);
        if (err != CL_SUCCESS) {
            free(source);
            return dp_cl_fail(ctx, err, "clCreateProgramWithSource");
        }
        err = clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
        if (err != CL_SUCCESS) {
            st = build_failed(ctx, prog, err, file, options);
            clReleaseProgram(prog);
            free(source);
            return st;
        }
        dp_log(ctx, "program %s [%s]: built", file, options);
        to_disk_cache(ctx, prog, key);
    }
    free(source);
    *out = prog;
    return DIPOLE_SUCCESS;
}

dipole_status dp_get_kernel(dipole_ctx *ctx, const dp_kernel_config *cfg, const char *name,
                            cl_kernel *kernel)
{
    char options[512];
    dp_build_options(ctx, cfg, options, sizeof options);
    const char *file = dp_kernel_file(cfg->kind);
    char key[640];
    snprintf(key, sizeof key, "%s\n%s", file ? file : "?", options);

    dp_program_entry *e = ctx->programs;
    bool fresh = false; /* linked into the cache only once it yields its kernel */
    while (e && strcmp(e->key, key) != 0)
        e = e->next;
    if (!e) {
        cl_program prog = NULL;
        dipole_status st = build_program(ctx, cfg, options, &prog);
        if (st != DIPOLE_SUCCESS)
            return st;
        e = calloc(1, sizeof *e);
        if (!e || !(e->key = strdup(key))) {
            free(e);
            clReleaseProgram(prog);
            return dp_fail(ctx, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "out of memory");
        }
        e->program = prog;
        fresh = true;
    }
    int slot = -1;
    for (int i = 0; i < DP_MAX_KERNELS_PER_PROGRAM; i++) {
        if (e->kernels[i].kernel && !strcmp(e->kernels[i].name, name)) {
            *kernel = e->kernels[i].kernel;
            return DIPOLE_SUCCESS;
        }
        if (!e->kernels[i].kernel && slot < 0)
            slot = i;
    }
    if (slot < 0)
        return dp_fail(ctx, DIPOLE_ERR_INTERNAL, "too many kernels in program %s", key);
    cl_int err;
    cl_kernel k = clCreateKernel(e->program, name, &err);
    if (err != CL_SUCCESS) {
        char call[128];
        snprintf(call, sizeof call, "clCreateKernel(%s)", name);
        if (fresh) { /* a source without the kernel must not stay cached under this key */
            clReleaseProgram(e->program);
            free(e->key);
            free(e);
        }
        return dp_cl_fail(ctx, err, call);
    }
    if (fresh) {
        e->next = ctx->programs;
        ctx->programs = e;
    }
    snprintf(e->kernels[slot].name, sizeof e->kernels[slot].name, "%s", name);
    e->kernels[slot].kernel = k;
    *kernel = k;
    return DIPOLE_SUCCESS;
}

void dp_programs_release(dipole_ctx *ctx)
{
    dp_program_entry *e = ctx->programs;
    while (e) {
        dp_program_entry *next = e->next;
        for (int i = 0; i < DP_MAX_KERNELS_PER_PROGRAM; i++)
            if (e->kernels[i].kernel)
                clReleaseKernel(e->kernels[i].kernel);
        clReleaseProgram(e->program);
        free(e->key);
        free(e);
        e = next;
    }
    ctx->programs = NULL;
}
