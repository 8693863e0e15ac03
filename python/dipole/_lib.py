"""The C library and the OpenCL loader, through ctypes: prototypes and struct mirrors.

The package carries its own libdipole (installed beside this file by `pip install .`);
DIPOLE_LIBRARY names another one (the tests point it at a build directory)."""

import ctypes
import ctypes.util
import glob
import os

c_int, c_float, c_size_t, c_void_p, c_char_p = (
    ctypes.c_int, ctypes.c_float, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p)
cl_int = ctypes.c_int32
cl_uint = ctypes.c_uint32
cl_ulong = ctypes.c_uint64
cl_bool = cl_uint
cl_mem = c_void_p
# Room behind the descriptor's known fields: dipole_attn_desc_default writes every field the
# library has, and a newer library may have more than this mirror names.
_DESC_SPARE = 512


class Bias(ctypes.Structure):
    """dipole_bias: an additive score bias, element (b, h, i, j) at offset + b stride_batch +
    h stride_head + i stride_row + j (elements; a stride of 0 broadcasts)."""
    _fields_ = [("buffer", cl_mem), ("host", c_void_p), ("dtype", c_int), ("offset", c_size_t),
                ("stride_batch", c_size_t), ("stride_head", c_size_t),
                ("stride_row", c_size_t)]


class AttnDesc(ctypes.Structure):
    """dipole_attn_desc, fields in the header's order."""
    _fields_ = [
        ("variant", c_int), ("batch", c_int), ("heads_q", c_int), ("heads_kv", c_int),
        ("seq_q", c_int), ("seq_k", c_int), ("head_dim", c_int), ("scale", c_float),
        ("causal", c_int), ("window_left", c_int), ("window_right", c_int),
        ("key_lengths", ctypes.POINTER(c_int)),
        ("pos_weight", ctypes.POINTER(c_float)), ("neg_weight", ctypes.POINTER(c_float)),
        ("path", c_int), ("dtype", c_int),
        ("cu_seqlens_q", ctypes.POINTER(c_int)), ("cu_seqlens_k", ctypes.POINTER(c_int)),
        ("alibi_slopes", ctypes.POINTER(c_float)), ("softcap", c_float),
        ("bias", ctypes.POINTER(Bias)), ("head_dim_v", c_int),
        ("_spare", ctypes.c_char * _DESC_SPARE),
    ]


class Tensor(ctypes.Structure):
    """dipole_tensor: a cl_mem and an element offset and (batch, seq, head) strides."""
    _fields_ = [("buffer", cl_mem), ("offset", c_size_t), ("stride_batch", c_size_t),
                ("stride_seq", c_size_t), ("stride_head", c_size_t)]


