//! The view's error type and its mapping to errno values, which every
//! transport (FUSE, virtio-fs) speaks.

use nexus_store::StoreError;

/// Why a view operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// No such entry or inode (also: an inode a generation switch or gc took
    /// away).
    #[error("no such file or directory")]
    NotFound,
    /// A directory operation on something else.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// `readlink` on something that is not a symlink, or `open` of one.
    #[error("not a symbolic link or regular file as the operation requires")]
    WrongKind,
    /// The extended attribute does not exist.
    #[error("no such extended attribute")]
    NoXattr,
    /// An extended attribute of a kind the store does not keep labels of
    /// (`security.selinux` where a package carries none).
    #[error("extended attribute not supported")]
    XattrUnsupported,
    /// A file or directory handle the view did not hand out (or already
    /// released).
    #[error("unknown handle {0}")]
    BadHandle(u64),
    /// The fixed generation asked for does not exist.
    #[error("generation {0} does not exist (or was removed by gc)")]
    NoGeneration(i64),
    /// A pack named by the catalog is missing: gc may have moved its chunks;
    /// opening a file looks the chunk locations up again once.
    #[error("pack file missing: {0}")]
    PackMissing(String),
    /// The catalog holds something this build cannot present (an inode id
    /// beyond the inode number space, a chunk list that does not add up).
    #[error("inconsistent catalog: {0}")]
    Inconsistent(String),
    /// The store failed, including `Damaged` when stored bytes fail
    /// verification: then no data is returned at all.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ViewError {
    /// The errno a transport answers with.
    pub fn errno(&self) -> i32 {
        match self {
            ViewError::NotFound | ViewError::NoGeneration(_) => libc::ENOENT,
            ViewError::NotDir => libc::ENOTDIR,
            ViewError::IsDir => libc::EISDIR,
            ViewError::WrongKind => libc::EINVAL,
            ViewError::NoXattr => libc::ENODATA,
            ViewError::XattrUnsupported => libc::EOPNOTSUPP,
            ViewError::BadHandle(_) => libc::EBADF,
            ViewError::PackMissing(_) | ViewError::Inconsistent(_) | ViewError::Store(_) => {
                libc::EIO
            }
        }
    }

    /// True for errors that mean the store is damaged or inconsistent (worth
    /// a log line), as opposed to ordinary answers like "no such file".
    pub fn is_serious(&self) -> bool {
        self.errno() == libc::EIO
    }
}

/// Result alias of the view.
pub type Result<T, E = ViewError> = std::result::Result<T, E>;
