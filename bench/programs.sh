#!/usr/bin/env bash
# Programs benchmark: real programs started from `nexus mount` (through the
# Index) against the same files on the native file system, in one run.
#
#   bench/programs.sh [options]
#
# Options:
#   --runs N      paired runs of every workload (default 11): medians of
#                 each side and of the per-pair ratios are reported
#   --only LIST   comma-separated subset of walk,walk-raw,import,tests,gcc
#                 (default: all)
#   --kernel-metadata
#                 also run every workload on a second mount of the same
#                 store made with `nexus mount --kernel-metadata` (`kmeta`
#                 below) and report it beside nexus; skipped, with the
#                 reason in the report, where that mount fails (Linux older
#                 than 6.12)
#   --smoke       Python's packages only and one run of a small version of
#                 each Python workload (seconds once the packages are
#                 cached); its figures only show that the script works
#   --check       exit with status 3 when a target is missed
#   --keep        keep the work dir (store, trees, logs)
#   --out DIR     where to write programs-<date>.{md,json} (default: bench/out)
#
# Environment:
#   NEXUS_BENCH_DIR  where the packages are cached (programs/debs) and the
#                    work dir is made (default /var/tmp/nexus-bench)
#   NIP, NEXUS       binaries (default: <repo>/target/release/{nip,nexus})
#
# The packages of bench/programs.lock (Python 3.11 and its test suite, Perl,
# locales, gcc 12 and binutils from Debian 12) are fetched with `apt-get
# download`, grafted into a fresh store with `nip add` and mounted with
# `nexus mount MNT --index IDX`. The same files on the native file system:
# each package exported with `nip export` into NATIVE/App/Version (the tree
# the mount shows), and every package unpacked with `dpkg-deb -x` into one
# root (what the Index merges). W below is IDX for nexus, ROOT/usr natively.
#
#   walk      the host's python3 opens, reads and closes every regular file
#             of MNT (App/Version/..., `Current` links not followed) or of
#             NATIVE, as a program loading modules does: open() asks
#             isatty(), which the kernel forwards to a FUSE daemon
#   walk-raw  the same with os.open/os.read/os.close (no isatty()): the
#             difference between the two on each side is the per-file floor
#   import    W/bin/python3.11 -c "import json, email.parser, asyncio, ..."
#             (22 standard modules)
#   tests     W/bin/python3.11 -m test test_json test_csv ... (10 of
#             CPython's own tests, from libpython3.11-testsuite)
#   gcc       W/bin/gcc-12 -O2 compiling and linking a small C program:
#             cc1, collect2, as, ld, headers, crt files and libgcc from W
#
#   kmeta     (--kernel-metadata) the same workloads on `nexus mount
#             --kernel-metadata` of the same store: the kernel serves names,
#             attributes, listings, links and ioctls from an EROFS image of
#             the generation, overlayfs reads contents from the FUSE mount
#             below it
#
# Python runs with PYTHONHOME=W and PYTHONDONTWRITEBYTECODE=1 (no .pyc is
# written to the native tree, none can be to the mount). Every workload runs
# once on each side untimed (warm-up, outputs checked), then RUNS times in
# pairs, alternating which side goes first; times are whole processes
# (fork to exit). The daemon's request counter is read around one more warm
# run of each workload. Targets (issue 14): walk <= 1.5x native; import,
# tests, gcc <= 1.05x. Timings are reported, never asserted (unless --check).
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bench_name=programs.sh
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

TARGET_WALK_RATIO=1.5
TARGET_PROGRAM_RATIO=1.05
all_workloads="walk,walk-raw,import,tests,gcc"
IMPORTS="json, email.parser, asyncio, decimal, sqlite3, csv, argparse, logging, http.client, xml.etree.ElementTree, unittest, subprocess, socket, ssl, zipfile, tarfile, datetime, collections, typing, pathlib, tempfile, shutil"
TESTS="test_json test_csv test_base64 test_bisect test_heapq test_textwrap test_difflib test_fnmatch test_string test_operator"
SMOKE_PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-testsuite"

