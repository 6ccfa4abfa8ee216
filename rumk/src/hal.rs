//! The `virtio_drivers::Hal` of this guest: memory is identity-mapped
//! (boot.rs), so physical and virtual addresses are equal, and all of
//! guest RAM is shared with the vhost-user backend (a memfd), so sharing a
//! buffer needs no bounce copy. Virtqueue memory comes from a fixed pool:
//! the guest sets up two queues once and never frees them.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// Pages for virtqueue rings: two queues of [`crate::virtio_fs::QUEUE_SIZE`]
/// entries need four pages; room for a few more.
const POOL_PAGES: usize = 32;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[u8; POOL_PAGES * PAGE_SIZE]>);

// SAFETY: the pool is handed out in disjoint page ranges (see `NEXT`).
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([0; POOL_PAGES * PAGE_SIZE]));
/// The first pool page not yet handed out.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Identity-mapped, bump-allocated DMA for virtio-drivers.
pub struct RumkHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned, disjoint ranges of a
// static pool (never reused: `dma_dealloc` keeps them); every address is
// its own physical address (identity mapping) in RAM the device can reach.
unsafe impl Hal for RumkHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = NEXT.fetch_add(pages, Ordering::Relaxed);
        if pages == 0 || first.checked_add(pages).is_none_or(|end| end > POOL_PAGES) {
            // virtio-drivers turns a zero address into Error::DmaError.
            return (0, NonNull::dangling());
        }
        // SAFETY: `first + pages <= POOL_PAGES`: within the pool.
        let ptr = unsafe { POOL.0.get().cast::<u8>().add(first * PAGE_SIZE) };
        // The pool is in .bss, zeroed at boot, and each page is handed out
        // once: it is still zero.
        match NonNull::new(ptr) {
            Some(p) => (ptr as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Queues live until the VM exits: nothing is returned to the pool.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // The low 4 GiB are identity-mapped; transports check that device
        // registers lie there before asking.
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