def _find_dipole():
    env = os.environ.get("DIPOLE_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for pattern in ("libdipole.so", "libdipole.so.*", "libdipole.dylib", "dipole.dll"):
        found = sorted(glob.glob(os.path.join(here, pattern)))
        if found:
            return found[0]
    return ctypes.util.find_library("dipole")


def _find_opencl():
    for name in ("libOpenCL.so.1", ctypes.util.find_library("OpenCL"), "OpenCL.dll"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    raise OSError("dipole: the OpenCL ICD loader (libOpenCL.so.1) was not found")


def _load():
    path = _find_dipole()
    if not path:
        raise OSError("dipole: libdipole was not found beside the package; "
                      "set DIPOLE_LIBRARY to its path")
    return ctypes.CDLL(path), _find_opencl()


lib, cl = _load()


def _proto(f, res, *args):
    f.restype, f.argtypes = res, list(args)


P = ctypes.POINTER
_proto(lib.dipole_status_string, c_char_p, c_int)
_proto(lib.dipole_version, c_char_p)
_proto(lib.dipole_attn_desc_default, None, P(AttnDesc))
_proto(lib.dipole_lse_count, c_int, c_int)
_proto(lib.dipole_ctx_create, c_int, P(c_void_p), c_char_p)
_proto(lib.dipole_ctx_destroy, None, c_void_p)
_proto(lib.dipole_ctx_last_error, c_char_p, c_void_p)
_proto(lib.dipole_thread_last_error, c_char_p)
_proto(lib.dipole_ctx_cl_context, c_void_p, c_void_p)
_proto(lib.dipole_ctx_queue, c_void_p, c_void_p)
_proto(lib.dipole_ctx_device, c_void_p, c_void_p)
_proto(lib.dipole_ctx_device_name, c_char_p, c_void_p)
_proto(lib.dipole_ctx_cache_dir, c_char_p, c_void_p)
_proto(lib.dipole_attention, c_int, c_void_p, P(AttnDesc), P(Tensor), P(Tensor), P(Tensor),
       P(Tensor), P(Tensor), cl_mem, c_void_p)
_proto(lib.dipole_reference_lse, c_int, P(AttnDesc), c_void_p, c_void_p, c_void_p, c_void_p,
       c_void_p, c_void_p)
_proto(lib.dipole_reference_backward, c_int, P(AttnDesc), c_void_p, c_void_p, c_void_p,
       c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)
_proto(lib.dipole_attention_backward, c_int, c_void_p, P(AttnDesc), P(Tensor), P(Tensor),
       P(Tensor), P(Tensor), P(Tensor), P(Tensor), cl_mem, P(Tensor), P(Tensor), P(Tensor),
       P(Tensor), cl_mem, cl_mem, c_void_p)

_proto(cl.clGetPlatformIDs, cl_int, cl_uint, P(c_void_p), P(cl_uint))
_proto(cl.clGetPlatformInfo, cl_int, c_void_p, cl_uint, c_size_t, c_void_p, P(c_size_t))
_proto(cl.clGetDeviceIDs, cl_int, c_void_p, cl_ulong, cl_uint, P(c_void_p), P(cl_uint))
_proto(cl.clGetDeviceInfo, cl_int, c_void_p, cl_uint, c_size_t, c_void_p, P(c_size_t))
_proto(cl.clCreateBuffer, cl_mem, c_void_p, cl_ulong, c_size_t, c_void_p, P(cl_int))
_proto(cl.clReleaseMemObject, cl_int, cl_mem)
_proto(cl.clEnqueueReadBuffer, cl_int, c_void_p, cl_mem, cl_uint, c_size_t, c_size_t, c_void_p,
       cl_uint, c_void_p, c_void_p)
_proto(cl.clEnqueueMapBuffer, c_void_p, c_void_p, cl_mem, cl_uint, cl_ulong, c_size_t, c_size_t,
       cl_uint, c_void_p, c_void_p, P(cl_int))
_proto(cl.clEnqueueUnmapMemObject, cl_int, c_void_p, cl_mem, c_void_p, cl_uint, c_void_p,
       c_void_p)
_proto(cl.clFinish, cl_int, c_void_p)

# The OpenCL constants used here (CL/cl.h).
CL_SUCCESS = 0
CL_DEVICE_NOT_FOUND = -1
CL_PLATFORM_NOT_FOUND_KHR = -1001
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
CL_DEVICE_TYPE = 0x1000
CL_DEVICE_MAX_COMPUTE_UNITS = 0x1002
CL_DEVICE_GLOBAL_MEM_SIZE = 0x101F
CL_DEVICE_MEM_BASE_ADDR_ALIGN = 0x1019
CL_DEVICE_HOST_UNIFIED_MEMORY = 0x1035
CL_DEVICE_NAME = 0x102B
CL_PLATFORM_NAME = 0x0902
CL_MEM_READ_WRITE = 1 << 0
CL_MEM_READ_ONLY = 1 << 2
CL_MEM_USE_HOST_PTR = 1 << 3
CL_MEM_COPY_HOST_PTR = 1 << 5
CL_MAP_READ = 1 << 0
CL_TRUE = 1
DEVICE_TYPES = {1 << 0: "default", 1 << 1: "cpu", 1 << 2: "gpu", 1 << 3: "accelerator",
                1 << 4: "custom"}
_proto(lib.dipole_attn_desc_validate, c_int, P(AttnDesc))
