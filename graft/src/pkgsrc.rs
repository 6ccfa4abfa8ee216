//! pkgsrc's `+CONTENTS` packing list and `+BUILD_INFO`.
//!
//! A packing list is a sequence of lines: `@`-commands (`@name`, `@cwd`,
//! `@pkgdep`, `@comment`, `@ignore`, `@mode`, ...) and file names relative
//! to the current `@cwd`. A file name after `@ignore` is not part of the
//! package (old packages list their `+` files that way).

use crate::error::Problem;

/// What a packing list says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contents {
    /// `@name`: the full package name, `NAME-VERSION`.
    pub pkgname: String,
    /// `@cwd`: the installation prefix (`/usr/pkg`).
    pub prefix: Option<String>,
    /// `@pkgdep` patterns.
    pub depends: Vec<String>,
    /// `@blddep` entries.
    pub build_depends: Vec<String>,
    /// `@pkgcfl` conflicts.
    pub conflicts: Vec<String>,
    /// The package's files, relative to the prefix.
    pub files: Vec<String>,
}

/// Parses `+CONTENTS` (UTF-8).
pub fn parse_contents(text: &[u8]) -> Result<Contents, Problem> {
    let text = std::str::from_utf8(text)
        .map_err(|_| Problem::Metadata("+CONTENTS is not UTF-8".into()))?;
    let mut c = Contents::default();
    let mut ignore_next = false;
    for (n, line) in text.lines().enumerate() {
        let bad = |why: String| Problem::Metadata(format!("+CONTENTS line {}: {why}", n + 1));
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let Some(command) = line.strip_prefix('@') else {
            if std::mem::take(&mut ignore_next) {
                continue;
            }
            c.files.push(line.to_string());
            continue;
        };
        let (cmd, arg) = command.split_once(' ').unwrap_or((command, ""));
        let arg = arg.trim();
        match cmd {
            "name" => {
                if !c.pkgname.is_empty() {
                    return Err(bad("@name given twice".into()));
                }
                c.pkgname = arg.to_string();
            }
            "cwd" | "cd" => match &c.prefix {
                Some(p) if p != arg => {
                    return Err(Problem::Metadata(format!(
                        "+CONTENTS uses more than one @cwd ({p} and {arg}); nip supports one installation prefix"
                    )));
                }
                _ => c.prefix = Some(arg.to_string()),
            },
            "pkgdep" => c.depends.push(arg.to_string()),
            "blddep" => c.build_depends.push(arg.to_string()),
            "pkgcfl" => c.conflicts.push(arg.to_string()),
            "ignore" => ignore_next = true,
            "comment" | "mode" | "owner" | "group" | "exec" | "unexec" | "dirrm" | "pkgdir"
            | "display" | "option" | "src" | "ignore_inst" | "mtree" => {}
            other => return Err(bad(format!("unknown command @{other}"))),
        }
    }
    if c.pkgname.is_empty() {
        return Err(Problem::Metadata("+CONTENTS has no @name".into()));
    }
    Ok(c)
}

/// Splits `NAME-VERSION` at its last `-`; the version must start with a
/// digit (pkgsrc's rule).
pub fn split_pkgname(pkgname: &str) -> Result<(&str, &str), Problem> {
    match pkgname.rsplit_once('-') {
        Some((name, version))
            if !name.is_empty() && version.bytes().next().is_some_and(|b| b.is_ascii_digit()) =>
        {
            Ok((name, version))
        }
        _ => Err(Problem::Metadata(format!(
            "@name {pkgname:?} is not NAME-VERSION"
        ))),
    }
}

/// Parses `+BUILD_INFO`: `KEY=value` lines.
pub fn parse_build_info(text: &[u8]) -> Result<Vec<(String, String)>, Problem> {
    let text = std::str::from_utf8(text)
        .map_err(|_| Problem::Metadata("+BUILD_INFO is not UTF-8".into()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| Problem::Metadata(format!("+BUILD_INFO line {}: no `=`", n + 1)))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_packing_list() {
        let text = b"@comment $NetBSD$\n@name hello-2.12nb1\n@pkgdep gettext-lib>=0.14\n@cwd /usr/pkg\n@ignore\n+BUILD_INFO\nbin/hello\n@comment MD5:0123\n@mode 4755\nbin/su-hello\n";
        let c = parse_contents(text).unwrap();
        assert_eq!(c.pkgname, "hello-2.12nb1");
        assert_eq!(c.prefix.as_deref(), Some("/usr/pkg"));
        assert_eq!(c.depends, ["gettext-lib>=0.14"]);
        assert_eq!(c.files, ["bin/hello", "bin/su-hello"]);
        assert_eq!(split_pkgname(&c.pkgname).unwrap(), ("hello", "2.12nb1"));
    }

    #[test]
    fn refuses_bad_packing_lists() {
        assert!(parse_contents(b"bin/x\n").is_err());
        assert!(parse_contents(b"@name a-1\n@name b-1\n").is_err());
        assert!(parse_contents(b"@name a-1\n@cwd /a\n@cwd /b\n").is_err());
        assert!(parse_contents(b"@name a-1\n@frobnicate\n").is_err());
        assert!(split_pkgname("hello").is_err());
        assert!(split_pkgname("hello-x1").is_err());
        assert_eq!(
            parse_build_info(b"LICENSE=gnu-gpl-v3\n").unwrap()[0].1,
            "gnu-gpl-v3"
        );
    }
}
