#!/usr/bin/env bash
# What a C user does after `meson install`: find dipole through pkg-config, compile and link the
# README's example against the installed header and library, and run it.
# Usage: install_check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --quiet --no-rebuild
pc=$(find "$dest" -name dipole.pc | head -n 1)
[ -n "$pc" ] || { echo "meson install wrote no dipole.pc" >&2; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$dest
flags=$(pkg-config --cflags --libs dipole)
case "$flags" in *"$dest"*) ;; *) echo "pkg-config flags miss the install: $flags" >&2; exit 1 ;; esac
cc -std=c11 -Wall -Wextra -Werror "$src/tests/readme_example.c" $flags -lm -o "$dest/example"
LD_LIBRARY_PATH=$(pkg-config --variable=libdir dipole) "$dest/example"
