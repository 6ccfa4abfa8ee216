//! The `nip` binary: see `nip --help`.

use nexus_cli::nip::{Cli, run};
use nexus_cli::report;
use nexus_store::StoreError;

fn main() {
    // Like every Unix filter, die quietly when the reader of our output goes
    // away (`nip files x/1 | head`) instead of panicking on EPIPE.
    // SAFETY: called before any thread exists; SIG_DFL is a valid handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let code = report::main(
        "nip",
        |cli: Cli| {
            let filter = match cli.verbose {
                0 => "warn",
                1 => "info",
                _ => "debug",
            };
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
                )
                .with_writer(std::io::stderr)
                .init();
            run(cli)
        },
        |err| {
            nexus_cli::hints::hint(err).or_else(|| {
                matches!(
                    err.downcast_ref::<StoreError>(),
                    Some(StoreError::Damaged { .. })
                )
                .then(|| "the store holds damaged data; run `nip verify` for the full list".into())
            })
        },
    );
    std::process::exit(code);
}
