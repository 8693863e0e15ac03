#!/usr/bin/env python3
"""Runs dipole-bench for the meson tests: check_run.py BENCH ok|inject|dtype|paged|varlen|diff.

ok:     --quick must exit 0, write JSON that parses, and every row must be ok or unsupported
        (with a reason), with at least one ok row.
inject: --quick --inject-error must exit 1 with exactly one error row whose reason names the
        mismatch.
dtype:  --quick --dtype all (softmax, tiled, forward and backward) must exit 0 with every
        point in f32, f16 and bf16, each ok and validated, half rows counting half the bytes
        and carrying their time over the f32 row's (over_f32); CSV and table name the dtype.
paged:  --quick --decode only --paged 16 (every variant, tiled and gemm) must exit 0 with each
        decode row beside a paged twin, both ok and validated, the twin carrying its time over
        the contiguous row's (over_dense); CSV and table show it.
varlen: --quick --decode off --backward --varlen (softmax and two_pole, tiled) must exit 0 with
        each prefill row followed by its packed and padded twins over the same drawn lengths,
        both counting the same real tokens' flops and bytes, each ok and validated (on a CPU
        device; elsewhere a twin may be unsupported, with a reason), the packed row carrying
        the padded time over its own (padded_over_packed); CSV and table show them.
diff:   --quick --decode off --backward --variants diff --diff --head-dim-v 128 (the Diff
        Transformer's layout at d 64, tiled and gemm) must exit 0 with each DIFF row followed
        by its twin of two SOFTMAX calls (two_sm), both counting the same flops and bytes, the
        fused row ok and validated, the twin ok and timed (not validated), the fused row
        carrying the twin's time over its own (two_sm_over_fused); CSV and table show them.
Exit 77 (skipped) when the machine has no OpenCL device."""
import json
import os
import subprocess
import sys
import tempfile


