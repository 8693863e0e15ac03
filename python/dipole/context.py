"""Contexts (an opened device) and the list of OpenCL devices."""

import ctypes
import threading
from collections import namedtuple

from . import _lib
from ._lib import cl, lib
from .errors import Error, error_for


def status_name(status):
    return lib.dipole_status_string(status).decode()


def check(status, ctx_handle=None):
    """Raises the dipole.Error subclass of a failed status with the library's message."""
    if status == 0:
        return
    raw = lib.dipole_ctx_last_error(ctx_handle) if ctx_handle else lib.dipole_thread_last_error()
    raise error_for(status, (raw or b"").decode(errors="replace"), status_name(status))


def _cl_check(err, call):
    if err != _lib.CL_SUCCESS:
        raise error_for(err, f"{call} failed", status_name(err))


Device = namedtuple("Device", "selector platform name type compute_units global_mem")
Device.__doc__ = """One OpenCL device: selector is the library's "P:D" selector for it."""


def _info_str(fn, handle, what):
    size = ctypes.c_size_t()
    if fn(handle, what, 0, None, ctypes.byref(size)) != 0:
        return ""
    buf = ctypes.create_string_buffer(size.value)
    fn(handle, what, size.value, buf, None)
    return buf.value.decode(errors="replace").strip()


def _info_int(handle, what, ctype):
    value = ctype()
    _cl_check(cl.clGetDeviceInfo(handle, what, ctypes.sizeof(value), ctypes.byref(value), None),
              "clGetDeviceInfo")
    return value.value


def devices():
    """Every device of every OpenCL platform, in the order the "P:D" selectors count them;
    [] when no platform is installed."""
    n = _lib.cl_uint()
    err = cl.clGetPlatformIDs(0, None, ctypes.byref(n))
    if err == _lib.CL_PLATFORM_NOT_FOUND_KHR or n.value == 0:
        return []
    _cl_check(err, "clGetPlatformIDs")
    plats = (ctypes.c_void_p * n.value)()
    _cl_check(cl.clGetPlatformIDs(n.value, plats, None), "clGetPlatformIDs")
    found = []
    for p, plat in enumerate(plats):
        pname = _info_str(cl.clGetPlatformInfo, plat, _lib.CL_PLATFORM_NAME)
        nd = _lib.cl_uint()
        if cl.clGetDeviceIDs(plat, _lib.CL_DEVICE_TYPE_ALL, 0, None, ctypes.byref(nd)) != 0:
            continue
        devs = (ctypes.c_void_p * nd.value)()
        _cl_check(cl.clGetDeviceIDs(plat, _lib.CL_DEVICE_TYPE_ALL, nd.value, devs, None),
                  "clGetDeviceIDs")
        for d, dev in enumerate(devs):
            kind = _info_int(dev, _lib.CL_DEVICE_TYPE, _lib.cl_ulong)
            names = [v for bit, v in _lib.DEVICE_TYPES.items() if kind & bit]
            found.append(Device(f"{p}:{d}", pname, _info_str(cl.clGetDeviceInfo, dev,
                                                             _lib.CL_DEVICE_NAME),
                                "/".join(names) or "unknown",
                                _info_int(dev, _lib.CL_DEVICE_MAX_COMPUTE_UNITS, _lib.cl_uint),
                                _info_int(dev, _lib.CL_DEVICE_GLOBAL_MEM_SIZE, _lib.cl_ulong)))
    return found


class Context:
    """An opened device. device: None (env DIPOLE_DEVICE, else the GPU with the most compute
    units, else any device), "P:D", "gpu", "cpu", "accelerator", or a substring of a platform
    or device name; see dipole.devices(). Safe to share between threads."""

    def __init__(self, device=None):
        handle = ctypes.c_void_p()
        sel = device.encode() if isinstance(device, str) else device
        if sel is not None and not isinstance(sel, bytes):
            raise TypeError(f"device must be a selector string or None, not {type(device)}")
        check(lib.dipole_ctx_create(ctypes.byref(handle), sel))
        self._handle = handle.value
        self._destroy = lib.dipole_ctx_destroy  # module globals may be gone when __del__ runs
        dev = lib.dipole_ctx_device(self._handle)
        # Whether arrays can be handed to OpenCL in place (see _buffers.py).
        self.host_unified = bool(_info_int(dev, _lib.CL_DEVICE_HOST_UNIFIED_MEMORY, _lib.cl_bool))
        self.base_align = max(1, _info_int(dev, _lib.CL_DEVICE_MEM_BASE_ADDR_ALIGN,
                                           _lib.cl_uint) // 8)
        self.queue = lib.dipole_ctx_queue(self._handle)
        self.cl_context = lib.dipole_ctx_cl_context(self._handle)

    @property
    def handle(self):
        if not self._handle:
            raise Error("the context is closed")
        return self._handle

    @property
    def device_name(self):
        """ "platform name / device name" """
        return lib.dipole_ctx_device_name(self.handle).decode(errors="replace")

    @property
    def cache_dir(self):
        return lib.dipole_ctx_cache_dir(self.handle).decode(errors="replace")

    def check(self, status):
        check(status, self.handle)

    def close(self):
        if getattr(self, "_handle", None):
            self._destroy(self._handle)
            self._handle = self.queue = self.cl_context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        return f"dipole.Context({self.device_name!r})" if self._handle else "dipole.Context(closed)"


_default = None
_default_lock = threading.Lock()


def default_context():
    """The context calls use when given none: opened on first use with the default device."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Context()
        return _default
