//! What to do about a refusal: the wording that names flags and commands,
//! which library errors leave out (they do not know which command ran).

use nexus_graft::{GraftError, Limit, LimitExceeded, OlderCurrent, Problem};
use nexus_npk::{ArchiveKind, NpkError, ReplayError, TrustError};
use nexus_store::StoreError;

/// A line telling the user how to get past `err`, when one applies.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    let mut found = None;
    for cause in err.chain() {
        visit(cause, &mut |e| {
            if found.is_none() {
                found = hint_for(e);
            }
        });
    }
    found
}

/// Calls `f` on `e` and on the typed errors it wraps without exposing them
/// as its `source` (transparent and boxed variants).
fn visit(
    e: &(dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    f(e);
    if let Some(GraftError::Npk { error, .. }) = e.downcast_ref::<GraftError>() {
        visit(error, f);
    }
    if let Some(GraftError::Store(s)) = e.downcast_ref::<GraftError>() {
        visit(s, f);
    }
    if let Some(NpkError::Trust(t)) = e.downcast_ref::<NpkError>() {
        visit(t, f);
    }
    if let Some(NpkError::Store(s)) = e.downcast_ref::<NpkError>() {
        visit(s, f);
    }
    if let Some(StoreError::Refused(inner)) = e.downcast_ref::<StoreError>() {
        visit(inner.as_ref(), f);
    }
}

fn hint_for(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(t) = e.downcast_ref::<TrustError>() {
        return match t {
            TrustError::Unsigned => Some(
                "import it anyway with --insecure (every chunk is still checked against its hash)"
                    .into(),
            ),
            TrustError::UnknownKey { .. } => Some(
                "trust the signer's public key with `nip key trust FILE --for packages` (or `--for images`), or use --insecure"
                    .into(),
            ),
            TrustError::WrongKind { kind, .. } => Some(match kind {
                ArchiveKind::Image => "a key trusted for packages cannot sign a whole system; if this key may replace this machine's system, trust it with `nip key trust FILE --for images`".into(),
                ArchiveKind::Package => "trust the key for packages with `nip key trust FILE --for packages [--apps PATTERN,...]`".into(),
            }),
            TrustError::AppNotAllowed { .. } => Some(
                "the key may sign only the Apps its trust file names; widen them with `nip key trust FILE --for packages --apps PATTERN,...` if that is intended"
                    .into(),
            ),
            TrustError::Expired { .. } => Some(
                "ask the signer for a fresh one, or accept it anyway with --allow-expired".into(),
            ),
            TrustError::Revoked { .. } | TrustError::BadSignature { .. } | TrustError::Tampered(_) => None,
        };
    }
    if let Some(n) = e.downcast_ref::<NpkError>() {
        return match n {
            NpkError::KindMismatch {
                found: ArchiveKind::Image,
                ..
            } => Some(
                "a system image replaces the whole system: make it the live one with `nexus switch --image FILE`, or serve it with `nexus mount --image FILE`"
                    .into(),
            ),
            NpkError::KindMismatch {
                found: ArchiveKind::Package,
                ..
            } => Some("add a package with `nip add FILE`".into()),
            NpkError::CounterUsed { .. } => Some(
                "leave out --counter for the next one, or re-sign with that counter on purpose with --force-counter"
                    .into(),
            ),
            NpkError::UnsafeSecretKey { path, .. } => Some(format!(
                "make it private to its owner: chmod 600 {} (and chown it to the user who signs)",
                path.display()
            )),
            _ => None,
        };
    }
    if let Some(GraftError::Package { problem, .. }) = e.downcast_ref::<GraftError>() {
        return match problem {
            Problem::Limit(LimitExceeded {
                raisable: Some(limit),
                ..
            }) => Some(match limit {
                Limit::Entries => "raise the limit with --max-entries".into(),
                Limit::UnpackedSize => "raise the limit with --max-unpacked-size".into(),
            }),
            Problem::Special { .. } => {
                Some("use --skip-special to leave device nodes, FIFOs and sockets out".into())
            }
            Problem::Naming(_) => Some(
                "give the package's name and version with --name and --version (one package file at a time), or leave them out for an archive of several packages"
                    .into(),
            ),
            _ => None,
        };
    }
    if let Some(s) = e.downcast_ref::<StoreError>() {
        return match s {
            StoreError::UntrustedSource { .. } => Some(
                "if you trust whoever owns or can write to that directory, add --trust-source-owner (and --keep-source-privileges to keep setuid bits and capabilities of files root does not own)"
                    .into(),
            ),
            StoreError::SpecialFile { .. } => {
                Some("use --skip-special to leave device nodes, FIFOs and sockets out".into())
            }
            StoreError::LockTimeout { .. } => Some(
                "another nip add or gc holds the store; wait for it, or give it longer with --lock-timeout"
                    .into(),
            ),
            StoreError::UpgradeStrandsReaders { .. } => Some(
                "replace them with this build first: `nexus takeover MOUNTPOINT` for each mount (it upgrades the catalog as it takes over), and restart each `nexus serve --virtio-fs`; then run this command again"
                    .into(),
            ),
            StoreError::NotAStore { .. } => Some(
                "create a store with `nip init`, or choose another with --store".into(),
            ),
            _ => None,
        };
    }
    if let Some(nexus_system::SystemError::Untrusted(_)) =
        e.downcast_ref::<nexus_system::SystemError>()
    {
        return Some(
            "another user could replace what is built from there; give --trust-dirs to build from it anyway"
                .into(),
        );
    }
    if e.downcast_ref::<ReplayError>().is_some() {
        return Some("accept an older image on purpose with --allow-downgrade".into());
    }
    if e.downcast_ref::<OlderCurrent>().is_some() {
        return Some(
            "add it on purpose with --allow-downgrade (`nip switch` and `nip rollback` go back without one)"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Policy errors travel boxed inside the store's (a commit's
    /// precondition) and inside graft's: the hint still finds them.
    #[test]
    fn hints_reach_errors_wrapped_by_the_store_and_graft() {
        let older = OlderCurrent {
            app: "a".into(),
            from: "2".into(),
            to: "1".into(),
        };
        let err = anyhow::Error::from(GraftError::Store(StoreError::Refused(Box::new(older))))
            .context("adding");
        assert!(hint(&err).unwrap().contains("--allow-downgrade"));
        let expired = GraftError::Npk {
            file: "x.npk".into(),
            error: NpkError::Trust(TrustError::Expired { expires: 1, now: 2 }),
        };
        assert!(
            hint(&anyhow::Error::from(expired))
                .unwrap()
                .contains("--allow-expired")
        );
        let image = NpkError::KindMismatch {
            expected: ArchiveKind::Package,
            found: ArchiveKind::Image,
        };
        assert!(
            hint(&anyhow::Error::from(image))
                .unwrap()
                .contains("nexus switch")
        );
        assert_eq!(hint(&anyhow::anyhow!("something else")), None);
    }
}
