//! Dirty-page tracking through KVM's dirty ring (`KVM_CAP_DIRTY_LOG_RING`),
//! the second of covm's two modes (`--dirty-tracking mode=ring`).
//!
//! Each vCPU gets a ring of `kvm_dirty_gfn` entries shared with KVM (mapped
//! at page offset `KVM_DIRTY_LOG_PAGE_OFFSET` of the vCPU fd). When the
//! guest first writes a write-protected page, KVM pushes its (slot, offset)
//! on the writing vCPU's ring and sets the entry's DIRTY flag. covm
//! *harvests*: it reads every DIRTY entry into a bitmap of its own, marks
//! the entry RESET, and calls `KVM_RESET_DIRTY_RINGS`, which write-protects
//! exactly those pages again and recycles the entries.
//!
//! The engine's contract (dirty pages stay reported until cleared; clearing
//! re-arms) maps onto that as: reading harvests into the accumulated
//! bitmap and returns it; clearing drops bits from the accumulated bitmap
//! only, since harvesting already re-armed the pages. A write after a
//! harvest lands on a ring again and is seen by the next harvest, so
//! nothing is lost between a harvest and the engine's clear.
//!
//! Compared with the bitmap mode, the cost scales with the number of pages
//! dirtied instead of the size of guest memory; a vCPU whose ring fills up
//! exits (`KVM_EXIT_DIRTY_RING_FULL`) and harvests before it runs on.

use crate::dirty::log::DirtyLogError;
use crate::vm::memory::GuestMemory;
use covm_guest_abi::layout::PAGE_SIZE;
use covm_migration::vm::DirtyBitmap;
use kvm_bindings::{kvm_dirty_gfn, kvm_enable_cap, KVMIO, KVM_CAP_DIRTY_LOG_RING, KVM_DIRTY_LOG_PAGE_OFFSET};
use kvm_ioctls::{VcpuFd, VmFd};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::ioctl;

/// Entries per vCPU ring when the option does not say.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;

/// An entry KVM has filled and covm has not harvested (uapi `KVM_DIRTY_GFN_F_DIRTY`).
const GFN_DIRTY: u32 = 1 << 0;
/// An entry covm has harvested, for KVM to recycle (uapi `KVM_DIRTY_GFN_F_RESET`).
const GFN_RESET: u32 = 1 << 1;

/// kvm-ioctls has no wrapper for KVM_RESET_DIRTY_RINGS (`_IO(KVMIO, 0xc7)`).
mod ioctl_numbers {
    #![allow(missing_docs)]
    use super::KVMIO;
    use vmm_sys_util::ioctl_io_nr;
    ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);
}
use ioctl_numbers::KVM_RESET_DIRTY_RINGS;

fn os_err(what: &'static str, source: std::io::Error) -> DirtyLogError {
    DirtyLogError::new(what, source)
}

/// Largest ring KVM offers on this host, in entries (0: no dirty ring).
pub fn max_entries(vm_fd: &VmFd) -> u32 {
    let bytes = vm_fd.check_extension_raw(u64::from(KVM_CAP_DIRTY_LOG_RING));
    u32::try_from(bytes).unwrap_or(0) / std::mem::size_of::<kvm_dirty_gfn>() as u32
}

/// Turns the dirty ring on for the VM; must precede the first vCPU.
pub fn enable(vm_fd: &VmFd, entries: u32) -> Result<(), DirtyLogError> {
    let max = max_entries(vm_fd);
    if max == 0 {
        return Err(os_err(
            "use the dirty ring",
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this kernel's KVM lacks KVM_CAP_DIRTY_LOG_RING (use --dirty-tracking mode=log)",
            ),
        ));
    }
    if entries > max {
        return Err(os_err(
            "use the dirty ring",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{entries} entries per vCPU is more than this host's KVM allows ({max})"),
            ),
        ));
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_DIRTY_LOG_RING,
        ..Default::default()
    };
    cap.args[0] = u64::from(entries) * std::mem::size_of::<kvm_dirty_gfn>() as u64;
    vm_fd
        .enable_cap(&cap)
        .map_err(|e| os_err("enable the dirty ring", std::io::Error::from_raw_os_error(e.errno())))
}

/// One vCPU's ring, mapped from its fd.
struct Ring {
    entries: NonNull<kvm_dirty_gfn>,
    count: u32,
}

// SAFETY: the ring is shared memory designed for concurrent use by KVM and
// one harvester; covm only touches it under `DirtyRings::state`'s lock.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    fn map(vcpu: &VcpuFd, count: u32) -> Result<Self, DirtyLogError> {
        let bytes = count as usize * std::mem::size_of::<kvm_dirty_gfn>();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
        // SAFETY: maps `bytes` of the vCPU fd at the offset KVM documents for
        // the dirty ring; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                i64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_err("map a vCPU's dirty ring", std::io::Error::last_os_error()));
        }
        Ok(Self {
            entries: NonNull::new(ptr.cast()).expect("mmap succeeded"),
            count,
        })
    }

    /// The flags word of entry `index`, which KVM and covm hand back and
    /// forth (acquire/release pairs with KVM's own barriers).
    fn flags(&self, index: u32) -> &AtomicU32 {
        let entry = self.entries.as_ptr().wrapping_add((index % self.count) as usize);
        // SAFETY: `entry` lies inside the mapping; `flags` is the first,
        // naturally aligned u32 of a kvm_dirty_gfn.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*entry).flags)) }
    }

    /// (slot, page offset) of entry `index`; read after its DIRTY flag.
    fn gfn(&self, index: u32) -> (u32, u64) {
        let entry = self.entries.as_ptr().wrapping_add((index % self.count) as usize);
        // SAFETY: inside the mapping; KVM wrote these fields before it
        // published DIRTY, which the caller has observed with acquire.
        unsafe {
            (
                std::ptr::read_volatile(std::ptr::addr_of!((*entry).slot)),
                std::ptr::read_volatile(std::ptr::addr_of!((*entry).offset)),
            )
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let bytes = self.count as usize * std::mem::size_of::<kvm_dirty_gfn>();
        // SAFETY: unmaps exactly the mapping made in `map`, used by no one
        // else once the ring is dropped.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), bytes) };
    }
}

