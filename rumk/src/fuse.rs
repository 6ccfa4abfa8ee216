//! A small FUSE client (protocol 7.31) over virtio-fs: INIT, LOOKUP,
//! GETATTR, OPEN, READ, RELEASE, OPENDIR, READDIRPLUS, RELEASEDIR,
//! READLINK, GETXATTR and FORGET.
//!
//! Nothing in a reply is trusted: each one is checked for its header
//! (length equal to the bytes the device wrote, our unique id, an errno in
//! range) and each structure is read with bounds from the reply body, never
//! past it. OPENDIR and RELEASEDIR are needed because READDIRPLUS reads
//! through a directory handle; OPEN may be answered with ENOSYS (the
//! store's view does so: reads need no handle), which is taken, as the
//! Linux client does, as "no open needed".

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::virtio_fs;

const FUSE_MAJOR: u32 = 7;
const FUSE_MINOR: u32 = 31;

const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const READLINK: u32 = 5;
const OPEN: u32 = 14;
const READ: u32 = 15;
const RELEASE: u32 = 18;
const GETXATTR: u32 = 22;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const RELEASEDIR: u32 = 29;
const READDIRPLUS: u32 = 44;

/// The root directory's node id.
pub const ROOT: u64 = 1;
const ENOSYS: i32 = 38;
/// The largest errno a reply may carry.
const MAX_ERRNO: i32 = 4095;

/// Bytes of reply body this client accepts: the largest READ or
/// READDIRPLUS it asks for.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest request: header, the largest fixed argument, a name.
const MAX_REQUEST: usize = 512;
/// The longest name sent (NAME_MAX).
const NAME_MAX: usize = 255;

/// `S_IFMT` and the file types of `fuse_attr.mode`.
pub const S_IFMT: u32 = 0o170_000;
/// A directory.
pub const S_IFDIR: u32 = 0o040_000;
/// A regular file.
pub const S_IFREG: u32 = 0o100_000;
/// A symbolic link.
pub const S_IFLNK: u32 = 0o120_000;

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct InHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Default)]
#[repr(C)]
struct OutHeader {
    len: u32,
    error: i32,
    unique: u64,
}
const OUT_HEADER: usize = size_of::<OutHeader>();

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct InitIn {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
}

/// The part of `fuse_init_out` every protocol minor since 7.5 carries.
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct InitOut {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_background: u16,
    congestion_threshold: u16,
    max_write: u32,
}

/// `fuse_attr`.
#[derive(FromBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    /// File type and permissions.
    pub mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: u32,
    flags: u32,
}