runs=11 smoke=0 check=0 keep=0 kmeta=0
only=$all_workloads
out_dir="$here/out"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --smoke) smoke=1; shift ;;
        --kernel-metadata) kmeta=1; shift ;;
        --check) check=1; shift ;;
        --keep) keep=1; shift ;;
        --out) out_dir=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "programs.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "programs.sh: --runs needs a positive integer" >&2; exit 2; }
for w in ${only//,/ }; do
    [[ ",$all_workloads," == *",$w,"* ]] || { echo "programs.sh: unknown workload in --only: $w (known: $all_workloads)" >&2; exit 2; }
done
if [[ $smoke -eq 1 ]]; then
    runs=1
    IMPORTS="json, csv, argparse"
    TESTS="test_bisect"
fi
want() { [[ ",$only," == *",$1,"* ]] && { [[ $smoke -eq 0 || $1 != gcc ]]; }; }

[[ $(id -u) -eq 0 ]] || die "run as root: it mounts the store"
command -v python3 >/dev/null || die "python3 not found (apt-get install -y python3): the walk runs the host's"
command -v apt-get >/dev/null || die "apt-get not found: the packages come from Debian"
nip=${NIP:-$root/target/release/nip}
nexus=${NEXUS:-$root/target/release/nexus}
[[ -x $nip && -x $nexus ]] || die "nip/nexus not found at $nip, $nexus (cargo build --release -p nexus-cli, or set NIP=..., NEXUS=...)"

errors=()
error() { errors+=("$*"); log "ERROR: $*"; }

bench_root=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
debs_dir="$bench_root/programs/debs"
mkdir -p "$debs_dir"
work=$(realpath "$(mktemp -d "$bench_root/programs-work.XXXXXX")")
logs="$work/logs"
mkdir -p "$logs"
mnt="$work/mnt" idx="$work/index"
mounted=0
kmnt="$work/kmeta-tree" kidx="$work/kmeta-usr"
kmounted=0
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ $kmounted -eq 1 ]]; then
        "$nexus" --store "$store" umount "$kmnt" >> "$logs/umount.log" 2>&1 || true
    fi
    if [[ $mounted -eq 1 ]]; then
        "$nexus" umount "$mnt" >> "$logs/umount.log" 2>&1 || umount -l "$mnt" 2>/dev/null || true
        # `nexus umount` takes the Index down too, maybe while this looks.
        if mountpoint -q "$idx"; then umount -l "$idx" 2>/dev/null || true; fi
    fi
    if [[ $keep -eq 1 ]]; then
        log "work dir kept: $work"
    elif grep -qF " $work/" /proc/self/mounts; then
        log "WARNING: something is still mounted under $work; it is not deleted"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- packages ------------------------------------------------------------------
