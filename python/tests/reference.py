"""The four variants written straight from their definitions in torch (float64 in the tests),
independent of the C library's reference: autograd of these gives the expected gradients.
The score modifiers (soft-cap, ALiBi, an additive bias) apply in that order to s = scale q.k
before the variant; packed batches (cu_seqlens) run sequence by sequence (attention_packed).
Also the bound the autograd tests compare with (rms_bound) and the check of a DipoleAttention
block against the same block written in eager torch (module_against_eager)."""

import math

import torch


def visible(B, Nq, Nk, causal=False, window=(-1, -1), key_lengths=None):
    """[B, 1, Nq, Nk] bool: which keys each query row sees (bottom-right aligned diagonal)."""
    L = torch.full((B,), Nk) if key_lengths is None else torch.as_tensor(key_lengths)
    i = torch.arange(Nq)[None, :, None]
    j = torch.arange(Nk)[None, None, :]
    diag = i + L[:, None, None] - Nq
    vis = j < L[:, None, None]
    if causal:
        vis = vis & (j <= diag)
    if window[0] >= 0:
        vis = vis & (j >= diag - window[0])
    if window[1] >= 0:
        vis = vis & (j <= diag + window[1])
    return vis[:, None]


def attention(q, k, v, v2=None, *, variant="softmax", causal=False, window=(-1, -1), scale=None,
              key_lengths=None, pos_weight=None, neg_weight=None, alibi_slopes=None,
              softcap=0.0, bias=None):
    """(out [B, Nq, Hq, d], lse [poles, B, Hq, Nq]) for q [B, Nq, Hq, d], k, v, v2
    [B, Nk, Hkv, d]. alibi_slopes [Hq]; bias broadcastable to [B, Hq, Nq, Nk], -inf hides a
    key."""
    B, Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    if v2 is not None:
        v2 = v2.repeat_interleave(rep, 2)
    scale = 1 / math.sqrt(D) if scale is None else scale
    s = scale * torch.einsum("bihd,bjhd->bhij", q, k)
    vis = visible(B, Nq, Nk, causal, window, key_lengths)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if alibi_slopes is not None:
        # distance from the bottom-right diagonal (of the key length, like the causal mask)
        L = torch.full((B,), Nk) if key_lengths is None else torch.as_tensor(key_lengths)
        i = torch.arange(Nq)[None, :, None]
        j = torch.arange(Nk)[None, None, :]
        dist = (i + L[:, None, None] - Nq - j).abs().to(s.dtype)  # [B, Nq, Nk]
        s = s - torch.as_tensor(alibi_slopes, dtype=s.dtype)[None, :, None, None] * dist[:, None]
    if bias is not None:
        s = s + torch.as_tensor(bias, dtype=s.dtype)
        vis = vis & (s > -math.inf)
        s = torch.where(vis, s, torch.zeros((), dtype=s.dtype))  # no inf reaches |s| or -s

    def weights(logits):
        # Masked keys get a huge negative logit, then weight 0: a row that sees no key gives 0
        # (and no NaN, in the forward or the backward).
        p = torch.softmax(logits.masked_fill(~vis, -1e30), -1) * vis
        lse = torch.logsumexp(logits.masked_fill(~vis, -math.inf), -1)
        return p, lse

    def mix(p, val):
        return torch.einsum("bhij,bjhd->bihd", p, val)

    if variant == "softmax":
        p, lse = weights(s)
        return mix(p, v), lse[None]
    if variant == "signexp":
        p, lse = weights(s.abs())
        return mix(torch.sign(s) * p, v), lse[None]
    if variant == "routed":
        p, lse = weights(s.abs())
        pos = (s > 0).to(p.dtype)
        return mix(p * pos, v) + mix(p * (1 - pos), v2), lse[None]
    if variant == "two_pole":
        pp, lse_p = weights(s)
        pn, lse_n = weights(-s)
        a = torch.ones(Hq, dtype=q.dtype) if pos_weight is None else pos_weight
        b = torch.ones(Hq, dtype=q.dtype) if neg_weight is None else neg_weight
        out = a[:, None] * mix(pp, v) + b[:, None] * mix(pn, v2)
        return out, torch.stack([lse_p, lse_n])
    raise ValueError(variant)


def attention_packed(q, k, v, v2=None, *, cu_seqlens_q, cu_seqlens_k, bias=None, **kw):
    """FlashAttention's varlen layout: q [total_q, Hq, d], k, v, v2 [total_k, Hkv, d];
    sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b+1] against keys
    cu_seqlens_k[b]:cu_seqlens_k[b+1], each an unpacked attention of its own (batch 1) with
    the bias's block of packed rows and keys. (out [total_q, Hq, d], lse [poles, Hq, total_q])."""
    Hq = q.shape[1]
    if bias is not None:
        bias = torch.as_tensor(bias, dtype=q.dtype)
        bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape))
        bias = bias.expand(1, Hq, q.shape[0], k.shape[0])
    outs, lses = [], []
    for b in range(len(cu_seqlens_q) - 1):
        qa, qb = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        ka, kb = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        part = [x[None, ka:kb] if x is not None else None for x in (k, v, v2)]
        sb = bias[:, :, qa:qb, ka:kb] if bias is not None else None
        out, lse = attention(q[None, qa:qb], *part, bias=sb, **kw)
        outs.append(out[0])
        lses.append(lse[:, 0])
    return torch.cat(outs, 0), torch.cat(lses, -1)


def rms_bound(got, want, atol, rtol, extra_rms=0.0):
    """|got - ref| <= atol + rtol |ref| + extra_rms * rms(ref), elementwise; the message names
    the worst element."""
    got, want = got.double(), want.double()
    bound = atol + rtol * want.abs() + extra_rms * want.pow(2).mean().sqrt()
    err = (got - want).abs()
    ratio = err / bound
    worst = int(ratio.argmax())
    assert bool((err <= bound).all()), (
        f"worst |got - ref| {err.flatten()[worst]:.3g} > {bound.flatten()[worst]:.3g} "
        f"(got {got.flatten()[worst]:.6g}, ref {want.flatten()[worst]:.6g})")


def module_against_eager(m, x, eager):
    """Runs module m on x and eager(m, x), its computation in plain torch on m's parameters, each
    with the loss mean(y^2) backward; float32 on both sides, so the output must agree within
    1e-5 + 1e-3 |ref| and every parameter's gradient within 1e-5 + 1e-3 |ref| + 1e-3 rms(ref).
    Returns m's own gradients by parameter name."""
    y = m(x)
    y.square().mean().backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ref = eager(m, x)
    ref.square().mean().backward()
    assert y.shape == ref.shape, f"output shape {tuple(y.shape)}, eager {tuple(ref.shape)}"
    rms_bound(y, ref, atol=1e-5, rtol=1e-3)
    for n, p in m.named_parameters():
        rms_bound(got[n], p.grad, atol=1e-5, rtol=1e-3, extra_rms=1e-3)
    return got
