#!/usr/bin/env bash
# The checks for a lent machine with one NVIDIA GPU and its driver, but no package registry:
# finds the driver's OpenCL library and points the ICD loader at it (no system file changed),
# installs the build dependencies from .deb files carried from the development machine
# (tools/device-debs.sh writes them into .device-debs/), builds dipole, then runs on the GPU
# (DIPOLE_DEVICE=gpu) clinfo, the forward, backward and golden test suites and a short
# dipole-bench grid. Every step has a timeout and the whole run stays under 8 minutes; each
# step's log, the bench results, clinfo, an environment summary and the steps' exit statuses
# go into one folder, and a one-screen summary is printed at the end.
#
# usage: tools/device-check.sh [--cpu]
#   --cpu   a dry run without the driver: PoCL (the machine's own ICDs) and DIPOLE_DEVICE=cpu;
#           also DEVICE_CHECK_ALLOW_CPU=1
# env: OUT (the output folder; default device-check-out/ in the checkout), DEVICE_CHECK_DEBS
#   (the .deb folder, default .device-debs), NVIDIA_OPENCL_LIB (the driver's library, where it
#   is not in a usual place), DEVICE_CHECK_BUDGET (seconds for the whole run, default 470),
#   DEVICE_CHECK_SUITES (default "forward backward golden"), DEVICE_CHECK_BENCH /
#   DEVICE_CHECK_BENCH_GQA (the two bench runs' arguments, "skip" for none), DEVICE_CHECK_UNPACK=1
#   (unpack every carried .deb into the private prefix even where installed: tests that path),
#   DEVICE_CHECK_TIME_SCALE (each step's time limit times this, default 1; the budget stays).
# Exit status: 0 every step passed, 1 a step failed or timed out, 2 bad arguments, 3 no driver.
set -uo pipefail # not -e: a failed step is recorded and the run goes on to the next

cd "$(dirname "$0")/.." || exit 2
src=$(pwd)
cpu=${DEVICE_CHECK_ALLOW_CPU:-0}
case "${1:-}" in
--cpu) cpu=1 ;;
"") ;;
*)
    sed -n '11,13p' "$0" >&2
    exit 2
    ;;
esac
out=${OUT:-$src/device-check-out}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
budget=${DEVICE_CHECK_BUDGET:-470}
scale=${DEVICE_CHECK_TIME_SCALE:-1} # each step's limit times this (a slow machine's dry run)
t_start=$SECONDS
: >"$out/steps.tsv"
say() { echo "device-check: $*" | tee -a "$out/summary.txt"; }
: >"$out/summary.txt"

# step NAME MAX-SECONDS COMMAND...: runs COMMAND with a timeout of MAX-SECONDS, or of what the
# run's budget has left (less a reserve for the steps after it), logging to NAME.log.
reserve=0
step() {
    local name=$1 max=$(($2 * scale)) left t0 rc
    shift 2
    left=$((budget - (SECONDS - t_start) - reserve * scale))
    [ "$left" -lt "$max" ] && max=$left
    if [ "$max" -lt 5 ]; then
        printf '%s\tskipped\t0\tno time left in the %s s budget\n' "$name" "$budget" >>"$out/steps.tsv"
        return 1
    fi
    t0=$SECONDS
    if declare -F "$1" >/dev/null; then # a function of this script: in a bash of its own
        timeout -k 10 "$max" bash -c "$(declare -f installed install_debs build_it); $*" >"$out/$name.log" 2>&1
    else
        timeout -k 10 "$max" "$@" >"$out/$name.log" 2>&1
    fi
    rc=$?
    local note=""
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then note="timed out after $max s"; fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$note" >>"$out/steps.tsv"
    return "$rc"
}