# fetch NAME VERSION: the .deb in $debs_dir (downloaded once); prints its path.
substituted=()
fetch() {
    local name=$1 version=$2 file cand
    file=$(find "$debs_dir" -maxdepth 1 -name "${name}_*.deb" | sort | tail -1)
    if [[ -n $file ]]; then printf '%s' "$file"; return 0; fi
    if ! (cd "$debs_dir" && apt-get download "$name=$version") >> "$logs/apt.log" 2>&1; then
        apt-get update -qq >> "$logs/apt.log" 2>&1 || true
        if ! (cd "$debs_dir" && apt-get download "$name=$version") >> "$logs/apt.log" 2>&1; then
            cand=$({ apt-cache policy "$name" 2>/dev/null || true; } | awk '/Candidate:/ { print $2 }')
            [[ -n $cand && $cand != "(none)" ]] || die "cannot fetch $name=$version, and apt knows no other version"
            (cd "$debs_dir" && apt-get download "$name=$cand") >> "$logs/apt.log" 2>&1 ||
                die "cannot fetch $name ($version, nor the candidate $cand): see $logs/apt.log"
            substituted+=("$name=$version -> $cand")
        fi
    fi
    find "$debs_dir" -maxdepth 1 -name "${name}_*.deb" | sort | tail -1
}
debs=()
while read -r line; do
    [[ -z $line || $line == \#* ]] && continue
    name=${line%%=*} version=${line#*=}
    [[ $smoke -eq 1 && " $SMOKE_PACKAGES " != *" $name "* ]] && continue
    debs+=("$(fetch "$name" "$version")")
done < "$here/programs.lock"
log "${#debs[@]} packages in $debs_dir"

# ---- the store, its mount and the native trees -----------------------------------
store="$work/store"
"$nip" --store "$store" init > "$logs/nip-init.log" 2>&1 || { cat "$logs/nip-init.log" >&2; die "nip init failed"; }
"$nip" --store "$store" add "${debs[@]}" > "$logs/nip-add.log" 2>&1 || { tail -20 "$logs/nip-add.log" >&2; die "nip add failed"; }
native_tree="$work/native-tree" native_root="$work/native-root"
mkdir -p "$native_tree" "$native_root"
"$nip" --store "$store" list --json > "$work/packages.json"
python3 - "$work/packages.json" > "$work/packages.list" <<'EOF'
import json, sys
for p in json.load(open(sys.argv[1])):
    print(p["name"] + "/" + p["version"])
EOF
while read -r spec; do
    mkdir -p "$native_tree/${spec%/*}"
    "$nip" --store "$store" export --preserve-privileged "$spec" "$native_tree/$spec" >> "$logs/export.log" 2>&1 ||
        die "nip export $spec failed: $(tail -3 "$logs/export.log")"
done < "$work/packages.list"
for d in "${debs[@]}"; do
    dpkg-deb -x "$d" "$native_root" || die "dpkg-deb -x $d failed"
done
mkdir -p "$mnt" "$idx"
"$nexus" --store "$store" mount "$mnt" --index "$idx" > "$logs/mount.log" 2>&1 ||
    { cat "$logs/mount.log" >&2; die "nexus mount failed"; }
mounted=1
read -r t_files t_bytes < <(find "$native_tree" -type f -printf '%s\n' | awk '{ s += $1; n++ } END { printf "%.0f %.0f\n", n, s }')
log "store $(du -sb "$store" | cut -f1) bytes; ${t_files} files, ${t_bytes} bytes in $(wc -l < "$work/packages.list") packages; mounted on $mnt, index $idx"

# ---- the kernel-metadata path (--kernel-metadata) ------------------------------
kmeta_skipped=""
sides=(nexus)
if [[ $kmeta -eq 1 ]]; then
    mkdir -p "$kmnt" "$kidx"
    if "$nexus" --store "$store" mount "$kmnt" --index "$kidx" --kernel-metadata --allow-other \
        --log-file "$logs/kmeta-daemon.log" > "$logs/kmeta-mount.log" 2>&1; then
        kmounted=1
        sides+=(kmeta)
        log "kernel-metadata mount: $kmnt, its Index $kidx ($(grep -o 'kernel view of generation.*' "$logs/kmeta-daemon.log" | head -1))"
    else
        kmeta_skipped="nexus mount --kernel-metadata failed: $(tail -1 "$logs/kmeta-mount.log")"
        log "kernel metadata skipped: $kmeta_skipped"
    fi
fi

# ---- helpers ---------------------------------------------------------------------
cat > "$work/walk.py" <<'EOF'
# walk.py ROOT MODE: reads every regular file below ROOT (symlinks not
# followed) with open() (MODE "open": asks isatty, as every program's open()
# does) or os.open/os.read (MODE "raw"); prints the count and total bytes.
import os, sys
root, mode = sys.argv[1], sys.argv[2]
files = total = 0
for d, dirs, names in os.walk(root):
    dirs.sort()
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.islink(p):
            continue
        if mode == "open":
            with open(p, "rb") as f:
                total += len(f.read())
        else:
            fd = os.open(p, os.O_RDONLY)
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                total += len(b)
            os.close(fd)
        files += 1
print(files, total)
EOF
cat > "$work/counts.py" <<'EOF'
# counts.py BEFORE AFTER: the request counts that changed, as "KIND n ...".
import json, sys
a, b = json.loads(sys.argv[1] or "{}"), json.loads(sys.argv[2] or "{}")
d = {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0)}
print(" ".join("%s %d" % kv for kv in sorted(d.items())) or "none")
EOF
cat > "$work/prog.c" <<'EOF'
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry { char *key; unsigned count; struct entry *next; };
static struct entry *table[1024];

static uint32_t hash(const char *s) {
    uint32_t h = 2166136261u;
    while (*s) { h ^= (unsigned char)*s++; h *= 16777619u; }
    return h;
}

static void add(const char *word) {
    uint32_t h = hash(word) % 1024;
    for (struct entry *e = table[h]; e; e = e->next)
        if (strcmp(e->key, word) == 0) { e->count++; return; }
    struct entry *e = malloc(sizeof *e);
    if (!e) { perror("malloc"); exit(1); }
    e->key = strdup(word);
    e->count = 1;
    e->next = table[h];
    table[h] = e;
}

static int by_count(const void *a, const void *b) {
    const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;
    return (int)y->count - (int)x->count;
}

int main(int argc, char **argv) {
    const char *text = argc > 1 ? argv[1] : "the quick brown fox jumps over the lazy dog the end";
    char word[64];
    size_t n = 0, total = 0, k = 0;
    for (const char *p = text;; p++) {
        if (*p && isalpha((unsigned char)*p) && n < sizeof word - 1) {
            word[n++] = (char)tolower((unsigned char)*p);
        } else {
            if (n) { word[n] = 0; add(word); total++; n = 0; }
            if (!*p) break;
        }
    }
    static struct entry *all[4096];
    for (int i = 0; i < 1024; i++)
        for (struct entry *e = table[i]; e && k < 4096; e = e->next)
            all[k++] = e;
    qsort(all, k, sizeof *all, by_count);
    double entropy = 0;
    for (size_t i = 0; i < k; i++) {
        double p = (double)all[i]->count / (double)total;
        entropy -= p * log2(p);
    }
    printf("%zu words, %zu distinct, entropy %.3f bits; most frequent: %s (%u)\n",
           total, k, entropy, k ? all[0]->key : "-", k ? all[0]->count : 0);
    return 0;
}
EOF

requests() { python3 -c 'import os, sys; print(os.getxattr(sys.argv[1], "user.nexus.requests").decode().replace(" ", ""))' "$1" 2>/dev/null || true; }
# covered_requests DIR: the counts of the FUSE mount beneath the kernel view
# on DIR, read in a private mount namespace with the view detached.
covered_requests() {
    unshare --mount --propagation private python3 -c 'import ctypes, os, sys
p = sys.argv[1].encode()
ctypes.CDLL(None).umount2(p, 2)
print(os.getxattr(p, "user.nexus.requests").decode().replace(" ", ""))' "$1" 2>/dev/null || true
}
# side_requests SIDE: the counts of SIDE's mount and Index.
side_requests() {
    if [[ $1 == kmeta ]]; then
        echo "$(covered_requests "$kmnt")" "$(covered_requests "$kidx")"
    else
        echo "$(requests "$mnt")" "$(requests "$idx")"
    fi
}

# Per side: W, the walked tree, a writable working directory, and as/ld
# links for gcc (binutils' own `ld` is a link to a file of another package,
# binutils-x86-64-linux-gnu, which a per-package tree cannot resolve; the
# linker and assembler are reached by their target-prefixed names).
declare -A W=([native]="$native_root/usr" [nexus]="$idx" [kmeta]="$kidx")
declare -A TREE=([native]="$native_tree" [nexus]="$mnt" [kmeta]="$kmnt")
for side in native "${sides[@]}"; do
    mkdir -p "$work/cwd-$side" "$work/tools-$side"
    ln -s "${W[$side]}/bin/x86_64-linux-gnu-as" "$work/tools-$side/as"
    ln -s "${W[$side]}/bin/x86_64-linux-gnu-ld.bfd" "$work/tools-$side/ld"
done

# command_of WORKLOAD SIDE: sets CMD (an array).
CMD=()
command_of() {
    local w=$1 side=$2 x=${W[$2]}
    local -a py=(env -u PYTHONPATH PYTHONHOME="$x" PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 "$x/bin/python3.11")
    case "$w" in
        walk) CMD=(python3 "$work/walk.py" "${TREE[$side]}" open) ;;
        walk-raw) CMD=(python3 "$work/walk.py" "${TREE[$side]}" raw) ;;
        import) CMD=("${py[@]}" -c "import $IMPORTS; print('imported')") ;;
        tests) local -a names; read -ra names <<< "$TESTS"; CMD=("${py[@]}" -m test "${names[@]}") ;;
        gcc) CMD=("$x/bin/gcc-12" -B "$work/tools-$side/" -B "$x/libexec/gcc/x86_64-linux-gnu/12/"
                  -B "$x/lib/gcc/x86_64-linux-gnu/12/" -B "$x/lib/x86_64-linux-gnu/"
                  -nostdinc -isystem "$x/lib/gcc/x86_64-linux-gnu/12/include"
                  -isystem "$x/include/x86_64-linux-gnu" -isystem "$x/include"
                  -O2 "$work/prog.c" -o "$work/cwd-$side/prog" -lm) ;;
    esac
}