impl Attr {
    /// The file type bits of `mode`.
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// `fuse_entry_out`.
#[derive(FromBytes, KnownLayout, Immutable, Clone, Copy)]
#[repr(C)]
pub struct Entry {
    /// The node id to use in later requests (and to FORGET).
    pub nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    /// The attributes.
    pub attr: Attr,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct AttrOut {
    attr_valid: u64,
    attr_valid_nsec: u32,
    dummy: u32,
    attr: Attr,
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct GetattrIn {
    getattr_flags: u32,
    dummy: u32,
    fh: u64,
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct OpenIn {
    flags: u32,
    open_flags: u32,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct OpenOut {
    fh: u64,
    open_flags: u32,
    padding: u32,
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct ReadIn {
    fh: u64,
    offset: u64,
    size: u32,
    read_flags: u32,
    lock_owner: u64,
    flags: u32,
    padding: u32,
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct ReleaseIn {
    fh: u64,
    flags: u32,
    release_flags: u32,
    lock_owner: u64,
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct GetxattrIn {
    size: u32,
    padding: u32,
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct ForgetIn {
    nlookup: u64,
}

/// `fuse_dirent` without its name.
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Dirent {
    ino: u64,
    off: u64,
    namelen: u32,
    kind: u32,
}

/// Why a FUSE request failed.
#[derive(Debug)]
pub enum Error {
    /// The device could not carry the request.
    Device(virtio_fs::Error),
    /// The file system answered with this errno.
    Errno(i32),
    /// The reply was malformed: its header, its length or a structure in it.
    Protocol(&'static str),
    /// A name longer than NAME_MAX or containing a NUL.
    BadName,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Device(e) => write!(f, "device: {e}"),
            Error::Errno(n) => write!(f, "errno {n} ({})", errno_name(*n)),
            Error::Protocol(what) => write!(f, "malformed reply: {what}"),
            Error::BadName => write!(f, "name too long or containing NUL"),
        }
    }
}

/// Common errno names, for the console.
fn errno_name(n: i32) -> &'static str {
    match n {
        2 => "ENOENT",
        5 => "EIO",
        13 => "EACCES",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        34 => "ERANGE",
        38 => "ENOSYS",
        40 => "ELOOP",
        61 => "ENODATA",
        _ => "?",
    }
}

/// What carries FUSE messages: the virtio-fs device ([`virtio_fs::VirtioFs`]),
/// or a scripted server in the unit tests.
pub trait Channel {
    /// Sends `request` and waits for the reply in `header` then `body`;
    /// returns the bytes written.
    fn call(
        &mut self,
        request: &[u8],
        header: &mut [u8],
        body: &mut [u8],
    ) -> Result<usize, virtio_fs::Error>;

    /// Sends `request`, which has no reply.
    fn send(&mut self, request: &[u8]) -> Result<(), virtio_fs::Error>;

    /// The file system's tag.
    fn tag(&self) -> &str;
}

/// One directory entry from READDIRPLUS.
pub struct DirEntry<'a> {
    /// The entry's name (never `.` or `..`).
    pub name: &'a [u8],
    /// The entry as a LOOKUP would have returned it; node id 0 when the
    /// server sent no entry (then it holds no lookup count).
    pub entry: Entry,
}

/// A FUSE session over one virtio-fs device.
pub struct Session<C: Channel> {
    device: C,
    unique: u64,
    request: [u8; MAX_REQUEST],
    header: [u8; OUT_HEADER],
    body: [u8; MAX_BODY],
    /// What the server allows per READ: the negotiated `max_write` caps
    /// its buffers too.
    max_read: u32,
    /// The server's protocol minor version.
    pub minor: u32,
}

impl<C: Channel> Session<C> {
    /// Starts a session: INIT, protocol 7.x with no optional features.
    pub fn init(device: C) -> Result<Self, Error> {
        let mut s = Session {
            device,
            unique: 0,
            request: [0; MAX_REQUEST],
            header: [0; OUT_HEADER],
            body: [0; MAX_BODY],
            max_read: MAX_BODY as u32,
            minor: 0,
        };
        let init = InitIn {
            major: FUSE_MAJOR,
            minor: FUSE_MINOR,
            max_readahead: 0,
            flags: 0,
        };
        let n = s.call(INIT, 0, &[init.as_bytes()], MAX_BODY)?;
        let (out, _) = InitOut::read_from_prefix(&s.body[..n])
            .map_err(|_| Error::Protocol("short INIT reply"))?;
        if out.major != FUSE_MAJOR {
            return Err(Error::Protocol("server speaks another FUSE major version"));
        }
        s.minor = out.minor;
        // max_write bounds the server's buffers; a zero or tiny value would
        // stall reads, so at least a page is asked for.
        s.max_read = out.max_write.clamp(4096, MAX_BODY as u32);
        Ok(s)
    }

    /// The virtio-fs tag.
    pub fn tag(&self) -> &str {
        self.device.tag()
    }

    /// The channel, for the tests to inspect.
    #[cfg(test)]
    pub fn device_for_tests(&self) -> &C {
        &self.device
    }

    /// Sends one request (`args` concatenated after the header) and returns
    /// the length of the checked reply body (at most `want` bytes).
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        want: usize,
    ) -> Result<usize, Error> {
        self.unique = self.unique.wrapping_add(1);
        let len = size_of::<InHeader>() + args.iter().map(|a| a.len()).sum::<usize>();
        if len > MAX_REQUEST {
            return Err(Error::BadName);
        }
        let header = InHeader {
            len: len as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 0,
            total_extlen: 0,
            padding: 0,
        };
        let mut at = 0;
        for part in core::iter::once(header.as_bytes()).chain(args.iter().copied()) {
            self.request[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let want = want.min(MAX_BODY);
        let written = self
            .device
            .call(
                &self.request[..len],
                &mut self.header,
                &mut self.body[..want],
            )
            .map_err(Error::Device)?;
        if written < OUT_HEADER {
            return Err(Error::Protocol("reply shorter than its header"));
        }
        if written > OUT_HEADER + want {
            return Err(Error::Protocol("reply longer than its buffers"));
        }
        let out = OutHeader::read_from_bytes(&self.header)
            .map_err(|_| Error::Protocol("reply header"))?;
        if out.unique != self.unique {
            return Err(Error::Protocol("reply to another request"));
        }
        if out.len as usize != written {
            return Err(Error::Protocol(
                "reply length differs from the bytes written",
            ));
        }
        if out.error != 0 {
            if !(-MAX_ERRNO..0).contains(&out.error) {
                return Err(Error::Protocol("errno out of range"));
            }
            return Err(Error::Errno(-out.error));
        }
        Ok(written - OUT_HEADER)
    }

    /// Formats `name` as a NUL-terminated argument into `buf`.
    fn name_arg<'b>(name: &[u8], buf: &'b mut [u8; NAME_MAX + 1]) -> Result<&'b [u8], Error> {
        if name.is_empty() || name.len() > NAME_MAX || name.contains(&0) {
            return Err(Error::BadName);
        }
        buf[..name.len()].copy_from_slice(name);
        buf[name.len()] = 0;
        Ok(&buf[..=name.len()])
    }

    /// LOOKUP `name` in directory `parent`. The caller owes a FORGET.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Entry, Error> {
        let mut buf = [0; NAME_MAX + 1];
        let arg = Self::name_arg(name, &mut buf)?;
        let n = self.call(LOOKUP, parent, &[arg], size_of::<Entry>())?;
        let (entry, _) =
            Entry::read_from_prefix(&self.body[..n]).map_err(|_| Error::Protocol("short entry"))?;
        if entry.nodeid == 0 {
            return Err(Error::Errno(2));
        }
        Ok(entry)
    }

    /// FORGET `nlookup` lookups of `nodeid` (no reply).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<(), Error> {
        if nodeid == 0 || nodeid == ROOT || nlookup == 0 {
            return Ok(());
        }
        self.unique = self.unique.wrapping_add(1);
        let header = InHeader {
            len: (size_of::<InHeader>() + size_of::<ForgetIn>()) as u32,
            opcode: FORGET,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 0,
            total_extlen: 0,
            padding: 0,
        };
        let mut req = [0u8; size_of::<InHeader>() + size_of::<ForgetIn>()];
        req[..size_of::<InHeader>()].copy_from_slice(header.as_bytes());
        req[size_of::<InHeader>()..].copy_from_slice(ForgetIn { nlookup }.as_bytes());
        self.device.send(&req).map_err(Error::Device)
    }

    /// GETATTR of `nodeid`.
    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr, Error> {
        let arg = GetattrIn {
            getattr_flags: 0,
            dummy: 0,
            fh: 0,
        };
        let n = self.call(GETATTR, nodeid, &[arg.as_bytes()], size_of::<AttrOut>())?;
        let (out, _) = AttrOut::read_from_prefix(&self.body[..n])
            .map_err(|_| Error::Protocol("short attr"))?;
        Ok(out.attr)
    }

    /// READLINK of `nodeid`: the target, copied into `out`.
    pub fn readlink<'o>(&mut self, nodeid: u64, out: &'o mut [u8]) -> Result<&'o [u8], Error> {
        let n = self.call(READLINK, nodeid, &[], out.len())?;
        out[..n].copy_from_slice(&self.body[..n]);
        Ok(&out[..n])
    }

