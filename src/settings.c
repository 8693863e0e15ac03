/* Environment settings: the one file of the library that calls getenv. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "settings.h"

/* The variable's value, or NULL when it is unset or empty. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static bool copy(char **dst, const char *src)
{
    *dst = NULL;
    return !src || (*dst = strdup(src)) != NULL;
}

static int block_setting(const char *name)
{
    const char *s = env(name);
    if (!s)
        return 0;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end == '\0' && v > 0 && v <= 1024) ? (int)v : 0;
}

static bool read_cache_dir(dp_settings *s)
{
    const char *dir = env("DIPOLE_CACHE_DIR"), *xdg = env("XDG_CACHE_HOME"), *home = env("HOME");
    const char *suffix = "";
    if (dir && !strcmp(dir, "off")) {
        s->cache_off_why = "DIPOLE_CACHE_DIR=off";
        return true;
    }
    if (!dir && xdg)
        dir = xdg, suffix = "/dipole";
    else if (!dir && home)
        dir = home, suffix = "/.cache/dipole";
    if (!dir) {
        s->cache_off_why = "neither DIPOLE_CACHE_DIR, XDG_CACHE_HOME nor HOME is set";
        return true;
    }
    const size_t n = strlen(dir) + strlen(suffix) + 1;
    if (!(s->cache_dir = malloc(n)))
        return false;
    snprintf(s->cache_dir, n, "%s%s", dir, suffix);
    return true;
}

bool dp_settings_read(dp_settings *s)
{
    memset(s, 0, sizeof *s);
    const char *path = env("DIPOLE_PATH");
    s->path = path && !strcmp(path, "tiled")  ? DIPOLE_PATH_TILED
              : path && !strcmp(path, "gemm") ? DIPOLE_PATH_GEMM
                                              : DIPOLE_PATH_AUTO;
    const char *ws = env("DIPOLE_WORKSPACE_MB");
    if (ws) {
        char *end;
        unsigned long long mb = strtoull(ws, &end, 10);
        if (*end == '\0' && mb > 0 && mb < ((unsigned long long)SIZE_MAX >> 20))
            s->workspace_limit = (size_t)mb << 20;
    }
    const char *lg = env("DIPOLE_LOG");
    s->log = lg && strcmp(lg, "0") != 0;
    s->bwd_block_m = block_setting("DIPOLE_BWD_BLOCK_M");
    s->bwd_block_n = block_setting("DIPOLE_BWD_BLOCK_N");
    if (copy(&s->device, env("DIPOLE_DEVICE")) && copy(&s->kernel_dir, env("DIPOLE_KERNEL_DIR")) &&
        copy(&s->tile_config, env("DIPOLE_TILE_CONFIG")) && read_cache_dir(s))
        return true;
    dp_settings_release(s);
    return false;
}

void dp_settings_release(dp_settings *s)
{
    free(s->device);
    free(s->kernel_dir);
    free(s->tile_config);
    free(s->cache_dir);
    memset(s, 0, sizeof *s);
}
