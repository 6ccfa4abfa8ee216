#!/usr/bin/env bash
# Image benchmark (issue 5): `nexus snapshot` against `mksquashfs -comp
# zstd` of the same tree, and `nexus switch` latency with 1,000 and with
# 100,000 files installed, measured in the same run.
#
#   bench/images.sh [options]
#
# Options:
#   --smoke           a tiny corpus (hello, jq, libonig5) and 200/2,000-file
#                     switch stores; checks the script works (< 1 min)
#   --store DIR       snapshot this existing store, which must hold the
#                     corpus (default: build one with nip add)
#   --switches N      switches timed per store, median reported (default 20)
#   --switch-only     measure only the switch latency (part 2)
#   --keep            keep the work dir
#   --out DIR         where to write images-<date>.{md,json} (default bench/out)
#
# Environment:
#   NEXUS_BENCH_DIR   corpus root made by bench/fetch-corpus.sh
#                     (default /var/tmp/nexus-bench)
#   NIP, NEXUS        binaries (default: <repo>/target/release/{nip,nexus})
#
# Measured:
#   1. `nexus snapshot` of the live generation (the whole corpus): wall
#      time and image size; `mksquashfs CORPUS -comp zstd` (all cores):
#      wall time and image size. Targets: image <= squashfs image,
#      snapshot >= 10x faster.
#   2. `nexus switch GEN` in a store with 1,000 files and in one with
#      100,000 (each with two generations to switch between): the time the
#      switch itself takes as the command reports it (catalog open and the
#      one durable transaction), the command's wall time, and that of
#      `nexus --version` (process start) for reference. Target: switch
#      < 10 ms, independent of the store size.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bench_name=images.sh
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

TARGET_SNAPSHOT_SPEEDUP=10
TARGET_SWITCH_MS=10

smoke=0 keep=0 switches=20 store_arg="" switch_only=0
out_dir="$here/out"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=1; shift ;;
        --store) store_arg=$2; shift 2 ;;
        --switches) switches=$2; shift 2 ;;
        --switch-only) switch_only=1; shift ;;
        --keep) keep=1; shift ;;
        --out) out_dir=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
nip=$(realpath -e "${NIP:-$root/target/release/nip}" 2>/dev/null) || die "no nip binary: cargo build --release (or set NIP)"
nexus=$(realpath -e "${NEXUS:-$root/target/release/nexus}" 2>/dev/null) || die "no nexus binary: cargo build --release (or set NEXUS)"
command -v mksquashfs >/dev/null || die "mksquashfs is not installed (apt-get install squashfs-tools)"

