#!/usr/bin/env python3
"""Checks that each C file named on the command line appears, verbatim, as a ```c block of the
README: the README's examples are the files the test suite builds and runs.
Usage: readme_sync.py README.md FILE.c..."""
import re
import sys


def main():
    readme, files = sys.argv[1], sys.argv[2:]
    with open(readme, encoding="utf-8") as f:
        blocks = re.findall(r"^```c\n(.*?)^```$", f.read(), flags=re.S | re.M)
    bad = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text not in blocks:
            print(f"{readme} has no ```c block equal to {path}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
