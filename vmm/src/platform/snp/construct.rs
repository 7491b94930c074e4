//! covm's SEV-SNP VM construction: the launch sequence ([`super::launch`])
//! with the VM's own steps between its halves, over [`SnpVmOps`] so that
//! it runs against real KVM (`vm.rs`, on `KvmLaunch<SnpState>`) or a
//! recording fake.
//!
//! In order ([`SnpVmLaunch::run`]):
//!
//! 1. the probe ([`super::probe_snp`]): nothing is created on a host that
//!    lacks a piece;
//! 2. [`super::launch::prepare`]: `KVM_CREATE_VM` (`KVM_X86_SNP_VM`),
//!    `KVM_SEV_INIT2`, guest_memfd-backed RAM slots marked private, the
//!    `KVM_HC_MAP_GPA_RANGE` exit, `KVM_SEV_SNP_LAUNCH_START` with the
//!    guest policy;
//! 3. the in-kernel irqchip and PIT (after the SEV context, as QEMU orders
//!    them);
//! 4. the vCPUs (each set up as it is created: CPUID, MSRs, FPU, LAPIC);
//! 5. each vCPU's boot state: vCPU 0 covm's boot registers, every vCPU's
//!    RDX the value its measured VMSA holds (the vCPU type's signature,
//!    `covm_measure::snp::SnpLaunch::apply`);
//! 6. [`super::launch::finish`]: `KVM_SEV_SNP_LAUNCH_UPDATE` for exactly
//!    the pages `covm measure --pages` lists (before its VMSA entries),
//!    then `KVM_SEV_SNP_LAUNCH_FINISH` with HOST_DATA, the migration
//!    policy's SHA-256; KVM turns each vCPU's state into its VMSA.
//!
//! The expected measurement ([`SnpVmLaunch::expected`]) is computed from
//! the same image the launch hands over, by the function `covm measure`
//! uses, so launch and `covm measure` agree by construction; the secure
//! processor's own value, in the guest's report, is the check.

use super::launch::{finish, prepare, PLATFORM};
use super::ops::SnpLaunchOps;
use super::plan::{SnpOptions, SnpPlan};
use crate::arch::regs::BootRegs;
use crate::platform::hardware::create::create_vcpus_step;
use crate::platform::hardware::error::{at, CallError, LaunchError};
use crate::platform::hardware::host::Unavailable;
use crate::platform::hardware::plan::PlanError;
use crate::platform::hardware::{snp_expected, SevSnp, SevSnpConfig};
use crate::platform::image::Loaded;
use crate::platform::PlatformError;
use crate::vm::memory::GuestMemory;
use covm_measure::snp::Measurement;

/// A vCPU's boot state in an SEV-SNP launch.
#[derive(Debug, Clone, Copy)]
pub struct VcpuBoot {
    /// covm's boot registers, for vCPU 0; the others stay in their INIT
    /// state, waiting for the firmware's INIT/SIPI.
    pub bsp: Option<BootRegs>,
    /// RDX: the value the vCPU's measured VMSA holds.
    pub rdx: u64,
}

/// The calls covm's SEV-SNP VM construction makes beyond the launch's.
pub trait SnpVmOps: SnpLaunchOps {
    /// Checks the host can launch an SEV-SNP VM (nothing is created),
    /// and gets what the launch calls need (the SEV device).
    fn probe(&mut self) -> Result<(), Unavailable>;

    /// The in-kernel irqchip and PIT (and KVM's real-mode helpers).
    fn create_chips(&mut self) -> Result<(), CallError>;

    /// `KVM_SET_SREGS`/`KVM_SET_REGS` of vCPU `vcpu`: its boot state.
    fn set_boot_state(&mut self, vcpu: usize, boot: &VcpuBoot) -> Result<(), CallError>;
}

