#!/usr/bin/env python3
"""Runs dipole-bench for the meson tests: check_run.py BENCH ok|inject.

ok:     --quick must exit 0, write JSON that parses, and every row must be ok or unsupported
        (with a reason), with at least one ok row.
inject: --quick --inject-error must exit 1 with exactly one error row whose reason names the
        mismatch. Exit 77 (skipped) when the machine has no OpenCL device."""
import json
import os
import subprocess
import sys
import tempfile


def main():
    bench, mode = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        args = [bench, "--quick", "--json", out, "--csv", os.path.join(tmp, "r.csv")]
        if mode == "inject":
            # No ceilings and one variant: the check is about validation, not speed.
            args += ["--inject-error", "--no-peaks", "--variants", "softmax", "--decode", "off"]
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
        if mode == "ok":
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
