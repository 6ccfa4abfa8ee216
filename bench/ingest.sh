#!/usr/bin/env bash
# Ingest benchmark: nip vs casync vs borg, measured in the same run.
#
#   bench/ingest.sh [options]
#
# Options:
#   --smoke               build a tiny corpus (hello, jq, libonig5 + a second
#                         version of each with one file changed) in a temp dir
#                         and run the whole comparison on it (< 1 min). All
#                         requested tools must be installed.
#   --tools LIST          comma-separated subset of nip,casync,borg
#                         (default: all three)
#   --runs N              repetitions of measurement (a), median reported
#                         (default 1)
#   --borg-compression C  borg --compression spec; repeat the option to
#                         record several (default: lz4, borg's default)
#   --with-mksquashfs     also run `mksquashfs CORPUS out.sqfs -comp zstd
#                         -processors 2` and use its size in the ratio
#                         instead of the 0.91 GB constant
#   --check               exit with status 3 when a target is missed
#   --keep                keep the work dir (repositories, logs)
#   --out DIR             where to write ingest-<date>.{md,json}
#                         (default: bench/out)
#
# Environment:
#   NEXUS_BENCH_DIR  corpus root made by bench/fetch-corpus.sh
#                    (default /var/tmp/nexus-bench); the work dir is created
#                    there too (staging uses hard links, so it must be on the
#                    corpus' file system)
#   NIP              nip binary (default: <repo>/target/release/nip)
#
# Measurements (warm page cache: the corpus is read with cat before every
# timed command):
#   (a) whole corpus into an empty repository: wall time, max RSS,
#       throughput over the corpus bytes summed over file paths, `du -sb`
#       of the repository (and `nip stats --json`)
#   (b) corpus-v1.list into an empty repository, then corpus-v2.list into the
#       same one: bytes the second versions add to the repository
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

SQUASHFS_CONST_BYTES=910000000   # mksquashfs -comp zstd, whole corpus (issue / corpus README)
FULL_CORPUS_FILES=98351          # the full pinned corpus (bench/packages.lock, nothing skipped)
FULL_CORPUS_BYTES=3616338746     #   summed over file paths
TARGET_THROUGHPUT_RATIO=2.5      # nip MB/s / casync MB/s >= this
TARGET_V2_RATIO=1.0              # nip bytes added / casync bytes added <= this

smoke=0 with_sqfs=0 runs=1 check=0 keep=0
tools_arg="nip,casync,borg"
out_dir="$here/out"
borg_comps=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=1; shift ;;
        --tools) tools_arg=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --borg-compression) borg_comps+=("$2"); shift 2 ;;
        --with-mksquashfs) with_sqfs=1; shift ;;
        --check) check=1; shift ;;
        --keep) keep=1; shift ;;
        --out) out_dir=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ingest.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "ingest.sh: --runs needs a positive integer" >&2; exit 2; }
