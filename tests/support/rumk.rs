//! Rumk guests for the tests: the guest kernel built from `rumk/` with
//! `scripts/build-rumk.sh` (once per test binary), booted under QEMU TCG
//! on `-M microvm` (virtio-mmio) or `-M q35` (virtio-pci) against a
//! `nexus serve --virtio-fs` socket, with `isa-debug-exit` giving the
//! guest's verdict as QEMU's exit status.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::nexus::wait_for;

use nexus_system::qemu;

/// QEMU's exit status when the guest verified every file.
pub const VERIFIED: i32 = qemu::RUMK_VERIFIED;
/// QEMU's exit status when a file failed to read or verify.
pub const FAILED: i32 = qemu::RUMK_FAILED;
/// QEMU's exit status when the guest found no usable device.
pub const NO_DEVICE: i32 = qemu::RUMK_NO_DEVICE;

/// The two machine types a Rumk guest boots on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`: virtio-mmio.
    Microvm,
    /// `-M q35`: virtio-pci behind ECAM.
    Q35,
}

impl Machine {
    /// Both machine types.
    pub const ALL: [Machine; 2] = [Machine::Microvm, Machine::Q35];

    /// The name `nexus rumk run --machine` takes.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// The guest kernel, built once per test binary.
pub fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(root.join("scripts/build-rumk.sh"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/build-rumk.sh: {e}"));
        assert!(out.status.success(), "scripts/build-rumk.sh failed");
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.is_file(), "no guest kernel at {}", path.display());
        path
    })
}

/// What a finished guest left: QEMU's exit status and the console.
pub struct Outcome {
    /// QEMU's exit code (`isa-debug-exit`: `(code << 1) | 1`).
    pub status: Option<i32>,
    /// The serial console.
    pub console: String,
    /// Boot to exit.
    pub elapsed: Duration,
}

impl Outcome {
    /// The console lines starting with `prefix`, `\r` trimmed.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.console
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
}

/// The QEMU command booting `kernel` on `machine` with a vhost-user-fs
/// device on `socket`, console to `console`: nexus-system's command line,
/// the one `nexus rumk run` boots with.
pub fn qemu(kernel: &Path, machine: Machine, socket: &Path, console: &Path, args: &str) -> Command {
    let mut c = qemu::Guest {
        qemu: Path::new("qemu-system-x86_64"),
        machine: match machine {
            Machine::Microvm => qemu::Machine::Microvm,
            Machine::Q35 => qemu::Machine::Q35,
        },
        memory_mib: 128,
        kernel,
        initrd: None,
        append: args,
        socket,
        console: qemu::Console::File(console.to_path_buf()),
        debug_exit: true,
    }
    .command();
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// A running Rumk guest.
pub struct Running {
    child: Child,
    machine: Machine,
    console: PathBuf,
    started: Instant,
}

/// Starts the guest; [`Running::finish`] waits for its verdict.
pub fn spawn(machine: Machine, socket: &Path, console: &Path, args: &str) -> Running {
    let child = qemu(kernel(), machine, socket, console, args)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64: {e}"));
    Running {
        child,
        machine,
        console: console.to_path_buf(),
        started: Instant::now(),
    }
}

impl Running {
    /// Waits (at most `timeout` from boot) for the guest to exit; a guest
    /// still running then is killed and fails the test.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let machine = self.machine;
        let done = wait_for(timeout.saturating_sub(self.started.elapsed()), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("wait for qemu");
        let elapsed = self.started.elapsed();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        let console =
            String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned();
        assert!(
            done,
            "the {machine:?} guest did not exit within {timeout:?}:\n--- qemu stderr ---\n{stderr}\n--- console ---\n{console}"
        );
        if !stderr.trim().is_empty() {
            eprintln!("qemu ({machine:?}) stderr: {stderr}");
        }
        Outcome {
            status: status.code(),
            console,
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots the guest and waits (at most `timeout`) for it to exit.
pub fn boot(
    machine: Machine,
    socket: &Path,
    console: &Path,
    args: &str,
    timeout: Duration,
) -> Outcome {
    spawn(machine, socket, console, args).finish(timeout)
}
