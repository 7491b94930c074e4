//! The arguments of a TDX launch, computed from covm's launch image (a
//! [`Launch`]) before any KVM call.
//!
//! Every image page is added with `KVM_TDX_INIT_MEM_REGION`
//! (`TDH.MEM.PAGE.ADD`, which puts its address in MRTD), in the image's
//! order, by its SNP page type: NORMAL pages with
//! `KVM_TDX_MEASURE_MEMORY_REGION` (`TDH.MR.EXTEND`: contents measured,
//! as SNP measures NORMAL pages), UNMEASURED pages without it (address
//! only, as SNP), ZERO pages from a page of zeros without it. SECRETS and
//! CPUID pages have no TDX counterpart and are refused; vCPU state is not
//! added (the TDX module sets it). Last comes the TD HOB
//! ([`covm_measure::td_hob`]), unmeasured as TDVF's TD_HOB section is: it
//! lists the RAM, added pages as accepted system memory, the rest as
//! unaccepted.

use super::bindings::{
    TdxCapabilities, TdxInitMemRegion, TdxInitVm, ATTR_SEPT_VE_DISABLE, MEASURE_MEMORY_REGION, XFAM_FIXED,
};
use crate::platform::hardware::plan::PlanError;
use crate::platform::hardware::private_memory::{host_address, ram_regions, RamRegion};
use crate::vm::memory::GuestMemory;
use covm_measure::td_hob::{self, HobOverflow};
use covm_measure::{Launch, PageType};
use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use covm_guest_abi::layout::PAGE_SIZE as PAGE;
const PLATFORM: &str = "Intel TDX";

/// A page-aligned page of host memory (`source_addr` must be aligned).
#[repr(C, align(4096))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlignedPage(pub [u8; 4096]);

/// What the guest owner and covm choose for a TD.
#[derive(Debug, Clone, PartialEq)]
pub struct TdxOptions {
    /// The TD's parameters; `td.cpuid` is the CPUID covm wants the TD to
    /// see (e.g. KVM's supported CPUID), of which the launch keeps what
    /// the host lets a TD configure.
    pub td: TdxInitVm,
    /// Where the TD HOB goes (page-aligned, in RAM, not an image page).
    pub hob_gpa: u64,
    /// Its pages.
    pub hob_pages: u64,
}

impl TdxOptions {
    /// A TD binding `host_data` in MRCONFIGID (its first 32 bytes, the rest
    /// zero), with SEPT_VE_DISABLE, the fixed XFAM, `cpuid`, and a
    /// one-page TD HOB at `hob_gpa`.
    pub fn new(host_data: [u8; 32], cpuid: Vec<kvm_cpuid_entry2>, hob_gpa: u64) -> Self {
        let mut mrconfigid = [0; 48];
        mrconfigid[..32].copy_from_slice(&host_data);
        TdxOptions {
            td: TdxInitVm {
                attributes: ATTR_SEPT_VE_DISABLE,
                xfam: XFAM_FIXED,
                mrconfigid,
                mrowner: [0; 48],
                mrownerconfig: [0; 48],
                cpuid,
            },
            hob_gpa,
            hob_pages: 1,
        }
    }
}

/// Where a region's contents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// covm's mapping of guest memory, at this address.
    Guest(u64),
    /// The plan's page of zeros.
    Zero,
    /// The plan's TD HOB.
    Hob,
}

/// One `KVM_TDX_INIT_MEM_REGION`: adjacent pages added alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegionRun {
    /// Guest-physical address of the first page.
    pub gpa: u64,
    /// Pages.
    pub pages: u64,
    /// Their contents.
    pub source: Source,
    /// Whether MRTD is extended with the contents.
    pub measure: bool,
    /// What covm put there.
    pub what: &'static str,
}

impl MemRegionRun {
    /// The sub-command's flags.
    pub fn flags(&self) -> u32 {
        if self.measure {
            MEASURE_MEMORY_REGION
        } else {
            0
        }
    }
}

