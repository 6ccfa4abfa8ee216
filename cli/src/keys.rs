//! `nip key` and `nexus key`: one key store, one set of commands.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use nexus_npk::trust::{DEFAULT_DOMAIN, patterns_text};
use nexus_npk::{AppPattern, KeyStore, Scope};
use serde_json::json;

use crate::exit;

/// Where the key store lives when neither `--keys` nor `NEXUS_KEYS` is
/// given: `STORE/keys`, so a store and the keys it trusts travel together.
pub fn default_keys_dir(store: &Path) -> PathBuf {
    store.join("keys")
}

/// What a key is trusted to sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Packages (`nip add FILE.npk`), of every App or of the Apps --apps
    /// names.
    Packages,
    /// System images (`nexus switch`, `mount --image`, `serve --image`),
    /// which replace the whole system.
    Images,
}

/// Managing signing keys and the keys this store trusts.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an ed25519 signing key NAME and trust it here.
    ///
    /// The secret key goes to KEYS/secret/NAME.key (mode 0600); its public
    /// key to KEYS/public/ID.pub, the file other machines trust with `nip
    /// key trust FILE --for ...`. Here, the new key is trusted for packages
    /// of every App and for images of the default trust domain "images".
    Generate {
        /// A name for the key: letters, digits, '.', '_', '-'.
        name: String,
    },
    /// Trust the public key in FILE for packages or for images.
    ///
    /// A package key may be limited to some Apps (--apps): a vendor's key
    /// then signs the vendor's Apps and nothing else. An image key signs
    /// whole systems; it belongs to a trust domain (--domain), and images
    /// of one domain must carry ever higher counters whichever of its keys
    /// signed them, so rotating keys cannot replay an old image. Trust a
    /// key for images only if it may replace this machine's system.
    /// Trusting a key again for the same role replaces its --apps or
    /// --domain.
    ///
    /// Examples: nip key trust vendor.pub --for packages --apps 'vendor*';
    /// nip key trust fleet.pub --for images --domain fleet
    Trust {
        /// A public key file (as `nip key generate` writes to KEYS/public/).
        file: PathBuf,
        /// What the key may sign.
        #[arg(long = "for", value_enum)]
        role: Role,
        /// Packages only: the App names (glob patterns, `*` and `?`,
        /// separated by commas) the key may sign packages of; default all.
        #[arg(long, value_name = "PATTERN,...")]
        apps: Option<String>,
        /// Images only: the trust domain the key signs for (default
        /// "images").
        #[arg(long, value_name = "NAME")]
        domain: Option<String>,
    },
    /// List known keys: id, name, what each is trusted for or that it is
    /// revoked, and whether the secret key is here.
    List {
        /// JSON array of {id, name, trusted, revoked, secret, legacy,
        /// packages: null | {apps}, images: null | {domain}, public_key}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the key ID (or NAME): its signatures are refused from now on,
    /// and it cannot be trusted again.
    Revoke {
        /// Key id (see `list`; at least its first 16 digits) or name.
        id: String,
    },
}

/// Runs a key command against the key store in `dir`.
pub fn run(dir: &Path, command: KeyCommand) -> Result<i32> {
    let keys = KeyStore::new(dir);
    match command {
        KeyCommand::Generate { name } => {
            let public = keys.generate(&name)?;
            let file = keys.public_file(&public.id())?;
            println!(
                "key {} ({name}) created, trusted here for packages and for images (domain {DEFAULT_DOMAIN})",
                public.id()
            );
            println!("public key: {}", file.display());
        }
        KeyCommand::Trust {
            file,
            role,
            apps,
            domain,
        } => {
            let scope = match (role, apps, domain) {
                (Role::Packages, _, Some(_)) => {
                    eprintln!("error: --domain is for image keys (--for images)");
                    return Ok(exit::USAGE);
                }
                (Role::Images, Some(_), _) => {
                    eprintln!("error: --apps is for package keys (--for packages)");
                    return Ok(exit::USAGE);
                }
                (Role::Packages, apps, None) => Scope::Packages {
                    apps: apps
                        .as_deref()
                        .map(AppPattern::parse_list)
                        .transpose()?
                        .unwrap_or_default(),
                },
                (Role::Images, None, domain) => Scope::Images {
                    domain: domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_string()),
                },
            };
            let grant = keys
                .trust(&file, scope)
                .with_context(|| format!("trusting {}", file.display()))?;
            println!(
                "trusted key {} ({}) for {}",
                grant.key.id(),
                grant.key.name,
                grant.scope
            );
        }
        KeyCommand::List { json } => {
            let list = keys.list()?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|k| {
                        let packages = k.scopes.iter().find_map(|s| match s {
                            Scope::Packages { apps } => Some(json!({
                                "apps": apps.iter().map(|p| p.to_string()).collect::<Vec<_>>()
                            })),
                            Scope::Images { .. } => None,
                        });
                        let images = k.scopes.iter().find_map(|s| match s {
                            Scope::Images { domain } => Some(json!({ "domain": domain })),
                            Scope::Packages { .. } => None,
                        });
                        json!({
                            "id": k.key.id(),
                            "name": k.key.name,
                            "trusted": k.trusted(),
                            "revoked": k.revoked,
                            "secret": k.secret,
                            "legacy": k.legacy,
                            "packages": packages,
                            "images": images,
                            "public_key": hex::encode(k.key.key.as_bytes()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if list.is_empty() {
                println!(
                    "no keys in {} (create one with `key generate NAME`)",
                    dir.display()
                );
            } else {
                for k in &list {
                    let state = if k.revoked {
                        "revoked".to_string()
                    } else if k.scopes.is_empty() {
                        "not trusted".to_string()
                    } else {
                        let scopes: Vec<String> = k
                            .scopes
                            .iter()
                            .map(|s| match s {
                                Scope::Packages { apps } if apps.is_empty() => {
                                    "packages".to_string()
                                }
                                Scope::Packages { apps } => {
                                    format!("packages of {}", patterns_text(apps))
                                }
                                Scope::Images { domain } => format!("images ({domain})"),
                            })
                            .collect();
                        format!("trusted for {}", scopes.join(", "))
                    };
                    let legacy = if k.legacy {
                        " [old layout: trusted/; trust it again with --for and remove that file]"
                    } else {
                        ""
                    };
                    let secret = if k.secret { ", secret key here" } else { "" };
                    println!("{}  {:<20} {state}{secret}{legacy}", k.key.id(), k.key.name);
                }
            }
        }
        KeyCommand::Revoke { id } => {
            let key = keys.revoke(&id)?;
            println!("revoked key {} ({})", key.id(), key.name);
        }
    }
    Ok(exit::OK)
}
