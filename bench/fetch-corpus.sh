#!/usr/bin/env bash
# Fetch and unpack the pinned benchmark corpus (see bench/README.md).
#
#   bench/fetch-corpus.sh [--lock FILE]
#
# Environment:
#   NEXUS_BENCH_DIR   output root (default /var/tmp/nexus-bench)
#
# Layout produced under $NEXUS_BENCH_DIR:
#   debs/                     downloaded .deb files (kept; reused on re-runs)
#   corpus/<App>/<Version>/   each package unpacked with `dpkg-deb -x`
#                             (App = APP-DIR-NAME if given, else NAME;
#                              Version = version without its epoch)
#   corpus-all.list           every App/Version dir (relative to corpus/)
#   corpus-v1.list            every App/Version dir except the newer version
#                             of apps present in two versions
#   corpus-v2.list            the newer version of those apps
#   skipped.txt               NAME=VERSION lines that could not be fetched
#   corpus-totals.txt         file count and byte totals
#
# Idempotent: already downloaded .debs and already unpacked dirs are skipped.
# Needs root (apt-get, and dpkg-deb -x keeps owners/modes as shipped).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lock="$here/packages.lock"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --lock) lock=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fetch-corpus.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

bench_dir=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
debs="$bench_dir/debs"
corpus="$bench_dir/corpus"
mkdir -p "$debs" "$corpus"

for tool in apt-get apt-cache dpkg-deb dpkg; do
    command -v "$tool" >/dev/null || { echo "fetch-corpus.sh: $tool not found" >&2; exit 1; }
done

