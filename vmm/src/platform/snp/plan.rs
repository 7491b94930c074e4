//! The arguments of an SEV-SNP launch, computed from covm's launch image
//! (a [`Launch`]) before any KVM call.
//!
//! The pages launched are exactly the image's, in its order and with its
//! page types: [`SnpPlan::updates`] coalesces runs of adjacent pages of
//! one type (one `KVM_SEV_SNP_LAUNCH_UPDATE` measures a range page by page
//! in ascending address, so a run is measured as its pages one by one).
//! The image's VMSAs are not launch updates: KVM makes each vCPU's VMSA
//! from its registers at `KVM_SEV_SNP_LAUNCH_FINISH`, in vCPU order, as
//! `covm_measure::snp::launch_digest` measures them after the pages.

use super::bindings::GHCB_VERSION;
use crate::platform::hardware::plan::PlanError;
use crate::platform::hardware::private_memory::{host_address, ram_regions, RamRegion};
use crate::vm::memory::GuestMemory;
use covm_measure::{Launch, PageType, PAGE_SIZE};
use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update};

const PAGE: u64 = PAGE_SIZE as u64;

/// An ID block and its authentication block (SNP firmware ABI,
/// `SNP_LAUNCH_FINISH`), for a guest owner who signs the launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdBlock {
    /// The ID block (96 bytes).
    pub block: [u8; 96],
    /// The ID authentication information structure (4096 bytes).
    pub auth: Box<[u8; 4096]>,
    /// Whether `auth` carries an author key.
    pub author_key: bool,
}

/// What the guest owner and covm choose for a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpOptions {
    /// The guest policy (`SNP_LAUNCH_START`'s POLICY).
    pub policy: u64,
    /// HOST_DATA: the SHA-256 of the migration policy.
    pub host_data: [u8; 32],
    /// An optional ID block.
    pub id: Option<IdBlock>,
    /// `vmsa_features` of `KVM_SEV_INIT2` (SEV_FEATURES of every VMSA).
    pub vmsa_features: u64,
}

impl SnpOptions {
    /// A launch with `policy` binding `host_data`, no ID block, no VMSA features.
    pub fn new(policy: u64, host_data: [u8; 32]) -> Self {
        SnpOptions {
            policy,
            host_data,
            id: None,
            vmsa_features: 0,
        }
    }
}

/// One `KVM_SEV_SNP_LAUNCH_UPDATE`: adjacent pages of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateRun {
    /// Guest-physical address of the first page.
    pub gpa: u64,
    /// Pages.
    pub pages: u64,
    /// covm's mapping of the first page (0 for ZERO pages: KVM ignores it).
    pub uaddr: u64,
    /// Their page type.
    pub page_type: PageType,
    /// What covm put there.
    pub what: &'static str,
}

impl UpdateRun {
    /// The command's argument.
    pub fn to_kvm(self) -> kvm_sev_snp_launch_update {
        kvm_sev_snp_launch_update {
            gfn_start: self.gpa / PAGE,
            uaddr: self.uaddr,
            len: self.pages * PAGE,
            type_: self.page_type as u8,
            ..Default::default()
        }
    }
}

/// Every argument of an SEV-SNP launch.
#[derive(Debug, Clone)]
pub struct SnpPlan {
    /// The RAM regions, one memory slot and guest_memfd each.
    pub ram: Vec<RamRegion>,
    /// vCPUs (one VMSA each, vCPU 0 first).
    pub vcpus: usize,
    /// `KVM_SEV_INIT2`'s argument.
    pub init: kvm_sev_init,
    /// `KVM_SEV_SNP_LAUNCH_START`'s argument.
    pub start: kvm_sev_snp_launch_start,
    /// The launch updates, in order.
    pub updates: Vec<UpdateRun>,
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// The ID block, if any (`finish` points into it).
    pub id: Option<IdBlock>,
}

impl SnpPlan {
    /// The plan for launching `image`, loaded in `memory`, with `options`.
    pub fn new(memory: &GuestMemory, image: &Launch, options: SnpOptions) -> Result<Self, PlanError> {
        Self::for_ram(ram_regions(memory), image, options)
    }

