"""DIFF (differential attention) and a value head dim of its own (head_dim_v, inferred from v's
shape) through the Python front, against float64 torch formulas written here from the Diff
Transformer paper: out_h = alpha_h softmax(s0) V + beta_h softmax(s1) V, s_p = scale q_p.k_p,
q_p query head 2h + p, k_p key head 2hk + p (the pole fastest).

Reference level (dipole.reference, dipole.reference_backward: the library's CPU reference, no
device): forward out and lse, and gradients against float64 autograd of the formula.
Device level (dipole.attention, dipole.torch.attention with autograd): the same comparisons
through the device paths, numpy and torch, and head_dim_v != head_dim for the other variants.
Refusals: odd q or k head counts for DIFF, a v of the wrong heads, weights for a variant
without poles to weigh. DipoleAttention(variant="diff"), the paper's block, against the same block
written here in eager torch, output and every parameter's gradient."""

import math

import numpy as np
import pytest
import torch

import dipole
import dipole.torch as dt
import reference

B, NQ, NK, HQ, HKV, D = 2, 7, 11, 2, 1, 8
# the library's double reference on float32 inputs against float64 torch on the same values
REF_ATOL, REF_RTOL = 1e-5, 1e-5
# float32 kernels against float64, as test_forward and test_backward
DEV_ATOL, DEV_RTOL = 2e-5, 1e-4
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-3

CASES = {
    # head_dim_v = head_dim, causal GQA with key lengths, weights of both signs
    "causal-gqa": dict(hq=4, hkv=2, dv=D, kw=dict(causal=True, key_lengths=[11, 5]),
                       weights=([0.75, 1.0, 1.25, 0.5], [-0.5, 1.25, -1.0, 0.25])),
    # the Diff Transformer's layout: dv = 2 d, alpha 1, beta -lambda
    "paper": dict(hq=2, hkv=1, dv=2 * D, kw=dict(window=(3, 1)),
                  weights=([1.0, 1.0], [-0.2, -0.35])),
    # no weights given: alpha = beta = 1
    "unweighted": dict(hq=2, hkv=2, dv=4, kw=dict(), weights=None),
}


def diff_formula(q, k, v, pos_weight=None, neg_weight=None, *, causal=False, window=(-1, -1),
                 scale=None, key_lengths=None):
    """(out [B, Nq, Hq, dv], lse [2, B, Hq, Nq]) in the inputs' dtype (float64 here)."""
    Bq, Nq, H2, Dq = q.shape
    Nk, Hq, Hkv = k.shape[1], H2 // 2, k.shape[2] // 2
    rep = Hq // Hkv
    scale = 1 / math.sqrt(Dq) if scale is None else scale
    vis = reference.visible(Bq, Nq, Nk, causal, window, key_lengths)
    vr = v.repeat_interleave(rep, 2)
    a = torch.ones(Hq, dtype=q.dtype) if pos_weight is None else pos_weight
    b = torch.ones(Hq, dtype=q.dtype) if neg_weight is None else neg_weight
    outs, lses = [], []
    for p in range(2):
        qp = q[:, :, p::2]
        kp = k[:, :, p::2].repeat_interleave(rep, 2)
        s = scale * torch.einsum("bihd,bjhd->bhij", qp, kp)
        w = torch.softmax(s.masked_fill(~vis, -1e30), -1) * vis  # a row without keys gives 0
        lses.append(torch.logsumexp(s.masked_fill(~vis, -math.inf), -1))
        outs.append(torch.einsum("bhij,bjhd->bihd", w, vr))
    out = a[:, None] * outs[0] + b[:, None] * outs[1]
    return out, torch.stack(lses)


def make(case, seed=0, dtype=np.float32):
    c = CASES[case]
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, NQ, 2 * c["hq"], D)).astype(dtype)
    k = r.standard_normal((B, NK, 2 * c["hkv"], D)).astype(dtype)
    v = r.standard_normal((B, NK, c["hkv"], c["dv"])).astype(dtype)
    dout = r.standard_normal((B, NQ, c["hq"], c["dv"])).astype(dtype)
    w = {}
    if c["weights"]:
        w = dict(pos_weight=np.array(c["weights"][0], np.float32),
                 neg_weight=np.array(c["weights"][1], np.float32))
    return q, k, v, dout, w, dict(c["kw"])


def f64(x):
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def expected(q, k, v, w, kw):
    tw = {n: f64(x) for n, x in w.items()}
    out, lse = diff_formula(f64(q), f64(k), f64(v), **tw, **kw)
    return out.numpy(), lse.numpy()


def expected_grads(q, k, v, dout, w, kw):
    """(dq, dk, dv, dpos, dneg) of sum(dout * out) by float64 autograd; dpos, dneg also when
    no weights are given (the gradient at alpha = beta = 1)."""
    hq = q.shape[2] // 2
    ins = [f64(x).requires_grad_() for x in (q, k, v)]
    ws = [f64(w["pos_weight"]) if w else torch.ones(hq, dtype=torch.float64),
          f64(w["neg_weight"]) if w else torch.ones(hq, dtype=torch.float64)]
    ws = [x.requires_grad_() for x in ws]
    out, _ = diff_formula(*ins, *ws, **kw)
    (out * f64(dout)).sum().backward()
    return [x.grad.numpy() for x in ins + ws]