/// Why an image cannot be launched as a TD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TdxPlanError {
    /// An image page.
    #[error(transparent)]
    Image(#[from] PlanError),
    /// The TD HOB's area.
    #[error("the TD HOB at {gpa:#x} ({pages} pages) {reason}")]
    HobPlace {
        /// Its address.
        gpa: u64,
        /// Its pages.
        pages: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The TD HOB does not fit its area.
    #[error(transparent)]
    HobOverflow(#[from] HobOverflow),
}

/// Every argument of a TDX launch.
#[derive(Debug)]
pub struct TdxPlan {
    /// The RAM regions, one memory slot and guest_memfd each.
    pub ram: Vec<RamRegion>,
    /// vCPUs.
    pub vcpus: usize,
    /// The choices.
    pub options: TdxOptions,
    /// The memory regions to add, in order (the TD HOB last).
    pub regions: Vec<MemRegionRun>,
    hob: Vec<AlignedPage>,
    zero: Box<AlignedPage>,
}

impl TdxPlan {
    /// The plan for launching `image`, loaded in `memory`, with `options`.
    pub fn new(memory: &GuestMemory, image: &Launch, options: TdxOptions) -> Result<Self, TdxPlanError> {
        Self::for_ram(ram_regions(memory), image, options)
    }

    /// As [`TdxPlan::new`], over RAM regions given directly.
    pub fn for_ram(ram: Vec<RamRegion>, image: &Launch, options: TdxOptions) -> Result<Self, TdxPlanError> {
        if image.vcpus.is_empty() {
            return Err(PlanError::NoVcpu.into());
        }
        let mut regions: Vec<MemRegionRun> = Vec::new();
        for page in &image.pages {
            let (gpa, what) = (page.gpa, page.what);
            if gpa % PAGE != 0 {
                return Err(PlanError::Unaligned { gpa, what }.into());
            }
            let uaddr = host_address(&ram, gpa, PAGE).ok_or(PlanError::NotRam { gpa, what })?;
            let (source, measure) = match page.page_type {
                PageType::Normal => (Source::Guest(uaddr), true),
                PageType::Unmeasured => (Source::Guest(uaddr), false),
                PageType::Zero => (Source::Zero, false),
                other => {
                    return Err(PlanError::PageType {
                        gpa,
                        what,
                        page_type: other.name(),
                        platform: PLATFORM,
                    }
                    .into())
                }
            };
            let next = regions.last_mut().filter(|run| match (run.source, source) {
                (Source::Guest(first), Source::Guest(this)) => {
                    let end = run.gpa + run.pages * PAGE;
                    run.measure == measure
                        && run.what == what
                        && end == gpa
                        && first + run.pages * PAGE == this
                        && host_address(&ram, run.gpa, end + PAGE - run.gpa).is_some()
                }
                _ => false,
            });
            match next {
                Some(run) => run.pages += 1,
                None => regions.push(MemRegionRun {
                    gpa,
                    pages: 1,
                    source,
                    measure,
                    what,
                }),
            }
        }
        let (hob_gpa, hob_pages) = (options.hob_gpa, options.hob_pages);
        let misplaced = |reason| TdxPlanError::HobPlace {
            gpa: hob_gpa,
            pages: hob_pages,
            reason,
        };
        if hob_gpa % PAGE != 0 || hob_pages == 0 {
            return Err(misplaced("is not a whole number of aligned pages"));
        }
        let hob_len = hob_pages.checked_mul(PAGE).ok_or(misplaced("is too large"))?;
        if host_address(&ram, hob_gpa, hob_len).is_none() {
            return Err(misplaced("is not in guest RAM"));
        }
        if image
            .pages
            .iter()
            .any(|p| p.gpa >= hob_gpa && p.gpa < hob_gpa + hob_len)
        {
            return Err(misplaced("overlaps a page of the image"));
        }
        let mut added: Vec<(u64, u64)> = regions.iter().map(|r| (r.gpa, r.pages * PAGE)).collect();
        added.push((hob_gpa, hob_len));
        let ranges: Vec<(u64, u64)> = ram.iter().map(|r| (r.gpa, r.size)).collect();
        let bytes = td_hob::build(hob_gpa, hob_len as usize, &td_hob::ram_entries(&ranges, &added))?;
        let mut hob = vec![AlignedPage([0; 4096]); hob_pages as usize];
        for (page, chunk) in hob.iter_mut().zip(bytes.chunks(PAGE as usize)) {
            page.0[..chunk.len()].copy_from_slice(chunk);
        }
        regions.push(MemRegionRun {
            gpa: hob_gpa,
            pages: hob_pages,
            source: Source::Hob,
            measure: false,
            what: "TD HOB",
        });
        Ok(TdxPlan {
            ram,
            vcpus: image.vcpus.len(),
            options,
            regions,
            hob,
            zero: Box::new(AlignedPage([0; 4096])),
        })
    }

    /// The TD HOB's pages.
    #[cfg(test)]
    pub fn hob(&self) -> &[AlignedPage] {
        &self.hob
    }

    /// `KVM_TDX_INIT_MEM_REGION`'s argument for `run`; its source points
    /// into guest memory or this plan, which must outlive the call.
    pub fn region(&self, run: &MemRegionRun) -> TdxInitMemRegion {
        TdxInitMemRegion {
            source_addr: match run.source {
                Source::Guest(uaddr) => uaddr,
                Source::Zero => self.zero.0.as_ptr() as u64,
                Source::Hob => self.hob.as_ptr() as u64,
            },
            gpa: run.gpa,
            nr_pages: run.pages,
        }
    }

    /// `KVM_TDX_INIT_VM`'s argument on a host with `caps`: the chosen
    /// attributes and XFAM (refused if the host does not support them) and
    /// the wanted CPUID restricted to what a TD may configure.
    pub fn init_vm(&self, caps: &TdxCapabilities) -> Result<TdxInitVm, String> {
        let td = &self.options.td;
        for (name, value, supported) in [
            ("attributes", td.attributes, caps.supported_attrs),
            ("XFAM", td.xfam, caps.supported_xfam),
        ] {
            if value & !supported != 0 {
                return Err(format!(
                    "TD {name} {value:#x} include bits {:#x} this host does not support (supported: {supported:#x})",
                    value & !supported
                ));
            }
        }
        let cpuid = caps
            .cpuid
            .iter()
            .filter_map(|c| {
                let any_index = c.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0;
                let want = td
                    .cpuid
                    .iter()
                    .find(|d| d.function == c.function && (any_index || d.index == c.index))?;
                Some(kvm_cpuid_entry2 {
                    function: c.function,
                    index: c.index,
                    flags: c.flags,
                    eax: want.eax & c.eax,
                    ebx: want.ebx & c.ebx,
                    ecx: want.ecx & c.ecx,
                    edx: want.edx & c.edx,
                    ..Default::default()
                })
            })
            .collect();
        Ok(TdxInitVm { cpuid, ..td.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use covm_measure::vmsa::VcpuState;
    use covm_measure::Page;

    fn ram() -> Vec<RamRegion> {
        vec![RamRegion {
            slot: 0,
            gpa: 0,
            size: 0x100_0000,
            uaddr: 0x7f00_0000_0000,
        }]
    }

    fn image(pages: &[(u64, PageType)]) -> Launch {
        Launch {
            metadata: Vec::new(),
            pages: pages
                .iter()
                .map(|&(gpa, page_type)| Page::new(gpa, page_type, "x"))
                .collect(),
            vcpus: vec![VcpuState::reset(); 2],
        }
    }

    #[test]
    fn regions_by_page_type() {
        let pages = [
            (0x1000, PageType::Normal),
            (0x2000, PageType::Normal),
            (0x3000, PageType::Unmeasured),
            (0x4000, PageType::Zero),
            (0x5000, PageType::Zero),
            (0x10_0000, PageType::Normal),
        ];
        let plan = TdxPlan::for_ram(ram(), &image(&pages), TdxOptions::new([9; 32], vec![], 0x80_0000)).unwrap();
        let runs: Vec<(u64, u64, Source, bool)> = plan
            .regions
            .iter()
            .map(|r| (r.gpa, r.pages, r.source, r.measure))
            .collect();
        let base = 0x7f00_0000_0000;
        assert_eq!(
            runs,
            vec![
                (0x1000, 2, Source::Guest(base + 0x1000), true),
                (0x3000, 1, Source::Guest(base + 0x3000), false),
                (0x4000, 1, Source::Zero, false),
                (0x5000, 1, Source::Zero, false),
                (0x10_0000, 1, Source::Guest(base + 0x10_0000), true),
                (0x80_0000, 1, Source::Hob, false),
            ]
        );
        assert_eq!(plan.regions[0].flags(), MEASURE_MEMORY_REGION);
        assert_eq!(plan.regions[1].flags(), 0);
        let zero = plan.region(&plan.regions[2]);
        assert_eq!(zero.source_addr % 4096, 0, "page-aligned source");
        let hob = plan.region(&plan.regions[5]);
        assert_eq!((hob.gpa, hob.nr_pages), (0x80_0000, 1));
        assert_eq!(hob.source_addr, plan.hob()[0].0.as_ptr() as u64);
        assert_eq!(hob.source_addr % 4096, 0);
        assert_eq!(plan.vcpus, 2);
        assert_eq!(&plan.options.td.mrconfigid[..32], &[9; 32]);
        assert_eq!(&plan.options.td.mrconfigid[32..], &[0; 16]);
        // The HOB lists the added pages (image and HOB) as system memory.
        let hob = &plan.hob()[0].0;
        let added: Vec<(u64, u64)> = (0..)
            .map(|i| 56 + i * 48)
            .take_while(|&r| u16::from_le_bytes([hob[r], hob[r + 1]]) == 3)
            .filter(|&r| hob[r + 24] == 0)
            .map(|r| {
                let at = |o: usize| u64::from_le_bytes(hob[r + o..r + o + 8].try_into().unwrap());
                (at(32), at(40))
            })
            .collect();
        assert_eq!(added, vec![(0x1000, 0x5000), (0x10_0000, 0x1000), (0x80_0000, 0x1000)]);
    }

    #[test]
    fn refusals() {
        let plan = |pages: &[(u64, PageType)], hob_gpa| {
            TdxPlan::for_ram(ram(), &image(pages), TdxOptions::new([0; 32], vec![], hob_gpa)).unwrap_err()
        };
        assert_eq!(
            plan(&[(0x1000, PageType::Secrets)], 0x80_0000).to_string(),
            "the x page at 0x1000 is of type secrets, which Intel TDX cannot launch"
        );
        assert!(plan(&[(0x1000, PageType::Cpuid)], 0x80_0000)
            .to_string()
            .contains("type cpuid"));
        assert!(plan(&[(0x1000, PageType::Vmsa)], 0x80_0000)
            .to_string()
            .contains("type vmsa"));
        assert_eq!(
            plan(&[(0x1000, PageType::Normal)], 0x1000).to_string(),
            "the TD HOB at 0x1000 (1 pages) overlaps a page of the image"
        );
        assert!(plan(&[], 0x100_0000).to_string().ends_with("is not in guest RAM"));
        assert!(plan(&[], 0x80_0800)
            .to_string()
            .ends_with("is not a whole number of aligned pages"));
        assert!(matches!(
            plan(&[(0x200_0000, PageType::Normal)], 0x80_0000),
            TdxPlanError::Image(PlanError::NotRam { gpa: 0x200_0000, .. })
        ));
    }

    #[test]
    fn init_vm_keeps_what_the_host_lets_a_td_configure() {
        let entry = |function, index, flags, eax, ecx| kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ecx,
            ..Default::default()
        };
        let wanted = vec![
            entry(1, 0, 0, 0xffff_ffff, 0xffff_ffff),
            entry(7, 0, 1, 0xff, 0xf0f0),
            entry(7, 1, 1, 0xaa, 0xaa),
            entry(0x8000_0008, 0, 0, 0x3030, 0),
        ];
        let mut options = TdxOptions::new([0; 32], wanted, 0x80_0000);
        let caps = TdxCapabilities {
            supported_attrs: ATTR_SEPT_VE_DISABLE | 1,
            supported_xfam: 0xff,
            cpuid: vec![
                entry(1, 0, 0, 0x0f, 0x100),
                entry(7, 1, 1, 0x0f, 0x0f),
                entry(0x4000_0000, 0, 0, 1, 1),
            ],
            ..Default::default()
        };
        let plan = TdxPlan::for_ram(ram(), &image(&[]), options.clone()).unwrap();
        let init = plan.init_vm(&caps).unwrap();
        assert_eq!((init.attributes, init.xfam), (ATTR_SEPT_VE_DISABLE, 3));
        assert_eq!(
            init.cpuid,
            vec![entry(1, 0, 0, 0x0f, 0x100), entry(7, 1, 1, 0x0a, 0x0a)],
            "masked by the configurable bits; leaves the host does not list, or covm does not want, left out"
        );
        options.td.attributes |= 1 << 30;
        let plan = TdxPlan::for_ram(ram(), &image(&[]), options.clone()).unwrap();
        assert_eq!(
            plan.init_vm(&caps).unwrap_err(),
            "TD attributes 0x50000000 include bits 0x40000000 this host does not support (supported: 0x10000001)"
        );
        options.td.attributes = 0;
        options.td.xfam = 0x1ff;
        let plan = TdxPlan::for_ram(ram(), &image(&[]), options).unwrap();
        assert!(plan
            .init_vm(&caps)
            .unwrap_err()
            .starts_with("TD XFAM 0x1ff include bits 0x100"));
    }
}
