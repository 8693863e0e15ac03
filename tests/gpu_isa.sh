#!/usr/bin/env bash
# Static GPU check: every kernel build of a builds list is compiled by the vendors' own back
# ends (no GPU needed), and the check fails where a kernel keeps in memory what belongs in
# registers (a stack frame, scratch, a spill, private memory) or runs too few waves on AMD.
#
# usage: tests/gpu_isa.sh [--markdown OUT.md] [--jobs N] [--targets LIST] [--keep DIR] BUILDS...
#   BUILDS          a builds-list file, or --builds-from PROGRAM (PROGRAM's standard output is
#                   the list; several BUILDS may be given, their lines are joined)
#   --markdown OUT  also write the results as a markdown table (to paste into bench/RESULTS.md)
#   --jobs N        compile jobs in parallel (default: nproc)
#   --targets LIST  a comma list out of sm_80,sm_90,gfx90a,gfx1100,dg2 (default: all of them)
#   --keep DIR      keep every intermediate file (sources, PTX, AMD asm, IGC dumps) in DIR
#
# A builds list: one kernel build per line, blank lines and '#' comments ignored:
#   CLASS|FILE|OPTIONS
#   CLASS    nvidia, amd or intel: the vendor whose tile-table defaults OPTIONS carry. It picks the
#            targets: nvidia -> sm_80, sm_90 (clang-15 NVPTX + libclc -> llc -> ptxas -v);
#            amd -> gfx90a, gfx1100 (clang-15 amdgcn + libclc -> llc, the asm's comments);
#            intel -> DG2 (ocloc, the IGC of Debian's intel-opencl-icd, with shader dumps).
#   FILE     a kernel file under cl/ (or an absolute path), compiled as the runtime does: the text
#            of cl/dipole_common.cl, a newline, #line 1 "FILE", the file's text.
#   OPTIONS  the build options as dp_build_options writes them, e.g. -cl-std=CL1.2 -DVARIANT=1
#            -DHEAD_DIM=64 -DIS_CAUSAL=1 -DHAS_WINDOW=0 -DBLOCK_M=64 -DBLOCK_N=32 -DWORK_GROUP=64
#            (clang and ocloc get the -D/-U/-I/-cl-std options and the standard -cl-* ones; a
#            vendor's own flag, such as -cl-nv-opt-level=3, is left out and noted)
#
# Verdict, exit 1 where: any build fails to compile; or a kernel with head dims <= 128 (HEAD_DIM
# and, where set, HEAD_DIM_V) has a stack frame or spill (NVIDIA, either arch), scratch or
# occupancy < 2 waves per SIMD (AMD, either arch), or a spill, scratch or private memory at the
# SIMD width IGC chose (Intel; where there is one, the 256-GRF build is tried and reported beside
# it, but the default build decides).
# A head dim > 128 is reported, never fails. A target whose toolchain is missing is skipped with
# the reason printed; exit 77 (meson: skipped) when every target is skipped; 2 on a usage error.
#
# env: LLVM_BIN (default /usr/lib/llvm-15/bin), LIBCLC_DIR (default /usr/lib/clc), PTXAS
# (default: ptxas on PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin), CUOBJDUMP (SASS counts,
# where there is one), GPU_ISA_OCLOC_DIR (where ocloc is unpacked once and kept, default
# ${TMPDIR:-/tmp}/dipole-gpu-isa-ocloc), GPU_ISA_JOB_TIMEOUT (seconds per compile job, 900).
#
# Intel's ocloc comes from Debian's packages, unpacked with dpkg -x into GPU_ISA_OCLOC_DIR and
# never installed: an installed intel-opencl-icd registers an Intel ICD, and the ICD loader then
# aborts every AddressSanitizer run of the test suite.
set -euo pipefail

self=$(readlink -f "$0")
root=$(cd "$(dirname "$self")/.." && pwd)

die_usage() {
    echo "gpu_isa: $*" >&2
    sed -n '6,12p' "$self" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---- helpers shared by the main run and the compile jobs ------------------------------------

# One line of text out of a file's first lines, for a record's note.
oneline() { [ -r "$1" ] || return 0; head -c 400 "$1" | tr '\n\t' '  ' | sed 's/  */ /g; s/^ //; s/ $//'; }

# The head dim a build is judged by: the larger of q/k's (HEAD_DIM, the kernels' default 64)
# and v's (HEAD_DIM_V, where it is set): a value row of 256 is a large-head kernel.
deciding_dim() {
    local d dv
    d=$(sed -n 's/.*-DHEAD_DIM=\([0-9]*\).*/\1/p' <<<"$1")
    dv=$(sed -n 's/.*-DHEAD_DIM_V=\([0-9]*\).*/\1/p' <<<"$1")
    d=${d:-64}
    echo $((${dv:-0} > d ? dv : d))
}

# The options clang and ocloc understand out of a build's OPTIONS: the defines and include
# paths, -cl-std and the standard OpenCL C flags. Prints "KEPT<TAB>DROPPED".
split_options() {
    local kept="" dropped="" o
    for o in $1; do
        case "$o" in
        -D* | -U* | -I* | -cl-std=* | -w | -Werror | -cl-opt-disable | -cl-mad-enable | \
            -cl-no-signed-zeros | -cl-unsafe-math-optimizations | -cl-finite-math-only | \
            -cl-fast-relaxed-math | -cl-denorms-are-zero | -cl-single-precision-constant | \
            -cl-fp32-correctly-rounded-divide-sqrt) kept+=" $o" ;;
        *) dropped+=" $o" ;;
        esac
    done
    printf '%s\t%s\n' "${kept# }" "${dropped# }"
}

