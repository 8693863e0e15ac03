/* Finding a device from a selector, and reading the properties the runtime plans with. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef __APPLE__
#include <CL/cl_ext.h>
#endif

#include "internal.h"

#ifndef CL_PLATFORM_NOT_FOUND_KHR
#define CL_PLATFORM_NOT_FOUND_KHR -1001
#endif

#define DP_MAX_PLATFORMS 16
#define DP_MAX_DEVICES 64

typedef struct dp_candidate {
    cl_platform_id platform;
    cl_device_id device;
    unsigned pi, di;
    cl_device_type type;
    cl_uint units;
    char pname[256];
    char dname[256];
} dp_candidate;

static bool contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return true;
    }
    return n == 0;
}

/* Fills cands with every device of every platform; returns the count or a negative status. */
static int enumerate(dp_candidate *cands, int cap)
{
    cl_platform_id plats[DP_MAX_PLATFORMS];
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(DP_MAX_PLATFORMS, plats, &np);
    if (err == CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && np == 0)) {
        dp_fail(NULL, DIPOLE_ERR_NO_PLATFORM,
                "no OpenCL platform found (is an ICD such as pocl-opencl-icd installed?)");
        return DIPOLE_ERR_NO_PLATFORM;
    }
    if (err != CL_SUCCESS)
        return dp_cl_fail(NULL, err, "clGetPlatformIDs");
    if (np > DP_MAX_PLATFORMS)
        np = DP_MAX_PLATFORMS;
    int count = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_device_id devs[DP_MAX_DEVICES];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, DP_MAX_DEVICES, devs, &nd) != CL_SUCCESS)
            continue; /* a platform without devices is not an error */
        if (nd > DP_MAX_DEVICES)
            nd = DP_MAX_DEVICES;
        for (cl_uint d = 0; d < nd && count < cap; d++) {
            dp_candidate *c = &cands[count++];
            memset(c, 0, sizeof *c);
            c->platform = plats[p];
            c->device = devs[d];
            c->pi = p;
            c->di = d;
            clGetDeviceInfo(devs[d], CL_DEVICE_TYPE, sizeof c->type, &c->type, NULL);
            clGetDeviceInfo(devs[d], CL_DEVICE_MAX_COMPUTE_UNITS, sizeof c->units, &c->units, NULL);
            clGetPlatformInfo(plats[p], CL_PLATFORM_NAME, sizeof c->pname - 1, c->pname, NULL);
            clGetDeviceInfo(devs[d], CL_DEVICE_NAME, sizeof c->dname - 1, c->dname, NULL);
        }
    }
    if (count == 0) {
        dp_fail(NULL, DIPOLE_ERR_NO_DEVICE, "OpenCL platforms found, but none has a device");
        return DIPOLE_ERR_NO_DEVICE;
    }
    return count;
}

/* "P:D" -> indices; returns 1 if the selector has that form, 0 if not, -1 if malformed. */
static int parse_indices(const char *sel, unsigned *p, unsigned *d)
{
    if (!isdigit((unsigned char)sel[0]))
        return 0;
    char *end;
    unsigned long pv = strtoul(sel, &end, 10);
    if (*end != ':' || !isdigit((unsigned char)end[1]))
        return -1;
    unsigned long dv = strtoul(end + 1, &end, 10);
    if (*end != '\0' || pv > 1000 || dv > 1000)
        return -1;
    *p = (unsigned)pv;
    *d = (unsigned)dv;
    return 1;
}

