//! Dirty-page tracking for migration: KVM's dirty log with manual
//! protection (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`), merged with the pages
//! the VMM itself wrote (vm-memory's bitmap).
//!
//! With manual protection, reading the log (`KVM_GET_DIRTY_LOG`) does not
//! clear it; pages are cleared and write-protected again only by
//! `KVM_CLEAR_DIRTY_LOG`, for exactly the pages the engine is about to send.

use crate::vm::memory::GuestMemory;
use covm_guest_abi::layout::PAGE_SIZE;
use covm_migration::vm::DirtyBitmap;
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, kvm_userspace_memory_region, KVMIO, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::ioctl_with_ref;

/// kvm-ioctls has no wrapper for KVM_CLEAR_DIRTY_LOG
/// (`_IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)`).
mod ioctl_numbers {
    #![allow(missing_docs)]
    use super::{kvm_clear_dirty_log, KVMIO};
    use vmm_sys_util::ioctl_iowr_nr;
    ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
}
use ioctl_numbers::KVM_CLEAR_DIRTY_LOG;

/// A dirty-log operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what}: {source}")]
pub struct DirtyLogError {
    what: &'static str,
    source: std::io::Error,
}

impl DirtyLogError {
    /// An operation `what` that failed with `source`.
    pub fn new(what: &'static str, source: std::io::Error) -> Self {
        Self { what, source }
    }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> DirtyLogError {
    move |e| DirtyLogError {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// Turns on manual protection; done once when the VM is created, before
/// any slot logs.
pub fn enable_manual_protect(vm_fd: &VmFd) -> Result<(), DirtyLogError> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
    vm_fd
        .enable_cap(&cap)
        .map_err(kvm_err("enable manual dirty-log protection"))
}

/// Turns logging on or off for every memory slot (slot i = region i).
pub fn set_logging(vm_fd: &VmFd, memory: &GuestMemory, on: bool) -> Result<(), DirtyLogError> {
    for (slot, region) in memory.iter().enumerate() {
        let def = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the same live mapping of the same slot, only its flags change.
        unsafe { vm_fd.set_user_memory_region(def) }.map_err(kvm_err("change dirty logging of a memory slot"))?;
    }
    Ok(())
}

/// One bitmap per region, with the pages covm wrote merged in.
pub fn dirty_bitmaps(vm_fd: &VmFd, memory: &GuestMemory) -> Result<Vec<DirtyBitmap>, DirtyLogError> {
    let mut all = Vec::new();
    for (slot, region) in memory.iter().enumerate() {
        let mut bits = vm_fd
            .get_dirty_log(slot as u32, region.len() as usize)
            .map_err(kvm_err("read the dirty log"))?;
        merge_vmm_writes(region, &mut bits);
        all.push(DirtyBitmap {
            range: (region.start_addr().0, region.len()),
            bits,
        });
    }
    Ok(all)
}

/// Adds the pages covm wrote through vm-memory to `bits` (one bit per
/// page of `region`).
///
/// A word at a time, and only the words in use, found through the write
/// bitmap's summary (reading clears nothing: the engine clears what it
/// sends). Testing the region page by page cost 4 ms of a 16 GiB guest's
/// pause.
pub fn merge_vmm_writes(region: &crate::vm::memory::Region, bits: &mut [u64]) {
    for (i, word) in crate::vm::memory::vmm_writes(region).dirty_words() {
        if let Some(b) = bits.get_mut(i) {
            *b |= word;
        }
    }
}

/// `words` words with bits `lo..hi` set, a word at a time where whole (a
/// 32 MiB chunk is 128 of them).
fn bits_between(lo: u64, hi: u64, words: usize) -> Vec<u64> {
    let mut bitmap = vec![0u64; words];
    for (i, word) in bitmap.iter_mut().enumerate() {
        let (w0, w1) = (i as u64 * 64, i as u64 * 64 + 64);
        let (a, b) = (lo.max(w0), hi.min(w1));
        if a < b {
            *word = if b - a == 64 {
                u64::MAX
            } else {
                ((1u64 << (b - a)) - 1) << (a - w0)
            };
        }
    }
    bitmap
}

/// Clears and re-protects `pages` pages from `gpa` (inside one region).
pub fn clear(vm_fd: &VmFd, memory: &GuestMemory, gpa: u64, pages: u64) -> Result<(), DirtyLogError> {
    let outside = || DirtyLogError {
        what: "clear dirty pages",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{gpa:#x}+{pages} pages is outside guest memory"),
        ),
    };
    let (slot, region) = crate::vm::memory::region_of(memory, gpa, pages * PAGE_SIZE).ok_or_else(outside)?;
    if pages == 0 {
        return Ok(());
    }
    let slot_pages = region.len() / PAGE_SIZE;
    let first = (gpa - region.start_addr().0) / PAGE_SIZE;
    // KVM wants the range 64-page aligned (or reaching the slot's end); the
    // bitmap says which of those pages to clear.
    let start = first & !63;
    let end = (first + pages).next_multiple_of(64).min(slot_pages);
    let mut bitmap = bits_between(
        first - start,
        first - start + pages,
        (end - start).div_ceil(64) as usize,
    );
    let mut arg = kvm_clear_dirty_log {
        slot,
        num_pages: (end - start) as u32,
        first_page: start,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    // SAFETY: `arg` points at a bitmap covering num_pages bits that lives
    // until the call returns; KVM only reads it.
    let ret = unsafe { ioctl_with_ref(vm_fd, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if ret < 0 {
        return Err(DirtyLogError {
            what: "clear the dirty log",
            source: std::io::Error::last_os_error(),
        });
    }
    forget_vmm_writes(region, first, pages);
    Ok(())
}

/// Clears `pages` pages from page `first` of `region` in the VMM's own
/// write bitmap (the engine is about to send them).
pub fn forget_vmm_writes(region: &crate::vm::memory::Region, first: u64, pages: u64) {
    let vmm = crate::vm::memory::vmm_writes(region);
    vmm.reset_addr_range((first * PAGE_SIZE) as usize, (pages * PAGE_SIZE) as usize);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn clear_bitmaps_set_exactly_the_range() {
        for (lo, hi, words) in [
            (0, 64, 1),
            (3, 64, 1),
            (0, 8192, 128),
            (5, 130, 3),
            (64, 65, 2),
            (10, 10, 1),
        ] {
            let got = bits_between(lo, hi, words);
            let mut want = vec![0u64; words];
            for bit in lo..hi {
                want[(bit / 64) as usize] |= 1 << (bit % 64);
            }
            assert_eq!(got, want, "{lo}..{hi}");
        }
    }

    #[test]
    fn covm_writes_merge_a_word_at_a_time_and_stay_until_forgotten() {
        let memory = crate::vm::memory::allocate(64 << 20).unwrap();
        for page in [0u64, 63, 64, 1000] {
            memory.write_obj(1u8, GuestAddress(page * PAGE_SIZE)).unwrap();
        }
        let region = memory.iter().next().unwrap();
        let words = (region.len() / PAGE_SIZE).div_ceil(64) as usize;
        let merged = |expect: &[u64]| {
            let mut bits = vec![0u64; words];
            merge_vmm_writes(region, &mut bits);
            let set: Vec<u64> = (0..words as u64 * 64)
                .filter(|p| bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
                .collect();
            assert_eq!(set, expect);
        };
        merged(&[0, 63, 64, 1000]);
        // Reading did not clear.
        merged(&[0, 63, 64, 1000]);
        forget_vmm_writes(region, 63, 2);
        merged(&[0, 1000]);
    }
}
