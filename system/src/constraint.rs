//! Version constraints of profiles: `*`, `= V`, `>= V`, `> V`, `<= V`,
//! `< V`, and several of them joined by `,` (all must hold), compared with
//! Debian's version ordering ([`crate::version`]).

use std::cmp::Ordering;
use std::fmt;

use crate::version::compare;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Gt => ord == Ordering::Greater,
            Op::Le => ord != Ordering::Greater,
            Op::Lt => ord == Ordering::Less,
        }
    }
}

/// A version constraint: every clause must hold; no clause is `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    clauses: Vec<(Op, String)>,
}

/// Why a constraint does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadConstraint(pub String);

impl Constraint {
    /// Any version (`*`).
    pub fn any() -> Self {
        Constraint {
            clauses: Vec::new(),
        }
    }

    /// Parses `*`, `OP VERSION`, or clauses joined by `,`.
    pub fn parse(text: &str) -> Result<Self, BadConstraint> {
        let text = text.trim();
        if text == "*" {
            return Ok(Constraint::any());
        }
        let mut clauses = Vec::new();
        for clause in text.split(',') {
            let clause = clause.trim();
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("==", Op::Eq),
                ("=", Op::Eq),
            ]
            .into_iter()
            .find_map(|(s, op)| clause.strip_prefix(s).map(|r| (op, r)))
            .ok_or_else(|| {
                BadConstraint(if clause.is_empty() {
                    "empty clause".into()
                } else {
                    format!("`{clause}` has no operator")
                })
            })?;
            let version = rest.trim();
            if version.is_empty() {
                return Err(BadConstraint(format!(
                    "`{clause}` has no version after `{}`",
                    op.symbol()
                )));
            }
            if version.contains(char::is_whitespace) || version.contains(['<', '>', '=', '*']) {
                return Err(BadConstraint(format!("`{version}` is not a version")));
            }
            clauses.push((op, version.to_string()));
        }
        Ok(Constraint { clauses })
    }

    /// True if `version` satisfies every clause.
    pub fn matches(&self, version: &str) -> bool {
        self.clauses
            .iter()
            .all(|(op, v)| op.holds(compare(version, v)))
    }

    /// The version of an `= V` constraint (one clause), which names exactly
    /// one version.
    pub fn exact(&self) -> Option<&str> {
        match self.clauses.as_slice() {
            [(Op::Eq, v)] => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.clauses.is_empty() {
            return f.write_str("*");
        }
        let parts: Vec<String> = self
            .clauses
            .iter()
            .map(|(op, v)| format!("{} {v}", op.symbol()))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let c = Constraint::parse(">= 1.6, < 2").unwrap();
        assert!(c.matches("1.6-2.1+deb12u3"));
        assert!(!c.matches("1.5"));
        assert!(!c.matches("2.0"));
        assert_eq!(c.to_string(), ">= 1.6, < 2");
        assert!(Constraint::parse("*").unwrap().matches("anything"));
        let eq = Constraint::parse("= 2.10-3").unwrap();
        assert_eq!(eq.exact(), Some("2.10-3"));
        assert!(eq.matches("2.10-3") && !eq.matches("2.10-6"));
        assert!(Constraint::parse(">1").unwrap().matches("1.1"));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "1.6", ">=", ">= 1.6,", "~> 1.2", ">= 1 2", "=> 1"] {
            assert!(Constraint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
