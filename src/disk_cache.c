/* On-disk cache of program binaries. A file is trusted only if its header, key and checksum
 * all match; anything else is a miss. Writes go to a temporary file that is renamed into place,
 * so readers never see a partial file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define DP_CACHE_MAGIC "DIPOLEPC"
#define DP_CACHE_FORMAT 1u

typedef struct dp_cache_header {
    char magic[8];
    uint32_t format;
    uint32_t reserved;
    uint64_t key[2];
    uint64_t size;
    uint64_t checksum;
} dp_cache_header;

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t fnv1a_str(uint64_t h, const char *s)
{
    return fnv1a(h, s, strlen(s) + 1); /* the NUL separates fields */
}

dp_cache_key dp_cache_key_make(const dipole_ctx *ctx, const char *source, const char *options)
{
    /* Two independent seeds give a 128-bit key: a collision would need both to collide. */
    const uint64_t seeds[2] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};
    const uint32_t format = DP_CACHE_FORMAT;
    dp_cache_key key;
    for (int s = 0; s < 2; s++) {
        uint64_t h = fnv1a(seeds[s], &format, sizeof format);
        h = fnv1a_str(h, source);
        h = fnv1a_str(h, options);
        h = fnv1a_str(h, ctx->props.name);
        h = fnv1a_str(h, ctx->props.vendor);
        h = fnv1a_str(h, ctx->props.driver_version);
        h = fnv1a_str(h, ctx->props.device_version);
        h = fnv1a_str(h, ctx->props.platform_name);
        h = fnv1a_str(h, ctx->props.platform_version);
        key.h[s] = h;
    }
    return key;
}

static void cache_path(const dipole_ctx *ctx, dp_cache_key key, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%016llx%016llx.bin", ctx->cache_dir, (unsigned long long)key.h[0],
             (unsigned long long)key.h[1]);
}

static bool mkdir_p(const char *path)
{
    char tmp[1024];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return false;
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return false;
            *p = '/';
        }
    return mkdir(tmp, 0755) == 0 || errno == EEXIST;
}

void dp_cache_dir_init(dipole_ctx *ctx)
{
    ctx->cache_dir[0] = '\0';
    const char *dir = ctx->settings.cache_dir;
    char buf[sizeof ctx->cache_dir];
    if (!dir) {
        dp_log(ctx, "disk cache off: %s", ctx->settings.cache_off_why);
        return;
    }
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
        dp_log(ctx, "cache directory %.64s... is longer than %zu characters; caching off", dir,
               sizeof buf - 1);
        return;
    }
    if (!mkdir_p(buf)) {
        dp_log(ctx, "cache directory %s is not usable (%s); caching off", buf, strerror(errno));
        return;
    }
    snprintf(ctx->cache_dir, sizeof ctx->cache_dir, "%s", buf);
}

unsigned char *dp_disk_cache_load(dipole_ctx *ctx, dp_cache_key key, size_t *size)
{
    if (!ctx->cache_dir[0])
        return NULL;
    char path[1200];
    cache_path(ctx, key, path, sizeof path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    dp_cache_header hdr;
    unsigned char *bin = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || fread(&hdr, sizeof hdr, 1, f) != 1)
        goto miss;
    if (memcmp(hdr.magic, DP_CACHE_MAGIC, 8) != 0 || hdr.format != DP_CACHE_FORMAT ||
        hdr.key[0] != key.h[0] || hdr.key[1] != key.h[1] || hdr.size == 0 ||
        hdr.size != (uint64_t)st.st_size - sizeof hdr)
        goto miss;
    bin = malloc((size_t)hdr.size);
    if (!bin || fread(bin, 1, (size_t)hdr.size, f) != hdr.size ||
        fnv1a(0xcbf29ce484222325ull, bin, (size_t)hdr.size) != hdr.checksum)
        goto miss;
    fclose(f);
    *size = (size_t)hdr.size;
    return bin;
miss:
    dp_log(ctx, "cache file %s is unusable; rebuilding", path);
    free(bin);
    fclose(f);
    return NULL;
}

void dp_disk_cache_store(dipole_ctx *ctx, dp_cache_key key, const unsigned char *bin, size_t size)
{
    if (!ctx->cache_dir[0] || !bin || !size)
        return;
    char path[1200], tmp[1200];
    cache_path(ctx, key, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s/.tmp-XXXXXX", ctx->cache_dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        dp_log(ctx, "cannot write to cache directory %s (%s)", ctx->cache_dir, strerror(errno));
        return;
    }
    dp_cache_header hdr;
    memset(&hdr, 0, sizeof hdr);
    memcpy(hdr.magic, DP_CACHE_MAGIC, 8);
    hdr.format = DP_CACHE_FORMAT;
    hdr.key[0] = key.h[0];
    hdr.key[1] = key.h[1];
    hdr.size = size;
    hdr.checksum = fnv1a(0xcbf29ce484222325ull, bin, size);
    FILE *f = fdopen(fd, "wb");
    bool ok = f && fwrite(&hdr, sizeof hdr, 1, f) == 1 && fwrite(bin, 1, size, f) == size;
    if (f)
        ok = (fclose(f) == 0) && ok;
    else
        close(fd);
    if (!ok || rename(tmp, path) != 0) {
        dp_log(ctx, "cache write %s failed (%s); continuing without it", path, strerror(errno));
        unlink(tmp);
    }
}