# A record, one per kernel and target, tab-separated:
#   IDX TARGET KERNEL REGS MEM MEMB OCC SIMD INSTS STATUS NOTE
# MEM says what the kernel keeps in memory, MEMB its largest number of bytes; STATUS is ok,
# bad (it keeps something in memory, or occupancy < 2) or error (the build failed).
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@"; }
error_record() { record "$1" "$2" "-" "-" "-" 0 "-" "-" "-" error "$3"; }

# clang-15 with libclc, then opt and llc: SRC TRIPLE CPU LIBCLC LLC-ARGS OUT (asm or PTX).
# shellcheck disable=SC2086 # the build's options and LLC-ARGS are words
llvm_compile() {
    local src=$1 triple=$2 cpu=$3 clc=$4 out=$6 base=${6%.*} opts cpu_arg=()
    IFS=$'\t' read -r opts _ <<<"$(split_options "$build_opts")"
    [ -n "$cpu" ] && cpu_arg=(-mcpu="$cpu")
    # -nogpulib: no ROCm/CUDA device library; libclc is linked below instead.
    "$LLVM_BIN/clang" -x cl -target "$triple" "${cpu_arg[@]}" -nogpulib -Xclang -finclude-default-header \
        -O3 $opts -emit-llvm -c "$src" -o "$base.bc" &&
        "$LLVM_BIN/llvm-link" -suppress-warnings "$base.bc" "$clc" -o "$base.linked.bc" &&
        "$LLVM_BIN/opt" -O3 "$base.linked.bc" -o "$base.opt.bc" &&
        "$LLVM_BIN/llc" $5 -O3 "$base.opt.bc" -o "$out"
}

# PTX instructions per entry: the lines of an entry's body that are instructions (not
# declarations, labels or comments). Prints "KERNEL COUNT" lines.
ptx_counts() {
    awk '/^[ \t.a-z]*\.entry[ \t]/ { k = $0; sub(/.*\.entry[ \t]+/, "", k); sub(/[ \t(].*/, "", k); next }
         k != "" && /^\{/ { body = 1; n = 0; next }
         body && /^\}/ { print k, n; body = 0; k = ""; next }
         body && /^[ \t]+(@!?%p[0-9]+[ \t]+)?[a-z]/ { n++ }' "$1"
}

# SASS instructions per function of a cubin, where a cuobjdump is at hand.
sass_counts() {
    "$CUOBJDUMP" -sass "$1" 2>/dev/null | awk '
        /Function : / { k = $NF; next }
        k != "" && /^[ \t]+\/\*[0-9a-f]+\*\// { n[k]++ }
        END { for (f in n) print f, n[f] }'
}

job_nvidia() {
    local i=$1 d a
    d=$work/job/$i.nvidia
    mkdir -p "$d"
    if ! llvm_compile "$work/src/$i.cl" nvptx64-nvidia-nvcl "" "$LIBCLC_DIR/nvptx64--nvidiacl.bc" \
        "-mcpu=sm_80" "$d/k.ptx" >"$d/err" 2>&1; then
        for a in $NV_ARCHS; do error_record "$i" "$a" "clang/llc: $(oneline "$d/err")"; done
        return
    fi
    ptx_counts "$d/k.ptx" >"$d/ptx-counts"
    for a in $NV_ARCHS; do
        # llc 15 writes PTX 7.0 for sm_80; ptxas compiles it for any newer arch as well.
        if ! "$PTXAS" -arch="$a" -v "$d/k.ptx" -o "$d/k.$a.cubin" >"$d/ptxas.$a" 2>&1; then
            error_record "$i" "$a" "ptxas: $(oneline "$d/ptxas.$a")"
            continue
        fi
        : >"$d/sass.$a"
        [ -n "${CUOBJDUMP:-}" ] && sass_counts "$d/k.$a.cubin" >"$d/sass.$a"
        awk -v i="$i" -v a="$a" -v counts="$d/ptx-counts" -v sass="$d/sass.$a" -v note="$NOTE_DROPPED" '
            BEGIN { FS = "[ \t]+"; OFS = "\t"
                    while ((getline l < counts) > 0) { split(l, f, " "); ptx[f[1]] = f[2] }
                    while ((getline l < sass) > 0) { split(l, f, " "); sa[f[1]] = f[2] } }
            /Compiling entry function/ { k = $0; sub(/.*function \047/, "", k); sub(/\047.*/, "", k); fp = ""; next }
            /Function properties for/ { fp = $NF; next }
            /bytes stack frame/ && fp == k { st = $2; ss = $6; sl = $10 }
            /Used [0-9]+ registers/ {
                for (j = 1; j < NF; j++) if ($j == "Used") r = $(j + 1)
                mb = st; if (ss > mb) mb = ss; if (sl > mb) mb = sl
                ins = (k in sa) ? sa[k] " SASS" : ptx[k] " PTX"
                print i, a, k, r, "stack " st ", spill " ss "/" sl, mb + 0, "-", "-", ins, (mb > 0 ? "bad" : "ok"), note
                st = ss = sl = 0 }' "$d/ptxas.$a"
    done
}

