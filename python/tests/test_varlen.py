"""Packed variable-length batches (cu_seqlens), ALiBi, soft-capping and the additive bias:
packed calls against one unpacked call per sequence, the modifiers against the float64
reference formulas (reference.py), gradients through dipole.torch against float64 autograd,
and a document mask written as a bias against the packed call it stands for."""

import math

import numpy as np
import pytest
import torch

import dipole
import dipole.torch as dt
import reference
from reference import rms_bound
from test_forward import assert_close

HQ, HKV, D = 4, 2, 16
# Sequence lengths: an empty query sequence, fewer keys than queries (causal rows that see no
# key), more keys than queries, and equal lengths.
LQ = [5, 0, 9, 3, 7]
LK = [7, 2, 6, 3, 11]
CU_Q, CU_K = np.cumsum([0] + LQ), np.cumsum([0] + LK)
TQ, TK = int(CU_Q[-1]), int(CU_K[-1])
ALIBI = [0.5, 0.25, 0.125, 0.0625]
TWO_POLE_W = dict(pos_weight=[1.0, 0.5, -2.0, 0.25], neg_weight=[0.75, 1.0, 1.5, -1.0])


def packed_inputs(rng, tq=TQ, tk=TK, dtype=np.float32):
    q = rng.standard_normal((tq, HQ, D)).astype(dtype)
    k, v, v2 = (rng.standard_normal((tk, HKV, D)).astype(dtype) for _ in range(3))
    return q, k, v, v2


def f64(*xs):
    return [torch.from_numpy(np.asarray(x, dtype=np.float64)) if x is not None else None
            for x in xs]


def extras(variant):
    return dict(TWO_POLE_W) if variant == "two_pole" else {}


def reference_kw(kw):
    kw = dict(kw)
    for name in ("pos_weight", "neg_weight", "alibi_slopes", "bias"):
        if kw.get(name) is not None:
            kw[name] = torch.as_tensor(np.asarray(kw[name]), dtype=torch.float64)
    return kw


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", ["softmax", "signexp", "two_pole"])
def test_packed_matches_separate_calls(ctx, rng, variant, causal):
    """The packed call's rows and lse are those of each sequence run on its own (unpacked,
    batch 1): an independent check of the packing, the per-sequence bottom-right causal
    diagonal and the packed lse layout [poles, Hq, total_q]."""
    q, k, v, v2 = packed_inputs(rng)
    v2 = v2 if variant == "two_pole" else None
    kw = dict(variant=variant, causal=causal, **extras(variant))
    out, lse = dipole.attention(q, k, v, v2, cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K,
                                return_lse=True, **kw)
    assert out.shape == q.shape and out.dtype == np.float32
    poles = 2 if variant == "two_pole" else 1
    assert lse.shape == (poles, HQ, TQ)
    for b in range(len(LQ)):
        qa, qb, ka, kb = CU_Q[b], CU_Q[b + 1], CU_K[b], CU_K[b + 1]
        if qa == qb:
            continue
        part = [x[None, ka:kb] if x is not None else None for x in (k, v, v2)]
        want, want_lse = dipole.attention(q[None, qa:qb], *part, return_lse=True, **kw)
        assert_close(out[qa:qb], want[0].astype(np.float64), what=f"out of sequence {b}")
        assert_close(lse[:, :, qa:qb], want_lse[:, 0].astype(np.float64),
                     what=f"lse of sequence {b}")
    if causal:  # sequence 2 has 3 keys fewer than queries: its first 3 rows see none
        assert np.all(out[CU_Q[2]:CU_Q[2] + 3] == 0) and np.all(lse[..., 5:8] == -np.inf)


def test_packed_layouts_and_kinds(ctx, rng):
    """[total, H, d] and [1, total, H, d], numpy and torch (with torch cu_seqlens), agree with
    the reference; out keeps q's rank and kind."""
    q, k, v, _ = packed_inputs(rng)
    want, want_lse = reference.attention_packed(*f64(q, k, v), cu_seqlens_q=CU_Q,
                                                cu_seqlens_k=CU_K, causal=True)
    cu = dict(cu_seqlens_q=torch.from_numpy(CU_Q.astype(np.int32)),
              cu_seqlens_k=torch.from_numpy(CU_K.astype(np.int32)))
    o3, l3 = dipole.attention(*(torch.from_numpy(x) for x in (q, k, v)), causal=True,
                              return_lse=True, **cu)
    assert isinstance(o3, torch.Tensor) and o3.shape == q.shape
    o4 = dipole.attention(q[None], k[None], v[None], causal=True, cu_seqlens_q=list(CU_Q),
                          cu_seqlens_k=list(CU_K))
    assert isinstance(o4, np.ndarray) and o4.shape == (1,) + q.shape
    assert_close(o3.numpy(), want.numpy())
    assert_close(l3.numpy(), want_lse.numpy(), what="lse")
    assert_close(o4[0], want.numpy())


