//! The rows of generations: reading a generation's members, the live
//! generation, and recording a new one, inside the caller's transaction.

use rusqlite::{Transaction, params};

use crate::error::Result;

/// One member of a generation while it is being computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Package id.
    pub package: i64,
    /// App name (to keep one `Current` per App).
    pub name: String,
    /// Is this the App's `Current` version.
    pub current: bool,
}

/// Reads the members of a generation inside a transaction.
pub fn members_of(tx: &Transaction<'_>, generation: Option<i64>) -> Result<Vec<Member>> {
    let Some(generation) = generation else {
        return Ok(Vec::new());
    };
    let mut stmt = tx.prepare(
        "SELECT gp.package, p.name, gp.current FROM generation_packages gp
         JOIN packages p ON p.id = gp.package WHERE gp.generation = ?1 ORDER BY gp.package",
    )?;
    let rows = stmt.query_map([generation], |r| {
        Ok(Member {
            package: r.get(0)?,
            name: r.get(1)?,
            current: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The current (highest) generation, read inside a transaction.
pub fn current_in(tx: &Transaction<'_>) -> Result<Option<i64>> {
    Ok(tx.query_row("SELECT max(id) FROM generations", [], |r| r.get(0))?)
}

/// Records a new generation with the given members and returns its number.
pub fn create(
    tx: &Transaction<'_>,
    action: &str,
    restores: Option<i64>,
    members: &[Member],
) -> Result<i64> {
    let now = crate::store::now_secs();
    tx.execute(
        "INSERT INTO generations(created, action, restores) VALUES (?1, ?2, ?3)",
        params![now, action, restores],
    )?;
    let id = tx.last_insert_rowid();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO generation_packages(generation, package, current) VALUES (?1, ?2, ?3)",
    )?;
    for m in members {
        stmt.execute(params![id, m.package, m.current])?;
    }
    Ok(id)
}

/// Fails unless generation `generation` exists, inside a transaction.
pub fn require_in(tx: &Transaction<'_>, generation: i64) -> Result<()> {
    let exists: bool = tx.query_row(
        "SELECT count(*) FROM generations WHERE id = ?1",
        [generation],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(crate::generations::missing(generation))
    }
}
