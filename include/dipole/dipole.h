/*
 * dipole — dipole attention on any OpenCL device.
 *
 * With s = scale * q.k over the keys the mask allows, one query row's output is
 *   DIPOLE_SOFTMAX   sum_j softmax(s)_j v_j
 *   DIPOLE_SIGNEXP   sum_j sign(s_j) softmax(|s|)_j v_j            (sign(0) = 0)
 *   DIPOLE_ROUTED    sum_j softmax(|s|)_j (s_j > 0 ? v_j : v2_j)
 *   DIPOLE_TWO_POLE  a_h sum_j softmax(s)_j v_j + b_h sum_j softmax(-s)_j v2_j
 *   DIPOLE_DIFF      a_h sum_j softmax(s0)_j v_j + b_h sum_j softmax(s1)_j v_j
 * where DIFF (differential attention) scores each pole p with its own query and key heads:
 * s_p = scale q_p.k_p, q holding 2 heads_q heads and k 2 heads_kv, the pole fastest (head
 * 2h + p is pole p of head h).
 *
 * Layout: tensors are [batch, seq, heads, head_dim] with head_dim contiguous (v, v2 and out
 * with head_dim_v, which is head_dim unless the descriptor says otherwise); device
 * tensors may use any element offset and (batch, seq, head) strides, so packed QKV works
 * without copies. Query head h reads key/value head h / (heads_q / heads_kv) (GQA/MQA).
 *
 * Errors: every function returns a dipole_status. OpenCL error codes pass through unchanged
 * (they are negative and above -1000); the library's own codes are the DIPOLE_ERR_* band.
 * The message of the last failure — naming the argument, or the OpenCL call that failed, or
 * carrying the kernel build log — is kept on the context (dipole_ctx_last_error) and on the
 * calling thread (dipole_thread_last_error, also for calls without a context).
 *
 * Settings: the DIPOLE_* environment variables are read once, when a context is created; later
 * changes of the environment do not reach an existing context.
 *
 * Threads: a dipole_ctx may be used from several threads; calls on one context are serialised
 * by a lock inside it. Different contexts are independent.
 */
#ifndef DIPOLE_DIPOLE_H
#define DIPOLE_DIPOLE_H

#include <stddef.h>

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifdef __APPLE__
#include <OpenCL/cl.h>
#else
#include <CL/cl.h>
#endif

#define DIPOLE_VERSION_MAJOR 0
#define DIPOLE_VERSION_MINOR 1
#define DIPOLE_VERSION_PATCH 0

#if defined(_WIN32) && defined(DIPOLE_BUILDING_DLL)
#define DIPOLE_API __declspec(dllexport)
#elif defined(__GNUC__) && defined(DIPOLE_BUILDING)
#define DIPOLE_API __attribute__((visibility("default")))
#else
#define DIPOLE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dipole_status {
    DIPOLE_SUCCESS = 0,
    /* OpenCL codes (CL_OUT_OF_RESOURCES, CL_INVALID_MEM_OBJECT, ...) pass through as they are. */
    DIPOLE_ERR_INVALID_ARG = -2001,     /* a descriptor field or argument is out of range */
    DIPOLE_ERR_NO_PLATFORM = -2002,     /* no OpenCL platform / ICD is installed */
    DIPOLE_ERR_NO_DEVICE = -2003,       /* the device selector matched no device */
    DIPOLE_ERR_BAD_SELECTOR = -2004,    /* the device selector is malformed */
    DIPOLE_ERR_UNSUPPORTED = -2005,     /* the requested path cannot serve this problem */
    DIPOLE_ERR_BUILD = -2006,           /* a kernel failed to compile; the log is in the message */
    DIPOLE_ERR_OUT_OF_HOST_MEMORY = -2007,
    DIPOLE_ERR_BUFFER_RANGE = -2008,    /* offset/strides would reach outside a cl_mem */
    DIPOLE_ERR_CLBLAST = -2009,         /* CLBlast failed; its code is in the message */
    DIPOLE_ERR_KERNEL_SOURCE = -2010,   /* a kernel source file could not be read */
    DIPOLE_ERR_INTERNAL = -2011
} dipole_status;

/* A static name for any status, OpenCL codes included ("CL_INVALID_VALUE"). Never NULL. */
DIPOLE_API const char *dipole_status_string(dipole_status status);