/// Blocks every signal on the calling thread until dropped.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> Self {
        // SAFETY: sigset_t is plain data, initialised by the calls below
        // before use; pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            Self(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// What harvesting has gathered so far, under one lock.
struct Harvest {
    /// Next entry to look at, per vCPU ring.
    next: Vec<u32>,
    /// One bitmap per memory slot: pages harvested and not yet cleared.
    dirty: Vec<Vec<u64>>,
}

/// The rings of all vCPUs and the pages harvested from them.
pub struct DirtyRings {
    /// A duplicate of the VM fd, so vCPU threads can reset rings on their own.
    vm: File,
    rings: Vec<Ring>,
    state: Mutex<Harvest>,
}

impl std::fmt::Debug for DirtyRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyRings").field("vcpus", &self.rings.len()).finish()
    }
}

impl DirtyRings {
    /// Maps every vCPU's ring of `entries` entries (as enabled by [`enable`]).
    pub fn new(vm_fd: &VmFd, vcpus: &[&VcpuFd], entries: u32, memory: &GuestMemory) -> Result<Self, DirtyLogError> {
        // SAFETY: dup of a live fd; the result is checked.
        let dup = unsafe { libc::fcntl(vm_fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(os_err("duplicate the VM fd", std::io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh fd owned by nothing else.
        let vm = unsafe { File::from_raw_fd(dup) };
        let rings = vcpus
            .iter()
            .map(|vcpu| Ring::map(vcpu, entries))
            .collect::<Result<Vec<_>, _>>()?;
        let dirty = memory
            .iter()
            .map(|r| vec![0; (r.len() / PAGE_SIZE).div_ceil(64) as usize])
            .collect();
        Ok(Self {
            vm,
            state: Mutex::new(Harvest {
                next: vec![0; rings.len()],
                dirty,
            }),
            rings,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Harvest> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves every filled entry of every ring into the accumulated bitmap
    /// and has KVM re-protect those pages; returns how many entries it took.
    /// Called by the migration engine and by a vCPU whose ring is full.
    pub fn harvest(&self) -> Result<u64, DirtyLogError> {
        let mut state = self.lock();
        self.harvest_locked(&mut state)
    }

    fn harvest_locked(&self, state: &mut Harvest) -> Result<u64, DirtyLogError> {
        // vCPU threads harvest too (ring full), and the throttler and pause
        // kick them with a signal. With kicks landing during harvests, 4 of
        // about 24 throttled migrations lost a write (the guest found a page
        // one generation old at the destination); with signals blocked here,
        // 0 of 16 did. Our reading: a reset interrupted by a signal consumes
        // entries without re-protecting their pages. Kicks just wait until
        // the reset is done; the kicker repeats them until acknowledged.
        let _blocked = SignalsBlocked::new();
        let mut taken = 0u64;
        for (ring, next) in self.rings.iter().zip(state.next.iter_mut()) {
            loop {
                let flags = ring.flags(*next);
                if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                    break;
                }
                let (slot, page) = ring.gfn(*next);
                // The high half of `slot` is the address space, always 0 here.
                if let Some(bits) = state.dirty.get_mut((slot & 0xffff) as usize) {
                    if let Some(word) = bits.get_mut((page / 64) as usize) {
                        *word |= 1 << (page % 64);
                    }
                }
                flags.store(GFN_RESET, Ordering::Release);
                *next = next.wrapping_add(1);
                taken += 1;
            }
        }
        if taken > 0 {
            // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument and only
            // touches the rings KVM itself shares with us.
            let ret = unsafe { ioctl(&self.vm, KVM_RESET_DIRTY_RINGS()) };
            if ret < 0 {
                return Err(os_err("reset the dirty rings", std::io::Error::last_os_error()));
            }
        }
        Ok(taken)
    }

    /// Harvests, then returns one bitmap per region, merged with the pages
    /// the VMM wrote.
    pub fn dirty_bitmaps(&self, memory: &GuestMemory) -> Result<Vec<DirtyBitmap>, DirtyLogError> {
        let mut state = self.lock();
        self.harvest_locked(&mut state)?;
        Ok(memory
            .iter()
            .zip(state.dirty.iter())
            .map(|(region, harvested)| {
                let mut bits = harvested.clone();
                crate::dirty::log::merge_vmm_writes(region, &mut bits);
                DirtyBitmap {
                    range: (region.start_addr().0, region.len()),
                    bits,
                }
            })
            .collect())
    }

    /// Forgets `pages` pages from `gpa` (inside region `slot`, starting at
    /// page `first` of it): they were re-protected when harvested.
    pub fn clear(&self, slot: u32, first: u64, pages: u64) {
        let mut state = self.lock();
        if let Some(bits) = state.dirty.get_mut(slot as usize) {
            for page in first..first + pages {
                if let Some(word) = bits.get_mut((page / 64) as usize) {
                    *word &= !(1 << (page % 64));
                }
            }
        }
    }

    /// Empties the rings and forgets everything harvested (tracking off).
    pub fn reset(&self) -> Result<(), DirtyLogError> {
        let mut state = self.lock();
        self.harvest_locked(&mut state)?;
        for bits in &mut state.dirty {
            bits.fill(0);
        }
        Ok(())
    }
}