dipole_status dp_select_device(const char *selector, cl_platform_id *platform, cl_device_id *device)
{
    dp_candidate cands[DP_MAX_PLATFORMS * 4];
    int n = enumerate(cands, (int)(sizeof cands / sizeof cands[0]));
    if (n < 0)
        return (dipole_status)n;

    if (selector && !*selector)
        selector = NULL;
    int pick = -1;
    if (!selector) {
        /* The GPU with the most compute units, else the first device. */
        for (int i = 0; i < n; i++)
            if ((cands[i].type & CL_DEVICE_TYPE_GPU) &&
                (pick < 0 || cands[i].units > cands[pick].units))
                pick = i;
        if (pick < 0)
            pick = 0;
    } else {
        unsigned pi = 0, di = 0;
        int form = parse_indices(selector, &pi, &di);
        if (form < 0)
            return dp_fail(NULL, DIPOLE_ERR_BAD_SELECTOR,
                           "device selector '%s' is malformed: expected 'P:D' indices, 'gpu', "
                           "'cpu', 'accelerator' or a name substring",
                           selector);
        for (int i = 0; i < n && pick < 0; i++) {
            const dp_candidate *c = &cands[i];
            if (form == 1)
                pick = (c->pi == pi && c->di == di) ? i : -1;
            else if (!strcasecmp(selector, "gpu"))
                pick = (c->type & CL_DEVICE_TYPE_GPU) ? i : -1;
            else if (!strcasecmp(selector, "cpu"))
                pick = (c->type & CL_DEVICE_TYPE_CPU) ? i : -1;
            else if (!strcasecmp(selector, "accelerator"))
                pick = (c->type & CL_DEVICE_TYPE_ACCELERATOR) ? i : -1;
            else
                pick = (contains_nocase(c->pname, selector) || contains_nocase(c->dname, selector))
                           ? i
                           : -1;
        }
        if (pick < 0)
            return dp_fail(NULL, DIPOLE_ERR_NO_DEVICE,
                           "device selector '%s' matches none of the %d OpenCL device(s)",
                           selector, n);
    }
    *platform = cands[pick].platform;
    *device = cands[pick].device;
    return DIPOLE_SUCCESS;
}

static void info_str(cl_device_id dev, cl_device_info what, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (clGetDeviceInfo(dev, what, cap - 1, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[cap - 1] = '\0';
}

dipole_status dp_query_props(cl_platform_id platform, cl_device_id device, dp_device_props *p)
{
    memset(p, 0, sizeof *p);
    cl_int err = clGetDeviceInfo(device, CL_DEVICE_TYPE, sizeof p->type, &p->type, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(NULL, err, "clGetDeviceInfo(CL_DEVICE_TYPE)");
    info_str(device, CL_DEVICE_NAME, p->name, sizeof p->name);
    info_str(device, CL_DEVICE_VENDOR, p->vendor, sizeof p->vendor);
    info_str(device, CL_DRIVER_VERSION, p->driver_version, sizeof p->driver_version);
    info_str(device, CL_DEVICE_VERSION, p->device_version, sizeof p->device_version);
    if (platform) {
        clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof p->platform_name - 1, p->platform_name, NULL);
        clGetPlatformInfo(platform, CL_PLATFORM_VERSION, sizeof p->platform_version - 1,
                          p->platform_version, NULL);
    }
    cl_device_local_mem_type lmt = CL_LOCAL;
    cl_bool unified = CL_FALSE;
    cl_uint align_bits = 0;
    struct {
        cl_device_info what;
        void *dst;
        size_t size;
    } q[] = {
        {CL_DEVICE_MAX_COMPUTE_UNITS, &p->compute_units, sizeof p->compute_units},
        {CL_DEVICE_LOCAL_MEM_SIZE, &p->local_mem, sizeof p->local_mem},
        {CL_DEVICE_GLOBAL_MEM_SIZE, &p->global_mem, sizeof p->global_mem},
        {CL_DEVICE_MAX_MEM_ALLOC_SIZE, &p->max_alloc, sizeof p->max_alloc},
        {CL_DEVICE_MAX_WORK_GROUP_SIZE, &p->max_work_group, sizeof p->max_work_group},
        {CL_DEVICE_LOCAL_MEM_TYPE, &lmt, sizeof lmt},
        {CL_DEVICE_HOST_UNIFIED_MEMORY, &unified, sizeof unified},
        {CL_DEVICE_MEM_BASE_ADDR_ALIGN, &align_bits, sizeof align_bits},
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) {
        err = clGetDeviceInfo(device, q[i].what, q[i].size, q[i].dst, NULL);
        if (err != CL_SUCCESS)
            return dp_cl_fail(NULL, err, "clGetDeviceInfo");
    }
    p->local_mem_is_global = lmt == CL_GLOBAL;
    p->host_unified = unified == CL_TRUE;
    p->base_align = align_bits / 8 ? align_bits / 8 : 1;
    return DIPOLE_SUCCESS;
}
