//! The virtio-fs device (virtio 1.2, 5.11): feature negotiation, the tag
//! from its configuration, and its two queues — high priority (FORGET,
//! which has no reply) and the first request queue. Requests are sent one
//! at a time and polled for (this guest runs with interrupts off).
//!
//! A notification can be lost: a vhost-user backend drops a kick that
//! arrives before it has enabled the ring, and this guest sends its first
//! request right after DRIVER_OK. So the wait for a reply notifies the
//! device again every [`REKICK_SPINS`] polls (a spurious notification is
//! harmless) instead of spinning for ever on a request the device never
//! saw. After any queue error the device is not used again: buffers may
//! still be in its hands.

use virtio_drivers::device::common::Feature;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

use crate::fuse::Channel;
use crate::hal::RumkHal;

/// Entries per virtqueue: a request uses at most three descriptors and
/// only one is in flight.
pub const QUEUE_SIZE: usize = 8;
const HIPRIO_QUEUE: u16 = 0;
const REQUEST_QUEUE: u16 = 1;
/// Polls of the used ring between two notifications of the same request.
const REKICK_SPINS: u32 = 1 << 20;
/// `virtio_fs_config.tag` is 36 bytes, NUL-padded.
const TAG_LEN: usize = 36;
/// Offset of `num_request_queues` in the configuration.
const NUM_REQUEST_QUEUES: usize = 36;

/// Why the device could not be used.
#[derive(Debug)]
pub enum Error {
    /// The device does not offer VIRTIO_F_VERSION_1 or refused our features.
    Features,
    /// The configuration is unreadable or announces no request queue.
    Config,
    /// Setting up or using a virtqueue failed.
    Queue(virtio_drivers::Error),
    /// The device claims to have written more than the buffers hold.
    Overrun,
    /// An earlier queue error: the device is no longer used.
    Broken,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Features => write!(f, "feature negotiation failed (need VIRTIO_F_VERSION_1)"),
            Error::Config => write!(f, "unusable device configuration"),
            Error::Queue(e) => write!(f, "virtqueue: {e}"),
            Error::Overrun => write!(f, "device reports more bytes than the reply buffers hold"),
            Error::Broken => write!(f, "device abandoned after an earlier queue error"),
        }
    }
}

/// An initialised virtio-fs device.
pub struct VirtioFs<T: Transport> {
    transport: T,
    hiprio: VirtQueue<RumkHal, QUEUE_SIZE>,
    requests: VirtQueue<RumkHal, QUEUE_SIZE>,
    tag: [u8; TAG_LEN],
    /// Set by a queue error; no request is sent after it.
    broken: bool,
}

impl<T: Transport> VirtioFs<T> {
    /// Negotiates features (VERSION_1 only: no indirect descriptors, no
    /// event index), reads the tag and sets up the queues.
    pub fn new(mut transport: T) -> Result<Self, Error> {
        let features = transport.begin_init(Feature::VERSION_1);
        // begin_init does not check that the device accepted the features.
        if !features.contains(Feature::VERSION_1)
            || !transport.get_status().contains(DeviceStatus::FEATURES_OK)
        {
            transport.set_status(DeviceStatus::FAILED);
            return Err(Error::Features);
        }
        let tag: [u8; TAG_LEN] = transport.read_config_space(0).map_err(|_| Error::Config)?;
        let queues: u32 = transport
            .read_config_space(NUM_REQUEST_QUEUES)
            .map_err(|_| Error::Config)?;
        if queues == 0 {
            transport.set_status(DeviceStatus::FAILED);
            return Err(Error::Config);
        }
        let hiprio =
            VirtQueue::new(&mut transport, HIPRIO_QUEUE, false, false).map_err(Error::Queue)?;
        let requests =
            VirtQueue::new(&mut transport, REQUEST_QUEUE, false, false).map_err(Error::Queue)?;
        transport.finish_init();
        Ok(VirtioFs {
            transport,
            hiprio,
            requests,
            tag,
            broken: false,
        })
    }
}

impl<T: Transport> Channel for VirtioFs<T> {
    /// The tag the host gave the device (up to its first NUL), if UTF-8.
    fn tag(&self) -> &str {
        let end = self.tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
        core::str::from_utf8(&self.tag[..end]).unwrap_or("?")
    }

    /// Sends `request` on the request queue and waits for the reply in
    /// `header` then `body`; returns the bytes the device wrote, checked
    /// to fit the buffers.
    fn call(&mut self, request: &[u8], header: &mut [u8], body: &mut [u8]) -> Result<usize, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let room = header.len() + body.len();
        let inputs = [request];
        let written = if body.is_empty() {
            let mut outputs = [header];
            roundtrip(
                &mut self.requests,
                &mut self.transport,
                REQUEST_QUEUE,
                &inputs,
                &mut outputs,
            )
        } else {
            let mut outputs = [header, body];
            roundtrip(
                &mut self.requests,
                &mut self.transport,
                REQUEST_QUEUE,
                &inputs,
                &mut outputs,
            )
        };
        let written = match written {
            Ok(n) => n as usize,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        if written > room {
            return Err(Error::Overrun);
        }
        Ok(written)
    }

    /// Sends `request`, which has no reply (FORGET), on the high-priority
    /// queue and waits for the device to take it.
    fn send(&mut self, request: &[u8]) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let inputs = [request];
        let mut outputs: [&mut [u8]; 0] = [];
        roundtrip(
            &mut self.hiprio,
            &mut self.transport,
            HIPRIO_QUEUE,
            &inputs,
            &mut outputs,
        )
        .map(|_| ())
        .inspect_err(|_| self.broken = true)
    }
}

/// Adds one request to `queue`, notifies the device, and polls for its
/// completion, notifying again every [`REKICK_SPINS`] polls; returns the
/// bytes the device says it wrote.
fn roundtrip<'a, T: Transport>(
    queue: &mut VirtQueue<RumkHal, QUEUE_SIZE>,
    transport: &mut T,
    index: u16,
    inputs: &'a [&'a [u8]],
    outputs: &'a mut [&'a mut [u8]],
) -> Result<u32, Error> {
    // SAFETY: the buffers are borrowed for this whole call, and it returns
    // only after `pop_used` took the token back, or after an error that
    // makes the caller abandon the device (`broken`).
    let token = unsafe { queue.add(inputs, outputs) }.map_err(Error::Queue)?;
    transport.notify(index);
    let mut spins: u32 = 0;
    while !queue.can_pop() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(REKICK_SPINS) {
            transport.notify(index);
        }
        core::hint::spin_loop();
    }
    // SAFETY: the same buffers as given to `add` for this token.
    unsafe { queue.pop_used(token, inputs, outputs) }.map_err(Error::Queue)
}
