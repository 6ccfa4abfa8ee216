#!/usr/bin/env bash
# virtio-fs benchmark: `nexus serve --virtio-fs` (the store) vs QEMU's own
# virtiofsd (/usr/lib/qemu/virtiofsd exporting the unpacked tree), measured
# inside the same kind of guest in the same run.
#
#   bench/virtiofs.sh [options]
#
# Options:
#   --smoke          tiny corpus (hello, busybox-static, jq unpacked) in a
#                    temp dir, debug-friendly (< 2 min); checks that both
#                    servers serve the same bytes
#   --runs N         guests booted per server, median reported (default 1)
#   --store DIR      serve this existing store, which must hold the corpus
#                    (default: a fresh one built with `nip add`)
#   --big APP/VER    the package read sequentially (default: the corpus's
#                    largest App/Version by bytes)
#   --list FILE      only these App/Version dirs of the corpus (one a line,
#                    as corpus-all.list), e.g. a subset small enough for
#                    virtiofsd's file descriptor limit
#   --no-drop        do not drop the host's page cache before each server
#                    (polite on a shared machine; "cold" is then the
#                    server's and the guest's caches only)
#   --keep           keep the work dir (store, consoles, logs)
#   --out DIR        where to write virtiofs-<date>.{md,json} (default:
#                    bench/out; --smoke writes nothing there)
#
# Environment:
#   NEXUS_BENCH_DIR  corpus root made by bench/fetch-corpus.sh (default
#                    /var/tmp/nexus-bench): corpus/App/Version trees
#   NIP, NEXUS       binaries (default: <repo>/target/release/{nip,nexus})
#   VIRTIOFSD        default /usr/lib/qemu/virtiofsd
#   NEXUS_TEST_CACHE where the guest kernel and busybox .debs are cached
#                    (default /var/tmp/nexus-test-debs, as the tests)
#
# Each guest (QEMU TCG, 1 vCPU, 512 MiB, Debian's cloud kernel, a busybox
# initramfs) mounts the device read-only at /mnt and runs, timing each step
# with /proc/uptime:
#   1. read the big package: every file, sorted, through `cat` into
#      `sha256sum`                                      — cold
#   2. `find /mnt` (every name in the view)            — cold
#   3. drop the guest's caches; both again              — warm (the server's
#      caches, not the guest's, are warm)
# Errors the guest sees (e.g. virtiofsd's EMFILE: it holds a host file
# descriptor per guest inode, so a tree with more inodes than its
# RLIMIT_NOFILE cannot be walked) are counted and reported with the first
# message; a step with errors has no valid time.
# Cold means: a fresh server (and, outside --smoke, the host's page cache
# dropped before it starts). The big package's sha256 must be the same from
# both servers. virtiofsd runs with its default cache=auto and with
# cache=always (the closest to nexus's lifetimes for immutable content).
# Runs as root (QEMU's shared memory, virtiofsd's sandbox, drop_caches).
# Timings are reported, never asserted; TCG makes absolute times large, the
# ratio is what to read.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

