//! Reads a tar stream entry by entry into [`ArchiveEntry`]s, handing each
//! regular file's content to the caller as a reader, in one pass and in
//! bounded memory.
//!
//! The `tar` crate parses headers; extension records are handled here
//! (its raw mode), so that their sizes are capped before they are read and
//! pax values are parsed as bytes: GNU long names (`L`, `K`), pax headers
//! (`x`: `path`, `linkpath`, `uid`, `gid`, `mtime`, `SCHILY.xattr.*`) and
//! global pax headers (`g`, read and ignored). Refused: sparse files (GNU
//! `S` and pax `GNU.sparse.*`), a pax `size` that disagrees with the
//! header, unknown entry types, and archives that end without an
//! end-of-archive block or with anything but zeros after it. The stream is
//! always read to its end, so the decompressor's checksums are verified.

use std::io::{self, Read};

use nexus_store::tree::check_xattr;

use crate::entry::{ArchiveEntry, EntryKind, EntryMeta, lossy};
use crate::error::{Failure, Problem, ReadResult};
use crate::limits::{Budget, Counted, EXTENSION_MAX, read_capped};
use crate::pax::parse_records;

const BLOCK: u64 = 512;

/// Extension records waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    pax: Option<crate::pax::Records>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }

    fn pax(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .as_ref()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads every entry of the tar stream `reader`, calling `each` with the
/// entry and a reader of its content (empty except for regular files).
/// `what` names the stream in messages (e.g. `data.tar.xz`).
pub fn read_tar(
    reader: impl Read,
    budget: &Budget,
    what: &str,
    mut each: impl FnMut(ArchiveEntry, &mut dyn Read) -> ReadResult<()>,
) -> ReadResult<()> {
    let mut archive = tar::Archive::new(Counted::new(reader));
    let mut end_of_last = 0u64;
    {
        let entries = archive
            .entries()
            .map_err(|e| Failure::from_io(e, what))?
            .raw(true);
        let mut pending = Pending::default();
        for item in entries {
            let mut raw = item.map_err(|e| Failure::from_io(e, what))?;
            let header = raw.header().clone();
            let size = header.entry_size().map_err(|e| Failure::from_io(e, what))?;
            end_of_last = raw.raw_file_position() + size.div_ceil(BLOCK) * BLOCK;
            let kind = header.entry_type();
            if matches!(kind.as_byte(), b'x' | b'g' | b'L' | b'K') {
                let label = match kind.as_byte() {
                    b'x' | b'g' => "a pax header",
                    _ => "a GNU long name",
                };
                if size > EXTENSION_MAX {
                    return Err(Problem::Corrupt(format!(
                        "{what}: {label} of {size} bytes (more than {EXTENSION_MAX})"
                    ))
                    .into());
                }
                let data = read_capped(&mut raw, EXTENSION_MAX, label)
                    .map_err(|e| Failure::from_io(e, what))?;
                if data.len() as u64 != size {
                    return Err(Problem::Corrupt(format!("{what}: {label} is truncated")).into());
                }
                match kind.as_byte() {
                    b'x' => set_once(&mut pending.pax, parse_records(&data)?, what)?,
                    b'g' => check_global(&parse_records(&data)?, what)?,
                    b'L' => set_once(&mut pending.long_name, trim_nul(data), what)?,
                    _ => set_once(&mut pending.long_link, trim_nul(data), what)?,
                }
                continue;
            }
            budget.entry()?;
            let entry = describe(&header, size, &pending, what)?;
            pending = Pending::default();
            if let EntryKind::File { size } = entry.kind {
                budget.check_claim(&entry.display(), size)?;
                each(entry, &mut raw)?;
            } else {
                each(entry, &mut io::empty())?;
            }
        }
        if !pending.is_empty() {
            return Err(Problem::Corrupt(format!(
                "{what}: an extension header at the end describes no entry"
            ))
            .into());
        }
    }
    let mut rest = archive.into_inner();
    if rest.count() < end_of_last + BLOCK {
        return Err(Problem::Corrupt(format!(
            "{what} ends without its end-of-archive block (truncated?)"
        ))
        .into());
    }
    // Read to the end: the padding must be zeros, and only the end of the
    // stream lets the decoder check its checksum.
    let mut buf = [0u8; 8192];
    loop {
        let n = rest.read(&mut buf).map_err(|e| Failure::from_io(e, what))?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(
                Problem::Corrupt(format!("{what}: data after the end-of-archive block")).into(),
            );
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<(), Problem> {
    if slot.is_some() {
        return Err(Problem::Corrupt(format!(
            "{what}: two extension headers of one kind for the same entry"
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// Global pax headers would change every later entry; only comments
/// (`git archive` writes one) are harmless enough to ignore.
fn check_global(records: &[(Vec<u8>, Vec<u8>)], what: &str) -> Result<(), Problem> {
    match records.iter().find(|(k, _)| k != b"comment") {
        Some((k, _)) => Err(Problem::Unsupported {
            entry: what.to_string(),
            reason: format!("global pax header setting {:?}", lossy(k)),
        }),
        None => Ok(()),
    }
}

fn number(value: &[u8], key: &str, entry: &str) -> Result<u64, Problem> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            Problem::Corrupt(format!(
                "{entry:?}: pax {key} {:?} is not a number",
                lossy(value)
            ))
        })
}

/// Seconds of a pax time (`-12.5`, `1700000000.123456789`).
fn pax_time(value: &[u8], entry: &str) -> Result<i64, Problem> {
    let text = std::str::from_utf8(value).unwrap_or("");
    let whole = text.split('.').next().unwrap_or("");
    whole
        .parse::<i64>()
        .map_err(|_| Problem::Corrupt(format!("{entry:?}: pax mtime {text:?} is not a time")))
}

fn id(value: u64, what: &str, entry: &str) -> Result<u32, Problem> {
    u32::try_from(value)
        .map_err(|_| Problem::Corrupt(format!("{entry:?}: {what} {value} does not fit in 32 bits")))
}

fn describe(
    header: &tar::Header,
    size: u64,
    pending: &Pending,
    what: &str,
) -> ReadResult<ArchiveEntry> {
    let io_err = |e| Failure::from_io(e, what);
    let path = match (pending.pax(b"path"), &pending.long_name) {
        (Some(p), _) => p.to_vec(),
        (None, Some(p)) => p.clone(),
        (None, None) => header.path_bytes().into_owned(),
    };
    let name = lossy(&path);
    let link = match (pending.pax(b"linkpath"), &pending.long_link) {
        (Some(p), _) => Some(p.to_vec()),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
    };
    if let Some(pax_size) = pending.pax(b"size")
        && number(pax_size, "size", &name)? != size
    {
        return Err(Problem::Unsupported {
            entry: name,
            reason: "its pax size record disagrees with its header".into(),
        }
        .into());
    }
    let uid = match pending.pax(b"uid") {
        Some(v) => number(v, "uid", &name)?,
        None => header.uid().map_err(io_err)?,
    };
    let gid = match pending.pax(b"gid") {
        Some(v) => number(v, "gid", &name)?,
        None => header.gid().map_err(io_err)?,
    };
    let mtime = match pending.pax(b"mtime") {
        Some(v) => pax_time(v, &name)?,
        None => i64::try_from(header.mtime().map_err(io_err)?)
            .map_err(|_| Problem::Corrupt(format!("{name:?}: mtime out of range")))?,
    };
    let mut xattrs = Vec::new();
    for (key, value) in pending.pax.iter().flatten() {
        if key.starts_with(b"GNU.sparse.") {
            return Err(Problem::Unsupported {
                entry: name,
                reason: "sparse files are not supported".into(),
            }
            .into());
        }
        if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
            // A name with NUL would break the NUL-separated listings the
            // mount answers with; the kernel takes nothing longer.
            check_xattr(attr, value)
                .map_err(|reason| Problem::Corrupt(format!("{name:?}: {reason}")))?;
            xattrs.push((attr.to_vec(), value.clone()));
        }
    }
    xattrs.sort();
    let meta = EntryMeta {
        mode: header.mode().map_err(io_err)? & 0o7777,
        uid: id(uid, "uid", &name)?,
        gid: id(gid, "gid", &name)?,
        mtime,
        xattrs,
    };
    let need_link = || {
        link.clone()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| Problem::Corrupt(format!("link {name:?} has no target")))
    };
    let kind = match header.entry_type().as_byte() {
        // Old archives mark directories only by the trailing slash.
        b'0' | b'\0' | b'7' if path.ends_with(b"/") => EntryKind::Dir,
        b'0' | b'\0' | b'7' => EntryKind::File { size },
        b'1' => EntryKind::HardLink {
            target: need_link()?,
        },
        b'2' => EntryKind::Symlink {
            target: need_link()?,
        },
        b'3' => EntryKind::Special("a character device"),
        b'4' => EntryKind::Special("a block device"),
        b'5' => EntryKind::Dir,
        b'6' => EntryKind::Special("a FIFO"),
        b'S' => {
            return Err(Problem::Unsupported {
                entry: name,
                reason: "sparse files are not supported".into(),
            }
            .into());
        }
        other => {
            return Err(Problem::Unsupported {
                entry: name,
                reason: format!("unknown tar entry type {:?}", char::from(other)),
            }
            .into());
        }
    };
    Ok(ArchiveEntry { path, kind, meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::pax::record;

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h
    }

    fn read_all(bytes: &[u8]) -> ReadResult<Vec<(ArchiveEntry, Vec<u8>)>> {
        let budget = Budget::new(Limits::default());
        let mut out = Vec::new();
        read_tar(bytes, &budget, "test.tar", |e, r| {
            let mut data = Vec::new();
            r.read_to_end(&mut data)
                .map_err(|e| Failure::from_io(e, "x"))?;
            out.push((e, data));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_files_links_and_xattrs() {
        let mut b = tar::Builder::new(Vec::new());
        let mut pax = record(b"SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\n");
        pax.extend(record(b"path", b"a/very/long/name"));
        let mut ph = header(tar::EntryType::XHeader, pax.len() as u64);
        b.append_data(&mut ph, "PaxHeaders/x", &pax[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 5);
        b.append_data(&mut h, "short", &b"hello"[..]).unwrap();
        let mut l = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut l, "ln", "short").unwrap();
        let entries = read_all(&b.into_inner().unwrap()).unwrap();
        let (file, data) = &entries[0];
        assert_eq!(file.path, b"a/very/long/name");
        assert_eq!(data, b"hello");
        assert_eq!(file.meta.mode, 0o4755);
        assert_eq!((file.meta.uid, file.meta.gid), (1000, 100));
        assert_eq!(
            file.meta.xattrs,
            vec![(
                b"security.capability".to_vec(),
                b"\x01\x00\x00\x02\n".to_vec()
            )]
        );
        assert_eq!(
            entries[1].0.kind,
            EntryKind::Symlink {
                target: b"short".to_vec()
            }
        );
    }

    #[test]
    fn refuses_truncation_and_trailing_garbage() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 1000);
        b.append_data(&mut h, "f", &[7u8; 1000][..]).unwrap();
        let full = b.into_inner().unwrap();
        read_all(&full).unwrap();
        // Cut at the end of the last entry: no end-of-archive block.
        let err = read_all(&full[..512 + 1024]).unwrap_err();
        assert!(format!("{err:?}").contains("end-of-archive"), "{err:?}");
        // Cut inside the content.
        let err = read_all(&full[..700]);
        assert!(err.is_err());
        let mut junk = full.clone();
        junk.extend_from_slice(b"junk");
        let err = read_all(&junk).unwrap_err();
        assert!(
            format!("{err:?}").contains("after the end-of-archive"),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_sparse_and_oversized_claims() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0);
        h.set_size(1 << 40);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes[0] = b'f';
        let mut h2 = tar::Header::from_byte_slice(&bytes).clone();
        h2.set_cksum();
        b.append(&h2, &[][..]).ok();
        let data = b.into_inner().unwrap();
        let err = read_all(&data).unwrap_err();
        assert!(format!("{err:?}").contains("UnpackedSize"), "{err:?}");
    }

    #[test]
    fn refuses_xattrs_the_kernel_could_not_hold() {
        let long_name = [b"user.".to_vec(), vec![b'n'; 251]].concat();
        let cases: [(&[u8], Vec<u8>, &str); 4] = [
            (b"SCHILY.xattr.", b"v".to_vec(), "without a name"),
            (b"SCHILY.xattr.user.a\0b", b"v".to_vec(), "NUL"),
            (&long_name, b"v".to_vec(), "longer than 255"),
            (
                b"SCHILY.xattr.user.big",
                vec![7u8; 65537],
                "larger than 64 KiB",
            ),
        ];
        for (key, value, expect) in cases {
            let key = if key.starts_with(b"SCHILY") {
                key.to_vec()
            } else {
                [b"SCHILY.xattr.".as_slice(), key].concat()
            };
            let mut b = tar::Builder::new(Vec::new());
            let pax = record(&key, &value);
            let mut ph = header(tar::EntryType::XHeader, pax.len() as u64);
            b.append_data(&mut ph, "PaxHeaders/f", &pax[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, "f", &b"x"[..]).unwrap();
            let err = read_all(&b.into_inner().unwrap()).unwrap_err();
            assert!(format!("{err:?}").contains(expect), "{expect}: {err:?}");
        }
        // At the limits, accepted.
        let mut b = tar::Builder::new(Vec::new());
        let name = [b"SCHILY.xattr.user.".to_vec(), vec![b'n'; 250]].concat();
        let pax = record(&name, &vec![1u8; 65536]);
        let mut ph = header(tar::EntryType::XHeader, pax.len() as u64);
        b.append_data(&mut ph, "PaxHeaders/f", &pax[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 1);
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        read_all(&b.into_inner().unwrap()).unwrap();
    }
}
