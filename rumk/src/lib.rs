//! Rumk, the library half: everything but the boot path, so that the
//! FUSE client and the guest's logic also build for the host and are unit
//! tested there (`cargo test --lib`) against a scripted server
//! ([`testfs`]). `main.rs` holds the entry, the libc shims and the link
//! setup, which only the freestanding binary has.
//!
//! Modules, one job each: [`port`] and [`serial`] (console), [`exit`],
//! [`hal`] (DMA for virtio-drivers), [`transport`] (finding the device;
//! MMIO and PCI registers), [`virtio_fs`] (the device and its queues),
//! [`fuse`] (the FUSE client) and [`app`] (listing and verifying).

#![cfg_attr(not(test), no_std)]

pub mod app;
pub mod exit;
pub mod fuse;
pub mod hal;
pub mod port;
pub mod serial;
#[cfg(test)]
mod testfs;
pub mod transport;
pub mod virtio_fs;