/* "MAJOR.MINOR.PATCH" */
DIPOLE_API const char *dipole_version(void);

typedef enum dipole_variant {
    DIPOLE_SOFTMAX = 0,
    DIPOLE_SIGNEXP = 1,
    DIPOLE_ROUTED = 2,
    DIPOLE_TWO_POLE = 3,
    DIPOLE_DIFF = 4
} dipole_variant;

/* Static name ("softmax", "signexp", "routed", "two_pole", "diff"), or "unknown". */
DIPOLE_API const char *dipole_variant_name(dipole_variant variant);

typedef enum dipole_path {
    DIPOLE_PATH_AUTO = 0,   /* tiled where its kernel fits the device, else GEMM */
    DIPOLE_PATH_TILED = 1,  /* flash-style fused kernel, head_dim 1..256 */
    DIPOLE_PATH_GEMM = 2    /* CLBlast GEMMs + a row-wise kernel, any head_dim, bounded workspace */
} dipole_path;

/* Static name ("auto", "tiled", "gemm"), or "unknown". */
DIPOLE_API const char *dipole_path_name(dipole_path path);

/* How q, k, v, v2 and out (in the backward also dout, dq, dk, dv and dv2) are stored. Every
 * path computes in float32 whatever the storage; a store rounds to nearest even. lse, the pole
 * weights and their gradients are always float32. */
typedef enum dipole_dtype {
    DIPOLE_F32 = 0,  /* IEEE binary32 */
    DIPOLE_F16 = 1,  /* IEEE binary16 (read with vload_half: no cl_khr_fp16 needed) */
    DIPOLE_BF16 = 2  /* bfloat16: the upper 16 bits of a binary32 */
} dipole_dtype;

/* Static name ("f32", "f16", "bf16"), or "unknown". */
DIPOLE_API const char *dipole_dtype_name(dipole_dtype dtype);

/* Bytes per element: 4, 2, 2; 0 for a value that is not a dipole_dtype. */
DIPOLE_API size_t dipole_dtype_size(dipole_dtype dtype);

/* Converts n elements from one storage type to another on the host (widening is exact;
 * narrowing rounds to nearest even; NaN stays NaN, and an fp16 overflow becomes inf).
 * src and dst may not overlap unless they are the same array of the same type. Returns
 * DIPOLE_SUCCESS or DIPOLE_ERR_INVALID_ARG (an unknown dtype, or NULL with n > 0). */
DIPOLE_API dipole_status dipole_convert(dipole_dtype dst_dtype, void *dst, dipole_dtype src_dtype,
                                        const void *src, size_t n);

struct dipole_bias;

typedef struct dipole_attn_desc {
    dipole_variant variant;
    int batch;
    int heads_q;
    int heads_kv;       /* divides heads_q */
    int seq_q;
    int seq_k;
    int head_dim;
    float scale;        /* 0 selects 1/sqrt(head_dim) */
    int causal;         /* nonzero: query i sees keys j <= i + seq_k - seq_q (bottom-right) */
    int window_left;    /* -1 unlimited; else keys j >= i + seq_k - seq_q - window_left */
    int window_right;   /* -1 unlimited; else keys j <= i + seq_k - seq_q + window_right */
    /* Host array [batch] of valid key counts in [0, seq_k], or NULL for seq_k everywhere.
     * With it, the causal/window diagonal of batch b uses key_lengths[b] in place of seq_k. */
    const int *key_lengths;
    /* TWO_POLE and DIFF: host arrays [heads_q] of alpha_h and beta_h, NULL = all 1 (the Diff
     * Transformer's out = softmax(s0)V - lambda softmax(s1)V is alpha 1, beta -lambda). */
    const float *pos_weight;
    const float *neg_weight;
    dipole_path path;
    /* Storage of q, k, v, v2 and out; in the backward also dout, dq, dk, dv, dv2. Offsets and
     * strides stay in elements; lse and the pole weights stay float32. */
    dipole_dtype dtype;
    /* Packed variable-length batches (FlashAttention's varlen layout). Host arrays [batch + 1],
     * starting at 0 and non-decreasing, NULL = not packed; both or neither. Packed, q and out
     * are one batch of seq_q = cu_seqlens_q[batch] rows and k, v, v2 one batch of
     * seq_k = cu_seqlens_k[batch] rows: sequence b is query rows [cu_seqlens_q[b],
     * cu_seqlens_q[b + 1]) against keys [cu_seqlens_k[b], cu_seqlens_k[b + 1]) (length 0
     * allowed), its causal mask and windows aligned bottom-right within the sequence. Tensors'
     * stride_batch is unused; lse is [dipole_lse_count, heads_q, seq_q]. Not with key_lengths. */
    const int *cu_seqlens_q;
    const int *cu_seqlens_k;
    /* ALiBi: host array [heads_q] of slopes, NULL = none. Query row i of a sequence of lq rows
     * and lk keys scores key j with s - slope_h |i + lk - lq - j| (the bottom-right distance). */
    const float *alibi_slopes;
    /* Logit soft-capping (Gemma 2): s <- softcap tanh(s / softcap) before ALiBi and the bias;
     * 0 = off. */
    float softcap;
    /* An additive score bias (see dipole_bias), NULL = none. */
    const struct dipole_bias *bias;
    /* Head dim of v, v2 and out (and of dout, dv, dv2), 0 = head_dim; any variant. The tiled
     * path takes both head dims up to 256, the GEMM path any (the Diff Transformer's layout is
     * head_dim_v = 2 head_dim; MLA-style models use 192 / 128). */
    int head_dim_v;
} dipole_attn_desc;

