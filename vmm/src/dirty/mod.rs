//! Dirty-page tracking for live migration, through KVM: its dirty log
//! (a bitmap per memory slot, with manual protection) or its per-vCPU dirty
//! ring, merged with the pages covm itself wrote. [`DirtyTracker`] is the
//! one type the VM holds: it picks the mechanism once, at launch, and
//! yields the migration engine's bitmaps whichever it is.

pub mod log;
pub mod ring;

use crate::vm::memory::{self, GuestMemory};
use covm_guest_abi::layout::PAGE_SIZE;
use covm_migration::vm::DirtyBitmap;
use kvm_ioctls::VmFd;
use log::DirtyLogError;
use ring::DirtyRings;
use std::sync::Arc;
use vm_memory::GuestMemoryRegion;

/// Why dirty pages cannot be tracked or read.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// KVM refused.
    #[error(transparent)]
    Kvm(#[from] DirtyLogError),
    /// This VM cannot be tracked at all.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A range outside guest memory.
    #[error("{gpa:#x}+{pages} pages is outside guest memory")]
    OutsideMemory {
        /// First address.
        gpa: u64,
        /// Pages.
        pages: u64,
    },
}

/// How this VM's dirty pages are tracked, chosen when it is built.
pub enum DirtyTracker {
    /// KVM's dirty bitmap; `manual_protect` tells whether KVM offers the
    /// manual protection covm needs (without it the VM cannot migrate).
    Log {
        /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled.
        manual_protect: bool,
    },
    /// KVM's per-vCPU dirty rings (the vCPU threads harvest them too).
    Ring(Arc<DirtyRings>),
    /// Nothing can be tracked, for this reason (an SEV-SNP VM's or a TD's
    /// guest_memfd-backed memory).
    Unsupported(&'static str),
}

impl DirtyTracker {
    /// Why this VM's dirty pages cannot be tracked, if they cannot.
    pub fn unsupported(&self) -> Option<&'static str> {
        match self {
            Self::Unsupported(why) => Some(why),
            _ => None,
        }
    }

    /// Turns tracking on or off for all of guest memory. Off forgets what
    /// was gathered: it belongs to a migration that ended.
    pub fn set_logging(&self, vm_fd: &VmFd, memory: &GuestMemory, on: bool) -> Result<(), DirtyError> {
        match self {
            Self::Unsupported(why) if on => Err(DirtyError::Unsupported(why)),
            Self::Unsupported(_) => Ok(()),
            Self::Log { manual_protect: false } if on => Err(DirtyError::Unsupported(
                "KVM lacks manual dirty-log protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)",
            )),
            Self::Log { .. } => Ok(log::set_logging(vm_fd, memory, on)?),
            Self::Ring(rings) => {
                log::set_logging(vm_fd, memory, on)?;
                if !on {
                    rings.reset()?;
                }
                Ok(())
            }
        }
    }

    /// Pages written since they were last cleared, one bitmap per memory
    /// region, with the pages covm wrote merged in.
    pub fn dirty_bitmaps(&self, vm_fd: &VmFd, memory: &GuestMemory) -> Result<Vec<DirtyBitmap>, DirtyError> {
        match self {
            Self::Unsupported(why) => Err(DirtyError::Unsupported(why)),
            Self::Log { .. } => Ok(log::dirty_bitmaps(vm_fd, memory)?),
            Self::Ring(rings) => Ok(rings.dirty_bitmaps(memory)?),
        }
    }

    /// Clears and re-arms tracking of `pages` pages from `gpa`.
    pub fn clear(&self, vm_fd: &VmFd, memory: &GuestMemory, gpa: u64, pages: u64) -> Result<(), DirtyError> {
        match self {
            Self::Unsupported(why) => Err(DirtyError::Unsupported(why)),
            Self::Log { .. } => Ok(log::clear(vm_fd, memory, gpa, pages)?),
            Self::Ring(rings) => {
                let (slot, region) = memory::region_of(memory, gpa, pages * PAGE_SIZE)
                    .ok_or(DirtyError::OutsideMemory { gpa, pages })?;
                let first = (gpa - region.start_addr().0) / PAGE_SIZE;
                rings.clear(slot, first, pages);
                log::forget_vmm_writes(region, first, pages);
                Ok(())
            }
        }
    }
}
