#!/usr/bin/env python3
"""A small Cogformer trained through dipole, and the same model through eager PyTorch.

Cogformer (arXiv 2411.07176): softmax attention in the first and last layer, Cog attention
(SIGNEXP: sign(s) softmax(|s|), so a key can weigh negatively) in between. A character-level
language model on a text read from disk (default: this repository's README), trained for
--steps steps on the CPU twice from the same seed -- the attention through dipole
(dipole.torch.DipoleAttention on the OpenCL device), then written in eager torch -- with the
same batches. Prints both runs' losses and times, the largest step-by-step difference, and
writes a loss-curve PNG. Exits 1 when the losses differ by more than --tol at some step.

The two runs start equal and drift apart as training amplifies float32 rounding (Adam divides
each step by the gradient's running scale, so tiny differences in small gradients become
visible ones): a third run, eager torch with each q.k summed as two halves (the same formula, other
rounding), measures that floor (--no-floor skips it).

    python3 examples/train_cogformer.py [--steps 200] [--plot docs/cogformer_loss.png]
"""

import argparse
import math
import os
import struct
import sys
import time
import zlib

import torch
from torch import nn

import dipole.torch as dt

HERE = os.path.dirname(os.path.abspath(__file__))


class EagerAttention(dt.DipoleAttention):
    """The same block with the attention written out in torch: the comparison run."""

    split_dot = False

    def attend(self, q, k, v, v2, key_lengths=None):
        n = q.shape[1]
        if self.split_dot:
            h = self.head_dim // 2
            s = (torch.einsum("bihd,bjhd->bhij", q[..., :h], k[..., :h]) +
                 torch.einsum("bihd,bjhd->bhij", q[..., h:], k[..., h:]))
        else:
            s = torch.einsum("bihd,bjhd->bhij", q, k)
        s = s / math.sqrt(self.head_dim)
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        if self.variant == dt._core.Variant.SOFTMAX:
            p = torch.softmax(s.masked_fill(future, -math.inf), -1)
        else:  # SIGNEXP
            p = torch.sign(s) * torch.softmax(s.abs().masked_fill(future, -math.inf), -1)
        return torch.einsum("bhij,bjhd->bihd", p, v)


class EagerSplitDot(EagerAttention):
    """The same formulas with each q.k summed as two halves: equal in exact arithmetic, so its
    drift from EagerAttention is what float32 rounding alone does to the training run."""

    split_dot = True


