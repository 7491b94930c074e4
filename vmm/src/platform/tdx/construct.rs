//! covm's TDX VM construction: the launch sequence ([`super::launch`])
//! with the VM's own steps between its halves, over [`TdxVmOps`] so that
//! it runs against real KVM (`vm/tdx.rs`, on `KvmLaunch<TdxState>`) or a
//! recording fake.
//!
//! In order ([`TdxVmLaunch::run`]):
//!
//! 1. the probe ([`super::probe_tdx`]): nothing is created on a host that
//!    lacks a piece;
//! 2. [`super::launch::prepare`]: `KVM_CREATE_VM` (`KVM_X86_TDX_VM`),
//!    `KVM_TDX_CAPABILITIES`, the vCPU limit, `KVM_TDX_INIT_VM` (TD
//!    attributes, XFAM, the migration policy's SHA-256 in MRCONFIGID, the
//!    CPUID the host lets a TD configure), guest_memfd-backed RAM slots
//!    marked private, the `KVM_HC_MAP_GPA_RANGE` exit (TDG.VP.VMCALL
//!    MapGPA reaches covm in that form);
//! 3. the split irqchip (`KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)`): KVM
//!    creates a TD's vCPUs only on a split irqchip (`tdx_vcpu_create`:
//!    the TDX module mandates APICv, an in-kernel local APIC) and refuses
//!    `KVM_CREATE_IRQCHIP` for a TD (its EOIs are protected, so the
//!    in-kernel IOAPIC cannot work); without the in-kernel PIC there is no
//!    in-kernel PIT either (`KVM_CREATE_PIT2` needs it), as QEMU turns
//!    both off for a TD;
//! 4. the vCPUs, with nothing set on them: a TD's registers, MSRs, FPU and
//!    local APIC are the TDX module's (KVM refuses or ignores setting
//!    them), its CPUID is `KVM_TDX_INIT_VM`'s;
//! 5. [`super::launch::finish`]: `KVM_TDX_INIT_VCPU` for each vCPU (RCX the
//!    TD HOB at [`TD_HOB_GPA`]), `KVM_TDX_INIT_MEM_REGION` for exactly the
//!    pages `covm measure --platform tdx=on --pages` lists (NORMAL pages
//!    measured, the others and the TD HOB not), `KVM_TDX_FINALIZE_VM`.
//!
//! The expected MRTD ([`TdxVmLaunch::expected`]) is computed from the same
//! image the launch hands over, by the function `covm measure` uses
//! ([`image_mrtd`]), so launch and `covm measure` agree by construction;
//! the TDX module's own MRTD, in the guest's TD report, is the check.

use super::launch::{finish, prepare, PLATFORM};
use super::ops::TdxLaunchOps;
use super::plan::{TdxOptions, TdxPlan, TdxPlanError};
use crate::platform::hardware::create::create_vcpus_step;
use crate::platform::hardware::error::{at, CallError, LaunchError};
use crate::platform::hardware::host::Unavailable;
use crate::platform::hardware::{Td, TdxConfig};
use crate::platform::image::Loaded;
use crate::platform::measure::image_mrtd;
use crate::platform::PlatformError;
use crate::vm::memory::GuestMemory;
use covm_measure::mrtd::{TdMeasurement, TD_HOB_GPA, TD_HOB_PAGES};
use kvm_bindings::kvm_cpuid_entry2;

/// `KVM_CAP_SPLIT_IRQCHIP`'s argument: the IOAPIC pins whose routes KVM
/// reserves for a userspace IOAPIC (24, an IOAPIC's pins, as QEMU gives).
pub const SPLIT_IRQCHIP_IOAPIC_PINS: u64 = 24;

/// The calls covm's TDX VM construction makes beyond the launch's.
pub trait TdxVmOps: TdxLaunchOps {
    /// Checks the host can launch a TD (nothing is created).
    fn probe(&mut self) -> Result<(), Unavailable>;

    /// `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)` with `ioapic_pins` reserved
    /// routes: the in-kernel local APICs a TD needs, without the in-kernel
    /// IOAPIC, PIC and PIT KVM refuses a TD. Before any vCPU.
    fn enable_split_irqchip(&mut self, ioapic_pins: u64) -> Result<(), CallError>;
}

