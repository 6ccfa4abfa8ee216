//! A scripted FUSE server for the host unit tests: a small in-memory tree
//! answering the requests the client sends, with switches that make it
//! misbehave the ways a hostile device could.

use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

use crate::fuse::{Channel, S_IFDIR, S_IFLNK, S_IFREG};
use crate::virtio_fs;

/// One node of the tree.
pub enum Node {
    /// A directory: names → node ids.
    Dir(BTreeMap<Vec<u8>, u64>),
    /// A regular file: content and the BLAKE3 hex the server records.
    File(Vec<u8>, String),
    /// A symbolic link.
    Link(Vec<u8>),
}

/// The server.
pub struct TestFs {
    /// Node id → node; 1 is the root.
    pub nodes: BTreeMap<u64, Node>,
    /// Lookups minus forgets, per node id.
    pub lookups: BTreeMap<u64, i64>,
    /// Answer with this unique instead of the request's.
    pub wrong_unique: bool,
    /// Claim one byte more was written than the reply holds.
    pub lie_about_length: bool,
    /// Serve reads with this byte flipped.
    pub flip_read: bool,
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

impl TestFs {
    /// A root directory with `hello/Current -> 1.0`, `hello/1.0/bin/hello`
    /// (a file) and `hello/1.0/bin/hi -> hello` (a relative link).
    pub fn new() -> TestFs {
        let hello = b"hello, world\n".to_vec();
        let hash = blake3::hash(&hello).to_hex().to_string();
        let mut nodes = BTreeMap::new();
        nodes.insert(1, Node::Dir([(b"hello".to_vec(), 2)].into_iter().collect()));
        nodes.insert(
            2,
            Node::Dir(
                [(b"Current".to_vec(), 3), (b"1.0".to_vec(), 4)]
                    .into_iter()
                    .collect(),
            ),
        );
        nodes.insert(3, Node::Link(b"1.0".to_vec()));
        nodes.insert(4, Node::Dir([(b"bin".to_vec(), 5)].into_iter().collect()));
        nodes.insert(
            5,
            Node::Dir(
                [(b"hello".to_vec(), 6), (b"hi".to_vec(), 7)]
                    .into_iter()
                    .collect(),
            ),
        );
        nodes.insert(6, Node::File(hello, hash));
        nodes.insert(7, Node::Link(b"hello".to_vec()));
        TestFs {
            nodes,
            lookups: BTreeMap::new(),
            wrong_unique: false,
            lie_about_length: false,
            flip_read: false,
        }
    }

    fn attr(&self, id: u64) -> Vec<u8> {
        let (mode, size) = match &self.nodes[&id] {
            Node::Dir(_) => (S_IFDIR | 0o755, 0),
            Node::File(data, _) => (S_IFREG | 0o644, data.len() as u64),
            Node::Link(t) => (S_IFLNK | 0o777, t.len() as u64),
        };
        let mut a = Vec::new();
        a.extend(id.to_le_bytes()); // ino
        a.extend(size.to_le_bytes());
        a.extend([0u8; 8 * 4]); // blocks, atime, mtime, ctime
        a.extend([0u8; 4 * 3]); // nsecs
        a.extend(le32(mode));
        a.extend([0u8; 4 * 6]); // nlink, uid, gid, rdev, blksize, flags
        a
    }

    fn entry(&self, id: u64) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend(id.to_le_bytes());
        e.extend([0u8; 8 * 3 + 4 * 2]); // generation, valids, nsecs
        e.extend(self.attr(id));
        e
    }

