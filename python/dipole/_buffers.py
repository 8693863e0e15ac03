"""OpenCL buffers over the caller's arrays for one call.

Where the device shares host memory (CL_DEVICE_HOST_UNIFIED_MEMORY: PoCL, integrated GPUs) an
array is handed to OpenCL in place (CL_MEM_USE_HOST_PTR) from the aligned address at or below
it (CL_DEVICE_MEM_BASE_ADDR_ALIGN; PoCL copies a pointer that is not aligned), the gap
skipped by the tensor's element offset; the gap lies in the aligned block that holds the
array's first byte, so in a mapped page, and no kernel touches it. Elsewhere an input's span
is copied and an output read back. The library's host twins do the same (src/host_buffers.c);
this front goes through the device API so that strided views need no copy."""

import ctypes

from . import _lib
from ._lib import cl
from .context import _cl_check

_MIN_BYTES = 64  # clCreateBuffer refuses size 0; an empty tensor still needs a buffer


class CallBuffers:
    """The buffers of one call; release() frees them, finish() brings outputs home."""

    def __init__(self, ctx):
        self.ctx = ctx
        self._mems = []
        self._outputs = []  # (mem, in_place, gap bytes, host address, bytes)

    def _create(self, flags, nbytes, host):
        err = _lib.cl_int()
        mem = cl.clCreateBuffer(self.ctx.cl_context, flags, max(nbytes, _MIN_BYTES), host,
                                ctypes.byref(err))
        if err.value != _lib.CL_SUCCESS:
            return None, err.value
        self._mems.append(mem)
        return mem, 0

    def _place(self, access, ptr, nbytes, item):
        """(mem, element offset, in place) for the array at ptr."""
        if self.ctx.host_unified and nbytes and ptr:
            gap = ptr % self.ctx.base_align
            if (gap % item == 0) if item else gap == 0:
                mem, err = self._create(access | _lib.CL_MEM_USE_HOST_PTR, gap + nbytes,
                                        ptr - gap)
                if mem:
                    return mem, gap // item if item else 0, True
        flags = access | (_lib.CL_MEM_COPY_HOST_PTR if access == _lib.CL_MEM_READ_ONLY and
                          nbytes else 0)
        mem, err = self._create(flags, nbytes, ptr if flags & _lib.CL_MEM_COPY_HOST_PTR else None)
        _cl_check(err, f"clCreateBuffer({nbytes} bytes)")
        return mem, 0, False

    def tensor(self, v, output=False):
        """The dipole_tensor of View v ([batch, seq, heads, head_dim], head_dim contiguous)."""
        nbytes = v.span * v.itemsize
        access = _lib.CL_MEM_READ_WRITE if output else _lib.CL_MEM_READ_ONLY
        mem, offset, in_place = self._place(access, v.ptr, nbytes, v.itemsize)
        if output:
            self._outputs.append((mem, in_place, offset * v.itemsize, v.ptr, nbytes))
        b, s, h, _ = v.strides
        return _lib.Tensor(mem, offset, b, s, h)

    def bias(self, v):
        """The dipole_bias of View v (bias_view: [batch, heads, rows, keys], keys contiguous)
        for a device call: its buffer and element offset, strides as they are."""
        mem, offset, _ = self._place(_lib.CL_MEM_READ_ONLY, v.ptr, v.span * v.itemsize,
                                     v.itemsize)
        b, h, r, _ = v.strides
        return _lib.Bias(mem, None, v.dtype, offset, b, h, r)

    def plain(self, ptr, nbytes, output=False):
        """A buffer the kernels take without an offset (lse, pole-weight gradients)."""
        access = _lib.CL_MEM_READ_WRITE if output else _lib.CL_MEM_READ_ONLY
        mem, _, in_place = self._place(access, ptr, nbytes, 0)
        if output:
            self._outputs.append((mem, in_place, 0, ptr, nbytes))
        return mem

    def finish(self):
        """Blocks until every output is in its array: a map and unmap for one in place (a read
        into the same pointer is undefined for USE_HOST_PTR), else a read."""
        q = self.ctx.queue
        for mem, in_place, gap, ptr, nbytes in self._outputs:
            if not nbytes:
                continue
            if in_place:
                err = _lib.cl_int()
                p = cl.clEnqueueMapBuffer(q, mem, _lib.CL_TRUE, _lib.CL_MAP_READ, gap, nbytes, 0,
                                          None, None, ctypes.byref(err))
                _cl_check(err.value, "clEnqueueMapBuffer")
                _cl_check(cl.clEnqueueUnmapMemObject(q, mem, p, 0, None, None),
                          "clEnqueueUnmapMemObject")
            else:
                _cl_check(cl.clEnqueueReadBuffer(q, mem, _lib.CL_TRUE, 0, nbytes, ptr, 0, None,
                                                 None), "clEnqueueReadBuffer")
        _cl_check(cl.clFinish(q), "clFinish")

    def release(self):
        for mem in self._mems:
            cl.clReleaseMemObject(mem)
        self._mems = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            cl.clFinish(self.ctx.queue)  # nothing of a failed call may still use the arrays
        self.release()