# run_once WORKLOAD SIDE OUT: runs it in its working directory; sets RUN_S
# (whole process, seconds), empty when it failed.
RUN_S=""
run_once() {
    local w=$1 side=$2 out=$3 t0 t1 rc=0
    command_of "$w" "$side"
    t0=${EPOCHREALTIME/./}
    (cd "$work/cwd-$side" && exec "${CMD[@]}") > "$out" 2>&1 < /dev/null || rc=$?
    t1=${EPOCHREALTIME/./}
    RUN_S=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.6f", d / 1e6 }')
    if [[ $rc -ne 0 ]]; then
        RUN_S=""
        error "$w on $side failed (exit $rc): $(tail -3 "$out" | tr '\n' ' ')"
    fi
}

# check_output WORKLOAD SIDE: the warm-up outputs of native and SIDE must
# say the same.
check_output() {
    local w=$1 side=$2 a="$logs/$1-native.out" b="$logs/$1-$2.out"
    case "$w" in
        walk|walk-raw)
            [[ $(cat "$a") == "$(cat "$b")" ]] || error "$w: native read '$(cat "$a")', $side '$(cat "$b")'"
            [[ $(cat "$a") == "$t_files $t_bytes" ]] || error "$w: read '$(cat "$a")' of $t_files files, $t_bytes bytes" ;;
        import) grep -qx imported "$b" || error "import on $side printed: $(tail -3 "$b")" ;;
        tests) grep -q 'Tests result: SUCCESS' "$b" || error "the tests on $side did not pass: $(tail -3 "$b")" ;;
        gcc) [[ $("$work/cwd-$side/prog") == "$("$work/cwd-native/prog")" ]] || error "gcc on $side: the programs built differ in output" ;;
    esac
}

