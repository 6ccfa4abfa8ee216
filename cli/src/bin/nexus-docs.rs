//! `nexus-docs OUT_DIR`: writes the man pages and shell completions of nip
//! and nexus under OUT_DIR, laid out as under /usr/share (packaging only).

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!(
            "usage: nexus-docs OUT_DIR\n\nwrites OUT_DIR/man/man1/*.1 and the bash, zsh and fish completions of nip and nexus"
        );
        std::process::exit(nexus_cli::exit::USAGE);
    };
    match nexus_cli::docs::generate(&PathBuf::from(out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("nexus-docs: error: {e:#}");
            std::process::exit(nexus_cli::exit::ERROR);
        }
    }
}