def assert_close(got, want, atol, rtol, what):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    with np.errstate(invalid="ignore"):
        err = np.where(got == want, 0.0, np.abs(got - want))
    bound = atol + rtol * np.where(np.isfinite(want), np.abs(want), 0)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), (f"{what}: worst at {worst}: got {got[worst]:.7g}, want "
                                  f"{want[worst]:.7g}")


# ---------------------------------------------------------------- reference level (no device)

@pytest.mark.parametrize("case", list(CASES))
def test_reference_forward(case):
    q, k, v, _, w, kw = make(case)
    out, lse = dipole.reference(q, k, v, variant="diff", return_lse=True, **w, **kw)
    want, want_lse = expected(q, k, v, w, kw)
    assert_close(out, want, REF_ATOL, REF_RTOL, "out")
    assert_close(lse, want_lse, REF_ATOL, REF_RTOL, "lse")


@pytest.mark.parametrize("case", list(CASES))
def test_reference_backward(case):
    q, k, v, dout, w, kw = make(case, seed=1)
    dq, dk, dv, dv2, dpos, dneg = dipole.reference_backward(q, k, v, None, dout, variant="diff",
                                                            **w, **kw)
    assert dv2 is None
    for name, g, e in zip(("dq", "dk", "dv", "dpos_weight", "dneg_weight"),
                          (dq, dk, dv, dpos, dneg), expected_grads(q, k, v, dout, w, kw)):
        assert_close(g, e, REF_ATOL, REF_RTOL, name)


def test_reference_head_dim_v_other_variants():
    """head_dim_v != head_dim for every other variant, through the reference, against the
    tests' float64 formulas (reference.py, whose value mix takes v's own head dim)."""
    r = np.random.default_rng(5)
    q = r.standard_normal((B, NQ, 4, D)).astype(np.float32)
    k = r.standard_normal((B, NK, 2, D)).astype(np.float32)
    v, v2 = (r.standard_normal((B, NK, 2, 12)).astype(np.float32) for _ in range(2))
    for variant in ("softmax", "signexp", "routed", "two_pole"):
        vv2 = v2 if variant in ("routed", "two_pole") else None
        out, lse = dipole.reference(q, k, v, vv2, variant=variant, causal=True,
                                    return_lse=True)
        want, want_lse = reference.attention(f64(q), f64(k), f64(v),
                                             f64(vv2) if vv2 is not None else None,
                                             variant=variant, causal=True)
        assert out.shape == (B, NQ, 4, 12)
        assert_close(out, want.numpy(), REF_ATOL, REF_RTOL, f"{variant} out")
        assert_close(lse, want_lse.numpy(), REF_ATOL, REF_RTOL, f"{variant} lse")


# ---------------------------------------------------------------- refusals (no kernel runs)

def test_odd_heads_refused(ctx):
    q, k, v, _, _, _ = make("paper")
    for call in (dipole.attention, dipole.reference):
        with pytest.raises(ValueError, match=r"q has shape \(2, 7, 3, 8\): variant diff takes q "
                                             r"with an even number of heads"):
            call(q[:, :, :3], k, v, variant="diff")
        with pytest.raises(ValueError, match=r"k has shape \(2, 11, 1, 8\): variant diff takes "
                                             r"k with an even number of heads"):
            call(q, k[:, :, :1], v, variant="diff")
    with pytest.raises(dipole.InvalidArgError, match=r"q has shape \(2, 7, 3, 8\)"):
        dt.attention(torch.from_numpy(q[:, :, :3].copy()), torch.from_numpy(k),
                     torch.from_numpy(v), variant="diff")


def test_module_shape_refused():
    with pytest.raises(ValueError, match="embed_dim 36 is not a multiple of 2 num_heads 8"):
        dt.DipoleAttention(36, 4, variant="diff")


def test_value_shape_refused(ctx):
    q, k, v, _, _, _ = make("paper")
    # v with k's heads (2 Hkv) rather than Hkv
    with pytest.raises(dipole.InvalidArgError, match=r"v has shape \(2, 11, 2, 16\), expected "
                                                     r"\[2, 11, 1, head_dim_v\]"):
        dipole.attention(q, k, np.concatenate([v, v], 2), variant="diff")
    with pytest.raises(dipole.InvalidArgError, match="does not read it"):
        dipole.attention(q, k, v, v, variant="diff")
    with pytest.raises(dipole.InvalidArgError, match="pole weights of TWO_POLE and DIFF"):
        dipole.attention(q[:, :, :2], k[:, :, :1], v, variant="softmax", pos_weight=[1.0, 1.0])


# ---------------------------------------------------------------- device level (the kernels)

