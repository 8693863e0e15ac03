#!/usr/bin/env python3
"""dipole against PyTorch on the same CPU, in one process, same inputs.

What a user would pick instead of dipole: torch's scaled_dot_product_attention for SOFTMAX
(its fused flash kernel on CPUs; in the forward rows on inputs already in its [B, H, N, d]
layout with GQA's KV heads already expanded, copies it does not time), and the reference
formulas in eager torch for the variants SDPA cannot express (SIGNEXP, ROUTED, TWO_POLE). dipole runs through its Python front
(python/dipole), which hands torch's memory to OpenCL in place where the device shares host
memory. Each case times both, alternating, and reports the min and median of each, the speed
ratio (torch time / dipole time, from the minima: > 1 means dipole is faster) and the largest
difference between their outputs (forward) or gradients (forward+backward).

    python3 bench/vs_torch.py                     # the default grid (~21 minutes here)
    python3 bench/vs_torch.py --quick --json r.json
    python3 bench/vs_torch.py --only decode

torch's OpenMP threads run with OMP_WAIT_POLICY=PASSIVE unless the environment sets it
(--omp-wait as-set leaves it alone): spinning after each torch op, they would take the cores
from the dipole call timed next. Any process that mixes torch ops and dipole calls on a CPU
wants the same setting.

Needs torch >= 2.0 (SDPA; `pip install torch` in a virtual environment: Debian's python3-torch
is 1.13) and a built library: the script loads python/dipole from this checkout and
build/libdipole.so unless DIPOLE_LIBRARY or an installed dipole package says otherwise."""
import argparse
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def need_torch():
    try:
        import torch
    except ImportError:
        sys.exit("vs_torch.py needs PyTorch >= 2.0: pip install torch (in a virtual environment)")
    major = int(torch.__version__.split(".")[0])
    if major < 2 or not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        sys.exit("vs_torch.py needs PyTorch >= 2.0 for scaled_dot_product_attention (found %s): "
                 "pip install torch" % torch.__version__)
    return torch


def load_dipole():
    try:
        import dipole  # an installed package
        return dipole
    except ImportError:
        pass
    sys.path.insert(0, os.path.join(ROOT, "python"))
    if "DIPOLE_LIBRARY" not in os.environ:
        lib = os.path.join(ROOT, "build", "libdipole.so")
        if not os.path.exists(lib):
            sys.exit("no dipole package and no %s: build first (meson setup build && ninja -C "
                     "build) or set DIPOLE_LIBRARY" % lib)
        os.environ["DIPOLE_LIBRARY"] = lib
    import dipole
    return dipole


# ---------------------------------------------------------------- torch's side

