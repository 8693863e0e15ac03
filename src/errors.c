/* Failure messages: kept on the context (for dipole_ctx_last_error) and on the calling thread
 * (for failures that have no context yet). The library never prints unless asked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DP_THREAD_MSG 8192
static _Thread_local char thread_msg[DP_THREAD_MSG];

const char *dipole_thread_last_error(void)
{
    return thread_msg;
}

const char *dipole_ctx_last_error(const dipole_ctx *ctx)
{
    if (!ctx)
        return "ctx is NULL";
    return ctx->last_error ? ctx->last_error : "";
}

static void ctx_set(dipole_ctx *ctx, const char *msg)
{
    size_t n = strlen(msg) + 1;
    if (n > ctx->last_error_cap) {
        char *grown = realloc(ctx->last_error, n);
        if (!grown) /* keep what fits rather than lose the message */
            n = ctx->last_error_cap;
        else {
            ctx->last_error = grown;
            ctx->last_error_cap = n;
        }
    }
    if (ctx->last_error_cap) {
        memcpy(ctx->last_error, msg, n - 1);
        ctx->last_error[n - 1] = '\0';
    }
}

dipole_status dp_fail(dipole_ctx *ctx, dipole_status status, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(thread_msg, sizeof thread_msg, "%s", msg);
    if (ctx) {
        ctx_set(ctx, msg);
        dp_log(ctx, "error: %s", msg);
    }
    return status;
}

dipole_status dp_cl_fail(dipole_ctx *ctx, cl_int err, const char *call)
{
    return dp_fail(ctx, (dipole_status)err, "%s failed: %s (%d)", call,
                   dipole_status_string((dipole_status)err), (int)err);
}

void dp_append_error(dipole_ctx *ctx, const char *text)
{
    size_t have = strlen(thread_msg);
    snprintf(thread_msg + have, sizeof thread_msg - have, "%s", text);
    if (!ctx)
        return;
    size_t cur = ctx->last_error ? strlen(ctx->last_error) : 0;
    size_t need = cur + strlen(text) + 1;
    if (need > ctx->last_error_cap) {
        char *grown = realloc(ctx->last_error, need);
        if (!grown)
            return;
        ctx->last_error = grown;
        ctx->last_error_cap = need;
        if (cur == 0)
            ctx->last_error[0] = '\0';
    }
    strcat(ctx->last_error, text);
}

void dp_clear_error(dipole_ctx *ctx)
{
    if (ctx && ctx->last_error)
        ctx->last_error[0] = '\0';
}

void dp_log(dipole_ctx *ctx, const char *fmt, ...)
{
    if (!ctx || !ctx->log_fn)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx->log_fn(ctx->log_user, msg);
}