# ---- the machine --------------------------------------------------------------------------

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -srm)"
    grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release 2>/dev/null
    echo "cores: $(nproc)"
    free -g 2>/dev/null | awk '/^Mem:/ { print "memory: " $2 " GiB" }'
    echo "user: $(id -un) (uid $(id -u))"
    echo "gcc: $(gcc --version 2>/dev/null | head -1)"
    echo "commit: $(git -C "$src" log -1 --format='%h %s' 2>/dev/null || echo '(not a git checkout)')"
    echo "mode: $([ "$cpu" = 1 ] && echo 'dry run on the CPU (PoCL)' || echo 'NVIDIA GPU')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 |
            sed 's/^/gpu: /'
    fi
} >"$out/environment.txt"

# ---- the driver's OpenCL library ----------------------------------------------------------

if [ "$cpu" = 1 ]; then
    export DIPOLE_DEVICE=cpu
    say "dry run: no NVIDIA driver looked for; the machine's own ICDs, DIPOLE_DEVICE=cpu"
else
    lib=""
    if [ -n "${NVIDIA_OPENCL_LIB:-}" ]; then
        if [ -e "$NVIDIA_OPENCL_LIB" ]; then
            lib=$NVIDIA_OPENCL_LIB
        else
            say "NVIDIA_OPENCL_LIB=$NVIDIA_OPENCL_LIB does not exist; looking in the usual places"
        fi
    fi
    # The dynamic linker's cache, then the folders drivers install into, then anywhere.
    [ -z "$lib" ] && lib=$(ldconfig -p 2>/dev/null | awk '$1 == "libnvidia-opencl.so.1" && /x86-64/ { print $NF; exit }')
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/nvidia /usr/lib; do
        [ -z "$lib" ] && [ -e "$d/libnvidia-opencl.so.1" ] && lib=$d/libnvidia-opencl.so.1
    done
    if [ -z "$lib" ]; then
        lib=$(timeout 60 find / \( -path /proc -o -path /sys -o -path /dev -o -path "$src" \) -prune -o \
            -name libnvidia-opencl.so.1 -print 2>/dev/null | head -1)
    fi
    if [ -z "$lib" ]; then
        say "FAIL: there is no libnvidia-opencl.so.1 on this machine (not in ldconfig's cache,"
        say "  /usr/lib/x86_64-linux-gnu, /usr/lib64, /usr/local/nvidia/lib64, nor anywhere under /):"
        say "  the NVIDIA driver's OpenCL part is not installed. Set NVIDIA_OPENCL_LIB if it is elsewhere."
        printf 'driver\t3\t0\tno libnvidia-opencl.so.1\n' >>"$out/steps.tsv"
        exit 3
    fi
    lib=$(readlink -f "$lib")
    # A vendors folder of our own, so that the loader sees the driver and nothing else, and no
    # file under /etc/OpenCL changes.
    mkdir -p "$out/icd"
    echo "$lib" >"$out/icd/nvidia.icd"
    export OCL_ICD_VENDORS=$out/icd
    export DIPOLE_DEVICE=gpu
    echo "driver: $lib" >>"$out/environment.txt"
    ldd "$lib" 2>&1 | grep 'not found' | sed 's/^/driver lacks: /' >>"$out/environment.txt"
    say "driver: $lib (OCL_ICD_VENDORS=$OCL_ICD_VENDORS)"
fi

# ---- build dependencies from the carried .deb files ---------------------------------------