def expand_kv(x, group):
    """[B, Hkv, N, d] -> [B, Hq, N, d]: query head h reads KV head h // group."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def eager(torch, variant, q, k, v, v2, causal, alpha=None, beta=None):
    """The reference formulas in eager torch, [B, H, N, d] (heads second, as SDPA)."""
    d = q.shape[-1]
    group = q.shape[1] // k.shape[1]
    k, v = expand_kv(k, group), expand_kv(v, group)
    v2 = expand_kv(v2, group) if v2 is not None else None
    s = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    nq, nk = s.shape[-2:]
    mask = None
    if causal:
        i = torch.arange(nq).unsqueeze(1)
        j = torch.arange(nk).unsqueeze(0)
        mask = j <= i + nk - nq
    def masked(x):
        return x if mask is None else x.masked_fill(~mask, float("-inf"))
    if variant == "softmax":
        return torch.softmax(masked(s), -1) @ v
    if variant == "signexp":
        return (torch.softmax(masked(s.abs()), -1) * torch.sign(s)) @ v
    if variant == "routed":
        a = torch.softmax(masked(s.abs()), -1)
        pos = (s > 0).to(a.dtype)
        return (a * pos) @ v + (a * (1 - pos)) @ v2
    if variant == "two_pole":
        a, b = alpha.view(1, -1, 1, 1), beta.view(1, -1, 1, 1)
        return a * (torch.softmax(masked(s), -1) @ v) + b * (torch.softmax(masked(-s), -1) @ v2)
    raise ValueError(variant)


def torch_forward(torch, case, t):
    q, k, v, v2 = (x.transpose(1, 2) if x is not None else None for x in t[:4])
    if case["variant"] != "softmax":
        return eager(torch, case["variant"], q, k, v, v2, case["causal"], t[4],
                     t[5]).transpose(1, 2)
    group, nq, nk = q.shape[1] // k.shape[1], q.shape[2], k.shape[2]
    # A bottom-right causal mask is SDPA's is_causal where Nq = Nk, nothing for one row (it sees
    # every key) and a boolean mask otherwise.
    is_causal = case["causal"] and nq == nk
    mask = bottom_right(torch, nq, nk) if case["causal"] and 1 < nq != nk else None
    # SDPA's fused kernel takes as many KV heads as query heads: the expansion is part of what
    # a torch user runs (enable_gqa sends CPUs to the unfused math path).
    return torch.nn.functional.scaled_dot_product_attention(
        q, expand_kv(k, group), expand_kv(v, group), attn_mask=mask,
        is_causal=is_causal).transpose(1, 2)


def bottom_right(torch, nq, nk):
    i = torch.arange(nq).unsqueeze(1)
    j = torch.arange(nk).unsqueeze(0)
    return j <= i + nk - nq


# ---------------------------------------------------------------- the cases

def make_inputs(torch, case, requires_grad=False):
    g = torch.Generator().manual_seed(case["seed"])
    b, hq, hkv, nq, nk, d = (case[x] for x in ("batch", "heads_q", "heads_kv", "seq_q", "seq_k",
                                                 "head_dim"))
    def rnd(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float32)
        return x.requires_grad_(requires_grad)
    q, k, v = rnd(b, nq, hq, d), rnd(b, nk, hkv, d), rnd(b, nk, hkv, d)
    v2 = rnd(b, nk, hkv, d) if case["variant"] in ("routed", "two_pole") else None
    alpha = beta = None
    if case["variant"] == "two_pole":
        alpha = torch.linspace(0.5, 1.5, hq).requires_grad_(requires_grad)
        beta = torch.linspace(-0.5, 0.5, hq).requires_grad_(requires_grad)
    return [q, k, v, v2, alpha, beta]


def flops(case):
    """4 d per visible (row, key) pair (2 d for Q.K, 2 d for P.V), TWO_POLE 6 d; backward
    2.5x: dipole-bench's formula."""
    nq, nk = case["seq_q"], case["seq_k"]
    pairs = sum(min(nk, max(0, i + nk - nq + 1)) for i in range(nq)) if case["causal"] \
        else nq * nk
    per = 6 if case["variant"] == "two_pole" else 4
    f = case["batch"] * case["heads_q"] * pairs * per * case["head_dim"]
    return f * (3.5 if case["pass"] == "fwd+bwd" else 1)


def time_pair(torch, fns, reps, budget_s):
    """Times each callable of fns, alternating, `reps` rounds at most or until budget_s;
    returns per fn (min, median) in ms."""
    for f in fns:
        f()  # warm-up: JIT builds, allocator
    times = [[] for _ in fns]
    start = time.perf_counter()
    for r in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append((time.perf_counter() - t0) * 1e3)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return [(min(t), statistics.median(t)) for t in times]


def run_case(torch, dipole, dt, case, reps, budget_s):
    variant = case["variant"]
    causal = case["causal"]
    if case["pass"] == "fwd":
        t = make_inputs(torch, case)
        if variant == "softmax":
            # torch's best case: q, k, v already [B, H, N, d] and the KV heads already expanded
            # for SDPA (neither copy is timed)
            group = case["heads_q"] // case["heads_kv"]
            qt, kt, vt = (expand_kv(x.transpose(1, 2), g).contiguous()
                          for x, g in ((t[0], 1), (t[1], group), (t[2], group)))
            nq, nk = case["seq_q"], case["seq_k"]
            mask = bottom_right(torch, nq, nk) if causal and 1 < nq != nk else None
            def run_torch():
                with torch.no_grad():
                    return torch.nn.functional.scaled_dot_product_attention(
                        qt, kt, vt, attn_mask=mask,
                        is_causal=causal and nq == nk).transpose(1, 2)
        else:
            def run_torch():
                with torch.no_grad():
                    return torch_forward(torch, case, t)
        def run_dipole():
            return dipole.attention(t[0], t[1], t[2], t[3], variant=variant, causal=causal,
                                    pos_weight=t[4], neg_weight=t[5])
        diff = (run_torch() - run_dipole()).abs().max().item()
    else:
        t = make_inputs(torch, case, requires_grad=True)
        dout = torch.randn_like(t[0])
        leaves = [x for x in t if x is not None]
        def grads(out):
            return torch.autograd.grad(out, leaves, dout)
        def run_torch():
            return grads(torch_forward(torch, case, t))
        def run_dipole():
            return grads(dt.attention(t[0], t[1], t[2], t[3], variant=variant, causal=causal,
                                      pos_weight=t[4], neg_weight=t[5]))
        diff = max((a - b).abs().max().item() for a, b in zip(run_torch(), run_dipole()))
    (t_min, t_med), (d_min, d_med) = time_pair(torch, [run_torch, run_dipole], reps, budget_s)
    f = flops(case)
    return dict(case, torch_ms=t_min, torch_median_ms=t_med, dipole_ms=d_min,
                dipole_median_ms=d_med, speedup=t_min / d_min, max_diff=diff,
                torch_gflops=f / (t_min * 1e6), dipole_gflops=f / (d_min * 1e6),
                torch_impl="sdpa" if variant == "softmax" else "eager")


