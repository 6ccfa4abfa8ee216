//! virtio-pci, modern (virtio 1.2, 4.1): the q35 machine's transport.
//! SeaBIOS leaves the ECAM at 0xb0000000 with BARs assigned; the device's
//! vendor capabilities say where in its BARs the common configuration,
//! notification, ISR and device configuration blocks are. Enumeration,
//! capabilities and BAR decoding come from virtio-drivers' PCI bus code;
//! each block is checked to lie inside its BAR and below 4 GiB.

use core::ptr::{read_volatile, write_volatile};

use virtio_drivers::PhysAddr;
use virtio_drivers::transport::pci::bus::{
    Cam, Command, ConfigurationAccess, DeviceFunction, MmioCam, PciRoot,
};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{VIRTIO_FS_DEVICE_ID, mapped, no_device_type, read_config, write_config};

/// Where SeaBIOS leaves q35's ECAM.
const ECAM_BASE: usize = 0xb000_0000;
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern virtio-pci device ids are 0x1040 + the virtio device id.
const VIRTIO_FS_PCI_ID: u16 = 0x1040 + VIRTIO_FS_DEVICE_ID as u16;
const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

// virtio_pci_common_cfg offsets (4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0;
const DEVICE_FEATURE: usize = 4;
const DRIVER_FEATURE_SELECT: usize = 8;
const DRIVER_FEATURE: usize = 12;
const DEVICE_STATUS: usize = 20;
const CONFIG_GENERATION: usize = 21;
const QUEUE_SELECT: usize = 22;
const QUEUE_SIZE: usize = 24;
const QUEUE_ENABLE: usize = 28;
const QUEUE_NOTIFY_OFF: usize = 30;
const QUEUE_DESC: usize = 32;
const QUEUE_DRIVER: usize = 40;
const QUEUE_DEVICE: usize = 48;
/// Bytes of the common configuration block this transport touches.
const COMMON_LEN: u32 = 56;

/// A register block inside a BAR: identity-mapped address and length.
#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    len: usize,
}

/// A modern virtio-pci virtio-fs device.
pub struct Pci {
    function: DeviceFunction,
    common: Block,
    notify: Block,
    notify_multiplier: u32,
    isr: Block,
    device: Option<Block>,
}

/// The first virtio-fs function on bus 0, with its register blocks
/// located and checked, memory decoding and bus mastering on.
pub fn find() -> Option<Pci> {
    // SAFETY: on q35 the ECAM is a 256 MiB MMIO window at ECAM_BASE, inside
    // the identity map; elsewhere (microvm) the range is unassigned and
    // reads as all-ones, which enumeration takes as "no device".
    let cam = unsafe { MmioCam::new(ECAM_BASE as *mut u8, Cam::Ecam) };
    // Capability bodies are read-only, so a clone may read them while the
    // root keeps the only writer.
    // SAFETY: `reader` only reads capability fields.
    let reader = unsafe { cam.unsafe_clone() };
    let mut root = PciRoot::new(cam);
    let function = root
        .enumerate_bus(0)
        .find(|(_, info)| info.vendor_id == VIRTIO_VENDOR && info.device_id == VIRTIO_FS_PCI_ID)
        .map(|(f, _)| f)?;
    match locate(&mut root, &reader, function) {
        Ok(pci) => {
            let (_, command) = root.get_status_command(function);
            root.set_command(
                function,
                command | Command::MEMORY_SPACE | Command::BUS_MASTER,
            );
            Some(pci)
        }
        Err(why) => {
            crate::println!("RUMK virtio-pci {function}: unusable: {why}");
            None
        }
    }
}

/// Reads the vendor capabilities of `function` and checks each block.
fn locate(
    root: &mut PciRoot<MmioCam<'static>>,
    reader: &MmioCam<'static>,
    function: DeviceFunction,
) -> Result<Pci, &'static str> {
    let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
    let mut notify_multiplier = 0;
    let caps: heapless_caps::Caps = root
        .capabilities(function)
        .filter(|c| c.id == CAP_VENDOR)
        .collect();
    for cap in caps.iter() {
        let cap_len = cap.private_header as u8;
        let cfg_type = (cap.private_header >> 8) as u8;
        if cap_len < 16 {
            continue;
        }
        let bar = reader.read_word(function, cap.offset + 4) as u8;
        let offset = reader.read_word(function, cap.offset + 8);
        let length = reader.read_word(function, cap.offset + 12);
        let slot = match cfg_type {
            CFG_COMMON if common.is_none() => &mut common,
            CFG_NOTIFY if notify.is_none() && cap_len >= 20 => {
                notify_multiplier = reader.read_word(function, cap.offset + 16);
                &mut notify
            }
            CFG_ISR if isr.is_none() => &mut isr,
            CFG_DEVICE if device.is_none() => &mut device,
            _ => continue,
        };
        *slot = Some(block(root, function, bar, offset, length)?);
    }
    let common = common.ok_or("no common configuration capability")?;
    if common.len < COMMON_LEN as usize {
        return Err("common configuration block too short");
    }
    let notify = notify.ok_or("no notification capability")?;
    let isr = isr.ok_or("no ISR capability")?;
    if isr.len == 0 || notify.len < 2 {
        return Err("empty ISR or notification block");
    }
    Ok(Pci {
        function,
        common,
        notify,
        notify_multiplier,
        isr,
        device,
    })
}

