//! `nip key` and `nexus key`: one key store, one set of commands.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use nexus_npk::KeyStore;
use serde_json::json;

use crate::exit;

/// Where the key store lives when neither `--keys` nor `NEXUS_KEYS` is
/// given: `STORE/keys`, so a store and the keys it trusts travel together.
pub fn default_keys_dir(store: &Path) -> PathBuf {
    store.join("keys")
}

/// Managing signing keys and the keys this store trusts.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an ed25519 signing key NAME and trust it.
    ///
    /// The secret key goes to KEYS/secret/NAME.key (mode 0600); the public
    /// key file printed at the end is what other machines trust with
    /// `nip key trust FILE`.
    Generate {
        /// A name for the key: letters, digits, '.', '_', '-'.
        name: String,
    },
    /// Trust the public key in FILE: archives it signed are accepted.
    Trust {
        /// A public key file (as written by `nip key generate`).
        file: PathBuf,
    },
    /// List known keys: id, name, trusted or revoked, and whether the
    /// secret key is here.
    List {
        /// JSON array of {id, name, trusted, revoked, secret, public_key}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the key ID (or NAME): its signatures are refused from now on,
    /// and it cannot be trusted again.
    Revoke {
        /// Key id (see `list`) or name.
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
            println!("key {} ({name}) created and trusted", public.id());
            println!("public key: {}", file.display());
        }
        KeyCommand::Trust { file } => {
            let key = keys
                .trust(&file)
                .with_context(|| format!("trusting {}", file.display()))?;
            println!("trusted key {} ({})", key.id(), key.name);
        }
        KeyCommand::List { json } => {
            let list = keys.list()?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|k| {
                        json!({
                            "id": k.key.id(),
                            "name": k.key.name,
                            "trusted": k.trusted,
                            "revoked": k.revoked,
                            "secret": k.secret,
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
                    let state = if k.revoked { "revoked" } else { "trusted" };
                    let secret = if k.secret { ", secret key here" } else { "" };
                    println!("{}  {:<20} {state}{secret}", k.key.id(), k.key.name);
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