/* An additive bias on the scores, added after soft-capping and ALiBi, before the variant:
 * element (b, h, i, j) is at offset + b stride_batch + h stride_head + i stride_row + j
 * (elements), for batch b, query head h, query row i and key j; a stride of 0 broadcasts over
 * that index. Packed batches index it as one batch by the packed rows and keys (sequence b's
 * row i is row cu_seqlens_q[b] + i). With a bias, a score of -inf excludes its key in every
 * variant (it never becomes |-inf| = +inf); a row left with no key outputs 0, lse -inf. The backward passes
 * no gradient to the bias. Device calls read `buffer` (a cl_mem of the context), host twins
 * and the references `host`; the other may be NULL. */
typedef struct dipole_bias {
    cl_mem buffer;
    const void *host;
    dipole_dtype dtype; /* DIPOLE_F32, or desc.dtype */
    size_t offset;
    size_t stride_batch;
    size_t stride_head;
    size_t stride_row;
} dipole_bias;

/* Fills every field with its default: SOFTMAX, sizes 0 (to be set), scale 0 (1/sqrt(d)),
 * no causal mask, windows -1, no key lengths, unit pole weights, DIPOLE_PATH_AUTO, DIPOLE_F32,
 * not packed, no ALiBi, no soft-cap, no bias, head_dim_v 0 (head_dim). */
DIPOLE_API void dipole_attn_desc_default(dipole_attn_desc *desc);

/* Checks a descriptor without a device. DIPOLE_SUCCESS or DIPOLE_ERR_INVALID_ARG (message on
 * the thread names the field and value). */
DIPOLE_API dipole_status dipole_attn_desc_validate(const dipole_attn_desc *desc);

/* Number of log-sum-exp statistics per query row: 2 for TWO_POLE (pole + then pole -) and DIFF
 * (pole 0 then pole 1), else 1. */
DIPOLE_API int dipole_lse_count(dipole_variant variant);

/* ---------------------------------------------------------------- context */

typedef struct dipole_ctx dipole_ctx;

/* Opens a device. selector: NULL -> env DIPOLE_DEVICE -> the GPU with the most compute units
 * -> any device. A selector is "P:D" (platform and device index), "gpu", "cpu", "accelerator",
 * or a case-insensitive substring of a platform or device name.
 * Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG (out NULL), DIPOLE_ERR_NO_PLATFORM,
 * DIPOLE_ERR_NO_DEVICE, DIPOLE_ERR_BAD_SELECTOR, DIPOLE_ERR_OUT_OF_HOST_MEMORY or an OpenCL
 * code. On failure *out is NULL and dipole_thread_last_error() says why. */
DIPOLE_API dipole_status dipole_ctx_create(dipole_ctx **out, const char *device_selector);

/* Wraps a caller's in-order queue (interop); the context retains the queue and releases it on
 * destroy. Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG (NULL, or an out-of-order queue),
 * DIPOLE_ERR_OUT_OF_HOST_MEMORY or an OpenCL code. */
DIPOLE_API dipole_status dipole_ctx_create_from_queue(dipole_ctx **out, cl_command_queue queue);

