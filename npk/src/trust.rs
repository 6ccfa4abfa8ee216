//! Whom this machine trusts, for what: the trust policy an archive's
//! signature is judged by.
//!
//! A key is trusted separately for packages and for images. A package key
//! may be limited to App names (glob patterns, as TUF delegates target
//! paths to a role or OSTree binds keys to a remote): a vendor's key then
//! signs the vendor's Apps and nothing else. An image replaces the whole
//! system, so an image key is a bigger grant; each belongs to a trust
//! *domain* (a fleet, a channel), and image counters go up per domain, not
//! per key, so that rotating keys cannot replay an older image
//! (`crate::replay`).

use std::fmt;

use crate::error::{NpkError, Result, TrustError};
use crate::keys::{PublicKey, key_id};
use crate::manifest::ArchiveKind;

/// The trust domain of an image key trusted without naming one.
pub const DEFAULT_DOMAIN: &str = "images";

/// What a trusted key may sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Packages (kind 1) whose App name matches one of `apps`; every App
    /// when `apps` is empty.
    Packages {
        /// The App name patterns.
        apps: Vec<AppPattern>,
    },
    /// System images (kind 2) of the trust domain `domain`.
    Images {
        /// The trust domain.
        domain: String,
    },
}

impl Scope {
    /// The archive kind this scope is about.
    pub fn kind(&self) -> ArchiveKind {
        match self {
            Scope::Packages { .. } => ArchiveKind::Package,
            Scope::Images { .. } => ArchiveKind::Image,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Packages { apps } if apps.is_empty() => write!(f, "packages (every App)"),
            Scope::Packages { apps } => write!(f, "packages of Apps {}", patterns_text(apps)),
            Scope::Images { domain } => write!(f, "images of domain {domain}"),
        }
    }
}

/// `a,b,c`: the patterns as `apps` lines and messages spell them.
pub fn patterns_text(apps: &[AppPattern]) -> String {
    apps.iter()
        .map(|p| p.0.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A trusted key and what it may sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// What it may sign.
    pub scope: Scope,
    /// Trusted in the format-1 key store layout (`KEYS/trusted/`), which
    /// knew no scopes: such a key is honoured for packages of every App
    /// and for images of the default domain, as before, with a warning.
    pub legacy: bool,
}

impl TrustedKey {
    /// True when this key may sign the package of App `app`.
    pub fn allows_app(&self, app: &str) -> bool {
        match &self.scope {
            Scope::Packages { apps } => apps.is_empty() || apps.iter().any(|p| p.matches(app)),
            Scope::Images { .. } => false,
        }
    }

    /// The App patterns (`a*,b`) this grant restricts packages to, to be
    /// recorded with each package it signs (`restricted_to` in the
    /// catalog); `None` for a grant of every App (no patterns, or one that
    /// matches every name, `*`) and for an image key, whose images vouch
    /// for a whole system.
    pub fn restricted_to(&self) -> Option<String> {
        match &self.scope {
            Scope::Packages { apps }
                if !apps.is_empty() && !apps.iter().any(AppPattern::matches_every_app) =>
            {
                Some(patterns_text(apps))
            }
            Scope::Packages { .. } | Scope::Images { .. } => None,
        }
    }

    /// The trust domain of an image key.
    pub fn domain(&self) -> Option<&str> {
        match &self.scope {
            Scope::Images { domain } => Some(domain),
            Scope::Packages { .. } => None,
        }
    }

    /// Refuses the package of App `app` unless this key may sign it.
    pub fn check_app(&self, app: &str) -> Result<(), TrustError> {
        if self.allows_app(app) {
            return Ok(());
        }
        let patterns = match &self.scope {
            Scope::Packages { apps } => patterns_text(apps),
            Scope::Images { .. } => String::new(),
        };
        Err(TrustError::AppNotAllowed {
            id: self.key.id(),
            name: self.key.name.clone(),
            app: app.to_string(),
            patterns,
        })
    }
}

/// The keys whose signatures are accepted or refused: what verifying needs.
#[derive(Clone, Debug, Default)]
pub struct TrustSet {
    /// Trusted keys with their scopes (a key trusted for packages and for
    /// images is listed twice).
    pub trusted: Vec<TrustedKey>,
    /// Revoked keys (refused even if also trusted).
    pub revoked: Vec<PublicKey>,
}

impl TrustSet {
    /// The grant under which the key with these bytes may sign an archive
    /// of `kind`, or why it may not.
    pub fn check(&self, public: &[u8; 32], kind: ArchiveKind) -> Result<&TrustedKey, TrustError> {
        if let Some(k) = self.revoked.iter().find(|k| k.key.as_bytes() == public) {
            return Err(TrustError::Revoked {
                id: k.id(),
                name: k.name.clone(),
            });
        }
        let mut grants = self
            .trusted
            .iter()
            .filter(|t| t.key.key.as_bytes() == public)
            .peekable();
        let Some(first) = grants.peek().copied() else {
            return Err(TrustError::UnknownKey { id: key_id(public) });
        };
        // A format-1 grant is the weaker evidence: prefer a scoped one.
        let mut matching: Vec<&TrustedKey> = grants.filter(|t| t.scope.kind() == kind).collect();
        matching.sort_by_key(|t| t.legacy);
        match matching.first() {
            Some(grant) => {
                if grant.legacy {
                    tracing::warn!(
                        "key {} ({}) is trusted in the old key store layout, for packages and images alike; trust it again for what it signs and remove its file from trusted/",
                        grant.key.id(),
                        grant.key.name
                    );
                }
                Ok(grant)
            }
            None => Err(TrustError::WrongKind {
                id: first.key.id(),
                name: first.key.name.clone(),
                kind,
            }),
        }
    }

    /// Every key trusted for images of `domain`.
    pub fn domain_keys<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.trusted
            .iter()
            .filter(move |t| t.domain() == Some(domain))
            .map(|t| &t.key)
    }
}