def grid(args):
    cases = []
    def add(**c):
        c.setdefault("batch", 1)
        c.setdefault("causal", False)
        c.setdefault("seed", len(cases) + 1)
        c["heads_kv"] = c.get("heads_kv", c["heads_q"])
        cases.append(c)
    seqs = [1024, 2048] if args.quick else [1024, 2048, 4096, 8192]
    dims = [64] if args.quick else [64, 128]
    variants = ["softmax", "signexp", "routed", "two_pole"]
    if args.only in (None, "prefill"):
        for d in dims:
            for n in seqs:
                for causal in (False, True):
                    for v in variants:
                        add(**{"pass": "fwd", "variant": v, "heads_q": 8, "seq_q": n, "seq_k": n,
                               "head_dim": d, "causal": causal})
    if args.only in (None, "backward"):
        for d in dims:
            for n in seqs[:2]:
                for v in ("softmax", "signexp"):
                    add(**{"pass": "fwd+bwd", "variant": v, "heads_q": 8, "seq_q": n,
                           "seq_k": n, "head_dim": d, "causal": True})
    if args.only in (None, "decode"):
        decode = [(1, 32, 8, 8192, 128), (1, 8, 8, 32768, 64), (4, 32, 8, 4096, 128)]
        if args.quick:
            decode = [(1, 32, 8, 4096, 128)]
        for b, hq, hkv, n, d in decode:
            add(**{"pass": "fwd", "variant": "softmax", "batch": b, "heads_q": hq,
                   "heads_kv": hkv, "seq_q": 1, "seq_k": n, "head_dim": d, "causal": True})
    return cases


HEAD = ("pass", "variant", "torch", "BxHq:Hkv", "Nq", "Nk", "d", "cau", "torch_ms", "dipole_ms",
        "speedup", "t_GF/s", "d_GF/s", "max_diff")
FMT = "%-7s %-8s %-5s %-9s %6s %6s %4s %-3s %9s %9s %7s %7s %7s %9s"


def row_text(r):
    return FMT % (r["pass"], r["variant"], r["torch_impl"],
                  "%dx%d:%d" % (r["batch"], r["heads_q"], r["heads_kv"]), r["seq_q"], r["seq_k"],
                  r["head_dim"], "on" if r["causal"] else "off", "%.3f" % r["torch_ms"],
                  "%.3f" % r["dipole_ms"], "%.2f" % r["speedup"], "%.1f" % r["torch_gflops"],
                  "%.1f" % r["dipole_gflops"], "%.1e" % r["max_diff"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="d 64, N 1024 and 2048, one decode row")
    ap.add_argument("--only", choices=("prefill", "backward", "decode"))
    ap.add_argument("--reps", type=int, default=15, help="rounds per case at most (15)")
    ap.add_argument("--budget-s", type=float, default=4.0,
                    help="seconds per case after the third round (4)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch's threads (0: torch's default, one per core)")
    ap.add_argument("--json", help="write the rows and the environment here")
    ap.add_argument("--omp-wait", default="passive", choices=("passive", "as-set"),
                    help="passive (default): OMP_WAIT_POLICY=PASSIVE for torch's OpenMP "
                         "threads, unless the environment sets it; as-set: leave it")
    args = ap.parse_args()
    if args.omp_wait == "passive":
        # Must precede torch's import, where its OpenMP runtime reads it. Without it torch's
        # threads spin for ~5-10 ms after each parallel op, on the cores that PoCL's workers
        # need next: the dipole call after an SDPA took 15.3 ms where it takes 11.7 (B 1, H 8,
        # N 1024, d 64), while SDPA's own time is the same either way (13.1-13.2 ms).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = need_torch()
    dipole = load_dipole()
    import dipole.torch as dt
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = dipole.default_context()
    env = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "dipole": dipole.__version__, "device": ctx.device_name,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
           "command": " ".join(sys.argv)}
    print("torch %s (%d threads, OMP_WAIT_POLICY %s), dipole %s on %s" % (
        env["torch"], env["torch_threads"], env["omp_wait_policy"], env["dipole"], env["device"]))
    print("times are minima over alternating rounds; speedup = torch_ms / dipole_ms\n")
    print(FMT % HEAD)
    rows = []
    for c in grid(args):
        rows.append(run_case(torch, dipole, dt, c, args.reps, args.budget_s))
        print(row_text(rows[-1]))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