job_amd() {
    local i=$1 cpu=$2 d
    d=$work/job/$i.$cpu
    mkdir -p "$d"
    if ! llvm_compile "$work/src/$i.cl" amdgcn-amd-amdhsa "$cpu" "$LIBCLC_DIR/amdgcn--amdhsa.bc" \
        "-mtriple=amdgcn-amd-amdhsa -mcpu=$cpu" "$d/k.s" >"$d/err" 2>&1; then
        error_record "$i" "$cpu" "clang/llc: $(oneline "$d/err")"
        return
    fi
    # Registers, scratch and occupancy (waves per SIMD) from the comments llc writes after each
    # function; instructions: the lines of the kernel's body that are machine instructions.
    awk -v i="$i" -v a="$cpu" -v note="$NOTE_DROPPED" '
        BEGIN { OFS = "\t" }
        /^[ \t]*\.amdhsa_kernel[ \t]/ { kern[$2] = 1 }
        /^[A-Za-z_][A-Za-z_0-9]*:/ { k = $1; sub(/:.*/, "", k); body = 1; n[k] = 0; next }
        /^\.Lfunc_end/ { body = 0 }
        body && /^[ \t]+[a-z]/ { n[k]++ }
        /; NumVgprs:/ { vg[k] = $3 }
        /; NumAgprs:/ { if ($3 + 0 > 0) vg[k] = vg[k] "+" $3 "a" }
        /; ScratchSize:/ { sc[k] = $3 }
        /; Occupancy:/ { oc[k] = $3 }
        END { for (k in kern) print i, a, k, vg[k], "scratch " sc[k], sc[k] + 0, oc[k], "-", n[k] " ISA", \
                  ((sc[k] + 0 > 0 || oc[k] + 0 < 2) ? "bad" : "ok"), note }' "$d/k.s"
}

# IGC's choice per kernel, from its shader dumps: the patch-list dump (.cos) of the kernel it
# kept gives the SIMD width, GRF count, private memory and scratch; the asm of that width (of
# the latest retry, where IGC retried) gives the spill size and the instruction count.
# Prints "KERNEL SIMD GRF PRIVATE SCRATCH SPILL INSTS" lines.
intel_parse() {
    local dir=$1 c line k s g p sc a best bestn n
    for c in "$dir"/*.cos; do
        [ -e "$c" ] || continue
        line=$(awk '/Kernel Name = / { k = $0; sub(/.*Kernel Name = /, "", k); sub(/ .*/, "", k) }
            /LargestCompiledSIMDSize/ { s = $NF } /NumGRFRequired/ { g = $NF }
            /PerThreadPrivateMemorySize/ { sub(/.*= */, ""); p += $0 }
            /PerThreadScratchSpace/ { sub(/.*= */, ""); if ($0 + 0 > sc) sc = $0 + 0 }
            END { print k, s, g, p + 0, sc + 0 }' "$c")
        read -r k s g p sc <<<"$line"
        best="" bestn=-1
        for a in "$dir"/*simd"$s"_entry_*.asm; do
            [ -e "$a" ] || continue
            grep -qx "//\.kernel $k" "$a" || continue
            n=$(basename "$a" | sed -n 's/.*_\([0-9][0-9]*\)_simd[0-9]*_entry_.*/\1/p')
            n=${n:-0}
            if [ "$n" -gt "$bestn" ]; then best=$a bestn=$n; fi
        done
        if [ -n "$best" ]; then
            awk -v k="$k" -v s="$s" -v g="$g" -v p="$p" -v sc="$sc" '
                /^\/\/\.spill size/ { sp = $3 } /^\/\/\.instCount/ { ic = $2 }
                END { print k, s, g, p, sc, sp + 0, ic }' "$best"
        else
            echo "$k $s $g $p $sc ? ?"
        fi
    done
}

ocloc_build() { # SRC DUMPDIR EXTRA-OPTION
    local opts
    IFS=$'\t' read -r opts _ <<<"$(split_options "$build_opts")"
    mkdir -p "$2"
    LD_LIBRARY_PATH="$OCLOC_LD" IGC_ShaderDumpEnable=1 IGC_DumpToCustomDir="$2" \
        "$OCLOC" compile -file "$1" -device dg2 -options "$opts${3:+ $3}" \
        -output k -out_dir "$2/bin"
}

