//! The `nexus` binary: see `nexus --help`.

use clap::Parser;
use nexus_cli::exit;
use nexus_cli::nexus::{Cli, run};

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("nexus: error: {err:#}");
            exit::ERROR
        }
    };
    std::process::exit(code);
}
