//! What both binaries do around a command: parse the command line, run it,
//! and report a failure.
//!
//! A failure is always written to stderr for people: `PROGRAM: error:
//! what: why: ...`, or, for a problem in a KDL file (the configuration, a
//! profile, a recipe), miette's rendering with the file, the line and the
//! spot underlined. When the command was given `--json`, the failure is
//! also written to stdout as one JSON document, so that a script reading
//! stdout always gets JSON, whether the command succeeded or not:
//!
//! ```json
//! {"error": "opening the store in /x", "causes": ["No such file or directory (os error 2)"],
//!  "exit_code": 1, "location": {"file": "...", "line": 3, "column": 5}, "hint": "..."}
//! ```
//!
//! `location` is present for KDL problems, `hint` when there is one. Exit
//! codes are the same with and without `--json`.

use std::error::Error as StdError;
use std::io::IsTerminal;

use anyhow::Result;
use clap::{ArgMatches, Parser};
use nexus_system::{Diag, SystemError};
use serde_json::{Value, json};

use crate::config::ConfigError;
use crate::exit;

/// Parses the command line of `C`, runs `run` on it and returns the exit
/// code, reporting a failure as described in the module documentation.
/// `hint` may add a line of advice about an error.
pub fn main<C: Parser>(
    program: &str,
    run: impl FnOnce(C) -> Result<i32>,
    hint: impl Fn(&anyhow::Error) -> Option<String>,
) -> i32 {
    main_with_args(program, std::env::args_os(), run, hint)
}

/// [`main`] for the command line `args` (the program name first) instead
/// of the process's: a program called by another name (a mount helper)
/// translates its arguments first.
pub fn main_with_args<C: Parser>(
    program: &str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
    run: impl FnOnce(C) -> Result<i32>,
    hint: impl Fn(&anyhow::Error) -> Option<String>,
) -> i32 {
    let matches = match C::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let json = json_requested(&matches);
    let cli = match C::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            let hint = hint(&err);
            eprintln!("{}", human(program, &err));
            if let Some(h) = &hint {
                eprintln!("{program}: {h}");
            }
            if json {
                println!("{}", error_json(&err, exit::ERROR, hint.as_deref()));
            }
            exit::ERROR
        }
    }
}

/// A command line clap refused (or `--help`, `--version`): clap prints it
/// and exits; with `--json` somewhere on the line, the refusal is also a
/// JSON error on stdout.
fn usage_error(e: clap::Error) -> i32 {
    let is_error = e.use_stderr();
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if is_error && json {
        // clap's rendering starts `error: WHAT`, then usage lines.
        let rendered = e.to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        println!(
            "{}",
            json!({"error": message, "causes": [], "exit_code": exit::USAGE})
        );
    }
    e.exit()
}

/// Whether the (sub)command that runs was given `--json`: any command
/// with a boolean `json` argument, however deep, without a list to keep.
pub fn json_requested(matches: &ArgMatches) -> bool {
    let mut m = matches;
    loop {
        if let Ok(Some(true)) = m.try_get_one::<bool>("json") {
            return true;
        }
        match m.subcommand() {
            Some((_, sub)) => m = sub,
            None => return false,
        }
    }
}

/// The KDL diagnostic an error is, or wraps.
pub fn diag_of(err: &anyhow::Error) -> Option<&Diag> {
    err.chain().find_map(|e: &(dyn StdError + 'static)| {
        if let Some(d) = e.downcast_ref::<Diag>() {
            return Some(d);
        }
        match e.downcast_ref::<ConfigError>() {
            Some(ConfigError::Invalid(d)) => return Some(d),
            Some(ConfigError::Read { .. }) | None => {}
        }
        match e.downcast_ref::<SystemError>() {
            Some(SystemError::Kdl(d)) => Some(d),
            _ => None,
        }
    })
}