    /// As [`SnpPlan::new`], over RAM regions given directly.
    pub fn for_ram(ram: Vec<RamRegion>, image: &Launch, options: SnpOptions) -> Result<Self, PlanError> {
        if image.vcpus.is_empty() {
            return Err(PlanError::NoVcpu);
        }
        let mut updates: Vec<UpdateRun> = Vec::new();
        for page in &image.pages {
            let (gpa, what) = (page.gpa, page.what);
            if page.page_type == PageType::Vmsa {
                return Err(PlanError::VmsaPage(gpa));
            }
            if gpa % PAGE != 0 {
                return Err(PlanError::Unaligned { gpa, what });
            }
            let uaddr = host_address(&ram, gpa, PAGE).ok_or(PlanError::NotRam { gpa, what })?;
            let uaddr = if page.page_type == PageType::Zero { 0 } else { uaddr };
            let next = updates.last_mut().filter(|run| {
                let end = run.gpa + run.pages * PAGE;
                run.page_type == page.page_type
                    && run.what == what
                    && end == gpa
                    && (uaddr == 0 || run.uaddr + run.pages * PAGE == uaddr)
                    && host_address(&ram, run.gpa, end + PAGE - run.gpa).is_some()
            });
            match next {
                Some(run) => run.pages += 1,
                None => updates.push(UpdateRun {
                    gpa,
                    pages: 1,
                    uaddr,
                    page_type: page.page_type,
                    what,
                }),
            }
        }
        Ok(SnpPlan {
            ram,
            vcpus: image.vcpus.len(),
            init: kvm_sev_init {
                vmsa_features: options.vmsa_features,
                flags: 0,
                ghcb_version: GHCB_VERSION,
                ..Default::default()
            },
            start: kvm_sev_snp_launch_start {
                policy: options.policy,
                ..Default::default()
            },
            updates,
            host_data: options.host_data,
            id: options.id,
        })
    }

    /// `KVM_SEV_SNP_LAUNCH_FINISH`'s argument; its ID block pointers point
    /// into this plan, which must outlive the call.
    pub fn finish(&self) -> kvm_sev_snp_launch_finish {
        let mut finish = kvm_sev_snp_launch_finish {
            host_data: self.host_data,
            ..Default::default()
        };
        if let Some(id) = &self.id {
            finish.id_block_uaddr = id.block.as_ptr() as u64;
            finish.id_auth_uaddr = id.auth.as_ptr() as u64;
            finish.id_block_en = 1;
            finish.auth_key_en = u8::from(id.author_key);
        }
        finish
    }

