//! The metadata object of a published generation (FORMAT.md, "Remotes"):
//! the packages, their trees and contents exactly as an image's body
//! describes them (`nexus_npk::body`, validated the same way), plus which
//! remote pack each chunk's block is in.
//!
//! Two versions, named by the magic: `NXRMETA1` holds a body of version 1,
//! `NXRMETA2` one of version 2 (a package is restricted to some Apps).
//! A publisher writes version 1 whenever no package is restricted, so that
//! subscribers of builds before version 2 keep pulling such generations;
//! they refuse the others, which they would rank wrongly in the Index.

use nexus_npk::FormatError;
use nexus_npk::body::{self, Body};
use nexus_npk::wire::{Fields, Reader, Writer};
use nexus_store::pack::{ChunkLocation, PACK_MAGIC, PACK_SUFFIX};

/// First 8 bytes of a metadata object holding a body of version 1.
pub const MAGIC_V1: &[u8; 8] = b"NXRMETA1";
/// First 8 bytes of a metadata object holding a body of version 2.
pub const MAGIC_V2: &[u8; 8] = b"NXRMETA2";
/// Largest metadata object read (the body inside is limited on its own).
pub const META_MAX: u64 = 640 << 20;

/// A published generation's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The packs its chunks are in: object name under `packs/`, and size.
    pub packs: Vec<(String, u64)>,
    /// For each chunk of `body`, the index of its pack in `packs`.
    pub chunk_packs: Vec<u32>,
    /// Packages (with `Current` flags), contents and chunk locations; a
    /// chunk's block offset is within its pack.
    pub body: Body,
}