job_intel() {
    local i=$1 d k s g p sc sp ic note
    d=$work/job/$i.intel
    mkdir -p "$d"
    if ! ocloc_build "$work/src/$i.cl" "$d/ig" "" >"$d/err" 2>&1; then
        error_record "$i" dg2 "ocloc: $(oneline "$d/err")"
        return
    fi
    intel_parse "$d/ig" >"$d/kernels"
    if [ ! -s "$d/kernels" ]; then
        error_record "$i" dg2 "ocloc built it, but IGC left no patch-list dump (.cos) to read"
        return
    fi
    # Where the default build keeps something in memory: the same with 256 registers a thread.
    if awk '$4 > 0 || $5 > 0 || $6 != 0 { bad = 1 } END { exit !bad }' "$d/kernels"; then
        if ocloc_build "$work/src/$i.cl" "$d/ig256" -cl-intel-256-GRF-per-thread >"$d/err256" 2>&1; then
            intel_parse "$d/ig256" >"$d/kernels256"
        else
            echo "* 256-GRF build failed: $(oneline "$d/err256")" >"$d/kernels256"
        fi
    fi
    while read -r k s g p sc sp ic; do
        note=""
        if [ -s "$d/kernels256" ] && { [ "$p" -gt 0 ] || [ "$sc" -gt 0 ] || [ "$sp" != 0 ]; }; then
            note=$(awk -v k="$k" '$1 == "*" { $1 = ""; print; exit }
                $1 == k { v = ($4 + $5 + $6 == 0) ? "avoids it" : "does not avoid it"
                          printf "256-GRF: SIMD%s, spill %s, private %s, scratch %s: %s", $2, $6, $4, $5, v }' "$d/kernels256")
        fi
        [ -n "$NOTE_DROPPED" ] && note="${note:+$note; }$NOTE_DROPPED"
        local mb=$p
        [ "$sc" -gt "$mb" ] && mb=$sc
        [ "$sp" != "?" ] && [ "$sp" -gt "$mb" ] && mb=$sp
        local st=ok
        { [ "$mb" -gt 0 ] || [ "$sp" = "?" ]; } && st=bad
        [ "$sp" = "?" ] && note="${note:+$note; }no asm dump of the chosen SIMD width"
        record "$i" dg2 "$k" "$g GRF" "spill $sp, private $p, scratch $sc" "$mb" "-" "$s" "$ic vISA" "$st" "$note"
    done <"$d/kernels"
}

# A compile job (run by xargs in its own process): IDX CLASS [CPU]. Its records go to stdout.
if [ "${1:-}" = --job ]; then
    shift
    # shellcheck source=/dev/null # written by the main run
    . "$work/env"
    i=$1
    build_opts=$(sed -n "$((i + 1))p" "$work/options")
    IFS=$'\t' read -r _ NOTE_DROPPED <<<"$(split_options "$build_opts")"
    [ -n "$NOTE_DROPPED" ] && NOTE_DROPPED="left out: $NOTE_DROPPED"
    case "$2" in
    nvidia) job_nvidia "$i" ;;
    amd) job_amd "$i" "$3" ;;
    intel) job_intel "$i" ;;
    esac
    exit 0
fi

# ---- the main run -------------------------------------------------------------------------

# A command that fails where nothing expects it stops the run (set -e): say where.
set -E
trap 'echo "gpu_isa: FAIL: internal error, line $LINENO: $BASH_COMMAND" >&2' ERR

markdown="" jobs=$(nproc 2>/dev/null || echo 2) targets="sm_80,sm_90,gfx90a,gfx1100,dg2" keep=""
lists=()
while (($#)); do
    case "$1" in
    --markdown) markdown=${2:?}; shift 2 ;;
    --jobs) jobs=${2:?}; shift 2 ;;
    --targets) targets=${2:?}; shift 2 ;;
    --keep) keep=${2:?}; shift 2 ;;
    --builds-from) lists+=("cmd:${2:?}"); shift 2 ;;
    -h | --help) sed -n '2,42p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die_usage "unknown option $1" ;;
    *) lists+=("file:$1"); shift ;;
    esac
