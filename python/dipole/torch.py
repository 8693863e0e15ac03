"""dipole for PyTorch: a differentiable attention (torch.autograd.Function over
dipole_attention and dipole_attention_backward) and an nn.Module for a multi-head block."""

import math

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
    learnable, starting at 1 and init_neg_weight.

    DIFF is the Diff Transformer's block (arXiv 2410.05258): each of the num_heads heads has two
    q and k heads of head_dim = embed_dim / (2 num_heads), the pole fastest, and one v head of
    2 head_dim; alpha = 1 and beta = -lambda with lambda = exp(lambda_q1 . lambda_k1) -
    exp(lambda_q2 . lambda_k2) + lambda_init, one lambda for all heads, its vectors learnable
    from N(0, 0.1^2); lambda_init is 0.8 - 0.6 exp(-0.3 layer_index) unless given. Each head's
    output then goes through an RMS norm (learnable gain, eps 1e-5) and is multiplied by
    1 - lambda_init, as in the paper."""

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, *, variant="softmax",
                 causal=True, window=(-1, -1), bias=True, scale=None, init_neg_weight=1.0,
                 layer_index=0, lambda_init=None, context=None, device=None, dtype=None):
        super().__init__()
        self.variant = _core.variant_of(variant)
        diff = self.variant == _core.Variant.DIFF
        per_head = 2 * num_heads if diff else num_heads
        if embed_dim % per_head:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of "
                             f"{'2 num_heads' if diff else 'num_heads'} {per_head}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads {self.num_kv_heads} does not divide num_heads "
                             f"{num_heads}")
        self.head_dim = embed_dim // per_head
        self.head_dim_v = 2 * self.head_dim if diff else self.head_dim
        self.causal, self.window, self.scale, self.context = causal, tuple(window), scale, context
        kw = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(embed_dim, sum(self._cuts()), bias=bias, **kw)
        self.out_proj = nn.Linear(num_heads * self.head_dim_v, embed_dim, bias=bias, **kw)
        if self.variant == _core.Variant.TWO_POLE:
            self.pos_weight = nn.Parameter(torch.ones(num_heads, device=device))
            self.neg_weight = nn.Parameter(torch.full((num_heads,), float(init_neg_weight),
                                                      device=device))
        else:
            self.register_parameter("pos_weight", None)
            self.register_parameter("neg_weight", None)
        if diff:
            self.lambda_init = (0.8 - 0.6 * math.exp(-0.3 * layer_index) if lambda_init is None
                                else float(lambda_init))
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                setattr(self, name, nn.Parameter(
                    torch.empty(self.head_dim, **kw).normal_(0.0, 0.1)))
            self.subln_weight = nn.Parameter(torch.ones(self.head_dim_v, **kw))

    def _cuts(self):
        """Widths of q, k, v (and v2) in the packed projection."""
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        if self.variant == _core.Variant.DIFF:
            return [2 * hq * d, 2 * hkv * d, hkv * self.head_dim_v]
        return [hq * d] + [hkv * d] * (3 if self.variant.reads_v2 else 2)

    def forward(self, x, key_lengths=None):
        B, N, _ = x.shape
        parts = torch.split(self.qkv(x), self._cuts(), dim=-1)
        dims = [self.head_dim] * 2 + [self.head_dim_v] * 2
        views = [p.view(B, N, -1, dim) for p, dim in zip(parts, dims)]
        q, k, v = views[:3]
        v2 = views[3] if len(views) == 4 else None
        out = self.attend(q, k, v, v2, key_lengths)
        if self.variant == _core.Variant.DIFF:
            out = self.diff_norm(out)
        return self.out_proj(out.reshape(B, N, self.num_heads * self.head_dim_v))

    def diff_lambda(self):
        """DIFF's lambda (a 0-d tensor) from its learnable vectors."""
        return (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1)) -
                torch.exp(torch.dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)

    def diff_norm(self, out):
        """DIFF's per-head RMS norm and its 1 - lambda_init factor, on [B, N, heads, dv]."""
        rms = torch.rsqrt(out.float().pow(2).mean(-1, keepdim=True) + 1e-5)
        return (out.float() * rms).to(out.dtype) * self.subln_weight * (1 - self.lambda_init)

    def attend(self, q, k, v, v2, key_lengths=None):
        """The attention proper, [B, N, heads, head_dim] in and [B, N, num_heads, head_dim_v]
        out (DIFF: 2 num_heads and 2 num_kv_heads q and k heads): dipole's. A subclass may put
        another implementation here (the training example compares eager torch's)."""
        pos, neg = self.pos_weight, self.neg_weight
        if self.variant == _core.Variant.DIFF:
            neg = (-self.diff_lambda()).expand(self.num_heads)
        return attention(q, k, v, v2, variant=self.variant, causal=self.causal,
                         window=self.window, scale=self.scale, key_lengths=key_lengths,
                         pos_weight=pos, neg_weight=neg, context=self.context)

    def extra_repr(self):
        dv = f", head_dim_v={self.head_dim_v}" if self.head_dim_v != self.head_dim else ""
        return (f"variant={self.variant.name.lower()}, heads={self.num_heads}, "
                f"kv_heads={self.num_kv_heads}, head_dim={self.head_dim}{dv}, "
                f"causal={self.causal}")


__all__ = ["attention", "DipoleAttention"]
