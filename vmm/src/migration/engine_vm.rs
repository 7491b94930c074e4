//! covm's VM as the migration engine sees it: the engine's traits over
//! [`Vm`], mapping KVM's dirty log, guest memory, pause/resume, throttling
//! and state save/restore.

use crate::vm::Vm;
use covm_devices::virtio::Handover;
use covm_guest_abi::layout::PAGE_SIZE;
use covm_migration::vm::{DestinationVm, DirtyBitmap, MemoryRange, SourceVm, VmOpError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn engine_err(e: impl std::error::Error + Send + Sync + 'static) -> VmOpError {
    VmOpError::vmm(e)
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
        self.dirty_bitmaps().map_err(engine_err)
    }

    fn clear_dirty(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        Vm::clear_dirty(self, gpa, pages).map_err(engine_err)
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
        const ZEROS: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
        // An incoming VM's memory starts zeroed and only covm writes it
        // before it runs; vm-memory's bitmap marks every page covm wrote.
        // Writing zeros anywhere else would only fault memory in (measured:
        // a mostly empty 1 GiB guest took seconds of downtime). The run's
        // region is looked up once, not for each of its pages.
        let memory = self.memory();
        let (_, region) = crate::vm::memory::region_of(memory, gpa, pages * PAGE_SIZE)
            .ok_or_else(|| engine_err(crate::vm::VmError::OutsideMemory { gpa, pages }))?;
        let first = (gpa - region.start_addr().0) / PAGE_SIZE;
        let written = crate::vm::memory::vmm_writes(region);
        for page in (0..pages).filter(|p| written.is_bit_set((first + p) as usize)) {
            memory
                .write_slice(&ZEROS, GuestAddress(gpa + page * PAGE_SIZE))
                .map_err(engine_err)?;
        }
        Ok(())
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
