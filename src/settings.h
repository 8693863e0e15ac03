/* The library's environment settings, read once per context (when it is created) into one
 * struct: no later call reads the environment, so a caller's setenv beside a running call
 * cannot race with it, and a context behaves the same for its whole life. */
#ifndef DIPOLE_SETTINGS_H
#define DIPOLE_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>

#include "dipole/dipole.h"

typedef struct dp_settings {
    char *device;      /* DIPOLE_DEVICE: selector when the caller gives none; NULL for none */
    char *kernel_dir;  /* DIPOLE_KERNEL_DIR: read kernel sources from here; NULL: embedded */
    char *tile_config; /* DIPOLE_TILE_CONFIG: forced tile configuration; NULL for none */
    char *cache_dir;   /* the disk cache directory by the rule below; NULL when off */
    const char *cache_off_why; /* static text: why the cache is off, NULL when it is on */
    dipole_path path;          /* DIPOLE_PATH=tiled|gemm forces a path; else AUTO */
    size_t workspace_limit;    /* DIPOLE_WORKSPACE_MB in bytes; 0 when unset or invalid */
    bool log;                  /* DIPOLE_LOG set and not "0": diagnostics to stderr */
    int bwd_block_m, bwd_block_n; /* DIPOLE_BWD_BLOCK_M/N (1..1024); 0: the built-in choice */
} dp_settings;

/* Reads every setting. Cache directory: DIPOLE_CACHE_DIR ("off" disables), else
 * $XDG_CACHE_HOME/dipole, else $HOME/.cache/dipole. Returns false only when out of memory
 * (s is then released). */
bool dp_settings_read(dp_settings *s);
void dp_settings_release(dp_settings *s);

#endif
