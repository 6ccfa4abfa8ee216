//! SQLite inside a confined process.
//!
//! When SQLite cannot open a catalog's WAL for writing it opens it
//! read-only, as a reader confined to reading the catalog wants, but first
//! asks `access(2)` whether the file exists. `access` checks with the real
//! user and without capabilities: a daemon whose real user is its sandbox
//! user, reading a private store through the capabilities it kept, is told
//! `EACCES`, and SQLite then fails the connection ("the directory is read-
//! only") instead of opening the WAL read-only. Checking with the
//! effective user and capabilities instead (`AT_EACCESS`) is what the
//! process's own opens use.

use std::ffi::{c_char, c_int};

use rusqlite::ffi;

use crate::error::{Result, StoreError};

/// `access` as SQLite calls it, answered for the effective user.
unsafe extern "C" fn access_as_effective_user(path: *const c_char, mode: c_int) -> c_int {
    // SAFETY: `path` is SQLite's NUL-terminated file name.
    unsafe { libc::faccessat(libc::AT_FDCWD, path, mode, libc::AT_EACCESS) }
}

/// Makes SQLite's default VFS check file access as the effective user (see
/// the module documentation). For the whole process; call it before the
/// connections that need it are opened, while no other thread opens one.
pub fn check_access_as_effective_user() -> Result<()> {
    let failed = |why: &str| StoreError::Invalid(format!("SQLite's file access check: {why}"));
    // SAFETY: sqlite3_vfs_find returns the registered default VFS, which
    // lives as long as the process; xSetSystemCall replaces one entry of
    // its system call table with a function of the same signature as
    // `access(2)`.
    unsafe {
        let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
        if vfs.is_null() {
            return Err(failed("no default VFS"));
        }
        let Some(set) = (*vfs).xSetSystemCall else {
            return Err(failed("the VFS cannot replace its system calls"));
        };
        let access: unsafe extern "C" fn(*const c_char, c_int) -> c_int = access_as_effective_user;
        let rc = set(
            vfs,
            c"access".as_ptr(),
            Some(std::mem::transmute::<
                unsafe extern "C" fn(*const c_char, c_int) -> c_int,
                unsafe extern "C" fn(),
            >(access)),
        );
        if rc != ffi::SQLITE_OK {
            return Err(failed(&format!("replacing access failed ({rc})")));
        }
    }
    Ok(())
}