work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-images.XXXXXX")
cleanup() { if [[ $keep -eq 1 ]]; then log "work dir kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
logs="$work/logs"
mkdir -p "$logs"

if [[ $smoke -eq 1 ]]; then
    bench_dir="$work/smoke"
    smoke_corpus "$bench_dir" "$logs/fetch-smoke.log"
    sizes=(200 2000)
else
    bench_dir=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
    sizes=(1000 100000)
fi
corpus="$bench_dir/corpus"
[[ -s $bench_dir/corpus-all.list ]] || die "$bench_dir/corpus-all.list missing: run bench/fetch-corpus.sh first"
mapfile -t list_all < "$bench_dir/corpus-all.list"

# ---- 1. snapshot vs mksquashfs -----------------------------------------------
# Part 1; sets snap_s, snap_bytes, sqfs_s, sqfs_bytes.
snapshot_vs_mksquashfs() {
    if [[ -n $store_arg ]]; then
        store=$store_arg
    else
        store="$work/store"
        log "building the store from ${#list_all[@]} app-versions"
        "$nip" --store "$store" init > /dev/null
        (cd "$corpus" && "$nip" --store "$store" add "${list_all[@]}") > "$logs/add.log" 2>&1 ||
            { tail "$logs/add.log" >&2; die "nip add failed"; }
    fi
    keys="$work/keys"
    "$nexus" --store "$store" --keys "$keys" key generate bench > /dev/null
    image="$work/system.img"
    log "nexus snapshot"
    t0=$(us_now)
    # A fixed creation time (reproducible bytes) lies in the past: the
    # image must not expire.
    SOURCE_DATE_EPOCH=1700000000 "$nexus" --store "$store" --keys "$keys" snapshot --key bench --counter 1 --expires-in never -o "$image" > "$logs/snapshot.log" 2>&1 ||
        { cat "$logs/snapshot.log" >&2; die "nexus snapshot failed"; }
    snap_s=$(fdiv $(( $(us_now) - t0 )) 1e6)
    snap_bytes=$(stat -c %s "$image")
    "$nexus" --store "$store" --keys "$keys" verify "$image" > "$logs/verify.log" 2>&1 ||
        { cat "$logs/verify.log" >&2; die "the image does not verify"; }

    log "mksquashfs -comp zstd"
    sqfs="$work/corpus.sqfs"
    t0=$(us_now)
    mksquashfs "$corpus" "$sqfs" -comp zstd -noappend -quiet -no-progress -processors "$(nproc)" > "$logs/mksquashfs.log" 2>&1 ||
        { tail "$logs/mksquashfs.log" >&2; die "mksquashfs failed"; }
    sqfs_s=$(fdiv $(( $(us_now) - t0 )) 1e6)
    sqfs_bytes=$(stat -c %s "$sqfs")
    rm -f "$sqfs"
}

snap_s="" snap_bytes="" sqfs_s="" sqfs_bytes=""
if [[ $switch_only -eq 1 ]]; then
    log "--switch-only: no snapshot"
else
    snapshot_vs_mksquashfs
fi

# ---- 2. switch latency ---------------------------------------------------------
declare -A switch_ms start_ms commit_ms
for n in "${sizes[@]}"; do
    s="$work/switch-$n"
    tree="$work/tree-$n"
    log "switch store with $n files"
    mkdir -p "$tree/files"
    awk -v n="$n" -v d="$tree/files" 'BEGIN { for (i = 0; i < n; i++) { f = sprintf("%s/f%06d", d, i); print i > f; close(f) } }'
    "$nip" --store "$s" init > /dev/null
    "$nip" --store "$s" add "$tree" --name many --version 1 > /dev/null
    mkdir -p "$work/small-$n/bin" && echo v1 > "$work/small-$n/bin/x"
    "$nip" --store "$s" add "$work/small-$n" --name small --version 1 > /dev/null
    echo v2 > "$work/small-$n/bin/x"
    "$nip" --store "$s" add "$work/small-$n" --name small --version 2 > /dev/null
    times=() starts=() inner=()
    for ((i = 0; i < switches; i++)); do
        g=$(( i % 2 == 0 ? 2 : 3 ))
        t0=$(us_now)
        said=$("$nexus" --store "$s" switch "$g")
        times+=("$(fdiv $(( $(us_now) - t0 )) 1000)")
        # "generation N: switch to G (X ms)": the catalog open and commit.
        ms=${said##*(}
        inner+=("${ms%% ms)*}")
        t0=$(us_now)
        "$nexus" --version > /dev/null
        starts+=("$(fdiv $(( $(us_now) - t0 )) 1000)")
    done
    switch_ms[$n]=$(median "${times[@]}")
    commit_ms[$n]=$(median "${inner[@]}")
    start_ms[$n]=$(median "${starts[@]}")
    rm -rf "$tree"
done

# ---- report --------------------------------------------------------------------
speedup=$(fdiv "$sqfs_s" "$snap_s")
size_ratio=$(fdiv "$snap_bytes" "$sqfs_bytes")
small=${sizes[0]} large=${sizes[1]}
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$out_dir"
tag=""
[[ $smoke -eq 1 ]] && tag="smoke-"
md="$out_dir/images-$tag$stamp.md"
{
    echo "# Image benchmark, $stamp"
    [[ $smoke -eq 1 ]] && echo && echo "Smoke run: tiny corpus; figures only show the script works."
    echo
    echo "Corpus: ${#list_all[@]} app-versions from $bench_dir; $(nproc) cores; commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')."
    echo
    echo "| measure | nexus | mksquashfs -comp zstd | ratio | target | status |"
    echo "|---|---:|---:|---:|---|---|"
    echo "| time, s | $(fmt '%.2f' "$snap_s") | $(fmt '%.2f' "$sqfs_s") | $(fmt '%.1f' "$speedup")x faster | >= ${TARGET_SNAPSHOT_SPEEDUP}x | $(status_ge "$speedup" "$TARGET_SNAPSHOT_SPEEDUP") |"
    echo "| image, bytes | ${snap_bytes:-n/a} | ${sqfs_bytes:-n/a} | $(fmt '%.3f' "$size_ratio") | <= 1 | $(status_le "$size_ratio" 1) |"
    echo
    echo "Switch: the catalog open and the one durable transaction, as \`nexus switch\` reports them; the whole command (process start included) and \`nexus --version\` for reference. Medians of $switches."
    echo
    echo "| files installed | switch, ms | whole command, ms | nexus --version, ms | target | status |"
    echo "|---:|---:|---:|---:|---|---|"
    for n in "${sizes[@]}"; do
        echo "| $n | $(fmt '%.2f' "${commit_ms[$n]}") | $(fmt '%.2f' "${switch_ms[$n]}") | $(fmt '%.2f' "${start_ms[$n]}") | < $TARGET_SWITCH_MS ms | $(status_le "${commit_ms[$n]}" "$TARGET_SWITCH_MS") |"
    done
} > "$md"
{
    printf '{"stamp": %s, "smoke": %s, "snapshot_s": %s, "snapshot_bytes": %s, "mksquashfs_s": %s, "mksquashfs_bytes": %s, ' \
        "$(jstr "$stamp")" "$smoke" "$(jnum "$snap_s")" "$(jnum "$snap_bytes")" "$(jnum "$sqfs_s")" "$(jnum "$sqfs_bytes")"
    printf '"switch_ms": {"%s": %s, "%s": %s}, "command_ms": {"%s": %s, "%s": %s}, "start_ms": {"%s": %s, "%s": %s}}\n' \
        "$small" "$(jnum "${commit_ms[$small]}")" "$large" "$(jnum "${commit_ms[$large]}")" \
        "$small" "$(jnum "${switch_ms[$small]}")" "$large" "$(jnum "${switch_ms[$large]}")" \
        "$small" "$(jnum "${start_ms[$small]}")" "$large" "$(jnum "${start_ms[$large]}")"
} > "${md%.md}.json"
cat "$md"
log "report: $md"