/// True for a pack object name: 32 lower-case hex digits and `.pack`.
pub fn is_pack_name(name: &str) -> bool {
    name.strip_suffix(PACK_SUFFIX).is_some_and(|stem| {
        stem.len() == 32
            && stem
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Meta {
    /// The object's bytes.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let mut w = Writer::default();
        w.raw(if self.body.version() == 2 {
            MAGIC_V2
        } else {
            MAGIC_V1
        });
        w.u32(self.packs.len() as u32);
        for (name, size) in &self.packs {
            w.str(name);
            w.u64(*size);
        }
        w.u32(self.chunk_packs.len() as u32);
        for &p in &self.chunk_packs {
            w.u32(p);
        }
        w.bytes(&body::compress(&self.body.encode())?);
        Ok(w.buf)
    }

    /// Decodes and validates a metadata object: the body as an archive's
    /// (trees, names, limits, tree hashes, contents), every pack name well
    /// formed and listed once, every chunk's block inside its pack.
    pub fn decode(bytes: &[u8]) -> Result<Meta, FormatError> {
        let bad = |why: String| FormatError::Malformed(format!("metadata: {why}"));
        let mut r = Reader::new(bytes, "metadata");
        let version = match r.take(8, "magic")? {
            m if m == MAGIC_V1 => 1,
            m if m == MAGIC_V2 => 2,
            _ => return Err(bad("bad magic".into())),
        };
        let n = r.count("pack count", 12)?;
        let mut packs = Vec::with_capacity(n);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n {
            let name = r.str("pack name")?.to_string();
            let size = r.u64("pack size")?;
            if !is_pack_name(&name) {
                return Err(bad(format!("{name:?} is not a pack name")));
            }
            if !names.insert(name.clone()) {
                return Err(bad(format!("pack {name} listed twice")));
            }
            packs.push((name, size));
        }
        let n = r.count("chunk count", 4)?;
        let mut chunk_packs = Vec::with_capacity(n);
        for _ in 0..n {
            chunk_packs.push(r.u32("chunk pack")?);
        }
        let frame = r.bytes("body")?;
        r.finish()?;
        let decoded = body::decompress(frame)?;
        // Blocks start after the pack magic; their ends are checked per
        // pack below.
        let body = Body::decode(&decoded, PACK_MAGIC.len() as u64, u64::MAX)?;
        // The magic names the body's version: a version-1 object is what
        // builds before restrictions read, and must hold none.
        if body.version() != version {
            return Err(bad(format!(
                "an object of version {version} holds a body of version {}",
                body.version()
            )));
        }
        if body.chunks.len() != chunk_packs.len() {
            return Err(bad(format!(
                "{} chunks but {} pack indexes",
                body.chunks.len(),
                chunk_packs.len()
            )));
        }
        for (c, &p) in body.chunks.iter().zip(&chunk_packs) {
            let (name, size) = packs
                .get(p as usize)
                .ok_or_else(|| bad(format!("chunk {}: pack index {p} out of range", c.hash)))?;
            if c.offset + u64::from(c.block_len) > *size {
                return Err(bad(format!(
                    "chunk {}: its block extends past the end of pack {name}",
                    c.hash
                )));
            }
        }
        Ok(Meta {
            packs,
            chunk_packs,
            body,
        })
    }

    /// Where each chunk of the body is, in body order.
    pub fn locations(&self) -> Vec<ChunkLocation> {
        let names: Vec<std::sync::Arc<str>> =
            self.packs.iter().map(|(n, _)| n.as_str().into()).collect();
        self.body
            .chunks
            .iter()
            .zip(&self.chunk_packs)
            .map(|(c, &p)| ChunkLocation {
                hash: c.hash,
                pack: names[p as usize].clone(),
                offset: c.offset,
                block_len: c.block_len,
                inner: c.inner,
                len: c.len,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_are_32_hex_digits() {
        assert!(is_pack_name("0123456789abcdef0123456789abcdef.pack"));
        for bad in [
            "0123456789abcdef0123456789abcdef",
            "0123456789ABCDEF0123456789abcdef.pack",
            "../3456789abcdef0123456789abcdef.pack",
            "0123456789abcdef0123456789abcde.pack",
        ] {
            assert!(!is_pack_name(bad), "{bad}");
        }
    }

    /// A metadata object with one empty package `name/1`, restricted to
    /// `apps`.
    fn one_package(name: &str, apps: Option<&str>) -> Meta {
        let tree = nexus_store::tree::Tree::with_root(0o755, 0, 0, 0, Vec::new());
        let package = nexus_npk::body::BodyPackage {
            name: name.into(),
            version: "1".into(),
            origin: "dir:/x".into(),
            metadata: "{}".into(),
            current: true,
            restricted_to: apps.map(str::to_string),
            tree_hash: tree.tree_hash(),
            tree,
        };
        Meta {
            packs: Vec::new(),
            chunk_packs: Vec::new(),
            body: Body {
                packages: vec![package],
                ..Body::default()
            },
        }
    }

    /// Restrictions travel to subscribers: in an object of version 2,
    /// which builds before them refuse by its magic; an object without
    /// one stays version 1, which they read. The magic and the body's
    /// version must agree.
    #[test]
    fn restricted_packages_make_a_version_2_object() {
        let restricted = one_package("aa-evil", Some("aa-*"));
        let bytes = restricted.encode().unwrap();
        assert_eq!(&bytes[..8], MAGIC_V2);
        assert_eq!(Meta::decode(&bytes).unwrap(), restricted);
        let plain = one_package("zz-core", None);
        let plain_bytes = plain.encode().unwrap();
        assert_eq!(&plain_bytes[..8], MAGIC_V1);
        assert_eq!(Meta::decode(&plain_bytes).unwrap(), plain);

        for (mut bytes, magic) in [(bytes, MAGIC_V1), (plain_bytes, MAGIC_V2)] {
            bytes[..8].copy_from_slice(magic);
            let err = Meta::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains("holds a body of version"), "{err}");
        }
    }

    #[test]
    fn chunks_must_lie_inside_their_packs() {
        let body = Body {
            packages: Vec::new(),
            blobs: Vec::new(),
            chunks: vec![nexus_npk::body::BodyChunk {
                hash: nexus_store::Hash::of(b"x"),
                len: 1,
                offset: 8,
                block_len: 100,
                inner: 0,
            }],
        };
        let name = "0123456789abcdef0123456789abcdef.pack".to_string();
        let meta = |size| Meta {
            packs: vec![(name.clone(), size)],
            chunk_packs: vec![0],
            body: body.clone(),
        };
        let good = meta(108).encode().unwrap();
        assert_eq!(Meta::decode(&good).unwrap(), meta(108));
        assert!(Meta::decode(&meta(107).encode().unwrap()).is_err());
        let mut bad_index = meta(108);
        bad_index.chunk_packs = vec![1];
        assert!(Meta::decode(&bad_index.encode().unwrap()).is_err());
        assert!(Meta::decode(&good[..good.len() - 1]).is_err());
    }
}
