//! covm's VM as the migration engine sees it: the engine's traits over
//! [`Vm`], mapping KVM's dirty log, guest memory, pause/resume, throttling
//! and state save/restore.

use crate::vm::memory::GuestMemory;
use crate::vm::Vm;
use covm_devices::virtio::Handover;
use covm_guest_abi::layout::PAGE_SIZE;
use covm_guest_abi::mailbox::{AGENT_WINDOW_END, AGENT_WINDOW_START};
use covm_migration::vm::{DestinationVm, DirtyBitmap, MemoryRange, SourceVm, VmOpError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn engine_err(e: impl std::error::Error + Send + Sync + 'static) -> VmOpError {
    VmOpError::vmm(e)
}

/// The parts of the `pages` pages from `gpa` outside the agent window.
///
/// A confidential VM's agent window (mailbox, the agent's stack and
/// buffers) is never migrated, yet the agent writes its output there all
/// through a migration. Protecting it again with each clear made every
/// output page fault anew: measured, about 20 µs a sealed page in the
/// paused final round on this project's hosts (docs/benchmarks.md, issue
/// 18). So its pages are never cleared, hence never write-protected after
/// the first write, and never reported dirty.
fn outside_agent_window(gpa: u64, pages: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = gpa + pages * PAGE_SIZE;
    let below = (gpa, end.min(AGENT_WINDOW_START));
    let above = (gpa.max(AGENT_WINDOW_END), end);
    [below, above]
        .into_iter()
        .filter(|(start, end)| start < end)
        .map(|(start, end)| (start, (end - start) / PAGE_SIZE))
}

/// Clears the agent window's bits in `bitmaps` (see
/// [`outside_agent_window`]).
fn forget_agent_window(bitmaps: &mut [DirtyBitmap]) {
    for bitmap in bitmaps {
        let (base, len) = bitmap.range;
        let first = AGENT_WINDOW_START.max(base);
        let end = AGENT_WINDOW_END.min(base + len);
        for page in (first..end).step_by(PAGE_SIZE as usize).map(|g| (g - base) / PAGE_SIZE) {
            if let Some(word) = bitmap.bits.get_mut((page / 64) as usize) {
                *word &= !(1u64 << (page % 64));
            }
        }
    }
}

impl SourceVm for Vm {
    fn memory_ranges(&self) -> Vec<MemoryRange> {
        self.memory().iter().map(|r| (r.start_addr().0, r.len())).collect()
    }

    fn start_dirty_tracking(&mut self) -> Result<(), VmOpError> {
        self.set_dirty_logging(true).map_err(engine_err)
    }

    fn stop_dirty_tracking(&mut self) -> Result<(), VmOpError> {
        self.set_dirty_logging(false).map_err(engine_err)
    }

    fn dirty_pages(&mut self) -> Result<Vec<DirtyBitmap>, VmOpError> {
        let mut bitmaps = self.dirty_bitmaps().map_err(engine_err)?;
        if self.cvm().is_some() {
            forget_agent_window(&mut bitmaps);
        }
        Ok(bitmaps)
    }

    fn clear_dirty(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        if self.cvm().is_none() {
            return Vm::clear_dirty(self, gpa, pages).map_err(engine_err);
        }
        for (gpa, pages) in outside_agent_window(gpa, pages) {
            Vm::clear_dirty(self, gpa, pages).map_err(engine_err)?;
        }
        Ok(())
    }

    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        self.memory().read_slice(buf, GuestAddress(gpa)).map_err(engine_err)
    }

    fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmOpError> {
        Vm::unpopulated_pages(self, gpa, pages).map_err(engine_err)
    }

    fn set_throttle(&mut self, percent: u8) -> Result<(), VmOpError> {
        Vm::set_throttle(self, percent);
        Ok(())
    }

    /// The switch begins: vCPUs and devices stop (those drain), and the
    /// disks' locks are let go so the destination can take them at commit.
    fn pause(&mut self) -> Result<(), VmOpError> {
        Vm::pause(self);
        self.device_handover(Handover::Release).map_err(engine_err)
    }

    /// The migration failed: the disks are taken back before the guest
    /// runs again.
    fn resume(&mut self) -> Result<(), VmOpError> {
        self.device_handover(Handover::Acquire).map_err(engine_err)?;
        Vm::resume(self).map_err(engine_err)
    }

    fn save_state(&mut self) -> Result<Vec<u8>, VmOpError> {
        Vm::save_state(self).map_err(engine_err)
    }

    fn shared_memory(&self) -> Vec<MemoryRange> {
        Vm::shared_memory(self)
    }
}

