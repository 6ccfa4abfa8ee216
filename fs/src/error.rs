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
    /// An inode the catalog once held and gc has since deleted: a client's
    /// handle outlived the file.
    #[error("stale file handle (the file was garbage-collected)")]
    Stale,
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
    /// A directory handle that was not handed out (or already released).
    #[error("unknown handle {0}")]
    BadHandle(u64),
    /// Opening one more directory handle would exceed the client's limits.
    #[error("too many open directories")]
    TooManyOpen,
    /// The fixed generation asked for does not exist.
    #[error("generation {0} does not exist (or was removed by gc)")]
    NoGeneration(i64),
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
            ViewError::Stale => libc::ESTALE,
            ViewError::NotDir => libc::ENOTDIR,
            ViewError::IsDir => libc::EISDIR,
            ViewError::WrongKind => libc::EINVAL,
            ViewError::NoXattr => libc::ENODATA,
            ViewError::XattrUnsupported => libc::EOPNOTSUPP,
            ViewError::BadHandle(_) => libc::EBADF,
            ViewError::TooManyOpen => libc::EMFILE,
            ViewError::Inconsistent(_) | ViewError::Store(_) => libc::EIO,
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
