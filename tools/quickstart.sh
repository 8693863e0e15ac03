#!/usr/bin/env bash
# One command from a fresh Debian 12 machine: install what is missing, build, then run
#   bench  the device sweep (dipole-bench on the default device), or
#   test   the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
bench | test) ;;
*)
    echo "usage: $0 bench|test" >&2
    exit 2
    ;;
esac

packages=(build-essential meson ninja-build pkg-config python3 ocl-icd-opencl-dev opencl-headers
    pocl-opencl-icd libclblast-dev check clinfo)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [ -d build ]; then
    meson setup --reconfigure build >/dev/null
else
    meson setup build >/dev/null
fi
ninja -C build >&2

case "$mode" in
bench) exec build/bench/dipole-bench "${@:2}" ;;
test) exec meson test -C build --print-errorlogs "${@:2}" ;;
esac