# Results are keyed by workload for nexus and by "WORKLOAD/kmeta" for the
# kernel-metadata path.
declare -A MED_NATIVE=() MED_SIDE=() MED_RATIO=() REQ_MOUNT=() REQ_INDEX=() SAMPLES=()
# measure WORKLOAD SIDE: warm-up and output check, the daemon's requests in
# one more warm run, then RUNS pairs of native and SIDE.
measure() {
    local w=$1 side=$2 key=$1 i a b first second ratios=() na=() nx=() m0 i0
    [[ $side == nexus ]] || key="$w/$side"
    log "$key: warm-up"
    run_once "$w" native "$logs/$w-native.out"; [[ -n $RUN_S ]] || return 0
    run_once "$w" "$side" "$logs/$w-$side.out"; [[ -n $RUN_S ]] || return 0
    check_output "$w" "$side"
    local m1 i1
    read -r m0 i0 < <(side_requests "$side")
    run_once "$w" "$side" "$logs/$w-$side-counted.out"
    read -r m1 i1 < <(side_requests "$side")
    REQ_MOUNT[$key]=$(python3 "$work/counts.py" "$m0" "$m1")
    REQ_INDEX[$key]=$(python3 "$work/counts.py" "$i0" "$i1")
    log "$key: requests in one warm run: mount ${REQ_MOUNT[$key]}; index ${REQ_INDEX[$key]}"
    for ((i = 1; i <= runs; i++)); do
        if ((i % 2)); then first=native second=$side; else first=$side second=native; fi
        run_once "$w" "$first" "$logs/$w-run.out"; a=$RUN_S
        run_once "$w" "$second" "$logs/$w-run.out"; b=$RUN_S
        [[ -n $a && -n $b ]] || continue
        if [[ $first == "$side" ]]; then local t=$a; a=$b; b=$t; fi
        na+=("$a") nx+=("$b") ratios+=("$(fdiv "$b" "$a")")
    done
    MED_NATIVE[$key]=$(median "${na[@]}") MED_SIDE[$key]=$(median "${nx[@]}") MED_RATIO[$key]=$(median "${ratios[@]}")
    SAMPLES[$key]="native ${na[*]}; $side ${nx[*]}"
    log "$key: native $(fmt %.3f "${MED_NATIVE[$key]}") s, $side $(fmt %.3f "${MED_SIDE[$key]}") s, ratio $(fmt %.3f "${MED_RATIO[$key]}") (medians of $runs pairs)"
}

