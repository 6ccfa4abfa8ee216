//! Recipes (`recipes/**/NAME.kdl`): where one package comes from and how
//! it maps into `App/Version`.
//!
//! ```kdl
//! recipe "hello-traditional" {
//!     description "GNU hello, the traditional build, from Debian 12"
//!     source "debian" "hello-traditional"
//!     app "hello"
//! }
//! ```
//!
//! The schema is documented in `recipes/README.md`.

use std::path::{Path, PathBuf};

use kdl::KdlNode;

use crate::diag::{Diag, SourceFile};
use crate::schema::{self, one_of};

const RECIPE_NODES: &[&str] = &[
    "description",
    "source",
    "app",
    "version",
    "fetch",
    "privileged",
];
/// The kinds of pinned fetch, as written in `fetch "KIND" ...`.
pub const FETCH_KINDS: &[&str] = &["cargo"];
/// The source kinds, as written in `source "KIND" ...`.
pub const KINDS: &[&str] = &[
    "debian", "deb", "pacman", "nar", "pkgsrc", "npk", "dir", "script",
];

/// Where a package comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Debian package fetched with `apt-get download NAME[=VERSION]`.
    Debian {
        /// The Debian package name.
        package: String,
        /// A version to fetch (`NAME=VERSION`), else apt's candidate.
        version: Option<String>,
    },
    /// A package file of the given format (`deb`, `pacman`, `nar`,
    /// `pkgsrc`, `npk`); its path is resolved against the recipe's
    /// directory.
    File {
        /// The declared format, as written.
        format: String,
        /// The file.
        path: PathBuf,
    },
    /// A directory tree, taken as the package root.
    Dir {
        /// The directory.
        path: PathBuf,
    },
    /// A build script that fills `$NEXUS_OUT` with the package root.
    Script {
        /// The script, run with `sh`.
        path: PathBuf,
        /// Its working directory (default: the recipe's directory).
        workdir: PathBuf,
    },
}

/// What a build script's sandbox gets fetched for it before it runs: the
/// script itself never has a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// The crates a Cargo project's lock file pins (by checksum), vendored
    /// with `cargo vendor --locked`; the script gets them and the host's
    /// Rust toolchain read-only, and cargo configured to build offline.
    Cargo {
        /// The project's `Cargo.toml` (its `Cargo.lock` beside it).
        manifest: PathBuf,
    },
}

/// A parsed, validated recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// Its name (the file's stem).
    pub name: String,
    /// What it makes.
    pub description: Option<String>,
    /// Where the package comes from.
    pub source: Source,
    /// The App name to store it under (default: the package's own name;
    /// for `dir` and `script`, the recipe's name).
    pub app: Option<String>,
    /// The version to store it under (default: the package's own; required
    /// for `dir` and `script`, which have none).
    pub version: Option<String>,
    /// A build script's pinned fetch, if it needs one.
    pub fetch: Option<Fetch>,
    /// Paths in a build script's output that keep their setuid/setgid bits
    /// (everything else loses them on import).
    pub privileged: Vec<PathBuf>,
    /// The file, for diagnostics.
    pub file: SourceFile,
}

/// Checks a recipe name: what a file stem may be, and no path tricks.
pub fn check_recipe_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a recipe name (letters, digits, `.`, `_`, `-`, `+`; not starting with `.` or `-`)"
        ))
    }
}