/* Finishes the queue and frees everything. NULL is a no-op. */
DIPOLE_API void dipole_ctx_destroy(dipole_ctx *ctx);

/* The message of the last failed call on ctx ("" if none). Valid until the next call on ctx. */
DIPOLE_API const char *dipole_ctx_last_error(const dipole_ctx *ctx);

/* The message of the last failed dipole call on this thread ("" if none). */
DIPOLE_API const char *dipole_thread_last_error(void);

/* The OpenCL objects behind a context, for allocating buffers and enqueuing around dipole. */
DIPOLE_API cl_context dipole_ctx_cl_context(const dipole_ctx *ctx);
DIPOLE_API cl_command_queue dipole_ctx_queue(const dipole_ctx *ctx);
DIPOLE_API cl_device_id dipole_ctx_device(const dipole_ctx *ctx);

/* "platform name / device name" of the context's device. */
DIPOLE_API const char *dipole_ctx_device_name(const dipole_ctx *ctx);

/* The directory of the context's on-disk cache (compiled kernels, tuned configurations), or ""
 * when the cache is off or unusable. Chosen when the context is created: env DIPOLE_CACHE_DIR
 * ("off" turns it off), else $XDG_CACHE_HOME/dipole, else $HOME/.cache/dipole. */
DIPOLE_API const char *dipole_ctx_cache_dir(const dipole_ctx *ctx);

/* Receives diagnostics (one line each, no newline): cache misses, path choices, failures.
 * NULL turns logging off (the default). Also enabled to stderr by env DIPOLE_LOG=1.
 * The callback runs with the context's lock held: it must not call dipole functions on the
 * same context (they would wait for that lock forever). */
typedef void (*dipole_log_fn)(void *user, const char *message);
DIPOLE_API void dipole_ctx_set_log(dipole_ctx *ctx, dipole_log_fn fn, void *user);

/* Bytes the GEMM path may use for score matrices (default 256 MiB, env DIPOLE_WORKSPACE_MB).
 * Returns DIPOLE_ERR_INVALID_ARG for 0. */
DIPOLE_API dipole_status dipole_ctx_set_workspace_limit(dipole_ctx *ctx, size_t bytes);
DIPOLE_API size_t dipole_ctx_workspace_limit(const dipole_ctx *ctx);

/* Tile configuration of the tiled path, overriding the built-in table for this context:
 * "layout=cpu|group,block_m=N,block_n=N,splitk_q=N,splitk_chunk=N" (any subset; layout cpu is
 * a GEMM micro-kernel per work-item, group is work-groups sharing local-memory tiles).
 * NULL or "" clears it. Env DIPOLE_TILE_CONFIG takes precedence over it; it takes precedence
 * over a tuned configuration. Returns DIPOLE_SUCCESS or DIPOLE_ERR_INVALID_ARG (the message
 * names the bad item; the previous setting stays). */
DIPOLE_API dipole_status dipole_ctx_set_tile_config(dipole_ctx *ctx, const char *config);

/* Saves config as this device's tuned tile configuration in the cache directory (what
 * dipole-bench --tune does); later contexts on the same device and driver use it unless an
 * override above is set. NULL or "" removes it. Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG
 * (bad config, or the file cannot be written) or DIPOLE_ERR_UNSUPPORTED (the cache is off). */
DIPOLE_API dipole_status dipole_ctx_save_tuned_config(dipole_ctx *ctx, const char *config);

/* ---------------------------------------------------------------- planning */

/* How the chosen path lays its kernels out. */
typedef enum dipole_layout {
    DIPOLE_LAYOUT_NONE = 0, /* the GEMM path (CLBlast GEMMs and row-wise kernels) */
    DIPOLE_LAYOUT_CPU,      /* tiled: a GEMM micro-kernel per work-item (CPU devices) */
    DIPOLE_LAYOUT_GROUP,    /* tiled: work-groups sharing local-memory tiles (GPUs) */
    DIPOLE_LAYOUT_SPLITK    /* tiled forward, decode: keys split into chunks (over work-items on
                             * CPUs, work-groups on the group layout), then merged */
} dipole_layout;

