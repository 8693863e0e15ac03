/* Tile-configuration overrides: per context, and the tuned one that dipole-bench --tune saves
 * per device in the cache directory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* One file per device and driver: the key hashes the device's identity like program binaries. */
static void tuned_path(const dipole_ctx *ctx, char *buf, size_t cap)
{
    dp_cache_key key = dp_cache_key_make(ctx, "dipole tuned tile config", "");
    snprintf(buf, cap, "%s/tuned-%016llx%016llx.conf", ctx->cache_dir, (unsigned long long)key.h[0],
             (unsigned long long)key.h[1]);
}

void dp_tuned_config_load(dipole_ctx *ctx)
{
    ctx->tuned_config[0] = '\0';
    if (!ctx->cache_dir[0])
        return;
    char path[1200];
    tuned_path(ctx, path, sizeof path);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[sizeof ctx->tuned_config];
    char why[160];
    if (fgets(line, sizeof line, f)) {
        /* A line longer than the buffer is never trusted by its prefix. */
        const bool whole = strchr(line, '\n') || fgetc(f) == EOF;
        line[strcspn(line, "\r\n")] = '\0';
        if (!whole) {
            dp_log(ctx, "tuned config %s ignored: line too long", path);
            fclose(f);
            return;
        }
        /* A file that does not parse is ignored, never trusted. */
        if (dp_tile_config_check(line, why, sizeof why) == DIPOLE_SUCCESS)
            snprintf(ctx->tuned_config, sizeof ctx->tuned_config, "%s", line);
        else
            dp_log(ctx, "tuned config %s ignored: %s", path, why);
    }
    fclose(f);
}

/* NULL or "" (no configuration) passes; anything else must parse. */
static dipole_status check_config(dipole_ctx *ctx, const char *config)
{
    char why[160];
    if (config && *config && dp_tile_config_check(config, why, sizeof why) != DIPOLE_SUCCESS)
        return dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "tile config \"%s\": %s", config, why);
    return DIPOLE_SUCCESS;
}

dipole_status dipole_ctx_set_tile_config(dipole_ctx *ctx, const char *config)
{
    if (!ctx)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_ctx_set_tile_config: ctx is NULL");
    pthread_mutex_lock(&ctx->lock);
    dp_clear_error(ctx);
    dipole_status st = check_config(ctx, config);
    if (st == DIPOLE_SUCCESS)
        snprintf(ctx->tile_config, sizeof ctx->tile_config, "%s", config ? config : "");
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

dipole_status dipole_ctx_save_tuned_config(dipole_ctx *ctx, const char *config)
{
    if (!ctx)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_ctx_save_tuned_config: ctx is NULL");
    pthread_mutex_lock(&ctx->lock);
    dp_clear_error(ctx);
    char path[1200], tmp[1200];
    dipole_status st = check_config(ctx, config);
    if (st != DIPOLE_SUCCESS)
        goto done;
    if (!ctx->cache_dir[0]) {
        st = dp_fail(ctx, DIPOLE_ERR_UNSUPPORTED,
                     "the cache directory is off or unusable; nowhere to save a tuned config");
        goto done;
    }
    tuned_path(ctx, path, sizeof path);
    if (!config || !*config) {
        if (unlink(path) != 0 && errno != ENOENT)
            st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "cannot remove %s: %s", path, strerror(errno));
        else
            ctx->tuned_config[0] = '\0';
        goto done;
    }
    /* Temp file + rename: a reader sees the old file or the new one, never half of one. */
    snprintf(tmp, sizeof tmp, "%s/.tuned-XXXXXX", ctx->cache_dir);
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    bool ok = f && fprintf(f, "%s\n", config) > 0;
    if (f)
        ok = fclose(f) == 0 && ok;
    else if (fd >= 0)
        close(fd);
    if (!ok || rename(tmp, path) != 0) {
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "cannot write %s: %s", path, strerror(errno));
        if (fd >= 0)
            unlink(tmp);
        goto done;
    }
    snprintf(ctx->tuned_config, sizeof ctx->tuned_config, "%s", config);
done:
    pthread_mutex_unlock(&ctx->lock);
    return st;
}
