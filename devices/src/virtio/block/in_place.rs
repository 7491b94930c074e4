//! Reads and writes done in place: the host's `pread`/`pwrite` go straight
//! to and from the request's buffers in guest memory, with no bounce
//! buffer and no copy, so a disk costs the VMM no memory per request in
//! flight. Used whenever the buffers allow it: each inside one memory
//! region, and for `O_DIRECT` aligned to [`DIRECT_ALIGN`]; otherwise the
//! request goes through an aligned bounce buffer (`pool::AlignedBuf`).

use super::request::Chain;
use crate::virtio::GuestMemory;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// Alignment of guest buffers (address and length) for `O_DIRECT` in
/// place: the largest logical block size of common disks (4Kn), so the
/// host never refuses one.
pub(super) const DIRECT_ALIGN: u64 = 4096;

/// A request's data buffers in guest memory, in order.
pub(super) struct GuestBuffers {
    memory: GuestMemory,
    segments: Vec<(GuestAddress, usize)>,
}

/// The data buffers of a read (`out` false: the device-writable bytes but
/// the last, the status) or a write (`out`: the device-readable bytes after
/// the `header` bytes), if the request may be done in place: `len` bytes in
/// all, each buffer inside one region, and aligned if `direct`.
pub(super) fn buffers(
    memory: &GuestMemory,
    chain: &Chain<'_>,
    out: bool,
    header: usize,
    len: usize,
    direct: bool,
) -> Option<GuestBuffers> {
    let mut segments = Vec::new();
    let mut skip = if out { header } else { 0 };
    for desc in chain.clone() {
        if desc.is_write_only() == out {
            continue;
        }
        let (mut addr, mut size) = (desc.addr().0, desc.len() as usize);
        let skipped = skip.min(size);
        addr += skipped as u64;
        size -= skipped;
        skip -= skipped;
        if size > 0 {
            segments.push((GuestAddress(addr), size));
        }
    }
    if !out {
        // The status byte ends the last writable buffer.
        let last = segments.last_mut()?;
        last.1 -= 1;
        if last.1 == 0 {
            segments.pop();
        }
    }
    let total: usize = segments.iter().map(|s| s.1).sum();
    let aligned = |&(addr, size): &(GuestAddress, usize)| {
        !direct || (addr.0.is_multiple_of(DIRECT_ALIGN) && (size as u64).is_multiple_of(DIRECT_ALIGN))
    };
    let in_one_region = |&(addr, size): &(GuestAddress, usize)| memory.get_slice(addr, size).is_ok();
    (total == len && segments.iter().all(|s| aligned(s) && in_one_region(s))).then(|| GuestBuffers {
        memory: memory.clone(),
        segments,
    })
}

impl GuestBuffers {
    /// Reads (`write` false) or writes `file` from `offset` through the
    /// buffers; pages read into are marked dirty for migration.
    pub(super) fn run(&self, file: &File, offset: u64, write: bool) -> io::Result<()> {
        let mut at = offset;
        for &(addr, size) in &self.segments {
            let slice = self.memory.get_slice(addr, size).map_err(io::Error::other)?;
            let guard = slice.ptr_guard_mut();
            let base = guard.as_ptr();
            let mut done = 0;
            while done < size {
                let position = libc::off_t::try_from(at + done as u64).map_err(io::Error::other)?;
                // SAFETY: `base..base + size` is a mapping of guest memory
                // (`get_slice` checked it lies in one region), kept mapped
                // by `self.memory` for the whole call; the kernel reads or
                // writes at most `size - done` bytes from `base + done`.
                // The guest owns those bytes and gave them to this request
                // (what it does meanwhile is its own race, as with DMA).
                let n = unsafe {
                    let at = base.add(done).cast::<libc::c_void>();
                    if write {
                        libc::pwrite(file.as_raw_fd(), at, size - done, position)
                    } else {
                        libc::pread(file.as_raw_fd(), at, size - done, position)
                    }
                };
                match n {
                    n if n > 0 => done += n as usize,
                    0 if write => return Err(io::ErrorKind::WriteZero.into()),
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    _ => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                }
            }
            if !write {
                slice.bitmap().mark_dirty(0, size);
            }
            at += size as u64;
        }
        Ok(())
    }
}