def check_dtypes(proc, rows, csv_path):
    assert proc.returncode == 0, "exit %d" % proc.returncode
    shape = ("pass", "variant", "path", "batch", "heads_q", "heads_kv", "seq_q", "seq_k",
             "head_dim", "causal")
    by_point = {}
    for r in rows:
        assert r["status"] == "ok" and r["checked_rows"] > 0, r
        by_point.setdefault(tuple(r[k] for k in shape), {})[r["dtype"]] = r
    for point, rs in by_point.items():
        assert sorted(rs) == ["bf16", "f16", "f32"], (point, sorted(rs))
        f32 = rs["f32"]
        assert f32["over_f32"] == 1, f32
        for dt in ("f16", "bf16"):
            r = rs[dt]
            assert r["bytes"] * 2 == f32["bytes"], (r["bytes"], f32["bytes"])
            want = r["median_ms"] / f32["median_ms"]
            assert abs(r["over_f32"] - want) <= 1e-6 * want, (r["over_f32"], want)
    with open(csv_path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split(",")
    assert head[-11:-9] == ["dtype", "over_f32"], head
    assert " dtype " in proc.stdout and " x_f32 " in proc.stdout, proc.stdout
    assert " bf16 " in proc.stdout, proc.stdout


def check_paged(proc, rows, csv_path):
    assert proc.returncode == 0, "exit %d" % proc.returncode
    shape = ("pass", "variant", "path", "dtype", "batch", "heads_q", "heads_kv", "seq_q", "seq_k",
             "head_dim", "causal")
    by_point = {}
    for r in rows:
        assert r["status"] == "ok" and r["checked_rows"] > 0, r
        by_point.setdefault(tuple(r[k] for k in shape), {})[r["page_size"]] = r
    assert len(by_point) == 16, sorted(by_point)  # 4 variants x 2 paths x 2 lengths
    for point, rs in by_point.items():
        assert sorted(rs) == [0, 16], (point, sorted(rs))
        want = rs[16]["median_ms"] / rs[0]["median_ms"]
        assert abs(rs[16]["over_dense"] - want) <= 1e-6 * want, (rs[16]["over_dense"], want)
        assert rs[0]["over_dense"] is None, rs[0]
    with open(csv_path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split(",")
    assert head[-9:-7] == ["page_size", "over_dense"], head
    assert " kv " in proc.stdout and " p16 " in proc.stdout and " x_kv " in proc.stdout, proc.stdout


def check_varlen(proc, run, csv_path):
    assert proc.returncode == 0, "exit %d" % proc.returncode
    rows = run["rows"]
    cpu = run["devices"][0]["type"] == "cpu"
    shape = ("pass", "variant", "path", "dtype", "batch", "heads_q", "heads_kv", "seq_q", "seq_k",
             "head_dim", "causal")
    by_point = {}
    for i, r in enumerate(rows):
        by_point.setdefault(tuple(r[k] for k in shape), []).append((i, r))
    # 2 variants x 2 passes x 2 masks x 2 lengths, each a fixed row and its two twins in a row
    assert len(by_point) == 16, sorted(by_point)
    pairs = 0
    for point, rs in by_point.items():
        assert [r["batching"] for _, r in rs] == ["fixed", "packed", "padded"], (point, rs)
        assert [i for i, _ in rs] == list(range(rs[0][0], rs[0][0] + 3)), (point, "not adjacent")
        fixed, packed, padded = (r for _, r in rs)
        assert point[4] == 4 and point[5] == 1, point  # --varlen's quick default: 4x1
        assert fixed["status"] == "ok" and fixed["checked_rows"] > 0, fixed
        assert fixed["lengths"] is None and fixed["padded_over_packed"] is None, fixed
        lengths = packed["lengths"]
        assert len(lengths) == packed["batch"] and padded["lengths"] == lengths, (packed, padded)
        n = packed["seq_q"]
        assert all(max(1, n // 8) <= x <= n for x in lengths), lengths
        assert packed["tokens"] == padded["tokens"] == sum(lengths), (packed, padded)
        assert packed["flops"] == padded["flops"] and packed["bytes"] == padded["bytes"], point
        assert packed["flops"] < fixed["flops"] or lengths == [n] * len(lengths), point
        for r in (packed, padded):
            if r["status"] != "ok":
                assert not cpu and r["status"] == "unsupported" and r["reason"], r
            else:
                assert r["checked_rows"] > 0 and r["median_ms"] > 0, r
        assert padded["padded_over_packed"] is None, padded
        if packed["status"] == padded["status"] == "ok":
            want = padded["median_ms"] / packed["median_ms"]
            got = packed["padded_over_packed"]
            assert abs(got - want) <= 1e-6 * want, (got, want)
            pairs += 1
        else:
            assert packed["padded_over_packed"] is None, packed
    assert pairs or not cpu, "no packed/padded pair ran"
    with open(csv_path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split(",")
    assert head[-7:-3] == ["batching", "varlen_seed", "tokens", "padded_over_packed"], head
    for word in (" pack ", " pad ", " x_pad ", "varlen B 4 N 128 seed 1: lengths "):
        assert word in proc.stdout, (word, proc.stdout)


def check_diff(proc, rows, csv_path):
    assert proc.returncode == 0, "exit %d" % proc.returncode
    assert len(rows) == 16, len(rows)  # 2 passes x 2 masks x 2 paths, each with its twin
    for fused, twin in zip(rows[0::2], rows[1::2]):
        assert fused["variant"] == twin["variant"] == "diff", (fused, twin)
        assert not fused["two_sm"] and twin["two_sm"], (fused, twin)
        for k in ("pass", "path", "causal", "seq_q", "head_dim", "head_dim_v", "flops", "bytes"):
            assert fused[k] == twin[k], (k, fused, twin)
        assert fused["head_dim"] == 64 and fused["head_dim_v"] == 128, fused
        assert fused["status"] == "ok" and fused["checked_rows"] > 0, fused
        assert twin["status"] == "ok" and twin["checked_rows"] == 0 and twin["median_ms"] > 0, twin
        want = twin["median_ms"] / fused["median_ms"]
        assert abs(fused["two_sm_over_fused"] - want) <= 1e-6 * want, (fused, want)
        assert twin["two_sm_over_fused"] is None, twin
    with open(csv_path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split(",")
    assert head[-3:] == ["head_dim_v", "two_sm", "two_sm_over_fused"], head
    assert " 2sm " in proc.stdout and " x_2sm " in proc.stdout, proc.stdout


def main():
    bench, mode = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        args = [bench, "--quick", "--json", out, "--csv", os.path.join(tmp, "r.csv")]
        if mode == "inject":
            # No ceilings and one variant: the check is about validation, not speed.
            args += ["--inject-error", "--no-peaks", "--variants", "softmax", "--decode", "off"]
        elif mode == "dtype":
            args += ["--dtype", "all", "--no-peaks", "--variants", "softmax", "--path", "tiled",
                     "--decode", "off", "--backward"]
        elif mode == "paged":
            args += ["--no-peaks", "--decode", "only", "--paged", "16"]
        elif mode == "varlen":
            args += ["--no-peaks", "--decode", "off", "--backward", "--varlen",
                     "--variants", "softmax,two_pole", "--path", "tiled"]
        elif mode == "diff":
            args += ["--no-peaks", "--decode", "off", "--backward", "--variants", "diff",
                     "--diff", "--head-dim-v", "128", "--seq", "128"]
        proc = subprocess.run(args, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        if proc.returncode == 3:
            print("no OpenCL device: skipped")
            return 77
        with open(out, encoding="utf-8") as f:
            run = json.load(f)
        assert run["format_version"] == 1, run["format_version"]
        rows = run["rows"]
        assert rows, "no rows"
        statuses = [r["status"] for r in rows]
        for r in rows:
            assert r["status"] in ("ok", "unsupported", "skipped", "error"), r
            if r["status"] != "ok":
                assert r["reason"], ("a non-ok row without a reason", r)
        if mode == "dtype":
            check_dtypes(proc, rows, os.path.join(tmp, "r.csv"))
        elif mode == "paged":
            check_paged(proc, rows, os.path.join(tmp, "r.csv"))
        elif mode == "varlen":
            check_varlen(proc, run, os.path.join(tmp, "r.csv"))
        elif mode == "diff":
            check_diff(proc, rows, os.path.join(tmp, "r.csv"))
        elif mode == "ok":
            assert proc.returncode == 0, "exit %d" % proc.returncode
            bad = [r for r in rows if r["status"] not in ("ok", "unsupported")]
            assert not bad, ("rows neither ok nor unsupported", bad)
            assert "ok" in statuses, "no ok row"
            for r in rows:
                if r["status"] == "ok":
                    assert r["gflops"] > 0 and r["median_ms"] > 0 and r["checked_rows"] > 0, r
            ceil = run["devices"][0]["ceilings"]
            assert ceil["fma_gflops"] and ceil["copy_gbps"] and ceil["sgemm_gflops"], ceil
        else:
            assert proc.returncode == 1, "exit %d, expected 1" % proc.returncode
            errors = [r for r in rows if r["status"] == "error"]
            assert len(errors) == 1, ("expected exactly one error row", errors)
            assert "mismatch" in errors[0]["reason"], errors[0]
            assert "error" in proc.stdout, "the table does not show the error row"
    print("%s: %d rows checked" % (mode, len(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
