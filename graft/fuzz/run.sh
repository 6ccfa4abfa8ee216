#!/usr/bin/env bash
# Runs every fuzz target of nexus-graft for SECONDS each (default 60) and
# prints, per target, the executions run and the crashes found.
#
#   graft/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds are generated on first use into
# corpus/TARGET (small valid packages made with tar, ar, gzip and zstd, a
# real .deb when the test cache has one, and NARs when nix-store is
# installed); crashes land in
# artifacts/TARGET/. Neither directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
targets=(sniff deb pacman pkgsrc nar)

seed() {
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/root/usr/bin" "$work/pkgsrc/bin" "$work/ctl"
    printf '#!/bin/sh\necho hi\n' > "$work/root/usr/bin/tool"
    chmod 4755 "$work/root/usr/bin/tool"
    ln -s tool "$work/root/usr/bin/link"
    ln "$work/root/usr/bin/tool" "$work/root/usr/bin/hard"
    printf 'pkgname = tool\npkgver = 1:1.0-1\nlicense = MIT\ndepend = glibc\n' > "$work/root/.PKGINFO"
    tar --format=pax -C "$work/root" -cf "$work/pacman.tar" .PKGINFO usr
    printf 'hello\n' > "$work/pkgsrc/bin/hello"
    printf '@name hello-1.0\n@cwd /usr/pkg\n@pkgdep libc>=1\nbin/hello\n' > "$work/pkgsrc/+CONTENTS"
    printf 'says hello\n' > "$work/pkgsrc/+COMMENT"
    printf 'LICENSE=mit\n' > "$work/pkgsrc/+BUILD_INFO"
    tar -C "$work/pkgsrc" -cf "$work/pkgsrc.tar" +CONTENTS +COMMENT +BUILD_INFO bin
    printf 'Package: tool\nVersion: 1.0-1\nDescription: a tool\n long\n' > "$work/ctl/control"
    printf '2.0\n' > "$work/debian-binary"
    tar -C "$work/ctl" -czf "$work/control.tar.gz" ./control
    tar -C "$work/root" -cf "$work/data.tar" ./usr
    (cd "$work" && ar qc deb.deb debian-binary control.tar.gz data.tar)
    for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done
    cp "$work/pacman.tar" corpus/pacman/
    gzip -c "$work/pacman.tar" > corpus/pacman/pacman.tar.gz
    cp "$work/pkgsrc.tar" corpus/pkgsrc/
    gzip -c "$work/pkgsrc.tar" > corpus/pkgsrc/pkgsrc.tgz
    cp "$work/deb.deb" corpus/deb/
    cp "$work/ctl/control" corpus/deb/control
    cp "$work/deb.deb" "$work/pacman.tar" "$work/pkgsrc.tar" corpus/sniff/
    if command -v zstd >/dev/null; then zstd -q -c "$work/pacman.tar" > corpus/sniff/pacman.tar.zst; fi
    local real
    real=$(find /var/tmp/nexus-test-debs -maxdepth 1 -name 'hello_*.deb' 2>/dev/null | head -n1 || true)
    if [[ -n $real ]]; then cp "$real" corpus/deb/real.deb; fi
    seed_nar "$work"
}

seed_nar() {
    local work=$1
    mkdir -p corpus/nar
    command -v nix-store >/dev/null || return 0
    nix-store --dump "$work/root" > corpus/nar/root.nar
    nix-store --dump "$work/pkgsrc" > corpus/nar/pkgsrc.nar
    if command -v zstd >/dev/null; then zstd -q -c corpus/nar/root.nar > corpus/nar/root.nar.zst; fi
    xz -c corpus/nar/pkgsrc.nar > corpus/nar/pkgsrc.nar.xz
    cp corpus/nar/root.nar corpus/sniff/
}

[[ -d corpus/deb ]] || seed
if [[ ! -d corpus/nar ]]; then
    work=$(mktemp -d)
    mkdir -p "$work/root/usr/bin" "$work/pkgsrc/bin"
    printf '#!/bin/sh\necho hi\n' > "$work/root/usr/bin/tool"
    chmod 755 "$work/root/usr/bin/tool"
    ln -s tool "$work/root/usr/bin/link"
    printf 'hello\n' > "$work/pkgsrc/bin/hello"
    seed_nar "$work"
    rm -rf "$work"
fi
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" "${targets[@]}"
