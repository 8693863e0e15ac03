#!/usr/bin/env python3
"""Runs dipole-bench --tune for the meson tests: check_tune.py BENCH plain|inject|prior.

Refuses to tune under DIPOLE_TILE_CONFIG (exit 2), then runs --tune --quick (inject: with
--inject-error, which corrupts the first candidate's check) in $DIPOLE_CACHE_DIR after removing
any tuned-*.conf there. It must exit 0, show the default's row, and either
- say "saved": then exactly one tuned-*.conf holds the winner, the bench's own check of a new
  context names "(tuned)" with the winner's tile sizes, and a separate dipole-bench run plans
  its tiled forward "(tuned)" too; or
- say the default was kept: then no tuned-*.conf exists and a separate run does not plan
  "(tuned)".
inject: the first candidate is rejected for a mismatch and is not the winner.
prior: --tune-prior saves a slow configuration (16 rows x 8 keys, about 3x slower here) as an
earlier tuning first: the first row must be that one, and a winner must replace it.
Exit 77 (skipped) when the machine has no OpenCL device."""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile


def run(args, **env_changes):
    env = dict(os.environ)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc


def separate_plan(bench, tmp):
    """The plan a new dipole-bench process reports for a small tiled SIGNEXP forward."""
    out = os.path.join(tmp, "r.json")
    proc = run([bench, "--no-peaks", "--variants", "signexp", "--path", "tiled", "--decode",
                "off", "--causal", "off", "--seq", "256", "--batch-heads", "1x2",
                "--head-dims", "64", "--budget-ms", "1", "--json", out],
               DIPOLE_TILE_CONFIG=None)
    assert proc.returncode == 0, "separate run exit %d" % proc.returncode
    with open(out, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows
    return rows[0]["plan"]


def main():
    bench, mode = sys.argv[1], sys.argv[2]
    cache = os.environ["DIPOLE_CACHE_DIR"]
    os.makedirs(cache, exist_ok=True)

    proc = run([bench, "--tune", "--quick"], DIPOLE_TILE_CONFIG="layout=cpu")
    assert proc.returncode == 2, "under DIPOLE_TILE_CONFIG: exit %d, expected 2" % proc.returncode
    assert "DIPOLE_TILE_CONFIG" in proc.stderr

    for old in glob.glob(os.path.join(cache, "tuned-*.conf")):
        os.remove(old)
    args = [bench, "--tune", "--quick"]
    if mode == "inject":
        args += ["--inject-error"]
    elif mode == "prior":
        args += ["--tune-prior", "block_m=16,block_n=8"]
    proc = run(args, DIPOLE_TILE_CONFIG=None)
    if proc.returncode == 3:
        print("no OpenCL device: skipped")
        return 77
    assert proc.returncode == 0, "exit %d" % proc.returncode
    out = proc.stdout
    lines = out.splitlines()
    head = [i for i, l in enumerate(lines) if l.split()[:1] == ["candidate"]]
    assert len(head) == 1, "no table header"
    rows = lines[head[0] + 1:]
    first_row = "current" if mode == "prior" else "default"
    assert rows[0].split()[0] == first_row and rows[0].rstrip().endswith("ok"), rows[0]
    if mode == "prior":
        assert rows[0].split()[3] == "16x8", rows[0]
    cands = [l.split()[0] for l in rows if l.strip().startswith("layout=")]
    assert len(cands) >= 3, ("too few candidates", cands)
    best = re.search(r"^best: (\S+),", out, re.M)
    assert best, "no best line"
    winner = best.group(1)
    assert winner in cands, (winner, cands)
    if mode == "inject":
        first = [l for l in rows if l.strip().startswith(cands[0])][0]
        assert "rejected" in first and "mismatch" in first, first
        assert winner != cands[0], "a rejected candidate won"

    files = glob.glob(os.path.join(cache, "tuned-*.conf"))
    with tempfile.TemporaryDirectory() as tmp:
        if re.search(r"^saved: ", out, re.M):
            assert len(files) == 1, files
            with open(files[0], encoding="utf-8") as f:
                assert f.read().strip() == winner, "the file does not hold the winner"
            m = re.search(r"block_m=(\d+),block_n=(\d+)", winner)
            check = re.search(r'^check: a new context plans "(.*)"$', out, re.M)
            assert check and "(tuned)" in check.group(1), "the bench's own check"
            assert "%s rows x %s keys" % m.groups() in check.group(1), check.group(1)
            plan = separate_plan(bench, tmp)
            assert "(tuned)" in plan, plan
            print("saved %s; a separate run plans: %s" % (winner, plan))
        else:
            assert mode != "prior", "a 3x slower earlier tuning was kept"
            assert re.search(r"^kept the current configuration", out, re.M), "neither saved nor kept"
            assert not files, ("kept the default but a tuned file exists", files)
            plan = separate_plan(bench, tmp)
            assert "(tuned)" not in plan, plan
            print("kept the default; a separate run plans: %s" % plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
