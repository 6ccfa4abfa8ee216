//! The administrator's configuration file, `/etc/nexus/nexus.kdl`, and the
//! one place where nip and nexus resolve every setting: a flag wins over the
//! environment, which wins over the file, which wins over the built-in
//! default. Each resolved [`Setting`] remembers where its value came from,
//! for `config show`.
//!
//! ```kdl
//! store "/var/lib/nexus"
//! keys "/var/lib/nexus/keys"
//! mount {
//!     mountpoint "/Programs"
//!     index "/System/Index"
//!     allow-other #true
//!     kernel-metadata #true
//!     threads 4
//!     cache-mib 16
//!     log-file "/var/log/nexus/mount.log"
//! }
//! serve {
//!     cache-mib 128
//!     log-file "/var/log/nexus/virtiofs.log"
//! }
//! remote "origin" url="https://example.org/nexus"
//! ```
//!
//! Settings are named as the flags that override them. Paths must be
//! absolute (a relative path would depend on where a command runs). A
//! `remote` declares a remote for `nip pull`/`nip publish` (recorded in
//! the store on first use, `nip remote list` shows it). The file is parsed with the
//! `kdl` crate and checked with `nexus-system`'s schema helpers, so a
//! problem is reported as profiles' are: file, line, the spot underlined.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlEntry, KdlNode};
use nexus_system::schema::{self, one_of};
use nexus_system::{Diag, SourceFile};

use crate::location::default_store_dir;

/// The configuration file read when neither `--config` nor `NEXUS_CONFIG`
/// names one; its absence is not an error.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/nexus/nexus.kdl";
/// Names another configuration file (which must exist).
pub const CONFIG_ENV: &str = "NEXUS_CONFIG";
/// The store directory.
pub const STORE_ENV: &str = "NEXUS_STORE";
/// The key store directory.
pub const KEYS_ENV: &str = "NEXUS_KEYS";

/// Where the system mount goes when neither MOUNTPOINT nor the file says.
pub const DEFAULT_MOUNTPOINT: &str = "/Programs";
/// Request threads of a mount.
pub const DEFAULT_MOUNT_THREADS: u16 = 4;
/// Block cache of the virtio-fs backend, shared by its guests (MiB).
pub const DEFAULT_SERVE_CACHE_MIB: u64 = 128;

/// Top-level nodes of the file.
const TOP_NODES: &[&str] = &["store", "keys", "mount", "serve", "remote"];
/// Nodes of the `mount { }` block.
const MOUNT_NODES: &[&str] = &[
    "mountpoint",
    "index",
    "allow-other",
    "kernel-metadata",
    "threads",
    "cache-mib",
    "log-file",
];
/// Nodes of the `serve { }` block.
const SERVE_NODES: &[&str] = &["cache-mib", "log-file"];

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (its spelling).
    Flag(&'static str),
    /// An environment variable (its name).
    Env(&'static str),
    /// A line of the configuration file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the node.
        line: usize,
    },
    /// The built-in default; the text says which one when it depends on
    /// something (`STORE/keys`).
    Default(&'static str),
}

impl Origin {
    /// `flag`, `env`, `file` or `default`.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Flag(_) => "flag",
            Origin::Env(_) => "env",
            Origin::File { .. } => "file",
            Origin::Default(_) => "default",
        }
    }

    /// The flag, the variable, `FILE:LINE`, or what the default is.
    pub fn detail(&self) -> String {
        match self {
            Origin::Flag(flag) => (*flag).to_string(),
            Origin::Env(var) => (*var).to_string(),
            Origin::File { path, line } => format!("{}:{line}", path.display()),
            Origin::Default(what) => (*what).to_string(),
        }
    }
}

/// A resolved value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value in force.
    pub value: T,
    /// Where it came from.
    pub origin: Origin,
}

impl<T> Setting<T> {
    fn new(value: T, origin: Origin) -> Self {
        Setting { value, origin }
    }

    /// The flag's value when the flag was given (flags win over
    /// everything), else this setting.
    pub fn or_flag(self, flag: Option<T>, spelling: &'static str) -> Setting<T> {
        match flag {
            Some(value) => Setting::new(value, Origin::Flag(spelling)),
            None => self,
        }
    }
}

