#!/bin/sh
# Build script of recipes/rumk/minimal-rumk.kdl, run in the build sandbox
# in the repository (the recipe's workdir, read-only) with NEXUS_OUT naming
# the empty package root: builds the guest with scripts/build-rumk.sh, offline
# from the crates the recipe's pinned fetch vendored, into the sandbox's
# private /tmp, and leaves the kernel as $NEXUS_OUT/boot/rumk.
#
# Modes and times are fixed (SOURCE_DATE_EPOCH, default 1) and every path
# the compiler sees is the same on every build (/tmp, /run/nexus/vendor),
# so that a rebuild of the same source grafts an identical tree: the store
# refuses a different tree under an existing version.
set -eu
: "${NEXUS_OUT:?NEXUS_OUT names the package root to fill}"
RUMK_TARGET_DIR="${TMPDIR:-/tmp}/rumk-target"
export RUMK_TARGET_DIR
kernel=$(bash scripts/build-rumk.sh)
mkdir -p "$NEXUS_OUT/boot"
cp "$kernel" "$NEXUS_OUT/boot/rumk"
chmod 0755 "$NEXUS_OUT" "$NEXUS_OUT/boot" "$NEXUS_OUT/boot/rumk"
stamp="@${SOURCE_DATE_EPOCH:-1}"
touch -d "$stamp" "$NEXUS_OUT/boot/rumk" "$NEXUS_OUT/boot" "$NEXUS_OUT"
