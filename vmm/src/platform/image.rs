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
//!
//! The image is covm-measure's launch description ([`Launch`]) without the
//! pages' contents, which stay in guest memory: [`with_contents`] reads
//! the measured ones for the measurement, [`write_pages`] writes the pages
//! an SEV-SNP launch adds. Each vCPU's initial state is the VMSA
//! encoding's input: the bootstrap vCPU's from covm's boot registers
//! ([`bsp_state`]), the others the INIT state.

use super::PlatformConfig;
use crate::arch::regs::{self, BootRegs, RegsError};
use crate::boot::{self, layout, BootEntry, BootError};
use crate::config::VmConfig;
use crate::vm::memory::{self, GuestMemory};
use covm_guest_abi::layout::FIRMWARE_BASE;
use covm_measure::vmsa::{Segment, VcpuState};
use covm_measure::{Launch, Page, PageType};
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use covm_guest_abi::layout::PAGE_SIZE as PAGE;

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

/// A loaded VM: where it enters, the bootstrap vCPU's registers and the
/// image that was loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The payload's entry.
    pub entry: BootEntry,
    /// The bootstrap vCPU's registers.
    pub bsp: BootRegs,
    /// The launch image: every page covm put in guest memory, in launch
    /// order (no contents), each vCPU's initial state and the payload's
    /// launch metadata.
    pub image: Launch,
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
    /// A page of the image that cannot be read back to measure it.
    #[error("cannot read guest page {gpa:#x} to measure it: {reason}")]
    Read {
        /// The page.
        gpa: u64,
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
        // Through the bitmap's summary, not page by page (131072 pages in
        // 512 MiB, read twice a launch, cost half a millisecond).
        pages.extend(bitmap.dirty_pages().into_iter().map(|page| start + page * PAGE));
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
    let mut pages: Vec<Page> = written_pages(memory)
        .into_iter()
        .map(|gpa| Page::new(gpa, PageType::Normal, describe(gpa, &entry)))
        .collect();
    place(memory, &config.platform, &mut pages)?;
    // One VMSA per KVM vCPU: the agent's vCPU is measured too.
    let vcpus = (0..config.kvm_vcpus())
        .map(|i| match i {
            0 => bsp_state(&bsp),
            _ => VcpuState::reset(),
        })
        .collect();
    Ok(Loaded {
        entry,
        bsp,
        image: Launch { pages, vcpus, metadata },
    })
}

/// The VMCB form of a KVM segment register.
pub fn segment(s: &kvm_segment) -> Segment {
    let attrib = Segment::attributes(s.type_, s.s, s.dpl, s.present, s.avl, s.l, s.db, s.g);
    Segment::new(s.selector, attrib, s.limit, s.base)
}

/// The bootstrap vCPU's initial state: the INIT state with covm's boot
/// registers applied (`arch::regs::apply_bsp` writes exactly these to
/// KVM; every general-purpose register it does not name is zero).
pub fn bsp_state(regs: &BootRegs) -> VcpuState {
    VcpuState {
        cs: segment(&regs.cs),
        ds: segment(&regs.ds),
        es: segment(&regs.es),
        fs: segment(&regs.fs),
        gs: segment(&regs.gs),
        ss: segment(&regs.ss),
        tr: segment(&regs.tr),
        gdtr: Segment::table(regs.gdt_base, regs.gdt_limit),
        idtr: Segment::table(regs.idt_base, regs.idt_limit),
        efer: regs.efer,
        cr0: regs.cr0,
        cr3: regs.cr3,
        cr4: regs.cr4,
        rflags: regs.rflags,
        rip: regs.rip,
        rsp: regs.rsp,
        rbx: regs.rbx,
        rbp: regs.rbp,
        rsi: regs.rsi,
        ..VcpuState::reset()
    }
}

/// `image` with the contents of its measured pages read from `memory`
/// (where it was loaded): the launch description covm-measure measures.
pub fn with_contents(memory: &GuestMemory, image: &Launch) -> Result<Launch, LoadError> {
    let mut described = image.clone();
    for page in &mut described.pages {
        if page.contents.is_some() || !page.page_type.measures_contents() {
            continue;
        }
        let mut contents = Box::new([0u8; PAGE as usize]);
        memory
            .read_slice(&mut contents[..], GuestAddress(page.gpa))
            .map_err(|e| LoadError::Read {
                gpa: page.gpa,
                reason: e.to_string(),
            })?;
        page.contents = Some(contents);
    }
    Ok(described)
}

