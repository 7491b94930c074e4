//! The recording fake of a TDX launch (tests only), on the shared
//! [`Fake`] recorder: a host offering SEPT_VE_DISABLE, XFAM 0x602ff, one
//! configurable CPUID leaf and 8 vCPUs.

use super::bindings::{TdxCapabilities, TdxInitMemRegion, TdxInitVm, ATTR_SEPT_VE_DISABLE};
use super::construct::TdxVmOps;
use super::ops::TdxLaunchOps;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::fake::{Fake, Recorded, SharedCall};
use crate::platform::hardware::host::Unavailable;
use kvm_bindings::{kvm_cpuid_entry2, kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2};

/// The fake host's vCPU limit for a TD.
pub(crate) const FAKE_MAX_VCPUS: usize = 8;

/// The fake host's capabilities.
pub(crate) fn fake_capabilities() -> TdxCapabilities {
    TdxCapabilities {
        supported_attrs: ATTR_SEPT_VE_DISABLE,
        supported_xfam: 0x6_02ff,
        cpuid: vec![kvm_cpuid_entry2 {
            function: 1,
            eax: 0x0fff_3fff,
            ecx: 0x7ffe_fbff,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// CPUID covm wants: leaf 1 all ones (the fake host lets a TD configure
/// some of it: [`fake_capabilities`]).
pub(crate) fn wanted_cpuid() -> Vec<kvm_cpuid_entry2> {
    vec![kvm_cpuid_entry2 {
        function: 1,
        eax: 0xffff_ffff,
        ecx: 0xffff_ffff,
        ..Default::default()
    }]
}

/// One call of a TDX launch.
#[derive(Debug, Clone)]
pub(crate) enum TdxCall {
    Probe,
    CreateVm(u64),
    Capabilities,
    MaxVcpus,
    InitVm(TdxInitVm),
    CreateGuestMemfd(kvm_create_guest_memfd),
    SetUserMemoryRegion2(kvm_userspace_memory_region2),
    SetMemoryAttributes(kvm_memory_attributes),
    EnableExitHypercall(u64),
    SplitIrqchip(u64),
    CreateVcpus(usize),
    InitVcpu {
        vcpu: usize,
        rcx: u64,
    },
    InitMemRegion {
        vcpu: usize,
        region: TdxInitMemRegion,
        flags: u32,
    },
    FinalizeVm,
}

impl TdxCall {
    pub(crate) fn name(&self) -> &'static str {
        Recorded::name(self)
    }
}

impl Recorded for TdxCall {
    fn name(&self) -> &'static str {
        match self {
            TdxCall::Probe => "probe",
            TdxCall::CreateVm(t) => SharedCall::CreateVm(*t).name(),
            TdxCall::Capabilities => "KVM_TDX_CAPABILITIES",
            TdxCall::MaxVcpus => "KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)",
            TdxCall::InitVm(_) => "KVM_TDX_INIT_VM",
            TdxCall::CreateGuestMemfd(g) => SharedCall::CreateGuestMemfd(*g).name(),
            TdxCall::SetUserMemoryRegion2(r) => SharedCall::SetUserMemoryRegion2(*r).name(),
            TdxCall::SetMemoryAttributes(a) => SharedCall::SetMemoryAttributes(*a).name(),
            TdxCall::EnableExitHypercall(m) => SharedCall::EnableExitHypercall(*m).name(),
            TdxCall::SplitIrqchip(_) => "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)",
            TdxCall::CreateVcpus(n) => SharedCall::CreateVcpus(*n).name(),
            TdxCall::InitVcpu { .. } => "KVM_TDX_INIT_VCPU",
            TdxCall::InitMemRegion { .. } => "KVM_TDX_INIT_MEM_REGION",
            TdxCall::FinalizeVm => "KVM_TDX_FINALIZE_VM",
        }
    }

    fn from_shared(call: SharedCall) -> Self {
        match call {
            SharedCall::CreateVm(t) => TdxCall::CreateVm(t),
            SharedCall::CreateVcpus(n) => TdxCall::CreateVcpus(n),
            SharedCall::CreateGuestMemfd(g) => TdxCall::CreateGuestMemfd(g),
            SharedCall::SetUserMemoryRegion2(r) => TdxCall::SetUserMemoryRegion2(r),
            SharedCall::SetMemoryAttributes(a) => TdxCall::SetMemoryAttributes(a),
            SharedCall::EnableExitHypercall(m) => TdxCall::EnableExitHypercall(m),
        }
    }
}

/// The calls of [`super::launch::prepare`], in order: the launch's tests
/// and the VM construction's expect them alike.
pub(crate) const PREPARE_CALLS: [&str; 8] = [
    "KVM_CREATE_VM",
    "KVM_TDX_CAPABILITIES",
    "KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)",
    "KVM_TDX_INIT_VM",
    "KVM_CREATE_GUEST_MEMFD",
    "KVM_SET_USER_MEMORY_REGION2",
    "KVM_SET_MEMORY_ATTRIBUTES",
    "KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)",
];

/// The TDX fake.
pub(crate) type TdxFake = Fake<TdxCall>;

impl TdxLaunchOps for TdxFake {
    fn tdx_capabilities(&mut self) -> Result<TdxCapabilities, CallError> {
        self.record(TdxCall::Capabilities)?;
        Ok(fake_capabilities())
    }

    fn max_vcpus(&mut self) -> Result<usize, CallError> {
        self.record(TdxCall::MaxVcpus)?;
        Ok(FAKE_MAX_VCPUS)
    }

    fn tdx_init_vm(&mut self, init: &TdxInitVm) -> Result<(), CallError> {
        self.record(TdxCall::InitVm(init.clone()))
    }

    fn tdx_init_vcpu(&mut self, vcpu: usize, rcx: u64) -> Result<(), CallError> {
        self.record(TdxCall::InitVcpu { vcpu, rcx })
    }

    fn tdx_init_mem_region(&mut self, vcpu: usize, region: &TdxInitMemRegion, flags: u32) -> Result<(), CallError> {
        self.record(TdxCall::InitMemRegion {
            vcpu,
            region: *region,
            flags,
        })
    }

    fn tdx_finalize_vm(&mut self) -> Result<(), CallError> {
        self.record(TdxCall::FinalizeVm)
    }
}

impl TdxVmOps for TdxFake {
    fn probe(&mut self) -> Result<(), Unavailable> {
        self.record(TdxCall::Probe).map_err(|e| Unavailable {
            what: super::probe::WHAT,
            missing: vec![e.to_string()],
        })
    }

    fn enable_split_irqchip(&mut self, ioapic_pins: u64) -> Result<(), CallError> {
        self.record(TdxCall::SplitIrqchip(ioapic_pins))
    }
}