/// A value read from the file, with its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// 1-based line of its node.
    pub line: usize,
}

/// A `remote` node: a remote declared for every store this file
/// configures. `nip pull NAME` and `nip publish NAME` record it in the
/// store on first use (the store records the remotes its packs live on);
/// `nip remote list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Its name.
    pub name: String,
    /// Where it is (`s3://…`, `https://…`, `file:///…`).
    pub url: String,
    /// S3 endpoint of an S3-compatible server.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Trust domain of its manifests (default: its name).
    pub domain: Option<String>,
    /// 1-based line of its node.
    pub line: usize,
}

/// The `mount { }` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountFile {
    /// `mountpoint`: the system mount's directory.
    pub mountpoint: Option<Located<PathBuf>>,
    /// `index`: the Index mounted beside the system mount.
    pub index: Option<Located<PathBuf>>,
    /// `allow-other`.
    pub allow_other: Option<Located<bool>>,
    /// `kernel-metadata`.
    pub kernel_metadata: Option<Located<bool>>,
    /// `threads`.
    pub threads: Option<Located<u16>>,
    /// `cache-mib`.
    pub cache_mib: Option<Located<u64>>,
    /// `log-file`.
    pub log_file: Option<Located<PathBuf>>,
}

/// The `serve { }` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeFile {
    /// `cache-mib`.
    pub cache_mib: Option<Located<u64>>,
    /// `log-file`.
    pub log_file: Option<Located<PathBuf>>,
}

/// What a configuration file sets (everything optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    /// `store`.
    pub store: Option<Located<PathBuf>>,
    /// `keys`.
    pub keys: Option<Located<PathBuf>>,
    /// `mount { }`.
    pub mount: MountFile,
    /// `serve { }`.
    pub serve: ServeFile,
    /// `remote` nodes, in file order.
    pub remotes: Vec<Remote>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (an explicitly named file that is
    /// missing, a file that is not readable...).
    #[error("configuration file {} (from {origin})", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Who named it: `--config`, `NEXUS_CONFIG` or the default.
        origin: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid KDL or does not follow the schema.
    #[error(transparent)]
    Invalid(#[from] Diag),
}

impl FileConfig {
    /// Parses and checks a configuration file.
    pub fn parse(file: &SourceFile) -> Result<FileConfig, Diag> {
        let doc: KdlDocument = schema::parse(file, "configuration file")?;
        let mut config = FileConfig::default();
        for node in doc.nodes() {
            match node.name().value() {
                "store" => set(file, node, &mut config.store, path_value)?,
                "keys" => set(file, node, &mut config.keys, path_value)?,
                "mount" => {
                    for child in block(file, node)? {
                        let m = &mut config.mount;
                        match child.name().value() {
                            "mountpoint" => set(file, child, &mut m.mountpoint, path_value)?,
                            "index" => set(file, child, &mut m.index, path_value)?,
                            "allow-other" => set(file, child, &mut m.allow_other, bool_value)?,
                            "kernel-metadata" => {
                                set(file, child, &mut m.kernel_metadata, bool_value)?
                            }
                            "threads" => set(file, child, &mut m.threads, |f, n| {
                                count(f, n, 1, 64).map(|v| v as u16)
                            })?,
                            "cache-mib" => set(file, child, &mut m.cache_mib, cache_mib)?,
                            "log-file" => set(file, child, &mut m.log_file, path_value)?,
                            _ => {
                                return Err(unknown(file, child, "the `mount` block", MOUNT_NODES));
                            }
                        }
                    }
                }
                "serve" => {
                    for child in block(file, node)? {
                        let s = &mut config.serve;
                        match child.name().value() {
                            "cache-mib" => set(file, child, &mut s.cache_mib, cache_mib)?,
                            "log-file" => set(file, child, &mut s.log_file, path_value)?,
                            _ => {
                                return Err(unknown(file, child, "the `serve` block", SERVE_NODES));
                            }
                        }
                    }
                }
                "remote" => config.remotes.push(remote(file, node, &config.remotes)?),
                _ => return Err(unknown(file, node, "the configuration", TOP_NODES)),
            }
        }
        Ok(config)
    }
}

fn unknown(file: &SourceFile, node: &KdlNode, place: &str, known: &[&str]) -> Diag {
    file.error(
        node.name().span(),
        format!("unknown setting `{}` in {place}", node.name().value()),
        "not part of the schema",
        Some(format!("{place} holds {}", one_of(known))),
    )
}

fn line_of(file: &SourceFile, node: &KdlNode) -> usize {
    file.line_col(node.span().offset()).0
}

/// Stores a node's value in `slot`, refusing a second node of the same
/// name (which one would win is not obvious to the reader of the file).
fn set<T>(
    file: &SourceFile,
    node: &KdlNode,
    slot: &mut Option<Located<T>>,
    read: impl Fn(&SourceFile, &KdlNode) -> Result<T, Diag>,
) -> Result<(), Diag> {
    if let Some(first) = slot {
        return Err(file.error(
            node.name().span(),
            format!("`{}` is set twice", node.name().value()),
            "second setting",
            Some(format!("it is first set on line {}; keep one", first.line)),
        ));
    }
    *slot = Some(Located {
        value: read(file, node)?,
        line: line_of(file, node),
    });
    Ok(())
}

/// The nodes of `name { ... }`, a block that takes no arguments.
fn block<'a>(file: &SourceFile, node: &'a KdlNode) -> Result<&'a [KdlNode], Diag> {
    let name = node.name().value();
    if let Some(e) = node.entries().first() {
        return Err(file.error(
            e.span(),
            format!("`{name}` takes no arguments"),
            "unexpected",
            Some(format!("write it as {name} {{ ... }}")),
        ));
    }
    node.children().map(|c| c.nodes()).ok_or_else(|| {
        file.error(
            node.span(),
            format!("`{name}` has no block"),
            "expected { ... }",
            Some(format!("write it as {name} {{ ... }}")),
        )
    })
}

