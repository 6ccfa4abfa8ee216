//! A recipe file as its owner wrote it (`recipes/**/NAME.kdl`, read by
//! `nexus build` as root): parsing never panics; a refusal names the file
//! and a line and column within it and renders; what parses holds the
//! schema's promises, and written back as KDL parses again to the same.
#![no_main]

use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlEntry, KdlNode};
use libfuzzer_sys::fuzz_target;
use nexus_system::SourceFile;
use nexus_system::recipe::{Fetch, KINDS, Recipe, Source};
use nexus_system_fuzz::{check_diag, stem};

/// The directory the fuzzed recipe is in: a source's path is joined to it.
const BASE: &str = "recipes/sub";

/// A path a recipe names, as written: joined to [`BASE`] unless absolute.
fn written(path: &Path) -> String {
    let s = path.to_str().expect("joined from UTF-8");
    s.strip_prefix(&format!("{BASE}/")).unwrap_or(s).to_string()
}

fn node(name: &str, args: &[&str]) -> KdlNode {
    let mut node = KdlNode::new(name);
    for a in args {
        node.push(KdlEntry::new(*a));
    }
    node
}

/// The recipe as KDL, each value written by the `kdl` crate.
fn render(r: &Recipe) -> String {
    let mut block = KdlDocument::new();
    let nodes = block.nodes_mut();
    if let Some(d) = &r.description {
        nodes.push(node("description", &[d]));
    }
    nodes.push(match &r.source {
        Source::Debian { package, version } => {
            let mut n = node("source", &["debian", package]);
            if let Some(v) = version {
                n.push(KdlEntry::new_prop("version", v.as_str()));
            }
            n
        }
        Source::File { format, path } => node("source", &[format, &written(path)]),
        Source::Dir { path } => node("source", &["dir", &written(path)]),
        Source::Script { path, workdir } => {
            let mut n = node("source", &["script", &written(path)]);
            if workdir != Path::new(BASE) {
                n.push(KdlEntry::new_prop("workdir", written(workdir)));
            }
            n
        }
    });
    if let Some(a) = &r.app {
        nodes.push(node("app", &[a]));
    }
    if let Some(v) = &r.version {
        nodes.push(node("version", &[v]));
    }
    if let Some(Fetch::Cargo { manifest }) = &r.fetch {
        nodes.push(node("fetch", &["cargo", &written(manifest)]));
    }
    if !r.privileged.is_empty() {
        let paths: Vec<String> = r.privileged.iter().map(|p| written(p)).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        nodes.push(node("privileged", &paths));
    }
    let mut top = node("recipe", &[&r.name]);
    top.set_children(block);
    let mut doc = KdlDocument::new();
    doc.nodes_mut().push(top);
    doc.autoformat();
    doc.to_string()
}

/// What a recipe says, without where it says it.
#[allow(clippy::type_complexity)]
fn said(
    r: &Recipe,
) -> (
    &str,
    Option<&str>,
    &Source,
    Option<&str>,
    Option<&str>,
    Option<&Fetch>,
    &[PathBuf],
) {
    (
        &r.name,
        r.description.as_deref(),
        &r.source,
        r.app.as_deref(),
        r.version.as_deref(),
        r.fetch.as_ref(),
        &r.privileged,
    )
}

fuzz_target!(|data: &[u8]| {
    // Recipes are read with read_to_string: never anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let name = stem(text, "recipe");
    let path = format!("{BASE}/{name}.kdl");
    let file = SourceFile::new(&path, text);
    let recipe = match Recipe::parse(file.clone()) {
        Ok(r) => r,
        Err(diag) => return check_diag(&file, &diag),
    };
    assert_eq!(recipe.name, name);
    if let Some(app) = &recipe.app {
        nexus_store::names::check_name(app).expect("an App name the store takes");
    }
    if let Some(v) = &recipe.version {
        nexus_store::names::check_version(v).expect("a version the store takes");
    }
    match &recipe.source {
        Source::Debian { package, version } => {
            // Handed to apt as an argument: nothing that reads as an option.
            assert!(!package.starts_with('-') && !package.contains(['=', ' ', '/']));
            assert!(
                version
                    .as_ref()
                    .is_none_or(|v| !v.is_empty() && !v.contains([' ', '/']))
            );
        }
        Source::File { format, .. } => assert!(KINDS.contains(&format.as_str())),
        Source::Dir { .. } | Source::Script { .. } => assert!(recipe.version.is_some()),
    }
    if recipe.fetch.is_some() || !recipe.privileged.is_empty() {
        assert!(matches!(recipe.source, Source::Script { .. }));
    }
    if let Some(Fetch::Cargo { manifest }) = &recipe.fetch {
        assert!(written(manifest).ends_with("Cargo.toml"));
    }
    for p in &recipe.privileged {
        // Inside the package: no `..`, no root, nothing empty.
        assert!(p.is_relative() && p.components().count() > 0);
        assert!(
            p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        );
    }

    let text = render(&recipe);
    let again = Recipe::parse(SourceFile::new(&path, text.as_str()))
        .unwrap_or_else(|d| panic!("written back, it does not parse: {d}\n{text}"));
    assert_eq!(said(&again), said(&recipe), "{text}");
});
