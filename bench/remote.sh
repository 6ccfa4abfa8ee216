#!/usr/bin/env bash
# Remote benchmark: publishing the corpus to SeaweedFS (S3) and a fresh
# subscriber's first run of a large program from a lazily fetched mount.
#
#   bench/remote.sh [options]
#
# Options:
#   --smoke          tiny corpus (hello, jq, libonig5), debug-friendly,
#                    seconds; runs every step once, throttled included
#   --store DIR      publish this existing store (default: a fresh one made
#                    with `nip add` of corpus-v1.list)
#   --runs N         fresh subscribers per measurement, median (default 1)
#   --keep           keep the work dir
#   --out DIR        where to write remote-<date>.{md,json} (default
#                    bench/out; --smoke writes nothing there)
#
# Environment:
#   NEXUS_BENCH_DIR  corpus made by bench/fetch-corpus.sh (default
#                    /var/tmp/nexus-bench)
#   NIP, NEXUS       binaries (default <repo>/target/release/{nip,nexus})
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
#                    default: the identity scripts/setup.sh gives the
#                    SeaweedFS it starts on 127.0.0.1:8333 when none runs
#
# Measured:
#   1. publish: `nip publish` of the store's live generation (MB/s of pack
#      bytes uploaded) against `aws s3 sync` of the store's packs/ (the
#      same kind of bytes, plain upload, the AWS CLI's 10 requests at once)
#   2. a fresh subscriber, lazy: `nip pull`, mount, the program's first
#      successful run (java -version from openjdk-17-jre-headless; hello
#      with --smoke): time from the pull to the run's end, and bytes
#      fetched (metadata + blocks) against the pack bytes the generation
#      references
#   3. a fresh subscriber, eager: the same after `nip prefetch` of every
#      package (pulling everything first)
#   4. a local store: the program's first run on a fresh mount of the
#      publisher's own store (median of 3 mounts), and on a warm mount
#      (median of 3 runs after one unmeasured run)
#   5. 2 and 3 again through bench/throttle.py (100 Mbit/s, 20 ms added to
#      every answer): this kernel has no netem qdisc (`tc qdisc add dev lo
#      root netem` answers "Specified qdisc kind is unknown"), so a
#      userspace proxy in front of the S3 port does what `tc netem` would,
#      for the S3 traffic only
# Targets (issue 15): a first run transfers < 10% of the package bytes and
# starts within 2x of a warm local store. Runs as root (mounts).
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bench_name=remote.sh
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
# shellcheck source=scripts/setup.sh
. "$root/scripts/setup.sh"

smoke=0 runs=1 keep=0 store_arg=""
out_dir="$here/out"
while [[ $# -gt 0 ]]; do
    case $1 in
        --smoke) smoke=1; shift ;;
        --store) store_arg=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --out) out_dir=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts)"

NIP=${NIP:-$root/target/release/nip}
NEXUS=${NEXUS:-$root/target/release/nexus}
[[ -x $NIP && -x $NEXUS ]] || die "build first: cargo build --release (or set NIP and NEXUS)"
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-$NEXUS_S3_ACCESS_KEY}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-$NEXUS_S3_SECRET_KEY}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export NEXUS_CONFIG=/dev/null
endpoint=http://127.0.0.1:8333

work=$(mktemp -d /var/tmp/nexus-remote-bench.XXXXXX)
# Logs beside the stores, not above them: a confined daemon may write
# beneath its log's directory, so it refuses one that holds its store.
mkdir -p "$work/logs"
mounts=() pids=()
cleanup() {
    local m p
    for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n ${NEXUS_WEED_PID:-} ]]; then
        kill "$NEXUS_WEED_PID" 2>/dev/null || true
        wait "$NEXUS_WEED_PID" 2>/dev/null || true
        # Its data holds two copies of the store's packs: gigabytes.
        [[ -z ${NEXUS_WEED_DIR:-} ]] || rm -rf "$NEXUS_WEED_DIR"
    fi
    if [[ $keep -eq 0 ]]; then rm -rf "$work"; else log "kept $work"; fi
}
trap cleanup EXIT

ensure_remote_servers >&2
start_seaweedfs
bucket="nexus-bench/run-$(date +%s)-$$"

