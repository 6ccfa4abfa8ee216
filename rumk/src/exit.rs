//! Leaving the VM through QEMU's `isa-debug-exit` device
//! (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`): QEMU exits with
//! status `(code << 1) | 1`, so a host can tell the guest's outcome. The
//! codes start at 0x10 so that no outcome reads as QEMU's own statuses
//! (0, or 1 for a QEMU error).

#[cfg(not(test))]
use crate::port::outl;

/// The I/O port `nexus rumk run` and the tests give `isa-debug-exit`.
#[cfg(not(test))]
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How the guest ended; the discriminant is written to `isa-debug-exit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Every file read was verified (QEMU exits 33).
    Verified = 0x10,
    /// At least one file could not be read or failed its BLAKE3 check
    /// (QEMU exits 35).
    Failed = 0x11,
    /// No usable virtio-fs device, or the FUSE session could not start
    /// (QEMU exits 37).
    NoDevice = 0x12,
    /// The guest panicked (QEMU exits 39).
    Panic = 0x13,
}

/// Ends the VM with `status`. Without the exit device the guest halts.
#[cfg(not(test))]
pub fn exit(status: Status) -> ! {
    outl(DEBUG_EXIT_PORT, status as u32);
    crate::println!("RUMK halt: no isa-debug-exit device at {DEBUG_EXIT_PORT:#x}");
    loop {
        // SAFETY: interrupts are off (boot.rs), so this halts for good.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
