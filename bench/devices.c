/* Devices: the --list table, the selectors --all walks, and a context's device description. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define MAX_PLATFORMS 16
#define MAX_DEVICES 64

static void dev_str(cl_device_id d, cl_device_info what, char *buf, size_t cap)
{
    if (clGetDeviceInfo(d, what, cap - 1, buf, NULL) != CL_SUCCESS)
        snprintf(buf, cap, "?");
    buf[cap - 1] = '\0';
}

static bool has_ext(cl_device_id d, const char *name)
{
    size_t len = 0;
    bool found = false;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &len) != CL_SUCCESS || !len)
        return false;
    char *ext = malloc(len + 1);
    if (ext && clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, len, ext, NULL) == CL_SUCCESS) {
        ext[len] = '\0';
        found = strstr(ext, name) != NULL;
    }
    free(ext);
    return found;
}

static void fill(cl_platform_id plat, cl_device_id d, bench_device *o)
{
    cl_device_type type = 0;
    cl_uint cu = 0, mhz = 0;
    cl_ulong lm = 0, gm = 0, ma = 0;
    size_t wg = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_CLOCK_FREQUENCY, sizeof mhz, &mhz, NULL);
    clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof lm, &lm, NULL);
    clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof gm, &gm, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof ma, &ma, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    o->cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    o->compute_units = cu;
    o->clock_mhz = mhz;
    o->local_mem = lm;
    o->global_mem = gm;
    o->max_alloc = ma;
    o->max_work_group = wg;
    o->fp16 = has_ext(d, "cl_khr_fp16");
    o->fp64 = has_ext(d, "cl_khr_fp64");
    dev_str(d, CL_DEVICE_NAME, o->name, sizeof o->name);
    dev_str(d, CL_DRIVER_VERSION, o->driver, sizeof o->driver);
    dev_str(d, CL_DEVICE_VERSION, o->version, sizeof o->version);
    if (clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof o->platform - 1, o->platform, NULL) !=
        CL_SUCCESS)
        snprintf(o->platform, sizeof o->platform, "?");
    o->platform[sizeof o->platform - 1] = '\0';
    snprintf(o->label, sizeof o->label, "%s / %s", o->platform, o->name);
}

/* Calls fn for every device; returns how many there were. */
static int each_device(void (*fn)(void *, unsigned, unsigned, cl_platform_id, cl_device_id),
                       void *user)
{
    cl_platform_id plats[MAX_PLATFORMS];
    cl_uint np = 0;
    if (clGetPlatformIDs(MAX_PLATFORMS, plats, &np) != CL_SUCCESS)
        return 0;
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    int count = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd) != CL_SUCCESS)
            continue;
        if (nd > MAX_DEVICES)
            nd = MAX_DEVICES;
        for (cl_uint d = 0; d < nd; d++, count++)
            fn(user, p, d, plats[p], devs[d]);
    }
    return count;
}

static void list_one(void *user, unsigned p, unsigned d, cl_platform_id plat, cl_device_id dev)
{
    FILE *f = user;
    bench_device o;
    memset(&o, 0, sizeof o);
    fill(plat, dev, &o);
    fprintf(f, "%u:%u  %s\n", p, d, o.label);
    fprintf(f, "     type %s, %u compute units, %u MHz, local %llu KiB, global %llu MiB "
               "(max alloc %llu MiB), max work-group %zu, fp16 %s, fp64 %s\n",
            o.cpu ? "CPU" : "GPU/accelerator", o.compute_units, o.clock_mhz, o.local_mem >> 10,
            o.global_mem >> 20, o.max_alloc >> 20, o.max_work_group, o.fp16 ? "yes" : "no",
            o.fp64 ? "yes" : "no");
    fprintf(f, "     %s, driver %s\n", o.version, o.driver);
}

int bench_list_devices(FILE *f)
{
    int n = each_device(list_one, f);
    if (!n) {
        fprintf(stderr, "dipole-bench: no OpenCL platform or device found\n");
        return BENCH_EXIT_NO_DEVICE;
    }
    return 0;
}

struct sel_acc {
    char (*sel)[16];
    int n, cap;
};

static void add_sel(void *user, unsigned p, unsigned d, cl_platform_id plat, cl_device_id dev)
{
    (void)plat, (void)dev;
    struct sel_acc *a = user;
    if (a->n < a->cap)
        snprintf(a->sel[a->n++], 16, "%u:%u", p, d);
}

int bench_all_selectors(char sel[][16], int cap)
{
    struct sel_acc a = {sel, 0, cap};
    each_device(add_sel, &a);
    return a.n;
}

void bench_describe(dipole_ctx *ctx, const char *selector, bench_device *d)
{
    memset(d, 0, sizeof *d);
    cl_device_id dev = dipole_ctx_device(ctx);
    cl_platform_id plat = NULL;
    clGetDeviceInfo(dev, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL);
    fill(plat, dev, d);
    snprintf(d->label, sizeof d->label, "%s", dipole_ctx_device_name(ctx));
    snprintf(d->selector, sizeof d->selector, "%s", selector ? selector : "default");
    cl_command_queue_properties qp = 0;
    if (clGetCommandQueueInfo(dipole_ctx_queue(ctx), CL_QUEUE_PROPERTIES, sizeof qp, &qp, NULL) ==
        CL_SUCCESS)
        d->profiling = (qp & CL_QUEUE_PROFILING_ENABLE) != 0;
}
