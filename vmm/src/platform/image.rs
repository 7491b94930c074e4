//! What covm loads into a new VM, recorded as it loads it.
//!
//! [`load`] is the one path that fills a new VM's memory: the payload and
//! its boot structures (`boot::load`), the bootstrap vCPU's GDT, IDT and
//! page tables (`arch::regs::boot_regs`), then the pages the platform
//! places itself (the migration policy). The pages covm wrote are not
//! listed by hand: guest memory records every write covm makes through
//! vm-memory in its bitmap, and a new VM's bitmap starts clear, so the
//! bitmap after loading *is* the list of loaded pages. The same path runs
//! for a booting VM (in its memory), for `covm measure` and for an
//! incoming VM (in scratch memory of the same size), so all three measure
//! the same image.

use super::measure::PageType;
use super::vmsa::{VcpuState, VMSA_LEN};
use super::PlatformConfig;
use crate::arch::regs::{self, BootRegs, RegsError};
use crate::boot::metadata::FirmwareSection;
use crate::boot::{self, layout, BootEntry, BootError};
use crate::config::VmConfig;
use crate::memory::{self, GuestMemory};
use covm_guest_abi::layout::FIRMWARE_BASE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Bytes of a guest page.
const PAGE: u64 = 4096;

/// One page of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPage {
    /// Guest-physical address.
    pub gpa: u64,
    /// How the platform takes it in.
    pub page_type: PageType,
    /// What covm put there (for `covm measure --pages` and logs).
    pub what: &'static str,
}

/// A page a platform places in guest memory itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPage {
    /// Guest-physical address (page aligned).
    pub gpa: u64,
    /// Its type in the launch.
    pub page_type: PageType,
    /// Its contents (at most a page; the rest of the page is zero).
    pub bytes: Vec<u8>,
    /// What it is.
    pub what: &'static str,
}

/// The launch image: every page covm put in guest memory, in launch order,
/// and each vCPU's initial state.
#[derive(Debug, Clone)]
pub struct LaunchImage {
    /// Pages in launch order: covm's writes as NORMAL pages in ascending
    /// address, then the platform's own pages in the order it lists them.
    pub pages: Vec<LaunchPage>,
    /// One VMSA page per vCPU, vCPU 0 (the bootstrap vCPU) first.
    pub vcpus: Vec<Box<[u8; VMSA_LEN]>>,
    /// The payload ELF's launch metadata (`covm_guest_abi::metadata`),
    /// checked, in its order: pages only an SEV-SNP launch adds
    /// ([`super::measure::SnpLaunch::apply`]); empty without metadata.
    pub metadata: Vec<FirmwareSection>,
}

/// A loaded VM: where it enters, the bootstrap vCPU's registers and the
/// image that was loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The payload's entry.
    pub entry: BootEntry,
    /// The bootstrap vCPU's registers.
    pub bsp: BootRegs,
    /// The launch image.
    pub image: LaunchImage,
}

