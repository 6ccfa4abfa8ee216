//! Multi-row `INSERT`s: many rows per statement execution.
//!
//! A commit writes hundreds of thousands of rows (a pulled generation of
//! 212 packages: about 90 000 chunks, 70 000 blobs, 94 000 inodes and as
//! many directory entries). Executed one row per statement, the
//! per-statement work — binding, opening a cursor on the table and each of
//! its indexes, and for `AUTOINCREMENT` tables reading and rewriting the
//! table's `sqlite_sequence` row — cost more than the rows. Here rows go
//! in [`ROWS`] at a time (the rest in statements of halving sizes, so a
//! handful of statements are prepared once and cached).
//!
//! Statements say `INSERT OR FAIL`: a statement that writes several rows
//! and may abort makes SQLite keep a statement journal (a temporary file
//! of every page it changes, to undo that statement alone), which cost as
//! much as the rows; a FAIL undoes nothing, and nothing needs undoing: any
//! error rolls the whole transaction back.
//!
//! Rows are inserted in the order given, and an `AUTOINCREMENT` table gives
//! each new row an id above every id it ever had: the new rows' ids, in
//! id order, follow the order of the rows.

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use crate::error::Result;

/// Rows per statement (and the largest statement prepared).
pub(crate) const ROWS: usize = 64;

/// One value of a row, borrowed from the caller's data where it can be.
pub(crate) type Cell<'a> = ToSqlOutput<'a>;

/// An integer cell.
pub(crate) fn int(v: i64) -> Cell<'static> {
    ToSqlOutput::Owned(Value::Integer(v))
}

/// A blob cell.
pub(crate) fn blob(v: &[u8]) -> Cell<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(v))
}

/// An integer cell, or NULL.
pub(crate) fn opt_int(v: Option<i64>) -> Cell<'static> {
    ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer))
}

/// A blob cell, or NULL.
pub(crate) fn opt_blob(v: Option<&[u8]>) -> Cell<'_> {
    v.map_or(ToSqlOutput::Owned(Value::Null), blob)
}

/// Inserts the rows of `cells` (`columns` cells a row, row after row) as
/// `{head} VALUES (?, …), … {tail}`: `head` is `INSERT OR FAIL INTO`
/// a table and its columns, `tail` an optional upsert clause. Called
/// inside a transaction that an error rolls back.
pub(crate) fn insert(
    conn: &Connection,
    head: &str,
    tail: &str,
    columns: usize,
    cells: &[Cell<'_>],
) -> Result<()> {
    debug_assert!(columns > 0 && cells.len().is_multiple_of(columns));
    let mut rest = cells;
    while !rest.is_empty() {
        let rows = rest.len() / columns;
        // The largest power of two not above min(rows, ROWS).
        let n = 1usize << (usize::BITS - 1 - rows.min(ROWS).leading_zeros());
        let (now, later) = rest.split_at(n * columns);
        let mut stmt = conn.prepare_cached(&sql(head, tail, columns, n))?;
        stmt.execute(rusqlite::params_from_iter(now.iter()))?;
        rest = later;
    }
    Ok(())
}

/// The statement inserting `rows` rows of `columns` values.
fn sql(head: &str, tail: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(","));
    format!("{head} VALUES {} {tail}", vec![row; rows].join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_lands_in_order_whatever_the_count() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, b BLOB UNIQUE)",
        )
        .unwrap();
        let mut expected = Vec::new();
        for count in [0usize, 1, 63, 64, 65, 200] {
            let keys: Vec<Vec<u8>> = (0..count)
                .map(|i| format!("{count}-{i}").into_bytes())
                .collect();
            let mut cells = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                cells.push(int(i as i64));
                cells.push(blob(k));
                expected.push((i as i64, k.clone()));
            }
            insert(&conn, "INSERT OR FAIL INTO t(a, b)", "", 2, &cells).unwrap();
        }
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare("SELECT a, b FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows, expected);
        // A conflict clause applies to every row.
        let again = [int(9), blob(b"1-0"), int(9), blob(b"new")];
        insert(
            &conn,
            "INSERT OR FAIL INTO t(a, b)",
            "ON CONFLICT(b) DO NOTHING",
            2,
            &again,
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, expected.len() + 1);
    }
}
