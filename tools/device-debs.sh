#!/usr/bin/env bash
# Run HERE (a Debian 12 machine with its package lists), before a device check: downloads into
# .device-debs/ the .deb files that tools/device-check.sh installs on a lent GPU machine, which
# has no package registry. What is downloaded: the packages a minimal build, test and bench of
# dipole needs, with their dependencies (no recommends), less what a bare Debian 12 image with
# gcc already has (its required and essential packages, apt, gcc and their dependencies).
# device-check.sh skips any of them that the machine has installed.
#
# usage: tools/device-debs.sh [DIR]   (default: .device-debs in the checkout; it is ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.device-debs}

# What the build (meson.build, bench/meson.build), the test binary and this check use.
wanted=(meson ninja-build pkg-config python3 libc6-dev
    ocl-icd-libopencl1 ocl-icd-opencl-dev opencl-headers opencl-c-headers opencl-clhpp-headers
    libclblast1 libclblast-dev check libjansson4 libjansson-dev clinfo)

# Package lists are needed for apt-cache; an old or missing one is refreshed once.
if ! apt-cache show meson >/dev/null 2>&1; then
    apt-get update -qq
fi

closure() { # PACKAGE...: them and everything they depend on (or pre-depend on), one a line
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$@" 2>/dev/null | awk '!/^[ <]/' | LC_ALL=C sort -u
}
# A bare Debian 12 image with gcc: its required and essential packages, apt and gcc.
mapfile -t base_roots < <(apt-cache dumpavail |
    awk '/^Package:/ { p = $2 } /^(Priority: required|Essential: yes)/ { print p }' | LC_ALL=C sort -u)
closure "${base_roots[@]}" apt gcc >"${TMPDIR:-/tmp}/device-debs.base.$$"
# The wanted packages themselves always (a base closure can reach one through a dependency that
# a real image does not install), and their dependencies that the base lacks.
mapfile -t need < <({ closure "${wanted[@]}" | LC_ALL=C comm -23 - "${TMPDIR:-/tmp}/device-debs.base.$$"
    printf '%s\n' "${wanted[@]}"; } | LC_ALL=C sort -u)
rm -f "${TMPDIR:-/tmp}/device-debs.base.$$"

mkdir -p "$dir"
rm -f "$dir"/*.deb
# apt-get download writes into the current folder (as root it warns, harmlessly, that the _apt
# user cannot write there).
if ! (cd "$dir" && apt-get download "${need[@]}") >"$dir/download.log" 2>&1; then
    cat "$dir/download.log" >&2
    exit 1
fi
for p in "${need[@]}"; do
    compgen -G "$dir/${p}_*.deb" >/dev/null || { echo "device-debs: $p was not downloaded" >&2; exit 1; }
done
printf '%s\n' "${need[@]}" >"$dir/PACKAGES"
echo "device-debs: ${#need[@]} packages, $(du -sh "$dir" | cut -f1) in $dir: ${need[*]}"
