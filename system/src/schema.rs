//! Reading a KDL document against a schema: the helpers every schema
//! (profiles, recipes) shares, each refusing what it does not expect with
//! a diagnostic at the offending node, argument or property.

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use crate::diag::{Diag, SourceFile};

/// The most `{` a KDL file of ours (a profile, a recipe, the
/// configuration) may hold, in blocks or strings.
const MAX_BRACES: usize = 256;

/// Joins names for a help text: `a, b or c`.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => format!(
            "{} or `{last}`",
            init.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The positional arguments of a node, in order.
pub fn args(node: &KdlNode) -> Vec<&KdlEntry> {
    node.entries()
        .iter()
        .filter(|e| e.name().is_none())
        .collect()
}

/// A property of a node, by name.
pub fn prop<'a>(node: &'a KdlNode, name: &str) -> Option<&'a KdlEntry> {
    node.entries()
        .iter()
        .rev() // KDL: the last occurrence of a property wins
        .find(|e| e.name().is_some_and(|n| n.value() == name))
}

/// Refuses properties other than `allowed`, and children.
pub fn only_props(file: &SourceFile, node: &KdlNode, allowed: &[&str]) -> Result<(), Diag> {
    for e in node.entries() {
        if let Some(name) = e.name()
            && !allowed.contains(&name.value())
        {
            let help = if allowed.is_empty() {
                format!("`{}` takes no properties", node.name().value())
            } else {
                format!(
                    "`{}` takes the properties {}",
                    node.name().value(),
                    one_of(allowed)
                )
            };
            return Err(file.error(
                e.span(),
                format!("unknown property `{}`", name.value()),
                "not part of the schema",
                Some(help),
            ));
        }
    }
    if let Some(children) = node.children() {
        return Err(file.error(
            children.span(),
            format!("`{}` takes no children block", node.name().value()),
            "unexpected block",
            None,
        ));
    }
    Ok(())
}

/// A string value, or a diagnostic at the entry saying what was expected.
pub fn string<'a>(file: &SourceFile, entry: &'a KdlEntry, what: &str) -> Result<&'a str, Diag> {
    entry.value().as_string().ok_or_else(|| {
        file.error(
            entry.span(),
            format!("{what} must be a string"),
            "not a string",
            Some(format!("write it in double quotes: \"{}\"", entry.value())),
        )
    })
}

/// The node's arguments, which must number exactly `count`; `usage` shows
/// the node's form in the help text.
pub fn exact_args<'a>(
    file: &SourceFile,
    node: &'a KdlNode,
    count: usize,
    usage: &str,
) -> Result<Vec<&'a KdlEntry>, Diag> {
    let found = args(node);
    if found.len() > count {
        return Err(file.error(
            found[count].span(),
            format!(
                "`{}` takes {count} argument{}",
                node.name().value(),
                if count == 1 { "" } else { "s" }
            ),
            "one too many",
            Some(format!("write it as {usage}")),
        ));
    }
    if found.len() < count {
        return Err(file.error(
            node.span(),
            format!("`{}` is missing an argument", node.name().value()),
            "incomplete",
            Some(format!("write it as {usage}")),
        ));
    }
    Ok(found)
}

/// The single string argument of a node such as `description "..."`.
pub fn single_string<'a>(
    file: &SourceFile,
    node: &'a KdlNode,
    usage: &str,
) -> Result<&'a str, Diag> {
    only_props(file, node, &[])?;
    let a = exact_args(file, node, 1, usage)?;
    string(file, a[0], &format!("`{}`'s argument", node.name().value()))
}

/// A boolean property (`current=#true`), absent = `None`.
pub fn bool_prop(file: &SourceFile, node: &KdlNode, name: &str) -> Result<Option<bool>, Diag> {
    match prop(node, name) {
        None => Ok(None),
        Some(e) => e.value().as_bool().map(Some).ok_or_else(|| {
            file.error(
                e.span(),
                format!("`{name}` must be #true or #false"),
                "not a boolean",
                None,
            )
        }),
    }
}

/// An optional string property.
pub fn string_prop<'a>(
    file: &SourceFile,
    node: &'a KdlNode,
    name: &str,
) -> Result<Option<(&'a str, &'a KdlEntry)>, Diag> {
    prop(node, name)
        .map(|e| string(file, e, &format!("`{name}`")).map(|s| (s, e)))
        .transpose()
}

/// Parses a file as KDL, the one way every KDL file of ours is parsed: a
/// `kind` (`profile`, `configuration file`...) with more `{` than any
/// schema needs is refused before the parser sees it.
pub fn parse(file: &SourceFile, kind: &str) -> Result<kdl::KdlDocument, Diag> {
    // The parser recurses once per block, and so would overflow the stack
    // on a deep enough nesting (about 1 500 levels, a 3 KB file, in an
    // 8 MiB stack). No schema nests more than two blocks, and no block
    // opens without a `{`: counting them bounds the depth.
    let opened = file.text.bytes().filter(|&b| b == b'{').count();
    if opened > MAX_BRACES {
        return Err(file.error(
            SourceSpan::from(0..0),
            format!("{opened} `{{` in one file: more than the {MAX_BRACES} a {kind} may hold"),
            "here",
            Some("no file of ours nests blocks more than two deep".into()),
        ));
    }
    file.text.parse().map_err(|e| file.syntax_error(&e))
}

