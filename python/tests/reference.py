"""The four variants written straight from their definitions in torch (float64 in the tests),
independent of the C library's reference: autograd of these gives the expected gradients."""

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
              key_lengths=None, pos_weight=None, neg_weight=None):
    """(out [B, Nq, Hq, d], lse [poles, B, Hq, Nq]) for q [B, Nq, Hq, d], k, v, v2
    [B, Nk, Hkv, d]."""
    B, Nq, Hq, D = q.shape
    Nk, Hkv = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    if v2 is not None:
        v2 = v2.repeat_interleave(rep, 2)
    scale = 1 / math.sqrt(D) if scale is None else scale
    s = scale * torch.einsum("bihd,bjhd->bhij", q, k)
    vis = visible(B, Nq, Nk, causal, window, key_lengths)

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
