//! `nip config` and `nexus config`: one command, shared by both binaries,
//! that shows every effective setting and where it came from.

use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::config::{Origin, Settings};
use crate::exit;

/// Showing the configuration in force.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show every setting in force and where it came from: a flag, the
    /// environment, the configuration file (FILE:LINE) or the built-in
    /// default.
    ///
    /// Precedence: flags, then NEXUS_STORE / NEXUS_KEYS, then the
    /// configuration file (/etc/nexus/nexus.kdl, or the file NEXUS_CONFIG
    /// or --config names), then built-in defaults. A missing default file
    /// means built-in defaults; a named file must exist. The `remote`
    /// entries are reserved: shown here, used by nothing yet.
    Show {
        /// JSON: {config_file: {path, found, source, from}, settings: {NAME:
        /// {value, source, from}}, remotes: [{name, url, from}]}; source is
        /// flag, env, file or default.
        #[arg(long)]
        json: bool,
    },
    /// Print the value of one setting (e.g. `mount.index`), nothing if it
    /// is unset; for scripts such as /etc/profile.d/nexus.sh.
    Get {
        /// The setting, as `config show` names it.
        name: String,
    },
}

/// Runs a `config` command against the resolved settings.
pub fn run(settings: &Settings, command: ConfigCommand) -> Result<i32> {
    let rows = rows(settings);
    match command {
        ConfigCommand::Show { json: true } => {
            let mut map = Map::new();
            for row in &rows {
                map.insert(
                    row.name.to_string(),
                    json!({
                        "value": row.json,
                        "source": row.origin.kind(),
                        "from": row.origin.detail(),
                    }),
                );
            }
            let remotes: Vec<Value> = settings
                .remotes
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "url": r.url,
                        "from": format!("{}:{}", settings.config_file.value.display(), r.line),
                    })
                })
                .collect();
            let doc = json!({
                "config_file": {
                    "path": settings.config_file.value,
                    "found": settings.config_found,
                    "source": settings.config_file.origin.kind(),
                    "from": settings.config_file.origin.detail(),
                },
                "settings": map,
                "remotes": remotes,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        ConfigCommand::Show { json: false } => {
            let file = &settings.config_file;
            let state = match (settings.config_found, &file.origin) {
                (false, _) => "not found: built-in defaults apply".to_string(),
                (true, Origin::Default(_)) => "the default file".to_string(),
                (true, origin) => format!("named by {}", describe(origin)),
            };
            println!("{:<18} {} ({state})", "config file", file.value.display());
            let width = rows.iter().map(|r| r.text.len()).max().unwrap_or(0).max(8);
            for row in &rows {
                println!(
                    "{:<18} {:<width$} {}",
                    row.name,
                    row.text,
                    describe(&row.origin)
                );
            }
            for r in &settings.remotes {
                println!(
                    "{:<18} {:<width$} {}:{} (reserved: not used yet)",
                    format!("remote {}", r.name),
                    r.url,
                    file.value.display(),
                    r.line
                );
            }
        }
        ConfigCommand::Get { name } => {
            let Some(row) = rows.iter().find(|r| r.name == name) else {
                bail!(
                    "no setting named {name:?}; the settings are {}",
                    rows.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
                );
            };
            if !row.unset {
                println!("{}", row.text);
            }
        }
    }
    Ok(exit::OK)
}

/// `from the flag --store`, `from NEXUS_STORE`, `FILE:LINE`, `default`.
fn describe(origin: &Origin) -> String {
    match origin {
        Origin::Flag(flag) => format!("flag {flag}"),
        Origin::Env(var) => format!("environment {var}"),
        Origin::File { .. } => origin.detail(),
        Origin::Default(what) => (*what).to_string(),
    }
}

/// One line of `config show`.
struct Row {
    name: &'static str,
    text: String,
    json: Value,
    unset: bool,
    origin: Origin,
}

fn path_row(name: &'static str, path: &Path, origin: &Origin) -> Row {
    Row {
        name,
        text: path.display().to_string(),
        json: json!(path),
        unset: false,
        origin: origin.clone(),
    }
}

fn optional_path_row(name: &'static str, path: Option<&Path>, origin: &Origin) -> Row {
    match path {
        Some(p) => path_row(name, p, origin),
        None => Row {
            name,
            text: "(none)".into(),
            json: Value::Null,
            unset: true,
            origin: origin.clone(),
        },
    }
}

fn value_row(
    name: &'static str,
    value: impl ToString + Into<Value> + Copy,
    origin: &Origin,
) -> Row {
    Row {
        name,
        text: value.to_string(),
        json: value.into(),
        unset: false,
        origin: origin.clone(),
    }
}

/// Every setting, in the order `config show` lists them.
fn rows(s: &Settings) -> Vec<Row> {
    let m = &s.mount;
    vec![
        path_row("store", &s.store.value, &s.store.origin),
        path_row("keys", &s.keys.value, &s.keys.origin),
        path_row(
            "mount.mountpoint",
            &m.mountpoint.value,
            &m.mountpoint.origin,
        ),
        optional_path_row("mount.index", m.index.value.as_deref(), &m.index.origin),
        value_row(
            "mount.allow-other",
            m.allow_other.value,
            &m.allow_other.origin,
        ),
        value_row(
            "mount.kernel-metadata",
            m.kernel_metadata.value,
            &m.kernel_metadata.origin,
        ),
        value_row("mount.threads", m.threads.value, &m.threads.origin),
        value_row("mount.cache-mib", m.cache_mib.value, &m.cache_mib.origin),
        optional_path_row(
            "mount.log-file",
            m.log_file.value.as_deref(),
            &m.log_file.origin,
        ),
        value_row(
            "serve.cache-mib",
            s.serve.cache_mib.value,
            &s.serve.cache_mib.origin,
        ),
        optional_path_row(
            "serve.log-file",
            s.serve.log_file.value.as_deref(),
            &s.serve.log_file.origin,
        ),
    ]
}
