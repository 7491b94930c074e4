//! Guest memory: layout, allocation and the e820 map.
//!
//! RAM fills guest-physical memory from 0 up to the 32-bit MMIO hole at
//! 3 GiB (where the LAPIC and IOAPIC live) and continues at 4 GiB. The
//! backing carries covm's `WriteBitmap` (devices crate), so pages the VMM
//! itself writes are tracked for migration alongside KVM's dirty log.

use covm_devices::WriteBitmap;
use covm_guest_abi::layout::{PCI_ECAM_BASE, PCI_ECAM_SIZE};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory as covm holds it.
pub type GuestMemory = GuestMemoryMmap<WriteBitmap>;

// covm's page is the guest ABI's (`covm_guest_abi::layout::PAGE_SIZE`); the
// crates it hands pages to define theirs at their own boundary, and must agree.
const _: () = {
    use covm_guest_abi::layout::PAGE_SIZE;
    assert!(
        covm_migration::vm::PAGE_SIZE == PAGE_SIZE,
        "migration pages are guest pages"
    );
    assert!(
        covm_measure::PAGE_SIZE as u64 == PAGE_SIZE,
        "measured pages are guest pages"
    );
    assert!(
        covm_agent_protocol::record::PAGE_SIZE as u64 == PAGE_SIZE,
        "the agent's records carry guest pages"
    );
};

/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Where RAM resumes above the hole.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// End of the legacy low RAM the BIOS era reserved above (EBDA start).
pub const EBDA_START: u64 = 0x9fc00;
/// Where "high memory" (above the ISA hole) starts, 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
/// e820 reserved.
pub const E820_RESERVED: u32 = 2;

/// Errors allocating guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot allocate {size} bytes of guest memory: {source}")]
pub struct MemoryError {
    size: u64,
    source: vm_memory::mmap::FromRangesError,
}

/// The RAM ranges for `size` bytes of guest memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(HIGH_RAM_START), size - low));
    }
    ranges
}

/// Allocates guest memory of `size` bytes.
pub fn allocate(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size).into_iter().map(|(a, s)| (a, s as usize)).collect();
    GuestMemory::from_ranges(&ranges).map_err(|source| MemoryError { size, source })
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map the guest is told about: low RAM below the EBDA, the
/// legacy hole reserved, RAM from 1 MiB, the PCI configuration window
/// (ECAM) reserved, as firmware on real machines reserves it (Linux trusts
/// an ECAM only inside a reserved range), and RAM above 4 GiB. The rest of
/// the 32-bit hole, where covm places BARs, is left out: neither RAM nor
/// reserved, as on real machines, so a guest may place BARs there too.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(size) {
        let end = start.0 + len;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: PCI_ECAM_BASE,
        size: PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

/// One RAM region (KVM memory slot `i` is region `i`).
pub type Region = vm_memory::GuestRegionMmap<WriteBitmap>;

/// The slot and region holding all of `[gpa, gpa + len)`.
pub fn region_of(memory: &GuestMemory, gpa: u64, len: u64) -> Option<(u32, &Region)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    memory
        .iter()
        .enumerate()
        .find(|(_, r)| {
            r.start_addr().0 <= gpa
                && gpa
                    .checked_add(len)
                    .is_some_and(|end| end <= r.start_addr().0 + r.len())
        })
        .map(|(slot, r)| (slot as u32, r))
}

/// The whole-region bitmap of the pages covm wrote through vm-memory
/// (`GuestMemoryRegion::bitmap` only offers a slice view).
pub fn vmm_writes(region: &Region) -> &WriteBitmap {
    std::ops::Deref::deref(region).bitmap()
}

/// For each of `pages` host pages from `host_addr` (in this process):
/// whether it was never populated, so reads as zero without being touched.
///
/// From `/proc/self/pagemap`: a page neither present nor swapped in a
/// private anonymous mapping has never been written. The answer can only
/// go stale towards "populated" (the guest may write later), which the
/// dirty log covers. Asked with the `PAGEMAP_SCAN` ioctl (Linux 6.7),
/// which returns only the populated ranges, so an empty 2 MiB block costs
/// the kernel one step of its page-table walk; reading the file instead
/// (older kernels) makes it fill 8 bytes for every page: 16 ms of a 16 GiB
/// idle guest's migration, in its profile.
pub fn unpopulated_host_pages(host_addr: u64, pages: u64) -> std::io::Result<Vec<bool>> {
    // Opened once: opening it per chunk showed in a 16 GiB migration's
    // profile (path walks and proc inode checks, 512 times).
    static PAGEMAP: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    static NO_SCAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let pagemap = match PAGEMAP.get() {
        Some(f) => f,
        None => {
            let f = std::fs::File::open("/proc/self/pagemap")?;
            PAGEMAP.get_or_init(|| f)
        }
    };
    if !NO_SCAN.load(std::sync::atomic::Ordering::Relaxed) {
        match crate::vm::pagemap_scan::unpopulated(pagemap, host_addr, pages) {
            Ok(map) => return Ok(map),
            // ENOTTY/EINVAL: a kernel without PAGEMAP_SCAN. Other errors are real.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
                NO_SCAN.store(true, std::sync::atomic::Ordering::Relaxed)
            }
            Err(e) => return Err(e),
        }
    }
    unpopulated_by_read(pagemap, host_addr, pages)
}