/* Where the tiled path's tile configuration came from, strongest override first. */
typedef enum dipole_config_source {
    DIPOLE_CONFIG_NONE = 0, /* no tile configuration applies (the GEMM path) */
    DIPOLE_CONFIG_TABLE,    /* the built-in table for the device class */
    DIPOLE_CONFIG_ENV,      /* env DIPOLE_TILE_CONFIG */
    DIPOLE_CONFIG_CONTEXT,  /* dipole_ctx_set_tile_config */
    DIPOLE_CONFIG_TUNED     /* the tuned configuration in the cache directory */
} dipole_config_source;

/* Every decision a call would make. Fields after `reason` came later; `reserved` keeps
 * room for more without changing the struct's size (it is written as zeros). */
typedef struct dipole_plan {
    dipole_path path;       /* DIPOLE_PATH_TILED or DIPOLE_PATH_GEMM */
    int block_m;            /* tiled: query rows per work-group tile (per work-item on CPU;
                             * split-K: 1 on CPUs, the tile's rows, query heads x rows of one
                             * KV head, on the group layout) */
    int block_n;            /* tiled: keys per local-memory tile (split-K: keys per chunk) */
    int work_group;         /* work-items per work-group */
    size_t workspace_bytes; /* peak scratch memory the call allocates (GEMM: chunks;
                             * split-K: partials) */
    char reason[256];       /* why this path, in words */
    dipole_layout layout;   /* how the path's kernels are laid out */
    dipole_config_source config_source; /* tiled: where the tile configuration came from */
    char config_label[32];  /* tiled: its name ("CPU", "GPU/NVIDIA", "tuned", ...), else "" */
    int splitk_chunks;      /* split-K: key chunks per query row, else 0 */
    size_t chunk_rows;      /* GEMM: query rows per chunk, else 0 */
    size_t chunk_slices;    /* GEMM: (batch, head) slices per chunk, else 0 */
    size_t chunks;          /* GEMM: chunks the call runs in, else 0 */
    int reserved[16];
} dipole_plan;

/* Says which path (and configuration) dipole_attention would use for desc on this context,
 * honouring desc->path and env DIPOLE_PATH=tiled|gemm. Builds (or loads) the kernels it needs
 * to check that they fit the device. Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG (ctx,
 * desc or plan NULL, or desc invalid), DIPOLE_ERR_UNSUPPORTED when the forced path cannot
 * serve desc (plan->reason says why), DIPOLE_ERR_BUILD or an OpenCL error from building
 * or querying a kernel. */
DIPOLE_API dipole_status dipole_attention_plan(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                               dipole_plan *plan);

/* The same for dipole_attention_backward: its path, layout and tiles (block_m: query rows per
 * tile or per dq work-item, block_n: keys per tile or per dkdv work-item), or for the GEMM path
 * its chunking. Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG (ctx, desc or plan NULL, or
 * desc invalid), DIPOLE_ERR_UNSUPPORTED when the forced path cannot serve desc (plan->reason
 * says why), DIPOLE_ERR_BUILD or an OpenCL error from building or querying a kernel. */
DIPOLE_API dipole_status dipole_attention_backward_plan(dipole_ctx *ctx,
                                                        const dipole_attn_desc *desc,
                                                        dipole_plan *plan);

/* ---------------------------------------------------------------- forward */

/* A tensor [batch, seq, heads, head_dim] of desc.dtype elements in a cl_mem; offset and strides
 * in elements. */
typedef struct dipole_tensor {
    cl_mem buffer;
    size_t offset;
    size_t stride_batch;
    size_t stride_seq;
    size_t stride_head;
} dipole_tensor;

/* A dense contiguous [batch, seq, heads, head_dim] tensor at element offset 0. */
DIPOLE_API dipole_tensor dipole_tensor_dense(cl_mem buffer, int seq, int heads, int head_dim);

/* Enqueues attention on the context's queue. q: [batch, seq_q, heads_q, head_dim] (DIFF:
 * 2 heads_q heads), k: [batch, seq_k, heads_kv, head_dim] (DIFF: 2 heads_kv), v, v2:
 * [batch, seq_k, heads_kv, head_dim_v], out: [batch, seq_q, heads_q, head_dim_v]; v2 may be NULL
 * except for ROUTED and TWO_POLE.
 * lse: NULL, or a float buffer [dipole_lse_count, batch, heads_q, seq_q] that receives each row's
 * log-sum-exp of its pole logits (-inf for a row that sees no key), as the backward pass needs.
 * event: NULL, or receives an event for the last command (release it with clReleaseEvent).
 * Inputs are read-only; out may not alias an input.
 * Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG, DIPOLE_ERR_BUFFER_RANGE, DIPOLE_ERR_UNSUPPORTED,
 * DIPOLE_ERR_BUILD, DIPOLE_ERR_KERNEL_SOURCE, DIPOLE_ERR_CLBLAST, DIPOLE_ERR_OUT_OF_HOST_MEMORY
 * or an OpenCL code. A failed call leaves the context usable. */
