/* Library-private declarations shared by the runtime's source files. */
#ifndef DIPOLE_INTERNAL_H
#define DIPOLE_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "dipole/dipole.h"
#include "settings.h"

#if defined(__GNUC__)
#define DP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DP_PRINTF(a, b)
#endif

/* What the runtime needs to know about a device, queried once at context creation; every field
 * is read somewhere (a new one comes with its first reader). */
typedef struct dp_device_props {
    cl_device_type type;
    char name[256];
    char vendor[256];
    char platform_name[256];
    char platform_version[256];
    char driver_version[256];
    char device_version[256];
    cl_uint compute_units;
    cl_ulong local_mem;
    cl_ulong global_mem;
    cl_ulong max_alloc;
    size_t max_work_group;
    bool local_mem_is_global; /* CL_GLOBAL local memory: CPUs emulate it */
    bool profiling;           /* the context's queue records profiling timestamps */
    bool host_unified;        /* CL_DEVICE_HOST_UNIFIED_MEMORY: buffers can live in host memory */
    cl_uint base_align;       /* CL_DEVICE_MEM_BASE_ADDR_ALIGN, in bytes */
} dp_device_props;

/* Which kernel source and which specialisation: every define a program is built with. */
typedef enum dp_kernel_kind {
    DP_KERNEL_FWD_TILED = 0, /* cl/dipole_fwd.cl: work-group tiles for GPUs */
    DP_KERNEL_FWD_CPU,       /* cl/dipole_fwd_cpu.cl: a GEMM micro-kernel per work-item */
    DP_KERNEL_FWD_SPLITK,    /* cl/dipole_fwd_cpu.cl: decode, keys split over work-items */
    DP_KERNEL_ROWWISE,       /* cl/dipole_rowwise.cl: GEMM path's row-wise weights */
    DP_KERNEL_BWD,           /* cl/dipole_bwd.cl */
    DP_KERNEL_BWD_CPU,       /* cl/dipole_bwd_cpu.cl */
    DP_KERNEL_UTIL,          /* cl/dipole_util.cl: dweights, zeroing; options: BLOCK_M only */
    DP_KERNEL_COUNT
} dp_kernel_kind;

typedef struct dp_kernel_config {
    dp_kernel_kind kind;
    dipole_variant variant;
    int head_dim;
    int head_dim_v; /* of v, v2, out (HEAD_DIM_V): head_dim unless the problem says otherwise */
    int causal;
    int has_window;
    int block_m;    /* query rows per work-group (or per work-item on the CPU layout) */
    int block_n;    /* keys per tile */
    int work_group; /* work-items per work-group */
    int wg_cols;    /* group layout: work-items that share a row (0: the kernel has no grid) */
    dipole_dtype dtype; /* storage of the global tensors (DP_STORAGE) */
    int paged;          /* forward kernels: K/V rows through a block table (DP_PAGED) */
    int split;          /* group forward: decode over key chunks, into partials (DP_SPLIT) */
    int varlen;         /* packed sequences through cu_seqlens (DP_VARLEN) */
    int softcap;        /* scores soft-capped (HAS_SOFTCAP) */
    int alibi;          /* ALiBi slopes (HAS_ALIBI) */
    int bias;           /* additive bias: 0 none, 1 float32, 2 storage dtype (HAS_BIAS) */
} dp_kernel_config;

typedef struct dp_program_entry dp_program_entry;

struct dipole_ctx {
    pthread_mutex_t lock;
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    dp_device_props props;
    char device_label[520];
    char *last_error; /* heap, grows to hold build logs */
    size_t last_error_cap;
    dp_settings settings; /* the environment as it was when the context was created */
    dipole_log_fn log_fn;
    void *log_user;
    size_t workspace_limit;
    char cache_dir[1024]; /* "" when the on-disk cache is off */
    char tile_config[256];  /* dipole_ctx_set_tile_config, "" for none */
    char tuned_config[256]; /* loaded from the cache directory, "" for none */
    dp_program_entry *programs;
};