/// The single argument of a node that takes one value and nothing else.
fn single<'a>(file: &SourceFile, node: &'a KdlNode, usage: &str) -> Result<&'a KdlEntry, Diag> {
    schema::only_props(file, node, &[])?;
    Ok(schema::exact_args(file, node, 1, usage)?[0])
}

fn path_value(file: &SourceFile, node: &KdlNode) -> Result<PathBuf, Diag> {
    let name = node.name().value();
    let entry = single(file, node, &format!("{name} \"/ABSOLUTE/PATH\""))?;
    let text = schema::string(file, entry, &format!("`{name}`"))?;
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(file.error(
            entry.span(),
            format!("`{name}` must be an absolute path"),
            "relative path",
            Some("a relative path would depend on the directory a command runs in".into()),
        ));
    }
    Ok(path)
}

fn bool_value(file: &SourceFile, node: &KdlNode) -> Result<bool, Diag> {
    let name = node.name().value();
    let entry = single(file, node, &format!("{name} #true"))?;
    entry.value().as_bool().ok_or_else(|| {
        file.error(
            entry.span(),
            format!("`{name}` must be #true or #false"),
            "not a boolean",
            None,
        )
    })
}

fn count(file: &SourceFile, node: &KdlNode, min: u64, max: u64) -> Result<u64, Diag> {
    let name = node.name().value();
    let entry = single(file, node, &format!("{name} {min}"))?;
    entry
        .value()
        .as_integer()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            file.error(
                entry.span(),
                format!("`{name}` must be a whole number from {min} to {max}"),
                "out of range or not a number",
                None,
            )
        })
}

fn cache_mib(file: &SourceFile, node: &KdlNode) -> Result<u64, Diag> {
    // Up to 1 TiB: anything larger is a typo, not a cache.
    count(file, node, 1, 1 << 20)
}