@pytest.mark.parametrize("case", list(CASES))
def test_forward(ctx, case):
    q, k, v, _, w, kw = make(case)
    want, want_lse = expected(q, k, v, w, kw)
    out, lse = dipole.attention(q, k, v, variant="diff", return_lse=True, **w, **kw)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert_close(out, want, DEV_ATOL, DEV_RTOL, "out")
    assert_close(lse, want_lse, DEV_ATOL, DEV_RTOL, "lse")
    tout = dipole.attention(*(torch.from_numpy(x) for x in (q, k, v)), variant="diff",
                            **{n: torch.from_numpy(x) for n, x in w.items()}, **kw)
    assert isinstance(tout, torch.Tensor)
    assert_close(tout.numpy(), want, DEV_ATOL, DEV_RTOL, "out (torch)")


@pytest.mark.parametrize("case", list(CASES))
def test_backward(ctx, case):
    """dipole.torch.attention's autograd: dq, dk, dv and the weight gradients, as TWO_POLE's."""
    q, k, v, dout, w, kw = make(case, seed=2)
    ins = [torch.from_numpy(x).requires_grad_() for x in (q, k, v)]
    tw = {n: torch.from_numpy(x).requires_grad_() for n, x in w.items()}
    out = dt.attention(*ins, variant="diff", **tw, **kw)
    (out.double() * f64(dout)).sum().backward()
    e = expected_grads(q, k, v, dout, w, kw)
    assert_close(out.detach().numpy(), expected(q, k, v, w, kw)[0], DEV_ATOL, DEV_RTOL, "out")
    for name, x, want in zip(("dq", "dk", "dv"), ins, e[:3]):
        assert x.grad is not None and x.grad.shape == x.shape, name
        assert_close(x.grad.numpy(), want, GRAD_ATOL, GRAD_RTOL, name)
    for name, want in zip(("pos_weight", "neg_weight"), e[3:]):
        if name in tw:
            assert_close(tw[name].grad.numpy(), want, GRAD_ATOL, GRAD_RTOL, f"d{name}")


@pytest.mark.parametrize("variant", ["softmax", "two_pole"])
def test_head_dim_v_device(ctx, variant):
    """head_dim_v != head_dim (v's shape) for a variant of one score map, forward and
    autograd against float64 autograd of the tests' formulas."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(B, NQ, 4, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(B, NK, 2, 16, generator=gen, dtype=torch.float64)
    v, v2 = (torch.randn(B, NK, 2, 24, generator=gen, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(B, NQ, 4, 24, generator=gen, dtype=torch.float64)
    ins = [q, k, v] + ([v2] if variant == "two_pole" else [])
    got = [x.float().requires_grad_() for x in ins]
    want = [x.clone().requires_grad_() for x in ins]
    out = dt.attention(*got, variant=variant, causal=True)
    ref, _ = reference.attention(*want, variant=variant, causal=True)
    assert out.shape == (B, NQ, 4, 24)
    (out.double() * dout).sum().backward()
    (ref * dout).sum().backward()
    assert_close(out.detach().numpy(), ref.detach().numpy(), DEV_ATOL, DEV_RTOL, "out")
    for name, g, w in zip(("dq", "dk", "dv", "dv2"), got, want):
        assert_close(g.grad.numpy(), w.grad.numpy(), GRAD_ATOL, GRAD_RTOL, name)


def diff_block(m, x):
    """DipoleAttention(variant="diff")'s computation in eager torch from the paper: the
    projection split into q, k (two heads a head, the pole fastest) and v (2 head_dim), lambda
    re-parameterised, diff_formula, the per-head RMS norm times (1 - lambda_init), out_proj."""
    Bx, N, _ = x.shape
    h, hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
    q, k, v = torch.split(m.qkv(x), [2 * h * d, 2 * hkv * d, hkv * 2 * d], -1)
    lam = (torch.exp((m.lambda_q1 * m.lambda_k1).sum()) -
           torch.exp((m.lambda_q2 * m.lambda_k2).sum()) + m.lambda_init)
    out, _ = diff_formula(q.reshape(Bx, N, 2 * h, d), k.reshape(Bx, N, 2 * hkv, d),
                          v.reshape(Bx, N, hkv, 2 * d), torch.ones(h), -lam * torch.ones(h),
                          causal=m.causal)
    out = out / out.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    out = out * m.subln_weight * (1 - m.lambda_init)
    return m.out_proj(out.reshape(Bx, N, h * 2 * d))


def test_module_matches_eager(ctx):
    torch.manual_seed(3)
    m = dt.DipoleAttention(64, 4, 2, variant="diff", causal=True, layer_index=2)
    assert m.head_dim == 8 and m.head_dim_v == 16
    assert m.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.6))
    with torch.no_grad():
        m.subln_weight.uniform_(0.5, 1.5)  # a gain other than 1, so that its use is checked
    got = reference.module_against_eager(m, torch.randn(2, 11, 64), diff_block)
    assert all(got[n].abs().sum() > 0 for n in ("lambda_q1", "lambda_k2", "subln_weight"))