def biases(rng, B, nq, nk):
    """Bias shapes that broadcast to [B, HQ, nq, nk] (stride 0 where a dimension is 1, a copy
    along the keys where theirs is 1), with -inf entries, one whole row of them."""
    full = rng.standard_normal((B, HQ, nq, nk))
    full[rng.random(full.shape) < 0.2] = -np.inf
    full[0, 1, 2, :] = -np.inf  # a row that sees no key: out 0, lse -inf
    rows = rng.standard_normal((nq, nk)).astype(np.float32)
    rows[1, ::2] = -np.inf
    return {"full float64": full, "[nq, nk]": rows,
            "transposed view": rng.standard_normal((nk, nq)).astype(np.float32).T,
            "torch expanded": torch.randn(nq, nk).expand(B, HQ, nq, nk),
            "[B, 1, 1, nk]": rng.standard_normal((B, 1, 1, nk)).astype(np.float32),
            "[HQ, nq, 1]": rng.standard_normal((HQ, nq, 1)).astype(np.float32)}


@pytest.mark.parametrize("variant", ["softmax", "signexp", "two_pole"])
def test_modifiers_forward(ctx, rng, variant):
    """Soft-cap, then ALiBi, then the bias (several broadcast shapes, -inf entries) on an
    unpacked causal batch, against the reference formula; each modifier also alone."""
    B, nq, nk = 2, 9, 13
    q = rng.standard_normal((B, nq, HQ, D)).astype(np.float32) * 2  # scores reach the cap
    k, v, v2 = (rng.standard_normal((B, nk, HKV, D)).astype(np.float32) for _ in range(3))
    v2 = v2 if variant == "two_pole" else None
    base = dict(variant=variant, causal=True, **extras(variant))
    cases = {f"bias {name}": dict(alibi_slopes=ALIBI, softcap=1.5, bias=bias)
             for name, bias in biases(rng, B, nq, nk).items()}
    cases.update({"alibi": dict(alibi_slopes=ALIBI), "softcap": dict(softcap=1.5)})
    for name, mods in cases.items():
        out, lse = dipole.attention(q, k, v, v2, return_lse=True, **base, **mods)
        want, want_lse = reference.attention(*f64(q, k, v, v2), **reference_kw({**base, **mods}))
        assert_close(out, want.numpy(), what=f"{name}: out")
        assert_close(lse, want_lse.numpy(), what=f"{name}: lse")
        if name == "bias full float64":
            assert np.all(out[0, 2, 1] == 0) and np.all(lse[:, 0, 1, 2] == -np.inf)


@pytest.mark.parametrize("variant", ["softmax", "signexp"])
def test_modifiers_packed_forward(ctx, rng, variant):
    """All three modifiers on a packed batch: ALiBi's distance and the causal diagonal within
    each sequence, the bias indexed by the packed rows and keys."""
    q, k, v, _ = packed_inputs(rng)
    bias = rng.standard_normal((HQ, TQ, TK)).astype(np.float32)
    bias[rng.random(bias.shape) < 0.2] = -np.inf
    mods = dict(variant=variant, causal=True, alibi_slopes=ALIBI, softcap=2.0, bias=bias)
    out, lse = dipole.attention(q, k, v, cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K, return_lse=True,
                                **mods)
    want, want_lse = reference.attention_packed(*f64(q, k, v), cu_seqlens_q=CU_Q,
                                                cu_seqlens_k=CU_K, **reference_kw(mods))
    assert_close(out, want.numpy())
    assert_close(lse, want_lse.numpy(), what="lse")


def grads_both(variant, packed_kw, mods, ref_mods, seed=0):
    """dipole.torch's out and gradients against float64 autograd of the packed reference."""
    gen = torch.Generator().manual_seed(seed)
    reads_v2 = variant == "two_pole"
    shapes = [(TQ, HQ, D), (TK, HKV, D), (TK, HKV, D)] + ([(TK, HKV, D)] if reads_v2 else [])
    ins = [torch.randn(s, generator=gen, dtype=torch.float64).float().requires_grad_()
           for s in shapes]
    w = {n: torch.tensor(x, requires_grad=True) for n, x in extras(variant).items()}
    dout = torch.randn(shapes[0], generator=gen, dtype=torch.float64)
    out = dt.attention(*ins, variant=variant, **packed_kw, **mods, **w)
    (out.double() * dout).sum().backward()
    ref_ins = [x.detach().double().requires_grad_() for x in ins]
    ref_w = {n: t.detach().double().requires_grad_() for n, t in w.items()}
    ref_out, _ = reference.attention_packed(*ref_ins, variant=variant, **packed_kw, **ref_mods,
                                            **ref_w)
    (ref_out * dout).sum().backward()
    got = [out] + [x.grad for x in ins] + [w[n].grad for n in sorted(w)]
    want = [ref_out] + [x.grad for x in ref_ins] + [ref_w[n].grad for n in sorted(w)]
    return got, want