done
((${#lists[@]})) || die_usage "no builds list"
t0=$SECONDS

if [ -n "$keep" ]; then
    work=$(mkdir -p "$keep" && cd "$keep" && pwd)
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-isa.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/src" "$work/job" "$work/rec"
export work

# The builds: class, file and options, one line each, numbered from 0.
: >"$work/builds"
for l in "${lists[@]}"; do
    case "$l" in
    cmd:*)
        if ! "${l#cmd:}" >"$work/list.out" 2>"$work/list.err"; then
            echo "gpu_isa: FAIL: ${l#cmd:} failed: $(oneline "$work/list.err")" >&2
            exit 1
        fi
        cat "$work/list.out" >>"$work/builds" ;;
    file:*)
        [ -r "${l#file:}" ] || die_usage "cannot read builds list ${l#file:}"
        cat "${l#file:}" >>"$work/builds" ;;
    esac
done
sed -i -e 's/#.*//' -e 's/[ \t]*$//' -e '/^[ \t]*$/d' "$work/builds"
[ -s "$work/builds" ] || { echo "gpu_isa: FAIL: the builds list is empty" >&2; exit 1; }
classes=() files=() opts=()
while IFS='|' read -r c f o; do
    c=${c// /} f=${f// /}
    case "$c" in nvidia | amd | intel) ;; *) echo "gpu_isa: FAIL: bad class '$c' in: $c|$f|$o" >&2; exit 1 ;; esac
    case "$f" in /*) path=$f ;; *) path=$root/cl/$f ;; esac
    [ -r "$path" ] || { echo "gpu_isa: FAIL: no kernel file $path" >&2; exit 1; }
    i=${#classes[@]}
    # The program text exactly as the runtime builds it (src/programs.c, program_source).
    { cat "$root/cl/dipole_common.cl"; printf '\n#line 1 "%s"\n' "$(basename "$f")"; cat "$path"; } >"$work/src/$i.cl"
    classes+=("$c") files+=("$(basename "$f")") opts+=("${o# }")
done <"$work/builds"
printf '%s\n' "${opts[@]}" >"$work/options"

# ---- toolchains: each target is checked whole, on a one-line kernel, before it is used -----

LLVM_BIN=${LLVM_BIN:-/usr/lib/llvm-15/bin}
LIBCLC_DIR=${LIBCLC_DIR:-/usr/lib/clc}
job_timeout=${GPU_ISA_JOB_TIMEOUT:-900}
PTXAS=${PTXAS:-$(command -v ptxas || true)}
for p in "${CUDA_HOME:+$CUDA_HOME/bin/ptxas}" /usr/local/cuda/bin/ptxas; do
    [ -z "$PTXAS" ] && [ -n "$p" ] && [ -x "$p" ] && PTXAS=$p
done
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || true)}
if [ -z "$CUOBJDUMP" ] && [ -n "$PTXAS" ] && [ -x "$(dirname "$PTXAS")/cuobjdump" ]; then
    CUOBJDUMP=$(dirname "$PTXAS")/cuobjdump
fi
OCLOC="" OCLOC_LD="" OCLOC_VERSION="" why=""
all_targets="sm_80 sm_90 gfx90a gfx1100 dg2"
declare -A skip=()
skip_targets() { # REASON TARGET...: skips those not skipped already
    local r=$1 t
    shift
    for t; do [ -n "${skip[$t]:-}" ] || skip[$t]=$r; done
}

llvm_missing() { # LIBCLC-FILE: sets why to what clang-15 + libclc lack for it
    local t
    why=""
    for t in clang llvm-link opt llc; do
        [ -x "$LLVM_BIN/$t" ] || { why="no $LLVM_BIN/$t (packages clang-15, llvm-15)"; return; }
    done
    [ -r "$LIBCLC_DIR/$1" ] || why="no $LIBCLC_DIR/$1 (package libclc-15)"
}

# ocloc: unpacked once from Debian's packages into a private folder (never installed; see the
# top). A library it needs that the machine lacks is found with ldd and unpacked beside it.
ocloc_dir=${GPU_ISA_OCLOC_DIR:-${TMPDIR:-/tmp}/dipole-gpu-isa-ocloc}
ocloc_fetch() { # INTO PACKAGE...: downloads the packages' .deb files and unpacks them INTO
    local into=$1 p deb
    shift
    mkdir -p "$ocloc_dir/debs"
    (cd "$ocloc_dir/debs" && { apt-get download "$@" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get download "$@" >/dev/null 2>&1; }; }) || return 1
    for p; do
        for deb in "$ocloc_dir/debs/${p}"_*.deb; do
            [ -e "$deb" ] || return 1
            dpkg -x "$deb" "$into" || return 1
            # shellcheck disable=SC2016 # dpkg-deb's format, not the shell's
            dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$into/VERSIONS"
        done
    done
}
ocloc_setup() { # sets OCLOC, OCLOC_LD, OCLOC_VERSION, or why
    local pkgs tmp missing lib more round
    pkgs=(intel-opencl-icd libigc1 libigdfcl1 libigdgmm12 libopencl-clang14 libllvmspirvlib14)
    if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
        why="no apt-get/dpkg to fetch ocloc with"
        return
    fi
    if [ ! -x "$ocloc_dir/root/usr/bin/ocloc" ]; then
        tmp=$ocloc_dir/root.$$
        rm -rf "$tmp"
        if ! mkdir -p "$tmp" || ! ocloc_fetch "$tmp" "${pkgs[@]}"; then
            rm -rf "$tmp"
            why="apt-get download ${pkgs[*]} failed (offline?)"
            return
        fi
        rm -rf "$ocloc_dir/root"
        mv "$tmp" "$ocloc_dir/root"
    fi
    # Libraries the unpacked ones need and the machine lacks (ldd), by package: on a Debian 12
    # with clang-14 there are none; a bare one lacks LLVM 14's.
    for round in 1 2 3; do
        OCLOC_LD=$(find "$ocloc_dir/root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
        missing=$(find "$ocloc_dir/root" \( -name '*.so*' -o -name ocloc \) -type f \
            -exec env LD_LIBRARY_PATH="$OCLOC_LD" ldd {} + 2>/dev/null | awk '/not found/ { print $1 }' | sort -u)
        [ -z "$missing" ] && break
        [ "$round" = 3 ] && { why="ocloc still lacks $(echo "$missing" | paste -sd' ')"; return; }
        more=()
        for lib in $missing; do
            case "$lib" in
            libLLVM-14.so*) more+=(libllvm14) ;;
            libclang-cpp.so.14*) more+=(libclang-cpp14) ;;
            libz3.so.4*) more+=(libz3-4) ;;
            libedit.so.2*) more+=(libedit2) ;;
            libxml2.so.2*) more+=(libxml2) ;;
            libffi.so.8*) more+=(libffi8) ;;
            libicuuc.so.72* | libicudata.so.72*) more+=(libicu72) ;;
            libbsd.so.0*) more+=(libbsd0) ;;
            libmd.so.0*) more+=(libmd0) ;;
            libtinfo.so.6*) more+=(libtinfo6) ;;
            *) why="ocloc needs $lib, and no package for it is known here"; return ;;
            esac
        done
        ocloc_fetch "$ocloc_dir/root" "${more[@]}" || { why="apt-get download ${more[*]} failed (offline?)"; return; }
    done
    OCLOC=$ocloc_dir/root/usr/bin/ocloc
    OCLOC_VERSION=$(awk '/^(intel-opencl-icd|libigc1) / { printf "%s%s", sep, $0; sep = ", " }' "$ocloc_dir/root/VERSIONS")
}

IFS=, read -ra want <<<"$targets"
for t in "${want[@]}"; do
    case " $all_targets " in *" $t "*) ;; *) die_usage "unknown target $t" ;; esac
done
for t in $all_targets; do
    [[ ",$targets," == *",$t,"* ]] || skip_targets "not asked for (--targets)" "$t"
done
llvm_missing nvptx64--nvidiacl.bc
if [ -z "$why" ] && [ -z "$PTXAS" ]; then
    why="no ptxas (the CUDA toolkit's; set PTXAS)"
elif [ -z "$why" ] && [ ! -x "$PTXAS" ]; then
    why="ptxas $PTXAS is not an executable"
fi
[ -n "$why" ] && skip_targets "$why" sm_80 sm_90
llvm_missing amdgcn--amdhsa.bc
[ -n "$why" ] && skip_targets "$why" gfx90a gfx1100
if [ -z "${skip[dg2]:-}" ]; then
    why=""
    ocloc_setup
    [ -n "$why" ] && skip_targets "$why" dg2
fi
nv_archs() { local t; for t in sm_80 sm_90; do [ -n "${skip[$t]:-}" ] || printf '%s ' "$t"; done; }
write_env() {
    cat >"$work/env" <<EOF
LLVM_BIN='$LLVM_BIN' LIBCLC_DIR='$LIBCLC_DIR' PTXAS='$PTXAS' CUOBJDUMP='$CUOBJDUMP'
OCLOC='$OCLOC' OCLOC_LD='$OCLOC_LD' NV_ARCHS='$(nv_archs)'
EOF
}
write_env

# The probe: a one-line kernel through each target's whole chain, so that a broken toolchain
# reads as a skipped target, not as every kernel failing to build.
probe=${#classes[@]}
printf '__kernel void probe(__global float *x) { x[get_global_id(0)] += 1.0f; }\n' >"$work/src/$probe.cl"
echo "-cl-std=CL1.2" >>"$work/options"
probe() { # CLASS CPU-OR-TARGET...: skips each target that gives no record of a build
    local class=$1 out t
    shift
    out=$(timeout 300 bash "$self" --job "$probe" "$class" "$@" 2>&1) || true
    for t in "$@"; do
        awk -F'\t' -v t="$t" '$2 == t && ($10 == "ok" || $10 == "bad") { ok = 1 } END { exit !ok }' <<<"$out" ||
            skip_targets "the toolchain fails on a one-line kernel: $(awk -F'\t' -v t="$t" '
                $2 == t { print $11; found = 1; exit } END { if (!found) print "no result" }' <<<"$out" | head -c 300)" "$t"
    done
}
# shellcheck disable=SC2046 # the arch names are words
[ -n "$(nv_archs)" ] && probe nvidia $(nv_archs)
for t in gfx90a gfx1100; do [ -n "${skip[$t]:-}" ] || probe amd "$t"; done
[ -n "${skip[dg2]:-}" ] || probe intel dg2
write_env
rm -rf "${work:?}/job/$probe".*

live=0
for t in $all_targets; do
    if [ -n "${skip[$t]:-}" ]; then echo "gpu_isa: $t skipped: ${skip[$t]}"; else live=$((live + 1)); fi
done
if [ "$live" = 0 ]; then
    echo "gpu_isa: every target skipped"
    exit 77
fi

# ---- the compile jobs, in parallel ---------------------------------------------------------

for ((i = 0; i < probe; i++)); do
    case "${classes[$i]}" in
    nvidia) [ -z "$(nv_archs)" ] || echo "$i nvidia" ;;
    amd) for t in gfx90a gfx1100; do [ -n "${skip[$t]:-}" ] || echo "$i amd $t"; done ;;
    intel) [ -n "${skip[dg2]:-}" ] || echo "$i intel" ;;
    esac
done >"$work/jobs"
echo "gpu_isa: ${#classes[@]} builds, $(wc -l <"$work/jobs") compile jobs, $jobs at a time"
# Large head dims first, so that the run does not end on one long compile. Each job writes
# its records to rec/IDX.CLASS[.CPU], and its exit status beside them where it is not 0.
export job_timeout
# shellcheck disable=SC2016 # the sh that xargs starts expands them
while read -r i c t; do
    # no trailing blank: xargs would join the next line
    echo "$(deciding_dim "${opts[$i]}") $i $c${t:+ $t}"
done <"$work/jobs" | sort -k1,1nr -s | cut -d' ' -f2- |
    xargs -r -P "$jobs" -L 1 sh -c 'f=$work/rec/$1.$2${3:+.$3}
        timeout "$job_timeout" bash "$0" --job "$@" >"$f" 2>"$f.err" || echo $? >"$f.rc"' "$self" || true

# ---- verdict and report --------------------------------------------------------------------

: >"$work/records"
while read -r i c t; do
    f=$work/rec/$i.$c${t:+.$t}
    [ -e "$f" ] && cat "$f" >>"$work/records"
    if [ -e "$f.rc" ] || [ ! -s "$f" ]; then
        rc=$(cat "$f.rc" 2>/dev/null || echo 0)
        case "$rc" in 0) rc="status 0" ;; 124) rc="timed out after $job_timeout s" ;; *) rc="status $rc" ;; esac
        case "$c" in nvidia) tg=$(nv_archs) ;; amd) tg=$t ;; *) tg=dg2 ;; esac
        for a in $tg; do
            error_record "$i" "$a" "the compile job ended ($rc) without its records: $(oneline "$f.err")" >>"$work/records"
        done
    fi
done <"$work/jobs"

fails=0
: >"$work/table"
order() { case "$1" in sm_80) echo 0 ;; sm_90) echo 1 ;; gfx90a) echo 2 ;; gfx1100) echo 3 ;; *) echo 4 ;; esac; }
while IFS=$'\t' read -r i tgt k regs mem memb occ simd ins st note; do
    v=$(sed -n 's/.*-DVARIANT=\([0-9]*\).*/\1/p' <<<"${opts[$i]}")
    # half storage shows as v=N/f16, v=N/bf16 (DP_STORAGE is the dipole_dtype)
    case "$(sed -n 's/.*-DDP_STORAGE=\([0-9]*\).*/\1/p' <<<"${opts[$i]}")" in
    1) v="$v/f16" ;;
    2) v="$v/bf16" ;;
    esac
    d=$(deciding_dim "${opts[$i]}")
    # shown as d, or d:dv where v's head dim differs
    hd=$(sed -n 's/.*-DHEAD_DIM=\([0-9]*\).*/\1/p' <<<"${opts[$i]}")
    hd=${hd:-64}$(sed -n 's/.*-DHEAD_DIM_V=\([0-9]*\).*/:\1/p' <<<"${opts[$i]}")
    bm=$(sed -n 's/.*-DBLOCK_M=\([0-9]*\).*/\1/p' <<<"${opts[$i]}")
    bn=$(sed -n 's/.*-DBLOCK_N=\([0-9]*\).*/\1/p' <<<"${opts[$i]}")
    verdict=ok
    if [ "$st" = error ]; then
        verdict=FAIL
    elif [ "$st" = bad ]; then
        if [ "$d" -le 128 ]; then verdict=FAIL; else verdict=over; fi
    fi
    [ "$verdict" = FAIL ] && fails=$((fails + 1))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(order "$tgt")" "$i" \
        "${files[$i]}" "$k" "${classes[$i]}" "$tgt" "${v:--}" "$hd" "$([ -n "$bm$bn" ] && echo "${bm:-?}x${bn:-?}" || echo -)" "$regs" "$mem" \
        "$memb" "$occ" "$simd" "$ins" "$verdict${note:+	$note}" >>"$work/table"