/// Parses a file and returns its one top-level node, which must be
/// `kind NAME { ... }` with NAME equal to the file's stem (so that a
/// profile or recipe is found by its name).
pub fn top_node(file: &SourceFile, kind: &str) -> Result<kdl::KdlDocument, Diag> {
    let doc = parse(file, kind)?;
    let stem = file
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let usage = format!("{kind} \"{stem}\" {{ ... }}");
    let nodes = doc.nodes();
    let Some(first) = nodes.first() else {
        return Err(file.error(
            doc.span(),
            format!("empty file: expected {usage}"),
            "nothing here",
            None,
        ));
    };
    if let Some(extra) = nodes.iter().find(|n| n.name().value() != kind) {
        return Err(file.error(
            extra.name().span(),
            format!("unknown node `{}`", extra.name().value()),
            format!("expected `{kind}`"),
            Some(format!("a {kind} file holds one node, {usage}")),
        ));
    }
    if let Some(second) = nodes.get(1) {
        return Err(file.error(
            second.span(),
            format!("a second `{kind}` in one file"),
            "one per file",
            Some(format!("a {kind} file holds one node, {usage}")),
        ));
    }
    if let Some(e) = first.entries().iter().find(|e| e.name().is_some()) {
        return Err(file.error(
            e.span(),
            format!("`{kind}` takes no properties"),
            "not part of the schema",
            Some(format!("write it as {usage}")),
        ));
    }
    let name = exact_args(file, first, 1, &usage)?;
    let name_str = string(file, name[0], &format!("the {kind}'s name"))?;
    if name_str != stem {
        return Err(file.error(
            name[0].span(),
            format!("the {kind} is named `{name_str}` but its file is `{stem}.kdl`"),
            "must match the file name",
            Some(format!(
                "{kind}s are found by file name: rename one or the other"
            )),
        ));
    }
    if first.children().is_none() {
        return Err(file.error(
            first.span(),
            format!("`{kind}` has no block"),
            "expected { ... }",
            Some(format!("write it as {usage}")),
        ));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `kdl` parser recurses once per nested block: a file of a few
    /// kilobytes of `{` overflowed the stack and aborted `nexus` (root)
    /// before any diagnostic. Run on a thread with the main thread's
    /// usual 8 MiB stack.
    #[test]
    fn deeply_nested_blocks_are_refused_without_overflowing_the_stack() {
        let refused = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| {
                let n = 100_000;
                let text = format!("recipe \"x\" {}{}", "{ a ".repeat(n), "}".repeat(n));
                let file = SourceFile::new("x.kdl", text);
                top_node(&file, "recipe").is_err()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(refused);
        // A string holding braces is no block.
        let file = SourceFile::new("x.kdl", "recipe \"x\" { description \"{}\" }");
        assert!(top_node(&file, "recipe").is_ok());
    }

    /// The `kdl` parser recovered from each syntax error at the top level
    /// by calling itself on the rest of the file: 64 KB of `a =` lines
    /// (16 000 errors) or 8 KB of `}` overflowed an 8 MiB stack and
    /// aborted `nexus` (root) before any diagnostic. The vendored `kdl`
    /// loops instead (vendor/kdl/NEXUS-PATCHES.md), so its stack no
    /// longer grows with the errors: run on a thread with the main
    /// thread's usual 8 MiB stack, where 64 000 `}` needed 36 MiB (debug
    /// build) to 72 MiB (release).
    #[test]
    fn many_syntax_errors_are_refused_without_overflowing_the_stack() {
        let refused = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| {
                let lines = format!("recipe \"x\" {{\n{}}}\n", "a =\n".repeat(16_000));
                let closing = format!("recipe \"x\" {{ }}\n{}", "}".repeat(64_000));
                [lines, closing].map(|text| top_node(&SourceFile::new("x.kdl", text), "recipe"))
            })
            .unwrap()
            .join()
            .unwrap();
        for result in refused {
            let diag = result.expect_err("accepted");
            // The file, the line and kdl's message; then the next 19
            // errors and how many more there are, not 16 000 snippets.
            assert!(diag.to_string().starts_with("x.kdl:"), "{diag}");
            assert!(!diag.message().is_empty(), "{diag}");
            let related: Vec<String> = miette::Diagnostic::related(&diag)
                .into_iter()
                .flatten()
                .map(|d| d.to_string())
                .collect();
            assert_eq!(related.len(), 20);
            assert!(
                related[19].contains("more syntax errors from here on"),
                "{related:?}"
            );
        }
    }
}
