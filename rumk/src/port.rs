//! x86 port I/O: the serial console and `isa-debug-exit` live in I/O space.

use core::arch::asm;

/// Writes a byte to I/O port `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes have no memory effects; this guest only touches
    // the ports of the devices it drives (COM1, isa-debug-exit).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit word to I/O port `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from I/O port `port`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading the UART status has no side effects.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}