    /// The image pages the updates launch, one by one, in launch order.
    #[cfg(test)]
    pub fn pages(&self) -> impl Iterator<Item = (u64, PageType)> + '_ {
        self.updates
            .iter()
            .flat_map(|run| (0..run.pages).map(move |i| (run.gpa + i * PAGE, run.page_type)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use covm_measure::vmsa::VcpuState;
    use covm_measure::Page;
    use kvm_bindings::{
        KVM_SEV_SNP_PAGE_TYPE_CPUID, KVM_SEV_SNP_PAGE_TYPE_NORMAL, KVM_SEV_SNP_PAGE_TYPE_SECRETS,
        KVM_SEV_SNP_PAGE_TYPE_UNMEASURED, KVM_SEV_SNP_PAGE_TYPE_ZERO,
    };

    fn ram() -> Vec<RamRegion> {
        vec![
            RamRegion {
                slot: 0,
                gpa: 0,
                size: 0x40_0000,
                uaddr: 0x7f00_0000_0000,
            },
            RamRegion {
                slot: 1,
                gpa: 0x40_0000,
                size: 0x40_0000,
                uaddr: 0x7e00_0000_0000,
            },
        ]
    }

    fn page(gpa: u64, page_type: PageType, what: &'static str) -> Page {
        Page::new(gpa, page_type, what)
    }

    fn image(pages: Vec<Page>) -> Launch {
        Launch {
            metadata: Vec::new(),
            pages,
            vcpus: vec![VcpuState::reset()],
        }
    }

    #[test]
    fn page_types_are_kvms() {
        assert_eq!(PageType::Normal as u32, KVM_SEV_SNP_PAGE_TYPE_NORMAL);
        assert_eq!(PageType::Zero as u32, KVM_SEV_SNP_PAGE_TYPE_ZERO);
        assert_eq!(PageType::Unmeasured as u32, KVM_SEV_SNP_PAGE_TYPE_UNMEASURED);
        assert_eq!(PageType::Secrets as u32, KVM_SEV_SNP_PAGE_TYPE_SECRETS);
        assert_eq!(PageType::Cpuid as u32, KVM_SEV_SNP_PAGE_TYPE_CPUID);
    }

    #[test]
    fn runs_split_on_type_gap_and_region() {
        let pages = vec![
            page(0x1000, PageType::Normal, "a"),
            page(0x2000, PageType::Normal, "a"),
            page(0x3000, PageType::Zero, "z"),
            page(0x4000, PageType::Zero, "z"),
            page(0x6000, PageType::Normal, "a"),
            page(0x3f_f000, PageType::Normal, "b"),
            page(0x40_0000, PageType::Normal, "b"),
            page(0x8000, PageType::Secrets, "s"),
            page(0x9000, PageType::Cpuid, "c"),
            page(0xa000, PageType::Unmeasured, "u"),
        ];
        let plan = SnpPlan::for_ram(ram(), &image(pages.clone()), SnpOptions::new(0x30000, [7; 32])).unwrap();
        let runs: Vec<(u64, u64, u64, PageType)> = plan
            .updates
            .iter()
            .map(|r| (r.gpa, r.pages, r.uaddr, r.page_type))
            .collect();
        let low = 0x7f00_0000_0000u64;
        assert_eq!(
            runs,
            vec![
                (0x1000, 2, low + 0x1000, PageType::Normal),
                (0x3000, 2, 0, PageType::Zero),
                (0x6000, 1, low + 0x6000, PageType::Normal),
                (0x3f_f000, 1, low + 0x3f_f000, PageType::Normal),
                (0x40_0000, 1, 0x7e00_0000_0000, PageType::Normal),
                (0x8000, 1, low + 0x8000, PageType::Secrets),
                (0x9000, 1, low + 0x9000, PageType::Cpuid),
                (0xa000, 1, low + 0xa000, PageType::Unmeasured),
            ]
        );
        let launched: Vec<(u64, PageType)> = plan.pages().collect();
        let listed: Vec<(u64, PageType)> = pages.iter().map(|p| (p.gpa, p.page_type)).collect();
        assert_eq!(launched, listed);
        let update = plan.updates[0].to_kvm();
        assert_eq!(
            (update.gfn_start, update.len, update.type_, update.flags),
            (1, 0x2000, 1, 0)
        );
        assert_eq!(plan.start.policy, 0x30000);
        assert_eq!((plan.start.flags, plan.start.gosvw), (0, [0; 16]));
        assert_eq!(
            (plan.init.ghcb_version, plan.init.flags, plan.init.vmsa_features),
            (2, 0, 0)
        );
    }

    #[test]
    fn refusals() {
        let plan = |pages| SnpPlan::for_ram(ram(), &image(pages), SnpOptions::new(0, [0; 32])).unwrap_err();
        assert_eq!(
            plan(vec![page(0x80_0000, PageType::Normal, "x")]).to_string(),
            "the x page at 0x800000 is not in guest RAM"
        );
        assert!(matches!(
            plan(vec![page(0x1010, PageType::Normal, "x")]),
            PlanError::Unaligned { gpa: 0x1010, .. }
        ));
        assert_eq!(
            plan(vec![page(0x1000, PageType::Vmsa, "v")]),
            PlanError::VmsaPage(0x1000)
        );
        let none = Launch {
            metadata: Vec::new(),
            pages: vec![],
            vcpus: vec![],
        };
        assert_eq!(
            SnpPlan::for_ram(ram(), &none, SnpOptions::new(0, [0; 32])).unwrap_err(),
            PlanError::NoVcpu
        );
    }

    #[test]
    fn finish_carries_host_data_and_the_id_block() {
        let mut options = SnpOptions::new(0, [0xab; 32]);
        let plan = SnpPlan::for_ram(ram(), &image(vec![]), options.clone()).unwrap();
        let finish = plan.finish();
        assert_eq!(finish.host_data, [0xab; 32]);
        assert_eq!(
            (
                finish.id_block_en,
                finish.auth_key_en,
                finish.id_block_uaddr,
                finish.id_auth_uaddr
            ),
            (0, 0, 0, 0)
        );
        options.id = Some(IdBlock {
            block: [1; 96],
            auth: Box::new([2; 4096]),
            author_key: true,
        });
        let plan = SnpPlan::for_ram(ram(), &image(vec![]), options).unwrap();
        let finish = plan.finish();
        let id = plan.id.as_ref().unwrap();
        assert_eq!((finish.id_block_en, finish.auth_key_en), (1, 1));
        assert_eq!(finish.id_block_uaddr, id.block.as_ptr() as u64);
        assert_eq!(finish.id_auth_uaddr, id.auth.as_ptr() as u64);
        assert_eq!((finish.flags, finish.vcek_disabled), (0, 0));
    }
}
