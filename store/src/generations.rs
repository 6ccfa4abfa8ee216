//! Generations: every change to the installed set is a new, numbered
//! generation holding the full package set and each App's `Current` choice.
//! The highest-numbered generation is the live one, so a change becomes
//! visible exactly when its transaction commits.

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

/// Adds `package` to `members`, making it its App's `Current` (installing a
/// version selects it, as in GoboLinux).
pub fn with_added(mut members: Vec<Member>, package: i64, name: &str) -> Vec<Member> {
    members.retain(|m| m.package != package);
    for m in members.iter_mut().filter(|m| m.name == name) {
        m.current = false;
    }
    members.push(Member {
        package,
        name: name.to_string(),
        current: true,
    });
    members
}

/// Removes `package`; if it was its App's `Current`, the most recently added
/// remaining version (highest package id) becomes `Current`.
pub fn with_removed(mut members: Vec<Member>, package: i64) -> Vec<Member> {
    let Some(pos) = members.iter().position(|m| m.package == package) else {
        return members;
    };
    let removed = members.remove(pos);
    if removed.current
        && let Some(next) = members
            .iter_mut()
            .filter(|m| m.name == removed.name)
            .max_by_key(|m| m.package)
    {
        next.current = true;
    }
    members
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

/// True when two member lists describe the same installed state.
pub fn same_state(a: &[Member], b: &[Member]) -> bool {
    let key = |m: &[Member]| {
        let mut v: Vec<(i64, bool)> = m.iter().map(|x| (x.package, x.current)).collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(package: i64, name: &str, current: bool) -> Member {
        Member {
            package,
            name: name.into(),
            current,
        }
    }

    #[test]
    fn adding_selects_the_new_version() {
        let members = with_added(vec![m(1, "hello", true), m(2, "jq", true)], 3, "hello");
        assert_eq!(
            members,
            vec![m(1, "hello", false), m(2, "jq", true), m(3, "hello", true)]
        );
    }

    #[test]
    fn removing_current_falls_back_to_latest_remaining() {
        let members = vec![
            m(1, "hello", false),
            m(4, "hello", false),
            m(5, "hello", true),
        ];
        let after = with_removed(members, 5);
        assert_eq!(after, vec![m(1, "hello", false), m(4, "hello", true)]);
        let after = with_removed(after, 1);
        assert_eq!(after, vec![m(4, "hello", true)]);
    }
}
