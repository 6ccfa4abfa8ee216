//! A profile file as its owner wrote it (`profiles/NAME.kdl`, read by
//! `nexus build` as root): parsing never panics; a refusal names the file
//! and a line and column within it and renders; what parses holds the
//! schema's promises, and written back as KDL parses again to the same.
#![no_main]

use std::collections::BTreeMap;

use kdl::{KdlDocument, KdlEntry, KdlNode};
use libfuzzer_sys::fuzz_target;
use nexus_system::SourceFile;
use nexus_system::constraint::Constraint;
use nexus_system::profile::Profile;
use nexus_system::recipe::check_recipe_name;
use nexus_system_fuzz::{check_diag, stem};

/// What a profile says, without where it says it.
type Said = (String, Option<String>, Vec<(String, String, String, bool)>);

fn said(p: &Profile) -> Said {
    let entries = p
        .entries
        .iter()
        .map(|e| {
            (
                e.app.clone(),
                e.constraint.to_string(),
                e.recipe.clone(),
                e.current,
            )
        })
        .collect();
    (p.name.clone(), p.description.clone(), entries)
}

/// The profile as KDL, each value written by the `kdl` crate.
fn render(p: &Profile) -> String {
    let mut block = KdlDocument::new();
    if let Some(d) = &p.description {
        let mut node = KdlNode::new("description");
        node.push(KdlEntry::new(d.as_str()));
        block.nodes_mut().push(node);
    }
    for e in &p.entries {
        let mut node = KdlNode::new("package");
        node.push(KdlEntry::new(e.app.as_str()));
        node.push(KdlEntry::new(e.constraint.to_string()));
        node.push(KdlEntry::new_prop("recipe", e.recipe.as_str()));
        if e.current {
            node.push(KdlEntry::new_prop("current", true));
        }
        block.nodes_mut().push(node);
    }
    let mut top = KdlNode::new("profile");
    top.push(KdlEntry::new(p.name.as_str()));
    top.set_children(block);
    let mut doc = KdlDocument::new();
    doc.nodes_mut().push(top);
    doc.autoformat();
    doc.to_string()
}

fuzz_target!(|data: &[u8]| {
    // Profiles are read with read_to_string: never anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let name = stem(text, "profile");
    let file = SourceFile::new(format!("profiles/{name}.kdl"), text);
    let profile = match Profile::parse(file.clone()) {
        Ok(p) => p,
        Err(diag) => return check_diag(&file, &diag),
    };
    assert_eq!(profile.name, name);
    assert!(!profile.entries.is_empty());
    let mut by_app: BTreeMap<&str, Vec<&nexus_system::profile::Entry>> = BTreeMap::new();
    for e in &profile.entries {
        nexus_store::names::check_name(&e.app).expect("an App name the store takes");
        check_recipe_name(&e.recipe).expect("a recipe name");
        assert!(e.span.offset() + e.span.len() <= text.len());
        let again =
            Constraint::parse(&e.constraint.to_string()).expect("a constraint written back");
        assert_eq!(again, e.constraint);
        by_app.entry(&e.app).or_default().push(e);
    }
    for (app, lines) in &by_app {
        assert_eq!(lines.iter().filter(|e| e.current).count(), 1, "{app}");
        if lines.len() > 1 {
            let mut versions: Vec<&str> = lines
                .iter()
                .map(|e| e.constraint.exact().expect("pinned"))
                .collect();
            versions.sort_unstable();
            versions.dedup();
            assert_eq!(versions.len(), lines.len(), "{app}: a version twice");
        }
    }
    // The Current version of every App listed twice is pinned, and only
    // Current versions are.
    let pins = profile.current_pins();
    for e in &profile.entries {
        let pin = e.constraint.exact().map(|v| format!("{}/{v}", e.app));
        let pinned = pin.as_ref().is_some_and(|p| pins.contains(p));
        assert_eq!(pinned, e.current && pin.is_some(), "{pins:?}");
        if by_app[e.app.as_str()].len() > 1 {
            assert_eq!(pinned, e.current, "{pins:?}");
        }
    }
    let current_exact = profile
        .entries
        .iter()
        .filter(|e| e.current && e.constraint.exact().is_some());
    assert_eq!(pins.len(), current_exact.count());

    let written = render(&profile);
    let again = Profile::parse(SourceFile::new(
        format!("profiles/{name}.kdl"),
        written.as_str(),
    ))
    .unwrap_or_else(|d| panic!("written back, it does not parse: {d}\n{written}"));
    assert_eq!(said(&again), said(&profile), "{written}");
});
