//! `nexus rumk run`: boots a Rumk guest (the freestanding virtio-fs client
//! built from `rumk/`) in QEMU against a `nexus serve --virtio-fs` daemon
//! started for it, and turns the guest's verdict (`isa-debug-exit`) into
//! this command's exit code.
//!
//! The kernel that boots is, unless `--kernel` names a file, the store's
//! own `rumk/Current/boot/rumk` of the generation (or image) served: read
//! through the same view the guest sees, every chunk verified, and its
//! BLAKE3 compared with the hash the store recorded before QEMU gets it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use nexus_fs::{CONTENT_HASH_XATTR, GenerationChoice, Kind, ViewOptions};
use nexus_system::qemu;

use crate::exit;

/// The App the guest is grafted as (`nexus build rumk`).
pub const APP: &str = "rumk";
/// The kernel's path inside a `rumk` version.
pub const KERNEL_PATH: &str = "boot/rumk";
/// How long to wait for the daemon's socket.
const SOCKET_WAIT: Duration = Duration::from_secs(20);

/// The machine types a Rumk guest boots on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Machine {
    /// `-M microvm`: virtio-mmio, no PCI, no firmware to speak of.
    Microvm,
    /// `-M q35`: virtio-pci behind ECAM, SeaBIOS.
    Q35,
}

/// What `nexus rumk run` was asked.
#[derive(Debug)]
pub struct RunRequest {
    /// The store (absolute).
    pub store: PathBuf,
    /// The key store, for the daemon's image check.
    pub keys: PathBuf,
    /// Serve (and take the kernel from) generation N instead of the live one.
    pub generation: Option<i64>,
    /// Serve (and take the kernel from) this signed image, checked.
    pub image: Option<super::serve::ImageRequest>,
    /// Boot this kernel file instead of the store's `rumk/Current`.
    pub kernel: Option<PathBuf>,
    /// The machine type.
    pub machine: Machine,
    /// Guest RAM in MiB (shared with the daemon).
    pub memory_mib: u32,
    /// Kill a guest still running after this long.
    pub timeout: Duration,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The guest's command line: paths to read and verify.
    pub args: Vec<String>,
    /// Pass `-v` to the daemon, logging to this file.
    pub log_file: Option<PathBuf>,
}

