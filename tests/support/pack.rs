//! An independent reader for pack files (store format v1), used to find and
//! damage specific chunks on disk.
//!
//! A pack is the 8-byte magic `NXPACK01` followed by records. Each record is a
//! 48-byte header — bytes 0..32 the BLAKE3 of the uncompressed chunk, 32..36
//! the raw length (u32 LE), 36..40 the stored length (u32 LE), byte 40 the
//! codec (0 raw, 1 zstd), 41..48 zero — followed by `stored length` payload
//! bytes. This module deliberately does not use the store crate: the tests
//! check the format as documented, not as implemented.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Magic bytes opening every pack.
pub const MAGIC: &[u8; 8] = b"NXPACK01";
/// Record header size.
pub const HEADER_LEN: u64 = 48;

/// One record found in a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The pack file.
    pub pack: PathBuf,
    /// Offset of the record header in the pack.
    pub offset: u64,
    /// BLAKE3 of the uncompressed chunk.
    pub hash: [u8; 32],
    /// Uncompressed length.
    pub raw_len: u32,
    /// Payload length on disk.
    pub stored_len: u32,
    /// Codec byte (0 raw, 1 zstd).
    pub codec: u8,
}

impl Record {
    /// Offset of the first payload byte.
    pub fn payload_offset(&self) -> u64 {
        self.offset + HEADER_LEN
    }

    /// The chunk hash in hex.
    pub fn hash_hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }
}

/// The pack files of a store (`STORE/packs/*.pack`), sorted by name.
pub fn pack_files(packs_dir: &Path) -> Vec<PathBuf> {
    let mut packs: Vec<PathBuf> = fs::read_dir(packs_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", packs_dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    packs.sort();
    packs
}

/// Parses every record of one pack, failing the test if the file does not
/// follow the documented format.
pub fn read_pack(path: &Path) -> Vec<Record> {
    let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        data.len() >= MAGIC.len() && &data[..MAGIC.len()] == MAGIC,
        "{} does not start with the pack magic {MAGIC:?}",
        path.display()
    );
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    while pos < data.len() {
        assert!(
            pos + HEADER_LEN as usize <= data.len(),
            "{}: truncated record header at offset {pos}",
            path.display()
        );
        let h = &data[pos..pos + HEADER_LEN as usize];
        let raw_len = u32::from_le_bytes(h[32..36].try_into().unwrap());
        let stored_len = u32::from_le_bytes(h[36..40].try_into().unwrap());
        let codec = h[40];
        assert!(
            codec <= 1 && h[41..48].iter().all(|&b| b == 0),
            "{}: record at offset {pos} has an invalid codec/padding {:?}",
            path.display(),
            &h[40..48]
        );
        let end = pos + HEADER_LEN as usize + stored_len as usize;
        assert!(
            end <= data.len(),
            "{}: record at offset {pos} claims {stored_len} payload bytes, past the end of the file",
            path.display()
        );
        records.push(Record {
            pack: path.to_path_buf(),
            offset: pos as u64,
            hash: h[..32].try_into().unwrap(),
            raw_len,
            stored_len,
            codec,
        });
        pos = end;
    }
    records
}

/// All records of all packs in `packs_dir`.
pub fn read_all_packs(packs_dir: &Path) -> Vec<Record> {
    pack_files(packs_dir)
        .iter()
        .flat_map(|p| read_pack(p))
        .collect()
}

/// Inverts all bits of the byte at `offset` in `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .unwrap_or_else(|e| panic!("read {}@{offset}: {e}", path.display()));
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)
        .unwrap_or_else(|e| panic!("write {}@{offset}: {e}", path.display()));
    f.sync_all().expect("fsync after flipping a byte");
}
