#!/usr/bin/env bash
# Runs every fuzz target of nexus-system for SECONDS each (default 60) and
# prints, per target, the executions run and the crashes found.
#
#   system/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds are copied on first use into
# corpus/TARGET: the repository's profiles and recipes, and the debs.lock,
# `apt-get download --print-uris` line, cached .deb names and constraints
# of system/src's unit tests; crashes land in artifacts/TARGET/. Neither
# directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
targets=(profile recipe constraint pins print_uris deb_name)

seed() {
    local root=../.. f sha
    for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done
    cp "$root"/profiles/*.kdl corpus/profile/
    find "$root/recipes" -name '*.kdl' -exec cp {} corpus/recipe/ \;
    # constraint: a constraint, then three versions (fuzz_targets/constraint.rs).
    printf '>= 1.6, < 2\n1.6-2.1+deb12u3\n1.5\n2.0' > corpus/constraint/range
    printf '= 2.10-3\n2.10-3\n2.10-6\n1:1.0' > corpus/constraint/exact
    printf '*\n1.0~rc1\n1.0\n1.0-0' > corpus/constraint/any
    # What system/src/fetch.rs's and pins.rs's tests write.
    sha=2e6e2f1a0007dc43bc91c273fd36e91e40a4f1c2765a03eca68b70a42103878a
    printf "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53080 SHA256:%s\n" \
        "$sha" > corpus/print_uris/hello
    printf '# nexus debs.lock v1: SHA256 SIZE FILE\n%s 53080 hello_2.10-3_amd64.deb\n%s 5 x_1_all.deb\n' \
        "$sha" "$(printf 'a deb' | sha256sum | cut -d' ' -f1)" > corpus/pins/debs.lock
    for f in hello_2.10-3_amd64.deb a2ps_1%3a4.14-8_amd64.deb \
        abiword-common_3.0.5~dfsg-3.2_all.deb x_2.10-3+deb12u1_amd64.deb; do
        printf '%s' "$f" > "corpus/deb_name/$f"
    done
}

[[ -d corpus/profile ]] || seed
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" "${targets[@]}"
