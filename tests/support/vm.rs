//! Real VM guests for the virtio-fs tests: QEMU under TCG booting Debian's
//! cloud kernel with a busybox initramfs built here, and the `nexus serve
//! --virtio-fs` daemon they connect to.
//!
//! The kernel and busybox are Debian packages fetched at test time (cached
//! like every other `.deb`, see [`crate::debs`]) and unpacked into
//! `CACHE/vm/`; nothing of theirs is committed. The kernel has its virtio
//! and FUSE drivers as modules and no `modules.dep`, so `/init` loads them
//! in dependency order ([`MODULES`]).
//!
//! A guest runs a test's shell script after mounting the device at `/mnt`,
//! prints on its serial console (captured to a file) and powers off; the
//! test reads the console.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::debs::{cache_dir, fetch_debs, unpack_deb};
use crate::fixtures::Scratch;
use crate::nexus::{nexus_bin, wait_for};

/// The modules `/init` loads, in dependency order.
pub const MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
];

/// The virtio-fs tag guests mount.
pub const TAG: &str = nexus_system::qemu::TAG;

/// Guest RAM (MiB), shared with the daemon as a memfd.
const GUEST_MIB: u32 = 256;

/// What every guest boots: the kernel, its modules and busybox.
pub struct GuestKit {
    /// The kernel image (`vmlinuz`).
    pub kernel: PathBuf,
    /// Each of [`MODULES`], uncompressed, in order.
    pub modules: Vec<PathBuf>,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

/// The Debian package of the current cloud kernel: what the
/// `linux-image-cloud-amd64` metapackage depends on.
fn kernel_package() -> String {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run apt-cache: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .unwrap_or_else(|| {
            panic!("apt-cache depends linux-image-cloud-amd64 names no kernel:\n{text}")
        })
        .to_string()
}

/// Unpacks `deb` once into `CACHE/vm/NAME`: into a private directory
/// first, renamed into place when complete, so that an interrupted unpack
/// or another process unpacking at the same time never shows half a tree.
fn unpacked(deb: &Path) -> PathBuf {
    let stem = deb.file_stem().expect("a .deb file name").to_os_string();
    let parent = cache_dir().join("vm");
    let dir = parent.join(&stem);
    if !dir.exists() {
        fs::create_dir_all(&parent).expect("create the VM cache");
        let mut partial = stem.clone();
        partial.push(format!(".partial-{}", std::process::id()));
        let partial = parent.join(partial);
        let _ = fs::remove_dir_all(&partial);
        unpack_deb(deb, &partial);
        if fs::rename(&partial, &dir).is_err() {
            // Another process was first: use its copy.
            let _ = fs::remove_dir_all(&partial);
        }
    }
    dir
}

/// Finds `NAME.ko` (or `NAME.ko.xz`, decompressed next to the cache) below
/// `modules`.
fn module(modules: &Path, name: &str, out: &Path) -> PathBuf {
    let mut stack = vec![modules.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
            let path = e.expect("dir entry").path();
            let file = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                stack.push(path);
            } else if file == format!("{name}.ko") {
                return path;
            } else if file == format!("{name}.ko.xz") {
                // busybox insmod may not read compressed modules.
                let plain = out.join(format!("{name}.ko"));
                if !plain.exists() {
                    let data = Command::new("xz")
                        .arg("-dc")
                        .arg(&path)
                        .output()
                        .unwrap_or_else(|e| panic!("cannot run xz: {e}"));
                    assert!(data.status.success(), "xz -dc {}", path.display());
                    fs::write(&plain, data.stdout).expect("write a decompressed module");
                }
                return plain;
            }
        }
    }
    panic!("no module {name} below {}", modules.display())
}

