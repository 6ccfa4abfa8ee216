//! A restart on live mounts: a daemon whose predecessor died (a crash, a
//! kill) finds the predecessor's `/dev/fuse` descriptors in what systemd
//! passes it from the unit's file descriptor store (`FDSTORE=1`, see
//! `systemd`), and serves those mounts instead of mounting anew: the mount
//! never disappeared, and the requests the dead daemon had read are sent
//! again.
//!
//! What the dead daemon knew is lost with it: which inodes the kernel
//! holds (so files of packages no generation holds any more, open in
//! programs, read as gone until reopened, and gc does not keep them), and
//! the numbers its Index gave. The Index cannot be served without those
//! (a number would name another path), so its old mount is detached and a
//! new one made: the Index alone disappears for a moment. A takeover
//! (`nexus takeover`, `systemctl reload`) hands all of it over instead.
//!
//! Under a kernel view (`--kernel-metadata`) the main mount is found
//! beneath it, and its root, which its path no longer reaches, comes from
//! the store too: the dead daemon's view stays shown (its contents come
//! from the adopted mount) until the new daemon shows its own beneath it
//! and detaches it. A view no longer wanted, or whose root was not kept, is
//! detached first.

use std::sync::Arc;

use anyhow::{Context, Result};
use nexus_fs::View;
use nexus_fs::fuse;

use super::serve::{Mounts, Settings};
use super::{index, mounts, systemd};

/// The mounts of `settings` adopted from descriptors systemd passed, or
/// `None` when it passed none (or the mount they were for is gone).
pub(super) fn mounts(view: &Arc<View>, settings: &Settings) -> Result<Option<Mounts>> {
    let passed = systemd::passed_fds().context("reading the descriptors systemd passed")?;
    let (mut main_fd, mut index_fd, mut data_fd) = (None, None, None);
    for (fd, name) in passed {
        match name.as_str() {
            systemd::FUSE_FD_NAME => main_fd = Some(fd),
            systemd::INDEX_FD_NAME => index_fd = Some(fd),
            systemd::DATA_FD_NAME => data_fd = Some(fd),
            other => tracing::warn!("ignoring a descriptor named {other:?} from systemd"),
        }
    }
    let forget_all = || {
        for name in [
            systemd::FUSE_FD_NAME,
            systemd::INDEX_FD_NAME,
            systemd::DATA_FD_NAME,
        ] {
            systemd::remove_fd(name);
        }
    };
    let Some(main_fd) = main_fd else {
        if index_fd.is_some() || data_fd.is_some() {
            forget_all();
        }
        return Ok(None);
    };
    let mountpoint = &settings.mountpoint;
    if !mounts::find_served_mount(mountpoint)?.is_some_and(|m| m.is_nexus()) {
        tracing::warn!(
            "systemd kept a mount's descriptor, but {} is no nexus mount now: mounting afresh",
            mountpoint.display()
        );
        forget_all();
        return Ok(None);
    }
    // A root that is not the adopted mount's is dropped (logged): the view
    // is then detached and the root opened afresh.
    let had_data = data_fd.is_some();
    let data_fd = data_fd.and_then(|fd| {
        super::kernel_view::checked_root(fd, mountpoint)
            .inspect_err(|e| tracing::warn!("{e:#}"))
            .ok()
    });
    let kernel_data = match (settings.kernel_metadata, data_fd) {
        (true, Some(fd)) => Some(fd),
        (_, _) => {
            if had_data {
                systemd::remove_fd(systemd::DATA_FD_NAME);
            }
            while mounts::detach_top(mountpoint, mounts::kernel_view_on_top)? {
                tracing::info!(
                    "detached the previous daemon's kernel view on {}",
                    mountpoint.display()
                );
            }
            None
        }
    };
    tracing::info!(
        "resuming the live mount on {} that the previous daemon left",
        mountpoint.display()
    );
    let main = fuse::adopt(view.clone(), &[], main_fd, mountpoint, &settings.mount)
        .context("starting to serve the mount systemd kept")?;
    let index = match &settings.index {
        Some(dir) => {
            if let Some(fd) = index_fd {
                // Its numbers died with the old daemon: replace the mount,
                // and the kernel view's image over it.
                let old_index = |at: &[mounts::MountEntry]| {
                    mounts::kernel_view_on_top(at) || at.last().is_some_and(|m| m.is_nexus())
                };
                while mounts::detach_top(dir, old_index)
                    .with_context(|| format!("detaching the old index on {}", dir.display()))?
                {
                }
                systemd::remove_fd(systemd::INDEX_FD_NAME);
                drop(fd);
                tracing::info!(
                    "mounting the index on {} afresh: its numbers died with the previous daemon",
                    dir.display()
                );
            }
            Some(index::mount(
                view.clone(),
                mountpoint,
                dir,
                &settings.mount,
            )?)
        }
        None => None,
    };
    Ok(Some(Mounts {
        kernel_data,
        main,
        index,
        adopted: true,
    }))
}
