/* Kernel sources embedded at build time by tools/embed_cl.py. */
#ifndef DIPOLE_SOURCES_H
#define DIPOLE_SOURCES_H

typedef struct dp_embedded_source {
    const char *name;
    const char *text;
} dp_embedded_source;

/* Terminated by a {NULL, NULL} entry. */
extern const dp_embedded_source dp_embedded_sources[];

#endif
