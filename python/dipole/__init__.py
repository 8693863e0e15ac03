"""dipole: dipole attention on OpenCL devices, for numpy arrays and torch CPU tensors.

    import dipole
    dipole.devices()                                   # every OpenCL platform and device
    out = dipole.attention(q, k, v, variant="signexp", causal=True)

Tensors use FlashAttention's layout: q [B, Nq, Hq, d], k [B, Nk, Hkv, d], v, v2
[B, Nk, Hkv, dv] (Hkv divides Hq: GQA/MQA; dv, v's head dim, is d unless v says otherwise),
in float32, float16 or bfloat16 (torch only). DIFF (differential attention) takes q and k with
two heads a head, [B, Nq, 2 Hq, d] and [B, Nk, 2 Hkv, d]. Strided views whose head_dim is
contiguous pass without copies. Packed variable-length batches (cu_seqlens_q/k, as
flash_attn_varlen_func), ALiBi slopes, logit soft-capping and an additive bias are keyword
arguments of dipole.attention. dipole.torch.attention is the differentiable twin (a
torch.autograd.Function) and dipole.torch.DipoleAttention a multi-head attention module."""

from ._core import Variant, forward as _forward, reference, reference_backward
from ._lib import lib as _clib
from .context import Context, Device, default_context, devices
from .errors import (BadSelectorError, BufferRangeError, BuildError, CLBlastError, Error,
                     InternalError, InvalidArgError, KernelSourceError, NoDeviceError,
                     NoPlatformError, OpenCLError, OutOfHostMemoryError, UnsupportedError)

__version__ = _clib.dipole_version().decode()


def attention(q, k, v, v2=None, *, variant="softmax", causal=False, window=(-1, -1), scale=None,
              key_lengths=None, pos_weight=None, neg_weight=None, cu_seqlens_q=None,
              cu_seqlens_k=None, alibi_slopes=None, softcap=0.0, bias=None, return_lse=False,
              context=None):
    """Dipole attention of q [B, Nq, Hq, d] over k [B, Nk, Hkv, d] and v (and v2 for ROUTED,
    TWO_POLE) [B, Nk, Hkv, dv]; returns out [B, Nq, Hq, dv] of q's kind and dtype, and with
    return_lse also lse float32 [poles, B, Hq, Nq] (each row's log-sum-exp per pole; -inf for a
    row that sees no key). dv (head_dim_v) is v's own head dim, any variant.

    variant: "softmax", "signexp", "routed", "two_pole", "diff" or a dipole.Variant.
        "diff" is differential attention, out_h = a_h softmax(s0) v + b_h softmax(s1) v: q is
        [B, Nq, 2 Hq, d] and k [B, Nk, 2 Hkv, d], head 2h + p being pole p of head h (odd head
        counts raise InvalidArgError, a ValueError); lse has its two poles. The Diff
        Transformer's out = softmax(s0) V - lambda softmax(s1) V is pos_weight 1, neg_weight
        -lambda, with dv = 2 d.
    causal: query i sees keys j <= i + Nk - Nq (bottom-right aligned).
    window: (left, right), -1 unlimited, relative to the same diagonal.
    scale: None for 1/sqrt(d).  key_lengths: [B] valid key counts, or None.
    pos_weight, neg_weight: the pole weights alpha_h, beta_h [Hq] of TWO_POLE and DIFF
        (None: ones).
    cu_seqlens_q, cu_seqlens_k: packed variable-length sequences, as flash_attn_varlen_func:
        int arrays [nseq + 1] from 0 (both or neither). q is then [total_q, Hq, d] (or
        [1, total_q, Hq, d]) and k, v, v2 [total_k, Hkv, d] (or [1, ...]), with
        total_q = cu_seqlens_q[-1], total_k = cu_seqlens_k[-1]; sequence b is query rows
        cu_seqlens_q[b]:cu_seqlens_q[b+1] against keys cu_seqlens_k[b]:cu_seqlens_k[b+1],
        causal and window bottom-right within it. out has q's shape; lse is
        [poles, Hq, total_q]. Not with key_lengths.
    alibi_slopes: [Hq] ALiBi slopes: query i scores key j with s - slope_h |i + Nk - Nq - j|
        (within its sequence when packed).
    softcap: s <- softcap * tanh(s / softcap) (Gemma 2); 0 is off.
    bias: an additive score bias, a numpy array or torch CPU tensor broadcastable to
        [B, Hq, Nq, Nk] (numpy rules; size-1 dimensions broadcast without a copy); packed,
        to [1, Hq, total_q, total_k], indexed by the packed rows and keys. Stored as float32
        or q's dtype (another floating dtype is converted to float32); -inf excludes a key.
    The score of a key is s = scale q.k, then softcap, then ALiBi, then bias, then the variant.
    context: a dipole.Context (default: dipole.default_context()).
    Raises dipole.InvalidArgError for inputs it cannot take and a dipole.Error subclass with
    the library's message when the call fails. Not differentiable: see dipole.torch.
    dipole.reference and dipole.reference_backward take the same arguments and run the
    library's CPU reference (double accumulation, no device)."""
    return _forward(q, k, v, v2, variant=variant, causal=causal, window=window, scale=scale,
                    key_lengths=key_lengths, pos_weight=pos_weight, neg_weight=neg_weight,
                    cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                    alibi_slopes=alibi_slopes, softcap=softcap, bias=bias,
                    return_lse=return_lse, context=context)


__all__ = ["attention", "reference", "reference_backward", "devices", "Context", "Device", "default_context", "Variant", "Error",
           "InvalidArgError", "NoPlatformError", "NoDeviceError", "BadSelectorError",
           "UnsupportedError", "BuildError", "OutOfHostMemoryError", "BufferRangeError",
           "CLBlastError", "KernelSourceError", "InternalError", "OpenCLError", "__version__"]
