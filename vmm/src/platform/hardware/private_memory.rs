//! Private guest memory, as both SEV-SNP and TDX launches set it up:
//! every RAM region gets a guest_memfd (`KVM_CREATE_GUEST_MEMFD`) that
//! backs its private pages, a memory slot naming both the guest_memfd and
//! covm's shared mapping (`KVM_SET_USER_MEMORY_REGION2` with
//! `KVM_MEM_GUEST_MEMFD`), and the PRIVATE attribute over all of it
//! (`KVM_SET_MEMORY_ATTRIBUTES`), since a confidential guest starts with
//! all its memory private. covm loads the image into the shared mapping;
//! the launch commands copy it into the private pages.
//!
//! The guest later converts ranges with `KVM_HC_MAP_GPA_RANGE`
//! ([`super::map_gpa`]), which needs `KVM_CAP_EXIT_HYPERCALL`.

use super::error::{at, CallError, LaunchError};
use super::map_gpa::EXIT_MAP_GPA_RANGE;
use crate::vm::memory::GuestMemory;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2, KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEM_GUEST_MEMFD,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// The KVM calls that set up and convert private memory.
pub trait PrivateMemoryOps {
    /// `KVM_CREATE_GUEST_MEMFD`: a guest_memfd of `gmem.size` bytes; returns its fd.
    fn create_guest_memfd(&mut self, gmem: &kvm_create_guest_memfd) -> Result<u32, CallError>;

    /// `KVM_SET_USER_MEMORY_REGION2`: a memory slot backed by covm's mapping
    /// (shared pages) and a guest_memfd (private pages).
    fn set_user_memory_region2(&mut self, region: &kvm_userspace_memory_region2) -> Result<(), CallError>;

    /// `KVM_SET_MEMORY_ATTRIBUTES`: marks a range private (or shared).
    fn set_memory_attributes(&mut self, attributes: &kvm_memory_attributes) -> Result<(), CallError>;

    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)`: the hypercalls (a bit
    /// mask) KVM hands to covm as `KVM_EXIT_HYPERCALL`.
    fn enable_exit_hypercall(&mut self, hypercalls: u64) -> Result<(), CallError>;
}

/// One RAM region of the guest: a memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// The memory slot.
    pub slot: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// covm's (shared) mapping of it.
    pub uaddr: u64,
}

impl RamRegion {
    /// Whether `[gpa, gpa + len)` lies in this region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.gpa && gpa.checked_add(len).is_some_and(|end| end <= self.gpa + self.size)
    }
}

/// The RAM regions of `memory`, slot `i` for the `i`th.
pub fn ram_regions(memory: &GuestMemory) -> Vec<RamRegion> {
    memory
        .iter()
        .enumerate()
        .map(|(slot, region)| RamRegion {
            slot: slot as u32,
            gpa: region.start_addr().0,
            size: region.len(),
            uaddr: region.as_ptr() as u64,
        })
        .collect()
}

/// covm's mapping of `[gpa, gpa + len)`, if it lies in one region.
pub fn host_address(ram: &[RamRegion], gpa: u64, len: u64) -> Option<u64> {
    ram.iter()
        .find(|r| r.contains(gpa, len))
        .map(|r| r.uaddr + (gpa - r.gpa))
}

/// Sets up private memory for `ram`, in order: per region its guest_memfd,
/// its slot and the PRIVATE attribute; then the `KVM_HC_MAP_GPA_RANGE`
/// exit. Errors name `platform` and the step.
pub fn register_private(
    ops: &mut impl PrivateMemoryOps,
    ram: &[RamRegion],
    platform: &'static str,
) -> Result<(), LaunchError> {
    for region in ram {
        let gmem = kvm_create_guest_memfd {
            size: region.size,
            flags: 0,
            ..Default::default()
        };
        let detail = || format!("{} MiB for slot {}", region.size >> 20, region.slot);
        let fd = at(
            platform,
            "KVM_CREATE_GUEST_MEMFD",
            detail,
            ops.create_guest_memfd(&gmem),
        )?;
        let slot = kvm_userspace_memory_region2 {
            slot: region.slot,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: region.gpa,
            memory_size: region.size,
            userspace_addr: region.uaddr,
            guest_memfd_offset: 0,
            guest_memfd: fd,
            ..Default::default()
        };
        let detail = || format!("slot {} at GPA {:#x}, guest_memfd {fd}", region.slot, region.gpa);
        at(
            platform,
            "KVM_SET_USER_MEMORY_REGION2",
            detail,
            ops.set_user_memory_region2(&slot),
        )?;
        let private = kvm_memory_attributes {
            address: region.gpa,
            size: region.size,
            attributes: u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE),
            flags: 0,
        };
        let detail = || format!("PRIVATE over {:#x}..{:#x}", region.gpa, region.gpa + region.size);
        at(
            platform,
            "KVM_SET_MEMORY_ATTRIBUTES",
            detail,
            ops.set_memory_attributes(&private),
        )?;
    }
    at(
        platform,
        "KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)",
        || "KVM_HC_MAP_GPA_RANGE".into(),
        ops.enable_exit_hypercall(EXIT_MAP_GPA_RANGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_covm_memory() {
        let memory = crate::vm::memory::allocate((3 << 30) + (64 << 20)).unwrap();
        let ram = ram_regions(&memory);
        assert_eq!(ram.len(), 2);
        assert_eq!((ram[0].slot, ram[0].gpa, ram[0].size), (0, 0, 3 << 30));
        assert_eq!((ram[1].slot, ram[1].gpa, ram[1].size), (1, 1 << 32, 64 << 20));
        assert_eq!(host_address(&ram, 0x1000, 0x2000), Some(ram[0].uaddr + 0x1000));
        assert_eq!(
            host_address(&ram, (1 << 32) + 0x1000, 0x1000),
            Some(ram[1].uaddr + 0x1000)
        );
        assert_eq!(
            host_address(&ram, (3 << 30) - 0x1000, 0x2000),
            None,
            "crosses the MMIO hole"
        );
        assert_eq!(host_address(&ram, u64::MAX - 0xfff, 0x1000), None);
    }
}