fn remote(file: &SourceFile, node: &KdlNode, earlier: &[Remote]) -> Result<Remote, Diag> {
    const USAGE: &str =
        "remote \"NAME\" url=\"URL\" [endpoint=\"URL\"] [region=\"R\"] [domain=\"D\"]";
    schema::only_props(file, node, &["url", "endpoint", "region", "domain"])?;
    let name_entry = schema::exact_args(file, node, 1, USAGE)?[0];
    let name = schema::string(file, name_entry, "the remote's name")?;
    if let Some(first) = earlier.iter().find(|r| r.name == name) {
        return Err(file.error(
            name_entry.span(),
            format!("remote `{name}` is defined twice"),
            "second definition",
            Some(format!("it is first defined on line {}", first.line)),
        ));
    }
    let Some((url, _)) = schema::string_prop(file, node, "url")? else {
        return Err(file.error(
            node.span(),
            format!("remote `{name}` has no url"),
            "incomplete",
            Some(format!("write it as {USAGE}")),
        ));
    };
    let optional = |key: &str| -> Result<Option<String>, Diag> {
        Ok(schema::string_prop(file, node, key)?.map(|(v, _)| v.to_string()))
    };
    Ok(Remote {
        name: name.to_string(),
        url: url.to_string(),
        endpoint: optional("endpoint")?,
        region: optional("region")?,
        domain: optional("domain")?,
        line: line_of(file, node),
    })
}

/// The global options that override the file: `--config`, `--store`,
/// `--keys` as given on the command line (`None` when absent).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--store DIR`.
    pub store: Option<PathBuf>,
    /// `--keys DIR`.
    pub keys: Option<PathBuf>,
}

/// The settings of a `nexus mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSettings {
    /// The system mount's directory (when MOUNTPOINT is not given).
    pub mountpoint: Setting<PathBuf>,
    /// The Index mounted beside the system mount.
    pub index: Setting<Option<PathBuf>>,
    /// Let every user use the mount.
    pub allow_other: Setting<bool>,
    /// Stack the kernel view on the mount.
    pub kernel_metadata: Setting<bool>,
    /// Request threads.
    pub threads: Setting<u16>,
    /// Block cache in MiB.
    pub cache_mib: Setting<u64>,
    /// The daemon's log file.
    pub log_file: Setting<Option<PathBuf>>,
}

/// The settings of `nexus serve --virtio-fs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeSettings {
    /// Block cache in MiB, shared by the guests.
    pub cache_mib: Setting<u64>,
    /// The log file.
    pub log_file: Setting<Option<PathBuf>>,
}

/// Every setting in force, and where each came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The configuration file consulted.
    pub config_file: Setting<PathBuf>,
    /// Whether it exists (a missing default file means built-in defaults).
    pub config_found: bool,
    /// The store directory.
    pub store: Setting<PathBuf>,
    /// The key store directory.
    pub keys: Setting<PathBuf>,
    /// `nexus mount`.
    pub mount: MountSettings,
    /// `nexus serve`.
    pub serve: ServeSettings,
    /// Remotes the file declares.
    pub remotes: Vec<Remote>,
}

impl Settings {
    /// Resolves the settings from the command line's overrides, the
    /// process's environment, the configuration file and the defaults.
    pub fn load(flags: &Overrides) -> Result<Settings, ConfigError> {
        Self::load_with(flags, |name| std::env::var_os(name))
    }

