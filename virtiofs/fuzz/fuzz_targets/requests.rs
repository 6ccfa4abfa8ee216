//! Arbitrary FUSE requests, as a hostile guest would put them on its
//! virtqueue, through the real decoder (`fuse-backend-rs`) and the adapter
//! over a real view of a small store.
//!
//! An input is a sequence of up to 16 requests, each:
//!
//! | bytes | meaning |
//! |---|---|
//! | 2 | reply buffer size in 64-byte units (0: none at all) |
//! | 1 | opcode (every FUSE opcode is below 256) |
//! | 1 | node: 0–6 the fixture's root, App, `Current`, version, directory, file, symlink; 7: the next 8 bytes; else the byte itself |
//! | 1 | flags: bit 0 — the header's `len` is the next 4 bytes instead of the true length; bit 1 — the body's first 8 bytes become the last handle an OPENDIR returned (so READDIR and RELEASEDIR reach real handles) |
//! | 2 | body length |
//! | n | body |
//!
//! Each input is one guest connection (dropped at the end, which releases
//! its directory handles), so inputs replay alike.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nexus_fs::{GenerationChoice, View, ViewOptions};
use nexus_virtiofs::loopback::{FixtureInodes, Loopback, fixture, fixture_inodes, request};

struct Fixture {
    view: Arc<View>,
    ino: FixtureInodes,
}

fn fixture_view() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nexus-virtiofs-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fixture directory");
        let store: PathBuf = fixture(&dir).expect("fixture store");
        let options = ViewOptions {
            generation: GenerationChoice::Live,
            cache_bytes: 4 << 20,
            connections: 1,
        };
        let view = Arc::new(View::open(&store, options).expect("open the view"));
        let ino = fixture_inodes(&view).expect("fixture inodes");
        Fixture { view, ino }
    })
}

/// Takes `n` bytes off the front of `data`, if there are that many.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn u16_of(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture_view();
    let guest = Loopback::new(fx.view.clone());
    let mut data = data;
    let mut last_fh: Option<u64> = None;
    for _ in 0..16 {
        let Some(head) = take(&mut data, 5) else { break };
        let room = u32::from(u16_of(&head[..2])) * 64;
        let opcode = u32::from(head[2]);
        let node = match head[3] {
            0 => nexus_fs::ino::ROOT,
            1 => fx.ino.app,
            2 => fx.ino.current,
            3 => fx.ino.version,
            4 => fx.ino.dir,
            5 => fx.ino.file,
            6 => fx.ino.symlink,
            7 => match take(&mut data, 8) {
                Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                None => break,
            },
            other => u64::from(other),
        };
        let flags = head[4];
        let len = if flags & 1 != 0 {
            match take(&mut data, 4) {
                Some(b) => Some(u32::from_le_bytes(b.try_into().expect("4 bytes"))),
                None => break,
            }
        } else {
            None
        };
        let Some(body_len) = take(&mut data, 2) else { break };
        let body_len = usize::from(u16_of(body_len)).min(data.len());
        let Some(body) = take(&mut data, body_len) else { break };
        let mut body = body.to_vec();
        if flags & 2 != 0
            && let Some(fh) = last_fh
            && body.len() >= 8
        {
            body[..8].copy_from_slice(&fh.to_ne_bytes());
        }
        let reply = guest.send(&request(opcode, node, len, &body), room);
        if let Some(reply) = reply {
            // An answer claims no more than the buffer it was given, and
            // errors are negative errno values.
            assert!(reply.header.len as usize <= room as usize || reply.header.len == 0);
            assert!(reply.header.error <= 0 && reply.header.error > -4096);
            // OPENDIR (27) answered: remember its handle.
            if opcode == 27 && reply.header.error == 0 && reply.body.len() >= 8 {
                last_fh = Some(u64::from_ne_bytes(reply.body[..8].try_into().expect("8")));
            }
        }
    }
});