[[ ${#borg_comps[@]} -gt 0 ]] || borg_comps=(lz4)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'ingest.sh: %s\n' "$*" >&2; exit 1; }

bench_dir=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
nip=${NIP:-$root/target/release/nip}

# ---- tools -------------------------------------------------------------------
want() { [[ ",$tools_arg," == *",$1,"* ]]; }
for t in ${tools_arg//,/ }; do
    case "$t" in nip|casync|borg) ;; *) die "unknown tool in --tools: $t" ;; esac
done
have_nip=0 have_casync=0 have_borg=0
if want nip; then
    if [[ -x $nip ]]; then
        have_nip=1
    else
        die "nip binary not found at $nip (build it with: cargo build --release -p nexus-cli, set NIP=..., or leave nip out with --tools casync,borg)"
    fi
fi
for t in casync borg; do
    want "$t" || continue
    if command -v "$t" >/dev/null; then
        printf -v "have_$t" 1
    elif [[ $smoke -eq 1 ]]; then
        die "$t is not installed; the smoke test needs it (apt-get install -y casync borgbackup)"
    else
        log "WARNING: $t is not installed; it is left out of this run (apt-get install -y casync borgbackup)"
    fi
done
if [[ $with_sqfs -eq 1 ]] && ! command -v mksquashfs >/dev/null; then
    die "--with-mksquashfs given but mksquashfs is not installed (apt-get install -y squashfs-tools)"
fi
gnu_time=""
if [[ -x /usr/bin/time ]] && /usr/bin/time -f %M -o /dev/null true 2>/dev/null; then
    gnu_time=/usr/bin/time
else
    log "WARNING: GNU time not found (apt-get install -y time): max RSS will not be recorded"
fi

variants=()   # measured tool variants, in run order
[[ $have_nip -eq 1 ]] && variants+=(nip)
[[ $have_casync -eq 1 ]] && variants+=(casync)
declare -A borg_comp=()
if [[ $have_borg -eq 1 ]]; then
    for c in "${borg_comps[@]}"; do
        v="borg-${c//[^A-Za-z0-9]/_}"
        borg_comp[$v]=$c
        variants+=("$v")
    done
fi
[[ ${#variants[@]} -gt 0 ]] || die "no tool to measure"

label() {
    case "$1" in
        borg-*) printf 'borg (%s)' "${borg_comp[$1]}" ;;
        *) printf '%s' "$1" ;;
    esac
}

# ---- work dir ----------------------------------------------------------------
if [[ $smoke -eq 1 ]]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-ingest-smoke.XXXXXX")
else
    mkdir -p "$bench_dir"
    work=$(mktemp -d "$bench_dir/ingest-work.XXXXXX")
fi
cleanup() {
    if [[ $keep -eq 1 ]]; then
        log "work dir kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
logs="$work/logs"
mkdir -p "$logs"

export BORG_BASE_DIR="$work/borg-home"   # borg's caches/keys/security dirs
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

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
    # Second version of each app: same tree, 16 bytes changed in its largest file.
    cp "$bench_dir/corpus-all.list" "$bench_dir/corpus-v1.list"
    : > "$bench_dir/corpus-v2.list"
    while read -r d; do
        cp -a "$bench_dir/corpus/$d" "$bench_dir/corpus/$d+smoke2"
        f=$(find "$bench_dir/corpus/$d+smoke2" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
        sz=$(stat -c %s "$f")
        printf 'nexus-smoke-v2!!' | dd of="$f" bs=1 seek=$((sz / 2)) conv=notrunc status=none
        printf '%s\n' "$d+smoke2" >> "$bench_dir/corpus-v2.list"
    done < "$bench_dir/corpus-v1.list"
    sort "$bench_dir/corpus-v1.list" "$bench_dir/corpus-v2.list" > "$bench_dir/corpus-all.list"
fi

# ---- corpus ------------------------------------------------------------------
corpus="$bench_dir/corpus"
for f in corpus-all.list corpus-v1.list corpus-v2.list; do
    [[ -s $bench_dir/$f ]] || die "$bench_dir/$f missing or empty: run bench/fetch-corpus.sh first"
done
mapfile -t list_all < "$bench_dir/corpus-all.list"
mapfile -t list_v1 < "$bench_dir/corpus-v1.list"
mapfile -t list_v2 < "$bench_dir/corpus-v2.list"
for d in "${list_all[@]}"; do
    [[ -d $corpus/$d ]] || die "corpus dir missing: $corpus/$d"
done
skipped=""
[[ -f $bench_dir/skipped.txt ]] && skipped=$(tr '\n' ' ' < "$bench_dir/skipped.txt" | sed 's/ $//')

same_fs() { [[ $(stat -c %d "$1") == "$(stat -c %d "$2")" ]]; }
same_fs "$corpus" "$work" || die "work dir $work is not on the corpus' file system (hard-link staging needs that)"

# stage NAME LISTFILE: hard-link copy of the listed App/Version dirs
stage() {
    local dst="$work/stage/$1" d
    mkdir -p "$dst"
    while read -r d; do
        mkdir -p "$dst/$(dirname "$d")"
        cp -al "$corpus/$d" "$dst/$d"
    done < "$2"
}

# Whole corpus for casync/borg/mksquashfs: the corpus dir itself when it holds
# exactly the listed dirs, else a hard-link staging tree.
if diff -q <(find "$corpus" -mindepth 2 -maxdepth 2 -printf '%P\n' | sort) \
           <(sort "$bench_dir/corpus-all.list") >/dev/null; then
    src_all="$corpus"
else
    log "corpus dir holds entries not in corpus-all.list: staging the listed dirs"
    stage all "$bench_dir/corpus-all.list"
    src_all="$work/stage/all"
fi

sum_paths() {   # DIR... -> "files bytes" over regular files, per path
    find "$@" -type f -printf '%s\n' | awk '{ s += $1; n++ } END { printf "%.0f %.0f\n", n, s }'
}
read -r c_files c_bytes < <(sum_paths "$src_all")
c_inode_bytes=$(find "$src_all" -type f -printf '%i %s\n' | awk '!seen[$1]++ { s += $2 } END { printf "%.0f\n", s }')
read -r v2_files v2_bytes < <(sum_paths "${list_v2[@]/#/$corpus/}")
log "corpus: ${#list_all[@]} app-versions, $c_files files, $c_bytes bytes over paths"

# ---- helpers -------------------------------------------------------------------
du_b() { du -sb "$1" | cut -f1; }
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.6f", a / b }'; }
fmt() {   # fmt PRINTF-FMT NUMBER-OR-EMPTY
    if [[ -z $2 ]]; then printf 'n/a'; else awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'; fi
}
gb() { fmt '%.3f' "$(fdiv "$1" 1e9)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

prewarm_s=()
prewarm() {
    local t0 t1
    t0=$(date +%s.%N)
    find "$corpus" -type f -print0 | xargs -0 cat > /dev/null
    t1=$(date +%s.%N)
    prewarm_s+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
}

# run_timed NAME DIR CMD... : run CMD in DIR, output to $logs/NAME.log;
# sets T_WALL (s), T_RSS_KB, T_USER, T_SYS (empty when unknown).
run_timed() {
    local name=$1 dir=$2 t0 t1 rc=0
    shift 2
    printf '%q ' "$@" > "$logs/$name.cmd"
    log "run $name: $*"
    t0=$(date +%s.%N)
    if [[ -n $gnu_time ]]; then
        (cd "$dir" && exec "$gnu_time" -f '%M %U %S' -o "$logs/$name.time" "$@") > "$logs/$name.log" 2>&1 || rc=$?
    else
        (cd "$dir" && exec "$@") > "$logs/$name.log" 2>&1 || rc=$?
    fi
    t1=$(date +%s.%N)
    if [[ $rc -ne 0 ]]; then
        if [[ $rc -eq 1 && $1 == borg ]]; then
            # borg: 1 = finished with warnings (e.g. a file it could not read)
            warnings+=("$name: borg exited with warnings, see its log: $(grep -m1 -v '^$' "$logs/$name.log" || true)")
            log "WARNING: ${warnings[-1]}"
        else
            tail -20 "$logs/$name.log" >&2
            die "$name failed (exit $rc): $*"
        fi
    fi
    T_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    T_RSS_KB="" T_USER="" T_SYS=""
    if [[ -n $gnu_time ]]; then
        read -r T_RSS_KB T_USER T_SYS < <(tail -1 "$logs/$name.time")
    fi
}

declare -A R=()   # results: R[variant.key]
warnings=()

json_get() {   # json_get KEY FILE -> first numeric value of "KEY": N
    { grep -o "\"$1\"[[:space:]]*:[[:space:]]*[0-9][0-9]*" "$2" || true; } | head -1 | sed 's/.*:[[:space:]]*//'
}

# ingest V NAME REPO SRC-NAME : add one set of dirs (SRC-NAME all|v1|v2)
# into REPO with tool variant V (repository must exist).
ingest() {
    local v=$1 name=$2 repo=$3 which=$4 src d
    local -a paths
    case "$which" in
        all) src=$src_all; paths=("${list_all[@]/#/$corpus/}") ;;
        v1) src=$work/stage/v1; paths=("${list_v1[@]/#/$corpus/}") ;;
        v2) src=$work/stage/v2; paths=("${list_v2[@]/#/$corpus/}") ;;
    esac
    case "$v" in
        nip) run_timed "$name" "$work" "$nip" --store "$repo" add "${paths[@]}" ;;
        casync) run_timed "$name" "$work" casync make --store="$repo/store" "$repo/$which.caidx" "$src" ;;
        borg-*)
            d=$(dirname "$src")
            run_timed "$name" "$d" borg create --compression "${borg_comp[$v]}" "$repo::$which" "$(basename "$src")" ;;
    esac
}

