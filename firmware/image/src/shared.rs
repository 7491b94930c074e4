//! A confidential VM's I/O through the shared window.
//!
//! The host may read and write only memory the guest shares with it; on
//! covm's emulated platform that is the window `layout::SHARED_WINDOW`,
//! shared with the page-state request (`ports::PAGE_STATE_*`) before any
//! driver starts. The virtqueues come from the DMA pool in its first 3 MiB;
//! every other buffer a driver hands a device (virtio-drivers passes each
//! through `Hal::share`) is copied into a bounce buffer in its last MiB
//! and, for what the device writes, copied back at `Hal::unshare`. So the
//! device never sees a private page, and the copies run in ring 3.

use crate::hw;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use covm_guest_abi::layout::{BOUNCE, BOUNCE_SIZE, PAGE_SIZE, SHARED_WINDOW, SHARED_WINDOW_SIZE};
use covm_guest_abi::ports::{page_state, PAGE_STATE_FIRST, PAGE_STATE_OP, PAGE_STATE_PAGES};
use covm_guest_abi::shared_map;
use linked_list_allocator::LockedHeap;
use virtio_drivers::{BufferDirection, PhysAddr};

static CONFIDENTIAL: AtomicBool = AtomicBool::new(false);
static BOUNCE_HEAP: LockedHeap = LockedHeap::empty();

/// Whether the drivers bounce (a confidential VM's).
pub fn confidential() -> bool {
    CONFIDENTIAL.load(Ordering::Relaxed)
}

/// Asks the platform to convert `pages` pages from `first_page` with
/// `op`; whether it did.
pub fn page_state_request(first_page: u32, pages: u32, op: u32) -> bool {
    hw::outl(PAGE_STATE_FIRST, first_page);
    hw::outl(PAGE_STATE_PAGES, pages);
    hw::outl(PAGE_STATE_OP, op);
    hw::inl(PAGE_STATE_OP) == page_state::OK
}

/// Shares the window with the host and starts bouncing. Called once, by
/// the CPU that drives the devices, before any driver is created, on a
/// confidential VM (the caller checked the window is RAM).
pub fn init() -> Result<(), &'static str> {
    let (first, pages) = (
        (SHARED_WINDOW / PAGE_SIZE) as u32,
        (SHARED_WINDOW_SIZE / PAGE_SIZE) as u32,
    );
    // The guest's own record first (covm_guest_abi::shared_map): it
    // migrates sealed, and the destination's agent holds the host to it.
    // SAFETY: SHARED_MAP is a private page of identity-mapped RAM (the
    // caller checked) that only this code writes, once, before any request.
    let map = unsafe { core::slice::from_raw_parts_mut(shared_map::SHARED_MAP as *mut u8, PAGE_SIZE as usize) };
    shared_map::mark(map, 0, shared_map::WINDOW_PAGES, true);
    if !page_state_request(first, pages, page_state::TO_SHARED) {
        return Err("the platform refused to share the window the drivers need with the host");
    }
    // The migration agent reads a clear dirty bit in a 2 MiB entry of the
    // identity map as "still zero since launch" and does not read those
    // pages (docs/firmware.md, write tracking); a device's writes set no
    // bit. So the CPU writes every 2 MiB of the window once, here, before
    // any device can.
    for entry in (SHARED_WINDOW..SHARED_WINDOW + SHARED_WINDOW_SIZE).step_by(2 << 20) {
        // SAFETY: identity-mapped RAM of the window (the caller checked),
        // which nothing uses yet; a volatile zero write changes no content.
        unsafe { core::ptr::write_volatile(entry as *mut u8, core::ptr::read_volatile(entry as *const u8)) };
    }
    // SAFETY: BOUNCE..+BOUNCE_SIZE is identity-mapped RAM in the window,
    // used for nothing else; one call only.
    unsafe { BOUNCE_HEAP.lock().init(BOUNCE as *mut u8, BOUNCE_SIZE as usize) };
    CONFIDENTIAL.store(true, Ordering::Relaxed);
    Ok(())
}

fn in_window(addr: u64, len: usize) -> bool {
    addr >= SHARED_WINDOW && addr + len as u64 <= SHARED_WINDOW + SHARED_WINDOW_SIZE
}

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len.max(1), 64).expect("a buffer's size is a valid layout")
}

/// `Hal::share`: the buffer itself on a plain VM or when it already lies
/// in the window; a bounce copy of it otherwise.
///
/// # Safety
/// As `Hal::share`: `buffer` is valid until the matching [`unshare`].
pub unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
    let (addr, len) = (buffer.as_ptr() as *mut u8 as u64, buffer.len());
    if !confidential() || in_window(addr, len) {
        return addr;
    }
    let bounce = match BOUNCE_HEAP.lock().allocate_first_fit(layout(len)) {
        Ok(p) => p.as_ptr(),
        Err(()) => crate::virtio::fail_device(format_args!(
            "the bounce buffers ({} KiB) cannot hold another {len} bytes",
            BOUNCE_SIZE >> 10
        )),
    };
    if direction != BufferDirection::DeviceToDriver {
        // SAFETY: `buffer` is valid for reads (the caller's guarantee) and
        // `bounce` was just allocated with room for `len` bytes.
        unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, bounce, len) };
    }
    bounce as u64
}

/// `Hal::unshare`: copies what the device wrote back from the bounce
/// buffer and frees it.
///
/// # Safety
/// As `Hal::unshare`: `paddr` is what [`share`] returned for `buffer`.
pub unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
    let (addr, len) = (buffer.as_ptr() as *mut u8 as u64, buffer.len());
    if paddr == addr {
        return;
    }
    if direction != BufferDirection::DriverToDevice {
        // SAFETY: `paddr` is the bounce copy of `buffer`, `len` bytes, and
        // `buffer` is valid for writes (the caller's guarantee).
        unsafe { core::ptr::copy_nonoverlapping(paddr as *const u8, addr as *mut u8, len) };
    }
    // SAFETY: allocated by `share` with this layout.
    unsafe {
        BOUNCE_HEAP.lock().deallocate(
            NonNull::new(paddr as *mut u8).expect("a bounce buffer is not at 0"),
            layout(len),
        )
    };
}