/// The block `offset..offset + length` of BAR `bar`, if it is an
/// assigned memory BAR that holds it and lies below 4 GiB.
fn block(
    root: &mut PciRoot<MmioCam<'static>>,
    function: DeviceFunction,
    bar: u8,
    offset: u32,
    length: u32,
) -> Result<Block, &'static str> {
    if bar > 5 {
        return Err("capability names no BAR");
    }
    let info = root
        .bar_info(function, bar)
        .map_err(|_| "unreadable BAR")?
        .ok_or("BAR not present")?;
    let (address, size) = info.memory_address_size().ok_or("I/O BAR")?;
    let end = u64::from(offset) + u64::from(length);
    if address == 0 || end > size {
        return Err("block outside its BAR");
    }
    let start = address + u64::from(offset);
    if !mapped(start, u64::from(length)) {
        return Err("BAR above 4 GiB, outside the identity map");
    }
    Ok(Block {
        addr: start as usize,
        len: length as usize,
    })
}

/// A fixed-capacity list of capabilities (no allocator in this guest).
mod heapless_caps {
    use virtio_drivers::transport::pci::bus::CapabilityInfo;

    /// At most this many vendor capabilities are considered.
    const MAX: usize = 16;

    /// The vendor capabilities of one function.
    #[derive(Default)]
    pub struct Caps {
        items: [Option<CapabilityInfo>; MAX],
        len: usize,
    }

    impl Caps {
        /// The capabilities collected.
        pub fn iter(&self) -> impl Iterator<Item = &CapabilityInfo> {
            self.items.iter().take(self.len).flatten()
        }
    }

    impl FromIterator<CapabilityInfo> for Caps {
        fn from_iter<I: IntoIterator<Item = CapabilityInfo>>(iter: I) -> Self {
            let mut caps = Caps::default();
            for cap in iter.into_iter().take(MAX) {
                caps.items[caps.len] = Some(cap);
                caps.len += 1;
            }
            caps
        }
    }
}

impl Pci {
    /// The bus, device and function.
    pub fn function(&self) -> DeviceFunction {
        self.function
    }

    fn common_read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: `locate` checked the common block is mapped and at least
        // COMMON_LEN long; every offset used is a field inside it.
        unsafe { read_volatile((self.common.addr + offset) as *const T) }
    }

    fn common_write<T: Copy>(&mut self, offset: usize, value: T) {
        // SAFETY: as for `common_read`.
        unsafe { write_volatile((self.common.addr + offset) as *mut T, value) }
    }

    fn common_write64(&mut self, offset: usize, value: u64) {
        self.common_write(offset, value as u32);
        self.common_write(offset + 4, (value >> 32) as u32);
    }

    fn select(&mut self, queue: u16) {
        self.common_write(QUEUE_SELECT, queue);
    }
}

impl Transport for Pci {
    fn device_type(&self) -> DeviceType {
        no_device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.common_write(DEVICE_FEATURE_SELECT, 0u32);
        let low = u64::from(self.common_read::<u32>(DEVICE_FEATURE));
        self.common_write(DEVICE_FEATURE_SELECT, 1u32);
        low | (u64::from(self.common_read::<u32>(DEVICE_FEATURE)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.common_write(DRIVER_FEATURE_SELECT, 0u32);
        self.common_write(DRIVER_FEATURE, driver_features as u32);
        self.common_write(DRIVER_FEATURE_SELECT, 1u32);
        self.common_write(DRIVER_FEATURE, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.select(queue);
        self.common_read::<u16>(QUEUE_SIZE).into()
    }

    fn notify(&mut self, queue: u16) {
        self.select(queue);
        let off = self.common_read::<u16>(QUEUE_NOTIFY_OFF);
        let at = usize::from(off).saturating_mul(self.notify_multiplier as usize);
        // A device naming a doorbell outside its notification block gets
        // no write there.
        if at.checked_add(2).is_some_and(|end| end <= self.notify.len) {
            // SAFETY: `at + 2 <= notify.len`, inside the checked block.
            unsafe { write_volatile((self.notify.addr + at) as *mut u16, queue) }
        } else {
            crate::println!("RUMK virtio-pci: doorbell {at:#x} outside the notification block");
        }
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.common_read::<u8>(DEVICE_STATUS).into())
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.common_write(DEVICE_STATUS, status.bits() as u8);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

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
        self.select(queue);
        self.common_write(QUEUE_SIZE, size as u16);
        self.common_write64(QUEUE_DESC, descriptors);
        self.common_write64(QUEUE_DRIVER, driver_area);
        self.common_write64(QUEUE_DEVICE, device_area);
        self.common_write(QUEUE_ENABLE, 1u16);
    }

    fn queue_unset(&mut self, _queue: u16) {
        // virtio-pci has no way to disable a single queue; a reset does.
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.select(queue);
        self.common_read::<u16>(QUEUE_ENABLE) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // SAFETY: the ISR block is mapped and at least one byte long;
        // reading it acknowledges.
        let isr = unsafe { read_volatile(self.isr.addr as *const u8) };
        InterruptStatus::from_bits_retain(isr.into())
    }

    fn read_config_generation(&self) -> u32 {
        self.common_read::<u8>(CONFIG_GENERATION).into()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let block = self
            .device
            .ok_or(virtio_drivers::Error::ConfigSpaceMissing)?;
        // SAFETY: `locate` checked the device block is mapped.
        unsafe { read_config(block.addr, block.len, offset) }
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let block = self
            .device
            .ok_or(virtio_drivers::Error::ConfigSpaceMissing)?;
        // SAFETY: as for `read_config_space`.
        unsafe { write_config(block.addr, block.len, offset, value) }
    }
}
