"""The forward and backward calls on numpy arrays and torch CPU tensors (device API, the
caller's memory in place where the device allows: _buffers.py)."""

import ctypes
import enum

import numpy as np

from . import _arrays, _lib
from ._buffers import CallBuffers
from .context import check, default_context
from .errors import InvalidArgError


class Variant(enum.IntEnum):
    """dipole_variant. With s = scale * q.k over the visible keys, a row's output is
    SOFTMAX sum softmax(s) v; SIGNEXP sum sign(s) softmax(|s|) v; ROUTED
    sum softmax(|s|) (s > 0 ? v : v2); TWO_POLE a_h sum softmax(s) v + b_h sum softmax(-s) v2;
    DIFF (differential attention) a_h sum softmax(s0) v + b_h sum softmax(s1) v, where pole p
    scores with q head 2h + p and k head 2hk + p (q and k hold two heads a head)."""
    SOFTMAX = 0
    SIGNEXP = 1
    ROUTED = 2
    TWO_POLE = 3
    DIFF = 4

    @property
    def reads_v2(self):
        return self in (Variant.ROUTED, Variant.TWO_POLE)

    @property
    def poles(self):
        return 2 if self in (Variant.TWO_POLE, Variant.DIFF) else 1

    @property
    def weighted(self):
        """Whether pos_weight, neg_weight (alpha_h, beta_h) weigh the poles."""
        return self in (Variant.TWO_POLE, Variant.DIFF)

    @property
    def score_maps(self):
        """Heads of q and k per query and key head: 2 for DIFF (one per pole), else 1."""
        return 2 if self == Variant.DIFF else 1


def variant_of(variant):
    if isinstance(variant, Variant):
        return variant
    if isinstance(variant, str):
        key = variant.strip().upper().replace("-", "_")
        if key in Variant.__members__:
            return Variant[key]
    elif isinstance(variant, int) and variant in Variant._value2member_map_:
        return Variant(variant)
    raise InvalidArgError(f"unknown variant {variant!r}; expected one of "
                          f"{', '.join(m.lower() for m in Variant.__members__)}")


def packed(cu_seqlens_q, cu_seqlens_k):
    return cu_seqlens_q is not None or cu_seqlens_k is not None


def _batched(x, is_packed):
    """A packed call's [total, H, d] tensor as the library's one batch [1, total, H, d] (a view;
    other ranks pass unchanged, for _arrays.view to judge)."""
    if not is_packed or x is None or getattr(x, "ndim", None) != 3:
        return x
    return x.unsqueeze(0) if _arrays.is_torch(x) else x[None]


def _unbatched(x, like):
    """An output of the library's [1, total, H, d] shape as the caller's like ([total, H, d]
    or 4 dimensions)."""
    if x is None or getattr(like, "ndim", 4) != 3:
        return x
    return x[0]


