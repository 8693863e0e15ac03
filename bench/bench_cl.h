/* dipole-bench's own kernels, embedded at build time by tools/embed_cl.py. */
#ifndef DIPOLE_BENCH_CL_H
#define DIPOLE_BENCH_CL_H

typedef struct dp_embedded_source {
    const char *name;
    const char *text;
} dp_embedded_source;

/* Terminated by a {NULL, NULL} entry. */
extern const dp_embedded_source bench_cl_sources[];

#endif