/// Why an SEV-SNP VM was not built.
#[derive(Debug, thiserror::Error)]
pub enum SnpVmError {
    /// The host lacks a piece.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A launch call failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The image cannot be launched.
    #[error("cannot launch the image on AMD SEV-SNP: {0}")]
    Plan(#[from] PlanError),
    /// Measuring it.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Taking the launched VM's KVM objects.
    #[error("AMD SEV-SNP launch: {0}")]
    Call(#[from] CallError),
}

/// Everything an SEV-SNP VM's launch does, computed before any KVM call.
#[derive(Debug)]
pub struct SnpVmLaunch {
    config: SevSnpConfig,
    /// The measurement covm expects (what `covm measure` prints).
    pub expected: Measurement,
    /// The launch calls' arguments.
    pub plan: SnpPlan,
    /// Each vCPU's boot state, vCPU 0 first.
    pub boots: Vec<VcpuBoot>,
}

impl SnpVmLaunch {
    /// The launch of `loaded` (in `memory`) under `config`.
    pub fn new(memory: &GuestMemory, loaded: &Loaded, config: &SevSnpConfig) -> Result<Self, SnpVmError> {
        let expected = snp_expected(memory, &loaded.image, config)?;
        let mut options = SnpOptions::new(config.guest_policy, config.policy.host_data());
        options.id = config.id.clone();
        let plan = SnpPlan::new(memory, &expected.image, options)?;
        let boots = expected
            .image
            .vcpus
            .iter()
            .enumerate()
            .map(|(index, state)| VcpuBoot {
                bsp: (index == 0).then_some(loaded.bsp),
                rdx: state.rdx,
            })
            .collect();
        Ok(SnpVmLaunch {
            config: config.clone(),
            expected: expected.measurement,
            plan,
            boots,
        })
    }

    /// Builds the VM on `ops`, in the order the module describes; the first
    /// failing step stops it.
    pub fn run(&self, ops: &mut impl SnpVmOps) -> Result<(), SnpVmError> {
        ops.probe()?;
        prepare(ops, &self.plan)?;
        at(
            PLATFORM,
            "KVM_CREATE_IRQCHIP",
            || "in-kernel irqchip and PIT".into(),
            ops.create_chips(),
        )?;
        create_vcpus_step(ops, self.plan.vcpus, PLATFORM)?;
        for (index, boot) in self.boots.iter().enumerate() {
            at(
                PLATFORM,
                "KVM_SET_REGS",
                || {
                    let what = if boot.bsp.is_some() {
                        "boot registers"
                    } else {
                        "INIT state"
                    };
                    format!("vCPU {index}: {what}, RDX {:#x}", boot.rdx)
                },
                ops.set_boot_state(index, boot),
            )?;
        }
        finish(ops, &self.plan)?;
        Ok(())
    }

    /// The launched VM's platform.
    pub fn platform(&self) -> SevSnp {
        SevSnp::new(&self.config, self.expected.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{SnpCall, SnpFake, PREPARE_CALLS};
    use super::super::plan::IdBlock;
    use super::*;
    use crate::config::VmConfig;
    use crate::platform::measure::measure_sev_snp;
    use crate::platform::{image, MigrationPolicy, PlatformConfig};
    use covm_measure::snp::SnpLaunch;
    use covm_measure::PageType;
    use kvm_bindings::KVM_MEM_GUEST_MEMFD;

    const SIGNATURE: u64 = 0xa00f11; // EPYC-Milan

    /// The configuration `covm --platform sev_snp=on,policy=0x70000,
    /// vcpu_type=EPYC-Milan --cpus boot=2 --memory size=64M --cmdline
    /// workload=hello` would launch (the probe aside), as `covm measure`
    /// reads the same options.
    fn measured_config() -> VmConfig {
        crate::platform::hardware::test_config(crate::platform::hardware::SNP_TEST_PLATFORM)
    }

    fn snp(config: &VmConfig) -> &SevSnpConfig {
        let PlatformConfig::SevSnp(snp) = &config.platform else {
            panic!("{:?}", config.platform)
        };
        snp
    }

    /// The whole order of an SEV-SNP VM's construction, and that its
    /// launch updates and expected measurement are `covm measure`'s.
    #[test]
    fn construction_order_and_arguments() {
        let config = measured_config();
        let snp = snp(&config);
        assert_eq!(
            (snp.guest_policy, snp.vcpu_type.as_deref()),
            (0x70000, Some("EPYC-Milan"))
        );
        assert_eq!(snp.policy, MigrationPolicy::empty());
        let memory = crate::vm::memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&memory, &config).unwrap();
        let launch = SnpVmLaunch::new(&memory, &loaded, snp).unwrap();
        let mut fake = SnpFake::default();
        launch.run(&mut fake).unwrap();

        let names: Vec<&str> = fake.calls.iter().map(SnpCall::name).collect();
        let vcpus = config.kvm_vcpus() as usize;
        assert_eq!(vcpus, 3, "2 vCPUs and the agent's");
        let mut expected = vec!["probe"];
        expected.extend(PREPARE_CALLS);
        expected.extend(["KVM_CREATE_IRQCHIP", "KVM_CREATE_VCPU"]);
        expected.extend(std::iter::repeat_n("KVM_SET_REGS", vcpus));
        expected.extend(std::iter::repeat_n(
            "KVM_SEV_SNP_LAUNCH_UPDATE",
            launch.plan.updates.len(),
        ));
        expected.push("KVM_SEV_SNP_LAUNCH_FINISH");
        assert_eq!(names, expected);

        assert!(matches!(fake.calls[1], SnpCall::CreateVm(4)), "KVM_X86_SNP_VM");
        let SnpCall::SetUserMemoryRegion2(slot) = fake.calls[4] else {
            panic!()
        };
        assert_eq!(slot.flags, KVM_MEM_GUEST_MEMFD);
        assert_eq!(slot.guest_memfd, SnpFake::FIRST_FD);
        assert_eq!(slot.memory_size, config.memory.size);
        let SnpCall::LaunchStart(start) = fake.calls[7] else {
            panic!()
        };
        assert_eq!(start.policy, 0x70000);
        assert!(matches!(fake.calls[9], SnpCall::CreateVcpus(3)));

        // vCPU 0 gets covm's boot registers, every vCPU RDX = the signature.
        let regs: Vec<(usize, u64, Option<u64>)> = fake
            .calls
            .iter()
            .filter_map(|c| match c {
                SnpCall::SetBootState { vcpu, rdx, rip } => Some((*vcpu, *rdx, *rip)),
                _ => None,
            })
            .collect();
        assert_eq!(
            regs,
            vec![
                (0, SIGNATURE, Some(loaded.bsp.rip)),
                (1, SIGNATURE, None),
                (2, SIGNATURE, None)
            ]
        );

        // The launch updates are exactly `covm measure --pages`' entries
        // before its VMSAs, and the expected digest is covm measure's.
        let measured = measure_sev_snp(
            &config,
            &SnpLaunch {
                vcpu_signature: SIGNATURE as u32,
                kernel_hashes: None,
                cpuid_page: None,
            },
        )
        .unwrap();
        let mut launched = Vec::new();
        for call in &fake.calls {
            if let SnpCall::LaunchUpdate(u) = call {
                for i in 0..u.len / 4096 {
                    launched.push(((u.gfn_start + i) * 4096, u.type_));
                }
            }
        }
        let listed: Vec<(u64, u8)> = measured
            .pages
            .iter()
            .filter(|p| p.page_type != PageType::Vmsa)
            .map(|p| (p.gpa, p.page_type as u8))
            .collect();
        assert_eq!(launched, listed);
        // The firmware's metadata pages, after the loaded ones, in its order.
        let tail: Vec<(u64, u8)> = launched.iter().rev().take(4).rev().copied().collect();
        assert_eq!(
            tail,
            [
                (0x8000, PageType::Zero as u8),
                (0x2000, PageType::Secrets as u8),
                (0x3000, PageType::Cpuid as u8),
                (0x5000, PageType::Zero as u8)
            ]
        );
        assert_eq!(measured.pages.len() - listed.len(), vcpus, "one VMSA per vCPU");
        assert_eq!(launch.expected, measured);
        assert_eq!(launch.platform().launch_measurement().digest, measured.digest);

        let SnpCall::LaunchFinish(finish) = fake.calls.last().unwrap() else {
            panic!()
        };
        assert_eq!(
            finish.host_data,
            MigrationPolicy::empty().host_data(),
            "the policy's hash"
        );
    }

    /// The guest owner's ID block (`--platform sev_snp=on,id_block=,
    /// id_auth=,author_key=on`) reaches LAUNCH_FINISH: enabled, pointing at
    /// the plan's copies of both structures, author key flagged.
    #[test]
    fn the_id_block_reaches_launch_finish() {
        let mut config = measured_config();
        if let PlatformConfig::SevSnp(snp) = &mut config.platform {
            snp.id = Some(IdBlock {
                block: [0x1d; 96],
                auth: Box::new([0xa7; 4096]),
                author_key: true,
            });
        }
        let memory = crate::vm::memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&memory, &config).unwrap();
        let launch = SnpVmLaunch::new(&memory, &loaded, snp(&config)).unwrap();
        let mut fake = SnpFake::default();
        launch.run(&mut fake).unwrap();
        let SnpCall::LaunchFinish(finish) = fake.calls.last().unwrap() else {
            panic!()
        };
        let id = launch.plan.id.as_ref().expect("the plan holds the ID block");
        assert_eq!((id.block, id.auth[0]), ([0x1d; 96], 0xa7));
        assert_eq!((finish.id_block_en, finish.auth_key_en), (1, 1));
        assert_eq!(finish.id_block_uaddr, id.block.as_ptr() as u64);
        assert_eq!(finish.id_auth_uaddr, id.auth.as_ptr() as u64);
        assert_eq!(finish.host_data, MigrationPolicy::empty().host_data());
    }

    /// Without a vCPU type every vCPU's RDX is 0, as measured (not KVM's
    /// reset value 0x600).
    #[test]
    fn without_a_vcpu_type_rdx_is_zero() {
        let mut config = measured_config();
        if let PlatformConfig::SevSnp(snp) = &mut config.platform {
            snp.vcpu_type = None;
        }
        let memory = crate::vm::memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&memory, &config).unwrap();
        let launch = SnpVmLaunch::new(&memory, &loaded, snp(&config)).unwrap();
        assert!(launch.boots.iter().all(|b| b.rdx == 0));
        assert_eq!(launch.boots.iter().filter(|b| b.bsp.is_some()).count(), 1);
    }

    /// A failing step stops the construction there, named.
    #[test]
    fn a_failing_step_stops_it() {
        let config = measured_config();
        let memory = crate::vm::memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&memory, &config).unwrap();
        let launch = SnpVmLaunch::new(&memory, &loaded, snp(&config)).unwrap();
        let mut fake = SnpFake::failing("probe", 0);
        let err = launch.run(&mut fake).unwrap_err();
        assert!(matches!(err, SnpVmError::Unavailable(_)), "{err}");
        assert_eq!(fake.calls.len(), 1, "nothing created");
        for (step, nth) in [
            ("KVM_CREATE_IRQCHIP", 0),
            ("KVM_SET_REGS", 1),
            ("KVM_SEV_SNP_LAUNCH_FINISH", 0),
        ] {
            let mut fake = SnpFake::failing(step, nth);
            let err = launch.run(&mut fake).unwrap_err();
            let SnpVmError::Launch(e) = &err else { panic!("{err}") };
            assert_eq!(e.step, step);
            assert!(
                err.to_string()
                    .starts_with(&format!("AMD SEV-SNP launch failed at {step}")),
                "{err}"
            );
            assert_eq!(fake.calls.last().unwrap().name(), step, "nothing after it");
        }
        let err = launch.run(&mut SnpFake::failing("KVM_SET_REGS", 1)).unwrap_err();
        assert!(err.to_string().contains("(vCPU 1: INIT state, RDX 0xa00f11)"), "{err}");
    }
}