init_repo() {   # init_repo V REPO
    local v=$1 repo=$2
    rm -rf "$repo"
    case "$v" in
        nip) run_timed "$(basename "$repo")-init" "$work" "$nip" --store "$repo" init ;;
        casync) mkdir -p "$repo" ;;
        borg-*) run_timed "$(basename "$repo")-init" "$work" borg init -e none "$repo" ;;
    esac
}

nip_stats() {   # nip_stats REPO OUTFILE
    "$nip" --store "$1" stats --json > "$2" 2> "$logs/nip-stats.err" ||
        { cat "$logs/nip-stats.err" >&2; die "nip stats --json failed"; }
}

# ---- (a) whole corpus --------------------------------------------------------
for ((r = 1; r <= runs; r++)); do
    for v in "${variants[@]}"; do
        repo="$work/repo-$v-a"
        init_repo "$v" "$repo"
        prewarm
        ingest "$v" "$v-a-run$r" "$repo" all
        R[$v.a.walls]+="$T_WALL "
        R[$v.a.rss_kb]=$(printf '%s\n' "${R[$v.a.rss_kb]:-0}" "${T_RSS_KB:-0}" | sort -n | tail -1)
        R[$v.a.user]+="${T_USER} "
        R[$v.a.sys]+="${T_SYS} "
        R[$v.a.stored]=$(du_b "$repo")
        if [[ $v == nip ]]; then
            nip_stats "$repo" "$logs/nip-a-stats.json"
            R[nip.a.stats_stored]=$(json_get stored_bytes "$logs/nip-a-stats.json")
            R[nip.a.stats_logical]=$(json_get logical_bytes "$logs/nip-a-stats.json")
        fi
        [[ $keep -eq 1 && $r -eq $runs ]] || rm -rf "$repo"
    done
