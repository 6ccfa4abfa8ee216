#!/usr/bin/env bash
# Mount benchmark: `nexus mount` vs squashfuse vs erofsfuse vs the kernel's
# erofs vs the native unpacked tree, measured in the same run.
#
#   bench/mount.sh [options]
#
# Options:
#   --smoke             build a tiny corpus (hello, jq, libonig5) in a temp
#                       dir and run every step on it (< 1 min). erofsfuse is
#                       measured only if erofs-utils is already built (see
#                       below); erofs also with a mkfs.erofs on PATH.
#   --runs N            repetitions of every measurement, median reported
#                       (default 1)
#   --fs LIST           comma-separated subset of native,nexus,nexus-kv,
#                       nexus-kvd,squashfuse,squashfuse_ll,erofsfuse,erofs
#                       (default: all eight; nexus-kv = `nexus mount
#                       --kernel-metadata` of the same store; nexus-kvd = the
#                       same after `nip decode`, files of --decode-min-size or
#                       more read from their decoded copies; erofs = the kernel's driver on the
#                       erofsfuse image, or, when erofs-utils cannot be
#                       built, on an image made by the mkfs.erofs on PATH,
#                       e.g. Debian 12's erofs-utils 1.5)
#   --store DIR         mount this existing nexus store, which must hold the
#                       corpus, instead of building a fresh one with nip
#   --erofs-src SRC     erofs-utils source to build erofsfuse and mkfs.erofs
#                       from when they are not built yet: a source dir, a
#                       .tar.gz, or a git URL (cloned at $EROFS_UTILS_REF,
#                       default v1.9.3). Default: the newest
#                       $NEXUS_BENCH_DIR/src/erofs-utils* if there is one.
#   --erofs-comp SPEC   mkfs.erofs -z compression (default lz4hc)
#   --decode-min-size SIZE
#                       nexus-kvd decodes files of at least SIZE (`nip decode
#                       --min-size`; default 1M; 1 = every file)
#   --readers N         parallel readers for the full read (default 4)
#   --large-file PATH   the large file (App/Version/...) that is read whole
#                       and at random (default: libLLVM-15.so.1, 117 MB, on
#                       the full corpus, as in issue 14; the largest file on
#                       any other corpus)
#   --rand-reads N      random 4 KiB preads in the large file (default 20000)
#   --verify            also compare every file's content with the native
#                       tree (md5sum, untimed; always on with --smoke)
#   --check             exit with status 3 when a nexus target is missed
#   --keep              keep the work dir (store, logs, listings)
#   --out DIR           where to write mount-<date>.{md,json}
#                       (default: bench/out)
#
# Environment:
#   NEXUS_BENCH_DIR  corpus root made by bench/fetch-corpus.sh (default
#                    /var/tmp/nexus-bench). Also holds the work dir, the
#                    cached squashfs/erofs images (images/, keyed by the
#                    checksum of corpus-all.list) and the erofs-utils build
#                    (tools/bin/erofsfuse, tools/bin/mkfs.erofs).
#   NIP, NEXUS       binaries (default: <repo>/target/release/{nip,nexus})
#   EROFS_UTILS_SRC  same as --erofs-src
#
# Runs as root: it mounts file systems and drops the page cache
# (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every cold measurement.
# Timings are reported against the targets of issue 3, never asserted
# (unless --check is given).
#
# Per file system and run (one file system mounted at a time; "fresh" =
# unmount, drop caches, mount again and time the mount until
# `MOUNTPOINT/<first app>` exists; for the native tree only drop caches):
#   1. fresh; read every regular file (sorted list, same for every file
#      system) with N parallel `cat`s: cold; again: warm; daemon VmRSS
#   2. fresh; `find ROOT`: cold; again: warm
#   3. fresh; `ls -lR ROOT`: cold; again: warm; daemon VmRSS
#   4. fresh; `cat` of the large file (one reader): cold; again: warm
#   5. fresh; random 4 KiB preads at fixed-seed offsets in the large file:
#      cold; again: warm (reads/s; the bytes read are hashed and compared)
#   6. three unmount/mount cycles with a warm page cache: warm mount time
#   7. (first run only, untimed) the tree's listing (type, mode, owner,
#      size, mtime, link target) is compared with the native tree
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

# Targets (issue 3) for nexus.
TARGET_MOUNT_MS=50            # warm mount time, ms, below
TARGET_WARM_READ_RATIO=1.10   # warm full read / native, at most
TARGET_LS_RATIO=1.5           # warm ls -lR / native, at most
TARGET_RSS_BYTES=100000000    # daemon VmRSS after the full walk, below (100 MB)
# Targets (issue 14) for nexus, cold, as time ratios (nexus / reference;
# for reads/s reference / nexus), at most.
cold_rows=(read_cold large_cold rand_cold ls_cold find_cold)
declare -A cold_label=([read_cold]="cold full read" [large_cold]="cold read of the large file"
    [rand_cold]="cold random 4 KiB reads" [ls_cold]="cold ls -lR" [find_cold]="cold find")
declare -A cold_unit=([read_cold]=s [large_cold]=s [rand_cold]=reads/s [ls_cold]=s [find_cold]=s)
declare -A cold_ref=([read_cold]=erofsfuse [large_cold]=erofsfuse [rand_cold]=erofsfuse [ls_cold]=native [find_cold]=native)
declare -A cold_limit=([read_cold]=0.8 [large_cold]=1.0 [rand_cold]=1.0 [ls_cold]=1.5 [find_cold]=1.5)
declare -A cold_goal=([read_cold]="time <= 0.8x erofsfuse's" [large_cold]="time <= erofsfuse's"
    [rand_cold]="reads/s >= erofsfuse's" [ls_cold]="time <= 1.5x native" [find_cold]="time <= 1.5x native")
# Anchor figures (shared/bench-corpus/README.md, issue 3), full corpus only.
FULL_CORPUS_FILES=98351
FULL_CORPUS_BYTES=3616338746
ANCHOR_EROFS_COLD_READ_S=15.8
# The large file of issue 14's cold table. Not the corpus' largest (two
# versions of openjdk's `modules`, 129 MB, which share most of their bytes
# and so measure deduplication as much as reading).
FULL_CORPUS_LARGE_FILE=libllvm15/15.0.6-4+b1/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1
RAND_SEED=20261127
MOUNT_TIMEOUT=120             # seconds a mount command may take

all_fs="native,nexus,nexus-kv,nexus-kvd,squashfuse,squashfuse_ll,erofsfuse,erofs"
smoke=0 runs=1 check=0 keep=0 verify=0 readers=4 rand_reads=20000
fs_arg=$all_fs
store_arg="" large_arg=""
erofs_src=${EROFS_UTILS_SRC:-}
erofs_comp=lz4hc
decode_min=1M
out_dir="$here/out"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=1; shift ;;
        --runs) runs=$2; shift 2 ;;
        --fs) fs_arg=$2; shift 2 ;;
        --store) store_arg=$2; shift 2 ;;
        --erofs-src) erofs_src=$2; shift 2 ;;
        --erofs-comp) erofs_comp=$2; shift 2 ;;
        --decode-min-size) decode_min=$2; shift 2 ;;
        --readers) readers=$2; shift 2 ;;
        --large-file) large_arg=$2; shift 2 ;;
        --rand-reads) rand_reads=$2; shift 2 ;;
        --verify) verify=1; shift ;;
        --check) check=1; shift ;;
        --keep) keep=1; shift ;;
        --out) out_dir=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "mount.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in runs readers rand_reads; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || { echo "mount.sh: --${n//_/-} needs a positive integer" >&2; exit 2; }
done
[[ $erofs_comp =~ ^[A-Za-z0-9,=._-]+$ ]] || { echo "mount.sh: bad --erofs-comp: $erofs_comp" >&2; exit 2; }
[[ $decode_min =~ ^[0-9]+[KMGkmg]?$ ]] || { echo "mount.sh: bad --decode-min-size: $decode_min (e.g. 1, 64K, 1M)" >&2; exit 2; }
[[ $smoke -eq 1 ]] && verify=1

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'mount.sh: %s\n' "$*" >&2; exit 1; }
warnings=() errors=()
warn() { warnings+=("$*"); log "WARNING: $*"; }
error() { errors+=("$*"); log "ERROR: $*"; }