smoke=0 runs=1 keep=0 drop=1 store_arg="" big_arg="" list_arg=""
out_dir="$here/out"
while [[ $# -gt 0 ]]; do
    case $1 in
        --smoke) smoke=1; shift ;;
        --runs) runs=$2; shift 2 ;;
        --store) store_arg=$2; shift 2 ;;
        --big) big_arg=$2; shift 2 ;;
        --list) list_arg=$(realpath "$2"); shift 2 ;;
        --keep) keep=1; shift ;;
        --no-drop) drop=0; shift ;;
        --out) out_dir=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { echo "virtiofs.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (QEMU shared memory, virtiofsd, drop_caches)"
nip=${NIP:-$root/target/release/nip}
nexus=${NEXUS:-$root/target/release/nexus}
virtiofsd=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
for b in "$nip" "$nexus" "$virtiofsd"; do [[ -x $b ]] || die "$b is missing (cargo build --release; apt-get install qemu-system-x86)"; done
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"

work=$(mktemp -d "${TMPDIR:-/tmp}/nexus-virtiofs-bench.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $keep -eq 1 ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- guest kernel and busybox ---------------------------------------------
cache=${NEXUS_TEST_CACHE:-/var/tmp/nexus-test-debs}
mkdir -p "$cache/vm"
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
[[ -n $kernel_pkg ]] || die "apt-cache names no kernel for linux-image-cloud-amd64 (apt-get update?)"
fetch_unpacked() {   # PACKAGE -> prints the unpacked dir
    local pkg=$1 deb dir
    deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
    if [[ -z $deb ]]; then
        (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2)
        deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
    fi
    [[ -n $deb ]] || die "cannot fetch $pkg"
    dir="$cache/vm/$(basename "$deb" .deb)"
    if [[ ! -d $dir ]]; then
        dpkg-deb -x "$deb" "$dir.partial-$$"
        mv "$dir.partial-$$" "$dir" 2>/dev/null || rm -rf "$dir.partial-$$"
    fi
    echo "$dir"
}
kernel_dir=$(fetch_unpacked "$kernel_pkg")
busybox_dir=$(fetch_unpacked busybox-static)
kernel=$(find "$kernel_dir/boot" -name 'vmlinuz-*' | head -n1)
busybox=$busybox_dir/bin/busybox
[[ -x $busybox ]] || busybox=$busybox_dir/usr/bin/busybox
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs)

# ---- corpus and store ------------------------------------------------------
logs=$work/logs
mkdir -p "$logs"
if [[ $smoke -eq 1 ]]; then
    corpus=$work/corpus
    mkdir -p "$corpus" "$work/debs"
    (cd "$work/debs" && apt-get -q -o APT::Sandbox::User=root download hello busybox-static jq >"$logs/apt.log" 2>&1) ||
        { cat "$logs/apt.log" >&2; die "apt-get download failed"; }
    for deb in "$work"/debs/*.deb; do
        name=$(dpkg-deb -f "$deb" Package)
        version=$(dpkg-deb -f "$deb" Version)
        version=${version#*:}
        mkdir -p "$corpus/$name"
        dpkg-deb -x "$deb" "$corpus/$name/$version"
    done
else
    bench_root=${NEXUS_BENCH_DIR:-/var/tmp/nexus-bench}
    corpus=$bench_root/corpus
    [[ -d $corpus ]] || die "no corpus in $corpus: run bench/fetch-corpus.sh first"
fi
if [[ -n $list_arg ]]; then
    [[ $smoke -eq 0 ]] || die "--list is for the full corpus"
    # virtiofsd exports one directory: the listed packages are linked
    # into a tree of their own (hard links, so on the corpus' file system).
    view=$bench_root/virtiofs-view.$$
    mapfile -t packages < <(grep -v '^\s*$' "$list_arg" | sort)
    for p in "${packages[@]}"; do
        mkdir -p "$view/$(dirname "$p")"
        cp -al "$corpus/$p" "$view/$p"
    done
    corpus=$view
    trap 'cleanup; rm -rf "$view"' EXIT
else
    mapfile -t packages < <(cd "$corpus" && find . -mindepth 2 -maxdepth 2 -type d | sed 's|^\./||' | sort)
fi
[[ ${#packages[@]} -gt 0 ]] || die "no App/Version dirs in $corpus"
if [[ -n $big_arg ]]; then
    big=$big_arg
else
    big=$(cd "$corpus" && du -s --apparent-size -B1 "${packages[@]}" | sort -n | tail -n1 | cut -f2)
fi
big_bytes=$(du -s --apparent-size -B1 "$corpus/$big" | cut -f1)
big_files=$(find "$corpus/$big" -type f | wc -l)
log "corpus: ${#packages[@]} packages in $corpus; big package $big ($big_files files, $big_bytes bytes)"

if [[ -n $store_arg ]]; then
    store=$store_arg
else
    store=$work/store
    log "building the store with nip add"
    "$nip" --store "$store" init >/dev/null
    (cd "$corpus" && "$nip" --store "$store" add "${packages[@]}") >"$logs/add.log" 2>&1 ||
        { tail -20 "$logs/add.log" >&2; die "nip add failed"; }
fi

# ---- one guest ---------------------------------------------------------------
initramfs=$work/initramfs.cpio
build_initramfs() {
    local r=$work/initramfs m
    mkdir -p "$r"/{bin,lib/modules,proc,sys,dev,mnt,tmp}
    cp "$busybox" "$r/bin/busybox"
    for m in "${modules[@]}"; do
        cp "$(find "$kernel_dir/lib/modules" -name "$m.ko" | head -n1)" "$r/lib/modules/"
    done
    cat >"$r/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in ${modules[*]}; do insmod /lib/modules/\$m.ko || echo "FAIL insmod \$m"; done
now() { cut -d' ' -f1 /proc/uptime; }
if mount -t virtiofs -o ro programs /mnt; then
  for pass in cold warm; do
    t0=\$(now); sum=\$( { find "/mnt/$big" -type f -print0 | sort -z | xargs -0 cat; } 2>/tmp/err | sha256sum | cut -d' ' -f1); t1=\$(now)
    echo "RESULT \$pass read \$t0 \$t1 \$sum \$(wc -l < /tmp/err)"
    head -n1 /tmp/err | sed "s/^/ERROR \$pass read /"
    t0=\$(now); n=\$(find /mnt 2>/tmp/err | wc -l); t1=\$(now)
    echo "RESULT \$pass find \$t0 \$t1 \$n \$(wc -l < /tmp/err)"
    head -n1 /tmp/err | sed "s/^/ERROR \$pass find /"
    sync; echo 3 > /proc/sys/vm/drop_caches
  done
else
  echo "FAIL mount"
fi
echo GUEST-DONE
poweroff -f
EOF
    chmod 755 "$r/init"
    (cd "$r" && find . | "$busybox" cpio -o -H newc >"$initramfs" 2>/dev/null)
}
build_initramfs

run_guest() {   # SOCKET CONSOLE
    timeout 3600 qemu-system-x86_64 -accel tcg -m 512M -smp 1 -nodefaults -no-reboot \
        -display none -monitor none -kernel "$kernel" -initrd "$initramfs" \
        -append "console=ttyS0 quiet panic=-1 no_timer_check" -serial "file:$2" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=c0,path=$1" -device vhost-user-fs-pci,chardev=c0,tag=programs \
        >"$2.qemu" 2>&1 || true
    if ! grep -q GUEST-DONE "$2" || grep -q FAIL "$2"; then
        cat "$2" "$2.qemu" >&2
        die "the guest failed (console above)"
    fi
}

wait_socket() {   # SOCKET PID LOG
    local tries
    for ((tries = 0; tries < 300; tries++)); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; die "the server exited before creating $1"; }
        sleep 0.1
    done
    die "no socket $1 after 30 s"
}

drop_host_caches() {
    # The smoke run stays polite to neighbours.
    [[ $smoke -eq 1 || $drop -eq 0 ]] && return 0
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# Results: lines "SERVER RUN PASS STEP SECONDS EXTRA".
results=$work/results.txt
errors=$work/errors.txt
: >"$results"
: >"$errors"
measure() {   # SERVER RUN
    local server=$1 run=$2 sock=$work/$1-$2.sock console=$work/$1-$2.console pid
    rm -f "$sock"
    drop_host_caches
    case $server in
        nexus)
            "$nexus" --store "$store" serve --virtio-fs "$sock" --log-file "$logs/$server-$run.log" &
            ;;
        virtiofsd-auto | virtiofsd-always)
            "$virtiofsd" --socket-path="$sock" -o source="$corpus" -o cache="${server#virtiofsd-}" \
                >"$logs/$server-$run.log" 2>&1 &
            ;;
    esac
    pid=$!
    pids+=("$pid")
    wait_socket "$sock" "$pid" "$logs/$server-$run.log"
    run_guest "$sock" "$console"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    tr -d '\r' <"$console" | awk -v s="$server" -v r="$run" \
        '$1 == "RESULT" { printf "%s %s %s %s %.2f %s %s\n", s, r, $2, $3, $5 - $4, $6, $7 }' >>"$results"
    tr -d '\r' <"$console" | sed -n "s/^ERROR /$server $run /p" >>"$errors"
    log "$server run $run: $(grep "^$server $run " "$results" | awk '{printf "%s/%s %ss  ", $3, $4, $5}')"
}

servers=(nexus virtiofsd-auto virtiofsd-always)
for run in $(seq 1 "$runs"); do
    for s in "${servers[@]}"; do measure "$s" "$run"; done
done

# ---- report ------------------------------------------------------------------
median() { sort -n | awk '{a[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
figure() {   # SERVER PASS STEP: the median seconds, or how many errors spoiled it
    local failed
    failed=$(awk -v s="$1" -v p="$2" -v t="$3" '$1 == s && $3 == p && $4 == t && $7 > 0 {n += $7} END {print n + 0}' "$results")
    if [[ $failed -gt 0 ]]; then
        echo "FAIL ($failed errors)"
    else
        awk -v s="$1" -v p="$2" -v t="$3" '$1 == s && $3 == p && $4 == t {print $5}' "$results" | median
    fi
}
sums=$(awk '$4 == "read" && $7 == 0 {print $6}' "$results" | sort -u)
[[ $(wc -l <<<"$sums") -le 1 ]] || { cat "$results" >&2; die "the servers disagree on the big package's bytes"; }
names_of() { awk -v s="$1" '$1 == s && $4 == "find" {print $6; exit}' "$results"; }

report=$work/report.md
{
    echo "# virtio-fs benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    [[ $smoke -eq 1 ]] && echo "**Smoke run** (tiny corpus): the figures say nothing about the targets." && echo
    echo "Guest: QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') TCG, 1 vCPU, 512 MiB, $kernel_pkg."
    echo "Corpus: ${#packages[@]} packages; names in the view (find): nexus $(names_of nexus), virtiofsd $(names_of virtiofsd-auto)."
    echo "Big package: $big ($big_files files, $big_bytes bytes), sha256 of its sorted files: same from every server."
    echo "Runs: $runs (median). Seconds inside the guest; cold = fresh server and guest$([[ $smoke -eq 0 && $drop -eq 1 ]] && echo ", host page cache dropped"); warm = server caches warm, guest caches dropped."
    echo
    echo "| server | read cold | read warm | read warm MB/s | find cold | find warm |"
    echo "|---|---|---|---|---|---|"
    for s in "${servers[@]}"; do
        rw=$(figure "$s" warm read)
        mbs=$(awk -v b="$big_bytes" -v t="$rw" 'BEGIN { if (t + 0 > 0) printf "%.1f", b / t / 1e6; else print "n/a" }')
        echo "| $s | $(figure "$s" cold read) | $rw | $mbs | $(figure "$s" cold find) | $(figure "$s" warm find) |"
    done
    if [[ -s $errors ]]; then
        echo
        echo "First error each failing step saw (server, run, pass, step, message):"
        echo
        sed 's/^/    /' "$errors"
    fi
    echo
    echo "Target (issue 6): nexus at least as fast as virtiofsd on both."
} >"$report"
cat "$report"
if [[ $smoke -eq 0 ]]; then
    mkdir -p "$out_dir"
    stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
    cp "$report" "$out_dir/virtiofs-$stamp.md"
    awk 'BEGIN {print "["} {printf "%s{\"server\":\"%s\",\"run\":%s,\"pass\":\"%s\",\"step\":\"%s\",\"seconds\":%s,\"detail\":\"%s\"}", (NR > 1 ? ",\n" : ""), $1, $2, $3, $4, $5, $6} END {print "\n]"}' \
        "$results" >"$out_dir/virtiofs-$stamp.json"
    log "wrote $out_dir/virtiofs-$stamp.{md,json}"
fi
