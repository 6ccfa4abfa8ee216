//! System profiles (`profiles/NAME.kdl`): which packages a system holds,
//! at which versions, and which version of each App is `Current`.
//!
//! ```kdl
//! profile "fleet" {
//!     description "core, plus a second hello to switch to"
//!     package "hello" "= 2.10-3" current=#true
//!     package "hello" "= 2.10-6" recipe="hello-traditional"
//!     package "jq" ">= 1.6"
//! }
//! ```
//!
//! The schema is documented in `profiles/README.md`.

use std::collections::BTreeMap;

use kdl::KdlNode;
use miette::SourceSpan;

use crate::constraint::Constraint;
use crate::diag::{Diag, SourceFile};
use crate::schema::{self, one_of};

/// The nodes a profile's block may hold.
const PROFILE_NODES: &[&str] = &["description", "package"];
const PACKAGE_USAGE: &str = "package \"APP\" \"CONSTRAINT\" [recipe=\"NAME\"] [current=#true]";

/// One package line of a profile.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The App, as `/Programs/App`.
    pub app: String,
    /// Which versions are acceptable.
    pub constraint: Constraint,
    /// The recipe that makes it (default: the App's name).
    pub recipe: String,
    /// This version is the App's `Current` (always true for an App listed
    /// once).
    pub current: bool,
    /// Where the line is, for diagnostics after parsing.
    pub span: SourceSpan,
}

/// A parsed, validated profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Its name (the file's stem).
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Its packages, in file order.
    pub entries: Vec<Entry>,
    /// The file, for diagnostics about its lines found later.
    pub file: SourceFile,
    /// App → the versions its lines pin exactly (`= V`).
    pins: std::collections::HashMap<String, std::collections::HashSet<String>>,
}

impl Profile {
    /// Parses and validates a profile file.
    pub fn parse(file: SourceFile) -> Result<Profile, Diag> {
        let doc = schema::top_node(&file, "profile")?;
        let top = &doc.nodes()[0];
        let name = file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut description = None;
        let mut entries = Vec::new();
        for node in top.iter_children() {
            match node.name().value() {
                "description" => {
                    description = Some(
                        schema::single_string(&file, node, "description \"TEXT\"")?.to_string(),
                    );
                }
                "package" => entries.push(package(&file, node)?),
                other => {
                    return Err(file.error(
                        node.name().span(),
                        format!("unknown node `{other}` in a profile"),
                        "not part of the schema",
                        Some(format!("a profile holds {}", one_of(PROFILE_NODES))),
                    ));
                }
            }
        }
        if entries.is_empty() {
            return Err(file.error(
                top.span(),
                "the profile lists no package",
                "empty",
                Some(format!("add {PACKAGE_USAGE}")),
            ));
        }
        check_versions(&file, &mut entries)?;
        let mut pins: std::collections::HashMap<String, std::collections::HashSet<String>> =
            Default::default();
        for e in &entries {
            if let Some(v) = e.constraint.exact() {
                pins.entry(e.app.clone()).or_default().insert(v.to_string());
            }
        }
        Ok(Profile {
            name,
            description,
            entries,
            file,
            pins,
        })
    }

    /// Whether a line of `entry`'s App other than `entry` pins `version`
    /// exactly: that line builds it, so `entry` leaves it alone. (An App
    /// listed more than once pins a distinct version on every line, so
    /// another line pins `version` exactly when some line does and
    /// `entry` does not.)
    pub fn pinned_by_another_line(&self, entry: &Entry, version: &str) -> bool {
        entry.constraint.exact() != Some(version)
            && self
                .pins
                .get(&entry.app)
                .is_some_and(|pinned| pinned.contains(version))
    }

    /// `NAME/VERSION` of each App's `Current` version when its line pins
    /// it with `= V`: every App listed more than once (whose lines all
    /// pin), and an App listed once with `= V`.
    pub fn current_pins(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.current)
            .filter_map(|e| e.constraint.exact().map(|v| format!("{}/{v}", e.app)))
            .collect()
    }
}