done <"$work/records"
sort -t$'\t' -k3,3 -k4,4 -k7,7n -k8,8n -k1,1n -k2,2n "$work/table" | cut -f2- >"$work/table.sorted"

# The text report: one line per kernel and target.
while IFS=$'\t' read -r _ _ k cls tgt v d tile regs mem _ occ simd ins verdict note; do
    printf '%-4s %-7s %-7s %-15s v=%s d=%-3s %-6s regs=%-8s %-34s occ=%-2s simd=%-2s insts=%-10s %s\n' \
        "$verdict" "$cls" "$tgt" "$k" "$v" "$d" "$tile" "$regs" "$mem" "$occ" "$simd" "$ins" \
        "${note:+($note)}"
done <"$work/table.sorted" | sed 's/ *$//'

# Per target: worst bytes in memory and lowest occupancy (each with its kernel), for the head
# dims that decide (<= 128) and apart for the larger ones; the SIMD widths IGC chose.
summary() {
    awk -F'\t' '
        function deciding(hd,   a, n) {
            n = split(hd, a, ":"); return n > 1 && a[2] + 0 > a[1] + 0 ? a[2] + 0 : a[1] + 0 }
        function worst(t, g) {
            if (!((t, g) in w) || $11 + 0 > w[t, g]) { w[t, g] = $11 + 0; wk[t, g] = $3 " v" $6 " d" $7 }
            if ($12 != "-" && (!((t, g) in lo) || $12 + 0 < lo[t, g])) { lo[t, g] = $12 + 0; lk[t, g] = $3 " v" $6 " d" $7 } }
        function part(t, g, what,   r) {
            if (!((t, g) in w)) return ""
            r = "worst " what " " w[t, g] " B (" wk[t, g] ")"
            if ((t, g) in lo) r = r ", lowest occupancy " lo[t, g] " (" lk[t, g] ")"
            return r }
        { t = $5; n[t]++; if ($15 == "FAIL") f[t]++
          if ($3 == "-") { e[t]++; next }
          worst(t, deciding($7) <= 128 ? "small" : "large")
          if ($13 != "-" && !index(simd[t], "SIMD" $13 " ")) simd[t] = simd[t] "SIMD" $13 " " }
        END { split("sm_80 sm_90 gfx90a gfx1100 dg2", order, " ")
              for (j = 1; j <= 5; j++) { t = order[j]; if (!(t in n)) continue
                  line = t ": " n[t] " kernels, " (f[t] + 0) " failed"
                  if (e[t]) line = line " (" e[t] " builds did not compile)"
                  what = (t ~ /^sm/) ? "stack/spill" : (t ~ /^gfx/) ? "scratch" : "spill/private/scratch"
                  if ((r = part(t, "small", what)) != "") line = line "; d<=128: " r
                  if ((r = part(t, "large", what)) != "") line = line "; d>128: " r
                  if (t in simd) { sub(/ $/, "", simd[t]); line = line "; IGC chose " simd[t] }
                  print line } }' "$work/table.sorted"
}
secs=$((SECONDS - t0))
echo "gpu_isa summary ($((${#classes[@]})) builds, ${secs} s):"
summary | sed 's/ *$//; s/^/  /'