@pytest.mark.parametrize("variant", ["softmax", "signexp", "two_pole"])
def test_packed_backward_softcap_alibi(ctx, variant):
    packed_kw = dict(cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K, causal=True)
    mods = dict(alibi_slopes=ALIBI, softcap=1.5)
    ref_mods = dict(alibi_slopes=torch.tensor(ALIBI, dtype=torch.float64), softcap=1.5)
    got, want = grads_both(variant, packed_kw, mods, ref_mods)
    for g, w in zip(got, want):
        assert g is not None and g.shape == w.shape
        rms_bound(g, w, atol=1e-4, rtol=1e-3)


def test_backward_bias_gets_no_gradient(ctx, rng):
    """A bias that requires a gradient: q, k, v's gradients still match the reference's, and
    the bias's stays None (the library computes none)."""
    bias_np = rng.standard_normal((1, HQ, TQ, TK)).astype(np.float32)
    bias_np[..., ::5] = -np.inf
    bias = torch.from_numpy(bias_np).requires_grad_()
    packed_kw = dict(cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K, causal=True)
    got, want = grads_both("signexp", packed_kw, dict(bias=bias),
                           dict(bias=torch.from_numpy(bias_np).double()))
    for g, w in zip(got, want):
        rms_bound(g, w, atol=1e-4, rtol=1e-3)
    assert bias.grad is None


def document_bias(doc_lengths):
    """Cogformer-style document mask over one row of concatenated documents: 0 inside a
    document, -inf across its borders ([N, N]; causality comes from causal=True)."""
    doc = np.repeat(np.arange(len(doc_lengths)), doc_lengths)
    return np.where(doc[:, None] == doc[None, :], 0.0, -np.inf).astype(np.float32)


@pytest.mark.parametrize("variant", ["softmax", "signexp"])
def test_document_mask_equals_packed(ctx, variant):
    """Documents concatenated in one sequence with a block-diagonal -inf bias and a causal
    mask give the packed call's out, lse and gradients (documents of equal query and key
    length, so the bottom-right diagonal of each is the global one)."""
    docs = [6, 1, 11, 4, 9]
    cu = np.cumsum([0] + docs)
    N = int(cu[-1])
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(N, HQ, D, generator=gen)
    k, v = (torch.randn(N, HKV, D, generator=gen) for _ in range(2))
    dout = torch.randn(N, HQ, D, generator=gen)

    def run(**kw):
        ins = [x.clone().requires_grad_() for x in (q, k, v)]
        one_batch = "bias" in kw  # unpacked: [1, N, H, d]
        out, lse = dt.attention(*(x[None] if one_batch else x for x in ins), variant=variant,
                                causal=True, return_lse=True, **kw)
        out = out[0] if one_batch else out
        (out * dout).sum().backward()
        return [out.detach(), lse] + [x.grad for x in ins]

    packed = run(cu_seqlens_q=cu, cu_seqlens_k=cu)
    masked = run(bias=torch.from_numpy(document_bias(docs)))
    assert masked[1].shape == (1, 1, HQ, N) and packed[1].shape == (1, HQ, N)
    assert_close(masked[1][:, 0].numpy(), packed[1].double().numpy(), what="lse")
    for name, a, b in zip(["out", "dq", "dk", "dv"], masked[:1] + masked[2:],
                          packed[:1] + packed[2:]):
        assert a.shape == b.shape == (N,) + a.shape[1:], name
        rms_bound(a, b, atol=1e-5, rtol=1e-4)


