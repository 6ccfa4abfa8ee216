//! The one QEMU command line for a guest of `nexus serve --virtio-fs`:
//! `nexus rumk run` and the tests' Rumk and Linux guests all build theirs
//! here, so the wiring a guest boots with is the same everywhere.
//!
//! Always: TCG (this host's KVM stops on SSE), one CPU, no default
//! devices, no reboot, no display or monitor, guest RAM as a shared memfd
//! (vhost-user needs the daemon to map it), and a `vhost-user-fs` device
//! on the daemon's socket with the tag [`TAG`], on the transport of the
//! [`Machine`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The virtio-fs tag guests mount (Rumk takes the first device).
pub const TAG: &str = "programs";

/// A Rumk guest's verdict, as QEMU's exit status: `isa-debug-exit` exits
/// with `(code << 1) | 1` (rumk/src/exit.rs). Every file verified.
pub const RUMK_VERIFIED: i32 = 0x21;
/// A file failed to read or verify.
pub const RUMK_FAILED: i32 = 0x23;
/// No usable virtio-fs device.
pub const RUMK_NO_DEVICE: i32 = 0x25;
/// The guest panicked.
pub const RUMK_PANIC: i32 = 0x27;

/// The machine a guest boots on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`: virtio-mmio, no PCI, no firmware to speak of.
    Microvm,
    /// `-M q35`: virtio-pci behind ECAM, SeaBIOS.
    Q35,
    /// QEMU's default PC (i440fx): virtio-pci.
    Pc,
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug)]
pub enum Console {
    /// QEMU's standard output.
    Stdout,
    /// A file.
    File(PathBuf),
}

/// A guest to boot.
#[derive(Clone, Debug)]
pub struct Guest<'a> {
    /// The QEMU binary.
    pub qemu: &'a Path,
    /// The machine type.
    pub machine: Machine,
    /// Guest RAM in MiB (shared with the daemon).
    pub memory_mib: u32,
    /// The kernel (`-kernel`).
    pub kernel: &'a Path,
    /// An initramfs (`-initrd`), if any.
    pub initrd: Option<&'a Path>,
    /// The kernel command line (`-append`).
    pub append: &'a str,
    /// The daemon's vhost-user socket.
    pub socket: &'a Path,
    /// The serial console.
    pub console: Console,
    /// Give the guest `isa-debug-exit` at port 0xf4, so that it can end
    /// QEMU with its verdict (Rumk).
    pub debug_exit: bool,
}

impl Guest<'_> {
    /// The command; standard input is `/dev/null`, the other streams are
    /// the caller's to set.
    pub fn command(&self) -> Command {
        let mem = format!("{}M", self.memory_mib);
        let mut c = Command::new(self.qemu);
        c.args(["-accel", "tcg", "-m", &mem, "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-reboot",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"));
        if self.debug_exit {
            c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        }
        match &self.console {
            Console::Stdout => c.args(["-serial", "stdio"]),
            Console::File(path) => c.arg("-serial").arg(format!("file:{}", path.display())),
        };
        c.arg("-chardev")
            .arg(format!("socket,id=fs0,path={}", self.socket.display()))
            .arg("-kernel")
            .arg(self.kernel);
        if let Some(initrd) = self.initrd {
            c.arg("-initrd").arg(initrd);
        }
        c.arg("-append").arg(self.append);
        match self.machine {
            Machine::Microvm => c
                .args(["-M", "microvm,memory-backend=mem"])
                .args(["-global", "virtio-mmio.force-legacy=false"])
                .arg("-device")
                .arg(format!("vhost-user-fs-device,chardev=fs0,tag={TAG}")),
            Machine::Q35 => c
                .args(["-M", "q35", "-numa", "node,memdev=mem"])
                .arg("-device")
                .arg(format!("vhost-user-fs-pci,chardev=fs0,tag={TAG}")),
            Machine::Pc => c
                .args(["-numa", "node,memdev=mem"])
                .arg("-device")
                .arg(format!("vhost-user-fs-pci,chardev=fs0,tag={TAG}")),
        };
        c.stdin(Stdio::null());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(guest: &Guest<'_>) -> Vec<String> {
        guest
            .command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn each_machine_gets_its_transport() {
        let mut guest = Guest {
            qemu: Path::new("qemu-system-x86_64"),
            machine: Machine::Microvm,
            memory_mib: 128,
            kernel: Path::new("/k"),
            initrd: None,
            append: "a b",
            socket: Path::new("/s.sock"),
            console: Console::Stdout,
            debug_exit: true,
        };
        let a = args(&guest);
        assert!(
            a.contains(&"microvm,memory-backend=mem".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"vhost-user-fs-device,chardev=fs0,tag=programs".to_string()));
        assert!(a.contains(&"isa-debug-exit,iobase=0xf4,iosize=0x04".to_string()));
        assert!(a.contains(&"memory-backend-memfd,id=mem,size=128M,share=on".to_string()));
        guest.machine = Machine::Q35;
        guest.debug_exit = false;
        guest.console = Console::File("/c".into());
        let a = args(&guest);
        assert!(a.windows(2).any(|w| w == ["-M", "q35"]), "{a:?}");
        assert!(a.contains(&"vhost-user-fs-pci,chardev=fs0,tag=programs".to_string()));
        assert!(a.contains(&"file:/c".to_string()));
        assert!(!a.iter().any(|x| x.contains("isa-debug-exit")));
        guest.machine = Machine::Pc;
        let a = args(&guest);
        assert!(!a.contains(&"-M".to_string()), "{a:?}");
    }
}