for w in ${all_workloads//,/ }; do
    want "$w" || continue
    for side in "${sides[@]}"; do measure "$w" "$side"; done
done

# ---- report ----------------------------------------------------------------------
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
[[ $smoke -eq 1 ]] && stamp="smoke-$stamp"
mkdir -p "$out_dir"
md="$out_dir/programs-$stamp.md" json="$out_dir/programs-$stamp.json"
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
target_of() { if [[ $1 == walk ]]; then echo "$TARGET_WALK_RATIO"; elif [[ $1 == walk-raw ]]; then echo ""; else echo "$TARGET_PROGRAM_RATIO"; fi; }
missed=0
floor_us=""
if [[ -n ${MED_SIDE[walk]:-} && -n ${MED_SIDE[walk-raw]:-} ]]; then
    floor_us=$(awk -v a="${MED_SIDE[walk]}" -v b="${MED_SIDE[walk-raw]}" -v c="${MED_NATIVE[walk]}" -v d="${MED_NATIVE[walk-raw]}" -v n="$t_files" \
        'BEGIN { printf "%.2f", ((a - b) - (c - d)) / n * 1e6 }')
fi
{
    echo "# Programs benchmark, $stamp"
    echo
    echo "Commit $commit; $runs paired runs per workload (medians); $t_files files, $t_bytes bytes in $(wc -l < "$work/packages.list") packages; machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)."
    [[ ${#substituted[@]} -gt 0 ]] && echo "Packages replaced by apt's candidate: ${substituted[*]}."
    echo
    echo "| workload | native s | nexus s | nexus/native (paired) | target | status | requests in one warm run (mount; index) |"
    echo "|---|---:|---:|---:|---|---|---|"
    for w in ${all_workloads//,/ }; do
        want "$w" || continue
        t=$(target_of "$w") st=""
        if [[ -n $t ]]; then
            st=$(status_le "${MED_RATIO[$w]:-}" "$t")
            [[ $st == MISS ]] && missed=1
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s; %s |\n' "$w" "$(fmt %.3f "${MED_NATIVE[$w]:-}")" "$(fmt %.3f "${MED_SIDE[$w]:-}")" \
            "$(fmt %.3f "${MED_RATIO[$w]:-}")" "${t:+<= $t}" "${st:-}" "${REQ_MOUNT[$w]:-n/a}" "${REQ_INDEX[$w]:-n/a}"
    done
    echo
    if [[ $kmeta -eq 1 ]]; then
        echo
        echo "The kernel-metadata path (proposed, not what \`nexus mount\` serves): EROFS metadata and overlayfs, contents from the nexus mount."
        echo
        if [[ -n $kmeta_skipped ]]; then
            echo "Not measured: $kmeta_skipped."
        else
            echo "| workload | native s | kernel metadata s | kmeta/native (paired) | requests in one warm run (mount; index) |"
            echo "|---|---:|---:|---:|---|"
            for w in ${all_workloads//,/ }; do
                want "$w" || continue
                k="$w/kmeta"
                printf '| %s | %s | %s | %s | %s; %s |\n' "$w" "$(fmt %.3f "${MED_NATIVE[$k]:-}")" "$(fmt %.3f "${MED_SIDE[$k]:-}")" \
                    "$(fmt %.3f "${MED_RATIO[$k]:-}")" "${REQ_MOUNT[$k]:-n/a}" "${REQ_INDEX[$k]:-n/a}"
            done
        fi
    fi
    echo
    [[ -n $floor_us ]] && echo "Per-file floor: (walk - walk-raw) on nexus minus the same on native = $floor_us µs per opened file (one FUSE_IOCTL round trip for isatty())."
    echo
    echo "Samples (s): "
    for w in "${!SAMPLES[@]}"; do echo "- $w: ${SAMPLES[$w]}"; done
    [[ ${#errors[@]} -gt 0 ]] && { echo; echo "Errors:"; printf -- '- %s\n' "${errors[@]}"; }
} > "$md"
{
    printf '{"stamp": %s, "commit": %s, "runs": %s, "files": %s, "bytes": %s, "floor_us_per_file": %s, "workloads": {' \
        "$(jstr "$stamp")" "$(jstr "$commit")" "$runs" "$t_files" "$t_bytes" "$(jnum "$floor_us")"
    sep=""
    for w in ${all_workloads//,/ }; do
        want "$w" || continue
        printf '%s%s: {"native_s": %s, "nexus_s": %s, "ratio": %s, "requests_mount": %s, "requests_index": %s}' "$sep" "$(jstr "$w")" \
            "$(jnum "${MED_NATIVE[$w]:-}")" "$(jnum "${MED_SIDE[$w]:-}")" "$(jnum "${MED_RATIO[$w]:-}")" \
            "$(jstr "${REQ_MOUNT[$w]:-}")" "$(jstr "${REQ_INDEX[$w]:-}")"
        sep=", "
    done
    printf '}, "kernel_metadata": {'
    sep=""
    if [[ $kmeta -eq 1 && -z $kmeta_skipped ]]; then
        for w in ${all_workloads//,/ }; do
            want "$w" || continue
            k="$w/kmeta"
            printf '%s%s: {"native_s": %s, "kmeta_s": %s, "ratio": %s, "requests_mount": %s, "requests_index": %s}' "$sep" "$(jstr "$w")" \
                "$(jnum "${MED_NATIVE[$k]:-}")" "$(jnum "${MED_SIDE[$k]:-}")" "$(jnum "${MED_RATIO[$k]:-}")" \
                "$(jstr "${REQ_MOUNT[$k]:-}")" "$(jstr "${REQ_INDEX[$k]:-}")"
            sep=", "
        done
    fi
    printf '}, "kernel_metadata_skipped": %s, "errors": %s}\n' "$(jstr "$kmeta_skipped")" "${#errors[@]}"
} > "$json"
cat "$md"
log "report: $md"
[[ ${#errors[@]} -eq 0 ]] || exit 1
[[ $check -eq 1 && $missed -eq 1 ]] && exit 3
exit 0
