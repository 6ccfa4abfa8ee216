# Builds the Rumk guest kernel for recipes/rumk/minimal-rumk.kdl.
# Run by `nexus build` with sh, in rumk/, with NEXUS_OUT set to the empty
# directory that becomes the package root.
set -eu
if [ ! -f Cargo.toml ]; then
    echo "minimal-rumk: not yet buildable: the Rumk guest is written by issue 7 (no $(pwd)/Cargo.toml yet)" >&2
    exit 3
fi
# The layout issue 7 is expected to give the crate; adjust it there.
cargo build --release --target x86_64-unknown-none
mkdir -p "$NEXUS_OUT/boot"
cp target/x86_64-unknown-none/release/rumk "$NEXUS_OUT/boot/rumk"
