//! Rumk: a freestanding x86_64 guest that mounts the Nexus store's view
//! over virtio-fs, lists the programs, reads the files named on its command
//! line and verifies the BLAKE3 of every byte against the hash the store
//! recorded, then leaves through `isa-debug-exit` (see [`Status`]).
//!
//! This binary is the boot path only: [`boot`] (PVH entry to long mode),
//! [`rt`] (what `core` needs from a libc) and the Rust entry point; the
//! rest is the `rumk` library (`lib.rs`).

#![no_std]
#![no_main]

mod boot;
mod rt;

use core::panic::PanicInfo;

use rumk::exit::{self, Status};
use rumk::transport::{self, Found};
use rumk::{app, fuse, println, serial, virtio_fs};
use virtio_drivers::transport::Transport;

/// Called by the boot code in long mode with the `hvm_start_info` address.
#[unsafe(no_mangle)]
pub extern "C" fn rumk_main(start_info: u32) -> ! {
    serial::init();
    // SAFETY: `start_info` is what the PVH loader passed.
    let cmdline = unsafe { boot::command_line(start_info) };
    println!(
        "RUMK boot: {} {}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    );
    match transport::find() {
        Some(Found::Mmio(t)) => {
            println!("RUMK device: virtio-mmio at {:#x}", t.base());
            serve(t, cmdline)
        }
        Some(Found::Pci(t)) => {
            println!("RUMK device: virtio-pci at {}", t.function());
            serve(t, cmdline)
        }
        None => {
            println!("RUMK FAIL no virtio-fs device (virtio-mmio slots or PCI bus 0)");
            exit::exit(Status::NoDevice)
        }
    }
}

/// Brings up the device and the FUSE session on `transport`, then runs.
fn serve<T: Transport>(transport: T, cmdline: &str) -> ! {
    let device = match virtio_fs::VirtioFs::new(transport) {
        Ok(d) => d,
        Err(e) => {
            println!("RUMK FAIL virtio-fs: {e}");
            exit::exit(Status::NoDevice)
        }
    };
    let mut session = match fuse::Session::init(device) {
        Ok(s) => s,
        Err(e) => {
            println!("RUMK FAIL FUSE INIT: {e}");
            exit::exit(Status::NoDevice)
        }
    };
    println!(
        "RUMK mounted: tag {} FUSE 7.{}",
        session.tag(),
        session.minor
    );
    exit::exit(app::run(&mut session, cmdline))
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("RUMK panic: {info}");
    exit::exit(Status::Panic)
}
