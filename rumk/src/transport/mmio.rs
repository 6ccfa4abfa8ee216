//! virtio-mmio, version 2 (virtio 1.2, 4.2.2): the microvm machine's
//! transport. QEMU's microvm places 0x200-byte slots from 0xfeb00000 and
//! fills them from the top; `-global virtio-mmio.force-legacy=false`
//! gives the version-2 register layout this transport requires.

use core::ptr::{read_volatile, write_volatile};

use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{VIRTIO_FS_DEVICE_ID, mapped, no_device_type, read_config, write_config};

/// The first virtio-mmio slot on microvm.
const SLOTS_BASE: usize = 0xfeb0_0000;
/// Bytes per slot.
const SLOT_SIZE: usize = 0x200;
/// Slots scanned (microvm has fewer; absent slots read as zero).
const SLOTS: usize = 32;

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;
const CONFIG_GENERATION: usize = 0x0fc;
const CONFIG: usize = 0x100;
/// "virt", little-endian.
const MAGIC_VALUE: u32 = 0x7472_6976;

/// A version-2 virtio-mmio device with device id 26.
pub struct Mmio {
    base: usize,
}

/// The first slot holding a version-2 virtio-fs device.
pub fn find() -> Option<Mmio> {
    (0..SLOTS)
        .map(|i| SLOTS_BASE + i * SLOT_SIZE)
        .find_map(|base| {
            // Slots lie below 4 GiB, in the identity map (boot.rs).
            let slot = Mmio { base };
            let version = slot.read(VERSION);
            let ours =
                slot.read(MAGIC) == MAGIC_VALUE && slot.read(DEVICE_ID) == VIRTIO_FS_DEVICE_ID;
            if ours && version != 2 {
                crate::println!(
                    "RUMK virtio-mmio {base:#x}: version {version}, need 2 \
                 (-global virtio-mmio.force-legacy=false)"
                );
            }
            (ours && version == 2).then_some(slot)
        })
}

impl Mmio {
    /// The slot's physical address.
    pub fn base(&self) -> usize {
        self.base
    }

    fn read(&self, offset: usize) -> u32 {
        debug_assert!(mapped((self.base + offset) as u64, 4));
        // SAFETY: `base` is a virtio-mmio slot in the identity map and
        // `offset` a register of its fixed layout.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&mut self, offset: usize, value: u32) {
        // SAFETY: as for `read`.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.write(offset, value as u32);
        self.write(offset + 4, (value >> 32) as u32);
    }
}

impl Transport for Mmio {
    fn device_type(&self) -> DeviceType {
        no_device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(DEVICE_FEATURES));
        self.write(DEVICE_FEATURES_SEL, 1);
        low | (u64::from(self.read(DEVICE_FEATURES)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, driver_features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write(QUEUE_SEL, queue.into());
        self.read(QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.write(QUEUE_NOTIFY, queue.into());
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read(STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write(STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Legacy (version 1) only.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.write(QUEUE_SEL, queue.into());
        self.write(QUEUE_NUM, size);
        self.write64(QUEUE_DESC, descriptors);
        self.write64(QUEUE_DRIVER, driver_area);
        self.write64(QUEUE_DEVICE, device_area);
        self.write(QUEUE_READY, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.write(QUEUE_SEL, queue.into());
        self.write(QUEUE_READY, 0);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.write(QUEUE_SEL, queue.into());
        self.read(QUEUE_READY) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let pending = self.read(INTERRUPT_STATUS);
        self.write(INTERRUPT_ACK, pending);
        InterruptStatus::from_bits_retain(pending)
    }

    fn read_config_generation(&self) -> u32 {
        self.read(CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        // SAFETY: the slot's configuration is its last 0x100 bytes.
        unsafe { read_config(self.base + CONFIG, SLOT_SIZE - CONFIG, offset) }
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        // SAFETY: as for `read_config_space`.
        unsafe { write_config(self.base + CONFIG, SLOT_SIZE - CONFIG, offset, value) }
    }
}
