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
//!
//! The decoder is not handed a request as the guest's descriptor chain
//! offers it: [`answer`] first cuts it to the length its FUSE header
//! declares (the kernel always sends exactly that), refusing lengths below
//! a header or above the decoder's own cap. A chain's readable bytes are
//! the guest's to choose, whatever the request says: with an indirect table
//! whose descriptors all point at one region, a few megabytes of guest
//! memory read as gigabytes, and `fuse-backend-rs` 0.14 sizes IOCTL's input
//! buffer by them (`vec![0; in_size]`, checked only against the chain). No
//! decoder now sees past the declared length, and IOCTL, which a read-only
//! view never serves, is answered `ENOTTY` before the decoder runs, as the
//! FUSE mount answers it (`nexus_fs::fuse`'s cheap answers).

use std::io::{self, Write};
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, Ordering};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::{MAX_BUFFER_SIZE, Server};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
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

/// The longest request a guest may send: the decoder's own cap
/// (`MAX_BUFFER_SIZE` plus its private 4 KiB for headers), which it answers
/// with `ENOMEM`.
const MAX_REQUEST_LEN: u32 = MAX_BUFFER_SIZE + 0x1000;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unanswered {
    /// The request is shorter than a FUSE header.
    #[error("no FUSE header: {0}")]
    NoHeader(io::Error),
    /// A request of a kind that takes no reply (FORGET and the like)
    /// declares a length that is refused.
    #[error("opcode {opcode} declares {len} bytes: refused without a reply")]
    Length {
        /// The request's opcode.
        opcode: u32,
        /// The length its header declares.
        len: u32,
    },
    /// The request could not be cut to its declared length.
    #[error("cutting the request to {len} bytes: {source}")]
    Cut {
        /// The length its header declares.
        len: u32,
        /// What went wrong.
        source: fuse_backend_rs::transport::Error,
    },
    /// The device's own refusal could not be written.
    #[error("writing a refusal: {0}")]
    Refusal(io::Error),
    /// The decoder rejected the request.
    #[error("{0}")]
    Decoder(fuse_backend_rs::Error),
}

/// Has `server` answer the request in `reader`, with `writer`'s buffers for
/// the reply; returns how many bytes of reply were written.
///
/// The decoder only ever sees the request's declared length (see the
/// module documentation); a length below a header is `EINVAL`, one above
/// [`MAX_REQUEST_LEN`] `ENOMEM` (the decoder's own answer), and IOCTL is
/// `ENOTTY`, all without decoding the rest.
pub(crate) fn answer(
    server: &Server<GuestFs>,
    mut reader: Reader<'_>,
    writer: Writer<'_>,
) -> Result<usize, Unanswered> {
    let header: InHeader = reader.clone().read_obj().map_err(Unanswered::NoHeader)?;
    let len = header.len;
    let refusal = if (len as usize) < size_of::<InHeader>() {
        Some(libc::EINVAL)
    } else if len > MAX_REQUEST_LEN {
        Some(libc::ENOMEM)
    } else if header.opcode == Opcode::Ioctl as u32 {
        // Not a terminal, as the FUSE mount answers; and before the
        // decoder, which would allocate the in_size the guest asks for.
        Some(libc::ENOTTY)
    } else {
        None
    };
    if let Some(errno) = refusal {
        return refuse(writer, &header, errno);
    }
    // A request shorter than it declares keeps what it has: the decoder
    // then fails to read what is missing, as before.
    let keep = (len as usize).min(reader.available_bytes());
    reader
        .split_at(keep)
        .map_err(|source| Unanswered::Cut { len, source })?;
    server
        .handle_message(reader, writer, None, None)
        .map_err(Unanswered::Decoder)
}

/// Answers the request of `header` with `errno`, unless it is of a kind
/// that never takes a reply.
fn refuse(mut writer: Writer<'_>, header: &InHeader, errno: i32) -> Result<usize, Unanswered> {
    let opcode = header.opcode;
    if [Opcode::Forget, Opcode::BatchForget, Opcode::Interrupt]
        .iter()
        .any(|op| *op as u32 == opcode)
    {
        return Err(Unanswered::Length {
            opcode,
            len: header.len,
        });
    }
    let reply = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique: header.unique,
    };
    writer
        .write_all(reply.as_slice())
        .and_then(|()| writer.commit(None))
        .map_err(Unanswered::Refusal)?;
    Ok(writer.bytes_written())
}

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
                    Ok(writer) => answer(&self.server, reader, writer.into()).unwrap_or_else(|e| {
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
