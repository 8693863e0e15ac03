/* Names for statuses, variants and paths. */
#include "internal.h"

#define DP_CL_CASE(code) \
    case code:           \
        return #code

static const char *cl_error_name(cl_int code)
{
    switch (code) {
        DP_CL_CASE(CL_DEVICE_NOT_FOUND);
        DP_CL_CASE(CL_DEVICE_NOT_AVAILABLE);
        DP_CL_CASE(CL_COMPILER_NOT_AVAILABLE);
        DP_CL_CASE(CL_MEM_OBJECT_ALLOCATION_FAILURE);
        DP_CL_CASE(CL_OUT_OF_RESOURCES);
        DP_CL_CASE(CL_OUT_OF_HOST_MEMORY);
        DP_CL_CASE(CL_PROFILING_INFO_NOT_AVAILABLE);
        DP_CL_CASE(CL_MEM_COPY_OVERLAP);
        DP_CL_CASE(CL_IMAGE_FORMAT_MISMATCH);
        DP_CL_CASE(CL_IMAGE_FORMAT_NOT_SUPPORTED);
        DP_CL_CASE(CL_BUILD_PROGRAM_FAILURE);
        DP_CL_CASE(CL_MAP_FAILURE);
        DP_CL_CASE(CL_MISALIGNED_SUB_BUFFER_OFFSET);
        DP_CL_CASE(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
        DP_CL_CASE(CL_COMPILE_PROGRAM_FAILURE);
        DP_CL_CASE(CL_LINKER_NOT_AVAILABLE);
        DP_CL_CASE(CL_LINK_PROGRAM_FAILURE);
        DP_CL_CASE(CL_DEVICE_PARTITION_FAILED);
        DP_CL_CASE(CL_KERNEL_ARG_INFO_NOT_AVAILABLE);
        DP_CL_CASE(CL_INVALID_VALUE);
        DP_CL_CASE(CL_INVALID_DEVICE_TYPE);
        DP_CL_CASE(CL_INVALID_PLATFORM);
        DP_CL_CASE(CL_INVALID_DEVICE);
        DP_CL_CASE(CL_INVALID_CONTEXT);
        DP_CL_CASE(CL_INVALID_QUEUE_PROPERTIES);
        DP_CL_CASE(CL_INVALID_COMMAND_QUEUE);
        DP_CL_CASE(CL_INVALID_HOST_PTR);
        DP_CL_CASE(CL_INVALID_MEM_OBJECT);
        DP_CL_CASE(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR);
        DP_CL_CASE(CL_INVALID_IMAGE_SIZE);
        DP_CL_CASE(CL_INVALID_SAMPLER);
        DP_CL_CASE(CL_INVALID_BINARY);
        DP_CL_CASE(CL_INVALID_BUILD_OPTIONS);
        DP_CL_CASE(CL_INVALID_PROGRAM);
        DP_CL_CASE(CL_INVALID_PROGRAM_EXECUTABLE);
        DP_CL_CASE(CL_INVALID_KERNEL_NAME);
        DP_CL_CASE(CL_INVALID_KERNEL_DEFINITION);
        DP_CL_CASE(CL_INVALID_KERNEL);
        DP_CL_CASE(CL_INVALID_ARG_INDEX);
        DP_CL_CASE(CL_INVALID_ARG_VALUE);
        DP_CL_CASE(CL_INVALID_ARG_SIZE);
        DP_CL_CASE(CL_INVALID_KERNEL_ARGS);
        DP_CL_CASE(CL_INVALID_WORK_DIMENSION);
        DP_CL_CASE(CL_INVALID_WORK_GROUP_SIZE);
        DP_CL_CASE(CL_INVALID_WORK_ITEM_SIZE);
        DP_CL_CASE(CL_INVALID_GLOBAL_OFFSET);
        DP_CL_CASE(CL_INVALID_EVENT_WAIT_LIST);
        DP_CL_CASE(CL_INVALID_EVENT);
        DP_CL_CASE(CL_INVALID_OPERATION);
        DP_CL_CASE(CL_INVALID_GL_OBJECT);
        DP_CL_CASE(CL_INVALID_BUFFER_SIZE);
        DP_CL_CASE(CL_INVALID_MIP_LEVEL);
        DP_CL_CASE(CL_INVALID_GLOBAL_WORK_SIZE);
        DP_CL_CASE(CL_INVALID_PROPERTY);
        DP_CL_CASE(CL_INVALID_IMAGE_DESCRIPTOR);
        DP_CL_CASE(CL_INVALID_COMPILER_OPTIONS);
        DP_CL_CASE(CL_INVALID_LINKER_OPTIONS);
        DP_CL_CASE(CL_INVALID_DEVICE_PARTITION_COUNT);
    default:
        return NULL;
    }
}

const char *dipole_status_string(dipole_status status)
{
    switch (status) {
    case DIPOLE_SUCCESS:
        return "DIPOLE_SUCCESS";
    case DIPOLE_ERR_INVALID_ARG:
        return "DIPOLE_ERR_INVALID_ARG";
    case DIPOLE_ERR_NO_PLATFORM:
        return "DIPOLE_ERR_NO_PLATFORM";
    case DIPOLE_ERR_NO_DEVICE:
        return "DIPOLE_ERR_NO_DEVICE";
    case DIPOLE_ERR_BAD_SELECTOR:
        return "DIPOLE_ERR_BAD_SELECTOR";
    case DIPOLE_ERR_UNSUPPORTED:
        return "DIPOLE_ERR_UNSUPPORTED";
    case DIPOLE_ERR_BUILD:
        return "DIPOLE_ERR_BUILD";
    case DIPOLE_ERR_OUT_OF_HOST_MEMORY:
        return "DIPOLE_ERR_OUT_OF_HOST_MEMORY";
    case DIPOLE_ERR_BUFFER_RANGE:
        return "DIPOLE_ERR_BUFFER_RANGE";
    case DIPOLE_ERR_CLBLAST:
        return "DIPOLE_ERR_CLBLAST";
    case DIPOLE_ERR_KERNEL_SOURCE:
        return "DIPOLE_ERR_KERNEL_SOURCE";
    case DIPOLE_ERR_INTERNAL:
        return "DIPOLE_ERR_INTERNAL";
    }
    const char *cl = cl_error_name((cl_int)status);
    return cl ? cl : "unknown status";
}

const char *dipole_version(void)
{
#define DP_STR2(x) #x
#define DP_STR(x) DP_STR2(x)
    return DP_STR(DIPOLE_VERSION_MAJOR) "." DP_STR(DIPOLE_VERSION_MINOR) "." DP_STR(
        DIPOLE_VERSION_PATCH);
}

const char *dipole_variant_name(dipole_variant variant)
{
    switch (variant) {
    case DIPOLE_SOFTMAX:
        return "softmax";
    case DIPOLE_SIGNEXP:
        return "signexp";
    case DIPOLE_ROUTED:
        return "routed";
    case DIPOLE_TWO_POLE:
        return "two_pole";
    case DIPOLE_DIFF:
        return "diff";
    }
    return "unknown";
}

const char *dipole_path_name(dipole_path path)
{
    switch (path) {
    case DIPOLE_PATH_AUTO:
        return "auto";
    case DIPOLE_PATH_TILED:
        return "tiled";
    case DIPOLE_PATH_GEMM:
        return "gemm";
    }
    return "unknown";
}

int dipole_lse_count(dipole_variant variant)
{
    return variant == DIPOLE_TWO_POLE || variant == DIPOLE_DIFF ? 2 : 1;
}