/* ---- errors.c: every failure goes through these, so the message reaches ctx and thread. */
dipole_status dp_fail(dipole_ctx *ctx, dipole_status status, const char *fmt, ...) DP_PRINTF(3, 4);
/* An OpenCL call failed: the message names the call and the code. */
dipole_status dp_cl_fail(dipole_ctx *ctx, cl_int err, const char *call);
void dp_clear_error(dipole_ctx *ctx);
/* Appends long text (a build log) to the current message. */
void dp_append_error(dipole_ctx *ctx, const char *text);
void dp_log(dipole_ctx *ctx, const char *fmt, ...) DP_PRINTF(2, 3);

/* ---- device.c */
dipole_status dp_select_device(const char *selector, cl_platform_id *platform,
                               cl_device_id *device);
dipole_status dp_query_props(cl_platform_id platform, cl_device_id device,
                             dp_device_props *props);

/* ---- desc.c */
typedef struct dp_problem {
    dipole_attn_desc d; /* with scale resolved */
    int npoles;
    bool reads_v2;
    int group; /* heads_q / heads_kv */
    bool has_window;
    bool paged; /* K/V are page pools read through a block table (dipole_attention_paged) */
    bool varlen;      /* a packed batch (desc.cu_seqlens_q/k) */
    int tensor_batch; /* the tensors' batch extent: 1 when packed, else batch */
    int max_q, max_k; /* the longest sequence's query rows and keys (seq_q, seq_k unpacked) */
    bool softcap;     /* desc.softcap > 0 */
    bool alibi;       /* desc.alibi_slopes given */
    int bias;         /* 0 none, 1 float32, 2 in the storage dtype */
    int dv;           /* head dim of v, v2, out (desc.head_dim_v resolved) */
    bool weighted;    /* the variant weighs its poles by alpha, beta (TWO_POLE, DIFF) */
    int nscores;      /* score maps: 2 for DIFF (each pole its own q and k heads), else 1 */
    int q_heads;      /* heads of q (and dq): nscores heads_q */
    int k_heads;      /* heads of k (and dk; paged: of the key pages): nscores heads_kv */
} dp_problem;
/* The shape [seq, heads, dim] (of the tensors' batch) of each kind of tensor a call takes:
 * q and dq; k and dk; v, v2, dv, dv2; out and dout. DIFF's q and k hold two heads per head. */
typedef enum dp_role { DP_ROLE_Q, DP_ROLE_K, DP_ROLE_V, DP_ROLE_OUT } dp_role;
typedef struct dp_shape {
    int seq, heads, dim;
} dp_shape;
dp_shape dp_shape_of(const dp_problem *p, dp_role role);
/* The larger of the two head dims (the tiled kernels' limit applies to both). */
static inline int dp_max_head_dim(const dp_problem *p)
{
    return p->d.head_dim > p->dv ? p->d.head_dim : p->dv;
}
/* Validates desc (message via dp_fail on ctx, which may be NULL) and resolves defaults. */
dipole_status dp_problem_init(dipole_ctx *ctx, const dipole_attn_desc *desc, dp_problem *p);
/* The name of the first missing host array of a backward call (v2 and dv2 count only where
 * the variant reads v2), or NULL when none is missing. */
const char *dp_bwd_host_missing(const dp_problem *p, const void *q, const void *k, const void *v,
                                const void *v2, const void *dout, const void *dq, const void *dk,
                                const void *dv, const void *dv2);
/* Checks that a device tensor of dtype elements holds [batch, seq, heads, head_dim] inside its
 * buffer. */
dipole_status dp_check_tensor(dipole_ctx *ctx, const char *name, const dipole_tensor *t,
                              dipole_dtype dtype, int batch, int seq, int heads, int head_dim);
dipole_status dp_check_buffer(dipole_ctx *ctx, const char *name, cl_mem buf, size_t floats);
/* Checks that desc.bias's device view ([batch, heads_q, seq_q, seq_k] by its strides) lies in its
 * buffer. */