fn package(file: &SourceFile, node: &KdlNode) -> Result<Entry, Diag> {
    schema::only_props(file, node, &["recipe", "current"])?;
    let args = schema::args(node);
    let Some(app_entry) = args.first() else {
        return Err(file.error(
            node.span(),
            "`package` names no App",
            "incomplete",
            Some(format!("write it as {PACKAGE_USAGE}")),
        ));
    };
    let app = schema::string(file, app_entry, "the App name")?;
    if let Err(e) = nexus_store::names::check_name(app) {
        return Err(file.error(app_entry.span(), e.to_string(), "bad App name", None));
    }
    let Some(constraint_entry) = args.get(1) else {
        return Err(file.error(
            node.span(),
            format!("missing version constraint for `{app}`"),
            "no version",
            Some(format!(
                "write e.g. package \"{app}\" \">= 1.0\", or \"*\" for any version"
            )),
        ));
    };
    if let Some(extra) = args.get(2) {
        return Err(file.error(
            extra.span(),
            "`package` takes two arguments",
            "one too many",
            Some(format!("write it as {PACKAGE_USAGE}")),
        ));
    }
    let text = schema::string(file, constraint_entry, "the version constraint")?;
    let constraint = Constraint::parse(text).map_err(|e| {
        file.error(
            constraint_entry.span(),
            format!("bad version constraint `{text}`: {e}"),
            "bad constraint",
            Some("write `*`, or `OP VERSION` with OP one of =, >=, >, <=, <, joined by `,` (e.g. \">= 1.6, < 2\")".into()),
        )
    })?;
    let recipe = match schema::string_prop(file, node, "recipe")? {
        Some((r, e)) => {
            if let Err(err) = crate::recipe::check_recipe_name(r) {
                return Err(file.error(e.span(), err, "bad recipe name", None));
            }
            r.to_string()
        }
        // The App's name is the recipe's: refused here, at its line, when
        // no recipe could have it (else only loading the recipe did).
        None => {
            if let Err(err) = crate::recipe::check_recipe_name(app) {
                return Err(file.error(
                    app_entry.span(),
                    format!("the App `{app}` names no recipe: {err}"),
                    "no recipe has this name",
                    Some(format!(
                        "name its recipe: package \"{app}\" \"...\" recipe=\"NAME\""
                    )),
                ));
            }
            app.to_string()
        }
    };
    let current = schema::bool_prop(file, node, "current")?;
    Ok(Entry {
        app: app.to_string(),
        constraint,
        recipe,
        // Settled by check_versions, which sees every line of the App.
        current: current.unwrap_or(false),
        span: node.span(),
    })
}