if [ -n "$markdown" ]; then
    {
        echo "### Static GPU check ($(date -u +%Y-%m-%d), tests/gpu_isa.sh)"
        echo
        echo "Toolchains: $("$LLVM_BIN/clang" --version 2>/dev/null | head -1) with libclc ($LIBCLC_DIR)${PTXAS:+; ptxas $("$PTXAS" --version 2>/dev/null | sed -n 's/.*release \([^,]*\),.*/\1/p')}${OCLOC_VERSION:+; ocloc/IGC: $OCLOC_VERSION}."
        for t in sm_80 sm_90 gfx90a gfx1100 dg2; do
            [ -n "${skip[$t]:-}" ] && echo "Skipped $t: ${skip[$t]}."
        done
        echo
        echo "| kernel | class/target | variant | head dim (d or d:dv) | tile | regs/VGPRs | stack/scratch/spill (B) | occupancy | SIMD | instructions | verdict |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        while IFS=$'\t' read -r _ _ k cls tgt v d tile regs mem _ occ simd ins verdict note; do
            echo "| $k | $cls/$tgt | $v | $d | $tile | $regs | $mem | $occ | $simd | $ins | $verdict${note:+ ($note)} |"
        done <"$work/table.sorted"
        echo
        summary | sed 's/^/- /'
        echo
        echo "Stack: ptxas's stack frame; spill: ptxas's spill stores/loads (NVIDIA), IGC's spill size"
        echo "(Intel); scratch: ScratchSize (AMD) or IGC's scratch; private: IGC's private memory per"
        echo "work-item. Occupancy: waves per SIMD (AMD). SIMD: the width IGC chose. Instructions:"
        echo "PTX instructions in the entry's body (SASS where cuobjdump exists), machine instructions"
        echo "in the kernel's body (AMD), IGC's instCount (Intel): static counts, not executed ones."
        echo "Verdict: FAIL (head dim <= 128, or no build), over (head dim > 128: reported only), ok."
    } >"$markdown"
    echo "gpu_isa: markdown table in $markdown"
fi

if [ "$fails" -gt 0 ]; then
    echo "gpu_isa: FAIL: $fails kernels (by target) keep data in memory, run too few waves, or did not build"
    exit 1
fi
echo "gpu_isa: ok"
