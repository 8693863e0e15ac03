#!/usr/bin/env python3
"""Times dipole.attention on numpy arrays (the front hands them to OpenCL in place where the
device shares host memory) against the same call on device buffers made once, best of reps.

    PYTHONPATH=python DIPOLE_LIBRARY=build/libdipole.so python3 tools/time_python.py \\
        [B Hq Hkv Nq Nk d [reps]]        (default 1 32 8 1 8192 128 10)
"""
import ctypes
import sys
import time

import numpy as np

import dipole
from dipole import _arrays, _buffers, _core, _lib


def main(argv):
    B, Hq, Hkv, Nq, Nk, D = (int(a) for a in (argv[1:7] or [1, 32, 8, 1, 8192, 128]))
    reps = int(argv[7]) if len(argv) > 7 else 10
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, Nq, Hq, D), dtype=np.float32)
    k, v = (rng.standard_normal((B, Nk, Hkv, D), dtype=np.float32) for _ in range(2))
    causal = Nq == Nk
    ctx = dipole.default_context()
    views = [_arrays.view(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"))]
    p = _core.Problem(*views, None, "softmax", causal, (-1, -1), None, None, None, None)
    out = _arrays.dense_like(views[0], q.shape)
    dev = ctx.host_unified
    ctx.host_unified = False  # device buffers: copies made once, outside the timing
    bufs = _buffers.CallBuffers(ctx)
    t = [bufs.tensor(x) for x in views] + [bufs.tensor(out, output=True)]
    ctx.host_unified = dev
    host_ms, dev_ms = [], []
    for r in range(reps + 1):  # the first warms up (kernel builds)
        t0 = time.perf_counter()
        dipole.attention(q, k, v, causal=causal)
        t1 = time.perf_counter()
        ctx.check(_lib.lib.dipole_attention(ctx.handle, ctypes.byref(p.desc), *(
            ctypes.byref(x) for x in t[:3]), None, ctypes.byref(t[3]), None, None))
        _lib.cl.clFinish(ctx.queue)
        t2 = time.perf_counter()
        if r:
            host_ms.append(1e3 * (t1 - t0))
            dev_ms.append(1e3 * (t2 - t1))
    bufs.release()
    print(f"python B={B} Hq={Hq} Hkv={Hkv} Nq={Nq} Nk={Nk} d={D} causal={int(causal)}: "
          f"numpy {min(host_ms):.2f} ms, device buffers {min(dev_ms):.2f} ms, ratio "
          f"{min(host_ms) / min(dev_ms):.3f}")


if __name__ == "__main__":
    main(sys.argv)