/// Writes into `memory` the contents `pages` carry (those without contents
/// are left alone): the pages an SEV-SNP launch adds to covm's image
/// ([`covm_measure::snp::SnpLaunch::apply`]), for the launch to update.
pub fn write_pages(memory: &GuestMemory, pages: &[Page]) -> Result<(), LoadError> {
    for page in pages {
        if let Some(contents) = &page.contents {
            memory
                .write_slice(&contents[..], GuestAddress(page.gpa))
                .map_err(|e| LoadError::Place {
                    gpa: page.gpa,
                    what: page.what,
                    reason: e.to_string(),
                })?;
        }
    }
    Ok(())
}

/// Writes the platform's own pages after the payload's.
fn place(memory: &GuestMemory, platform: &PlatformConfig, pages: &mut Vec<Page>) -> Result<(), LoadError> {
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
        pages.push(Page::new(gpa, placed.page_type, placed.what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpusConfig, MemoryConfig, Payload, SerialMode};

    fn config(vcpus: u8) -> VmConfig {
        VmConfig {
            cpus: CpusConfig::boot(vcpus),
            memory: MemoryConfig { size: 64 << 20 },
            payload: Payload::BuiltinFirmware,
            cmdline: "workload=hello".into(),
            serial: SerialMode::Null,
            api_socket: None,
            dirty_tracking: Default::default(),
            devices: Default::default(),
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
    fn kvm_segments_pack_into_vmcb_attributes() {
        // covm's PVH code segment: flat 32-bit code, G and D set.
        let cs = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 8,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        assert_eq!(segment(&cs), Segment::new(8, 0xc9b, 0xffff_ffff, 0));
        let long = kvm_segment { l: 1, db: 0, ..cs };
        assert_eq!(segment(&long).attrib, 0xa9b);
    }

    /// The measured pages' contents are read back from memory; the others
    /// stay without; pages with contents are written.
    #[test]
    fn contents_read_and_written() {
        let mem = memory::allocate(64 << 20).unwrap();
        let loaded = load(&mem, &config(1)).unwrap();
        let described = with_contents(&mem, &loaded.image).unwrap();
        assert_eq!(described.pages.len(), loaded.image.pages.len());
        for page in &described.pages {
            let mut bytes = [0u8; PAGE as usize];
            mem.read_slice(&mut bytes, GuestAddress(page.gpa)).unwrap();
            assert_eq!(page.contents.as_deref(), Some(&bytes), "{:#x}", page.gpa);
        }
        let outside = Launch {
            pages: vec![Page::new(64 << 20, PageType::Normal, "x")],
            ..Default::default()
        };
        assert!(with_contents(&mem, &outside)
            .unwrap_err()
            .to_string()
            .starts_with("cannot read guest page 0x4000000 to measure it: "));
        let added = [
            Page::with_contents(0x2000, PageType::Secrets, "s", &[0xee; 8]),
            Page::new(0x3000, PageType::Zero, "z"),
        ];
        mem.write_slice(&[0x11; 8], GuestAddress(0x3000)).unwrap();
        write_pages(&mem, &added).unwrap();
        let mut bytes = [0u8; PAGE as usize];
        mem.read_slice(&mut bytes, GuestAddress(0x2000)).unwrap();
        assert_eq!((&bytes[..8], &bytes[8..]), (&[0xee; 8][..], &[0; 4088][..]));
        mem.read_slice(&mut bytes[..8], GuestAddress(0x3000)).unwrap();
        assert_eq!(&bytes[..8], &[0x11; 8], "a page without contents is left alone");
        let outside = [Page::with_contents(64 << 20, PageType::Cpuid, "c", &[])];
        assert!(write_pages(&mem, &outside)
            .unwrap_err()
            .to_string()
            .starts_with("cannot place the c at 0x4000000: "));
    }

    #[test]
    fn memory_must_be_fresh() {
        let mem = memory::allocate(64 << 20).unwrap();
        mem.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        assert!(matches!(load(&mem, &config(1)), Err(LoadError::NotFresh(0x5000))));
    }
}
