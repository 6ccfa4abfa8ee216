//! Raw FUSE request bytes in, reply bytes out, through exactly the path a
//! guest's requests take (the device's checks, then
//! [`Server::handle_message`] over a virtio descriptor chain in guest
//! memory, then [`GuestFs`]), without a VM: for the hostile-request tests
//! and the fuzz target (`virtiofs/fuzz`).
//!
//! Each request gets a fresh small guest memory holding a one-chain queue:
//! the request bytes as the readable descriptor (or as several that all
//! point at the same bytes, [`Loopback::send_aliased`]), `reply_room` bytes
//! as the writable one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use nexus_fs::View;
use nexus_fs::handles::HandleBudget;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::fs::GuestFs;

/// Where the request and reply buffers start: past the queue structures.
const BUFFERS: u64 = 0x1_0000;
/// The largest reply buffer offered (a READ's 1 MiB and some).
pub const MAX_REPLY_ROOM: u32 = (1 << 20) + 4096;
/// Entries of the queue: room for a chain of this many descriptors, less
/// the reply's.
const QUEUE_SIZE: u16 = 256;

/// One guest's request handler, fed by hand.
pub struct Loopback {
    server: Server<GuestFs>,
}

/// The header of a reply, and what follows it.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The reply header.
    pub header: OutHeader,
    /// The bytes after the header.
    pub body: Vec<u8>,
}

impl Loopback {
    /// A guest connection to `view`, alone on its daemon.
    pub fn new(view: Arc<View>) -> Loopback {
        Loopback::with_budget(view, HandleBudget::new(crate::fs::MAX_DIR_BYTES))
    }

    /// A guest connection to `view` whose open directories count against
    /// `budget`, shared with the other guests given it.
    pub fn with_budget(view: Arc<View>, budget: Arc<HandleBudget>) -> Loopback {
        Loopback {
            server: Server::new(GuestFs::new(view, budget)),
        }
    }

    /// Sends `request` with `reply_room` bytes to answer in (capped at
    /// [`MAX_REPLY_ROOM`]); returns the reply, or `None` when the handler
    /// wrote none (requests that take no reply, and requests it rejected).
    pub fn send(&self, request: &[u8], reply_room: u32) -> Option<Reply> {
        let len = u32::try_from(request.len()).ok()?;
        self.send_aliased(request, len, 1, reply_room)
    }