/// Errors loading.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The payload.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The boot registers' tables.
    #[error(transparent)]
    Regs(#[from] RegsError),
    /// Memory covm wrote before loading (a bug: the image would be wrong).
    #[error("guest memory is not fresh: covm wrote the page at {0:#x} before loading")]
    NotFresh(u64),
    /// A platform page over a page the payload loaded.
    #[error("the payload writes the page at {gpa:#x}, where the platform places the {what}")]
    Overlap {
        /// The page.
        gpa: u64,
        /// The platform's page.
        what: &'static str,
    },
    /// A platform page that does not fit.
    #[error("cannot place the {what} at {gpa:#x}: {reason}")]
    Place {
        /// The page.
        gpa: u64,
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// The pages covm has written since `memory` was created, ascending.
pub fn written_pages(memory: &GuestMemory) -> Vec<u64> {
    let mut pages = Vec::new();
    for region in memory.iter() {
        let bitmap = memory::vmm_writes(region);
        let start = region.start_addr().0;
        for offset in (0..region.len()).step_by(PAGE as usize) {
            if bitmap.is_addr_set(offset as usize) {
                pages.push(start + offset);
            }
        }
    }
    pages
}

/// What covm writes at `gpa`, for listings.
fn describe(gpa: u64, entry: &BootEntry) -> &'static str {
    let page = |addr: u64| addr & !(PAGE - 1);
    match gpa {
        g if g == page(layout::BOOT_GDT) => "boot GDT and IDT",
        g if g == page(layout::PVH_START_INFO) => match entry.mode {
            boot::EntryMode::Pvh => "PVH start info and memory map",
            boot::EntryMode::Linux64 => "Linux zero page",
        },
        g if g == page(layout::PVH_MODLIST) => "PVH module list",
        layout::PML4 | layout::PDPT | layout::PD => "page tables",
        g if (layout::CMDLINE..layout::CMDLINE + layout::CMDLINE_MAX as u64).contains(&g) => "command line",
        g if g >= FIRMWARE_BASE => "payload image",
        _ => "boot data",
    }
}

/// Loads `config`'s payload, boot structures and platform pages into
/// `memory` (fresh: nothing written yet) and returns the image.
pub fn load(memory: &GuestMemory, config: &VmConfig) -> Result<Loaded, LoadError> {
    if let Some(&gpa) = written_pages(memory).first() {
        return Err(LoadError::NotFresh(gpa));
    }
    let (entry, metadata) = boot::load_with_metadata(memory, config)?;
    let bsp = regs::boot_regs(memory, &entry)?;
    let mut pages: Vec<LaunchPage> = written_pages(memory)
        .into_iter()
        .map(|gpa| LaunchPage {
            gpa,
            page_type: PageType::Normal,
            what: describe(gpa, &entry),
        })
        .collect();
    place(memory, &config.platform, &mut pages)?;
    // One VMSA per KVM vCPU: the agent's vCPU is measured too.
    let vcpus = (0..config.kvm_vcpus())
        .map(|i| match i {
            0 => VcpuState::boot(&bsp).to_vmsa(),
            _ => VcpuState::reset().to_vmsa(),
        })
        .collect();
    Ok(Loaded {
        entry,
        bsp,
        image: LaunchImage { pages, vcpus, metadata },
    })
}

/// Writes the platform's own pages after the payload's.
fn place(memory: &GuestMemory, platform: &PlatformConfig, pages: &mut Vec<LaunchPage>) -> Result<(), LoadError> {
    for placed in platform.placed_pages() {
        let gpa = placed.gpa;
        if pages.iter().any(|p| p.gpa == gpa) {
            return Err(LoadError::Overlap { gpa, what: placed.what });
        }
        if gpa % PAGE != 0 || placed.bytes.len() > PAGE as usize {
            return Err(LoadError::Place {
                gpa,
                what: placed.what,
                reason: "not one aligned page".into(),
            });
        }
        let mut page = vec![0u8; PAGE as usize];
        page[..placed.bytes.len()].copy_from_slice(&placed.bytes);
        memory
            .write_slice(&page, GuestAddress(gpa))
            .map_err(|e| LoadError::Place {
                gpa,
                what: placed.what,
                reason: e.to_string(),
            })?;
        pages.push(LaunchPage {
            gpa,
            page_type: placed.page_type,
            what: placed.what,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, Payload, SerialMode};

    fn config(vcpus: u8) -> VmConfig {
        VmConfig {
            cpus: CpusConfig { boot_vcpus: vcpus },
            memory: MemoryConfig { size: 64 << 20 },
            payload: Payload::BuiltinFirmware,
            cmdline: "workload=hello".into(),
            serial: SerialMode::Null,
            api_socket: None,
            dirty_tracking: Default::default(),
            platform: Default::default(),
        }
    }

    #[test]
    fn builtin_firmware_image() {
        let mem = memory::allocate(64 << 20).unwrap();
        let loaded = load(&mem, &config(3)).unwrap();
        let pages = &loaded.image.pages;
        let gpas: Vec<u64> = pages.iter().map(|p| p.gpa).collect();
        let mut sorted = gpas.clone();
        sorted.sort_unstable();
        assert_eq!(gpas, sorted, "ascending");
        // Page 0 (GDT, IDT), the start info page and the command line, then
        // the firmware from 1 MiB: nothing else (no page tables for PVH).
        assert_eq!(&gpas[..3], &[0, layout::PVH_START_INFO, layout::CMDLINE]);
        assert!(gpas[3..].iter().all(|&g| g >= FIRMWARE_BASE), "{gpas:x?}");
        let firmware = covm_guest_abi::layout::FIRMWARE_BASE;
        assert_eq!(gpas[3], firmware);
        assert!(pages.iter().all(|p| p.page_type == PageType::Normal));
        assert_eq!(pages[1].what, "PVH start info and memory map");
        assert_eq!(pages[3].what, "payload image");
        assert_eq!(loaded.image.vcpus.len(), 3);
        assert_eq!(
            loaded.image.vcpus[1], loaded.image.vcpus[2],
            "APs share the reset state"
        );
        assert_ne!(loaded.image.vcpus[0], loaded.image.vcpus[1]);
    }

    #[test]
    fn memory_must_be_fresh() {
        let mem = memory::allocate(64 << 20).unwrap();
        mem.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        assert!(matches!(load(&mem, &config(1)), Err(LoadError::NotFresh(0x5000))));
    }
}
