"""numpy arrays and torch CPU tensors as the library sees them: an address, element strides
and a storage type. Layouts the C API takes (any non-negative batch, seq and head strides,
head_dim contiguous) pass as they are; any other layout is copied once into a dense one."""

import sys

import numpy as np

from .errors import InvalidArgError

F32, F16, BF16 = 0, 1, 2
DTYPE_NAMES = {F32: "float32", F16: "float16", BF16: "bfloat16"}
_NUMPY_DTYPES = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}


def _torch():
    """torch if the caller has imported it (dipole never imports it for numpy callers)."""
    return sys.modules.get("torch")


def is_torch(x):
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


class View:
    """An array's address, shape, element strides and dtype code; `obj` keeps it alive."""

    __slots__ = ("obj", "ptr", "shape", "strides", "dtype", "itemsize", "torch")

    def __init__(self, obj, ptr, shape, strides, dtype, itemsize, torch):
        self.obj, self.ptr, self.shape, self.strides = obj, ptr, tuple(shape), tuple(strides)
        self.dtype, self.itemsize, self.torch = dtype, itemsize, torch

    @property
    def span(self):
        """Elements from the first to one past the last that the array touches."""
        if 0 in self.shape:
            return 0
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides))


def _torch_dtypes(t):
    return {t.float32: F32, t.float16: F16, t.bfloat16: BF16}


def view(x, name, ndim=4):
    """The View of x, or InvalidArgError naming x when the library cannot take it."""
    if is_torch(x):
        t = _torch()
        if x.device.type != "cpu":
            raise InvalidArgError(f"{name} is on device {x.device}; dipole takes CPU tensors "
                                  "(its OpenCL device reads host memory)")
        code = _torch_dtypes(t).get(x.dtype)
        if code is None:
            raise InvalidArgError(f"{name} has dtype {x.dtype}; dipole takes torch.float32, "
                                  "torch.float16 or torch.bfloat16")
        if x.dim() != ndim:
            raise InvalidArgError(f"{name} has {x.dim()} dimensions {tuple(x.shape)}, "
                                  f"expected {ndim}")
        x = x.detach()
        if x.is_conj() or x.is_neg() or (x.dim() and x.stride()[-1] != 1 and x.shape[-1] > 1):
            x = x.contiguous()
        return View(x, x.data_ptr(), x.shape, x.stride(), code, x.element_size(), True)
    if isinstance(x, np.ndarray):
        code = _NUMPY_DTYPES.get(x.dtype)
        if code is None:
            raise InvalidArgError(f"{name} has dtype {x.dtype}; dipole takes numpy float32 or "
                                  "float16 arrays")
        if x.ndim != ndim:
            raise InvalidArgError(f"{name} has {x.ndim} dimensions {x.shape}, expected {ndim}")
        item = x.itemsize
        if (any(s < 0 or s % item for s in x.strides)
                or (ndim and x.shape[-1] > 1 and x.strides[-1] != item)):
            x = np.ascontiguousarray(x)
        return View(x, x.ctypes.data, x.shape, [s // item for s in x.strides], code, item, False)
    raise InvalidArgError(f"{name} must be a numpy array or a torch CPU tensor, not "
                          f"{type(x).__module__}.{type(x).__name__}")


def dense_like(like, shape, dtype=None):
    """A new dense array of like's kind (numpy or torch) and dtype code (default like's)."""
    code = like.dtype if dtype is None else dtype
    if like.torch:
        t = _torch()
        dt = {v: k for k, v in _torch_dtypes(t).items()}[code]
        x = t.empty(shape, dtype=dt)
        return View(x, x.data_ptr(), x.shape, x.stride(), code, x.element_size(), True)
    x = np.empty(shape, dtype={F32: np.float32, F16: np.float16}[code])
    return View(x, x.ctypes.data, x.shape, [s // x.itemsize for s in x.strides], code,
                x.itemsize, False)


def host_floats(x, name, n):
    """x (sequence, numpy array or tensor of n numbers) as a contiguous float32 numpy array."""
    return _host_vector(x, name, n, np.float32)


def host_ints(x, name, n=None):
    """x as a contiguous int32 numpy array of n entries (None: any number)."""
    return _host_vector(x, name, n, np.int32)


def _host_vector(x, name, n, dtype):
    if is_torch(x):
        x = x.detach().to("cpu").float().numpy() if dtype == np.float32 else \
            x.detach().to("cpu").numpy()
    a = np.asarray(x)
    if dtype == np.int32 and a.size and not np.issubdtype(a.dtype, np.integer):
        raise InvalidArgError(f"{name} has dtype {a.dtype}; expected integers")
    a = np.ascontiguousarray(a, dtype=dtype).reshape(-1)
    if n is not None and a.size != n:
        raise InvalidArgError(f"{name} has {a.size} entries, expected {n}")
    return a


def bias_view(x, target, dtype):
    """The View of an additive bias x broadcastable to target (B, Hq, Nq, Nk): 4 dimensions,
    element strides with 0 for every broadcast dimension, the key dimension contiguous. Stored
    as dtype (the tensors' storage code) or float32; any other floating dtype (float64, the
    other half type) is converted to float32, a copy."""
    torch = _torch()
    on_torch = is_torch(x)
    if on_torch:
        if x.device.type != "cpu":
            raise InvalidArgError(f"bias is on device {x.device}; dipole takes CPU tensors")
        if not x.is_floating_point():
            raise InvalidArgError(f"bias has dtype {x.dtype}; an additive bias is floating "
                                  "point (-inf excludes a key; a boolean mask is not taken)")
        x = x.detach()
        if _torch_dtypes(torch).get(x.dtype) not in (F32, dtype):
            x = x.float()
        shape = tuple(x.shape)
    else:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise InvalidArgError(f"bias has dtype {x.dtype}; an additive bias is floating "
                                  "point (-inf excludes a key; a boolean mask is not taken)")
        if _NUMPY_DTYPES.get(x.dtype) not in (F32, dtype):
            x = x.astype(np.float32)
        shape = x.shape
    if len(shape) > 4 or any(n not in (1, want) for n, want in
                             zip(shape[::-1], target[::-1])):
        raise InvalidArgError(f"bias has shape {shape}, which does not broadcast to "
                              f"{tuple(target)} (batch, heads_q, seq_q, seq_k)")
    shape = (1,) * (4 - len(shape)) + tuple(shape)
    x = x.reshape(shape)
    if shape[3] != target[3]:  # the key dimension has no stride of its own
        shape = shape[:3] + (target[3],)
        x = x.expand(*shape) if on_torch else np.broadcast_to(x, shape)
    if on_torch:
        if x.stride()[3] != 1 and shape[3] > 1:
            x = x.contiguous()
        strides, code, item, ptr = x.stride(), _torch_dtypes(torch)[x.dtype], \
            x.element_size(), x.data_ptr()
    else:
        item = x.itemsize
        if any(s < 0 or s % item for s in x.strides) or (shape[3] > 1 and
                                                          x.strides[3] != item):
            x = np.ascontiguousarray(x)
        strides, code, ptr = [s // item for s in x.strides], _NUMPY_DTYPES[x.dtype], \
            x.ctypes.data
    strides = [0 if n == 1 else s for n, s in zip(shape, strides)]
    return View(x, ptr, shape, strides, code, item, on_torch)