dipole_status dp_check_bias(dipole_ctx *ctx, const dp_problem *p);
/* Elements from a bias's base to one past the last its view reaches; 0 when that overflows. */
size_t dp_bias_span(const dp_problem *p);
dipole_status dp_check_int_buffer(dipole_ctx *ctx, const char *name, cl_mem buf, size_t ints);
/* Whether two elements of an output tensor may share an address (work-items would race). */
bool dp_tensor_self_overlaps(const dipole_tensor *t, int batch, int seq, int heads, int d);

/* ---- dtype.c: the host's conversions, bit for bit the kernels' dp_load / dp_store. */
float dp_f16_to_f32(uint16_t h);
uint16_t dp_f32_to_f16(float x);
float dp_bf16_to_f32(uint16_t b);
uint16_t dp_f32_to_bf16(float x);

/* ---- mask.c: the one definition of which keys a query row sees (host side). */
/* Half-open range [*lo, *hi) of visible keys for row i of batch b; lo >= hi when none. */
void dp_visible_range(const dp_problem *p, int b, int i, int *lo, int *hi);
int dp_key_length(const dp_problem *p, int b);
/* Sequence b's query rows, and the first query row and key of its tensors' batch (b, or 0
 * and the packed offsets). */
int dp_query_length(const dp_problem *p, int b);
int dp_first_query(const dp_problem *p, int b);
int dp_first_key(const dp_problem *p, int b);
/* The score of row i, key j of sequence b, head h after soft-capping, ALiBi and the bias
 * (bias: its host view, or NULL): s is scale q.k. Double, for the references. */
double dp_score_mods(const dp_problem *p, int b, int h, int i, int j, double s);
/* Whether a modified score leaves its key out of every pole: -inf where a bias is given (the
 * kernels' HAS_BIAS rule; without one a -inf score from infinite inputs ranks as before). */
bool dp_score_excluded(const dp_problem *p, double s);
/* d dp_score_mods / d s at that s (the soft-cap's tanh; ALiBi and the bias add constants). */
double dp_score_mods_ds(const dp_problem *p, double s);

/* ---- programs.c: programs by configuration. */
/* The configuration of kernel `kind` for problem p: variant, head_dim and mask kinds from p. */
dp_kernel_config dp_kernel_config_for(const dp_problem *p, dp_kernel_kind kind, int block_m,
                                      int block_n, int work_group);
/* The utility program (cl/dipole_util.cl: dweights, zero-fill) at a work-group size: its
 * options are the work-group alone, so one small program serves every head_dim and mask. */
dp_kernel_config dp_util_config(const dp_problem *p, int work_group);
/* The ONE place that turns a configuration and device into compiler options. */
void dp_build_options(const dipole_ctx *ctx, const dp_kernel_config *cfg, char *buf, size_t cap);
const char *dp_kernel_file(dp_kernel_kind kind);
/* Kernel source text (embedded, or from DIPOLE_KERNEL_DIR); free() the result. */
dipole_status dp_load_source(dipole_ctx *ctx, const char *file, char **text);
/* A built kernel for cfg, from the memory cache, the disk cache or a fresh build. The kernel
 * stays owned by the context. */
dipole_status dp_get_kernel(dipole_ctx *ctx, const dp_kernel_config *cfg, const char *name,
                            cl_kernel *kernel);
void dp_programs_release(dipole_ctx *ctx);

/* disk_cache.c */
typedef struct dp_cache_key {
    uint64_t h[2];
} dp_cache_key;
dp_cache_key dp_cache_key_make(const dipole_ctx *ctx, const char *source, const char *options);
/* Returns a malloc'd binary or NULL (any failure is a miss). */
unsigned char *dp_disk_cache_load(dipole_ctx *ctx, dp_cache_key key, size_t *size);
void dp_disk_cache_store(dipole_ctx *ctx, dp_cache_key key, const unsigned char *bin, size_t size);
void dp_cache_dir_init(dipole_ctx *ctx);

/* ---- tile configurations (attn_tiled.c, tune.c) */
/* Checks a tile configuration string; why receives the reason it is rejected. */
dipole_status dp_tile_config_check(const char *text, char *why, size_t cap);
/* Loads the tuned configuration saved for this device, if any, into ctx->tuned_config. */
void dp_tuned_config_load(dipole_ctx *ctx);