impl Recipe {
    /// Parses and validates a recipe file.
    pub fn parse(file: SourceFile) -> Result<Recipe, Diag> {
        let doc = schema::top_node(&file, "recipe")?;
        let top = &doc.nodes()[0];
        let name = file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = file
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut description = None;
        let mut source: Option<(Source, &KdlNode)> = None;
        let mut app = None;
        let mut version = None;
        let mut fetch: Option<(Fetch, &KdlNode)> = None;
        let mut privileged: Option<(Vec<PathBuf>, &KdlNode)> = None;
        for node in top.iter_children() {
            match node.name().value() {
                "description" => {
                    description = Some(
                        schema::single_string(&file, node, "description \"TEXT\"")?.to_string(),
                    );
                }
                "source" => {
                    if let Some((_, first)) = &source {
                        let (line, _) = file.line_col(first.span().offset());
                        return Err(file.error(
                            node.span(),
                            "a second `source`",
                            "one source per recipe",
                            Some(format!("the first is on line {line}")),
                        ));
                    }
                    source = Some((parse_source(&file, node, &base)?, node));
                }
                "app" => {
                    let a = schema::single_string(&file, node, "app \"NAME\"")?;
                    if let Err(e) = nexus_store::names::check_name(a) {
                        return Err(file.error(node.span(), e.to_string(), "bad App name", None));
                    }
                    app = Some(a.to_string());
                }
                "version" => {
                    let v = schema::single_string(&file, node, "version \"VERSION\"")?;
                    if let Err(e) = nexus_store::names::check_version(v) {
                        return Err(file.error(node.span(), e.to_string(), "bad version", None));
                    }
                    version = Some(v.to_string());
                }
                "fetch" => {
                    once(&file, node, fetch.as_ref().map(|f| f.1))?;
                    fetch = Some((parse_fetch(&file, node, &base)?, node));
                }
                "privileged" => {
                    once(&file, node, privileged.as_ref().map(|p| p.1))?;
                    privileged = Some((parse_privileged(&file, node)?, node));
                }
                other => {
                    return Err(file.error(
                        node.name().span(),
                        format!("unknown node `{other}` in a recipe"),
                        "not part of the schema",
                        Some(format!("a recipe holds {}", one_of(RECIPE_NODES))),
                    ));
                }
            }
        }
        let Some((source, source_node)) = source else {
            return Err(file.error(
                top.span(),
                "the recipe has no `source`",
                "where does the package come from?",
                Some(format!(
                    "add source \"KIND\" ..., KIND one of {}",
                    one_of(KINDS)
                )),
            ));
        };
        if matches!(source, Source::Dir { .. } | Source::Script { .. }) && version.is_none() {
            return Err(file.error(
                source_node.span(),
                "missing version: a directory or a build script has no metadata to take it from",
                "no version for this",
                Some("add version \"1.0\" to the recipe".into()),
            ));
        }
        // Only a build script runs in the sandbox these configure.
        for node in [
            fetch.as_ref().map(|f| f.1),
            privileged.as_ref().map(|p| p.1),
        ]
        .into_iter()
        .flatten()
        {
            if !matches!(source, Source::Script { .. }) {
                return Err(file.error(
                    node.span(),
                    format!("`{}` applies to build scripts only", node.name().value()),
                    "not a `script` source",
                    Some(format!(
                        "the source on line {} is no `script`",
                        file.line_col(source_node.span().offset()).0
                    )),
                ));
            }
        }
        Ok(Recipe {
            name,
            description,
            source,
            app,
            version,
            fetch: fetch.map(|f| f.0),
            privileged: privileged.map(|p| p.0).unwrap_or_default(),
            file,
        })
    }
}

/// Refuses a second node where one is allowed.
fn once(file: &SourceFile, node: &KdlNode, first: Option<&KdlNode>) -> Result<(), Diag> {
    match first {
        Some(first) => {
            let (line, _) = file.line_col(first.span().offset());
            Err(file.error(
                node.span(),
                format!("a second `{}`", node.name().value()),
                "one per recipe",
                Some(format!("the first is on line {line}")),
            ))
        }
        None => Ok(()),
    }
}

fn parse_fetch(file: &SourceFile, node: &KdlNode, base: &Path) -> Result<Fetch, Diag> {
    let usage = "fetch \"cargo\" \"PATH/Cargo.toml\"";
    schema::only_props(file, node, &[])?;
    let a = schema::exact_args(file, node, 2, usage)?;
    let kind = schema::string(file, a[0], "the fetch kind")?;
    if !FETCH_KINDS.contains(&kind) {
        return Err(file.error(
            a[0].span(),
            format!("unknown fetch kind `{kind}`"),
            "unknown kind",
            Some(format!("the kinds are {}", one_of(FETCH_KINDS))),
        ));
    }
    let manifest = schema::string(file, a[1], "the manifest")?;
    if !manifest.ends_with("Cargo.toml") {
        return Err(file.error(
            a[1].span(),
            format!("`{manifest}` is not a Cargo.toml"),
            "not a manifest",
            Some(format!("write it as {usage}")),
        ));
    }
    Ok(Fetch::Cargo {
        manifest: base.join(manifest),
    })
}