/// [`unpopulated_host_pages`] by reading the pagemap's 8-byte entries:
/// neither present (bit 63) nor swapped (bit 62).
fn unpopulated_by_read(pagemap: &std::fs::File, host_addr: u64, pages: u64) -> std::io::Result<Vec<bool>> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let mut raw = vec![0u8; pages as usize * 8];
    pagemap.read_exact_at(&mut raw, host_addr / 4096 * 8)?;
    Ok(raw
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().expect("8-byte entries")) & (PRESENT | SWAPPED) == 0)
        .collect())
}

/// Faults in, writable, the host memory behind the guest pages
/// `gpa..gpa + len` (clamped to the region holding `gpa`), without
/// changing a byte: `MADV_POPULATE_WRITE` (Linux 5.14). Whoever writes
/// them next (the guest, covm) finds them present and pays no host fault.
pub fn populate(memory: &GuestMemory, gpa: u64, len: u64) -> std::io::Result<()> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let not_ram = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{gpa:#x} is not guest RAM"));
    let region = memory.find_region(GuestAddress(gpa)).ok_or_else(not_ram)?;
    let offset = gpa - region.start_addr().0;
    let len = len.min(region.len() - offset);
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(offset))
        .map_err(|_| not_ram())? as usize;
    // madvise wants a page-aligned start.
    let start = host & !4095;
    let len = len as usize + (host - start);
    // SAFETY: the range lies inside this region's mapping, which lives as
    // long as `memory`; MADV_POPULATE_WRITE only faults pages in (it
    // writes no data), so concurrent readers and writers see no change.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// End of RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn populating_makes_pages_present_and_keeps_their_bytes() {
        let memory = allocate(4 << 20).unwrap();
        memory.write_obj(0xabu8, GuestAddress(0x1000)).unwrap();
        populate(&memory, 0x1000, 3 * 4096).unwrap();
        let region = memory.find_region(GuestAddress(0)).unwrap();
        let base = region.as_ptr() as u64;
        let pages = unpopulated_host_pages(base, 6).unwrap();
        assert_eq!(pages, [true, false, false, false, true, true]);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xab);
        // Clamped to the region; outside RAM is refused.
        populate(&memory, (4 << 20) - 4096, 1 << 30).unwrap();
        let e = populate(&memory, 8 << 20, 4096).unwrap_err();
        assert!(e.to_string().contains("0x800000 is not guest RAM"), "{e}");
    }

    #[test]
    fn small_vm_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn large_vm_skips_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]);
    }

    #[test]
    fn e820_small() {
        let map = e820_map(512 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (512 << 20) - 0x100000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0xe000_0000,
                    size: 0x1000_0000,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn e820_large_has_high_ram() {
        let map = e820_map(5 << 30);
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x100000,
                size: (3 << 30) - 0x100000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: 0xe000_0000,
                size: 0x1000_0000,
                kind: E820_RESERVED
            }
        );
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 << 30,
                size: 2 << 30,
                kind: E820_RAM
            }
        );
        let total: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(total, (5 << 30) - (0x100000 - 0x9fc00));
    }

    #[test]
    fn pagemap_tells_untouched_pages() {
        let mem = allocate(16 << 20).unwrap();
        let region = mem.iter().next().unwrap();
        let base = region.as_ptr() as u64;
        mem.write_obj(1u8, GuestAddress(0x3000)).unwrap();
        let pages = unpopulated_host_pages(base, 8).unwrap();
        assert!(!pages[3], "a written page is populated");
        assert!(pages[5], "an untouched page is not");
    }

    #[test]
    fn the_scan_and_the_read_of_the_pagemap_agree() {
        // More populated runs than the scan's 64-entry vector, so the
        // walk resumes where it stopped; runs that straddle the window.
        let mem = allocate(64 << 20).unwrap();
        let region = mem.iter().next().unwrap();
        let base = region.as_ptr() as u64;
        for page in (0..16384u64).filter(|p| p % 97 == 0 || p % 211 < 3) {
            mem.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
        }
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let read = unpopulated_by_read(&pagemap, base + 5 * 4096, 16000).unwrap();
        match crate::vm::pagemap_scan::unpopulated(&pagemap, base + 5 * 4096, 16000) {
            Ok(scanned) => assert_eq!(scanned, read),
            Err(e) => eprintln!("skipping the scan half: PAGEMAP_SCAN unavailable ({e})"),
        }
        assert_eq!(
            read.iter().filter(|u| !**u).count() as u64,
            (5..16005u64).filter(|p| p % 97 == 0 || p % 211 < 3).count() as u64
        );
    }

    #[test]
    fn allocation_is_usable_and_tracks_vmm_writes() {
        let mem = allocate(16 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x5000)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x5000)).unwrap(), 0xdead_beef);
        let region = mem.iter().next().unwrap();
        use vm_memory::bitmap::Bitmap;
        assert!(region.bitmap().dirty_at(0x5000));
        assert!(!region.bitmap().dirty_at(0x9000));
    }
}
