//! The configuration file (`/etc/nexus/nexus.kdl`, or the file
//! `--config` or `NEXUS_CONFIG` names), as nip and nexus parse it before
//! anything else: parsing never panics nor overflows the stack; a refusal
//! names the file and a line and column within it and renders; what
//! parses holds the schema's bounds, and written back as KDL parses again
//! to the same settings.
#![no_main]

use kdl::{KdlDocument, KdlEntry, KdlNode};
use libfuzzer_sys::fuzz_target;
use nexus_cli::config::{FileConfig, Located};
use nexus_system::SourceFile;
// The invariants of a diagnostic about a KDL file, as the profile and
// recipe targets check them: one definition for every KDL file.
use nexus_system_fuzz::{check_diag, lines_in};

const PATH: &str = "/etc/nexus/nexus.kdl";

fn value(name: &str, v: impl Into<kdl::KdlValue>) -> KdlNode {
    let mut node = KdlNode::new(name);
    node.push(KdlEntry::new(v));
    node
}

fn path(nodes: &mut Vec<KdlNode>, name: &str, setting: &Option<Located<std::path::PathBuf>>) {
    if let Some(s) = setting {
        nodes.push(value(name, s.value.to_str().expect("parsed from UTF-8")));
    }
}

fn number<T: Copy + Into<i128>>(
    nodes: &mut Vec<KdlNode>,
    name: &str,
    setting: &Option<Located<T>>,
) {
    if let Some(s) = setting {
        nodes.push(value(name, s.value.into()));
    }
}

fn block(doc: &mut KdlDocument, name: &str, nodes: Vec<KdlNode>) {
    if !nodes.is_empty() {
        let mut node = KdlNode::new(name);
        let mut children = KdlDocument::new();
        *children.nodes_mut() = nodes;
        node.set_children(children);
        doc.nodes_mut().push(node);
    }
}

/// The settings as KDL, each value written by the `kdl` crate; two
/// configurations render the same exactly when they set the same.
fn render(c: &FileConfig) -> String {
    let mut doc = KdlDocument::new();
    path(doc.nodes_mut(), "store", &c.store);
    path(doc.nodes_mut(), "keys", &c.keys);
    let m = &c.mount;
    let mut mount = Vec::new();
    path(&mut mount, "mountpoint", &m.mountpoint);
    path(&mut mount, "index", &m.index);
    if let Some(a) = &m.allow_other {
        mount.push(value("allow-other", a.value));
    }
    number(&mut mount, "threads", &m.threads);
    number(&mut mount, "cache-mib", &m.cache_mib);
    path(&mut mount, "log-file", &m.log_file);
    block(&mut doc, "mount", mount);
    let mut serve = Vec::new();
    number(&mut serve, "cache-mib", &c.serve.cache_mib);
    path(&mut serve, "log-file", &c.serve.log_file);
    block(&mut doc, "serve", serve);
    for r in &c.remotes {
        let mut node = value("remote", r.name.as_str());
        node.push(KdlEntry::new_prop("url", r.url.as_str()));
        for (key, v) in [
            ("endpoint", &r.endpoint),
            ("region", &r.region),
            ("domain", &r.domain),
        ] {
            if let Some(v) = v {
                node.push(KdlEntry::new_prop(key, v.as_str()));
            }
        }
        doc.nodes_mut().push(node);
    }
    doc.autoformat();
    doc.to_string()
}

fuzz_target!(|data: &[u8]| {
    // The file is read with read_to_string: never anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = SourceFile::new(PATH, text);
    let config = match FileConfig::parse(&file) {
        Ok(c) => c,
        Err(diag) => return check_diag(&file, &diag),
    };
    let lines = 1..=lines_in(text);
    let m = &config.mount;
    for p in [
        &config.store,
        &config.keys,
        &m.mountpoint,
        &m.index,
        &m.log_file,
        &config.serve.log_file,
    ]
    .into_iter()
    .flatten()
    {
        assert!(p.value.is_absolute() && lines.contains(&p.line));
    }
    if let Some(t) = &m.threads {
        assert!((1..=64).contains(&t.value) && lines.contains(&t.line));
    }
    for c in [&m.cache_mib, &config.serve.cache_mib]
        .into_iter()
        .flatten()
    {
        assert!((1..=1 << 20).contains(&c.value) && lines.contains(&c.line));
    }
    for (i, r) in config.remotes.iter().enumerate() {
        assert!(lines.contains(&r.line));
        assert!(
            config.remotes[..i]
                .iter()
                .all(|earlier| earlier.name != r.name)
        );
    }

    let written = render(&config);
    let again = FileConfig::parse(&SourceFile::new(PATH, written.as_str()))
        .unwrap_or_else(|d| panic!("written back, it does not parse: {d}\n{written}"));
    assert_eq!(render(&again), written);
});
