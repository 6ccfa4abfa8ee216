//! The serial console (COM1, a 16550 UART at I/O port 0x3f8): every line
//! the guest prints goes here, and QEMU writes it to `-serial`'s backend.

use core::fmt::{self, Write};

#[cfg(not(test))]
use crate::port::{inb, outb};

#[cfg(not(test))]
const COM1: u16 = 0x3f8;
/// Line status register: bit 5 means the transmit register is empty.
#[cfg(not(test))]
const LSR: u16 = COM1 + 5;
#[cfg(not(test))]
const THR_EMPTY: u8 = 1 << 5;
/// How long to wait for the transmitter before dropping a byte: a missing
/// UART must not hang the guest.
#[cfg(not(test))]
const SPINS: u32 = 100_000;

/// Sets COM1 to 115200 8N1 with FIFOs and no interrupts.
#[cfg(not(test))]
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts: this guest polls
    outb(COM1 + 3, 0x80); // DLAB to set the divisor
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFOs on, cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
}

/// In the host test build the console is standard output.
#[cfg(test)]
fn put(byte: u8) {
    if byte != b'\r' {
        std::print!("{}", char::from(byte));
    }
}

#[cfg(not(test))]
fn put(byte: u8) {
    let mut spins = 0;
    while inb(LSR) & THR_EMPTY == 0 && spins < SPINS {
        spins += 1;
        core::hint::spin_loop();
    }
    outb(COM1, byte);
}

/// The console as a `fmt::Write` sink (`\n` becomes `\r\n`).
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Prints a formatted line on the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Console, $($arg)*);
    }};
}

/// Prints on the console without a newline.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Console, $($arg)*);
    }};
}
