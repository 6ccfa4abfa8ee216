//! Finding the virtio-fs device and talking to its registers.
//!
//! virtio-drivers 0.13 cannot drive a virtio-fs device through its stock
//! transports: its `DeviceType` stops at `Sound = 25`, and both
//! `MmioTransport::new` and `PciTransport::new` reject a device id they
//! cannot name. This guest therefore carries its own two transports for
//! the modern (virtio 1.x) register layouts, [`mmio::Mmio`] (version 2
//! virtio-mmio, `-M microvm`) and [`pci::Pci`] (virtio-pci capabilities,
//! `-M q35`), each implementing virtio-drivers' [`Transport`] trait, so
//! that `VirtQueue` and the device-initialisation steps of the trait are
//! used unchanged. Discovery matches the raw device id 26 before a
//! transport exists; PCI discovery uses virtio-drivers' bus plumbing
//! (ECAM access, enumeration, capabilities, BARs).
//!
//! Every address and length the device reports is checked against the
//! identity-mapped low 4 GiB and the register block it belongs to before
//! it is used.
//!
//! [`Transport`]: virtio_drivers::transport::Transport

pub mod mmio;
pub mod pci;

/// The virtio device id of a file-system device (virtio 1.2, 5.11).
pub const VIRTIO_FS_DEVICE_ID: u32 = 26;

/// The end of the identity-mapped address space (boot.rs).
pub const MAPPED_END: u64 = 1 << 32;

/// The virtio-fs devices found, of either kind.
pub enum Found {
    /// A virtio-mmio device (microvm).
    Mmio(mmio::Mmio),
    /// A virtio-pci device (q35).
    Pci(pci::Pci),
}

/// The first virtio-fs device: virtio-mmio slots first, then PCI bus 0.
pub fn find() -> Option<Found> {
    if let Some(m) = mmio::find() {
        return Some(Found::Mmio(m));
    }
    pci::find().map(Found::Pci)
}

/// True if `[addr, addr + len)` lies in the identity-mapped low 4 GiB.
pub fn mapped(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// Reads `size_of::<T>()` bytes of device configuration at `offset` of a
/// block of `len` bytes at `base`, one byte at a time (any width is valid
/// for a byte read, and the result needs no alignment).
///
/// # Safety
///
/// `base..base + len` must be a mapped device configuration block.
pub unsafe fn read_config<T: zerocopy::FromBytes>(
    base: usize,
    len: usize,
    offset: usize,
) -> virtio_drivers::Result<T> {
    const MAX: usize = 256;
    let size = size_of::<T>();
    if size > MAX || offset.checked_add(size).is_none_or(|end| end > len) {
        return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
    }
    let mut bytes = [0u8; MAX];
    for (i, b) in bytes.iter_mut().take(size).enumerate() {
        // SAFETY: `offset + i < len`, within the block the caller vouched for.
        *b = unsafe { core::ptr::read_volatile((base + offset + i) as *const u8) };
    }
    T::read_from_bytes(&bytes[..size]).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)
}

/// Writes `value` into device configuration at `offset`, byte by byte.
///
/// # Safety
///
/// As [`read_config`].
pub unsafe fn write_config<T: zerocopy::IntoBytes + zerocopy::Immutable>(
    base: usize,
    len: usize,
    offset: usize,
    value: T,
) -> virtio_drivers::Result<()> {
    let bytes = value.as_bytes();
    if offset.checked_add(bytes.len()).is_none_or(|end| end > len) {
        return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
    }
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: `offset + i < len`, within the block the caller vouched for.
        unsafe { core::ptr::write_volatile((base + offset + i) as *mut u8, *b) };
    }
    Ok(())
}

/// `Transport::device_type` cannot be answered truthfully: virtio-drivers
/// 0.13's `DeviceType` has no virtio-fs. Nothing calls it (neither
/// `VirtQueue` nor the trait's init steps; discovery checks the raw id),
/// so reaching it is a bug in this guest, reported as such rather than
/// answered with another device's type.
pub fn no_device_type() -> ! {
    panic!("virtio-drivers 0.13 has no DeviceType for virtio-fs (device id 26)")
}