/* The entry points' common start (attention.c): ctx checked, *event (if any) cleared, the
 * context's lock taken and its error cleared, desc validated into *p. The lock is held on
 * return whenever ctx is not NULL, whatever the status: the caller releases it. */
dipole_status dp_call_begin(dipole_ctx *ctx, const char *name, const dipole_attn_desc *desc,
                            cl_event *event, dp_problem *p);

/* ---- plan queries (attention.c): the public plan functions' shared frame — arguments,
 * lock, descriptor — around the pass's own choice. */
typedef dipole_status (*dp_plan_fn)(dipole_ctx *ctx, const dp_problem *p, dipole_plan *plan);
dipole_status dp_plan_query(dipole_ctx *ctx, const dipole_attn_desc *desc, dipole_plan *plan,
                            const char *name, dp_plan_fn fn);

/* ---- paths */
/* desc->path, unless the context's DIPOLE_PATH=tiled|gemm forces one (attention.c; the
 * backward honours it too). */
dipole_path dp_requested_path(const dipole_ctx *ctx, const dp_problem *p);
typedef struct dp_args {
    const dipole_tensor *q, *k, *v, *v2, *out;
    cl_mem lse;
    cl_mem key_lengths; /* int [batch], packed: cu_seqlens_q then cu_seqlens_k; or NULL */
    cl_mem pole_weights; /* float [2 * heads_q] alpha then beta, or NULL */
    cl_mem alibi_slopes; /* float [heads_q] or NULL */
    /* A paged call's block table (int [batch, max_pages]) and its shape; NULL, 0, 0 else. */
    cl_mem block_table;
    int max_pages, page_size;
} dp_args;

/* How a GEMM-path call is cut under the workspace limit (gemm_common.c chooses it). */
typedef struct dp_gemm_chunking {
    size_t slices;      /* (batch, head) slices per chunk */
    size_t rows;        /* query rows per chunk */
    size_t nchunks;
    size_t score_bytes; /* our score-sized buffers */
    size_t peak_bytes;  /* score_bytes plus CLBlast's temporary copies, bounded above */
} dp_gemm_chunking;

/* The row-wise kernels' program and work-group: block_m rows x block_n work-items per row. */
typedef struct dp_rowwise_plan {
    dp_kernel_config cfg;
    size_t block_m, block_n;
} dp_rowwise_plan;

/* A forward call's plan: every decision, made once by the path's plan function; the run
 * functions execute it and decide nothing. */
typedef struct dp_fwd_plan {
    dipole_plan pub;          /* what dipole_attention_plan returns */
    dp_kernel_config kernel;  /* tiled: the program of the kernel(s) it launches */
    dp_gemm_chunking chunking; /* gemm */
    dp_rowwise_plan rowwise;   /* gemm */
} dp_fwd_plan;

/* Each path says whether it can serve p (filling plan) — the ordered list of attention.c. */
dipole_status dp_tiled_plan(dipole_ctx *ctx, const dp_problem *p, dp_fwd_plan *plan);
/* Whether the tiled kernels use the CPU layout on this context (device class and overrides). */
bool dp_tiled_cpu_layout(dipole_ctx *ctx);
dipole_status dp_tiled_run(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                           const dp_args *a, cl_event *event);
dipole_status dp_gemm_plan(dipole_ctx *ctx, const dp_problem *p, dp_fwd_plan *plan);
/* A forward call with the context's lock held: checks q, out and lse (and, unless p->paged,
 * k, v and v2), uploads the per-call arrays, plans and runs. */
dipole_status dp_attention_locked(dipole_ctx *ctx, const dp_problem *p, dp_args *a,
                                  cl_event *event);
dipole_status dp_gemm_run(dipole_ctx *ctx, const dp_problem *p, const dp_fwd_plan *plan,
                          const dp_args *a, cl_event *event);

/* ---- util */
/* a * b with overflow detection; returns false on overflow. */
static inline bool dp_mul_ok(size_t a, size_t b, size_t *r)
{
    if (a != 0 && b > SIZE_MAX / a)
        return false;
    *r = a * b;
    return true;
}

#endif