/// A glob pattern over App names: `*` matches any run of characters
/// (also none), `?` any one character, everything else itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPattern(String);

impl AppPattern {
    /// Parses a pattern: 1 to 255 bytes of what App names may hold, plus
    /// `*` and `?`; no `,` (it separates patterns), `/` or whitespace.
    pub fn parse(text: &str) -> Result<AppPattern> {
        let bad = |why: &str| NpkError::Key(format!("invalid App pattern {text:?}: {why}"));
        if text.is_empty() || text.len() > 255 {
            return Err(bad("use 1 to 255 bytes"));
        }
        if text
            .chars()
            .any(|c| c == ',' || c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(bad("no ',', '/', spaces or control characters"));
        }
        Ok(AppPattern(text.to_string()))
    }

    /// Parses `a,b,c`.
    pub fn parse_list(text: &str) -> Result<Vec<AppPattern>> {
        text.split(',').map(AppPattern::parse).collect()
    }

    /// True when the pattern matches every App name (it is all `*`).
    pub fn matches_every_app(&self) -> bool {
        self.0.chars().all(|c| c == '*')
    }

    /// True when `app` matches.
    pub fn matches(&self, app: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let s: Vec<char> = app.chars().collect();
        // Iterative glob matching: on a mismatch, let the last `*` swallow
        // one more character (linear backtracking, no recursion).
        let (mut i, mut j) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while j < s.len() {
            if i < p.len() && (p[i] == '?' || (p[i] != '*' && p[i] == s[j])) {
                i += 1;
                j += 1;
            } else if i < p.len() && p[i] == '*' {
                star = Some((i, j));
                i += 1;
            } else if let Some((si, sj)) = star {
                i = si + 1;
                j = sj + 1;
                star = Some((si, sj + 1));
            } else {
                return false;
            }
        }
        p[i..].iter().all(|&c| c == '*')
    }
}

impl fmt::Display for AppPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Refuses a trust domain name that is not `[A-Za-z0-9._-]{1,64}`, starts
/// with `.` or `-`, or is 16 hex digits (the catalog's format-1 counter
/// records are named by such key ids, and a domain must not read one as
/// its own).
pub fn check_domain(domain: &str) -> Result<()> {
    let ok = !domain.is_empty()
        && domain.len() <= 64
        && !domain.starts_with(['.', '-'])
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !(domain.len() == 16 && domain.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(NpkError::Key(format!(
            "invalid trust domain {domain:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-', and not 16 hex digits"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_patterns_match_as_globs() {
        let p = |t: &str| AppPattern::parse(t).unwrap();
        assert!(p("vendor*").matches("vendor"));
        assert!(p("vendor*").matches("vendortool"));
        assert!(!p("vendor*").matches("openssh"));
        assert!(!p("vendor*").matches("xvendor"));
        assert!(p("*-tools").matches("acme-tools"));
        assert!(!p("*-tools").matches("acme-tools2"));
        assert!(p("lib?").matches("libc"));
        assert!(!p("lib?").matches("lib"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(p("*").matches("anything"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exactly"));
        assert!(p("żółw*").matches("żółwik"));
        for bad in ["", "a,b", "a/b", "a b", "x\u{7}"] {
            assert!(AppPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(AppPattern::parse_list("a*,b").unwrap().len(), 2);
        assert!(AppPattern::parse_list("a,,b").is_err());
    }

    #[test]
    fn only_a_grant_of_some_apps_is_recorded_as_restricted() {
        let key = crate::keys::PublicKey {
            name: "k".into(),
            key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
        };
        let grant = |scope| TrustedKey {
            key: key.clone(),
            scope,
            legacy: false,
        };
        let packages = |text: &str| Scope::Packages {
            apps: if text.is_empty() {
                Vec::new()
            } else {
                AppPattern::parse_list(text).unwrap()
            },
        };
        assert_eq!(
            grant(packages("acme-*,tool")).restricted_to().as_deref(),
            Some("acme-*,tool")
        );
        assert_eq!(grant(packages("")).restricted_to(), None);
        // `*` matches every App: no restriction, whatever else is listed.
        assert_eq!(grant(packages("acme-*,*")).restricted_to(), None);
        assert_eq!(grant(packages("**")).restricted_to(), None);
        assert_eq!(
            grant(Scope::Images {
                domain: DEFAULT_DOMAIN.into()
            })
            .restricted_to(),
            None
        );
    }

    #[test]
    fn domains_are_plain_names() {
        for good in ["images", "fleet-eu.2", "Prod_1"] {
            check_domain(good).unwrap();
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "a b",
            "0123456789abcdef",
            &"a".repeat(65),
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
    }
}