    fn answer(&mut self, opcode: u32, node: u64, args: &[u8]) -> Result<Vec<u8>, i32> {
        let name = || args.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        match opcode {
            26 => {
                // INIT: 7.33, max_write 8 KiB (reads take several requests).
                let mut out = Vec::new();
                for v in [7u32, 33, 0, 0] {
                    out.extend(le32(v));
                }
                out.extend([0u8; 4]); // max_background, congestion_threshold
                out.extend(le32(8192));
                Ok(out)
            }
            1 => match self.nodes.get(&node) {
                Some(Node::Dir(children)) => {
                    let id = *children.get(&name()).ok_or(2)?;
                    *self.lookups.entry(id).or_default() += 1;
                    Ok(self.entry(id))
                }
                _ => Err(20),
            },
            3 => {
                let mut out = vec![0u8; 16];
                out.extend(self.attr(node));
                Ok(out)
            }
            5 => match self.nodes.get(&node) {
                Some(Node::Link(t)) => Ok(t.clone()),
                _ => Err(22),
            },
            14 => Err(38), // OPEN: reads need no handle
            15 => {
                let offset = u64::from_le_bytes(args[8..16].try_into().unwrap_or_default());
                let size = u32::from_le_bytes(args[16..20].try_into().unwrap_or_default());
                match self.nodes.get(&node) {
                    Some(Node::File(data, _)) => {
                        let start = (offset as usize).min(data.len());
                        let end = (start + size as usize).min(data.len());
                        let mut out = data[start..end].to_vec();
                        if self.flip_read && !out.is_empty() {
                            out[0] ^= 1;
                        }
                        Ok(out)
                    }
                    _ => Err(21),
                }
            }
            22 => match self.nodes.get(&node) {
                Some(Node::File(_, hash)) if args[8..].starts_with(b"user.nexus.blake3\0") => {
                    Ok(hash.as_bytes().to_vec())
                }
                _ => Err(61),
            },
            27 => Ok(vec![0u8; 16]), // OPENDIR: handle 0
            29 => Ok(Vec::new()),
            44 => {
                let offset = u64::from_le_bytes(args[8..16].try_into().unwrap_or_default());
                let Some(Node::Dir(children)) = self.nodes.get(&node) else {
                    return Err(20);
                };
                let children: Vec<(Vec<u8>, u64)> =
                    children.iter().map(|(n, id)| (n.clone(), *id)).collect();
                let mut out = Vec::new();
                for (i, (name, id)) in children.iter().enumerate().skip(offset as usize) {
                    *self.lookups.entry(*id).or_default() += 1;
                    out.extend(self.entry(*id));
                    out.extend(id.to_le_bytes());
                    out.extend((i as u64 + 1).to_le_bytes());
                    out.extend(le32(name.len() as u32));
                    out.extend(le32(0));
                    out.extend(name);
                    while out.len() % 8 != 0 {
                        out.push(0);
                    }
                }
                Ok(out)
            }
            _ => Err(38),
        }
    }
}

impl Channel for TestFs {
    fn call(
        &mut self,
        request: &[u8],
        header: &mut [u8],
        body: &mut [u8],
    ) -> Result<usize, virtio_fs::Error> {
        let opcode = u32::from_le_bytes(request[4..8].try_into().unwrap_or_default());
        let mut unique = u64::from_le_bytes(request[8..16].try_into().unwrap_or_default());
        let node = u64::from_le_bytes(request[16..24].try_into().unwrap_or_default());
        let (error, payload) = match self.answer(opcode, node, &request[40..]) {
            Ok(p) => (0i32, p),
            Err(e) => (-e, Vec::new()),
        };
        let n = payload.len().min(body.len());
        body[..n].copy_from_slice(&payload[..n]);
        let mut written = 16 + n;
        if self.wrong_unique {
            unique += 1;
        }
        if self.lie_about_length {
            written += 1;
        }
        header[..4].copy_from_slice(&le32(written as u32));
        header[4..8].copy_from_slice(&error.to_le_bytes());
        header[8..16].copy_from_slice(&unique.to_le_bytes());
        Ok(written)
    }

    fn send(&mut self, request: &[u8]) -> Result<(), virtio_fs::Error> {
        let node = u64::from_le_bytes(request[16..24].try_into().unwrap_or_default());
        let n = u64::from_le_bytes(request[40..48].try_into().unwrap_or_default());
        *self.lookups.entry(node).or_default() -= n as i64;
        Ok(())
    }

    fn tag(&self) -> &str {
        "test"
    }
}