/// Runs the guest; returns the exit code: 0 verified, 3 a file failed to
/// read or verify (as `nip verify`'s damaged-data code), 1 anything else.
pub fn run(request: &RunRequest) -> Result<i32> {
    for arg in &request.args {
        if arg.is_empty() || arg.chars().any(char::is_whitespace) {
            bail!(
                "guest argument {arg:?}: paths go to the guest space-separated, so none may contain whitespace"
            );
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("nexus-rumk-")
        .tempdir()
        .context("creating a scratch directory")?;
    let kernel = match &request.kernel {
        Some(k) => k.clone(),
        None => extract_kernel(request, scratch.path())?,
    };
    let socket = scratch.path().join("programs.sock");
    let mut daemon = Daemon::start(request, &socket, &scratch.path().join("serve.err"))?;
    let started = Instant::now();
    let mut qemu = qemu_command(request, &kernel, &socket)
        .spawn()
        .with_context(|| format!("cannot run {}", request.qemu.display()))?;
    let status = loop {
        if let Some(status) = qemu.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if started.elapsed() > request.timeout {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        if let Some(status) = daemon.exited()? {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!(
                "nexus serve --virtio-fs ended ({status}) while the guest ran: {}",
                daemon.errors()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    daemon.stop();
    let _ = std::io::stdout().flush();
    let Some(status) = status else {
        bail!("the guest did not finish within {:?}", request.timeout);
    };
    match status.code() {
        Some(qemu::RUMK_VERIFIED) => {
            eprintln!(
                "nexus: the guest verified every file ({:.2?})",
                started.elapsed()
            );
            Ok(exit::OK)
        }
        Some(qemu::RUMK_FAILED) => {
            eprintln!("nexus: the guest found a file it could not read or verify");
            Ok(exit::DAMAGED)
        }
        Some(qemu::RUMK_NO_DEVICE) => bail!("the guest found no usable virtio-fs device"),
        Some(qemu::RUMK_PANIC) => bail!("the guest panicked"),
        _ => bail!("QEMU ended with {status} without a verdict from the guest"),
    }
}

/// The QEMU command line (nexus-system's, the one every guest boots
/// with): the console on stdout, `isa-debug-exit` for the verdict, the
/// vhost-user-fs device on the transport of `machine`.
pub fn qemu_command(request: &RunRequest, kernel: &Path, socket: &Path) -> Command {
    let append = request.args.join(" ");
    qemu::Guest {
        qemu: &request.qemu,
        machine: match request.machine {
            Machine::Microvm => qemu::Machine::Microvm,
            Machine::Q35 => qemu::Machine::Q35,
        },
        memory_mib: request.memory_mib,
        kernel,
        initrd: None,
        append: &append,
        socket,
        console: qemu::Console::Stdout,
        debug_exit: true,
    }
    .command()
}

/// Copies `rumk/Current/boot/rumk` out of the view that will be served,
/// checking its BLAKE3 against the store's record.
fn extract_kernel(request: &RunRequest, dir: &Path) -> Result<PathBuf> {
    let (store, _image) = match &request.image {
        Some(image) => {
            let (store, guard) = super::serve::adopt_image(image)?;
            (store, Some(guard))
        }
        None => (request.store.clone(), None),
    };
    let options = ViewOptions {
        generation: match request.generation {
            Some(n) => GenerationChoice::Fixed(n),
            None => GenerationChoice::Live,
        },
        ..ViewOptions::default()
    };
    let view = crate::open::open_view(&store, options)?;
    let missing = || {
        format!(
            "no {APP}/Current/{KERNEL_PATH} in the store (build and graft it with `nexus build rumk`, or boot a file with --kernel)"
        )
    };
    let app = view
        .lookup(nexus_fs::ino::ROOT, APP.as_bytes())
        .with_context(missing)?;
    let current = view
        .lookup(app.attr.ino, nexus_fs::CURRENT.as_bytes())
        .with_context(missing)?;
    let version = view.readlink(current.attr.ino).with_context(missing)?;
    let mut node = view.lookup(app.attr.ino, &version).with_context(missing)?;
    for part in KERNEL_PATH.split('/') {
        node = view
            .lookup(node.attr.ino, part.as_bytes())
            .with_context(missing)?;
    }
    if node.attr.kind != Kind::File {
        bail!("{APP}/Current/{KERNEL_PATH} is not a regular file");
    }
    let recorded = view
        .getxattr(node.attr.ino, CONTENT_HASH_XATTR)
        .context("reading the kernel's recorded BLAKE3")?;
    let mut hasher = blake3::Hasher::new();
    let mut data = Vec::with_capacity(usize::try_from(node.attr.size).unwrap_or(0));
    while (data.len() as u64) < node.attr.size {
        let chunk = view
            .read_inode(node.attr.ino, data.len() as u64, 1 << 20)
            .context("reading the kernel from the store")?;
        if chunk.is_empty() {
            bail!("the kernel in the store is shorter than its size");
        }
        hasher.update(&chunk);
        data.extend_from_slice(&chunk);
    }
    if hasher.finalize().to_hex().as_bytes() != recorded.as_slice() {
        bail!("the kernel's BLAKE3 differs from the one the store recorded");
    }
    let path = dir.join("rumk");
    std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "nexus: booting {APP}/{} (BLAKE3 {})",
        String::from_utf8_lossy(&version),
        String::from_utf8_lossy(&recorded)
    );
    Ok(path)
}

/// The `nexus serve --virtio-fs` child; stopped with SIGTERM.
struct Daemon {
    child: Child,
    /// Its standard error: a file, not a pipe nobody drains while the
    /// guest runs (a full pipe would stall the daemon).
    stderr: PathBuf,
}

impl Daemon {
    fn start(request: &RunRequest, socket: &Path, stderr: &Path) -> Result<Daemon> {
        let exe = std::env::current_exe().context("locating the nexus binary")?;
        let mut c = Command::new(exe);
        c.arg("--store")
            .arg(&request.store)
            .arg("--keys")
            .arg(&request.keys)
            .arg("serve")
            .arg("--virtio-fs")
            .arg(socket);
        if let Some(n) = request.generation {
            c.arg("--generation").arg(n.to_string());
        }
        if let Some(image) = &request.image {
            c.arg("--image").arg(&image.path);
            for (allowed, flag) in [
                (image.allow_downgrade, "--allow-downgrade"),
                (image.allow_expired, "--allow-expired"),
            ] {
                if allowed {
                    c.arg(flag);
                }
            }
        }
        if let Some(log) = &request.log_file {
            c.arg("-v").arg("--log-file").arg(log);
        }
        // Its start-up line would mix with the guest's console.
        let err = std::fs::File::create(stderr)
            .with_context(|| format!("creating {}", stderr.display()))?;
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("starting nexus serve --virtio-fs")?;
        let mut daemon = Daemon {
            child,
            stderr: stderr.to_path_buf(),
        };
        let deadline = Instant::now() + SOCKET_WAIT;
        while !socket.exists() {
            if let Some(status) = daemon.exited()? {
                bail!(
                    "nexus serve --virtio-fs failed ({status}): {}",
                    daemon.errors()
                );
            }
            if Instant::now() > deadline {
                bail!("nexus serve --virtio-fs made no socket within {SOCKET_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    /// What the daemon wrote to standard error, trimmed.
    fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child.try_wait().context("waiting for nexus serve")
    }

    fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}