impl GuestKit {
    /// Fetches and unpacks the kernel and busybox (once per machine, then
    /// from the cache).
    pub fn get() -> &'static GuestKit {
        static KIT: OnceLock<GuestKit> = OnceLock::new();
        KIT.get_or_init(|| {
            // busybox first: fetching runs `apt-get update` if apt has no
            // package lists yet, which `apt-cache depends` needs too.
            let busybox_dir = unpacked(&fetch_debs(&["busybox-static"])[0]);
            let kernel_pkg = kernel_package();
            let kernel_dir = unpacked(&fetch_debs(&[kernel_pkg.as_str()])[0]);
            let boot = kernel_dir.join("boot");
            let kernel = fs::read_dir(&boot)
                .unwrap_or_else(|e| panic!("readdir {}: {e}", boot.display()))
                .map(|e| e.expect("dir entry").path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .unwrap_or_else(|| panic!("no vmlinuz in {}", boot.display()));
            let modules_root = kernel_dir.join("lib/modules");
            let modules = MODULES
                .iter()
                .map(|m| module(&modules_root, m, &kernel_dir))
                .collect();
            let busybox = ["bin/busybox", "usr/bin/busybox"]
                .iter()
                .map(|p| busybox_dir.join(p))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("no busybox in {}", busybox_dir.display()));
            GuestKit {
                kernel,
                modules,
                busybox,
            }
        })
    }

    /// Builds an initramfs (uncompressed newc cpio) in `dir` whose `/init`
    /// mounts the virtio-fs device read-only at `/mnt`, runs `script`
    /// (busybox sh), prints `NEXUS-GUEST-DONE` and powers off.
    pub fn initramfs(&self, dir: &Path, script: &str) -> PathBuf {
        let root = dir.join("initramfs");
        for d in ["bin", "lib/modules", "proc", "sys", "dev", "mnt", "tmp"] {
            fs::create_dir_all(root.join(d)).expect("mkdir in the initramfs");
        }
        fs::copy(&self.busybox, root.join("bin/busybox")).expect("copy busybox");
        let mut load = String::new();
        for (name, path) in MODULES.iter().zip(&self.modules) {
            fs::copy(path, root.join(format!("lib/modules/{name}.ko"))).expect("copy a module");
            load.push_str(&format!(
                "insmod /lib/modules/{name}.ko || echo NEXUS-GUEST-FAIL insmod {name}\n"
            ));
        }
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev\n\
             {load}\
             if mount -t virtiofs -o ro {TAG} /mnt; then\n\
             echo NEXUS-GUEST-MOUNTED\n\
             ( {script}\n) 2>&1\n\
             else echo NEXUS-GUEST-FAIL mount; fi\n\
             echo NEXUS-GUEST-DONE\n\
             poweroff -f\n"
        );
        let init_path = root.join("init");
        fs::write(&init_path, init).expect("write /init");
        crate::fixtures::chmod(&init_path, 0o755);
        let image = dir.join("initramfs.cpio");
        let list = Command::new("find")
            .arg(".")
            .current_dir(&root)
            .output()
            .expect("run find");
        let mut cpio = Command::new(&self.busybox)
            .args(["cpio", "-o", "-H", "newc"])
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&image).expect("create the initramfs"))
            .stderr(Stdio::null())
            .spawn()
            .expect("run busybox cpio");
        {
            use std::io::Write;
            let mut stdin = cpio.stdin.take().expect("cpio stdin");
            stdin.write_all(&list.stdout).expect("feed cpio");
        }
        assert!(
            cpio.wait().expect("wait for cpio").success(),
            "busybox cpio failed"
        );
        image
    }
}

/// A running QEMU guest whose serial console goes to a file.
pub struct Guest {
    child: Child,
    console: PathBuf,
    started: Instant,
}

impl Guest {
    /// Boots `initramfs` under TCG with a vhost-user-fs device on `socket`;
    /// the console goes to `console`. `no_timer_check`: on a loaded host
    /// the emulated timer can tick too slowly for the kernel's IO-APIC
    /// timer check, which then panics ("IO-APIC + timer doesn't work").
    pub fn boot(kit: &GuestKit, initramfs: &Path, socket: &Path, console: &Path) -> Guest {
        use nexus_system::qemu;
        let child = qemu::Guest {
            qemu: Path::new("qemu-system-x86_64"),
            machine: qemu::Machine::Pc,
            memory_mib: GUEST_MIB,
            kernel: &kit.kernel,
            initrd: Some(initramfs),
            append: "console=ttyS0 quiet panic=-1 no_timer_check",
            socket,
            console: qemu::Console::File(console.to_path_buf()),
            debug_exit: false,
        }
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64: {e}"));
        Guest {
            child,
            console: console.to_path_buf(),
            started: Instant::now(),
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Waits (at most `timeout` from boot) for the guest to power off;
    /// returns its console. Fails the test, with the console, on a timeout,
    /// a QEMU error or a guest that did not finish its script.
    pub fn finish(mut self, timeout: Duration) -> String {
        let done = wait_for(timeout.saturating_sub(self.started.elapsed()), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("wait for qemu");
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        let console = self.console();
        assert!(
            done && status.success() && console.contains("NEXUS-GUEST-DONE"),
            "the guest did not finish within {timeout:?} (qemu {status}):\n--- qemu stderr ---\n\
             {stderr}\n--- console ---\n{console}"
        );
        assert!(
            !console.contains("NEXUS-GUEST-FAIL"),
            "the guest reported a failure:\n{console}"
        );
        console
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `nexus serve --virtio-fs` daemon; dropping it ends it (SIGTERM).
pub struct Server {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _files: Scratch,
}

impl Server {
    /// Starts `nexus --store STORE serve --virtio-fs SOCKET EXTRA...` and
    /// waits for its socket.
    pub fn start(store: &Path, extra: &[&str]) -> Server {
        let files = Scratch::new("virtiofs");
        let socket = files.join("programs.sock");
        let log = files.join("log");
        let child = Command::new(nexus_bin())
            .arg("--store")
            .arg(store)
            .arg("serve")
            .arg("--virtio-fs")
            .arg(&socket)
            .arg("--log-file")
            .arg(&log)
            .arg("-v")
            .args(extra)
            .env_remove("NEXUS_STORE")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nexus_bin().display()));
        let mut server = Server {
            child,
            socket,
            log,
            _files: files,
        };
        let up = wait_for(Duration::from_secs(20), || {
            server.socket.exists() || matches!(server.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            up && server.socket.exists(),
            "nexus serve did not create its socket:\n{}",
            server.log()
        );
        server
    }

    /// The socket guests connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the daemon runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends the daemon with SIGTERM and fails the test unless it exits 0
    /// and removes its socket.
    pub fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for nexus serve");
        assert!(
            status.success(),
            "nexus serve exited with {status}:\n{}",
            self.log()
        );
        assert!(!self.socket.exists(), "nexus serve left its socket behind");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