fn parse_privileged(file: &SourceFile, node: &KdlNode) -> Result<Vec<PathBuf>, Diag> {
    schema::only_props(file, node, &[])?;
    let entries = schema::args(node);
    if entries.is_empty() {
        return Err(file.error(
            node.span(),
            "`privileged` names no path",
            "incomplete",
            Some("write it as privileged \"bin/PROGRAM\" ...".into()),
        ));
    }
    entries
        .into_iter()
        .map(|e| {
            let value = schema::string(file, e, "a privileged path")?;
            let path = Path::new(value);
            let plain = !value.is_empty()
                && path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if plain {
                Ok(path.to_path_buf())
            } else {
                Err(file.error(
                    e.span(),
                    format!("`{value}` is not a path inside the package"),
                    "not a relative path",
                    Some("name a file of $NEXUS_OUT relative to it, as \"bin/su\"".into()),
                ))
            }
        })
        .collect()
}

fn parse_source(file: &SourceFile, node: &KdlNode, base: &Path) -> Result<Source, Diag> {
    let args = schema::args(node);
    let Some(kind_entry) = args.first() else {
        return Err(file.error(
            node.span(),
            "`source` names no kind",
            "incomplete",
            Some(format!(
                "write source \"KIND\" ..., KIND one of {}",
                one_of(KINDS)
            )),
        ));
    };
    let kind = schema::string(file, kind_entry, "the source kind")?;
    if !KINDS.contains(&kind) {
        return Err(file.error(
            kind_entry.span(),
            format!("unknown recipe kind `{kind}`"),
            "unknown kind",
            Some(format!("the kinds are {}", one_of(KINDS))),
        ));
    }
    let (usage, props): (String, &[&str]) = match kind {
        "debian" => (
            "source \"debian\" \"PACKAGE\" [version=\"V\"]".into(),
            &["version"],
        ),
        "script" => (
            "source \"script\" \"SCRIPT\" [workdir=\"DIR\"]".into(),
            &["workdir"],
        ),
        "dir" => ("source \"dir\" \"DIR\"".into(), &[]),
        _ => (format!("source \"{kind}\" \"FILE\""), &[]),
    };
    schema::only_props(file, node, props)?;
    let a = schema::exact_args(file, node, 2, &usage)?;
    let value = schema::string(file, a[1], "the source")?;
    if value.is_empty() {
        return Err(file.error(
            a[1].span(),
            "empty source",
            "empty",
            Some(format!("write it as {usage}")),
        ));
    }
    Ok(match kind {
        "debian" => {
            // apt takes the name as an argument: keep to Debian's package
            // name syntax so nothing else can ride along.
            let valid = value.len() >= 2
                && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !valid {
                return Err(file.error(
                    a[1].span(),
                    format!("`{value}` is not a Debian package name"),
                    "bad package name",
                    Some("lower-case letters, digits, `+`, `-` and `.`".into()),
                ));
            }
            let version = match schema::string_prop(file, node, "version")? {
                Some((v, e)) => {
                    if v.is_empty()
                        || !v
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
                    {
                        return Err(file.error(
                            e.span(),
                            format!("`{v}` is not a Debian version"),
                            "bad version",
                            None,
                        ));
                    }
                    Some(v.to_string())
                }
                None => None,
            };
            Source::Debian {
                package: value.to_string(),
                version,
            }
        }
        "dir" => Source::Dir {
            path: base.join(value),
        },
        "script" => Source::Script {
            path: base.join(value),
            workdir: match schema::string_prop(file, node, "workdir")? {
                Some((w, _)) => base.join(w),
                None => base.to_path_buf(),
            },
        },
        format => Source::File {
            format: format.to_string(),
            path: base.join(value),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, Diag> {
        Recipe::parse(SourceFile::new("recipes/sub/r.kdl", text))
    }

    #[test]
    fn good_recipes() {
        let r = parse(
            "recipe \"r\" {\n  source \"debian\" \"hello-traditional\"\n  app \"hello\"\n}\n",
        )
        .unwrap();
        assert_eq!(
            r.source,
            Source::Debian {
                package: "hello-traditional".into(),
                version: None
            }
        );
        assert_eq!(r.app.as_deref(), Some("hello"));
        let r = parse("recipe \"r\" {\n  source \"script\" \"build.sh\" workdir=\"../../rumk\"\n  version \"0.1\"\n}\n").unwrap();
        assert_eq!(
            r.source,
            Source::Script {
                path: "recipes/sub/build.sh".into(),
                workdir: "recipes/sub/../../rumk".into()
            }
        );
        let r = parse("recipe \"r\" {\n  source \"deb\" \"files/x.deb\"\n}\n").unwrap();
        assert_eq!(
            r.source,
            Source::File {
                format: "deb".into(),
                path: "recipes/sub/files/x.deb".into()
            }
        );
    }

    #[test]
    fn fetch_and_privileged_belong_to_scripts() {
        let r = parse(
            "recipe \"r\" {\n  source \"script\" \"b.sh\" workdir=\"src\"\n  fetch \"cargo\" \"src/Cargo.toml\"\n  privileged \"bin/su\" \"sbin/ping\"\n  version \"1\"\n}\n",
        )
        .unwrap();
        assert_eq!(
            r.fetch,
            Some(Fetch::Cargo {
                manifest: "recipes/sub/src/Cargo.toml".into()
            })
        );
        assert_eq!(
            r.privileged,
            [PathBuf::from("bin/su"), PathBuf::from("sbin/ping")]
        );
        let (line, msg) =
            bad("recipe \"r\" {\n  source \"debian\" \"hello\"\n  privileged \"bin/su\"\n}\n");
        assert_eq!(line, 3);
        assert!(msg.contains("build scripts only"), "{msg}");
        let (line, msg) = bad(
            "recipe \"r\" {\n  source \"script\" \"b.sh\"\n  version \"1\"\n  privileged \"../etc/shadow\"\n}\n",
        );
        assert_eq!(line, 4);
        assert!(msg.contains("not a path inside the package"), "{msg}");
        let (line, msg) = bad(
            "recipe \"r\" {\n  source \"script\" \"b.sh\"\n  version \"1\"\n  fetch \"git\" \"x\"\n}\n",
        );
        assert_eq!(line, 4);
        assert!(msg.contains("unknown fetch kind `git`"), "{msg}");
    }

    fn bad(text: &str) -> (usize, String) {
        let d = parse(text).expect_err("accepted");
        (d.line(), d.to_string())
    }

    #[test]
    fn diagnostics_name_the_line() {
        let (line, msg) = bad("recipe \"r\" {\n  source \"rpm\" \"x.rpm\"\n}\n");
        assert_eq!(line, 2);
        assert!(msg.contains("unknown recipe kind `rpm`"), "{msg}");
        assert!(msg.starts_with("recipes/sub/r.kdl:2:"), "{msg}");

        let (line, msg) =
            bad("recipe \"r\" {\n  description \"x\"\n\n  source \"dir\" \"tree\"\n}\n");
        assert_eq!(line, 4);
        assert!(msg.contains("missing version"), "{msg}");

        let (line, msg) = bad("recipe \"r\" {\n  source \"debian\" \"hello\"\n  mirror \"x\"\n}\n");
        assert_eq!(line, 3);
        assert!(msg.contains("unknown node `mirror`"), "{msg}");

        let (line, msg) = bad("recipe \"r\" {\n  source \"debian\" \"hello; rm -rf /\"\n}\n");
        assert_eq!(line, 2);
        assert!(msg.contains("not a Debian package name"), "{msg}");

        let (line, msg) = bad("recipe \"r\" {\n  app \"x\"\n}\n");
        assert_eq!(line, 1);
        assert!(msg.contains("no `source`"), "{msg}");

        let (line, msg) =
            bad("recipe \"r\" {\n  source \"deb\" \"a.deb\"\n  source \"deb\" \"b.deb\"\n}\n");
        assert_eq!(line, 3);
        assert!(msg.contains("second `source`"), "{msg}");
    }
}
