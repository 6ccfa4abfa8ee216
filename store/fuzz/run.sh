#!/usr/bin/env bash
# Runs every fuzz target of nexus-store for SECONDS each (default 60) and
# prints, per target, the executions run and the crashes found.
#
#   store/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds are written on first use into
# corpus/TARGET: for block, well-formed blocks of every codec (framed with
# compressed, raw and empty frames; v1 raw and zstd) made by a Python
# writer of FORMAT.md section 3 with the zstd command; for runtime_record,
# records as daemons write them, of this build and older ones. Crashes
# land in artifacts/TARGET/. Neither directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
targets=(block runtime_record)

seed() {
    for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done
    python3 - corpus/block <<'PY'
import os, struct, subprocess, sys, tempfile

# BLAKE3 of at most one 1024-byte chunk (every seed chunk is smaller): the
# chunk's 64-byte blocks compressed in turn, the last one as the root.
IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
      0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
M = 0xFFFFFFFF
def g(s, a, b, c, d, x, y):
    rot = lambda v, n: ((v >> n) | (v << (32 - n))) & M
    s[a] = (s[a] + s[b] + x) & M; s[d] = rot(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M; s[b] = rot(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b] + y) & M; s[d] = rot(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M; s[b] = rot(s[b] ^ s[c], 7)
def compress(cv, words, length, flags):
    s = cv[:] + IV[:4] + [0, 0, length, flags]
    m = words[:]
    for r in range(7):
        for i, (a, b, c, d) in enumerate([(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14),
                (3, 7, 11, 15), (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]):
            g(s, a, b, c, d, m[2 * i], m[2 * i + 1])
        m = [m[p] for p in PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]
def blake3(data):
    assert len(data) <= 1024
    blocks = [data[i:i + 64] for i in range(0, len(data), 64)] or [b'']
    cv = IV
    for i, b in enumerate(blocks):
        last = i == len(blocks) - 1
        flags = (1 if i == 0 else 0) | (2 | 8 if last else 0)
        cv = compress(cv, list(struct.unpack('<16I', b.ljust(64, b'\0'))), len(b), flags)
    return struct.pack('<8I', *cv)
assert blake3(b'').hex() == 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262'

def zstd(raw):
    # As the writer makes frames: content size and checksum included.
    with tempfile.NamedTemporaryFile() as f:
        f.write(raw); f.flush()
        return subprocess.run(['zstd', '-q', '-c', '--check', f.name],
                              stdout=subprocess.PIPE, check=True).stdout

def block(codec, chunks, frames, payload):
    raw_len = sum(len(c) for c in chunks)
    head = b'NXBK' + bytes([codec, 0, 0, 0]) + struct.pack(
        '<IIII', len(chunks), raw_len, len(payload), len(frames)) + bytes(8)
    head += b''.join(blake3(c) + struct.pack('<I', len(c)) for c in chunks)
    head += b''.join(struct.pack('<II', r, s) for r, s in frames)
    return head + payload

def framed(groups):
    # groups: the chunks of each frame, and whether to compress it.
    chunks, frames, payload = [], [], b''
    for cs, squeeze in groups:
        raw = b''.join(cs)
        stored = zstd(raw) if squeeze else raw
        assert len(stored) < len(raw) or not squeeze
        chunks += cs; frames.append((len(raw), len(stored))); payload += stored
    return block(2, chunks, frames, payload)

text = [(b'#!/bin/sh\necho hello %d\n' % i) * 20 for i in range(3)]
noise = os.urandom(700)
out = sys.argv[1]
seeds = {
    'framed': framed([([text[0], b'', text[1]], True), ([noise], False), ([text[2]], True)]),
    'framed-one': framed([([text[0], noise], True)]),
    'framed-empty': block(2, [b''], [(0, 0)], b''),
    'v1-raw': block(0, [text[0], noise], [], text[0] + noise),
    'v1-zstd': block(1, [text[1], text[2]], [], zstd(text[1] + text[2])),
}
for name, data in seeds.items():
    open(os.path.join(out, name), 'wb').write(data)
PY
    python3 - corpus/runtime_record <<'PY'
import json, sys
d = sys.argv[1]
record = {'format': 'nexus-runtime-root-v1', 'pid': 4242, 'kind': 'mount',
          'target': '/Programs', 'generations': [12], 'packages': [310, 311],
          'started': 1717000000, 'updated': 1717000500, 'schema': 6,
          'decoded_from': 1048576}
json.dump(record, open(d + '/mount.json', 'w'), indent=2)
old = dict(record, kind='virtio-fs', target='/run/vfs.sock')
for k in ('packages', 'schema', 'decoded_from'): del old[k]
json.dump(old, open(d + '/older.json', 'w'))
odd = dict(record, target='/mnt/\ufffdx', target_hex='2f6d6e742fff78')
json.dump(odd, open(d + '/target-hex.json', 'w'))
PY
}

[[ -d corpus/block ]] || seed
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" "${targets[@]}"