class Block(nn.Module):
    def __init__(self, attn_cls, dim, heads, variant):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn_cls(dim, heads, variant=variant, causal=True, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Cogformer(nn.Module):
    """Softmax first and last, signexp in between."""

    def __init__(self, attn_cls, vocab, dim=64, heads=4, layers=4, context=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(context, dim) * 0.02)
        variants = ["softmax"] + ["signexp"] * (layers - 2) + ["softmax"]
        self.blocks = nn.ModuleList(Block(attn_cls, dim, heads, v) for v in variants)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def train(attn_cls, data, vocab, args):
    torch.manual_seed(args.seed)
    model = Cogformer(attn_cls, vocab, args.dim, args.heads, args.layers, args.context)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        starts = torch.randint(0, len(data) - args.context - 1, (args.batch,), generator=batches)
        x = torch.stack([data[s:s + args.context] for s in starts])
        y = torch.stack([data[s + 1:s + args.context + 1] for s in starts])
        loss = nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


# ---- the plot: matplotlib where installed, else a plain raster written here
def plot(path, curves, diffs, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return raster_plot(path, curves)  # no text: the numbers are printed
    fig, (ax, dx) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1.4]})
    for (name, ys), style in zip(curves.items(), ["-", "--"]):
        ax.plot(range(1, len(ys) + 1), ys, style, label=name, linewidth=1.2)
    ax.set_ylabel("training loss (nats/char)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    for (name, d), color in zip(diffs.items(), ["k", "tab:orange"]):
        dx.plot(range(1, len(d) + 1), [max(x, 1e-9) for x in d], color=color, linewidth=0.8,
                label=name)
    dx.set_yscale("log")
    dx.set_ylabel("|loss difference|")
    dx.legend(fontsize=7)
    dx.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def raster_plot(path, curves, w=640, h=360, pad=24):
    """Axes and one line per curve (red, blue), no text: a PNG from zlib alone."""
    img = bytearray(b"\xff" * (w * h * 3))
    ys = [y for c in curves.values() for y in c]
    lo, hi = min(ys), max(ys)
    n = max(len(c) for c in curves.values())

    def put(x, y, rgb):
        if 0 <= x < w and 0 <= y < h:
            img[(y * w + x) * 3:(y * w + x) * 3 + 3] = bytes(rgb)

    for x in range(pad, w - pad):
        put(x, h - pad, (0, 0, 0))
    for y in range(pad, h - pad + 1):
        put(pad, y, (0, 0, 0))
    for c, rgb in zip(curves.values(), [(200, 30, 30), (30, 60, 200)]):
        pts = [(pad + i * (w - 2 * pad) // max(n - 1, 1),
                h - pad - int((y - lo) / (hi - lo or 1) * (h - 2 * pad))) for i, y in enumerate(c)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            for t in range(max(abs(x1 - x0), abs(y1 - y0)) + 1):
                f = t / max(abs(x1 - x0), abs(y1 - y0), 1)
                put(round(x0 + f * (x1 - x0)), round(y0 + f * (y1 - y0)), rgb)
    rows = b"".join(b"\x00" + bytes(img[y * w * 3:(y + 1) * w * 3]) for y in range(h))

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data +
                struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default=os.path.join(HERE, "..", "README.md"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=2e-2,
                    help="largest |loss(dipole) - loss(eager)| allowed at any step")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="also train eager torch with q.k summed in two halves: the float32 rounding floor")
    ap.add_argument("--plot", default="cogformer_loss.png", help="PNG path ('' for none)")
    args = ap.parse_args(argv)

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    print(f"text: {args.text} ({len(text)} chars, vocabulary {len(chars)}); {args.layers} layers "
          f"(softmax, {args.layers - 2} x signexp, softmax), dim {args.dim}, {args.heads} heads, "
          f"context {args.context}, batch {args.batch}, {args.steps} steps")
    runs = {}
    kinds = [("dipole", dt.DipoleAttention), ("eager torch", EagerAttention)]
    if args.floor:
        kinds.append(("eager, split q.k", EagerSplitDot))
    for name, cls in kinds:
        losses, secs = train(cls, data, len(chars), args)
        runs[name] = losses
        print(f"{name:18s}: {secs:6.2f} s ({1e3 * secs / args.steps:.1f} ms/step), loss "
              f"{losses[0]:.4f} -> {losses[-1]:.4f}")
    a, b = runs["dipole"], runs["eager torch"]
    diffs = {"|dipole - eager|": [abs(x - y) for x, y in zip(a, b)]}
    if args.floor:
        diffs["|split q.k - eager| (float32 rounding)"] = [
            abs(x - y) for x, y in zip(runs["eager, split q.k"], b)]
    d = diffs["|dipole - eager|"]
    worst = max(range(len(d)), key=d.__getitem__)
    for i in sorted(set([0, len(a) - 1] + list(range(0, len(a), max(1, len(a) // 10))))):
        print(f"  step {i + 1:4d}: dipole {a[i]:.6f}  eager {b[i]:.6f}  |diff| {d[i]:.2e}")
    first = min(10, len(d))
    print(f"largest |loss difference| over the first {first} steps: {max(d[:first]):.2e}")
    ok = d[worst] <= args.tol
    print(f"largest |loss difference|: {d[worst]:.2e} at step {worst + 1} "
          f"({'within' if ok else 'beyond'} the bound {args.tol:g})")
    if args.floor:
        f = diffs["|split q.k - eager| (float32 rounding)"]
        print(f"float32 rounding alone (eager with q.k in two halves vs eager): largest "
              f"{max(f):.2e}, first {first} steps {max(f[:first]):.2e}")
    if args.plot:
        title = (f"Cogformer on {os.path.basename(args.text)}, {args.steps} steps: dipole vs "
                 f"eager torch, max |diff| {d[worst]:.1e}")
        curves = {k: runs[k] for k in ("dipole", "eager torch")}
        print(f"plot: {plot(args.plot, curves, diffs, title)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