bench_root=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
bench_dir=$bench_root
tools_dir=$bench_root/tools
nip=${NIP:-$root/target/release/nip}
nexus=${NEXUS:-$root/target/release/nexus}

# ---- file systems and tools --------------------------------------------------
want() { [[ ",$fs_arg," == *",$1,"* ]]; }
for f in ${fs_arg//,/ }; do
    [[ ",$all_fs," == *",$f,"* ]] || die "unknown file system in --fs: $f (known: $all_fs)"
done
[[ $(id -u) -eq 0 ]] || die "run as root (sudo $0): it mounts file systems and drops the page cache"
[[ -w /proc/sys/vm/drop_caches ]] || die "cannot write /proc/sys/vm/drop_caches: cold measurements need it"
command -v python3 >/dev/null || die "python3 not found (apt-get install -y python3): the random-read helper needs it"

declare -A skipped_fs=()   # file system -> why it is not measured
skip_fs() {
    skipped_fs[$1]=$2
    log "$1 skipped: $2"
}
if want nexus || want nexus-kv || want nexus-kvd; then
    [[ -x $nexus ]] || die "nexus binary not found at $nexus (build it with: cargo build --release -p nexus-cli, set NEXUS=..., or leave it out with --fs)"
    if [[ -z $store_arg ]]; then
        [[ -x $nip ]] || die "nip binary not found at $nip (build it with: cargo build --release -p nexus-cli, or set NIP=...)"
    fi
fi
if want squashfuse || want squashfuse_ll; then
    command -v mksquashfs >/dev/null || die "mksquashfs not found (apt-get install -y squashfs-tools), or leave squashfuse out with --fs"
    for t in squashfuse squashfuse_ll; do
        want "$t" || continue
        command -v "$t" >/dev/null && continue
        [[ $smoke -eq 1 ]] && die "$t is not installed; the smoke test needs it (apt-get install -y squashfuse)"
        skip_fs "$t" "not installed (apt-get install -y squashfuse)"
    done
fi
fusermount=$(command -v fusermount3 || command -v fusermount || true)

# ---- work dir ----------------------------------------------------------------
if [[ $smoke -eq 1 ]]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-mount-smoke.XXXXXX")
else
    mkdir -p "$bench_dir"
    work=$(mktemp -d "$bench_dir/mount-work.XXXXXX")
fi
work=$(realpath "$work")
logs="$work/logs"
mnt_dir="$work/mnt"
mkdir -p "$logs" "$mnt_dir"

declare -A mounted=() dpid=()   # file system -> mount point / daemon pid
cleanup() {
    local v
    for v in "${!mounted[@]}"; do
        umount_fs "$v" || true
    done
    # Decoded copies moved aside go back (a --store given keeps them).
    [[ -n ${store:-} ]] && decoded_copies nexus-kvd
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

# ---- smoke corpus ------------------------------------------------------------
if [[ $smoke -eq 1 ]]; then
    bench_dir="$work/smoke"
    mkdir -p "$bench_dir"
    candidate() { { apt-cache policy "$1" 2>/dev/null || true; } | awk '/Candidate:/ { print $2 }'; }
    lock="$bench_dir/packages.lock"
    : > "$lock"
    for p in hello jq libonig5; do
        v=$(candidate "$p")
        if [[ -z $v || $v == "(none)" ]]; then
            log "no candidate for $p, running apt-get update"
            apt-get update -qq >&2 || true
            v=$(candidate "$p")
        fi
        [[ -n $v && $v != "(none)" ]] || die "apt-cache knows no version of $p"
        printf '%s=%s\n' "$p" "$v" >> "$lock"
    done
    log "smoke corpus: $(tr '\n' ' ' < "$lock")"
    NEXUS_BENCH_DIR="$bench_dir" "$here/fetch-corpus.sh" --lock "$lock" > "$logs/fetch-smoke.log" 2>&1 ||
        { tail -20 "$logs/fetch-smoke.log" >&2; die "fetching the smoke corpus failed"; }
    [[ -s $bench_dir/skipped.txt ]] && { cat "$bench_dir/skipped.txt" >&2; die "smoke packages could not be fetched"; }
fi

# ---- corpus ------------------------------------------------------------------
corpus="$bench_dir/corpus"
[[ -s $bench_dir/corpus-all.list ]] || die "$bench_dir/corpus-all.list missing or empty: run bench/fetch-corpus.sh first"
mapfile -t list_all < "$bench_dir/corpus-all.list"
for d in "${list_all[@]}"; do
    [[ -d $corpus/$d ]] || die "corpus dir missing: $corpus/$d"
done
skipped=""
[[ -f $bench_dir/skipped.txt ]] && skipped=$(tr '\n' ' ' < "$bench_dir/skipped.txt" | sed 's/ $//')
list_sum=$(sha256sum "$bench_dir/corpus-all.list" | cut -c1-16)

# The native tree: the corpus dir itself when it holds exactly the listed
# dirs, else a hard-link copy of them (so every file system shows one tree).
if diff -q <(find "$corpus" -mindepth 2 -maxdepth 2 -printf '%P\n' | sort) \
           <(sort "$bench_dir/corpus-all.list") >/dev/null; then
    native="$corpus"
else
    log "corpus dir holds entries not in corpus-all.list: staging the listed dirs (hard links)"
    [[ $(stat -c %d "$corpus") == "$(stat -c %d "$work")" ]] ||
        die "work dir $work is not on the corpus' file system (hard-link staging needs that)"
    native="$work/stage"
    for d in "${list_all[@]}"; do
        mkdir -p "$native/$(dirname "$d")"
        cp -al "$corpus/$d" "$native/$d"
    done
fi
native_fstype=$(stat -f -c %T "$native")

files0="$work/files.list0"   # every regular file, ./App/Version/..., sorted, NUL-separated
(cd "$native" && find . -type f -print0) | sort -z > "$files0"
read -r c_files c_bytes < <(find "$native" -type f -printf '%s\n' | awk '{ s += $1; n++ } END { printf "%.0f %.0f\n", n, s }')
c_dirs=$(find "$native" -type d | wc -l)
c_links=$(find "$native" -type l | wc -l)
[[ $c_files -gt 0 ]] || die "the corpus holds no regular file"
probe=${list_all[0]%%/*}   # an App dir: the mount is usable once it exists
full_corpus=0
[[ $c_files -eq $FULL_CORPUS_FILES && $c_bytes -eq $FULL_CORPUS_BYTES ]] && full_corpus=1
# The large file: read whole (one reader) and at random.
if [[ -n $large_arg ]]; then
    big_rel=${large_arg#./} big_why="chosen with --large-file"
elif [[ $full_corpus -eq 1 ]]; then
    big_rel=$FULL_CORPUS_LARGE_FILE big_why="issue 14's file"
else
    IFS=$'\t' read -r _ big_rel < <((cd "$native" && find . -type f -printf '%s\t%P\n') | sort -t $'\t' -k1,1nr -k2,2 | head -1)
    big_why="the corpus' largest file"
fi
[[ -f $native/$big_rel && ! -L $native/$big_rel ]] || die "large file $big_rel: not a regular file in $native"
big_size=$(stat -c %s "$native/$big_rel")
log "corpus: ${#list_all[@]} app-versions, $c_files files, $c_bytes bytes over paths; native tree $native ($native_fstype)"
log "large file ($big_why): $big_rel ($big_size bytes)"

# ---- helpers -----------------------------------------------------------------
us_now() { local t=$EPOCHREALTIME; printf '%s' "${t/./}"; }   # microseconds
us_to_s() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.6f", a / b }'; }
fmul() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print ""; else printf "%.6f", a * b }'; }
fmt() {   # fmt PRINTF-FMT NUMBER-OR-EMPTY
    if [[ -z $2 ]]; then printf 'n/a'; else awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'; fi
}
median() {   # median VALUES... (empty when none)
    [[ $# -gt 0 ]] || return 0
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
maxof() { [[ $# -gt 0 ]] || return 0; printf '%s\n' "$@" | sort -g | tail -1; }
du_b() { du -sb "$1" | cut -f1; }

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

alive() { [[ -e /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# The daemon binary of each FUSE file system; the kernel's erofs has none.
declare -A bin_of=([nexus]="$nexus" [nexus-kv]="$nexus" [nexus-kvd]="$nexus" [squashfuse]=squashfuse [squashfuse_ll]=squashfuse_ll [erofsfuse]="")
has_daemon() { [[ -v bin_of[$1] ]]; }

# daemon_pid V MP: the process that has MP as one of its arguments, preferring
# one named like V's binary.
daemon_pid() {
    local pat="$work/pid-pattern" want f pid first=""
    local -a hits
    printf '%s\n' "$2" > "$pat"
    want=$(basename "${bin_of[$1]}")
    want=${want:0:15}
    mapfile -t hits < <(grep -lzxF -f "$pat" /proc/[0-9]*/cmdline 2>/dev/null || true)
    for f in "${hits[@]}"; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        [[ -z $first ]] && first=$pid
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$want" ]]; then
            printf '%s' "$pid"
            return 0
        fi
    done
    printf '%s' "$first"
}

# mount_fs V: mount V at $mnt_dir/V; sets MOUNT_S (command start until
# MOUNTPOINT/<probe> exists). Returns 1 (and records an error) on failure.
MOUNT_S=""
mount_fs() {
    local v=$1 mp="$mnt_dir/$1" t0 t1 rc=0 deadline
    local -a cmd
    MOUNT_S=""
    [[ $v == native ]] && return 0
    mkdir -p "$mp"
    if mountpoint -q "$mp"; then
        error "$v: $mp is already a mount point"
        return 1
    fi
    case "$v" in
        nexus) cmd=("$nexus" --store "$store" mount "$mp") ;;
        nexus-kv | nexus-kvd)
            decoded_copies "$v"
            cmd=("$nexus" --store "$store" mount "$mp" --kernel-metadata --allow-other) ;;
        squashfuse|squashfuse_ll) cmd=("$v" "$sqfs_img" "$mp") ;;
        erofsfuse) cmd=("$erofsfuse_bin" "$erofs_img" "$mp") ;;
        erofs) cmd=(mount -t erofs -o "ro,loop" "$erofs_img" "$mp") ;;
    esac
    printf '%q ' "${cmd[@]}" > "$logs/mount-$v.cmd"
    t0=${EPOCHREALTIME/./}
    timeout "$MOUNT_TIMEOUT" "${cmd[@]}" >> "$logs/mount-$v.log" 2>&1 < /dev/null || rc=$?
    if [[ $rc -ne 0 ]]; then
        mountpoint -q "$mp" && mounted[$v]=$mp
        error "$v: mount command failed (exit $rc): $(tail -3 "$logs/mount-$v.log" | tr '\n' ' ')"
        return 1
    fi
    deadline=$((t0 + MOUNT_TIMEOUT * 1000000))
    until [[ -e $mp/$probe ]]; do
        t1=${EPOCHREALTIME/./}
        if [[ $t1 -gt $deadline ]]; then
            mountpoint -q "$mp" && mounted[$v]=$mp
            error "$v: $mp/$probe did not appear within $MOUNT_TIMEOUT s of the mount command"
            return 1
        fi
    done
    t1=${EPOCHREALTIME/./}
    MOUNT_S=$(us_to_s $((t1 - t0)))
    mounted[$v]=$mp
    if ! mountpoint -q "$mp"; then
        error "$v: $mp/$probe exists but $mp is not a mount point"
        return 1
    fi
    has_daemon "$v" || return 0
    dpid[$v]=$(daemon_pid "$v" "$mp")
    [[ -n ${dpid[$v]} ]] || warn "$v: daemon process not found (no RSS figures)"
    return 0
}

