/* Tile configurations: the table by device class, its overrides, and the work-group layout's
 * tiles for a device's limits. Pure functions of their arguments, so that a tool can print
 * what each GPU class would build without the GPU (tests/kernel_options.c). */
#ifndef DIPOLE_TILES_H
#define DIPOLE_TILES_H

#include "internal.h"

/* How the tiled forward is laid out on a device class. */
typedef enum dp_tile_layout {
    DP_LAYOUT_GROUP, /* cl/dipole_fwd.cl: a grid of work-items per query tile, tiles in local memory */
    DP_LAYOUT_CPU,   /* cl/dipole_fwd_cpu.cl: a GEMM micro-kernel per work-item */
} dp_tile_layout;

typedef struct dp_tile_config {
    dp_tile_layout layout;
    int block_m;      /* rows per work-group (group) or per work-item (cpu: 16 or 32) */
    int block_n;      /* keys per tile */
    int splitk_max_q; /* seq_q up to which a decode splits its keys into chunks (0: never) */
    int splitk_chunk; /* keys per chunk (the most: the planner halves it for parallelism) */
    int wg_cols;      /* group: work-items sharing a row (its keys and head-dim columns) */
    int rows_per_item; /* group: query rows per work-item */
    int acc_floats;   /* group: the register budget, floats of per-row state per work-item */
    int bwd_block_m;  /* group backward: query rows per tile */
    int bwd_block_n;  /* group backward: keys per tile */
} dp_tile_config;

/* The table's entry for a device (most specific class first); returns its label. */
const char *dp_tile_table_entry(const dp_device_props *dev, dp_tile_config *cfg);

/* The context's configuration: the table's entry for its device, then whichever override
 * applies, strongest first (the environment, the context's own, the tuned file). Returns its
 * label; *source says which it is. */
const char *dp_tile_config_for(dipole_ctx *ctx, dp_tile_config *cfg, dipole_config_source *source);

/* Applies a "key=value,..." override to cfg (see dp_tile_config_check); false at the first bad
 * item, named in why, with cfg partly changed: callers parse into a copy. */
bool dp_tile_config_parse(const char *text, dp_tile_config *cfg, char *why, size_t cap);

/* The group layout's forward kernel configuration from tc, shrunk where the device's work-group
 * or local memory, or the per-item register budget, needs. False (why) if nothing fits. */
bool dp_group_fwd_config(const dp_tile_config *tc, const dp_problem *p,
                         const dp_device_props *dev, dp_kernel_config *cfg, char *why, size_t cap);
/* The group layout's decode (cl/dipole_fwd.cl with DP_SPLIT): tiles whose rows are the
 * heads_q / heads_kv query heads x seq_q rows that share a KV head, up to tc's splitk_max_q
 * rows and 64 tile rows, at the fewest tile rows (a power of two) that hold them. False where
 * the problem is no decode or the tile does not fit at that many rows. */
bool dp_group_split_config(const dp_tile_config *tc, const dp_problem *p,
                           const dp_device_props *dev, dp_kernel_config *cfg);
/* The local memory that cl/dipole_fwd.cl declares at cfg. */
size_t dp_group_fwd_local_bytes(const dp_kernel_config *cfg, const dp_problem *p);

/* The group layout's backward kernels (pre, dkdv, dq: one program) from tc's backward tile
 * sizes, shrunk as the forward's; false (why) if nothing fits. */
bool dp_group_bwd_config(const dp_tile_config *tc, const dp_problem *p,
                         const dp_device_props *dev, dp_kernel_config *cfg, char *why, size_t cap);
size_t dp_group_bwd_local_bytes(const dp_kernel_config *cfg, const dp_problem *p);

#endif
