//! The recording fake of an SEV-SNP launch (tests only): its calls on the
//! shared [`Fake`] recorder.

use super::construct::{SnpVmOps, VcpuBoot};
use super::ops::SnpLaunchOps;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::fake::{Fake, Recorded, SharedCall};
use crate::platform::hardware::host::Unavailable;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update, kvm_userspace_memory_region2,
};

/// One call of an SEV-SNP launch.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SnpCall {
    CreateVm(u64),
    SevInit2(kvm_sev_init),
    CreateGuestMemfd(kvm_create_guest_memfd),
    SetUserMemoryRegion2(kvm_userspace_memory_region2),
    SetMemoryAttributes(kvm_memory_attributes),
    EnableExitHypercall(u64),
    LaunchStart(kvm_sev_snp_launch_start),
    CreateVcpus(usize),
    LaunchUpdate(kvm_sev_snp_launch_update),
    LaunchFinish(kvm_sev_snp_launch_finish),
    // covm's VM construction (`super::construct::SnpVmOps`).
    Probe,
    CreateChips,
    SetBootState { vcpu: usize, rdx: u64, rip: Option<u64> },
}

impl SnpCall {
    pub(crate) fn name(&self) -> &'static str {
        Recorded::name(self)
    }
}

impl Recorded for SnpCall {
    fn name(&self) -> &'static str {
        match self {
            SnpCall::CreateVm(t) => SharedCall::CreateVm(*t).name(),
            SnpCall::SevInit2(_) => "KVM_SEV_INIT2",
            SnpCall::CreateGuestMemfd(g) => SharedCall::CreateGuestMemfd(*g).name(),
            SnpCall::SetUserMemoryRegion2(r) => SharedCall::SetUserMemoryRegion2(*r).name(),
            SnpCall::SetMemoryAttributes(a) => SharedCall::SetMemoryAttributes(*a).name(),
            SnpCall::EnableExitHypercall(m) => SharedCall::EnableExitHypercall(*m).name(),
            SnpCall::LaunchStart(_) => "KVM_SEV_SNP_LAUNCH_START",
            SnpCall::CreateVcpus(n) => SharedCall::CreateVcpus(*n).name(),
            SnpCall::LaunchUpdate(_) => "KVM_SEV_SNP_LAUNCH_UPDATE",
            SnpCall::LaunchFinish(_) => "KVM_SEV_SNP_LAUNCH_FINISH",
            SnpCall::Probe => "probe",
            SnpCall::CreateChips => "KVM_CREATE_IRQCHIP",
            SnpCall::SetBootState { .. } => "KVM_SET_REGS",
        }
    }

    fn from_shared(call: SharedCall) -> Self {
        match call {
            SharedCall::CreateVm(t) => SnpCall::CreateVm(t),
            SharedCall::CreateVcpus(n) => SnpCall::CreateVcpus(n),
            SharedCall::CreateGuestMemfd(g) => SnpCall::CreateGuestMemfd(g),
            SharedCall::SetUserMemoryRegion2(r) => SnpCall::SetUserMemoryRegion2(r),
            SharedCall::SetMemoryAttributes(a) => SnpCall::SetMemoryAttributes(a),
            SharedCall::EnableExitHypercall(m) => SnpCall::EnableExitHypercall(m),
        }
    }
}

/// The calls of [`super::launch::prepare`], in order: the launch's tests
/// and the VM construction's expect them alike.
pub(crate) const PREPARE_CALLS: [&str; 7] = [
    "KVM_CREATE_VM",
    "KVM_SEV_INIT2",
    "KVM_CREATE_GUEST_MEMFD",
    "KVM_SET_USER_MEMORY_REGION2",
    "KVM_SET_MEMORY_ATTRIBUTES",
    "KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)",
    "KVM_SEV_SNP_LAUNCH_START",
];

/// The SEV-SNP fake.
pub(crate) type SnpFake = Fake<SnpCall>;

impl SnpLaunchOps for SnpFake {
    fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CallError> {
        self.record(SnpCall::SevInit2(*init))
    }

    fn snp_launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CallError> {
        self.record(SnpCall::LaunchStart(*start))
    }

    fn snp_launch_update(&mut self, update: &kvm_sev_snp_launch_update) -> Result<(), CallError> {
        self.record(SnpCall::LaunchUpdate(*update))
    }

    fn snp_launch_finish(&mut self, finish: &kvm_sev_snp_launch_finish) -> Result<(), CallError> {
        self.record(SnpCall::LaunchFinish(*finish))
    }
}

impl SnpVmOps for SnpFake {
    fn probe(&mut self) -> Result<(), Unavailable> {
        self.record(SnpCall::Probe).map_err(|e| Unavailable {
            what: super::probe::WHAT,
            missing: vec![e.to_string()],
        })
    }

    fn create_chips(&mut self) -> Result<(), CallError> {
        self.record(SnpCall::CreateChips)
    }

    fn set_boot_state(&mut self, vcpu: usize, boot: &VcpuBoot) -> Result<(), CallError> {
        self.record(SnpCall::SetBootState {
            vcpu,
            rdx: boot.rdx,
            rip: boot.bsp.map(|b| b.rip),
        })
    }
}