/// An App listed once is its own `Current`. An App listed more than once
/// must pin each version with `= V` (so its versions are told apart, both
/// when reusing stored packages and when checking grafted ones), list no
/// version twice, and mark exactly one line `current=#true`.
fn check_versions(file: &SourceFile, entries: &mut [Entry]) -> Result<(), Diag> {
    let mut by_app: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_app.entry(e.app.clone()).or_default().push(i);
    }
    for (app, lines) in by_app {
        if let [only] = lines[..] {
            entries[only].current = true;
            continue;
        }
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for &i in &lines {
            let e = &entries[i];
            let Some(v) = e.constraint.exact() else {
                return Err(file.error(
                    e.span,
                    format!(
                        "`{app}` is listed {} times, so each line must pin its version with `= V`",
                        lines.len()
                    ),
                    "not an exact version",
                    Some(format!("e.g. package \"{app}\" \"= 1.2-3\"")),
                ));
            };
            if !seen.insert(v) {
                return Err(file.error(
                    e.span,
                    format!("`{app}` {v} is listed twice"),
                    "duplicate",
                    None,
                ));
            }
        }
        let current: Vec<usize> = lines
            .iter()
            .copied()
            .filter(|&i| entries[i].current)
            .collect();
        if current.len() != 1 {
            let at = current.get(1).copied().unwrap_or(lines[0]);
            return Err(file.error(
                entries[at].span,
                format!(
                    "`{app}` is listed {} times and {} of its lines say current=#true; exactly one must",
                    lines.len(),
                    current.len()
                ),
                "which version is Current?",
                Some("mark the version /Programs/APP/Current should point to with current=#true".into()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, Diag> {
        Profile::parse(SourceFile::new("profiles/p.kdl", text))
    }

    #[test]
    fn a_good_profile() {
        let p = parse(
            "// comment\nprofile \"p\" {\n  description \"d\"\n  package \"hello\" \"= 2.10-3\" current=#true\n  package \"hello\" \"= 2.10-6\" recipe=\"hello-traditional\"\n  package \"jq\" \">= 1.6\"\n}\n",
        )
        .unwrap();
        assert_eq!(p.entries.len(), 3);
        assert_eq!(p.entries[1].recipe, "hello-traditional");
        assert!(p.entries[0].current && !p.entries[1].current && p.entries[2].current);
        assert_eq!(p.current_pins(), vec!["hello/2.10-3".to_string()]);
        assert_eq!(p.description.as_deref(), Some("d"));
    }

    /// The line a bad profile's diagnostic points at, and its message.
    fn bad(text: &str) -> (usize, String) {
        let d = parse(text).expect_err("accepted");
        (d.line(), d.to_string())
    }

    #[test]
    fn diagnostics_name_the_line() {
        let (line, msg) =
            bad("profile \"p\" {\n  package \"jq\" \">= 1.6\"\n  pakage \"hello\" \"*\"\n}\n");
        assert_eq!(line, 3, "{msg}");
        assert!(msg.contains("unknown node `pakage`"), "{msg}");
        assert!(msg.starts_with("profiles/p.kdl:3:"), "{msg}");

        let (line, msg) = bad("profile \"p\" {\n\n  package \"jq\"\n}\n");
        assert_eq!(line, 3);
        assert!(msg.contains("missing version constraint for `jq`"), "{msg}");

        let (line, msg) = bad("profile \"p\" {\n  package \"jq\" \"~> 1.6\"\n}\n");
        assert_eq!(line, 2);
        assert!(msg.contains("bad version constraint"), "{msg}");

        let (line, msg) = bad("profile \"p\" {\n  package \"jq\" \"*\" curent=#true\n}\n");
        assert_eq!(line, 2);
        assert!(msg.contains("unknown property `curent`"), "{msg}");

        let (line, msg) =
            bad("profile \"p\" {\n  package \"a\" \"= 1\"\n  package \"a\" \"= 2\"\n}\n");
        assert_eq!(line, 2);
        assert!(msg.contains("exactly one must"), "{msg}");

        let (line, msg) = bad(
            "profile \"p\" {\n  package \"a\" \"= 1\"\n  package \"a\" \">= 2\" current=#true\n}\n",
        );
        assert_eq!(line, 3);
        assert!(msg.contains("pin its version"), "{msg}");

        let (line, msg) = bad("profile \"other\" {\n  package \"a\" \"*\"\n}\n");
        assert_eq!(line, 1);
        assert!(msg.contains("file is `p.kdl`"), "{msg}");
    }

    /// A profile far larger than any real one (a whole distribution,
    /// commented) is accepted: the limits against hostile files (the
    /// `{` count, the syntax errors shown) do not touch it.
    #[test]
    fn a_large_profile_is_accepted() {
        let n = 10_000;
        let mut text = String::from("// Every package of a large distribution.\n");
        text.push_str("profile \"p\" {\n    description \"everything\"\n");
        for i in 0..n {
            text.push_str(&format!(
                "    // lib{i}: a library several others need, at its stable series\n"
            ));
            text.push_str(&format!("    package \"lib{i}\" \">= 1.{i}, < 2\"\n"));
        }
        text.push_str("    package \"hello\" \"= 2.10-3\" current=#true\n");
        text.push_str("    package \"hello\" \"= 2.10-6\" recipe=\"hello-traditional\"\n");
        text.push_str("}\n");
        assert!(text.len() > 1 << 20, "{}", text.len()); // over 1 MiB
        let p = parse(&text).unwrap();
        assert_eq!(p.entries.len(), n + 2);
        assert_eq!(p.entries[n - 1].app, format!("lib{}", n - 1));
        assert_eq!(p.file.line_col(p.entries[n + 1].span.offset()).0, 2 * n + 5);
    }

    /// Found by fuzzing (system/fuzz, `profile`): an App name the store
    /// takes but no recipe can have (`|`, a leading `.`, a letter outside
    /// ASCII) was accepted without `recipe=`, and the build failed later,
    /// loading the recipe, with no line of the profile to point at.
    #[test]
    fn an_app_that_names_no_recipe_needs_one_named() {
        for app in ["busybox-sta|ic", ".hidden", "café"] {
            nexus_store::names::check_name(app).unwrap();
            let (line, msg) = bad(&format!(
                "profile \"p\" {{\n  package \"{app}\" \"*\"\n}}\n"
            ));
            assert_eq!(line, 2, "{msg}");
            assert!(msg.contains("names no recipe"), "{msg}");
            let p = parse(&format!(
                "profile \"p\" {{\n  package \"{app}\" \"*\" recipe=\"r\"\n}}\n"
            ))
            .unwrap();
            assert_eq!(p.entries[0].recipe, "r");
        }
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let (line, msg) = bad("profile \"p\" {\n  package \"jq\" \">= 1.6\n}\n");
        assert!(line >= 2, "{msg}");
        assert!(msg.starts_with("profiles/p.kdl:"), "{msg}");
    }
}