/// Why a TDX VM was not built.
#[derive(Debug, thiserror::Error)]
pub enum TdxVmError {
    /// The host lacks a piece.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A launch call failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The image cannot be launched as a TD.
    #[error("cannot launch the image on Intel TDX: {0}")]
    Plan(#[from] TdxPlanError),
    /// Measuring it.
    #[error("cannot compute the TD's MRTD: {0}")]
    Mrtd(#[source] PlatformError),
    /// Taking the launched VM's KVM objects.
    #[error("Intel TDX launch: {0}")]
    Call(#[from] CallError),
}

/// Everything a TDX VM's launch does, computed before any KVM call.
#[derive(Debug)]
pub struct TdxVmLaunch {
    config: TdxConfig,
    /// The MRTD covm expects (what `covm measure --platform tdx=on`
    /// prints) and the pages it covers.
    pub expected: TdMeasurement,
    /// The launch calls' arguments.
    pub plan: TdxPlan,
}

impl TdxVmLaunch {
    /// The launch of `loaded` (in `memory`) under `config`; `cpuid` is the
    /// CPUID covm wants the TD to see (KVM's supported CPUID), of which
    /// `KVM_TDX_INIT_VM` keeps what the host lets a TD configure.
    pub fn new(
        memory: &GuestMemory,
        loaded: &Loaded,
        config: &TdxConfig,
        cpuid: Vec<kvm_cpuid_entry2>,
    ) -> Result<Self, TdxVmError> {
        let expected = image_mrtd(memory, &loaded.image).map_err(TdxVmError::Mrtd)?;
        let mut options = TdxOptions::new(config.policy.host_data(), cpuid, TD_HOB_GPA);
        options.hob_pages = TD_HOB_PAGES;
        let plan = TdxPlan::new(memory, &loaded.image, options)?;
        Ok(TdxVmLaunch {
            config: config.clone(),
            expected,
            plan,
        })
    }

    /// Builds the TD on `ops`, in the order the module describes; the first
    /// failing step stops it.
    pub fn run(&self, ops: &mut impl TdxVmOps) -> Result<(), TdxVmError> {
        ops.probe()?;
        prepare(ops, &self.plan)?;
        at(
            PLATFORM,
            "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)",
            || format!("{SPLIT_IRQCHIP_IOAPIC_PINS} IOAPIC routes reserved"),
            ops.enable_split_irqchip(SPLIT_IRQCHIP_IOAPIC_PINS),
        )?;
        create_vcpus_step(ops, self.plan.vcpus, PLATFORM)?;
        finish(ops, &self.plan)?;
        Ok(())
    }

    /// The launched TD's platform.
    pub fn platform(&self) -> Td {
        Td::new(&self.config, self.expected.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::bindings::{TdxInitVm, ATTR_SEPT_VE_DISABLE, MEASURE_MEMORY_REGION, XFAM_FIXED};
    use super::super::fake::{fake_capabilities, wanted_cpuid, TdxCall, TdxFake, PREPARE_CALLS};
    use super::*;
    use crate::config::VmConfig;
    use crate::platform::measure::measure_tdx;
    use crate::platform::{image, MigrationPolicy, Platform, PlatformConfig};
    use kvm_bindings::{KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEM_GUEST_MEMFD};

    /// The configuration `covm --platform tdx=on --cpus boot=2 --memory
    /// size=64M --cmdline workload=hello` would launch (the probe aside),
    /// as `covm measure --platform tdx=on` reads the same options.
    pub(crate) fn measured_config() -> VmConfig {
        crate::platform::hardware::test_config("tdx=on")
    }

    fn tdx(config: &VmConfig) -> &TdxConfig {
        let PlatformConfig::Tdx(tdx) = &config.platform else {
            panic!("{:?}", config.platform)
        };
        tdx
    }

    fn launch(config: &VmConfig) -> (GuestMemory, Loaded, TdxVmLaunch) {
        let memory = crate::vm::memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&memory, config).unwrap();
        let launch = TdxVmLaunch::new(&memory, &loaded, tdx(config), wanted_cpuid()).unwrap();
        (memory, loaded, launch)
    }

    /// The whole order of a TDX VM's construction and every argument, and
    /// that its added pages and expected MRTD are `covm measure`'s.
    #[test]
    fn construction_order_and_arguments() {
        let config = measured_config();
        assert_eq!(tdx(&config).policy, MigrationPolicy::empty());
        let (_memory, _loaded, launch) = launch(&config);
        let mut fake = TdxFake::default();
        launch.run(&mut fake).unwrap();

        let names: Vec<&str> = fake.calls.iter().map(TdxCall::name).collect();
        let vcpus = config.kvm_vcpus() as usize;
        assert_eq!(vcpus, 3, "2 vCPUs and the agent's");
        let mut expected = vec!["probe"];
        expected.extend(PREPARE_CALLS);
        expected.extend(["KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", "KVM_CREATE_VCPU"]);
        expected.extend(std::iter::repeat_n("KVM_TDX_INIT_VCPU", vcpus));
        expected.extend(std::iter::repeat_n(
            "KVM_TDX_INIT_MEM_REGION",
            launch.plan.regions.len(),
        ));
        expected.push("KVM_TDX_FINALIZE_VM");
        assert_eq!(names, expected);

        assert!(matches!(fake.calls[1], TdxCall::CreateVm(5)), "KVM_X86_TDX_VM");
        // INIT_VM: the TD's attributes, XFAM, MRCONFIGID = the policy's
        // hash, zero padded, and the CPUID the host lets a TD configure.
        let TdxCall::InitVm(init) = &fake.calls[4] else {
            panic!()
        };
        assert_eq!(init, &launch.plan.init_vm(&fake_capabilities()).unwrap());
        let init = TdxInitVm::parse(&init.to_bytes()).unwrap();
        assert_eq!((init.attributes, init.xfam), (ATTR_SEPT_VE_DISABLE, XFAM_FIXED));
        assert_eq!(&init.mrconfigid[..32], &MigrationPolicy::empty().host_data());
        assert_eq!(&init.mrconfigid[32..], &[0; 16]);
        assert_eq!((init.mrowner, init.mrownerconfig), ([0; 48], [0; 48]));
        assert_eq!(init.cpuid.len(), 1);
        assert_eq!((init.cpuid[0].eax, init.cpuid[0].ecx), (0x0fff_3fff, 0x7ffe_fbff));
        // Private memory: one guest_memfd and slot over all RAM, private.
        let TdxCall::CreateGuestMemfd(gmem) = &fake.calls[5] else {
            panic!()
        };
        assert_eq!((gmem.size, gmem.flags), (config.memory.size, 0));
        let TdxCall::SetUserMemoryRegion2(slot) = &fake.calls[6] else {
            panic!()
        };
        assert_eq!(
            (
                slot.slot,
                slot.flags,
                slot.guest_memfd,
                slot.guest_phys_addr,
                slot.memory_size
            ),
            (0, KVM_MEM_GUEST_MEMFD, TdxFake::FIRST_FD, 0, config.memory.size)
        );
        let TdxCall::SetMemoryAttributes(attrs) = &fake.calls[7] else {
            panic!()
        };
        assert_eq!(
            (attrs.address, attrs.size, attrs.attributes),
            (0, config.memory.size, u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE))
        );
        assert!(matches!(fake.calls[8], TdxCall::EnableExitHypercall(m) if m == 1 << 12));
        assert!(matches!(fake.calls[9], TdxCall::SplitIrqchip(24)));
        assert!(matches!(fake.calls[10], TdxCall::CreateVcpus(3)));
        // Every vCPU's INIT_VCPU carries the TD HOB's address.
        let inits: Vec<(usize, u64)> = fake
            .calls
            .iter()
            .filter_map(|c| match c {
                TdxCall::InitVcpu { vcpu, rcx } => Some((*vcpu, *rcx)),
                _ => None,
            })
            .collect();
        assert_eq!(inits, vec![(0, 0x4000), (1, 0x4000), (2, 0x4000)]);

        // The pages added are exactly covm measure's, measured as it says;
        // the expected MRTD is covm measure's.
        let measured = measure_tdx(&config).unwrap();
        let mut added = Vec::new();
        for call in &fake.calls {
            if let TdxCall::InitMemRegion { region, flags, .. } = call {
                assert!(*flags == 0 || *flags == MEASURE_MEMORY_REGION);
                for i in 0..region.nr_pages {
                    added.push((region.gpa + i * 4096, *flags == MEASURE_MEMORY_REGION));
                }
            }
        }
        let listed: Vec<(u64, bool)> = measured.pages.iter().map(|p| (p.gpa, p.extended)).collect();
        assert_eq!(added, listed);
        assert_eq!(added.last(), Some(&(TD_HOB_GPA, false)), "the TD HOB last, unmeasured");
        assert_eq!(launch.expected, measured);
        let platform = launch.platform();
        assert_eq!(platform.measurement(), Some(measured.mrtd));
        assert_eq!(platform.kind(), "tdx");
        assert_eq!(platform.host_data(), Some(MigrationPolicy::empty().host_data()));
        assert!(platform
            .evidence(&[0; 64])
            .unwrap_err()
            .to_string()
            .contains("needs the guest's own request to the TDX module"));
        assert!(matches!(fake.calls.last(), Some(TdxCall::FinalizeVm)), "FINALIZE last");
    }

    /// A failing step stops the construction there, named, with nothing
    /// after it called.
    #[test]
    fn a_failing_step_stops_it() {
        let config = measured_config();
        let (_memory, _loaded, launch) = launch(&config);
        let mut fake = TdxFake::failing("probe", 0);
        let err = launch.run(&mut fake).unwrap_err();
        assert!(matches!(err, TdxVmError::Unavailable(_)), "{err}");
        assert_eq!(fake.calls.len(), 1, "nothing created");

        let mut reference = TdxFake::default();
        launch.run(&mut reference).unwrap();
        for (index, call) in reference.calls.iter().enumerate().skip(1) {
            let step = call.name();
            let nth = reference.calls[..index].iter().filter(|c| c.name() == step).count();
            let mut fake = TdxFake::failing(step, nth);
            let err = launch.run(&mut fake).unwrap_err();
            let TdxVmError::Launch(e) = &err else { panic!("{err}") };
            assert_eq!(e.step, step);
            assert!(
                err.to_string()
                    .starts_with(&format!("Intel TDX launch failed at {step}")),
                "{err}"
            );
            assert_eq!(fake.calls.len(), index + 1, "nothing after the failing {step}");
        }
        let err = launch.run(&mut TdxFake::failing("KVM_TDX_INIT_VCPU", 2)).unwrap_err();
        assert!(err.to_string().contains("(vCPU 2, RCX 0x4000 (TD HOB))"), "{err}");
        let err = launch
            .run(&mut TdxFake::failing("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", 0))
            .unwrap_err();
        assert!(err.to_string().contains("(24 IOAPIC routes reserved)"), "{err}");
    }
}