def test_bias_dtypes_and_lifetime(ctx, rng):
    """A float64 bias is converted to float32, a float16 one for float32 tensors too; a bias
    made in the call's own expression lives through it."""
    q = rng.standard_normal((1, 6, HQ, D)).astype(np.float32)
    k, v = (rng.standard_normal((1, 8, HKV, D)).astype(np.float32) for _ in range(2))
    b = rng.standard_normal((6, 8))
    want = reference.attention(*f64(q, k, v), bias=torch.from_numpy(b.astype(np.float32))
                               .double())[0].numpy()
    assert_close(dipole.attention(q, k, v, bias=b), want)
    assert_close(dipole.attention(q, k, v, bias=torch.from_numpy(b)), want)
    want16 = reference.attention(*f64(q, k, v), bias=torch.from_numpy(
        b.astype(np.float16).astype(np.float64)))[0].numpy()
    assert_close(dipole.attention(q, k, v, bias=b.astype(np.float16)), want16)
    assert_close(dipole.attention(q, k, v, bias=np.asarray(b, np.float32) * 1.0), want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bias_in_half_storage(ctx, rng, dtype):
    """A bias in the tensors' half storage type is read as it is (no float32 copy)."""
    tdt = getattr(torch, dtype)
    q = torch.from_numpy(rng.standard_normal((1, 6, HQ, D)).astype(np.float32)).to(tdt)
    k, v = (torch.from_numpy(rng.standard_normal((1, 8, HKV, D)).astype(np.float32)).to(tdt)
            for _ in range(2))
    bias = torch.from_numpy(rng.standard_normal((HQ, 6, 8)).astype(np.float32)).to(tdt)
    bias[:, :, 3] = -math.inf
    out = dipole.attention(q, k, v, bias=bias, causal=True)
    assert out.dtype == tdt
    want = reference.attention(*(x.double() for x in (q, k, v)), bias=bias.double(),
                               causal=True)[0]
    # README, "Storage": rtol 2^-10 (fp16) or 2^-7 (bf16) for the rounded output.
    rtol = 2.0 ** -10 if dtype == "float16" else 2.0 ** -7
    assert_close(out.float().numpy(), want.numpy(), atol=3e-5, rtol=rtol)


def test_bias_view_broadcasts_without_copies():
    """Size-1 dimensions become stride 0 on the caller's memory; only a bias broadcast along
    the keys (which have no stride of their own) or with a strided key dimension is copied."""
    from dipole import _arrays
    a = np.zeros((1, HQ, 1, 8), np.float32)
    bv = _arrays.bias_view(a, (2, HQ, 6, 8), _arrays.F32)
    assert bv.ptr == a.ctypes.data and bv.shape == (1, HQ, 1, 8) and bv.strides == (0, 8, 0, 1)
    t = torch.zeros(6, 8).expand(2, HQ, 6, 8)
    tv = _arrays.bias_view(t, (2, HQ, 6, 8), _arrays.F32)
    assert tv.ptr == t.data_ptr() and tv.strides == (0, 0, 8, 1)
    col = _arrays.bias_view(np.zeros((6, 1), np.float32), (2, HQ, 6, 8), _arrays.F32)
    assert col.shape == (1, 1, 6, 8) and col.strides == (0, 0, 8, 1)


def test_front_refusals(ctx, rng):
    q, k, v, _ = packed_inputs(rng)
    cu = dict(cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K)
    with pytest.raises(dipole.InvalidArgError, match="cu_seqlens_q has 6 entries and "
                                                     "cu_seqlens_k 5"):
        dipole.attention(q, k, v, cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K[:-1])
    with pytest.raises(dipole.InvalidArgError, match="cu_seqlens_q has dtype float64"):
        dipole.attention(q, k, v, cu_seqlens_q=CU_Q * 1.0, cu_seqlens_k=CU_K)
    with pytest.raises(dipole.InvalidArgError, match=r"a packed call .* takes q \[total_q"):
        dipole.attention(np.stack([q, q]), np.stack([k, k]), np.stack([v, v]), **cu)
    with pytest.raises(dipole.InvalidArgError, match=r"bias has shape \(4, 7, 24\), which "
                                                     r"does not broadcast to \(1, 4, 24, 29\)"):
        dipole.attention(q, k, v, bias=np.zeros((HQ, 7, TQ), np.float32), **cu)
    with pytest.raises(dipole.InvalidArgError, match="bias has dtype bool"):
        dipole.attention(q, k, v, bias=np.ones((TQ, TK), bool), **cu)
    with pytest.raises(dipole.InvalidArgError, match="alibi_slopes has 2 entries, expected 4"):
        dipole.attention(q, k, v, alibi_slopes=[1, 2], **cu)


def test_library_errors_surface(ctx, rng):
    """What the library checks comes back with its message, naming the descriptor field."""
    q, k, v, _ = packed_inputs(rng)
    with pytest.raises(dipole.InvalidArgError, match="cu_seqlens_q is set without "
                                                     "desc.cu_seqlens_k"):
        dipole.attention(q, k, v, cu_seqlens_q=CU_Q)
    with pytest.raises(dipole.InvalidArgError, match=r"cu_seqlens_k\[batch = 5\] = 28 differs"):
        dipole.attention(q, k, v, cu_seqlens_q=CU_Q, cu_seqlens_k=np.r_[CU_K[:-1], TK - 1])
    with pytest.raises(dipole.InvalidArgError, match="key_lengths"):
        dipole.attention(q, k, v, cu_seqlens_q=CU_Q, cu_seqlens_k=CU_K, key_lengths=[1] * 5)
    with pytest.raises(dipole.InvalidArgError, match="softcap"):
        dipole.attention(q[None], k[None], v[None], softcap=-1.0)
    with pytest.raises(dipole.InvalidArgError, match="alibi_slopes"):
        dipole.attention(q[None], k[None], v[None], alibi_slopes=[math.nan] * HQ)
