"""dipole for PyTorch: a differentiable attention (torch.autograd.Function over
dipole_attention and dipole_attention_backward) and an nn.Module for a multi-head block."""

import torch
from torch import nn

from . import _core


class _Attention(torch.autograd.Function):
    """Forward keeps out and lse; backward hands them to dipole_attention_backward."""

    @staticmethod
    def forward(ctx, q, k, v, v2, pos_weight, neg_weight, bias, opts):
        out, lse = _core.forward(q, k, v, v2, pos_weight=pos_weight, neg_weight=neg_weight,
                                 bias=bias, return_lse=True, **opts)
        ctx.save_for_backward(q, k, v, v2, pos_weight, neg_weight, bias, out, lse)
        ctx.opts = opts
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, v2, pos_weight, neg_weight, bias, out, lse = ctx.saved_tensors
        dq, dk, dv, dv2, dpos, dneg = _core.backward(
            q, k, v, v2, out, dout.to(out.dtype), lse, pos_weight=pos_weight,
            neg_weight=neg_weight, bias=bias, **ctx.opts)

        def weight_grad(g, w, index):
            if w is None or not ctx.needs_input_grad[index]:
                return None
            return torch.from_numpy(g).to(w.dtype).reshape(w.shape)

        return (dq, dk, dv, dv2, weight_grad(dpos, pos_weight, 4),
                weight_grad(dneg, neg_weight, 5), None, None)  # no gradient to the bias


def attention(q, k, v, v2=None, *, variant="softmax", causal=False, window=(-1, -1), scale=None,
              key_lengths=None, pos_weight=None, neg_weight=None, cu_seqlens_q=None,
              cu_seqlens_k=None, alibi_slopes=None, softcap=0.0, bias=None, return_lse=False,
              context=None):
    """dipole.attention on torch CPU tensors (the same arguments, packed sequences, ALiBi,
    soft-capping and the bias included), differentiable in q, k, v, v2, pos_weight and
    neg_weight (the gradients come from the library's backward pass). The bias gets no
    gradient (its .grad stays None even when it requires one), nor do alibi_slopes and softcap
    (constants); lse, when returned, carries no gradient."""
    variant = _core.variant_of(variant)
    opts = dict(variant=variant, causal=causal, window=tuple(window), scale=scale,
                key_lengths=key_lengths, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                alibi_slopes=alibi_slopes, softcap=softcap, context=context)
    if bias is not None and not isinstance(bias, torch.Tensor):
        bias = torch.as_tensor(bias)
    out, lse = _Attention.apply(q, k, v, v2, pos_weight, neg_weight, bias, opts)
    return (out, lse) if return_lse else out


class DipoleAttention(nn.Module):
    """Multi-head self-attention through dipole: x [B, N, embed_dim] -> [B, N, embed_dim].

    One packed projection gives q, k, v (and v2 where the variant reads it); the heads are
    strided views of it, handed to the library without copies. num_kv_heads < num_heads is
    GQA. For TWO_POLE the per-head pole weights alpha (pos_weight) and beta (neg_weight) are
    learnable, starting at 1 and init_neg_weight."""

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, *, variant="softmax",
                 causal=True, window=(-1, -1), bias=True, scale=None, init_neg_weight=1.0,
                 context=None, device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.variant = _core.variant_of(variant)
        if self.variant == _core.Variant.DIFF:
            raise ValueError("DipoleAttention has no DIFF projections (two q and k heads a "
                             "head) yet; call dipole.torch.attention(q, k, v, variant='diff')")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} does not divide num_heads "
                             f"{num_heads}")
        self.head_dim = embed_dim // num_heads
        self.causal, self.window, self.scale, self.context = causal, tuple(window), scale, context
        kv_streams = 3 if self.variant.reads_v2 else 2
        width = (num_heads + kv_streams * self.num_kv_heads) * self.head_dim
        kw = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(embed_dim, width, bias=bias, **kw)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias, **kw)
        if self.variant == _core.Variant.TWO_POLE:
            self.pos_weight = nn.Parameter(torch.ones(num_heads, device=device))
            self.neg_weight = nn.Parameter(torch.full((num_heads,), float(init_neg_weight),
                                                      device=device))
        else:
            self.register_parameter("pos_weight", None)
            self.register_parameter("neg_weight", None)

    def forward(self, x, key_lengths=None):
        B, N, _ = x.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        packed = self.qkv(x)
        cuts = [hq * d] + [hkv * d] * (3 if self.variant.reads_v2 else 2)
        parts = torch.split(packed, cuts, dim=-1)
        q = parts[0].view(B, N, hq, d)
        k, v = (p.view(B, N, hkv, d) for p in parts[1:3])
        v2 = parts[3].view(B, N, hkv, d) if self.variant.reads_v2 else None
        out = self.attend(q, k, v, v2, key_lengths)
        return self.out_proj(out.reshape(B, N, hq * d))

    def attend(self, q, k, v, v2, key_lengths=None):
        """The attention proper, [B, N, heads, head_dim] in and out: dipole's. A subclass may
        put another implementation here (the training example compares eager torch's)."""
        return attention(q, k, v, v2, variant=self.variant, causal=self.causal,
                         window=self.window, scale=self.scale, key_lengths=key_lengths,
                         pos_weight=self.pos_weight, neg_weight=self.neg_weight,
                         context=self.context)

    def extra_repr(self):
        return (f"variant={self.variant.name.lower()}, heads={self.num_heads}, "
                f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, causal={self.causal}")


__all__ = ["attention", "DipoleAttention"]