/// Renders a diagnostic as miette does: message, file, line, the spot
/// underlined, help. In colour only on a terminal without `NO_COLOR`.
pub fn render_diag(diag: &Diag) -> String {
    let theme = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let mut out = String::new();
    match miette::GraphicalReportHandler::new_themed(theme).render_report(&mut out, diag) {
        Ok(()) => out,
        // Rendering only fails on a formatter error: the plain message
        // still says file, line and problem.
        Err(_) => format!("  {diag}\n"),
    }
}

/// The text of an error for stderr.
pub fn human(program: &str, err: &anyhow::Error) -> String {
    match diag_of(err) {
        Some(diag) => {
            // Context added around the diagnostic (which file was being
            // read for what) comes first.
            let context: Vec<String> = err
                .chain()
                .take_while(|e| !is_diag(*e))
                .map(ToString::to_string)
                .collect();
            let mut text = format!("{program}: error:");
            if !context.is_empty() {
                text = format!("{text} {}:", context.join(": "));
            }
            format!("{text}\n{}", render_diag(diag).trim_end())
        }
        None => format!("{program}: error: {err:#}"),
    }
}

fn is_diag(e: &(dyn StdError + 'static)) -> bool {
    e.is::<Diag>()
        || matches!(
            e.downcast_ref::<ConfigError>(),
            Some(ConfigError::Invalid(_))
        )
        || matches!(e.downcast_ref::<SystemError>(), Some(SystemError::Kdl(_)))
}

/// The JSON document of an error.
pub fn error_json(err: &anyhow::Error, exit_code: i32, hint: Option<&str>) -> Value {
    let mut chain = err.chain().map(ToString::to_string);
    let mut v = json!({
        "error": chain.next().unwrap_or_default(),
        "causes": chain.collect::<Vec<_>>(),
        "exit_code": exit_code,
    });
    if let Some(d) = diag_of(err) {
        v["location"] = json!({
            "file": d.file().display().to_string(),
            "line": d.line(),
            "column": d.column(),
        });
    }
    if let Some(h) = hint {
        v["hint"] = Value::String(h.to_string());
    }
    v
}

#[cfg(test)]
mod tests {
    use anyhow::Context;
    use nexus_system::SourceFile;

    use super::*;

    fn diag() -> Diag {
        let file = SourceFile::new("/etc/nexus/nexus.kdl", "store \"/a\"\nstroe \"/b\"\n");
        crate::config::FileConfig::parse(&file).unwrap_err()
    }

    #[test]
    fn errors_become_json_with_their_causes() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("opening the store in /x");
        let v = error_json(&err, 1, Some("run nip init"));
        assert_eq!(v["error"], "opening the store in /x");
        assert_eq!(v["causes"].as_array().unwrap().len(), 1);
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["hint"], "run nip init");
        assert!(v.get("location").is_none());
    }

    #[test]
    fn a_kdl_problem_keeps_its_place() {
        let err = Err::<(), _>(ConfigError::from(diag()))
            .context("reading the configuration")
            .unwrap_err();
        let v = error_json(&err, 1, None);
        assert_eq!(v["location"]["line"], 2);
        assert_eq!(v["location"]["column"], 1);
        let text = human("nip", &err);
        assert!(
            text.starts_with("nip: error: reading the configuration:\n"),
            "{text}"
        );
        assert!(text.contains("unknown setting `stroe`"), "{text}");
        assert!(text.contains("nexus.kdl:2:1"), "{text}");
    }

    #[test]
    fn json_is_found_in_nested_subcommands() {
        use clap::{Arg, ArgAction, Command};
        let cmd = Command::new("t").subcommand(Command::new("config").subcommand(
            Command::new("show").arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
        ));
        let m = cmd
            .clone()
            .get_matches_from(["t", "config", "show", "--json"]);
        assert!(json_requested(&m));
        let m = cmd.get_matches_from(["t", "config", "show"]);
        assert!(!json_requested(&m));
    }
}
