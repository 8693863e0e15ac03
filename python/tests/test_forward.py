"""dipole.attention against the float64 reference: every variant, GQA, the mask kinds, key
lengths, lse, decode rows, numpy and torch inputs, half storage, strided views."""

import numpy as np
import pytest
import torch

import dipole
from dipole import _arrays
import reference

VARIANTS = ["softmax", "signexp", "routed", "two_pole"]
# Each (variant, mask kind) is a kernel build of its own: the masks here are the kinds
# (none, causal, window) with key lengths on top of two of them.
MASKS = {
    "none": dict(),
    "causal+lengths": dict(causal=True, key_lengths=[13, 6]),
    "window": dict(window=(3, 1)),
    "lengths": dict(key_lengths=[0, 9]),
}
# float32 compute against float64: |got - ref| <= ATOL + RTOL |ref|
ATOL, RTOL = 2e-5, 1e-4
B, NQ, NK, HQ, HKV, D = 2, 9, 13, 4, 2, 16


def inputs(rng, nq=NQ, nk=NK, hq=HQ, hkv=HKV, d=D, dtype=np.float32):
    q = rng.standard_normal((B, nq, hq, d)).astype(dtype)
    k, v, v2 = (rng.standard_normal((B, nk, hkv, d)).astype(dtype) for _ in range(3))
    return q, k, v, v2


def expected(q, k, v, v2, variant, **kw):
    f64 = [torch.from_numpy(np.asarray(x, dtype=np.float64)) if x is not None else None
           for x in (q, k, v, v2)]
    if variant not in ("routed", "two_pole"):
        f64[3] = None
    for w in ("pos_weight", "neg_weight"):
        if kw.get(w) is not None:
            kw[w] = torch.as_tensor(kw[w], dtype=torch.float64)
    out, lse = reference.attention(*f64, variant=variant, **kw)
    return out.numpy(), lse.numpy()


def assert_close(got, want, atol=ATOL, rtol=RTOL, what="out"):
    """|got - ref| <= atol + rtol |ref| everywhere; equal infinities (lse of a row that sees no
    key) agree."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    with np.errstate(invalid="ignore"):
        err = np.where(got == want, 0.0, np.abs(got - want))
    bound = atol + rtol * np.where(np.isfinite(want), np.abs(want), 0.0)
    bad = ~(err <= bound)
    if bad.any():
        at = tuple(int(i[0]) for i in np.nonzero(bad))
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements outside "
                             f"{atol:g} + {rtol:g}|ref|; first at {at}: got {got[at]!r}, "
                             f"ref {want[at]!r}")


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_numpy(ctx, rng, variant, mask):
    q, k, v, v2 = inputs(rng)
    kw = dict(MASKS[mask])
    if variant == "two_pole":
        kw.update(pos_weight=[1.0, 0.5, -2.0, 0.25], neg_weight=[0.75, 1.0, 1.5, -1.0])
    v2 = v2 if variant in ("routed", "two_pole") else None
    out, lse = dipole.attention(q, k, v, v2, variant=variant, return_lse=True, **kw)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == q.shape
    want, want_lse = expected(q, k, v, v2, variant, **kw)
    assert_close(out, want)
    assert lse.shape == want_lse.shape
    assert_close(lse, want_lse, what="lse")


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_torch_scale_and_enum(ctx, rng, variant):
    q, k, v, v2 = inputs(rng)
    v2 = v2 if variant in ("routed", "two_pole") else None
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    tv2 = torch.from_numpy(v2) if v2 is not None else None
    out = dipole.attention(tq, tk, tv, tv2, variant=dipole.Variant[variant.upper()], scale=0.3,
                           causal=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    want, _ = expected(q, k, v, v2, variant, scale=0.3, causal=True)
    assert_close(out.numpy(), want)


def test_decode_rows(ctx, rng):
    """seq_q 1 over many keys: the split-K path."""
    q, k, v, _ = inputs(rng, nq=1, nk=300)
    out = dipole.attention(q, k, v, variant="signexp", key_lengths=[300, 123])
    assert_close(out, expected(q, k, v, None, "signexp", key_lengths=[300, 123])[0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_half_storage(ctx, rng, kind, dtype):
    if kind == "numpy" and dtype == "bfloat16":
        pytest.skip("numpy has no bfloat16")
    q, k, v, v2 = inputs(rng)
    tdt = getattr(torch, dtype)
    # The reference sees exactly the rounded values the device reads.
    rounded = [torch.from_numpy(x).to(tdt) for x in (q, k, v, v2)]
    ref_in = [x.float().numpy() for x in rounded]
    args = [x.numpy() for x in rounded] if kind == "numpy" else rounded
    out = dipole.attention(*args, variant="routed", window=(3, 1))
    assert out.dtype == (np.float16 if kind == "numpy" else tdt)
    got = np.asarray(out, dtype=np.float32) if kind == "numpy" else out.float().numpy()
    # README, "Storage": twice the store's half ulp, rtol 2^-10 (fp16) or 2^-7 (bf16).
    rtol = 2.0 ** -10 if dtype == "float16" else 2.0 ** -7
    assert_close(got, expected(*ref_in, "routed", window=(3, 1))[0], atol=3e-5, rtol=rtol)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_strided_views_pass_without_copies(ctx, rng, kind):
    """Packed QKV ([B, N, 3, H, d] sliced) and head-major ([B, H, N, d] transposed) views."""
    packed = rng.standard_normal((B, NK, 3, HQ, D)).astype(np.float32)
    head_major = np.ascontiguousarray(rng.standard_normal((B, HQ, NK, D)).astype(np.float32))
    if kind == "torch":
        packed, head_major = torch.from_numpy(packed), torch.from_numpy(head_major)
    q, k, v = packed[:, :, 0], packed[:, :, 1], packed[:, :, 2]
    v_hm = head_major.transpose(1, 2) if kind == "torch" else head_major.transpose(0, 2, 1, 3)
    for x in (q, k, v, v_hm):
        ptr = x.data_ptr() if kind == "torch" else x.ctypes.data
        assert _arrays.view(x, "x").ptr == ptr  # the front takes the view's own memory
    out = dipole.attention(q, k, v_hm, causal=True)
    dense = [np.ascontiguousarray(np.asarray(x)) for x in (q, k, v_hm)]
    assert_close(np.asarray(out), expected(*dense, None, "softmax", causal=True)[0])
    # A view with a non-contiguous head_dim is copied once, and still right.
    v_odd = packed[:, :, 1, :, ::-1] if kind == "numpy" else packed[:, :, 1].flip(-1)
    out = dipole.attention(q, k, v_odd)
    dense[2] = np.ascontiguousarray(np.asarray(v_odd))
    assert_close(np.asarray(out), expected(*dense, None, "softmax")[0])
