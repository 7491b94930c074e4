//! Linux's `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7,
//! `include/uapi/linux/fs.h`): the ranges of a mapping whose pages are in
//! given categories, found by one page-table walk that skips empty tables
//! whole. covm asks for the populated (present or swapped) pages of guest
//! memory, to send never-touched pages as zero without reading them.

use std::os::fd::AsRawFd;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`: pages `[start, end)` (addresses) in `categories`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30) | ((size_of::<ScanArg>() as libc::c_ulong) << 16) | (0x66 << 8) | 16;

const _: () = assert!(size_of::<ScanArg>() == 96 && size_of::<PageRegion>() == 24);

/// For each of `pages` 4 KiB pages from `host_addr`: whether it is neither
/// present nor swapped (never populated). Errors as the ioctl's: ENOTTY or
/// EINVAL mean a kernel without `PAGEMAP_SCAN`.
pub fn unpopulated(pagemap: &std::fs::File, host_addr: u64, pages: u64) -> std::io::Result<Vec<bool>> {
    let end = host_addr + pages * 4096;
    let mut map = vec![true; pages as usize];
    let mut regions = [PageRegion::default(); 64];
    let mut start = host_addr;
    while start < end {
        let mut arg = ScanArg {
            size: size_of::<ScanArg>() as u64,
            start,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..ScanArg::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
        // `regions`, `vec_len` entries the kernel may write; both outlive
        // the call, and the kernel writes nothing else (no write-protect
        // flags are set).
        let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut ScanArg) };
        if found < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for r in &regions[..found as usize] {
            let (from, to) = (r.start.max(host_addr), r.end.min(end));
            if from < to {
                map[((from - host_addr) / 4096) as usize..((to - host_addr) / 4096) as usize].fill(false);
            }
        }
        // The walk stops early only when `regions` filled up.
        if arg.walk_end <= start || arg.walk_end >= end {
            break;
        }
        start = arg.walk_end;
    }
    Ok(map)
}