DIPOLE_API dipole_status dipole_attention(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                          const dipole_tensor *q, const dipole_tensor *k,
                                          const dipole_tensor *v, const dipole_tensor *v2,
                                          const dipole_tensor *out, cl_mem lse, cl_event *event);

/* Host-memory twin: dense [batch, seq, heads, head_dim] arrays of desc.dtype elements (fp16:
 * binary16 bits, bf16: the upper halves of float32s); blocks until done.
 * Same statuses as dipole_attention. */
DIPOLE_API dipole_status dipole_attention_host(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                               const void *q, const void *k, const void *v,
                                               const void *v2, void *out);

/* As dipole_attention_host, also writing lse (float32, NULL allowed) as dipole_attention
 * describes. */
DIPOLE_API dipole_status dipole_attention_host_lse(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                                   const void *q, const void *k,
                                                   const void *v, const void *v2, void *out,
                                                   float *lse);

/* The CPU reference: double accumulation, straightforward loops, dense host layout. Its arrays
 * are float32 whatever desc.dtype says (widen half-precision inputs with dipole_convert, which
 * is exact). lse may be NULL. Returns DIPOLE_SUCCESS, DIPOLE_ERR_INVALID_ARG or
 * DIPOLE_ERR_OUT_OF_HOST_MEMORY. */
DIPOLE_API dipole_status dipole_reference(const dipole_attn_desc *desc, const float *q,
                                          const float *k, const float *v, const float *v2,
                                          float *out);
DIPOLE_API dipole_status dipole_reference_lse(const dipole_attn_desc *desc, const float *q,
                                              const float *k, const float *v, const float *v2,
                                              float *out, float *lse);

/* ---------------------------------------------------------------- paged KV cache */

/* A paged KV cache: K, V (and V2) live in pools of pages, each page holding page_size tokens
 * of every KV head. A page tensor's batch index is the page and its seq index the slot in
 * the page: element (page, slot, head, c) sits at offset + page * stride_batch +
 * slot * stride_seq + head * stride_head + c. Token j of sequence b is in page
 * block_table[b * max_pages + j / page_size] at slot j % page_size. A pool holds as many pages
 * as its buffer has room for past the tensor's offset. */
typedef struct dipole_paged_kv {
    cl_mem block_table; /* int32 [batch, max_pages]: page indices into the page pools */
    int max_pages;      /* columns of block_table */
    int page_size;      /* tokens per page, >= 1 */
} dipole_paged_kv;

/* dipole_attention over a paged cache (decode, and chunked prefill): q, out and lse as in
 * dipole_attention; k_pages, v_pages, v2_pages the page pools, each page a [page_size, heads,
 * dim] slice of k, v or v2 as dipole_attention takes them (k_pages [pages, page_size, heads_kv
 * (DIFF: 2 heads_kv), head_dim], v_pages and v2_pages [pages, page_size, heads_kv, head_dim_v];
 * v2_pages NULL unless the variant reads v2). desc.key_lengths is required: sequence
 * b's cache length, at most max_pages * page_size; desc.seq_k is at least the largest. Causal
 * masks and windows align bottom-right to each sequence's length, as in dipole_attention.
 * Every page a sequence's keys reach is checked (the call reads the block table back, in
 * queue order) before any kernel runs: an index that is negative or past a pool is refused
 * with DIPOLE_ERR_BUFFER_RANGE naming the sequence, column and pool. Both tiled layouts read
 * the pages in place; the GEMM path gathers them into dense float copies, which count as
 * workspace. Same statuses as dipole_attention. */
DIPOLE_API dipole_status dipole_attention_paged(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                                const dipole_tensor *q,
                                                const dipole_tensor *k_pages,
                                                const dipole_tensor *v_pages,
                                                const dipole_tensor *v2_pages,
                                                const dipole_paged_kv *paged,
                                                const dipole_tensor *out, cl_mem lse,
                                                cl_event *event);