done
for v in "${variants[@]}"; do
    read -r -a walls <<< "${R[$v.a.walls]}"
    R[$v.a.wall]=$(median "${walls[@]}")
    R[$v.a.mbps]=$(fdiv "$(fdiv "$c_bytes" 1e6)" "${R[$v.a.wall]}")
    read -r -a us <<< "${R[$v.a.user]}"
    read -r -a ss <<< "${R[$v.a.sys]}"
    R[$v.a.user]=""; R[$v.a.sys]=""
    [[ ${#us[@]} -gt 0 ]] && R[$v.a.user]=$(median "${us[@]}")
    [[ ${#ss[@]} -gt 0 ]] && R[$v.a.sys]=$(median "${ss[@]}")
    [[ ${R[$v.a.rss_kb]} == 0 ]] && R[$v.a.rss_kb]=""
done

# ---- optional mksquashfs -------------------------------------------------------
sqfs_bytes=$SQUASHFS_CONST_BYTES
sqfs_source="constant 0.91 GB (corpus README / issue)"
sqfs_wall="" sqfs_rss=""
if [[ $with_sqfs -eq 1 ]]; then
    prewarm
    run_timed mksquashfs "$work" mksquashfs "$src_all" "$work/out.sqfs" -comp zstd -processors 2 -noappend -no-progress
    sqfs_bytes=$(stat -c %s "$work/out.sqfs")
    sqfs_wall=$T_WALL sqfs_rss=$T_RSS_KB
    sqfs_source="measured in this run"
    rm -f "$work/out.sqfs"
fi

# ---- (b) second versions -----------------------------------------------------
# casync and borg get one directory per step: hard-link copies of the v1 and
# v2 App/Version dirs (made only now, so that (a) sees the corpus' own link
# counts).
log "staging v1/v2 trees (hard links)"
stage v1 "$bench_dir/corpus-v1.list"
stage v2 "$bench_dir/corpus-v2.list"
for v in "${variants[@]}"; do
    repo="$work/repo-$v-b"
    init_repo "$v" "$repo"
    prewarm
    R[$v.b.before]=$(du_b "$repo")
    ingest "$v" "$v-b-v1" "$repo" v1
    R[$v.b.v1_wall]=$T_WALL
    R[$v.b.after_v1]=$(du_b "$repo")
    ingest "$v" "$v-b-v2" "$repo" v2
    R[$v.b.v2_wall]=$T_WALL
    R[$v.b.after_v2]=$(du_b "$repo")
    a1=${R[$v.b.after_v1]} a2=${R[$v.b.after_v2]}
    R[$v.b.added]=$((a2 - a1))
    if [[ $v == nip ]]; then
        nip_stats "$repo" "$logs/nip-b-stats.json"
        R[nip.b.stats_stored]=$(json_get stored_bytes "$logs/nip-b-stats.json")
        R[nip.b.stats_logical]=$(json_get logical_bytes "$logs/nip-b-stats.json")
    fi
    [[ $keep -eq 1 ]] || rm -rf "$repo"
done

# ---- ratios ------------------------------------------------------------------
thr_ratio="" v2_ratio="" sq_ratio="" sq_ratio_stats=""
if [[ $have_nip -eq 1 && $have_casync -eq 1 ]]; then
    thr_ratio=$(fdiv "${R[nip.a.mbps]}" "${R[casync.a.mbps]}")
    v2_ratio=$(fdiv "${R[nip.b.added]}" "${R[casync.b.added]}")
fi
if [[ $have_nip -eq 1 ]]; then
    sq_ratio=$(fdiv "${R[nip.a.stored]}" "$sqfs_bytes")
    sq_ratio_stats=$(fdiv "${R[nip.a.stats_stored]:-}" "$sqfs_bytes")
fi
status_ge() { [[ -z $1 ]] && { echo "n/a"; return; }; awk -v x="$1" -v t="$2" 'BEGIN { print (x >= t) ? "PASS" : "MISS" }'; }
status_le() { [[ -z $1 ]] && { echo "n/a"; return; }; awk -v x="$1" -v t="$2" 'BEGIN { print (x <= t) ? "PASS" : "MISS" }'; }
thr_status=$(status_ge "$thr_ratio" "$TARGET_THROUGHPUT_RATIO")
v2_status=$(status_le "$v2_ratio" "$TARGET_V2_RATIO")
sq_status="n/a"
[[ -n $sq_ratio ]] && sq_status=$(awk -v x="$sq_ratio" 'BEGIN { print (x <= 1) ? "smaller" : "larger" }')
if [[ $with_sqfs -eq 0 ]] && [[ $c_files -ne $FULL_CORPUS_FILES || $c_bytes -ne $FULL_CORPUS_BYTES ]]; then
    sq_status="not comparable: the constant is for the full corpus"
fi

# ---- report ------------------------------------------------------------------
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
kind=""; [[ $smoke -eq 1 ]] && kind="smoke-"
mkdir -p "$out_dir"
md="$out_dir/ingest-$kind$stamp.md"
json="$out_dir/ingest-$kind$stamp.json"

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "unknown (no commit)")
[[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]] && commit="$commit (dirty)"
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
v_casync=$([[ $have_casync -eq 1 ]] && casync --version 2>&1 | head -1 || echo "-")
v_borg=$([[ $have_borg -eq 1 ]] && borg --version 2>&1 | head -1 || echo "-")
v_nip=$([[ $have_nip -eq 1 ]] && { "$nip" --version 2>/dev/null | head -1 || echo "nip (no --version)"; } || echo "-")
v_sqfs=$([[ $with_sqfs -eq 1 ]] && mksquashfs -version 2>&1 | head -1 || echo "-")
prewarm_med=$(median "${prewarm_s[@]}")

mib() { [[ -z $1 ]] && { printf 'n/a'; return; }; awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

{
    echo "# Ingest benchmark${kind:+ (smoke)}: $stamp"
    echo
    echo "- host: $(nproc) cores ($cpu), kernel $(uname -r), load average at end $load_end"
    echo "- nexus commit: $commit"
    echo "- corpus: \`$corpus\`: ${#list_all[@]} app-versions (v1 list ${#list_v1[@]}, v2 list ${#list_v2[@]}), $c_files files, $c_bytes bytes summed over file paths ($(gb "$c_bytes") GB; $(gb "$c_inode_bytes") GB unique inodes)"
    echo "- skipped packages: ${skipped:-none}"
    echo "- page cache: warm; the corpus is read with \`find | xargs -0 cat\` before every timed command (median $(fmt '%.2f' "$prewarm_med") s)"
    echo "- throughput = corpus bytes summed over file paths / wall time (1 MB = 10^6 bytes); wall = median of $runs run(s)"
    echo "- stored = \`du -sb\` of the repository directory (apparent bytes, includes indexes/catalog; caches outside it, such as borg's, are not counted)"
    echo "- max RSS: GNU time %M of the measured command (largest process)"
    echo
    echo "| tool | version | flags |"
    echo "|---|---|---|"
    [[ $have_nip -eq 1 ]] && echo "| nip | $v_nip | \`nip --store R add <every App/Version dir>\` (one transaction) |"
    [[ $have_casync -eq 1 ]] && echo "| casync | $v_casync | \`casync make --store=R/store R/X.caidx DIR\` (defaults: avg 64 KiB chunks, zstd, sha512-256, --with=best) |"
    for v in "${variants[@]}"; do
        [[ $v == borg-* ]] && echo "| $(label "$v") | $v_borg | \`borg init -e none\`; \`borg create --compression ${borg_comp[$v]} R::X DIR\` (default chunker buzhash 19,23,21,4095) |"
    done
    [[ $with_sqfs -eq 1 ]] && echo "| mksquashfs | $v_sqfs | \`mksquashfs DIR out.sqfs -comp zstd -processors 2 -noappend -no-progress\` |"
    echo
    echo "## (a) Whole corpus into an empty repository"
    echo
    echo "| tool | wall s | MB/s | max RSS MiB | user s | sys s | stored bytes | stored GB | stored / corpus |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for v in "${variants[@]}"; do
        echo "| $(label "$v") | $(fmt '%.2f' "${R[$v.a.wall]}") | $(fmt '%.1f' "${R[$v.a.mbps]}") | $(mib "${R[$v.a.rss_kb]}") | $(fmt '%.2f' "${R[$v.a.user]}") | $(fmt '%.2f' "${R[$v.a.sys]}") | ${R[$v.a.stored]} | $(gb "${R[$v.a.stored]}") | $(fmt '%.3f' "$(fdiv "${R[$v.a.stored]}" "$c_bytes")") |"
    done
    [[ $with_sqfs -eq 1 ]] && echo "| mksquashfs | $(fmt '%.2f' "$sqfs_wall") | $(fmt '%.1f' "$(fdiv "$(fdiv "$c_bytes" 1e6)" "$sqfs_wall")") | $(mib "$sqfs_rss") | | | $sqfs_bytes | $(gb "$sqfs_bytes") | $(fmt '%.3f' "$(fdiv "$sqfs_bytes" "$c_bytes")") |"
    if [[ $have_nip -eq 1 ]]; then
        echo
        echo "nip stats --json: stored_bytes ${R[nip.a.stats_stored]:-n/a}, logical_bytes ${R[nip.a.stats_logical]:-n/a}"
    fi
    if [[ $runs -gt 1 ]]; then
        echo
        echo "All wall times (s):"
        for v in "${variants[@]}"; do echo "- $(label "$v"): ${R[$v.a.walls]}"; done
    fi
    echo
    echo "## (b) Second versions: v1 list into an empty repository, then the v2 list into the same one"
    echo
    echo "v2 list: ${#list_v2[@]} app-versions, $v2_files files, $v2_bytes bytes over paths ($(gb "$v2_bytes") GB)."
    echo
    echo "| tool | v1 wall s | stored after v1 | v2 wall s | stored after v2 | bytes added by v2 | added GB | added / v2 bytes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for v in "${variants[@]}"; do
        echo "| $(label "$v") | $(fmt '%.2f' "${R[$v.b.v1_wall]}") | ${R[$v.b.after_v1]} | $(fmt '%.2f' "${R[$v.b.v2_wall]}") | ${R[$v.b.after_v2]} | ${R[$v.b.added]} | $(gb "${R[$v.b.added]}") | $(fmt '%.3f' "$(fdiv "${R[$v.b.added]}" "$v2_bytes")") |"
    done
    echo
    echo "## Ratios"
    echo
    echo "| metric | value | target | status |"
    echo "|---|---:|---|---|"
    echo "| nip MB/s / casync MB/s (a) | $(fmt '%.2f' "$thr_ratio") | >= $TARGET_THROUGHPUT_RATIO | $thr_status |"
    echo "| nip stored (du) / mksquashfs bytes ($sqfs_source) | $(fmt '%.3f' "$sq_ratio") | reference | $sq_status |"
    echo "| nip stored_bytes (stats) / mksquashfs bytes | $(fmt '%.3f' "$sq_ratio_stats") | reference | |"
    echo "| bytes added by v2: nip / casync (b) | $(fmt '%.3f' "$v2_ratio") | <= $TARGET_V2_RATIO | $v2_status |"
    if [[ ${#warnings[@]} -gt 0 ]]; then
        echo
        echo "Warnings:"
        printf -- '- %s\n' "${warnings[@]}"
    fi
    if [[ $smoke -eq 1 ]]; then
        echo
        echo "Smoke corpus (3 small packages): the figures only show that the script works, not how the tools compare."
    fi
} > "$md"

jstr() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/ }; s=${s//$'\n'/\\n}; printf '"%s"' "$s"; }
jnum() { if [[ -z ${1:-} ]]; then printf 'null'; else printf '%s' "$1"; fi; }
jarr() { local a=("$@") i; printf '['; for i in "${!a[@]}"; do [[ $i -gt 0 ]] && printf ', '; printf '%s' "${a[$i]}"; done; printf ']'; }
{
    printf '{\n'
    printf '  "date": %s,\n  "smoke": %s,\n  "commit": %s,\n' "$(jstr "$stamp")" "$([[ $smoke -eq 1 ]] && echo true || echo false)" "$(jstr "$commit")"
    printf '  "host": {"cores": %s, "cpu": %s, "kernel": %s, "loadavg_end": %s},\n' "$(nproc)" "$(jstr "$cpu")" "$(jstr "$(uname -r)")" "$(jstr "$load_end")"
    printf '  "corpus": {"dir": %s, "app_versions": %s, "v1_app_versions": %s, "v2_app_versions": %s, "files": %s, "bytes_over_paths": %s, "bytes_unique_inodes": %s, "v2_files": %s, "v2_bytes_over_paths": %s, "skipped": %s},\n' \
        "$(jstr "$corpus")" "${#list_all[@]}" "${#list_v1[@]}" "${#list_v2[@]}" "$c_files" "$c_bytes" "$c_inode_bytes" "$v2_files" "$v2_bytes" "$(jstr "$skipped")"
    printf '  "cache": "warm", "prewarm_seconds": %s, "runs_a": %s,\n' "$(jarr "${prewarm_s[@]}")" "$runs"
    wj=(); for w in "${warnings[@]}"; do wj+=("$(jstr "$w")"); done
    printf '  "warnings": %s,\n' "$(jarr "${wj[@]}")"
    printf '  "throughput_basis": "bytes summed over file paths / wall seconds, MB = 1e6 bytes",\n'
    printf '  "stored_basis": "du -sb of the repository directory",\n'
    printf '  "tools": {\n'
    first=1
    for v in "${variants[@]}"; do
        [[ $first -eq 1 ]] || printf ',\n'
        first=0
        read -r -a walls <<< "${R[$v.a.walls]}"
        case "$v" in nip) ver=$v_nip ;; casync) ver=$v_casync ;; *) ver=$v_borg ;; esac
        printf '    %s: {"version": %s, "command": %s,\n' "$(jstr "$v")" "$(jstr "$ver")" "$(jstr "$(cat "$logs/$v-a-run1.cmd")")"
        printf '      "a": {"wall_s": %s, "walls_s": %s, "mb_per_s": %s, "max_rss_kb": %s, "user_s": %s, "sys_s": %s, "stored_bytes_du": %s' \
            "$(jnum "${R[$v.a.wall]}")" "$(jarr "${walls[@]}")" "$(jnum "${R[$v.a.mbps]}")" "$(jnum "${R[$v.a.rss_kb]}")" "$(jnum "${R[$v.a.user]}")" "$(jnum "${R[$v.a.sys]}")" "$(jnum "${R[$v.a.stored]}")"
        if [[ $v == nip ]]; then
            printf ', "stats": %s' "$(tr -d '\n' < "$logs/nip-a-stats.json")"
        fi
        printf '},\n'
        printf '      "b": {"v1_wall_s": %s, "v2_wall_s": %s, "stored_before": %s, "stored_after_v1": %s, "stored_after_v2": %s, "added_by_v2": %s' \
            "$(jnum "${R[$v.b.v1_wall]}")" "$(jnum "${R[$v.b.v2_wall]}")" "$(jnum "${R[$v.b.before]}")" "$(jnum "${R[$v.b.after_v1]}")" "$(jnum "${R[$v.b.after_v2]}")" "$(jnum "${R[$v.b.added]}")"
        if [[ $v == nip ]]; then
            printf ', "stats": %s' "$(tr -d '\n' < "$logs/nip-b-stats.json")"
        fi
        printf '}}'
    done
    printf '\n  },\n'
    printf '  "mksquashfs": {"bytes": %s, "source": %s, "wall_s": %s, "max_rss_kb": %s},\n' "$sqfs_bytes" "$(jstr "$sqfs_source")" "$(jnum "$sqfs_wall")" "$(jnum "$sqfs_rss")"
    printf '  "ratios": {\n'
    printf '    "throughput_nip_over_casync": {"value": %s, "target_min": %s, "status": %s},\n' "$(jnum "$thr_ratio")" "$TARGET_THROUGHPUT_RATIO" "$(jstr "$thr_status")"
    printf '    "stored_nip_du_over_mksquashfs": {"value": %s, "status": %s},\n' "$(jnum "$sq_ratio")" "$(jstr "$sq_status")"
    printf '    "stored_nip_stats_over_mksquashfs": {"value": %s},\n' "$(jnum "$sq_ratio_stats")"
    printf '    "v2_added_nip_over_casync": {"value": %s, "target_max": %s, "status": %s}\n' "$(jnum "$v2_ratio")" "$TARGET_V2_RATIO" "$(jstr "$v2_status")"
    printf '  }\n}\n'
} > "$json"

cat "$md"
log "report: $md"
log "json:   $json"

if [[ $check -eq 1 && $smoke -eq 0 ]] && [[ $thr_status == MISS || $v2_status == MISS ]]; then
    log "target missed"
    exit 3
fi