impl DestinationVm for Vm {
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmOpError> {
        self.memory().write_slice(data, GuestAddress(gpa)).map_err(engine_err)
    }

    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        zero_written(self.memory(), gpa, pages)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmOpError> {
        Vm::restore_state(self, state).map_err(engine_err)
    }

    fn shareable_memory(&self) -> Vec<MemoryRange> {
        Vm::shareable_memory(self)
    }

    fn shared_memory(&self) -> Vec<MemoryRange> {
        Vm::shared_memory(self)
    }
}

/// Zeroes the pages of `pages` from `gpa` that covm wrote: an incoming
/// VM's memory starts zeroed and only covm writes it before it runs;
/// vm-memory's bitmap marks every page covm wrote. Writing zeros anywhere
/// else would only fault memory in (measured: a mostly empty 1 GiB guest
/// took seconds of downtime). The run's region is looked up once, not for
/// each of its pages.
pub(super) fn zero_written(memory: &GuestMemory, gpa: u64, pages: u64) -> Result<(), VmOpError> {
    const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
    let (_, region) = crate::vm::memory::region_of(memory, gpa, pages * PAGE_SIZE)
        .ok_or_else(|| engine_err(crate::vm::VmError::OutsideMemory { gpa, pages }))?;
    let first = (gpa - region.start_addr().0) / PAGE_SIZE;
    // Through the write bitmap's summary: an idle 16 GiB guest's round 0
    // arrives as a few runs of millions of pages, and testing them page by
    // page held up the destination's commit.
    let written = crate::vm::memory::vmm_writes(region).dirty_pages_in(first as usize, (first + pages) as usize);
    for page in written {
        memory
            .write_slice(&ZEROS, GuestAddress(region.start_addr().0 + page * PAGE_SIZE))
            .map_err(engine_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_window_is_cut_out_of_ranges() {
        let mib = |n: u64| n << 20;
        let pages = |bytes: u64| bytes / PAGE_SIZE;
        let runs: Vec<_> = outside_agent_window(0, pages(mib(64))).collect();
        assert_eq!(runs, [(0, pages(mib(16))), (mib(32), pages(mib(32)))]);
        let runs: Vec<_> = outside_agent_window(mib(20), pages(mib(4))).collect();
        assert!(runs.is_empty());
        let runs: Vec<_> = outside_agent_window(mib(40), 3).collect();
        assert_eq!(runs, [(mib(40), 3)]);
        let runs: Vec<_> = outside_agent_window(mib(30), pages(mib(4))).collect();
        assert_eq!(runs, [(mib(32), pages(mib(2)))]);
    }

    #[test]
    fn the_agent_window_is_never_reported_dirty() {
        let mut bitmaps = vec![DirtyBitmap {
            range: (0, 64 << 20),
            bits: vec![u64::MAX; (64 << 20) / 4096 / 64],
        }];
        forget_agent_window(&mut bitmaps);
        let dirty = |page: u64| bitmaps[0].bits[(page / 64) as usize] & (1 << (page % 64)) != 0;
        assert!(dirty(4095) && !dirty(4096) && !dirty(8191) && dirty(8192));
        assert_eq!(
            bitmaps[0].bits.iter().map(|w| w.count_ones()).sum::<u32>(),
            16384 - 4096
        );
    }
}