debs=${DEVICE_CHECK_DEBS:-$src/.device-debs}
prefix=$src/build-device-prefix
export debs prefix cpu # for the steps' own bash
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# The carried packages the machine lacks: dpkg -i as root; otherwise, or where that fails (a
# machine other than Debian 12 may refuse their dependencies), dpkg -x into a private prefix.
install_debs() {
    local p deb missing=() files=()
    rm -rf "$prefix" # what an earlier run unpacked may not be what this one needs
    [ -r "$debs/PACKAGES" ] || { echo "no $debs/PACKAGES: run tools/device-debs.sh before"; return 1; }
    while read -r p; do
        if [ "${DEVICE_CHECK_UNPACK:-0}" = 1 ] || ! installed "$p"; then
            missing+=("$p")
            for deb in "$debs/${p}"_*.deb; do files+=("$deb"); done
        fi
    done <"$debs/PACKAGES"
    echo "carried: $(wc -l <"$debs/PACKAGES") packages; missing here: ${missing[*]:-none}"
    ((${#missing[@]})) || return 0
    # (A dry run changes nothing on the machine: it unpacks.)
    if [ "$(id -u)" = 0 ] && [ "${DEVICE_CHECK_UNPACK:-0}" != 1 ] && [ "$cpu" != 1 ]; then
        if DEBIAN_FRONTEND=noninteractive dpkg -i "${files[@]}"; then
            return 0
        fi
        echo "dpkg -i failed; unpacking what is still missing into $prefix"
        local left=() still=()
        for p in "${missing[@]}"; do installed "$p" || left+=("$p"); done
        for p in "${left[@]}"; do for deb in "$debs/${p}"_*.deb; do still+=("$deb"); done; done
        files=("${still[@]}")
    fi
    for deb in "${files[@]}"; do dpkg -x "$deb" "$prefix" || return 1; done
    for deb in "${files[@]}"; do dpkg-deb -f "$deb" Package; done >"$prefix/PACKAGES"
    # Their pkg-config files name /usr: point them at the prefix.
    find "$prefix" -name '*.pc' -exec sed -i "s|^prefix=/usr|prefix=$prefix/usr|" {} +
    echo "unpacked ${#files[@]} packages into $prefix"
}
step deps 60 install_debs
deps_rc=$?
if [ -d "$prefix/usr" ]; then
    multi=$prefix/usr/lib/x86_64-linux-gnu
    export PATH=$prefix/usr/bin:$PATH
    export LD_LIBRARY_PATH=$multi:$prefix/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PKG_CONFIG_PATH=$multi/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    export CPATH=$prefix/usr/include${CPATH:+:$CPATH} LIBRARY_PATH=$multi${LIBRARY_PATH:+:$LIBRARY_PATH}
    export PYTHONPATH=$prefix/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}
fi
# meson's #! line names /usr/bin/python3: where the machine has none, the prefix's Python runs
# it, and finds its library there.
meson_cmd=(meson)
if [ ! -x /usr/bin/python3 ] && [ -x "$prefix/usr/bin/python3" ]; then
    export PYTHONHOME=$prefix/usr
    meson_cmd=("$prefix/usr/bin/python3" "$prefix/usr/bin/meson")
fi

# ---- build ----------------------------------------------------------------------------------

build=$src/build-device
export build
export MESON_CMD="${meson_cmd[*]}" # the build step's bash reads it back into words
build_it() {
    read -ra meson_cmd <<<"$MESON_CMD"
    # meson keeps the paths it found: a build configured with other unpacked packages (or none)
    # is set up afresh.
    local stamp
    stamp="unpacked: $(paste -sd' ' "$prefix/PACKAGES" 2>/dev/null)"
    if [ -f "$build/build.ninja" ] && [ "$(cat "$build/device-check.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "the build was configured with other packages: a new one"
        rm -rf "$build"
    fi
    mkdir -p "$build" && echo "$stamp" >"$build/device-check.stamp"
    if [ -f "$build/build.ninja" ]; then
        "${meson_cmd[@]}" setup --reconfigure "$build" || return 1
    else
        "${meson_cmd[@]}" setup "$build" -Dbuildtype=release || return 1
    fi
    ninja -C "$build" -j "$(nproc)"
}
reserve=240 # the tests and the bench get at least this much
step build 150 build_it
build_rc=$?

# ---- clinfo, tests, bench -------------------------------------------------------------------

export DIPOLE_CACHE_DIR=$src/build-device-cache # kept when the build is set up afresh
golden=${DIPOLE_GOLDEN_DIR:-}
for g in "$src/../shared/golden" "$src/shared/golden"; do
    [ -z "$golden" ] && [ -d "$g" ] && golden=$(cd "$g" && pwd)
done
[ -n "$golden" ] && export DIPOLE_GOLDEN_DIR=$golden
echo "golden: ${golden:-none found (the golden suite then says so and skips)}" >>"$out/environment.txt"

reserve=0
step clinfo 20 clinfo
clinfo -l >"$out/clinfo-list.txt" 2>&1
if [ "$build_rc" = 0 ]; then
    read -ra suites <<<"${DEVICE_CHECK_SUITES:-forward backward golden}"
    # The bench keeps its share whatever the suites take.
    reserve=150
    for s in "${suites[@]}"; do
        step "test-$s" 90 "$build/tests/dipole-tests" "$s"
    done
    reserve=0
    bench=${DEVICE_CHECK_BENCH:---device $DIPOLE_DEVICE --head-dims 64,128 --seq 1024,4096 --variants all --causal on --decode off --backward --batch-heads 2x16 --budget-ms 50 --max-call-ms 2000}
    gqa=${DEVICE_CHECK_BENCH_GQA:---device $DIPOLE_DEVICE --head-dims 128 --seq 8192 --variants all --causal off --decode on --batch-heads 1x32:8 --budget-ms 50 --max-call-ms 2000 --no-peaks}
    if [ "$bench" != skip ]; then
        reserve=40
        # shellcheck disable=SC2086 # the arguments are words
        step bench 150 "$build/bench/dipole-bench" $bench --json "$out/bench.json" --csv "$out/bench.csv"
        reserve=0
    fi
    if [ "$gqa" != skip ]; then
        # shellcheck disable=SC2086
        step bench-gqa-decode 60 "$build/bench/dipole-bench" $gqa --json "$out/bench-gqa.json" --csv "$out/bench-gqa.csv"
    fi
fi

# ---- summary --------------------------------------------------------------------------------

{
    echo
    echo "== device check: $(awk -F': ' '/^mode:/ { print $2 }' "$out/environment.txt"), $((SECONDS - t_start)) s"
    grep -E '^(gpu|driver|host|cores):' "$out/environment.txt"
    echo "device: $(awk '/Device Name/ { sub(/.*Device Name +/, ""); print; exit }' "$out/clinfo.log" 2>/dev/null)"
    printf '%-18s %-8s %6s  %s\n' step status seconds detail
    while IFS=$'\t' read -r name rc secs note; do
        detail=$note
        case "$name" in
        deps) detail=$(grep -m1 -E '^(carried|no )' "$out/deps.log") ;;
        build) [ "$rc" = 0 ] || detail=$(grep -m1 -E 'error:|ERROR:|^FAILED' "$out/build.log" | cut -c1-90) ;;
        test-*) detail=$(grep -m1 -E '^[0-9]+%: Checks' "$out/$name.log" || grep -m1 -i 'skip' "$out/$name.log") ;;
        bench*)
            f=$out/$name.csv
            [ "$name" = bench-gqa-decode ] && f=$out/bench-gqa.csv
            [ -r "$f" ] && detail=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "status") c = i; next }
                { n[$c]++ } END { for (s in n) printf "%s %d  ", s, n[s] }' "$f")
            ;;
        esac
        [ "$rc" != 0 ] && [ -z "$detail" ] && [ -r "$out/$name.log" ] &&
            detail=$(awk 'NF { l = $0 } END { print l }' "$out/$name.log")
        st=ok
        [ "$rc" = 0 ] || st=FAIL
        [ "$rc" = 77 ] && st=skipped
        [ "$rc" = skipped ] && st=skipped
        printf '%-18s %-8s %6s  %s\n' "$name" "$st" "$secs" "${detail:0:100}"
    done <"$out/steps.tsv"
    echo "everything is in $out"
} | tee -a "$out/summary.txt"

# A skipped suite (77: no device matched) is not a pass either.
bad=$(awk -F'\t' '$2 != "0" { n++ } END { print n + 0 }' "$out/steps.tsv")
[ "$deps_rc" = 0 ] || bad=$((bad > 0 ? bad : 1))
[ "$bad" = 0 ]
