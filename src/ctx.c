/* Context lifetime: device, OpenCL context and queue, settings, program cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DP_DEFAULT_WORKSPACE ((size_t)256 << 20)

static void stderr_log(void *user, const char *message)
{
    (void)user;
    fprintf(stderr, "dipole: %s\n", message);
}

/* Properties, label, what the settings ask for. */
static dipole_status ctx_setup(dipole_ctx *ctx)
{
    dipole_status st = dp_query_props(ctx->platform, ctx->device, &ctx->props);
    if (st != DIPOLE_SUCCESS)
        return st;
    cl_command_queue_properties qp = 0;
    cl_int err = clGetCommandQueueInfo(ctx->queue, CL_QUEUE_PROPERTIES, sizeof qp, &qp, NULL);
    if (err != CL_SUCCESS)
        return dp_cl_fail(NULL, err, "clGetCommandQueueInfo(CL_QUEUE_PROPERTIES)");
    if (qp & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG,
                       "queue is out-of-order; dipole enqueues dependent kernels and needs an "
                       "in-order queue");
    ctx->props.profiling = (qp & CL_QUEUE_PROFILING_ENABLE) != 0;
    snprintf(ctx->device_label, sizeof ctx->device_label, "%s / %s", ctx->props.platform_name,
             ctx->props.name);

    ctx->workspace_limit =
        ctx->settings.workspace_limit ? ctx->settings.workspace_limit : DP_DEFAULT_WORKSPACE;
    if (ctx->settings.log)
        ctx->log_fn = stderr_log;
    dp_cache_dir_init(ctx);
    dp_tuned_config_load(ctx);
    return DIPOLE_SUCCESS;
}

/* Shared tail of both constructors: set up, then the context is the caller's (*out), or
 * destroyed. */
static dipole_status ctx_finish(dipole_ctx *ctx, dipole_ctx **out)
{
    dipole_status st = ctx_setup(ctx);
    if (st != DIPOLE_SUCCESS) {
        dipole_ctx_destroy(ctx);
        return st;
    }
    *out = ctx;
    return DIPOLE_SUCCESS;
}

/* A context with its lock and the settings read from the environment, or NULL. */
static dipole_ctx *ctx_alloc(void)
{
    dipole_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    if (!dp_settings_read(&ctx->settings)) {
        free(ctx);
        return NULL;
    }
    if (pthread_mutex_init(&ctx->lock, NULL) != 0) {
        dp_settings_release(&ctx->settings);
        free(ctx);
        return NULL;
    }
    return ctx;
}

dipole_status dipole_ctx_create(dipole_ctx **out, const char *device_selector)
{
    if (!out)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_ctx_create: out is NULL");
    *out = NULL;
    dipole_ctx *ctx = ctx_alloc();
    if (!ctx)
        return dp_fail(NULL, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "dipole_ctx_create: out of memory");
    if (!device_selector || !*device_selector)
        device_selector = ctx->settings.device;
    cl_platform_id platform;
    cl_device_id device;
    dipole_status st = dp_select_device(device_selector, &platform, &device);
    if (st != DIPOLE_SUCCESS)
        goto fail;
    ctx->platform = platform;
    ctx->device = device;
    cl_context_properties cprops[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)platform, 0};
    cl_int err;
    ctx->context = clCreateContext(cprops, 1, &device, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        st = dp_cl_fail(NULL, err, "clCreateContext");
        goto fail;
    }
    /* Profiling costs little and lets dipole-bench time kernels with events. */
    ctx->queue = clCreateCommandQueue(ctx->context, device, CL_QUEUE_PROFILING_ENABLE, &err);
    if (err != CL_SUCCESS) {
        ctx->queue = clCreateCommandQueue(ctx->context, device, 0, &err);
        if (err != CL_SUCCESS) {
            st = dp_cl_fail(NULL, err, "clCreateCommandQueue");
            goto fail;
        }
    }
    return ctx_finish(ctx, out);
fail:
    dipole_ctx_destroy(ctx);
    return st;
}

dipole_status dipole_ctx_create_from_queue(dipole_ctx **out, cl_command_queue queue)
{
    if (out)
        *out = NULL;
    if (!out || !queue)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_ctx_create_from_queue: %s is NULL",
                       !out ? "out" : "queue");
    *out = NULL;
    dipole_ctx *ctx = ctx_alloc();
    if (!ctx)
        return dp_fail(NULL, DIPOLE_ERR_OUT_OF_HOST_MEMORY, "dipole_ctx_create_from_queue: out of memory");
    dipole_status st;
    cl_int err = clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof ctx->context, &ctx->context, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof ctx->device, &ctx->device, NULL);
    if (err == CL_SUCCESS)
        err = clGetDeviceInfo(ctx->device, CL_DEVICE_PLATFORM, sizeof ctx->platform, &ctx->platform, NULL);
    if (err != CL_SUCCESS) {
        ctx->context = NULL;
        st = dp_cl_fail(NULL, err, "clGetCommandQueueInfo");
        goto fail;
    }
    clRetainContext(ctx->context);
    clRetainCommandQueue(queue);
    ctx->queue = queue;
    return ctx_finish(ctx, out);
fail:
    dipole_ctx_destroy(ctx);
    return st;
}

void dipole_ctx_destroy(dipole_ctx *ctx)
{
    if (!ctx)
        return;
    if (ctx->queue) {
        clFinish(ctx->queue);
        clReleaseCommandQueue(ctx->queue);
    }
    dp_programs_release(ctx);
    if (ctx->context)
        clReleaseContext(ctx->context);
    dp_settings_release(&ctx->settings);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx->last_error);
    free(ctx);
}

cl_context dipole_ctx_cl_context(const dipole_ctx *ctx)
{
    return ctx ? ctx->context : NULL;
}

cl_command_queue dipole_ctx_queue(const dipole_ctx *ctx)
{
    return ctx ? ctx->queue : NULL;
}

cl_device_id dipole_ctx_device(const dipole_ctx *ctx)
{
    return ctx ? ctx->device : NULL;
}

const char *dipole_ctx_device_name(const dipole_ctx *ctx)
{
    return ctx ? ctx->device_label : "";
}

const char *dipole_ctx_cache_dir(const dipole_ctx *ctx)
{
    return ctx ? ctx->cache_dir : "";
}

void dipole_ctx_set_log(dipole_ctx *ctx, dipole_log_fn fn, void *user)
{
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->lock);
    ctx->log_fn = fn;
    ctx->log_user = user;
    pthread_mutex_unlock(&ctx->lock);
}

dipole_status dipole_ctx_set_workspace_limit(dipole_ctx *ctx, size_t bytes)
{
    if (!ctx)
        return dp_fail(NULL, DIPOLE_ERR_INVALID_ARG, "dipole_ctx_set_workspace_limit: ctx is NULL");
    pthread_mutex_lock(&ctx->lock);
    dipole_status st = DIPOLE_SUCCESS;
    if (bytes == 0)
        st = dp_fail(ctx, DIPOLE_ERR_INVALID_ARG, "workspace limit must be > 0 bytes");
    else
        ctx->workspace_limit = bytes;
    pthread_mutex_unlock(&ctx->lock);
    return st;
}

size_t dipole_ctx_workspace_limit(const dipole_ctx *ctx)
{
    if (!ctx)
        return 0;
    /* The lock is the context's own state, not the caller's: reading under it is no change. */
    dipole_ctx *mut = (dipole_ctx *)ctx;
    pthread_mutex_lock(&mut->lock);
    const size_t limit = mut->workspace_limit;
    pthread_mutex_unlock(&mut->lock);
    return limit;
}
