//! The virtio-fs device of one guest: the vhost-user backend that takes
//! FUSE requests off the guest's virtqueues, has them answered by a
//! [`GuestFs`] (through `fuse-backend-rs`'s decoder, [`Server`]) and puts the
//! replies back.
//!
//! The virtio-fs device has a high-priority queue (0: FORGET and INTERRUPT,
//! which need no reply) and request queues (1…); QEMU's `vhost-user-fs-pci`
//! uses one request queue unless told otherwise. All queues of a guest are
//! served by one thread: the guest's kernel already overlaps requests, and
//! the block cache behind the view is shared by every guest.
//!
//! A request the decoder rejects (short, inconsistent lengths, a descriptor
//! chain pointing outside guest memory) is returned to the guest unanswered
//! and logged at debug level: a hostile guest only hangs its own request.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::error::Error;
use crate::fs::GuestFs;

/// Guest memory as the backend sees it (no dirty-page bitmap: nothing is
/// migrated).
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// The high-priority queue and one request queue.
const QUEUES: usize = 2;
/// The largest queue a guest may set up (QEMU's default is 128 entries).
const MAX_QUEUE_SIZE: usize = 1024;

/// One guest's virtio-fs device.
pub struct FsDevice {
    server: Server<GuestFs>,
    mem: GuestMemory,
    event_idx: AtomicBool,
    /// Ends the queue thread when the connection is dropped.
    exit: EventNotifier,
    exit_consumer: EventConsumer,
}

impl FsDevice {
    /// A device serving `fs` to the guest whose memory `mem` will map (the
    /// same `GuestMemoryAtomic` the vhost-user daemon is given, which it
    /// fills when the guest sends its memory table).
    pub fn new(fs: GuestFs, mem: GuestMemory) -> Result<FsDevice, Error> {
        let (exit_consumer, exit) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(Error::EventFd)?;
        Ok(FsDevice {
            server: Server::new(fs),
            mem,
            event_idx: AtomicBool::new(false),
            exit,
            exit_consumer,
        })
    }

    /// Answers every request waiting on `vring`; true if there were any.
    fn process_queue(&self, vring: &VringRwLock) -> io::Result<bool> {
        let mem = self.mem.memory();
        let mut used_any = false;
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            used_any = true;
            let head = chain.head_index();
            let written = match Reader::from_descriptor_chain(&*mem, chain.clone()) {
                Ok(reader) => match VirtioFsWriter::new(&*mem, chain) {
                    Ok(writer) => self
                        .server
                        .handle_message(reader, writer.into(), None, None)
                        .unwrap_or_else(|e| {
                            tracing::debug!("request dropped: {e}");
                            0
                        }),
                    Err(e) => {
                        tracing::debug!("unusable reply buffers: {e}");
                        0
                    }
                },
                Err(e) => {
                    tracing::debug!("unusable request buffers: {e}");
                    0
                }
            };
            let written = u32::try_from(written).unwrap_or(u32::MAX);
            vring
                .add_used(head, written)
                .map_err(|e| io::Error::other(format!("returning a used descriptor: {e}")))?;
            let notify = !self.event_idx.load(Ordering::Relaxed)
                || vring.needs_notification().unwrap_or(true);
            if notify {
                vring.signal_used_queue()?;
            }
        }
        Ok(used_any)
    }
}

impl VhostUserBackend for FsDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, _mem: GuestMemory) -> io::Result<()> {
        // `self.mem` is the daemon's own GuestMemoryAtomic, already updated.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((
            self.exit_consumer.try_clone().ok()?,
            self.exit.try_clone().ok()?,
        ))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event {evset:?}")));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("no queue {device_event}")))?;
        if self.event_idx.load(Ordering::Relaxed) {
            // With EVENT_IDX the guest is not notified of requests that
            // arrive while notifications are off: drain until none came.
            loop {
                vring
                    .disable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                self.process_queue(vring)?;
                if !vring
                    .enable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?
                {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}