tmp=$(mktemp -d "$bench_dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# apt-get download drops privileges to _apt while downloading; give it a
# directory it may write to, and fall back to root if that user is missing.
apt_opts=()
if id _apt >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    chown _apt "$tmp"
else
    apt_opts=(-o APT::Sandbox::User=root)
fi

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---- parse the lock file: name version app ---------------------------------
entries="$tmp/entries"
awk '
    { sub(/#.*/, "") }
    NF == 0 { next }
    {
        n = index($1, "=")
        if (n == 0) { printf "bad lock line %d: %s\n", NR, $0 > "/dev/stderr"; exit 1 }
        name = substr($1, 1, n - 1); ver = substr($1, n + 1)
        app = (NF >= 2) ? $2 : name
        print name, ver, app
    }' "$lock" > "$entries"
total=$(wc -l < "$entries")
log "lock: $lock ($total packages)"

strip_epoch() { printf '%s\n' "${1#*:}"; }

# Refuse two entries that would land in the same App/Version directory.
dups=$(while read -r name ver app; do
           printf '%s/%s\n' "$app" "$(strip_epoch "$ver")"
       done < "$entries" | sort | uniq -d)
if [[ -n $dups ]]; then
    echo "fetch-corpus.sh: several lock entries map to the same dir:" >&2
    printf '%s\n' "$dups" >&2
    exit 1
fi

# ---- download ----------------------------------------------------------------
# apt-get download names files NAME_VERSION_ARCH.deb with ':' escaped as %3a.
deb_for() {   # name version -> path of the downloaded deb, or nothing
    local f
    for f in "$debs/${1}_${2//:/%3a}_"*.deb; do
        [[ -e $f ]] && { printf '%s\n' "$f"; return 0; }
    done
    return 0
}

updated=0
apt_update_if_needed() {
    if [[ $updated -eq 0 ]]; then
        log "running apt-get update"
        apt-get update -qq || log "WARNING: apt-get update failed"
        updated=1
    fi
}
# Never updated (e.g. fresh container): nothing to resolve versions against.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt_update_if_needed
fi

download() {   # name version -> 0 if the deb is now in $debs
    local name=$1 ver=$2 f
    rm -f "$tmp"/*.deb
    if (cd "$tmp" && apt-get download -q "${apt_opts[@]}" "$name=$ver") >"$tmp/dl.log" 2>&1; then
        for f in "$tmp"/*.deb; do
            [[ -e $f ]] && mv "$f" "$debs/"
        done
        [[ -n $(deb_for "$name" "$ver") ]] && return 0
    fi
    sed 's/^/    /' "$tmp/dl.log"
    return 1
}

failed="$tmp/failed"
: > "$failed"
n=0 fetched=0
while read -r name ver app; do
    n=$((n + 1))
    [[ -n $(deb_for "$name" "$ver") ]] && continue
    log "[$n/$total] download $name=$ver"
    if download "$name" "$ver"; then
        fetched=$((fetched + 1))
    else
        printf '%s %s %s\n' "$name" "$ver" "$app" >> "$failed"
    fi
done < "$entries"

# Retry failures once after refreshing the package lists.
skipped_list="$bench_dir/skipped.txt"
: > "$skipped_list.new"
if [[ -s $failed ]]; then
    apt_update_if_needed
    while read -r name ver app; do
        log "retry download $name=$ver"
        if download "$name" "$ver"; then
            fetched=$((fetched + 1))
        else
            printf '%s=%s\n' "$name" "$ver" >> "$skipped_list.new"
        fi
    done < "$failed"
fi
mv "$skipped_list.new" "$skipped_list"
log "downloaded $fetched new package(s)"

# ---- unpack ------------------------------------------------------------------
unpacked=0
while read -r name ver app; do
    deb=$(deb_for "$name" "$ver")
    [[ -n $deb ]] || continue
    dir="$corpus/$app/$(strip_epoch "$ver")"
    [[ -d $dir ]] && continue
    log "unpack $name=$ver -> ${dir#"$bench_dir"/}"
    mkdir -p "$corpus/$app"
    rm -rf "$dir.partial"
    mkdir "$dir.partial"
    dpkg-deb -x "$deb" "$dir.partial"
    mv "$dir.partial" "$dir"
    unpacked=$((unpacked + 1))
done < "$entries"
log "unpacked $unpacked new package(s)"

# ---- v1 / v2 lists -----------------------------------------------------------
# For every app, the newest present version (dpkg ordering) goes to v2 when
# the app has two or more present versions; every other dir goes to v1.
: > "$tmp/all"
while read -r name ver app; do
    [[ -d "$corpus/$app/$(strip_epoch "$ver")" ]] || continue
    printf '%s %s\n' "$app" "$ver" >> "$tmp/all"
done < "$entries"

: > "$tmp/v1"; : > "$tmp/v2"
while read -r app; do
    mapfile -t vers < <(awk -v a="$app" '$1 == a { print $2 }' "$tmp/all")
    newest=${vers[0]}
    for v in "${vers[@]:1}"; do
        if dpkg --compare-versions "$v" gt "$newest"; then newest=$v; fi
    done
    for v in "${vers[@]}"; do
        if [[ ${#vers[@]} -ge 2 && $v == "$newest" ]]; then
            printf '%s/%s\n' "$app" "$(strip_epoch "$v")" >> "$tmp/v2"
        else
            printf '%s/%s\n' "$app" "$(strip_epoch "$v")" >> "$tmp/v1"
        fi
    done
done < <(awk '{ print $1 }' "$tmp/all" | awk '!seen[$0]++')

cat "$tmp/v1" "$tmp/v2" | sort > "$bench_dir/corpus-all.list"
cp "$tmp/v1" "$bench_dir/corpus-v1.list"
cp "$tmp/v2" "$bench_dir/corpus-v2.list"

# ---- totals ------------------------------------------------------------------
apps=$(find "$corpus" -mindepth 1 -maxdepth 1 -type d | wc -l)
appvers=$(find "$corpus" -mindepth 2 -maxdepth 2 -type d ! -name '*.partial' | wc -l)
read -r files path_bytes < <(find "$corpus" -type f -printf '%s\n' |
    awk '{ s += $1; n++ } END { printf "%.0f %.0f\n", n, s }')
inode_bytes=$(find "$corpus" -type f -printf '%i %s\n' |
    awk '!seen[$1]++ { s += $2 } END { printf "%.0f\n", s }')
symlinks=$(find "$corpus" -type l | wc -l)
dirs=$(find "$corpus" -type d | wc -l)
v2_bytes=0
if [[ -s $bench_dir/corpus-v2.list ]]; then
    v2_bytes=$(cd "$corpus" && xargs -d '\n' -a "$bench_dir/corpus-v2.list" \
        sh -c 'find "$@" -type f -printf "%s\n"' sh | awk '{ s += $1 } END { printf "%.0f\n", s }')
fi
deb_bytes=$(find "$debs" -maxdepth 1 -name '*.deb' -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f\n", s }')

{
    echo "lock:                    $lock"
    echo "packages in lock:        $total"
    echo "packages skipped:        $(wc -l < "$skipped_list")"
    echo "apps:                    $apps"
    echo "app-versions:            $appvers"
    echo "  in corpus-v1.list:     $(wc -l < "$bench_dir/corpus-v1.list")"
    echo "  in corpus-v2.list:     $(wc -l < "$bench_dir/corpus-v2.list")"
    echo "regular files (paths):   $files"
    echo "symlinks:                $symlinks"
    echo "directories:             $dirs"
    echo "bytes summed over paths: $path_bytes ($(awk -v b="$path_bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }'))"
    echo "bytes of unique inodes:  $inode_bytes ($(awk -v b="$inode_bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }'))"
    echo "bytes in v2 dirs:        $v2_bytes"
    echo ".deb bytes downloaded:   $deb_bytes"
    echo "(README reference: 212 apps, 233 app-versions, 98,351 files, 3.62 GB over paths, 3.30 GB unique inodes)"
} | tee "$bench_dir/corpus-totals.txt"

if [[ -s $skipped_list ]]; then
    echo "SKIPPED (could not be fetched; listed in $skipped_list):"
    sed 's/^/  /' "$skipped_list"
fi
log "done: corpus in $corpus"