# umount_fs V: unmount V and wait for its daemon to exit.
umount_fs() {
    local v=$1 mp=${mounted[$1]:-} pid=${dpid[$1]:-} rc=0 i
    [[ -n $mp ]] || return 0
    if [[ $v == nexus || $v == nexus-kv || $v == nexus-kvd ]]; then
        "$nexus" --store "$store" umount "$mp" >> "$logs/umount-$v.log" 2>&1 || rc=$?
    elif has_daemon "$v" && [[ -n $fusermount ]]; then
        "$fusermount" -u "$mp" >> "$logs/umount-$v.log" 2>&1 || rc=$?
    else
        umount "$mp" >> "$logs/umount-$v.log" 2>&1 || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        error "$v: unmount failed (exit $rc): $(tail -2 "$logs/umount-$v.log" | tr '\n' ' ')"
        mountpoint -q "$mp" && { umount -l "$mp" || true; }
    fi
    if [[ -n $pid ]]; then
        for ((i = 0; i < 200; i++)); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then
            error "$v: daemon $pid still runs 10 s after unmount; killing it"
            kill "$pid" 2>/dev/null || true
        fi
    fi
    unset "mounted[$v]" "dpid[$v]"
}

root_of() { if [[ $1 == native ]]; then printf '%s' "$native"; else printf '%s' "$mnt_dir/$1"; fi; }

declare -A S=()   # samples: S[fs.metric] = "v1 v2 ..."
add_sample() { [[ -n $3 ]] && S[$1.$2]+="$3 "; return 0; }

# fresh V: unmount, drop caches, mount again (cold mount time sample).
fresh() {
    local v=$1
    umount_fs "$v"
    drop_caches
    mount_fs "$v" || return 1
    add_sample "$v" mount_cold "$MOUNT_S"
}

# timed NAME OUTFILE CMD...: sets T_S (seconds; empty when CMD failed).
T_S=""
timed() {
    local name=$1 out=$2 t0 t1 rc=0
    shift 2
    t0=${EPOCHREALTIME/./}
    "$@" > "$out" 2> "$logs/$name.err" || rc=$?
    t1=${EPOCHREALTIME/./}
    T_S=$(us_to_s $((t1 - t0)))
    if [[ $rc -ne 0 ]]; then
        T_S=""
        error "$name failed (exit $rc): $(head -3 "$logs/$name.err" | tr '\n' ' ')"
    fi
}

op_read() { (cd "$1" && exec xargs -0 -P "$readers" -n 256 cat -- < "$files0"); }
op_find() { find "$1"; }
op_ls() { ls -lR "$1"; }
op_large() { cat -- "$1/$big_rel"; }
op_rand() { python3 "$work/randread.py" "$1/$big_rel" "$rand_reads" "$RAND_SEED"; }

