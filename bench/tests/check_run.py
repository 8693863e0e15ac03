#!/usr/bin/env python3
"""Runs dipole-bench for the meson tests: check_run.py BENCH ok|inject|dtype|paged.

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
    assert head[-4:-2] == ["dtype", "over_f32"], head
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
    assert head[-2:] == ["page_size", "over_dense"], head
    assert " kv " in proc.stdout and " p16 " in proc.stdout and " x_kv " in proc.stdout, proc.stdout


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