# The corpus and the program.
if [[ $smoke -eq 1 ]]; then
    corpus_dir="$work/corpus"
    smoke_corpus "$corpus_dir" "$work/fetch.log"
    list="$corpus_dir/corpus-all.list"
    program=(hello/Current/usr/bin/hello)
    program_name="hello"
else
    corpus_dir=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
    list="$corpus_dir/corpus-v1.list"
    [[ -s $list ]] || die "no corpus in $corpus_dir: run bench/fetch-corpus.sh"
    program=(openjdk-17-jre-headless/Current/usr/lib/jvm/java-17-openjdk-amd64/bin/java -version)
    program_name="java -version"
fi

# 0. The publisher's store.
pub="$work/publisher"
if [[ -n $store_arg ]]; then
    pub=$store_arg
else
    log "publisher store: nip add of $(wc -l < "$list") packages"
    "$NIP" --store "$pub" init > /dev/null
    mapfile -t dirs < <(sed "s|^|$corpus_dir/corpus/|" "$list")
    "$NIP" --store "$pub" add "${dirs[@]}" > /dev/null
fi
keys="$work/keys"
"$NIP" --store "$pub" --keys "$keys" key generate bench > /dev/null
pubkey=$(ls "$keys"/public/*.pub)
remote="bench$$"
"$NIP" --store "$pub" remote add "$remote" "s3://$bucket/fleet" --endpoint "$endpoint" > /dev/null

# 1. Publish throughput, against a plain upload of the store's packs.
log "publishing"
t0=$(us_now)
"$NIP" --store "$pub" --keys "$keys" publish "$remote" --json > "$work/publish.json"
t1=$(us_now)
publish_s=$(fdiv $((t1 - t0)) 1000000)
published_bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$work/publish.json")
publish_mbs=$(fdiv "$(fdiv "$published_bytes" 1048576)" "$publish_s")
sync_s="" sync_mbs="" sync_bytes=$(du -sb "$pub/packs" | cut -f1)
if command -v aws > /dev/null; then
    # A bucket of its own: removing it (SeaweedFS drops the bucket's
    # volumes) gives the space back at once, which deleting the objects
    # does not (deletes only mark needles until a vacuum).
    sync_bucket="nexus-bench-sync-$(date +%s)-$$"
    log "aws s3 sync of packs/ ($sync_bytes bytes)"
    aws --endpoint-url "$endpoint" s3 mb "s3://$sync_bucket" > "$work/sync.log" 2>&1
    t0=$(us_now)
    aws --endpoint-url "$endpoint" s3 sync --only-show-errors "$pub/packs" "s3://$sync_bucket/sync/" >> "$work/sync.log" 2>&1
    t1=$(us_now)
    aws --endpoint-url "$endpoint" s3 rb --force "s3://$sync_bucket" >> "$work/sync.log" 2>&1 ||
        log "could not remove bucket $sync_bucket (see $work/sync.log)"
    sync_s=$(fdiv $((t1 - t0)) 1000000)
    sync_mbs=$(fdiv "$(fdiv "$sync_bytes" 1048576)" "$sync_s")
else
    log "no aws CLI (pip install awscli): the upload baseline is skipped"
fi

# A fresh subscriber: pull (through ENDPOINT), mount, optionally prefetch
# everything, run the program. Sets sub_s (pull to the run's end), sub_bytes
# (fetched), sub_run (the run alone).
subscriber() {
    local label=$1 via=$2 eager=$3
    local s="$work/sub-$label" mnt="$work/mnt-$label" k="$work/keys-$label"
    "$NIP" --store "$s" init > /dev/null
    "$NIP" --store "$s" --keys "$k" remote add origin "s3://$bucket/fleet" --endpoint "$via" --key "$pubkey" --domain bench > /dev/null
    local t0 t1 t2 meta cached
    t0=$(us_now)
    "$NIP" --store "$s" --keys "$k" pull origin --json > "$work/pull-$label.json"
    if [[ $eager -eq 1 ]]; then
        mapfile -t apps < <("$NIP" --store "$s" list --json | python3 -c 'import json,sys; print("\n".join(sorted({p["name"] for p in json.load(sys.stdin)})))')
        "$NIP" --store "$s" prefetch "${apps[@]}" > /dev/null
    fi
    mkdir -p "$mnt"
    "$NEXUS" --store "$s" mount "$mnt" --log-file "$work/logs/mount-$label.log" > /dev/null
    mounts+=("$mnt")
    t1=$(us_now)
    (cd "$mnt" && "./${program[0]}" "${program[@]:1}") > "$work/run-$label.out" 2>&1 ||
        { cat "$work/run-$label.out" "$work/logs/mount-$label.log" >&2; die "$program_name failed from the $label mount"; }
    t2=$(us_now)
    umount "$mnt"
    meta=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fetched_bytes"])' "$work/pull-$label.json")
    cached=$("$NIP" --store "$s" remote cache --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
    sub_s=$(fdiv $((t2 - t0)) 1000000) sub_bytes=$((meta + cached)) sub_run=$(fdiv $((t2 - t1)) 1000000)
}

# The pack bytes the generation references (what "pulling everything"
# transfers).
referenced=""

measure() {   # measure LABEL VIA EAGER: sets m_s, m_bytes, m_run (medians)
    local label=$1 via=$2 eager=$3 r times=() run=()
    for r in $(seq 1 "$runs"); do
        subscriber "$label-$r" "$via" "$eager"
        times+=("$sub_s") run+=("$sub_run") m_bytes=$sub_bytes
        if [[ -z $referenced ]]; then
            referenced=$("$NIP" --store "$work/sub-$label-$r" remote list --json |
                python3 -c 'import json,sys; print(sum(r["pack_bytes"] for r in json.load(sys.stdin)["remotes"]))')
        fi
        # An eager subscriber holds every pack: keep the disk for the next.
        [[ $keep -eq 1 ]] || rm -rf "$work/sub-$label-$r"
    done
    m_s=$(median "${times[@]}") m_run=$(median "${run[@]}")
}

log "fresh subscriber, lazy"
measure lazy "$endpoint" 0
lazy_s=$m_s lazy_bytes=$m_bytes lazy_run=$m_run
log "fresh subscriber, everything first"
measure eager "$endpoint" 1
eager_s=$m_s eager_bytes=$m_bytes eager_run=$m_run

log "local store: fresh mounts, then a warm one"
lmnt="$work/mnt-local"
mkdir -p "$lmnt"
# The first run on a fresh mount of the publisher's own store (the
# daemon's and the kernel's caches empty; the page cache of packs/ warm
# after the publish): the other anchor besides the warm mount.
fresh_times=()
for r in $(seq 1 3); do
    "$NEXUS" --store "$pub" mount "$lmnt" --log-file "$work/logs/mount-local.log" > /dev/null
    t0=$(us_now)
    (cd "$lmnt" && "./${program[0]}" "${program[@]:1}") > /dev/null 2>&1
    t1=$(us_now)
    fresh_times+=("$(fdiv $((t1 - t0)) 1000000)")
    umount "$lmnt"
done
local_fresh_s=$(median "${fresh_times[@]}")
"$NEXUS" --store "$pub" mount "$lmnt" --log-file "$work/logs/mount-local.log" > /dev/null
mounts+=("$lmnt")
(cd "$lmnt" && "./${program[0]}" "${program[@]:1}") > /dev/null 2>&1
local_times=()
for r in $(seq 1 3); do
    t0=$(us_now)
    (cd "$lmnt" && "./${program[0]}" "${program[@]:1}") > /dev/null 2>&1
    t1=$(us_now)
    local_times+=("$(fdiv $((t1 - t0)) 1000000)")
done
local_s=$(median "${local_times[@]}")
umount "$lmnt"

log "throttled: 100 Mbit/s, 20 ms"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 "$here/throttle.py" "$port" 8333 20 100 > "$work/throttle.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
measure tlazy "http://127.0.0.1:$port" 0
tlazy_s=$m_s tlazy_bytes=$m_bytes tlazy_run=$m_run
measure teager "http://127.0.0.1:$port" 1
teager_s=$m_s teager_bytes=$m_bytes teager_run=$m_run

ratio=$(fdiv "$lazy_bytes" "$referenced")
slow=$(fdiv "$lazy_run" "$local_s")
slow_total=$(fdiv "$lazy_s" "$local_s")
fresh_slow=$(fdiv "$lazy_run" "$local_fresh_s")
fresh_slow_total=$(fdiv "$lazy_s" "$local_fresh_s")
tslow_total=$(fdiv "$tlazy_s" "$local_s")
report=$(cat <<EOF
## Remote: publish to SeaweedFS, a fresh subscriber's first run ($(date +%F))

Corpus: $(wc -l < "$list") packages; program: \`$program_name\`; runs: $runs.

| step | seconds | bytes | MB/s |
|---|---:|---:|---:|
| \`nip publish\` (pack bytes uploaded) | $(fmt %.2f "$publish_s") | $published_bytes | $(fmt %.1f "$publish_mbs") |
| \`aws s3 sync\` of packs/ | $(fmt %.2f "$sync_s") | $sync_bytes | $(fmt %.1f "$sync_mbs") |

| fresh subscriber | pull → first run (s) | of which the run (s) | bytes fetched | of referenced |
|---|---:|---:|---:|---:|
| lazy | $(fmt %.2f "$lazy_s") | $(fmt %.3f "$lazy_run") | $lazy_bytes | $(fmt %.1f%% "$(fdiv "$((lazy_bytes * 100))" "$referenced")") |
| everything first | $(fmt %.2f "$eager_s") | $(fmt %.3f "$eager_run") | $eager_bytes | $(fmt %.1f%% "$(fdiv "$((eager_bytes * 100))" "$referenced")") |
| lazy, 100 Mbit/s + 20 ms | $(fmt %.2f "$tlazy_s") | $(fmt %.3f "$tlazy_run") | $tlazy_bytes | $(fmt %.1f%% "$(fdiv "$((tlazy_bytes * 100))" "$referenced")") |
| everything first, 100 Mbit/s + 20 ms | $(fmt %.2f "$teager_s") | $(fmt %.3f "$teager_run") | $teager_bytes | |
| warm local store (run only) | | $(fmt %.3f "$local_s") | | |
| freshly mounted local store (first run only) | | $(fmt %.3f "$local_fresh_s") | | |

Referenced pack bytes: $referenced. Targets: first run < 10% of them:
$(status_le "$ratio" 0.10) ($(fmt %.3f "$ratio")); the lazy run within 2x of a warm local
store: $(status_le "$slow" 2) ($(fmt %.2f "$slow")x the run alone; pull → first run's
end: $(status_le "$slow_total" 2), $(fmt %.2f "$slow_total")x, throttled $(status_le "$tslow_total" 2), $(fmt %.2f "$tslow_total")x).
Against a freshly mounted local store's first run: the run alone $(status_le "$fresh_slow" 2)
($(fmt %.2f "$fresh_slow")x), pull → first run's end $(status_le "$fresh_slow_total" 2) ($(fmt %.2f "$fresh_slow_total")x).
EOF
)
printf '%s\n' "$report"
if [[ $smoke -eq 0 ]]; then
    mkdir -p "$out_dir"
    stamp=$(date +%Y%m%d-%H%M%S)
    printf '%s\n' "$report" > "$out_dir/remote-$stamp.md"
    printf '{"publish_s":%s,"published_bytes":%s,"sync_s":%s,"sync_bytes":%s,"lazy_s":%s,"lazy_run_s":%s,"lazy_bytes":%s,"eager_s":%s,"eager_bytes":%s,"throttled_lazy_s":%s,"throttled_lazy_bytes":%s,"throttled_eager_s":%s,"local_run_s":%s,"local_fresh_run_s":%s,"referenced_bytes":%s,"eager_run_s":%s,"throttled_lazy_run_s":%s,"throttled_eager_bytes":%s,"runs":%s}\n' \
        "$(jnum "$publish_s")" "$published_bytes" "$(jnum "$sync_s")" "$sync_bytes" "$(jnum "$lazy_s")" \
        "$(jnum "$lazy_run")" "$lazy_bytes" "$(jnum "$eager_s")" "$eager_bytes" "$(jnum "$tlazy_s")" \
        "$tlazy_bytes" "$(jnum "$teager_s")" "$(jnum "$local_s")" "$(jnum "$local_fresh_s")" "$referenced" "$(jnum "$eager_run")" \
        "$(jnum "$tlazy_run")" "$teager_bytes" "$runs" > "$out_dir/remote-$stamp.json"
    log "wrote $out_dir/remote-$stamp.md"
fi