    /// GETXATTR `name` of `nodeid` into `out` (at most `out.len()` bytes;
    /// a longer value is ERANGE).
    pub fn getxattr<'o>(
        &mut self,
        nodeid: u64,
        name: &[u8],
        out: &'o mut [u8],
    ) -> Result<&'o [u8], Error> {
        let mut buf = [0; NAME_MAX + 1];
        let arg = Self::name_arg(name, &mut buf)?;
        let size = GetxattrIn {
            size: out.len() as u32,
            padding: 0,
        };
        let n = self.call(GETXATTR, nodeid, &[size.as_bytes(), arg], out.len())?;
        out[..n].copy_from_slice(&self.body[..n]);
        Ok(&out[..n])
    }

    /// OPEN `nodeid` read-only: `Some(fh)`, or `None` when the server
    /// needs no open (ENOSYS) and reads go by node id alone.
    pub fn open(&mut self, nodeid: u64) -> Result<Option<u64>, Error> {
        self.open_as(OPEN, nodeid)
    }

    /// OPENDIR `nodeid`: the handle for READDIRPLUS.
    pub fn opendir(&mut self, nodeid: u64) -> Result<u64, Error> {
        self.open_as(OPENDIR, nodeid)?
            .ok_or(Error::Protocol("OPENDIR answered ENOSYS"))
    }

    fn open_as(&mut self, opcode: u32, nodeid: u64) -> Result<Option<u64>, Error> {
        let arg = OpenIn {
            flags: 0, // O_RDONLY
            open_flags: 0,
        };
        match self.call(opcode, nodeid, &[arg.as_bytes()], size_of::<OpenOut>()) {
            Ok(n) => {
                let (out, _) = OpenOut::read_from_prefix(&self.body[..n])
                    .map_err(|_| Error::Protocol("short open reply"))?;
                Ok(Some(out.fh))
            }
            Err(Error::Errno(ENOSYS)) if opcode == OPEN => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// RELEASE (or RELEASEDIR with `dir`) handle `fh` of `nodeid`.
    pub fn release(&mut self, nodeid: u64, fh: u64, dir: bool) -> Result<(), Error> {
        let arg = ReleaseIn {
            fh,
            flags: 0,
            release_flags: 0,
            lock_owner: 0,
        };
        let opcode = if dir { RELEASEDIR } else { RELEASE };
        self.call(opcode, nodeid, &[arg.as_bytes()], 0).map(|_| ())
    }

    /// READ up to `size` bytes at `offset`; the bytes are valid until the
    /// next request. Never more than asked for.
    pub fn read(
        &mut self,
        nodeid: u64,
        fh: Option<u64>,
        offset: u64,
        size: u32,
    ) -> Result<&[u8], Error> {
        let size = size.min(self.max_read);
        let arg = ReadIn {
            fh: fh.unwrap_or(0),
            offset,
            size,
            read_flags: 0,
            lock_owner: 0,
            flags: 0,
            padding: 0,
        };
        let n = self.call(READ, nodeid, &[arg.as_bytes()], size as usize)?;
        Ok(&self.body[..n])
    }

    /// The largest READ the session asks for.
    pub fn max_read(&self) -> u32 {
        self.max_read
    }

    /// READDIRPLUS on handle `fh` of `nodeid` from `offset`: calls `each`
    /// for every entry but `.` and `..`; returns the offset to continue
    /// from, or `None` at the end of the directory. Entries with a node id
    /// hold a lookup count: `each` must see it forgotten or kept.
    pub fn readdirplus(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        mut each: impl FnMut(&DirEntry<'_>),
    ) -> Result<Option<u64>, Error> {
        let arg = ReadIn {
            fh,
            offset,
            size: MAX_BODY as u32,
            read_flags: 0,
            lock_owner: 0,
            flags: 0,
            padding: 0,
        };
        let n = self.call(READDIRPLUS, nodeid, &[arg.as_bytes()], MAX_BODY)?;
        if n == 0 {
            return Ok(None);
        }
        let mut rest = &self.body[..n];
        let mut next = offset;
        while !rest.is_empty() {
            let (entry, after) =
                Entry::read_from_prefix(rest).map_err(|_| Error::Protocol("short direntplus"))?;
            let (dirent, after) =
                Dirent::read_from_prefix(after).map_err(|_| Error::Protocol("short dirent"))?;
            let namelen = dirent.namelen as usize;
            if namelen == 0 || namelen > NAME_MAX || namelen > after.len() {
                return Err(Error::Protocol("dirent name length"));
            }
            let name = &after[..namelen];
            // Each entry is padded to 8 bytes.
            let record = size_of::<Entry>() + size_of::<Dirent>() + namelen;
            let padded = record.next_multiple_of(8).min(rest.len());
            next = dirent.off;
            if name != b"." && name != b".." {
                each(&DirEntry { name, entry });
            }
            rest = &rest[padded..];
        }
        // A server that hands back the offset it was given would make the
        // caller loop for ever.
        if next == offset {
            return Err(Error::Protocol("directory offset did not advance"));
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfs::TestFs;

    fn session(fs: TestFs) -> Session<TestFs> {
        Session::init(fs).unwrap_or_else(|e| panic!("INIT: {e}"))
    }

    #[test]
    fn init_takes_the_servers_version_and_read_size() {
        let s = session(TestFs::new());
        assert_eq!(s.minor, 33);
        assert_eq!(s.max_read(), 8192);
    }

    #[test]
    fn a_reply_to_another_request_is_refused() {
        let mut fs = TestFs::new();
        fs.wrong_unique = true;
        assert!(matches!(
            Session::init(fs),
            Err(Error::Protocol("reply to another request"))
        ));
    }

    #[test]
    fn a_reply_claiming_more_bytes_than_it_holds_is_refused() {
        let mut s = session(TestFs::new());
        s.device.lie_about_length = true;
        assert!(matches!(s.lookup(ROOT, b"hello"), Err(Error::Protocol(_))));
    }

    #[test]
    fn errors_and_bad_names_are_reported() {
        let mut s = session(TestFs::new());
        assert!(matches!(s.lookup(ROOT, b"nope"), Err(Error::Errno(2))));
        assert!(matches!(s.lookup(ROOT, b"a\0b"), Err(Error::BadName)));
        assert!(matches!(s.lookup(ROOT, &[b'x'; 256]), Err(Error::BadName)));
        assert_eq!(s.open(6).ok(), Some(None), "ENOSYS means no open needed");
    }

    #[test]
    fn readdirplus_lists_names_and_reads_are_bounded() {
        let mut s = session(TestFs::new());
        let fh = s.opendir(2).unwrap_or_else(|e| panic!("{e}"));
        let mut names = std::vec::Vec::new();
        let next = s
            .readdirplus(2, fh, 0, |d| names.push(d.name.to_vec()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(names, [b"1.0".to_vec(), b"Current".to_vec()]);
        let end = s
            .readdirplus(2, fh, next.unwrap_or(0), |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(end, None);
        let data = s.read(6, None, 0, 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data, b"hell");
    }
}
