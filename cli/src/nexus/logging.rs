//! Where `nexus` logs: a log file (reopened on SIGHUP, for logrotate), the
//! systemd journal, or stderr.
//!
//! Under systemd the journal is the default: a service's stderr is a
//! stream to journald, and systemd says so in `JOURNAL_STREAM` (the device
//! and inode of that stream). When stderr is that stream, each line is
//! written with an sd-daemon priority prefix (`<3>` error … `<7>` debug)
//! and no time stamp, which journald turns into the entry's priority and
//! time. This was chosen over the journal's native protocol
//! (`tracing-journald`): no extra crate, no socket to lose, and the same
//! output can be checked by a test on a machine whose PID 1 is not
//! systemd; structured fields are all it gives up, and the daemon logs
//! none.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Where the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Appended to this file, reopened on SIGHUP.
    File(PathBuf),
    /// stderr, which is a journald stream (see the module documentation).
    Journal,
    /// stderr, for a person at a terminal.
    Stderr,
}

/// The destination of a daemon's log: `file` if one is given, else the
/// journal when stderr is connected to it, else stderr (which a daemon
/// that forks points at `/dev/null`).
pub fn destination(file: Option<PathBuf>) -> Destination {
    match file {
        Some(path) => Destination::File(path),
        None if stderr_is_journal() => Destination::Journal,
        None => Destination::Stderr,
    }
}

/// True when stderr is the stream systemd connected to the journal
/// (`JOURNAL_STREAM=DEVICE:INODE` names it).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match rustix::fs::fstat(io::stderr()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}

/// The log file, reopenable.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<File> {
        File::options().create(true).append(true).open(path)
    }

    fn file(&self) -> std::sync::MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open log file, for [`reopen`].
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

/// One event's worth of writing to the log file.
struct LogFileWriter(Arc<LogFile>);

impl Write for LogFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.file().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // One lock per event: lines of two threads never interleave.
        self.0.file().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.file().flush()
    }
}

impl<'a> MakeWriter<'a> for LogFileHandle {
    type Writer = LogFileWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogFileWriter(self.0.clone())
    }
}

/// What the subscriber writes through.
struct LogFileHandle(Arc<LogFile>);

/// Opens the log file at `path` (to check it can be, before a daemon
/// forks); [`init`] logs to it.
pub fn check_file(path: &Path) -> Result<()> {
    LogFile::open(path)
        .map(drop)
        .with_context(|| format!("opening the log file {}", path.display()))
}

/// Reopens the log file (SIGHUP): logrotate renamed it, and from now on
/// the log goes to a new file at its path. `Ok(false)` when there is no
/// log file.
pub fn reopen() -> io::Result<bool> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(false);
    };
    let fresh = LogFile::open(&log.path)?;
    *log.file() = fresh;
    Ok(true)
}

/// The journal's format: an sd-daemon priority prefix and the message, no
/// time stamp (journald adds its own), no colours.
struct JournalFormat;

/// The sd-daemon(3) priority of a level.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The filter directives of a log at `verbose` (`-v` count), `kept` in a
/// file or the journal, when RUST_LOG sets none: warnings by default at a
/// terminal, info when kept or with `-v`, debug with `-vv`.
///
/// - fuser warns "Failed to umount filesystem" whenever the mount was
///   removed from outside (`nexus umount`, SIGTERM): the normal way to
///   stop, so not worth a warning unless debugging.
/// - `fuse_backend_rs` (the virtio-fs decoder) is off unless debugging: it
///   logs what a guest's refused requests were at error level, a line per
///   request and whole request bodies (about 4 MiB for a 1 MiB name), so a
///   hostile guest could write the host's log as fast as it sends
///   requests. The daemon's own messages about guests are limited per
///   guest instead (`nexus_virtiofs`).
fn directives(verbose: u8, kept: bool) -> &'static str {
    match (verbose, kept) {
        (0, false) => "warn,fuser::session=error,fuse_backend_rs=off",
        (0, true) | (1, _) => "info,fuser::session=error,fuse_backend_rs=off",
        _ => "debug",
    }
}

/// Sets up `tracing` for `destination`. The level comes from `-v`
/// ([`directives`]), or RUST_LOG.
pub fn init(verbose: u8, destination: &Destination) -> Result<()> {
    let kept = *destination != Destination::Stderr;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives(verbose, kept)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match destination {
        Destination::File(path) => {
            let file = LogFile::open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            let log = Arc::new(LogFile {
                path: path.clone(),
                file: Mutex::new(file),
            });
            let _ = LOG_FILE.set(log.clone());
            builder
                .with_ansi(false)
                .with_writer(LogFileHandle(log))
                .init();
        }
        Destination::Journal => builder
            .with_ansi(false)
            .event_format(JournalFormat)
            .with_writer(io::stderr)
            .init(),
        Destination::Stderr => builder.with_writer(io::stderr).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events at warning level or above that reach it, by target.
    #[derive(Clone, Default)]
    struct Loud(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Loud {
        fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            // A `log` record's own target, not the bridge's.
            use tracing_log::NormalizeEvent;
            let normalized = event.normalized_metadata();
            let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
            if *meta.level() <= Level::WARN {
                let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
                seen.push(meta.target().to_string());
            }
        }
    }

    /// The log flood a hostile guest could cause: `fuse-backend-rs` logs each
    /// refused request of a guest at error level, with its body. Its
    /// records reach the daemon's filter through the `log` bridge, as in
    /// the daemon, and are dropped at every level short of `-vv`, while
    /// the daemon's own warnings still pass.
    #[test]
    fn the_virtio_fs_decoders_records_are_dropped_unless_debugging() {
        use tracing_log::log;
        use tracing_subscriber::layer::SubscriberExt;
        // Bridges `log` records to whatever subscriber is current, as
        // tracing-subscriber's `init` does in the daemon.
        let _ = tracing_log::LogTracer::init();
        for (verbose, kept) in [(0, false), (0, true), (1, false), (1, true)] {
            let loud = Loud::default();
            let filter = tracing_subscriber::EnvFilter::new(directives(verbose, kept));
            let subscriber = tracing_subscriber::registry()
                .with(filter)
                .with(loud.clone());
            tracing::subscriber::with_default(subscriber, || {
                log::error!(
                    target: "fuse_backend_rs::api::server::sync_io",
                    "fuse: bytes to cstr error: [65, 65, 65]"
                );
                log::warn!(target: "fuse_backend_rs::api::server::sync_io", "a warning");
                tracing::warn!(target: "nexus_virtiofs::fs", "a guest holds 4096 directories");
            });
            let seen = loud.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            assert_eq!(seen, ["nexus_virtiofs::fs"], "-v x{verbose}, kept: {kept}");
        }
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
