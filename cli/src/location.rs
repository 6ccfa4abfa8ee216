//! The store's default location.

use std::path::PathBuf;

/// Where the store lives when neither `--store` nor `NEXUS_STORE` is given:
/// `/var/lib/nexus` for root, `$XDG_DATA_HOME/nexus` (default
/// `~/.local/share/nexus`) for everyone else.
pub fn default_store_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/nexus");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("nexus");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/nexus")
}