cat > "$work/randread.py" <<'EOF'
# randread.py FILE N SEED: N preads of 4 KiB at block-aligned offsets drawn
# with a fixed seed; prints reads/s (pread loop only) and a hash of the bytes.
import hashlib, os, random, sys, time
path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bs = 4096
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(seed)
offsets = [rng.randrange(max(1, size // bs)) * bs for _ in range(n)]
pread = os.pread
t0 = time.perf_counter()
bufs = [pread(fd, bs, off) for off in offsets]
t1 = time.perf_counter()
os.close(fd)
h = hashlib.sha256()
for b in bufs:
    h.update(b)
secs = t1 - t0
print("reads=%d bytes=%d seconds=%.6f reads_per_s=%.1f sha256=%s"
      % (n, sum(map(len, bufs)), secs, n / secs, h.hexdigest()))
EOF

# ---- nexus store -------------------------------------------------------------
store="" store_build_s="" store_bytes="" store_source="" decode_s="" decoded_bytes=""
if want nexus || want nexus-kv || want nexus-kvd; then
    if [[ -n $store_arg ]]; then
        store=$(realpath "$store_arg")
        [[ -d $store ]] || die "--store $store_arg: not a directory"
        store_source="existing store $store"
    else
        store="$work/store"
        log "building the nexus store: nip add (${#list_all[@]} dirs)"
        "$nip" --store "$store" init > "$logs/nip-init.log" 2>&1 ||
            { cat "$logs/nip-init.log" >&2; die "nip init failed"; }
        t0=$(us_now)
        "$nip" --store "$store" add "${list_all[@]/#/$corpus/}" > "$logs/nip-add.log" 2>&1 ||
            { tail -20 "$logs/nip-add.log" >&2; die "nip add failed"; }
        store_build_s=$(us_to_s $(($(us_now) - t0)))
        store_source="built in this run: nip add of every listed dir"
    fi
    store_bytes=$(du_b "$store")
    log "nexus store: $store ($store_bytes bytes)"
fi
# nexus-kvd reads large files from decoded copies, nexus-kv from the FUSE
# mount: the copies are moved aside (STORE/decoded.bench) while a kernel
# view without them is mounted, and back for one with them (a view uses
# the copies present when it is mounted). Put back at exit.
if want nexus-kvd; then
    log "nip decode --min-size $decode_min (decoded copies)"
    t0=$(us_now)
    "$nip" --store "$store" decode --min-size "$decode_min" > "$logs/nip-decode.log" 2>&1 ||
        { tail -20 "$logs/nip-decode.log" >&2; die "nip decode failed"; }
    decode_s=$(us_to_s $(($(us_now) - t0)))
    decoded_bytes=$(du_b "$store/decoded")
fi
decoded_copies() {
    local on="$store/decoded" off="$store/decoded.bench"
    if [[ $1 == nexus-kvd ]]; then
        [[ -d $off ]] || return 0
        rmdir "$on" 2>/dev/null || true
        mv "$off" "$on"
    elif [[ -d $on && ! -d $off ]] && want nexus-kvd; then
        mv "$on" "$off"
    fi
}

# ---- squashfs image ----------------------------------------------------------
if [[ $smoke -eq 1 ]]; then img_dir="$work/images"; else img_dir="$bench_root/images"; fi
mkdir -p "$img_dir"
sqfs_img="" sqfs_build_s="" sqfs_bytes="" sqfs_source=""
if want squashfuse || want squashfuse_ll; then
    sqfs_img="$img_dir/corpus-$list_sum.zstd.sqfs"
    if [[ -s $sqfs_img ]]; then
        sqfs_source="cached image (built $(date -u -r "$sqfs_img" +%Y-%m-%dT%H:%MZ))"
        log "squashfs image: $sqfs_img (cached)"
    else
        log "building the squashfs image (mksquashfs -comp zstd -processors 2; about 450 s on the full corpus): $sqfs_img"
        t0=$(us_now)
        mksquashfs "$native" "$sqfs_img.partial" -comp zstd -processors 2 -noappend -no-progress > "$logs/mksquashfs.log" 2>&1 ||
            { tail -20 "$logs/mksquashfs.log" >&2; rm -f "$sqfs_img.partial"; die "mksquashfs failed"; }
        mv "$sqfs_img.partial" "$sqfs_img"
        sqfs_build_s=$(us_to_s $(($(us_now) - t0)))
        sqfs_source="built in this run"
    fi
    sqfs_bytes=$(stat -c %s "$sqfs_img")
fi

# ---- erofs image: erofsfuse and the kernel's erofs --------------------------
# mkfs.erofs and erofsfuse come from $tools_dir/bin (Debian 12 packages no
# erofsfuse). They are built there from an erofs-utils source when missing.
# One image serves both erofsfuse and the kernel's erofs driver, so the two
# differ only in who reads it.
erofsfuse_bin="$tools_dir/bin/erofsfuse" mkfs_erofs="$tools_dir/bin/mkfs.erofs"
erofs_img="" erofs_build_s="" erofs_bytes="" erofs_source="" erofs_tool_source=""
erofs_ref=${EROFS_UTILS_REF:-v1.9.3}
erofs_family=()   # the wanted file systems that need the erofs image
for v in erofsfuse erofs; do want "$v" && erofs_family+=("$v"); done
skip_erofs_family() {   # skip_erofs_family REASON: skip every wanted one not skipped yet
    local v
    for v in "${erofs_family[@]}"; do
        [[ -n ${skipped_fs[$v]:-} ]] || skip_fs "$v" "$1"
    done
}
erofs_family_left() {   # true while some wanted erofs-family file system is not skipped
    local v
    for v in "${erofs_family[@]}"; do
        [[ -n ${skipped_fs[$v]:-} ]] || return 0
    done
    return 1
}

# erofsfuse needs erofs-utils built here; the kernel's erofs only needs an
# image, so without that build it reads one made by a mkfs.erofs on PATH
# (Debian 12's erofs-utils) and erofsfuse alone is skipped.
erofs_build_why=""
no_erofs_build() {   # no_erofs_build REASON: erofsfuse cannot be had
    erofs_build_why=$1
    if want erofsfuse && [[ -z ${skipped_fs[erofsfuse]:-} ]]; then skip_fs erofsfuse "$1"; fi
    return 0
}

find_erofs_src() {
    local c
    if [[ -n $erofs_src ]]; then printf '%s' "$erofs_src"; return 0; fi
    c=$(find "$bench_root/src" -maxdepth 1 -name 'erofs-utils*' \( -type d -o -name '*.tar.gz' -o -name '*.tgz' \) 2>/dev/null | sort -V | tail -1)
    printf '%s' "$c"
}

build_erofs() {   # build_erofs SRC: build into $tools_dir; 1 + skip reason on failure
    local src=$1 b="$tools_dir/build/erofs-utils" blog="$tools_dir/erofs-build.log" missing=() c
    for c in autoreconf automake libtoolize make cc pkg-config; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    for c in fuse3 liblz4 uuid; do
        pkg-config --exists "$c" 2>/dev/null || missing+=("$c.pc")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        no_erofs_build "cannot build erofs-utils, missing: ${missing[*]} (apt-get install -y build-essential autoconf automake libtool pkg-config libfuse3-dev liblz4-dev libzstd-dev uuid-dev)"
        return 1
    fi
    log "building erofs-utils (erofsfuse, mkfs.erofs) from $src into $tools_dir (log: $blog)"
    rm -rf "$tools_dir/build"
    mkdir -p "$b"
    {
        case "$src" in
            *://*|*.git) git clone --depth 1 --branch "$erofs_ref" "$src" "$b" ;;
            *.tar.gz|*.tgz) tar -xzf "$src" -C "$b" --strip-components=1 ;;
            *) [[ -d $src ]] && cp -a "$src/." "$b/" ;;
        esac &&
        (cd "$b" && ./autogen.sh && ./configure --prefix="$tools_dir" --enable-fuse &&
            make -j"$(nproc)" && make install)
    } > "$blog" 2>&1 || {
        no_erofs_build "building erofs-utils from $src failed: $(tail -1 "$blog") (full log: $blog)"
        return 1
    }
    if [[ ! -x $erofsfuse_bin || ! -x $mkfs_erofs ]]; then
        no_erofs_build "erofs-utils built from $src but $erofsfuse_bin or $mkfs_erofs is missing (log: $blog)"
        return 1
    fi
    printf '%s\n' "$src" > "$tools_dir/erofs-utils.source"
    rm -rf "$tools_dir/build"
}

if want erofs; then
    # The kernel driver and a loop device are all the kernel side needs.
    grep -qw erofs /proc/filesystems || modprobe erofs 2>/dev/null || true
    if ! grep -qw erofs /proc/filesystems; then
        skip_fs erofs "the kernel ($(uname -r)) has no erofs driver (not in /proc/filesystems, modprobe erofs failed)"
    elif [[ ! -e /dev/loop-control ]]; then
        skip_fs erofs "no /dev/loop-control: mount -o loop needs loop devices"
    fi
fi
if erofs_family_left; then
    if [[ ! -x $erofsfuse_bin || ! -x $mkfs_erofs ]]; then
        src=$(find_erofs_src)
        if [[ $smoke -eq 1 && -z $erofs_src ]]; then
            no_erofs_build "erofs-utils not built in $tools_dir/bin, and --smoke does not build it (a full run or --erofs-src builds it)"
        elif [[ -z $src ]]; then
            no_erofs_build "erofs-utils not built in $tools_dir/bin and no erofs-utils source found (Debian 12 packages no erofsfuse; put a source tree or tarball at $bench_root/src/erofs-utils-VERSION[.tar.gz] or pass --erofs-src; see bench/README.md)"
        else
            build_erofs "$src" || true
        fi
    fi
fi
erofs_img_tag=""
if [[ -n $erofs_build_why ]] && want erofs && [[ -z ${skipped_fs[erofs]:-} ]]; then
    if system_mkfs=$(command -v mkfs.erofs); then
        mkfs_erofs=$system_mkfs
        system_erofs=$(dpkg-query -W -f '${Version}' erofs-utils 2>/dev/null || echo unpackaged)
        erofs_img_tag=".mkfs-${system_erofs//[^A-Za-z0-9.]/_}"
        erofs_tool_source="$system_mkfs, erofs-utils $system_erofs; erofsfuse skipped"
        log "erofs: the kernel's driver reads an image made by $system_mkfs (erofsfuse: $erofs_build_why)"
    else
        skip_fs erofs "$erofs_build_why; no mkfs.erofs on PATH either (apt-get install erofs-utils gives one for the kernel's erofs)"
    fi
fi
if erofs_family_left; then
    bin_of[erofsfuse]=$erofsfuse_bin
    [[ -n $erofs_tool_source ]] ||
        erofs_tool_source=$(cat "$tools_dir/erofs-utils.source" 2>/dev/null || echo "prebuilt in $tools_dir/bin")
    erofs_img="$img_dir/corpus-$list_sum.${erofs_comp//[^A-Za-z0-9]/_}$erofs_img_tag.erofs"
    if [[ -s $erofs_img ]]; then
        erofs_source="cached image (built $(date -u -r "$erofs_img" +%Y-%m-%dT%H:%MZ))"
        log "erofs image: $erofs_img (cached)"
    else
        log "building the erofs image (mkfs.erofs -z$erofs_comp; about 70 s on the full corpus): $erofs_img"
        t0=$(us_now)
        if "$mkfs_erofs" "-z$erofs_comp" "$erofs_img.partial" "$native" > "$logs/mkfs-erofs.log" 2>&1; then
            mv "$erofs_img.partial" "$erofs_img"
            erofs_build_s=$(us_to_s $(($(us_now) - t0)))
            erofs_source="built in this run"
        else
            rm -f "$erofs_img.partial"
            skip_erofs_family "mkfs.erofs -z$erofs_comp failed: $(tail -1 "$logs/mkfs-erofs.log")"
        fi
    fi
    [[ -s $erofs_img ]] && erofs_bytes=$(stat -c %s "$erofs_img")
fi

variants=()
for v in ${all_fs//,/ }; do
    want "$v" && [[ -z ${skipped_fs[$v]:-} ]] && variants+=("$v")
done
[[ ${#variants[@]} -gt 0 ]] || die "no file system to measure"
log "measuring: ${variants[*]}"

# ---- verification (untimed) ------------------------------------------------------
# listing DIR: every entry below App/ (App/Current links left out), with type,
# mode, owner, size (not for dirs), mtime (whole seconds) and link target.
listing() {
    (cd "$1" && find . -mindepth 2 -printf '%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%l\n') |
        awk -F'\t' -v OFS='\t' '$2 == "l" && $1 ~ /^[^\/]+\/Current$/ { next } { if ($2 == "d") $6 = "-"; sub(/\..*/, "", $7); print }' | sort
}
content_sums() { (cd "$1" && xargs -0 -n 256 md5sum -- < "$files0"); }
declare -A tree_diff=() content_diff=()
verify_fs() {
    local v=$1 dir n
    dir=$(root_of "$v")
    [[ -s $work/native.listing ]] || listing "$native" > "$work/native.listing"
    listing "$dir" > "$work/$v.listing" 2> "$logs/$v-listing.err" || error "$v: listing the tree failed"
    n=$(diff "$work/native.listing" "$work/$v.listing" | tee "$logs/$v-listing.diff" | grep -c '^[<>]' || true)
    tree_diff[$v]=$n
    [[ $n -eq 0 ]] || warn "$v: tree listing differs from the native tree in $n lines (first: $(grep -m2 '^[<>]' "$logs/$v-listing.diff" | tr '\t\n' ' '))"
    if [[ $verify -eq 1 ]]; then
        [[ -s $work/native.md5 ]] || content_sums "$native" > "$work/native.md5"
        content_sums "$dir" > "$work/$v.md5" 2> "$logs/$v-md5.err" || error "$v: reading every file for md5sum failed"
        n=$(diff "$work/native.md5" "$work/$v.md5" | grep -c '^>' || true)
        content_diff[$v]=$n
        [[ $n -eq 0 ]] || error "$v: $n files read back with other content than the native tree (see $logs/$v-md5.err and $work/$v.md5)"
    fi
}

# ---- measurements ----------------------------------------------------------------
declare -A rand_hash=()
sample_rss() {   # sample_rss V: VmRSS and VmHWM of V's daemon, in kB
    local pid=${dpid[$1]:-} rss hwm
    [[ -n $pid ]] && alive "$pid" || return 0
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    add_sample "$1" rss_kb "$rss"
    add_sample "$1" hwm_kb "$hwm"
}

rand_step() {   # rand_step V RUN cold|warm
    local v=$1 r=$2 c=$3 out rps hash
    out="$logs/$v-rand-$c-run$r.out"
    timed "$v-rand-$c-run$r" "$out" op_rand "$(root_of "$v")"
    [[ -n $T_S ]] || return 0
    rps=$(sed -n 's/.*reads_per_s=\([0-9.]*\).*/\1/p' "$out")
    hash=$(sed -n 's/.*sha256=\([0-9a-f]*\).*/\1/p' "$out")
    add_sample "$v" "rand_$c" "$rps"
    if [[ -z ${rand_hash[ref]:-} ]]; then
        rand_hash[ref]=$hash rand_hash[ref_fs]=$v
    elif [[ $hash != "${rand_hash[ref]}" ]]; then
        error "$v: random reads returned other bytes than on ${rand_hash[ref_fs]} (sha256 $hash vs ${rand_hash[ref]})"
    fi
}

measure() {   # measure V RUN: every step; V is unmounted afterwards
    measure_steps "$@" || true
    umount_fs "$1"
}
measure_steps() {
    local v=$1 r=$2 dir i
    dir=$(root_of "$v")
    log "run $r: $v: full read ($readers readers)"
    fresh "$v" || return 0
    timed "$v-read-cold-run$r" /dev/null op_read "$dir"; add_sample "$v" read_cold "$T_S"
    timed "$v-read-warm-run$r" /dev/null op_read "$dir"; add_sample "$v" read_warm "$T_S"
    sample_rss "$v"
    log "run $r: $v: find"
    fresh "$v" || return 0
    timed "$v-find-cold-run$r" /dev/null op_find "$dir"; add_sample "$v" find_cold "$T_S"
    timed "$v-find-warm-run$r" /dev/null op_find "$dir"; add_sample "$v" find_warm "$T_S"
    log "run $r: $v: ls -lR"
    fresh "$v" || return 0
    timed "$v-ls-cold-run$r" /dev/null op_ls "$dir"; add_sample "$v" ls_cold "$T_S"
    timed "$v-ls-warm-run$r" /dev/null op_ls "$dir"; add_sample "$v" ls_warm "$T_S"
    sample_rss "$v"
    log "run $r: $v: read of the large file"
    fresh "$v" || return 0
    timed "$v-large-cold-run$r" /dev/null op_large "$dir"; add_sample "$v" large_cold "$T_S"
    timed "$v-large-warm-run$r" /dev/null op_large "$dir"; add_sample "$v" large_warm "$T_S"
    log "run $r: $v: random 4 KiB reads"
    fresh "$v" || return 0
    rand_step "$v" "$r" cold
    rand_step "$v" "$r" warm
    if [[ $v != native ]]; then
        log "run $r: $v: warm mounts"
        for i in 1 2 3; do
            umount_fs "$v"
            mount_fs "$v" || return 0
            add_sample "$v" mount_warm "$MOUNT_S"
        done
    fi
    if [[ $r -eq 1 && $v != native ]]; then
        log "$v: comparing the tree with the native one (untimed)"
        verify_fs "$v"
    fi
}

t_start=$(us_now)
for ((r = 1; r <= runs; r++)); do
    for v in "${variants[@]}"; do
        measure "$v" "$r"
    done
done
bench_s=$(us_to_s $(($(us_now) - t_start)))

# ---- medians and ratios --------------------------------------------------------
declare -A M=()   # M[fs.metric] = median (max for RSS)
metrics=(mount_cold mount_warm read_cold read_warm find_cold find_warm ls_cold ls_warm large_cold large_warm rand_cold rand_warm)
for v in "${variants[@]}"; do
    for k in "${metrics[@]}" rss_kb hwm_kb; do
        read -r -a xs <<< "${S[$v.$k]:-}"
        if [[ $k == rss_kb || $k == hwm_kb ]]; then
            M[$v.$k]=$(maxof "${xs[@]}")
        else
            M[$v.$k]=$(median "${xs[@]}")
        fi
    done
    M[$v.read_cold_mbps]=$(fdiv "$(fdiv "$c_bytes" 1e6)" "${M[$v.read_cold]}")
    M[$v.read_warm_mbps]=$(fdiv "$(fdiv "$c_bytes" 1e6)" "${M[$v.read_warm]}")
    M[$v.large_cold_mbps]=$(fdiv "$(fdiv "$big_size" 1e6)" "${M[$v.large_cold]}")
    M[$v.large_warm_mbps]=$(fdiv "$(fdiv "$big_size" 1e6)" "${M[$v.large_warm]}")
done
have() { [[ " ${variants[*]} " == *" $1 "* ]]; }
# ratio_to V METRIC REF: how much longer V takes than REF (V / REF for
# times, REF / V for reads/s), empty when REF was not measured.
ratio_to() {
    have "$3" || return 0
    case "$2" in
        rand_*) fdiv "${M[$3.$2]}" "${M[$1.$2]}" ;;
        *) fdiv "${M[$1.$2]}" "${M[$3.$2]}" ;;
    esac
}
ratio() { ratio_to "$1" "$2" native; }   # ratio V METRIC: against the native tree

# Targets, for nexus.
status() {   # status VALUE OP LIMIT -> PASS / FAIL / n/a
    [[ -n $1 ]] || { echo "n/a"; return; }
    awk -v x="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "<") ? (x < t) : (x <= t); print ok ? "PASS" : "FAIL" }'
}
t_mount="" t_read="" t_cold="" t_ls="" t_rss="" t_cold_basis=""
if have nexus; then
    t_mount=$(fmul "${M[nexus.mount_warm]}" 1000)
    t_read=$(ratio nexus read_warm)
    t_ls=$(ratio nexus ls_warm)
    [[ -n ${M[nexus.rss_kb]} ]] && t_rss=$((${M[nexus.rss_kb]} * 1024))
    if have erofsfuse; then
        t_cold=$(fdiv "${M[nexus.read_cold]}" "${M[erofsfuse.read_cold]}")
        t_cold_basis="erofsfuse in this run"
    elif [[ $full_corpus -eq 1 ]]; then
        t_cold=$(fdiv "${M[nexus.read_cold]}" "$ANCHOR_EROFS_COLD_READ_S")
        t_cold_basis="erofsfuse not run: anchor figure $ANCHOR_EROFS_COLD_READ_S s"
    else
        t_cold_basis="erofsfuse not run; the anchor figure is for the full corpus only"
    fi
fi
s_mount=$(status "$t_mount" "<" "$TARGET_MOUNT_MS")
s_read=$(status "$t_read" "<=" "$TARGET_WARM_READ_RATIO")
s_cold=$(status "$t_cold" "<" 1)
s_ls=$(status "$t_ls" "<=" "$TARGET_LS_RATIO")
s_rss=$(status "$t_rss" "<" "$TARGET_RSS_BYTES")
declare -A cold_value=() cold_status=()   # issue 14: nexus' ratio to the row's reference
for k in "${cold_rows[@]}"; do
    cold_value[$k]=""
    have nexus && cold_value[$k]=$(ratio_to nexus "$k" "${cold_ref[$k]}")
    cold_status[$k]=$(status "${cold_value[$k]}" "<=" "${cold_limit[$k]}")
done
if [[ $smoke -eq 1 ]]; then   # a tiny corpus says nothing about the targets
    for s in s_mount s_read s_cold s_ls s_rss; do
        [[ ${!s} == n/a ]] || printf -v "$s" '%s (smoke)' "${!s}"
    done
    for k in "${cold_rows[@]}"; do
        [[ ${cold_status[$k]} == n/a ]] || cold_status[$k]+=" (smoke)"
    done
fi

# ---- report ------------------------------------------------------------------
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
kind=""; [[ $smoke -eq 1 ]] && kind="smoke-"
mkdir -p "$out_dir"
md="$out_dir/mount-$kind$stamp.md"
json="$out_dir/mount-$kind$stamp.json"

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "unknown (no commit)")
[[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]] && commit="$commit (dirty)"
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)

declare -A ver=() cmdline=() backing=()
# shellcheck disable=SC2059   # the format is the first argument
opt_s() { [[ -z $2 ]] || printf "$1" "$2"; }   # opt_s FMT SECONDS-OR-EMPTY
first_line() { { "$@" 2>&1 || true; } | head -1; return 0; }   # first line of a command's output
ver[native]="$native_fstype (kernel $(uname -r))"
cmdline[native]="none: \`$native\`"
backing[native]="$c_bytes bytes over paths"
if have nexus; then
    ver[nexus]=$(first_line "$nexus" --version)
    [[ -n ${ver[nexus]} ]] || ver[nexus]="nexus (no --version), commit $commit"
    cmdline[nexus]="\`nexus --store R mount MP\`; \`nexus umount MP\`"
    backing[nexus]="store ${store_bytes} bytes (\`du -sb\`; $store_source$(opt_s ', nip add %.1f s' "$store_build_s"))"
fi
if have nexus-kvd; then
    ver[nexus-kvd]=$(first_line "$nexus" --version)
    cmdline[nexus-kvd]="\`nip decode --min-size $decode_min\` once; \`nexus --store R mount MP --kernel-metadata --allow-other\`; \`nexus umount MP\`"
    backing[nexus-kvd]="the same store with decoded copies of its files of $decode_min or more (${decoded_bytes} bytes, \`du -sb\`; nip decode $(opt_s '%.1f s' "$decode_s"))"
fi
if have nexus-kv; then
    ver[nexus-kv]=$(first_line "$nexus" --version)
    cmdline[nexus-kv]="\`nexus --store R mount MP --kernel-metadata --allow-other\`; \`nexus umount MP\`"
    backing[nexus-kv]="the same store; the kernel view's images written at each mount"
fi
for v in squashfuse squashfuse_ll; do
    have "$v" || continue
    ver[$v]=$(first_line "$v" --version)
    cmdline[$v]="\`$v IMG MP\`; \`fusermount3 -u MP\`"
    backing[$v]="\`mksquashfs DIR IMG -comp zstd -processors 2 -noappend\`: $sqfs_bytes bytes ($sqfs_source$(opt_s ', %.0f s' "$sqfs_build_s"); $(first_line mksquashfs -version))"
done
if have erofsfuse; then
    ver[erofsfuse]="$(first_line "$mkfs_erofs" --version | sed 's/^mkfs.erofs (erofs-utils) /erofs-utils /') (built from $erofs_tool_source)"
    cmdline[erofsfuse]="\`erofsfuse IMG MP\`; \`fusermount3 -u MP\`"
    backing[erofsfuse]="\`mkfs.erofs -z$erofs_comp IMG DIR\`: $erofs_bytes bytes ($erofs_source$(opt_s ', %.0f s' "$erofs_build_s"))"
fi
if have erofs; then
    if [[ -n $erofs_img_tag ]]; then
        ver[erofs]="kernel erofs driver (kernel $(uname -r)); image by $erofs_tool_source"
    else
        ver[erofs]="kernel erofs driver (kernel $(uname -r)); image by $(first_line "$mkfs_erofs" --version | sed 's/^mkfs.erofs (erofs-utils) /erofs-utils /')"
    fi
    cmdline[erofs]="\`mount -t erofs -o ro,loop IMG MP\`; \`umount MP\`"
    backing[erofs]="the erofsfuse image: \`mkfs.erofs -z$erofs_comp IMG DIR\`, $erofs_bytes bytes"
fi

ms() { fmt '%.1f' "$(fmul "$1" 1000)"; }
mib() { [[ -z $1 ]] && { printf 'n/a'; return; }; awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rx() { fmt '%.2f×' "$1"; }

{
    echo "# Mount benchmark${kind:+ (smoke)}: $stamp"
    echo
    echo "- host: $(nproc) cores ($cpu), $mem_total RAM, kernel $(uname -r), load average at end $load_end"
    echo "- nexus commit: $commit"
    echo "- corpus: \`$native\`: ${#list_all[@]} app-versions, $c_files regular files, $c_links symlinks, $c_dirs dirs, $c_bytes bytes summed over file paths; corpus-all.list sha256 $list_sum…"
    echo "- skipped packages: ${skipped:-none}"
    echo "- runs: $runs (medians; daemon RSS: largest sample); whole benchmark $(fmt '%.0f' "$bench_s") s"
    echo "- cold = \`sync; echo 3 > /proc/sys/vm/drop_caches\` and, for FUSE, a fresh mount; warm = the same command again right after"
    echo "- full read: \`xargs -0 -P $readers -n 256 cat\` over every regular file (sorted list), MB = 10^6 bytes"
    echo "- large file ($big_why): \`cat FILE > /dev/null\` of \`$big_rel\` ($big_size bytes), one reader"
    echo "- random reads: $rand_reads preads of 4 KiB at 4 KiB-aligned offsets (seed $RAND_SEED) in \`$big_rel\` ($big_size bytes); reads/s of the pread loop"
    echo "- mount time: from the mount command's start until \`MP/$probe\` exists (cold: after dropping caches; warm: median of 3 remounts)"
    echo
    echo "| file system | version | commands | backing data |"
    echo "|---|---|---|---|"
    for v in "${variants[@]}"; do
        echo "| $v | ${ver[$v]} | ${cmdline[$v]} | ${backing[$v]} |"
    done
    for v in "${!skipped_fs[@]}"; do
        echo "| $v | skipped | ${skipped_fs[$v]} | |"
    done
    echo
    echo "## Full read of every file"
    echo
    echo "| file system | cold s | cold MB/s | cold vs native | warm s | warm MB/s | warm vs native |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for v in "${variants[@]}"; do
        echo "| $v | $(fmt '%.2f' "${M[$v.read_cold]}") | $(fmt '%.0f' "${M[$v.read_cold_mbps]}") | $(rx "$(ratio "$v" read_cold)") | $(fmt '%.2f' "${M[$v.read_warm]}") | $(fmt '%.0f' "${M[$v.read_warm_mbps]}") | $(rx "$(ratio "$v" read_warm)") |"
    done
    echo
    echo "## Metadata walks"
    echo
    echo "| file system | find cold s | vs native | find warm s | vs native | ls -lR cold s | vs native | ls -lR warm s | vs native |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for v in "${variants[@]}"; do
        echo "| $v | $(fmt '%.3f' "${M[$v.find_cold]}") | $(rx "$(ratio "$v" find_cold)") | $(fmt '%.3f' "${M[$v.find_warm]}") | $(rx "$(ratio "$v" find_warm)") | $(fmt '%.3f' "${M[$v.ls_cold]}") | $(rx "$(ratio "$v" ls_cold)") | $(fmt '%.3f' "${M[$v.ls_warm]}") | $(rx "$(ratio "$v" ls_warm)") |"
    done
    echo
    echo "## Read of the large file"
    echo
    echo "\`cat\` of \`$big_rel\` ($(fmt '%.1f' "$(fdiv "$big_size" 1e6)") MB), one reader; ratios are times (> 1 is slower)."
    echo
    echo "| file system | cold s | cold MB/s | cold vs native | cold vs erofsfuse | cold vs erofs | warm s | warm MB/s | warm vs native |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for v in "${variants[@]}"; do
        echo "| $v | $(fmt '%.3f' "${M[$v.large_cold]}") | $(fmt '%.0f' "${M[$v.large_cold_mbps]}") | $(rx "$(ratio "$v" large_cold)") | $(rx "$(ratio_to "$v" large_cold erofsfuse)") | $(rx "$(ratio_to "$v" large_cold erofs)") | $(fmt '%.3f' "${M[$v.large_warm]}") | $(fmt '%.0f' "${M[$v.large_warm_mbps]}") | $(rx "$(ratio "$v" large_warm)") |"
    done
    echo
    echo "## Random 4 KiB reads, mount time, daemon memory"
    echo
    echo "| file system | random cold reads/s | time vs native | random warm reads/s | time vs native | mount cold ms | mount warm ms | daemon VmRSS MiB | daemon VmHWM MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for v in "${variants[@]}"; do
        echo "| $v | $(fmt '%.0f' "${M[$v.rand_cold]}") | $(rx "$(ratio "$v" rand_cold)") | $(fmt '%.0f' "${M[$v.rand_warm]}") | $(rx "$(ratio "$v" rand_warm)") | $(ms "${M[$v.mount_cold]}") | $(ms "${M[$v.mount_warm]}") | $(mib "${M[$v.rss_kb]}") | $(mib "${M[$v.hwm_kb]}") |"
    done
    echo
    echo "VmRSS is read from \`/proc/PID/status\` after the full read and after \`ls -lR\` (largest sample); VmHWM is the daemon's peak. The kernel's erofs has no daemon."
    if have nexus; then
        echo
        echo "## Targets (issue 3), nexus"
        echo
        echo "| target | value | limit | status |"
        echo "|---|---:|---|---|"
        echo "| mount time, warm | $(fmt '%.1f' "$t_mount") ms (cold $(ms "${M[nexus.mount_cold]}") ms) | < $TARGET_MOUNT_MS ms | $s_mount |"
        echo "| warm full read / native | $(fmt '%.3f' "$t_read") | <= $TARGET_WARM_READ_RATIO | $s_read |"
        echo "| cold full read / erofsfuse cold full read ($t_cold_basis) | $(fmt '%.3f' "$t_cold") | < 1 | $s_cold |"
        echo "| warm ls -lR / native | $(fmt '%.3f' "$t_ls") | <= $TARGET_LS_RATIO | $s_ls |"
        echo "| daemon VmRSS after the full walk | $(fmt '%.1f' "$(fdiv "$t_rss" 1e6)") MB | < $((TARGET_RSS_BYTES / 1000000)) MB | $s_rss |"
    fi
    echo
    echo "## Cold table (issue 14)"
    echo
    echo "Each after a fresh mount and \`drop_caches\`. nexus' ratios are times (nexus / other; for reads/s other / nexus): > 1 is slower."
    echo
    line="| measure |" rule="|---|"
    for v in "${variants[@]}"; do line+=" $v |"; rule+="---:|"; done
    echo "$line nexus vs native | nexus vs erofsfuse | nexus vs erofs | target (nexus) | status |"
    echo "$rule---:|---:|---:|---|---|"
    for k in "${cold_rows[@]}"; do
        line="| ${cold_label[$k]} (${cold_unit[$k]}) |"
        for v in "${variants[@]}"; do
            case "$k" in
                read_cold) line+=" $(fmt '%.2f' "${M[$v.$k]}") |" ;;
                rand_cold) line+=" $(fmt '%.0f' "${M[$v.$k]}") |" ;;
                *) line+=" $(fmt '%.3f' "${M[$v.$k]}") |" ;;
            esac
        done
        if have nexus; then
            line+=" $(rx "$(ratio nexus "$k")") | $(rx "$(ratio_to nexus "$k" erofsfuse)") | $(rx "$(ratio_to nexus "$k" erofs)") |"
        else
            line+=" n/a | n/a | n/a |"
        fi
        echo "$line ${cold_goal[$k]} | ${cold_status[$k]} |"
    done
    echo
    echo "## Tree check (untimed, first run)"
    echo
    echo "Listing below App/ (type, mode, owner, size, mtime in seconds, link target; nexus' App/Current links left out) compared with the native tree$([[ $verify -eq 1 ]] && echo "; content: md5sum of every file")."
    echo
    echo "| file system | listing lines that differ | files with other content |"
    echo "|---|---:|---:|"
    for v in "${variants[@]}"; do
        [[ $v == native ]] && continue
        echo "| $v | ${tree_diff[$v]:-n/a} | $([[ $verify -eq 1 ]] && echo "${content_diff[$v]:-n/a}" || echo "not checked") |"
    done
    if [[ $full_corpus -eq 1 ]]; then
        echo
        echo "Anchor figures (issue 3, shared/bench-corpus/README.md; earlier measurements on this kind of machine): native warm read 3.6 s, cold 9.6 s, warm \`ls -lR\` 1.0 s, warm \`find\` 0.23 s; squashfuse warm read 34.5 s, cold 57 s, warm \`ls -lR\` 32 s; erofsfuse mount 157 ms, warm read 7.0 s, cold 15.8 s."
    fi
    if [[ ${#warnings[@]} -gt 0 || ${#errors[@]} -gt 0 ]]; then
        echo
        echo "Problems:"
        for w in "${errors[@]}"; do echo "- error: $w"; done
        for w in "${warnings[@]}"; do echo "- warning: $w"; done
    fi
    if [[ $smoke -eq 1 ]]; then
        echo
        echo "Smoke corpus (3 small packages): the figures only show that the script works, not how the file systems compare."
    fi
} > "$md"

jstr() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/ }; s=${s//$'\n'/\\n}; printf '"%s"' "$s"; }
jnum() { if [[ -z ${1:-} ]]; then printf 'null'; else printf '%s' "$1"; fi; }
jarr() { local a=("$@") i; printf '['; for i in "${!a[@]}"; do [[ $i -gt 0 ]] && printf ', '; printf '%s' "${a[$i]}"; done; printf ']'; }
jstrs() { local a=() x; for x in "$@"; do a+=("$(jstr "$x")"); done; jarr "${a[@]}"; }
jtarget() {   # jtarget VALUE LIMIT STATUS [BASIS]
    printf '{"value": %s, "limit": %s, "status": %s' "$(jnum "$1")" "$2" "$(jstr "$3")"
    [[ -n ${4:-} ]] && printf ', "basis": %s' "$(jstr "$4")"
    printf '}'
}
{
    printf '{\n'
    printf '  "date": %s,\n  "smoke": %s,\n  "commit": %s,\n' "$(jstr "$stamp")" "$([[ $smoke -eq 1 ]] && echo true || echo false)" "$(jstr "$commit")"
    printf '  "host": {"cores": %s, "cpu": %s, "kernel": %s, "mem": %s, "loadavg_end": %s},\n' "$(nproc)" "$(jstr "$cpu")" "$(jstr "$(uname -r)")" "$(jstr "$mem_total")" "$(jstr "$load_end")"
    printf '  "corpus": {"dir": %s, "fstype": %s, "app_versions": %s, "files": %s, "symlinks": %s, "dirs": %s, "bytes_over_paths": %s, "list_sha256_prefix": %s, "skipped": %s},\n' \
        "$(jstr "$native")" "$(jstr "$native_fstype")" "${#list_all[@]}" "$c_files" "$c_links" "$c_dirs" "$c_bytes" "$(jstr "$list_sum")" "$(jstr "$skipped")"
    printf '  "method": {"runs": %s, "readers": %s, "rand_reads": %s, "rand_seed": %s, "rand_file": %s, "rand_file_bytes": %s, "rand_file_choice": %s, "probe": %s, "verify_content": %s, "bench_seconds": %s},\n' \
        "$runs" "$readers" "$rand_reads" "$RAND_SEED" "$(jstr "$big_rel")" "$big_size" "$(jstr "$big_why")" "$(jstr "$probe")" "$([[ $verify -eq 1 ]] && echo true || echo false)" "$bench_s"
    printf '  "backing": {"nexus_store_bytes": %s, "nexus_store_build_s": %s, "nexus_store": %s, "squashfs_bytes": %s, "squashfs_build_s": %s, "squashfs": %s, "erofs_bytes": %s, "erofs_build_s": %s, "erofs": %s, "erofs_comp": %s},\n' \
        "$(jnum "$store_bytes")" "$(jnum "$store_build_s")" "$(jstr "$store_source")" "$(jnum "$sqfs_bytes")" "$(jnum "$sqfs_build_s")" "$(jstr "$sqfs_source")" \
        "$(jnum "$erofs_bytes")" "$(jnum "$erofs_build_s")" "$(jstr "$erofs_source")" "$(jstr "$erofs_comp")"
    printf '  "skipped_fs": {'
    first=1
    for v in "${!skipped_fs[@]}"; do
        [[ $first -eq 1 ]] || printf ', '
        first=0
        printf '%s: %s' "$(jstr "$v")" "$(jstr "${skipped_fs[$v]}")"
    done
    printf '},\n'
    printf '  "errors": %s,\n  "warnings": %s,\n' "$(jstrs "${errors[@]}")" "$(jstrs "${warnings[@]}")"
    printf '  "fs": {\n'
    first=1
    for v in "${variants[@]}"; do
        [[ $first -eq 1 ]] || printf ',\n'
        first=0
        printf '    %s: {"version": %s, "commands": %s, "backing": %s,\n' "$(jstr "$v")" "$(jstr "${ver[$v]}")" "$(jstr "${cmdline[$v]}")" "$(jstr "${backing[$v]}")"
        printf '      "median": {'
        for k in "${metrics[@]}"; do
            printf '"%s": %s, ' "$k" "$(jnum "${M[$v.$k]}")"
        done
        printf '"read_cold_mb_per_s": %s, "read_warm_mb_per_s": %s, "large_cold_mb_per_s": %s, "large_warm_mb_per_s": %s, "rss_kb_max": %s, "hwm_kb_max": %s},\n' \
            "$(jnum "${M[$v.read_cold_mbps]}")" "$(jnum "${M[$v.read_warm_mbps]}")" "$(jnum "${M[$v.large_cold_mbps]}")" "$(jnum "${M[$v.large_warm_mbps]}")" \
            "$(jnum "${M[$v.rss_kb]}")" "$(jnum "${M[$v.hwm_kb]}")"
        printf '      "vs_native": {'
        sep=""
        for k in read_cold read_warm find_cold find_warm ls_cold ls_warm large_cold large_warm rand_cold rand_warm; do
            printf '%s"%s": %s' "$sep" "$k" "$(jnum "$(ratio "$v" "$k")")"
            sep=", "
        done
        printf '},\n      "samples": {'
        sep=""
        for k in "${metrics[@]}" rss_kb hwm_kb; do
            read -r -a xs <<< "${S[$v.$k]:-}"
            printf '%s"%s": %s' "$sep" "$k" "$(jarr "${xs[@]}")"
            sep=", "
        done
        printf '},\n      "tree_diff_lines": %s, "content_diff_files": %s}' "$(jnum "${tree_diff[$v]:-}")" "$(jnum "${content_diff[$v]:-}")"
    done
    printf '\n  },\n'
    printf '  "targets_nexus": {\n'
    printf '    "mount_warm_ms": %s,\n' "$(jtarget "$t_mount" "$TARGET_MOUNT_MS" "$s_mount")"
    printf '    "warm_read_over_native": %s,\n' "$(jtarget "$t_read" "$TARGET_WARM_READ_RATIO" "$s_read")"
    printf '    "cold_read_over_erofsfuse": %s,\n' "$(jtarget "$t_cold" 1 "$s_cold" "$t_cold_basis")"
    printf '    "warm_ls_lR_over_native": %s,\n' "$(jtarget "$t_ls" "$TARGET_LS_RATIO" "$s_ls")"
    printf '    "daemon_rss_bytes": %s\n' "$(jtarget "$t_rss" "$TARGET_RSS_BYTES" "$s_rss")"
    printf '  },\n'
    printf '  "cold_table_issue14": {\n'
    printf '    "ratio": "time: nexus / reference (for reads/s reference / nexus); > 1 is slower",\n'
    printf '    "rows": [\n'
    sep=""
    for k in "${cold_rows[@]}"; do
        printf '%s      {"measure": %s, "label": %s, "unit": %s, "values": {' "$sep" "$(jstr "$k")" "$(jstr "${cold_label[$k]}")" "$(jstr "${cold_unit[$k]}")"
        sep2=""
        for v in "${variants[@]}"; do
            printf '%s%s: %s' "$sep2" "$(jstr "$v")" "$(jnum "${M[$v.$k]}")"
            sep2=", "
        done
        printf '},\n        "nexus_over": {"native": %s, "erofsfuse": %s, "erofs": %s},\n' \
            "$(jnum "$(have nexus && ratio nexus "$k")")" "$(jnum "$(have nexus && ratio_to nexus "$k" erofsfuse)")" "$(jnum "$(have nexus && ratio_to nexus "$k" erofs)")"
        printf '        "target": %s}' "$(jtarget "${cold_value[$k]}" "${cold_limit[$k]}" "${cold_status[$k]}" "${cold_goal[$k]} (nexus against ${cold_ref[$k]} in this run)")"
        sep=$',\n'
    done
    printf '\n    ]\n  }\n}\n'
} > "$json"

cat "$md"
log "report: $md"
log "json:   $json"

if [[ ${#errors[@]} -gt 0 ]]; then
    log "${#errors[@]} error(s) during the benchmark (see Problems in the report)"
    exit 1
fi
if [[ $check -eq 1 && $smoke -eq 0 ]] && [[ "$s_mount $s_read $s_cold $s_ls $s_rss ${cold_status[*]}" == *FAIL* ]]; then
    log "target missed"
    exit 3
fi