    /// [`Settings::load`] with the environment given as a function (tests).
    /// An empty variable counts as unset.
    pub fn load_with(
        flags: &Overrides,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Settings, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let named = match (&flags.config, env(CONFIG_ENV)) {
            (Some(path), _) => Some(Setting::new(path.clone(), Origin::Flag("--config"))),
            (None, Some(path)) => Some(Setting::new(path, Origin::Env(CONFIG_ENV))),
            (None, None) => None,
        };
        let (config_file, text) = match named {
            // A file named explicitly must exist.
            Some(setting) => {
                let text = read(&setting)?;
                (setting, Some(text))
            }
            None => {
                let setting = Setting::new(
                    PathBuf::from(DEFAULT_CONFIG_FILE),
                    Origin::Default("built-in"),
                );
                match std::fs::read_to_string(&setting.value) {
                    Ok(text) => (setting, Some(text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (setting, None),
                    Err(source) => {
                        return Err(ConfigError::Read {
                            path: setting.value,
                            origin: setting.origin.detail(),
                            source,
                        });
                    }
                }
            }
        };
        let config_found = text.is_some();
        let file = match text {
            Some(text) => FileConfig::parse(&SourceFile::new(config_file.value.clone(), text))?,
            None => FileConfig::default(),
        };
        let path = &config_file.value;
        let from_file = |line: usize| Origin::File {
            path: path.clone(),
            line,
        };
        // Flag > environment > file > default, for the two settings that
        // have all four.
        let layered = |flag: &Option<PathBuf>,
                       spelling: &'static str,
                       var: &'static str,
                       located: &Option<Located<PathBuf>>|
         -> Option<Setting<PathBuf>> {
            if let Some(v) = flag {
                return Some(Setting::new(v.clone(), Origin::Flag(spelling)));
            }
            if let Some(v) = env(var) {
                return Some(Setting::new(v, Origin::Env(var)));
            }
            located
                .as_ref()
                .map(|l| Setting::new(l.value.clone(), from_file(l.line)))
        };
        let store = layered(&flags.store, "--store", STORE_ENV, &file.store).unwrap_or_else(|| {
            let why = if crate::is_root() {
                "built-in (root)"
            } else {
                "built-in ($XDG_DATA_HOME/nexus)"
            };
            Setting::new(default_store_dir(), Origin::Default(why))
        });
        let keys = layered(&flags.keys, "--keys", KEYS_ENV, &file.keys).unwrap_or_else(|| {
            Setting::new(
                crate::keys::default_keys_dir(&store.value),
                Origin::Default("built-in (STORE/keys)"),
            )
        });
        let or_default = |located: &Option<Located<PathBuf>>, default| match located {
            Some(l) => Setting::new(Some(l.value.clone()), from_file(l.line)),
            None => Setting::new(default, Origin::Default("built-in")),
        };
        let value_or = |located: Option<&Located<u64>>, default: u64| match located {
            Some(l) => Setting::new(l.value, from_file(l.line)),
            None => Setting::new(default, Origin::Default("built-in")),
        };
        let m = &file.mount;
        let mount = MountSettings {
            mountpoint: match &m.mountpoint {
                Some(l) => Setting::new(l.value.clone(), from_file(l.line)),
                None => Setting::new(
                    PathBuf::from(DEFAULT_MOUNTPOINT),
                    Origin::Default("built-in"),
                ),
            },
            index: or_default(&m.index, None),
            allow_other: match &m.allow_other {
                Some(l) => Setting::new(l.value, from_file(l.line)),
                None => Setting::new(false, Origin::Default("built-in")),
            },
            kernel_metadata: match &m.kernel_metadata {
                Some(l) => Setting::new(l.value, from_file(l.line)),
                None => Setting::new(false, Origin::Default("built-in")),
            },
            threads: match &m.threads {
                Some(l) => Setting::new(l.value, from_file(l.line)),
                None => Setting::new(DEFAULT_MOUNT_THREADS, Origin::Default("built-in")),
            },
            cache_mib: value_or(
                m.cache_mib.as_ref(),
                nexus_fs::view::DEFAULT_BLOCK_CACHE_MIB,
            ),
            log_file: or_default(&m.log_file, None),
        };
        let serve = ServeSettings {
            cache_mib: value_or(file.serve.cache_mib.as_ref(), DEFAULT_SERVE_CACHE_MIB),
            log_file: or_default(&file.serve.log_file, None),
        };
        Ok(Settings {
            config_file,
            config_found,
            store,
            keys,
            mount,
            serve,
            remotes: file.remotes,
        })
    }
}

fn read(setting: &Setting<PathBuf>) -> Result<String, ConfigError> {
    std::fs::read_to_string(&setting.value).map_err(|source| ConfigError::Read {
        path: setting.value.clone(),
        origin: setting.origin.detail(),
        source,
    })
}

/// True when `a` and `b` name the same directory (both canonicalised when
/// they exist, so `/Programs/` and `/Programs` match).
pub fn same_dir(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(text: &str) -> Result<FileConfig, Diag> {
        FileConfig::parse(&SourceFile::new("/etc/nexus/nexus.kdl", text))
    }

    /// Settings with the file at `path` (if any text) and the given
    /// environment.
    fn load(
        dir: &Path,
        text: Option<&str>,
        flags: Overrides,
        env: &[(&str, &str)],
    ) -> Result<Settings, ConfigError> {
        let path = dir.join("nexus.kdl");
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let mut vars: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        vars.entry(CONFIG_ENV.into())
            .or_insert_with(|| path.clone().into_os_string());
        Settings::load_with(&flags, |name| vars.get(name).cloned())
    }

    /// Found writing its fuzz target (cli/fuzz, `config`): the file went
    /// to the `kdl` parser, which recurses once per block, without the
    /// bound on `{` profiles and recipes have: 3 KB of `a{` overflowed an
    /// 8 MiB stack and aborted nip or nexus before any diagnostic. Run on
    /// a thread with the main thread's usual 8 MiB stack.
    #[test]
    fn deeply_nested_blocks_are_refused_without_overflowing_the_stack() {
        let refused = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| {
                let n = 100_000;
                parse(&format!(
                    "mount {{{}{}}}",
                    "a{".repeat(n),
                    "}".repeat(n + 1)
                ))
                .map_err(|d| (d.line(), d.to_string()))
            })
            .unwrap()
            .join()
            .unwrap();
        let (line, msg) = refused.expect_err("accepted");
        assert_eq!(line, 1);
        assert!(msg.contains("100001 `{` in one file"), "{msg}");
        // Every block the schema has stays well within the bound.
        let c = parse("mount {\n    threads 2\n}\nserve {\n    cache-mib 8\n}\n").unwrap();
        assert_eq!(c.mount.threads.map(|t| t.value), Some(2));
    }

    #[test]
    fn a_full_file_is_read() {
        let c = parse(
            "store \"/srv/nexus\"\nkeys \"/etc/nexus/keys\"\nmount {\n    mountpoint \"/Programs\"\n    index \"/System/Index\"\n    allow-other #true\n    kernel-metadata #true\n    threads 8\n    cache-mib 64\n    log-file \"/var/log/nexus.log\"\n}\nserve {\n    cache-mib 256\n}\nremote \"origin\" url=\"https://example.org/store\"\n",
        )
        .unwrap();
        assert_eq!(c.store.as_ref().unwrap().value, Path::new("/srv/nexus"));
        assert_eq!(c.store.as_ref().unwrap().line, 1);
        assert_eq!(c.mount.threads.as_ref().unwrap().value, 8);
        assert_eq!(c.mount.threads.as_ref().unwrap().line, 8);
        assert!(c.mount.allow_other.as_ref().unwrap().value);
        assert!(c.mount.kernel_metadata.as_ref().unwrap().value);
        assert_eq!(c.serve.cache_mib.as_ref().unwrap().value, 256);
        assert_eq!(c.remotes[0].name, "origin");
        assert_eq!(c.remotes[0].line, 15);
    }

    #[test]
    fn the_shipped_example_is_valid_with_every_setting_uncommented() {
        // dist/nexus.kdl comments every setting out; uncommented, each must
        // parse (so the example cannot teach a wrong spelling).
        let example = include_str!("../../dist/nexus.kdl");
        let setting = |line: &str| {
            TOP_NODES.iter().any(|n| line.starts_with(&format!("{n} ")))
                || line.starts_with("    ")
                || line == "}"
        };
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix("// ") {
                Some(rest) if setting(rest) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|d| panic!("{d}\n{uncommented}"));
        assert!(c.store.is_some() && c.keys.is_some(), "{uncommented}");
        let m = &c.mount;
        assert!(m.mountpoint.is_some() && m.index.is_some() && m.log_file.is_some());
        assert!(m.threads.is_some() && m.cache_mib.is_some() && m.allow_other.is_some());
        assert!(c.serve.cache_mib.is_some() && c.serve.log_file.is_some());
        assert_eq!(c.remotes.len(), 1);
        // Commented, it sets nothing.
        assert_eq!(parse(example).unwrap(), FileConfig::default());
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        assert_eq!(parse("").unwrap(), FileConfig::default());
        assert_eq!(parse("// only a comment\n").unwrap(), FileConfig::default());
    }

    #[test]
    fn problems_are_reported_at_their_line_and_column() {
        let cases: &[(&str, usize, usize, &str)] = &[
            (
                "store \"/a\"\nstroe \"/b\"\n",
                2,
                1,
                "unknown setting `stroe`",
            ),
            ("store \"relative/dir\"\n", 1, 7, "absolute path"),
            ("store 12\n", 1, 7, "must be a string"),
            ("mount {\n  threads 0\n}\n", 2, 11, "from 1 to 64"),
            ("mount {\n  threads \"4\"\n}\n", 2, 11, "whole number"),
            ("mount {\n  allow-other yes\n}\n", 2, 15, "#true or #false"),
            (
                "mount {\n  idx \"/x\"\n}\n",
                2,
                3,
                "unknown setting `idx` in the `mount` block",
            ),
            ("store \"/a\"\nstore \"/b\"\n", 2, 1, "set twice"),
            ("mount \"x\" {\n}\n", 1, 7, "takes no arguments"),
            ("serve\n", 1, 1, "has no block"),
            ("remote \"o\"\n", 1, 1, "has no url"),
            ("keys \"/a\" \"/b\"\n", 1, 11, "takes 1 argument"),
            ("store \"/a\n", 1, 7, ""),
        ];
        for (text, line, column, message) in cases {
            let diag = parse(text).expect_err(text);
            assert_eq!(
                (diag.line(), diag.column()),
                (*line, *column),
                "{text:?}: {diag}"
            );
            assert!(diag.message().contains(message), "{text:?}: {diag}");
            assert!(
                diag.to_string().starts_with("/etc/nexus/nexus.kdl:"),
                "{diag}"
            );
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = Some("store \"/from/file\"\nkeys \"/keys/from/file\"\n");
        let env = [(STORE_ENV, "/from/env")];
        let s = load(dir.path(), file, Overrides::default(), &[]).unwrap();
        assert_eq!(s.store.value, Path::new("/from/file"));
        assert_eq!(s.store.origin.kind(), "file");
        assert!(
            s.store.origin.detail().ends_with("nexus.kdl:1"),
            "{:?}",
            s.store
        );
        assert_eq!(s.config_file.origin, Origin::Env(CONFIG_ENV));

        let s = load(dir.path(), file, Overrides::default(), &env).unwrap();
        assert_eq!(s.store.value, Path::new("/from/env"));
        assert_eq!(s.store.origin, Origin::Env(STORE_ENV));

        let flags = Overrides {
            store: Some("/from/flag".into()),
            ..Default::default()
        };
        let s = load(dir.path(), file, flags, &env).unwrap();
        assert_eq!(s.store.value, Path::new("/from/flag"));
        assert_eq!(s.store.origin, Origin::Flag("--store"));
        // keys comes from the file whatever the store's origin...
        assert_eq!(s.keys.value, Path::new("/keys/from/file"));
        // ...and defaults to STORE/keys of the store in force.
        let s = load(
            dir.path(),
            Some("store \"/s\"\n"),
            Overrides::default(),
            &[],
        )
        .unwrap();
        assert_eq!(s.keys.value, Path::new("/s/keys"));
        assert_eq!(s.keys.origin.kind(), "default");
        // An empty variable is unset.
        let s = load(dir.path(), file, Overrides::default(), &[(STORE_ENV, "")]).unwrap();
        assert_eq!(s.store.origin.kind(), "file");
    }

    #[test]
    fn mount_settings_take_the_flag_then_the_file_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(
            dir.path(),
            Some("mount {\n  threads 12\n}\n"),
            Overrides::default(),
            &[],
        )
        .unwrap();
        assert_eq!(s.mount.threads.value, 12);
        assert_eq!(s.mount.cache_mib.origin.kind(), "default");
        assert!(!s.mount.allow_other.value);
        let threads = s.mount.threads.clone().or_flag(Some(2), "--threads");
        assert_eq!(threads, Setting::new(2, Origin::Flag("--threads")));
        let kept = s.mount.threads.or_flag(None, "--threads");
        assert_eq!(kept.value, 12);
    }

    #[test]
    fn the_configuration_file_flag_beats_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.kdl");
        std::fs::write(&other, "store \"/other\"\n").unwrap();
        let flags = Overrides {
            config: Some(other.clone()),
            ..Default::default()
        };
        let s = load(dir.path(), Some("store \"/env\"\n"), flags, &[]).unwrap();
        assert_eq!(s.store.value, Path::new("/other"));
        assert_eq!(s.config_file.origin, Origin::Flag("--config"));
        assert!(s.config_found);
    }

    #[test]
    fn a_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), None, Overrides::default(), &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
        assert!(err.to_string().contains(CONFIG_ENV), "{err}");
    }
}