class Problem:
    """One call's descriptor with the host arrays it points to (kept alive here). Packed
    (cu_seqlens_q/k given), the tensors are one batch of the packed rows."""

    def __init__(self, q, k, v, v2, variant, causal, window, scale, key_lengths, pos_weight,
                 neg_weight, *, cu_seqlens_q=None, cu_seqlens_k=None, alibi_slopes=None,
                 softcap=0.0, bias=None):
        self.variant = variant = variant_of(variant)
        self.packed = packed(cu_seqlens_q, cu_seqlens_k)
        if q.torch != k.torch or q.torch != v.torch or (v2 and v2.torch != q.torch):
            raise InvalidArgError("q, k, v and v2 must all be numpy arrays or all torch tensors")
        for name, t in (("k", k), ("v", v), ("v2", v2)):
            if t and t.dtype != q.dtype:
                raise InvalidArgError(f"{name} is {_arrays.DTYPE_NAMES[t.dtype]} but q is "
                                      f"{_arrays.DTYPE_NAMES[q.dtype]}; all tensors share one "
                                      "dtype")
        B, Nq, Hq, D = q.shape
        if self.packed and B != 1:
            raise InvalidArgError(f"q has shape {q.shape}; a packed call (cu_seqlens_q, "
                                  "cu_seqlens_k) takes q [total_q, heads_q, d] or "
                                  "[1, total_q, heads_q, d]")
        if k.shape[0] != B or k.shape[3] != D:
            raise InvalidArgError(f"k has shape {k.shape}, expected [{B}, seq_k, heads_kv, {D}] "
                                  f"for q of shape {q.shape}")
        ns = variant.score_maps
        for name, t in (("q", q), ("k", k)):
            if t.shape[2] % ns:
                raise InvalidArgError(f"{name} has shape {t.shape}: variant diff takes {name} "
                                      f"with an even number of heads (2 per head, the pole "
                                      f"fastest), not {t.shape[2]}")
        Hq //= ns
        Nk, Hkv = k.shape[1], k.shape[2] // ns
        # head_dim_v: v's own head dim, any variant
        self.head_dim_v = Dv = v.shape[3]
        if v.shape[:3] != (B, Nk, Hkv):
            raise InvalidArgError(f"v has shape {v.shape}, expected [{B}, {Nk}, {Hkv}, "
                                  f"head_dim_v] for k of shape {k.shape}")
        if v2 and v2.shape != v.shape:
            raise InvalidArgError(f"v2 has shape {v2.shape}, expected v's {v.shape}")
        if variant.reads_v2 and v2 is None:
            raise InvalidArgError(f"variant {variant.name.lower()} reads v2; pass v2")
        if not variant.reads_v2 and v2 is not None:
            raise InvalidArgError(f"v2 is given but variant {variant.name.lower()} does not "
                                  "read it")
        if not variant.weighted and (pos_weight is not None or neg_weight is not None):
            raise InvalidArgError("pos_weight and neg_weight are the pole weights of TWO_POLE "
                                  "and DIFF")
        self.shape = (B, Nq, Hq, Nk, Hkv, D)
        self.out_shape = (B, Nq, Hq, Dv)
        d = self.desc = _lib.AttnDesc()
        _lib.lib.dipole_attn_desc_default(ctypes.byref(d))
        d.variant, d.batch, d.heads_q, d.heads_kv = int(variant), B, Hq, Hkv
        d.seq_q, d.seq_k, d.head_dim, d.dtype = Nq, Nk, D, q.dtype
        d.head_dim_v = Dv
        d.scale = 0.0 if scale is None else float(scale)
        if scale is not None and not d.scale > 0:
            raise InvalidArgError(f"scale must be positive, not {scale}")
        d.causal = 1 if causal else 0
        try:
            d.window_left, d.window_right = (int(w) for w in window)
        except (TypeError, ValueError):
            raise InvalidArgError(f"window must be (left, right) with -1 for unlimited, "
                                  f"not {window!r}") from None
        self._keep = []
        if key_lengths is not None:
            kl = _arrays.host_ints(key_lengths, "key_lengths", B)
            self._keep.append(kl)
            d.key_lengths = kl.ctypes.data_as(ctypes.POINTER(ctypes.c_int))
        for field, w, name in (("pos_weight", pos_weight, "pos_weight"),
                               ("neg_weight", neg_weight, "neg_weight")):
            if w is not None:
                a = _arrays.host_floats(w, name, Hq)
                self._keep.append(a)
                setattr(d, field, a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if self.packed:
            self._pack(cu_seqlens_q, cu_seqlens_k)
        if alibi_slopes is not None:
            a = _arrays.host_floats(alibi_slopes, "alibi_slopes", Hq)
            self._keep.append(a)
            d.alibi_slopes = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        try:
            d.softcap = 0.0 if softcap is None else float(softcap)
        except (TypeError, ValueError):
            raise InvalidArgError(f"softcap must be a number (0: off), not {softcap!r}") from None
        self.bias = None
        if bias is not None:
            # Broadcast over [B, Hq, Nq, Nk]; packed, B is the one batch of the packed rows.
            self.bias = _arrays.bias_view(bias, (B, Hq, Nq, Nk), q.dtype)
            b, h, r, _ = self.bias.strides
            self._bias = _lib.Bias(None, None, self.bias.dtype, 0, b, h, r)
            d.bias = ctypes.pointer(self._bias)
        check(_lib.lib.dipole_attn_desc_validate(ctypes.byref(d)))

    def _pack(self, cu_q, cu_k):
        """The cu_seqlens arrays; batch is their sequence count. Their lengths are checked
        here (the library reads batch + 1 entries of each and cannot), their values there."""
        d = self.desc
        arrays = {}
        for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
            if cu is not None:
                a = arrays[name] = _arrays.host_ints(cu, name)
                if a.size < 1:
                    raise InvalidArgError(f"{name} is empty; it has batch + 1 entries from 0")
                self._keep.append(a)
                setattr(d, name, a.ctypes.data_as(ctypes.POINTER(ctypes.c_int)))
        sizes = {a.size for a in arrays.values()}
        if len(sizes) > 1:
            raise InvalidArgError(f"cu_seqlens_q has {arrays['cu_seqlens_q'].size} entries and "
                                  f"cu_seqlens_k {arrays['cu_seqlens_k'].size}; both are "
                                  "[batch + 1]")
        d.batch = sizes.pop() - 1

    def bind(self, bufs):
        """Points the descriptor's bias at its buffer in bufs (a CallBuffers) for the call."""
        if self.bias is not None:
            self._bias = bufs.bias(self.bias)
            self.desc.bias = ctypes.pointer(self._bias)

    def lse_array(self):
        B, Nq, Hq = self.shape[:3]
        if self.packed:
            return aligned_floats((self.variant.poles, Hq, Nq))
        return aligned_floats((self.variant.poles, B, Hq, Nq))


def aligned_floats(shape, align=4096):
    """A float32 numpy array at an aligned address: buffers the kernels take without an offset
    (lse, pole-weight gradients) can then be handed to OpenCL in place."""
    n = int(np.prod(shape))
    raw = np.empty(n + align // 4, dtype=np.float32)
    skip = (-raw.ctypes.data % align) // 4
    return raw[skip:skip + n].reshape(shape)


def _like(kind, arr):
    """arr (numpy) as the caller's kind: a torch tensor sharing its memory for torch callers."""
    if kind.torch:
        return _arrays._torch().from_numpy(arr)
    return arr


def forward(q, k, v, v2=None, *, variant="softmax", causal=False, window=(-1, -1), scale=None,
            key_lengths=None, pos_weight=None, neg_weight=None, cu_seqlens_q=None,
            cu_seqlens_k=None, alibi_slopes=None, softcap=0.0, bias=None, return_lse=False,
            context=None):
    """(out, lse) or out; see dipole.attention."""
    ctx = context or default_context()
    ctx.handle  # raises for a closed context, before an OpenCL call on its released objects
    pk = packed(cu_seqlens_q, cu_seqlens_k)
    views = [_arrays.view(_batched(x, pk), n) if x is not None else None
             for x, n in ((q, "q"), (k, "k"), (v, "v"), (v2, "v2"))]
    p = Problem(*views, variant, causal, window, scale, key_lengths, pos_weight, neg_weight,
                cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                alibi_slopes=alibi_slopes, softcap=softcap, bias=bias)
    out = _arrays.dense_like(views[0], p.out_shape)
    lse = p.lse_array() if return_lse else None
    with CallBuffers(ctx) as bufs:
        p.bind(bufs)
        t = [bufs.tensor(x) if x is not None else None for x in views]
        to = bufs.tensor(out, output=True)
        lse_mem = bufs.plain(lse.ctypes.data, lse.nbytes, output=True) if return_lse else None
        ctx.check(_lib.lib.dipole_attention(ctx.handle, ctypes.byref(p.desc), *(
            ctypes.byref(x) if x is not None else None for x in t), ctypes.byref(to), lse_mem,
            None))
        bufs.finish()
    out = _unbatched(out.obj, q)
    if return_lse:
        return out, _like(views[0], lse)
    return out


def backward(q, k, v, v2, out, dout, lse, *, variant, causal=False, window=(-1, -1),
             scale=None, key_lengths=None, pos_weight=None, neg_weight=None, cu_seqlens_q=None,
             cu_seqlens_k=None, alibi_slopes=None, softcap=0.0, bias=None, context=None):
    """(dq, dk, dv, dv2 or None, dpos_weight, dneg_weight: float32 numpy [heads_q] or None)
    for the forward's out and lse, with the forward's arguments. The bias gets no gradient
    (the library computes none); ALiBi slopes and the soft-cap are constants."""
    ctx = context or default_context()
    ctx.handle  # raises for a closed context
    names = ("q", "k", "v", "v2", "out", "dout")
    pk = packed(cu_seqlens_q, cu_seqlens_k)
    inputs = (q, k, v, v2, out, dout)
    views = [_arrays.view(_batched(x, pk), n) if x is not None else None
             for x, n in zip(inputs, names)]
    p = Problem(*views[:4], variant, causal, window, scale, key_lengths, pos_weight, neg_weight,
                cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                alibi_slopes=alibi_slopes, softcap=softcap, bias=bias)
    for name, t in (("out", views[4]), ("dout", views[5])):
        if t.shape != p.out_shape or t.dtype != views[0].dtype or t.torch != views[0].torch:
            raise InvalidArgError(f"{name} must have the forward's out shape {p.out_shape} "
                                  "and q's dtype")
    lse = np.ascontiguousarray(lse.detach().numpy() if _arrays.is_torch(lse) else lse,
                               dtype=np.float32)
    grads = [_arrays.dense_like(x, x.shape) if x is not None else None for x in views[:4]]
    dw = [aligned_floats((p.shape[2],)) for _ in range(2)] if p.variant.weighted else [None, None]
    with CallBuffers(ctx) as bufs:
        p.bind(bufs)
        t = [bufs.tensor(x) if x is not None else None for x in views]
        g = [bufs.tensor(x, output=True) if x is not None else None for x in grads]
        lse_mem = bufs.plain(lse.ctypes.data, lse.nbytes)
        w = [bufs.plain(a.ctypes.data, a.nbytes, output=True) if a is not None else None
             for a in dw]
        ref = [ctypes.byref(x) if x is not None else None for x in t + g]
        ctx.check(_lib.lib.dipole_attention_backward(
            ctx.handle, ctypes.byref(p.desc), *ref[:6], lse_mem, *ref[6:], w[0], w[1], None))
        bufs.finish()
    return tuple(_unbatched(x.obj, like) if x is not None else None
                 for x, like in zip(grads, inputs)) + tuple(dw)


def _host_f32(x, name, pk):
    """x as a dense float32 numpy array [B, N, H, d] for the host reference (a copy where it
    is another dtype or layout)."""
    if x is None:
        return None
    x = _batched(x, pk)
    if _arrays.is_torch(x):
        x = x.detach().to("cpu").float().numpy()
    x = np.asarray(x)
    if x.ndim != 4:
        raise InvalidArgError(f"{name} has {x.ndim} dimensions {x.shape}, expected 4")
    return np.ascontiguousarray(x, dtype=np.float32)


def _reference_problem(q, k, v, v2, variant, pk, opts):
    arrays = [_host_f32(x, n, pk) for x, n in ((q, "q"), (k, "k"), (v, "v"), (v2, "v2"))]
    views = [_arrays.view(a, n) if a is not None else None
             for a, n in zip(arrays, ("q", "k", "v", "v2"))]
    p = Problem(*views, variant, opts.pop("causal", False), opts.pop("window", (-1, -1)),
                opts.pop("scale", None), opts.pop("key_lengths", None),
                opts.pop("pos_weight", None), opts.pop("neg_weight", None), **opts)
    if p.bias is not None:  # the reference reads the bias from host memory
        p._bias = _lib.Bias(None, p.bias.ptr, p.bias.dtype, 0, *p.bias.strides[:3])
        p.desc.bias = ctypes.pointer(p._bias)
    return p, arrays


def _ptr(a):
    return a.ctypes.data if a is not None else None


def reference(q, k, v, v2=None, *, variant="softmax", return_lse=False, **opts):
    """dipole.attention's arguments through the library's CPU reference (double accumulation,
    no device): out float32 numpy of the forward's shape, and with return_lse lse."""
    pk = packed(opts.get("cu_seqlens_q"), opts.get("cu_seqlens_k"))
    p, a = _reference_problem(q, k, v, v2, variant, pk, dict(opts))
    out = np.empty(p.out_shape, dtype=np.float32)
    lse = p.lse_array()
    check(_lib.lib.dipole_reference_lse(ctypes.byref(p.desc), *map(_ptr, a), _ptr(out),
                                        _ptr(lse)))
    out = out[0] if pk and np.ndim(q) == 3 else out
    return (out, lse) if return_lse else out


def reference_backward(q, k, v, v2, dout, *, variant, **opts):
    """The library's CPU reference backward for dipole.attention's arguments: (dq, dk, dv,
    dv2 or None, dpos_weight, dneg_weight or None), float32 numpy."""
    pk = packed(opts.get("cu_seqlens_q"), opts.get("cu_seqlens_k"))
    p, a = _reference_problem(q, k, v, v2, variant, pk, dict(opts))
    do = _host_f32(dout, "dout", pk)
    if do.shape != p.out_shape:
        raise InvalidArgError(f"dout has shape {do.shape}, expected {p.out_shape}")
    grads = [np.empty_like(x) if x is not None else None for x in a]
    dw = [np.empty(p.shape[2], dtype=np.float32) for _ in range(2)] if p.variant.weighted \
        else [None, None]
    check(_lib.lib.dipole_reference_backward(ctypes.byref(p.desc), *map(_ptr, a), _ptr(do),
                                             *map(_ptr, grads), *map(_ptr, dw)))
    if pk and np.ndim(q) == 3:
        grads = [g[0] if g is not None else None for g in grads]
    return tuple(grads) + tuple(dw)