    /// Sends `request` as a guest can that wants its request to look
    /// larger than it is: `copies` readable descriptors that all point at
    /// the same `region` bytes of guest memory, which start with `request`
    /// (zeros after it). The chain then offers `copies * region` bytes to
    /// read, from `region` bytes of memory. Fewer than one copy, or more
    /// than the queue holds, is `None`; otherwise as [`Loopback::send`].
    pub fn send_aliased(
        &self,
        request: &[u8],
        region: u32,
        copies: u16,
        reply_room: u32,
    ) -> Option<Reply> {
        if copies == 0 || copies >= QUEUE_SIZE || (region as usize) < request.len() {
            return None;
        }
        let room = reply_room.min(MAX_REPLY_ROOM);
        let request_at = BUFFERS;
        let reply_at = (request_at + u64::from(region)).next_multiple_of(4096);
        let size = usize::try_from(reply_at + u64::from(room) + 4096).ok()?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).ok()?;
        mem.write_slice(request, GuestAddress(request_at)).ok()?;
        let queue = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
        let mut descriptors: Vec<RawDescriptor> = (0..copies)
            .map(|_| RawDescriptor::from(Descriptor::new(request_at, region, 0, 0)))
            .collect();
        descriptors.push(RawDescriptor::from(Descriptor::new(
            reply_at,
            room,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
        let chain = queue.build_desc_chain(&descriptors).ok()?;
        let reader = Reader::from_descriptor_chain(&mem, chain.clone()).ok()?;
        let writer = VirtioFsWriter::new(&mem, chain).ok()?;
        // A request the handler rejects may still have been answered (with
        // an error) before it gave up, as a guest would see: so the reply is
        // read from guest memory, not from the handler's count.
        let _ = crate::device::answer(&self.server, reader, writer.into());
        let header_len = std::mem::size_of::<OutHeader>();
        if (room as usize) < header_len {
            return None;
        }
        let mut head = vec![0u8; header_len];
        mem.read_slice(&mut head, GuestAddress(reply_at)).ok()?;
        let header = *OutHeader::from_slice(&head)?;
        if header.len == 0 {
            return None;
        }
        let end = (header.len as usize).clamp(header_len, room as usize);
        let mut body = vec![0u8; end - header_len];
        mem.read_slice(&mut body, GuestAddress(reply_at + header_len as u64))
            .ok()?;
        Some(Reply { header, body })
    }
}

/// A request: the header (its `len` set to the total unless `len` is
/// given), then the argument struct bytes and trailing data.
pub fn request(opcode: u32, nodeid: u64, len: Option<u32>, body: &[u8]) -> Vec<u8> {
    let total = std::mem::size_of::<InHeader>() + body.len();
    let header = InHeader {
        len: len.unwrap_or(u32::try_from(total).unwrap_or(u32::MAX)),
        opcode,
        unique: 7,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        padding: 0,
    };
    let mut out = header.as_slice().to_vec();
    out.extend_from_slice(body);
    out
}

/// The inode numbers of a [`fixture`] store's interesting places, found by
/// lookups through the view.
#[derive(Clone, Copy, Debug)]
pub struct FixtureInodes {
    /// `/demo`.
    pub app: u64,
    /// `/demo/Current`.
    pub current: u64,
    /// `/demo/2` (a package root).
    pub version: u64,
    /// `/demo/2/share` (a directory inside a package).
    pub dir: u64,
    /// `/demo/2/share/data.bin` (a multi-chunk file).
    pub file: u64,
    /// `/demo/2/share/link` (a symlink to `data.bin`).
    pub symlink: u64,
}

/// The bytes of `demo/VERSION/share/data.bin` in a [`fixture`] store.
pub fn fixture_data(version: &str) -> Vec<u8> {
    // Deterministic and incompressible enough to need several chunks.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ version.len() as u64;
    (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Creates a store in `dir/store` with App `demo` in versions 1 and 2
/// (Current → 2): `bin/tool`, `share/data.bin`, `share/link` → `data.bin`.
pub fn fixture(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    use nexus_store::{AddDir, AddOptions, NoProgress, Store};
    let store_dir = dir.join("store");
    Store::init(&store_dir)?;
    let mut store = Store::open(&store_dir)?;
    for version in ["1", "2"] {
        let root = dir.join("src").join(version);
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::create_dir_all(root.join("share"))?;
        std::fs::write(
            root.join("bin/tool"),
            format!("#!/bin/sh\necho {version}\n"),
        )?;
        std::fs::write(root.join("share/data.bin"), fixture_data(version))?;
        std::os::unix::fs::symlink("data.bin", root.join("share/link"))?;
        let add = AddDir {
            path: root,
            name: "demo".into(),
            version: version.into(),
        };
        store.add_dirs(&[add], AddOptions::default(), &NoProgress)?;
    }
    Ok(store_dir)
}

/// Looks up the [`FixtureInodes`] of a [`fixture`] store.
pub fn fixture_inodes(view: &View) -> Result<FixtureInodes, nexus_fs::ViewError> {
    let app = view.lookup(nexus_fs::ino::ROOT, b"demo")?.attr.ino;
    let current = view.lookup(app, b"Current")?.attr.ino;
    let version = view.lookup(app, b"2")?.attr.ino;
    let dir = view.lookup(version, b"share")?.attr.ino;
    let file = view.lookup(dir, b"data.bin")?.attr.ino;
    let symlink = view.lookup(dir, b"link")?.attr.ino;
    Ok(FixtureInodes {
        app,
        current,
        version,
        dir,
        file,
        symlink,
    })
}
