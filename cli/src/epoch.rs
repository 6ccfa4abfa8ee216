//! The creation time recorded in archives.

use anyhow::{Context, Result};

/// `SOURCE_DATE_EPOCH` when set (reproducible builds), otherwise now.
pub fn source_date_epoch() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(nexus_store::store::now_secs()),
    }
}
