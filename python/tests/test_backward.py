"""dipole.torch.attention's gradients (through dipole_attention_backward) against float64
autograd of the reference formulas: every variant, GQA, causal/window, key lengths, the pole
weights, half storage; and DipoleAttention against the same block written in eager torch."""

import numpy as np
import pytest
import torch

import dipole
import dipole.torch as dt
import reference

VARIANTS = ["softmax", "signexp", "routed", "two_pole"]
MASKS = {
    "none": dict(),
    "causal+lengths": dict(causal=True, key_lengths=[13, 6]),
    "window": dict(window=(3, 1)),
}
B, NQ, NK, HQ, HKV, D = 2, 9, 13, 4, 2, 16


def leaves(gen, shapes, dtype=torch.float32):
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
            for s in shapes]


def run_both(variant, kw, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qs, ks = (B, NQ, HQ, D), (B, NK, HKV, D)
    q, k, v, v2 = leaves(gen, [qs, ks, ks, ks], dtype)
    reads_v2 = variant in ("routed", "two_pole")
    w = {}
    if variant == "two_pole":
        w = dict(pos_weight=torch.tensor([1.0, 0.5, -2.0, 0.25], requires_grad=True),
                 neg_weight=torch.tensor([0.75, 1.0, 1.5, -1.0], requires_grad=True))
    dout = torch.randn(qs, generator=gen, dtype=torch.float64)
    ins = [q, k, v] + ([v2] if reads_v2 else [])
    out = dt.attention(*ins, variant=variant, **kw, **w)
    (out.double() * dout).sum().backward()
    ref_ins = [x.detach().double().requires_grad_() for x in ins]
    ref_w = {n: t.detach().double().requires_grad_() for n, t in w.items()}
    ref_out, _ = reference.attention(*ref_ins, variant=variant, **kw, **ref_w)
    (ref_out * dout).sum().backward()
    got = [out] + [x.grad for x in ins] + [w[n].grad for n in sorted(w)]
    want = [ref_out] + [x.grad for x in ref_ins] + [ref_w[n].grad for n in sorted(w)]
    return got, want


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients(ctx, variant, mask):
    got, want = run_both(variant, dict(MASKS[mask]))
    names = ["out", "dq", "dk", "dv", "dv2", "dpos_weight", "dneg_weight"]
    if variant not in ("routed", "two_pole"):
        names.remove("dv2")
    for name, g, w in zip(names, got, want):
        assert g is not None, f"{name} is missing"
        assert g.shape == w.shape and g.dtype == torch.float32
        # float32 kernels against float64 autograd
        reference.rms_bound(g, w, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_gradients(ctx, dtype):
    tdt = getattr(torch, dtype)
    got, want = run_both("signexp", dict(causal=True), dtype=tdt)
    # README, "Storage": rtol 2^-10 (fp16) or 2^-7 (bf16), and gradients add 8 rtol rms of the
    # gradient; the reference runs in float64 on the rounded inputs.
    rtol = 2.0 ** -10 if dtype == "float16" else 2.0 ** -7
    for g, w in zip(got, want):
        assert g.dtype == tdt
        reference.rms_bound(g, w, atol=3e-5, rtol=rtol, extra_rms=8 * rtol)


def test_gradcheck_against_own_forward(ctx):
    """The analytic gradients match finite differences of dipole's own forward (float32:
    loose), so forward and backward agree with each other, not only with the reference."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = leaves(gen, [(1, 5, 2, D), (1, 7, 2, D), (1, 7, 2, D)])
    dout = torch.randn(1, 5, 2, D, generator=gen)
    out = dt.attention(q, k, v, variant="signexp")
    (out * dout).sum().backward()
    eps = 1e-2
    i = (0, 2, 1, 3)
    with torch.no_grad():
        qp, qm = q.clone(), q.clone()
        qp[i] += eps
        qm[i] -= eps
        num = ((dipole.attention(qp, k, v, variant="signexp") -
                dipole.attention(qm, k, v, variant="signexp")) * dout).sum() / (2 * eps)
    assert abs(float(num) - float(q.grad[i])) < 2e-3 * max(1.0, abs(float(num)))


def eager_block(m, x):
    """DipoleAttention's computation in plain torch, reading the module's parameters."""
    Bx, N, _ = x.shape
    hq, hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
    parts = torch.split(m.qkv(x), [hq * d] + [hkv * d] * (3 if m.variant.reads_v2 else 2), -1)
    q = parts[0].view(Bx, N, hq, d)
    kv = [p.view(Bx, N, hkv, d) for p in parts[1:]]
    w = {}
    if m.pos_weight is not None:
        w = dict(pos_weight=m.pos_weight, neg_weight=m.neg_weight)
    out, _ = reference.attention(q, *kv, variant=m.variant.name.lower(), causal=m.causal, **w)
    return m.out_proj(out.reshape(Bx, N, hq * d))


@pytest.mark.parametrize("variant", ["two_pole", "signexp"])
def test_module_matches_eager(ctx, variant):
    torch.manual_seed(0)
    m = dt.DipoleAttention(64, 4, 2, variant=variant, causal=True, init_neg_weight=0.5)
    got = reference.module_against_eager(m, torch.randn(2, 11, 64), eager_block)
    if variant == "two_pole":
        assert got["pos_weight"].abs().sum() > 0 and got["neg_weight"].abs().sum() > 0