/* Writes new tokens' rows into their pages, the step before attention in every decode loop:
 * k_new, v_new (v2_new where the variant reads v2) are [batch, new_tokens, heads, dim] tensors
 * of desc.dtype with their pool's heads and dim, copied bit for bit; positions is a host array [batch, new_tokens] of
 * each token's position in its sequence (-1: no token, nothing written), which lands in page
 * block_table[b, position / page_size] at slot position % page_size. desc is the attention
 * call's (it must be valid); batch, heads_kv, head_dim, head_dim_v, dtype and the variant
 * (DIFF's two key heads, whether v2 is written) are read. new_tokens 0 writes nothing. Refused before anything is written: a
 * position outside [-1, max_pages * page_size), a page index outside a pool, two tokens on one
 * slot, a pool or source NULL, out of its buffer, or overlapping another tensor or the block
 * table where a token is written (DIPOLE_ERR_INVALID_ARG or DIPOLE_ERR_BUFFER_RANGE, naming the
 * token or the tensors). new_tokens 0 enqueues nothing (*event, if given, is NULL). Returns
 * those, DIPOLE_SUCCESS, DIPOLE_ERR_BUILD, DIPOLE_ERR_OUT_OF_HOST_MEMORY or an OpenCL code. */
DIPOLE_API dipole_status dipole_paged_kv_write(dipole_ctx *ctx, const dipole_attn_desc *desc,
                                               const dipole_paged_kv *paged, int new_tokens,
                                               const int *positions, const dipole_tensor *k_new,
                                               const dipole_tensor *v_new,
                                               const dipole_tensor *v2_new,
                                               const dipole_tensor *k_pages,
                                               const dipole_tensor *v_pages,
                                               const dipole_tensor *v2_pages, cl_event *event);

/* ---------------------------------------------------------------- backward */

/* Gradients of the forward pass. out and lse are the forward's results for the same inputs;
 * dout has out's shape. dq, dk, dv (and dv2 where the variant reads v2) receive gradients with
 * their inputs' shapes; they are overwritten, not accumulated. dpos_weight / dneg_weight: NULL,
 * or float buffers [heads_q] receiving d/d alpha_h and d/d beta_h (TWO_POLE and DIFF only).
 * Deterministic: the same inputs give bit-identical gradients run to run. The path follows
 * desc->path and env DIPOLE_PATH as the forward's: tiled kernels up to head_dim 256, else the
 * GEMM path (CLBlast, any head_dim, scratch under the context's workspace limit); a forced
 * tiled path beyond head_dim 256 returns DIPOLE_ERR_UNSUPPORTED.
 * Same statuses as dipole_attention. */
DIPOLE_API dipole_status dipole_attention_backward(
    dipole_ctx *ctx, const dipole_attn_desc *desc, const dipole_tensor *q, const dipole_tensor *k,
    const dipole_tensor *v, const dipole_tensor *v2, const dipole_tensor *out,
    const dipole_tensor *dout, cl_mem lse, const dipole_tensor *dq, const dipole_tensor *dk,
    const dipole_tensor *dv, const dipole_tensor *dv2, cl_mem dpos_weight, cl_mem dneg_weight,
    cl_event *event);

/* Host twin of the backward pass (runs the forward itself for out and lse). q .. dv2 are
 * desc.dtype arrays, dpos_weight/dneg_weight float32. dv2 may be NULL when the variant reads no
 * v2; dpos_weight/dneg_weight may be NULL. */
DIPOLE_API dipole_status dipole_attention_backward_host(
    dipole_ctx *ctx, const dipole_attn_desc *desc, const void *q, const void *k, const void *v,
    const void *v2, const void *dout, void *dq, void *dk, void *dv, void *dv2,
    float *dpos_weight, float *dneg_weight);

/* The CPU reference backward in double precision (dense host layout, float32 arrays whatever
 * desc.dtype says). */
DIPOLE_API dipole_status dipole_reference_backward(
    const dipole_attn_desc *desc, const float *q, const float *k, const float *v, const float *v2,
    const float *dout, float *dq, float *dk, float *dv, float *dv2, float *dpos_weight,
    float *dneg_weight);

#ifdef __cplusplus
}
#endif

#endif /* DIPOLE_DIPOLE_H */
