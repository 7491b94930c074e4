//! The TDX launch sequence over [`TdxLaunchOps`] (the flow of
//! `Documentation/virt/kvm/x86/intel-tdx.rst`): the first failing call
//! stops it, and the error names that call.

use super::bindings::TDX_VM_TYPE;
use super::ops::TdxLaunchOps;
use super::plan::TdxPlan;
use crate::platform::hardware::error::{at, CallError, LaunchError};
use crate::platform::hardware::private_memory::register_private;

/// The platform's name in errors.
pub const PLATFORM: &str = "Intel TDX";

/// The whole launch of `plan`: the VM and its TD parameters, private
/// memory, the vCPUs (each `TDH.VP.INIT` with the TD HOB's address in
/// RCX), the initial memory, then the finalization. covm's VM
/// construction (`super::construct`) runs [`prepare`] and [`finish`] with its
/// own steps (the split irqchip) and the vCPUs between them.
#[cfg(test)]
pub fn launch_tdx(ops: &mut impl TdxLaunchOps, plan: &TdxPlan) -> Result<(), LaunchError> {
    prepare(ops, plan)?;
    crate::platform::hardware::create::create_vcpus_step(ops, plan.vcpus, PLATFORM)?;
    finish(ops, plan)
}

/// The launch up to the vCPUs: `KVM_CREATE_VM` (`KVM_X86_TDX_VM`),
/// `KVM_TDX_CAPABILITIES`, the vCPU limit, `KVM_TDX_INIT_VM` (attributes,
/// XFAM, MRCONFIGID, CPUID), and the private memory (guest_memfd slots,
/// PRIVATE attributes, `KVM_HC_MAP_GPA_RANGE` exits).
pub fn prepare(ops: &mut impl TdxLaunchOps, plan: &TdxPlan) -> Result<(), LaunchError> {
    at(
        PLATFORM,
        "KVM_CREATE_VM",
        || "type KVM_X86_TDX_VM".into(),
        ops.create_vm(TDX_VM_TYPE),
    )?;
    let caps = at(PLATFORM, "KVM_TDX_CAPABILITIES", String::new, ops.tdx_capabilities())?;
    let max = at(
        PLATFORM,
        "KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)",
        String::new,
        ops.max_vcpus(),
    )?;
    if plan.vcpus > max {
        return at(
            PLATFORM,
            "KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)",
            String::new,
            Err(CallError::Refused(format!(
                "{} vCPUs, a TD here has at most {max}",
                plan.vcpus
            ))),
        );
    }
    let init = at(
        PLATFORM,
        "KVM_TDX_INIT_VM",
        String::new,
        plan.init_vm(&caps).map_err(CallError::Refused),
    )?;
    at(
        PLATFORM,
        "KVM_TDX_INIT_VM",
        || {
            format!(
                "attributes {:#x}, XFAM {:#x}, {} CPUID leaves",
                init.attributes,
                init.xfam,
                init.cpuid.len()
            )
        },
        ops.tdx_init_vm(&init),
    )?;
    register_private(ops, &plan.ram, PLATFORM)
}

/// The launch once the vCPUs exist: `KVM_TDX_INIT_VCPU` for each (RCX the
/// TD HOB's address), `KVM_TDX_INIT_MEM_REGION` for every page run of the
/// plan (the TD HOB last), `KVM_TDX_FINALIZE_VM`.
pub fn finish(ops: &mut impl TdxLaunchOps, plan: &TdxPlan) -> Result<(), LaunchError> {
    for vcpu in 0..plan.vcpus {
        at(
            PLATFORM,
            "KVM_TDX_INIT_VCPU",
            || format!("vCPU {vcpu}, RCX {:#x} (TD HOB)", plan.options.hob_gpa),
            ops.tdx_init_vcpu(vcpu, plan.options.hob_gpa),
        )?;
    }
    for run in &plan.regions {
        at(
            PLATFORM,
            "KVM_TDX_INIT_MEM_REGION",
            || {
                format!(
                    "{} page(s) at GPA {:#x}, {}: {}",
                    run.pages,
                    run.gpa,
                    if run.measure { "measured" } else { "not measured" },
                    run.what
                )
            },
            ops.tdx_init_mem_region(0, &plan.region(run), run.flags()),
        )?;
    }
    at(PLATFORM, "KVM_TDX_FINALIZE_VM", String::new, ops.tdx_finalize_vm())
}

#[cfg(test)]
mod tests {
    use super::super::bindings::{TdxInitVm, MEASURE_MEMORY_REGION};
    use super::super::fake::{
        fake_capabilities, wanted_cpuid, TdxCall, TdxFake as Fake, FAKE_MAX_VCPUS, PREPARE_CALLS,
    };
    use super::super::plan::{Source, TdxOptions};
    use super::*;
    use crate::platform::hardware::fake::{each_call_failing, loaded_firmware, MEMORY};
    use crate::platform::image;
    use crate::platform::MigrationPolicy;
    use covm_measure::vmsa::VcpuState;
    use covm_measure::{Launch, PageType};
    use kvm_bindings::{KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEM_GUEST_MEMFD};

    const HOB: u64 = 0x80_0000;

    fn plan() -> (crate::vm::memory::GuestMemory, image::Loaded, TdxPlan) {
        let (memory, loaded, host_data) = loaded_firmware();
        let options = TdxOptions::new(host_data, wanted_cpuid(), HOB);
        let plan = TdxPlan::new(&memory, &loaded.image, options).unwrap();
        (memory, loaded, plan)
    }

    #[test]
    fn sequence_and_arguments() {
        let (_memory, loaded, plan) = plan();
        let mut fake = Fake::default();
        launch_tdx(&mut fake, &plan).unwrap();
        let names: Vec<&str> = fake.calls.iter().map(TdxCall::name).collect();
        let vcpus = loaded.image.vcpus.len();
        assert_eq!(vcpus, 3, "2 vCPUs and the agent's");
        let mut expected = PREPARE_CALLS.to_vec();
        expected.push("KVM_CREATE_VCPU");
        expected.extend(std::iter::repeat_n("KVM_TDX_INIT_VCPU", vcpus));
        expected.extend(std::iter::repeat_n("KVM_TDX_INIT_MEM_REGION", plan.regions.len()));
        expected.push("KVM_TDX_FINALIZE_VM");
        assert_eq!(names, expected);
        assert_eq!(names.last(), Some(&"KVM_TDX_FINALIZE_VM"), "FINALIZE last");

        let TdxCall::CreateVm(vm_type) = &fake.calls[0] else {
            panic!()
        };
        assert_eq!(*vm_type, 5, "KVM_X86_TDX_VM");
        let TdxCall::InitVm(init) = &fake.calls[3] else {
            panic!()
        };
        let expected_init = plan.init_vm(&fake_capabilities()).unwrap();
        assert_eq!(init, &expected_init);
        let init = TdxInitVm::parse(&init.to_bytes()).unwrap();
        assert_eq!(
            &init.mrconfigid[..32],
            &MigrationPolicy::empty().host_data(),
            "HOST_DATA in MRCONFIGID"
        );
        assert_eq!(init.cpuid.len(), 1);
        assert_eq!(
            (init.cpuid[0].eax, init.cpuid[0].ecx),
            (0x0fff_3fff, 0x7ffe_fbff),
            "masked"
        );
        let TdxCall::CreateGuestMemfd(gmem) = &fake.calls[4] else {
            panic!()
        };
        assert_eq!((gmem.size, gmem.flags), (MEMORY, 0));
        let TdxCall::SetUserMemoryRegion2(slot) = &fake.calls[5] else {
            panic!()
        };
        assert_eq!(
            (slot.flags, slot.guest_memfd, slot.memory_size),
            (KVM_MEM_GUEST_MEMFD, Fake::FIRST_FD, MEMORY)
        );
        let TdxCall::SetMemoryAttributes(attrs) = &fake.calls[6] else {
            panic!()
        };
        assert_eq!(
            (attrs.address, attrs.size, attrs.attributes),
            (0, MEMORY, u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE))
        );
        let TdxCall::CreateVcpus(count) = &fake.calls[8] else {
            panic!()
        };
        assert_eq!(*count, vcpus);
        for (i, call) in fake.calls[9..9 + vcpus].iter().enumerate() {
            let TdxCall::InitVcpu { vcpu, rcx } = call else {
                panic!()
            };
            assert_eq!((*vcpu, *rcx), (i, HOB), "RCX = the TD HOB");
        }

        // Every image page is added once, in order; NORMAL ones measured,
        // the policy page (UNMEASURED) not; the TD HOB last, not measured.
        let mut added = Vec::new();
        for call in &fake.calls[9 + vcpus..fake.calls.len() - 1] {
            let TdxCall::InitMemRegion { vcpu, region, flags } = call else {
                panic!()
            };
            assert_eq!(*vcpu, 0);
            assert_eq!(region.source_addr % 4096, 0);
            for i in 0..region.nr_pages {
                added.push((region.gpa + i * 4096, *flags));
            }
        }
        let hob = added.pop().unwrap();
        assert_eq!(hob, (HOB, 0));
        let listed: Vec<(u64, u32)> = loaded
            .image
            .pages
            .iter()
            .map(|p| {
                let flags = if p.page_type == PageType::Normal {
                    MEASURE_MEMORY_REGION
                } else {
                    0
                };
                (p.gpa, flags)
            })
            .collect();
        assert_eq!(added, listed);
        assert!(added.contains(&(covm_guest_abi::layout::MIGRATION_POLICY, 0)));
        let last = plan.regions.last().unwrap();
        assert_eq!((last.source, last.measure, last.what), (Source::Hob, false, "TD HOB"));
    }

    #[test]
    fn a_failing_call_stops_the_launch_and_is_named() {
        let (_memory, _loaded, plan) = plan();
        each_call_failing(PLATFORM, |fake: &mut Fake| launch_tdx(fake, &plan));
    }

    #[test]
    fn host_limits_refuse_before_init_vm() {
        let (memory, loaded, _) = plan();
        let mut options = TdxOptions::new([0; 32], wanted_cpuid(), HOB);
        options.td.attributes |= 1; // DEBUG, which the fake host does not offer
        let plan = TdxPlan::new(&memory, &loaded.image, options).unwrap();
        let mut fake = Fake::default();
        let err = launch_tdx(&mut fake, &plan).unwrap_err();
        assert_eq!(err.step, "KVM_TDX_INIT_VM");
        assert!(
            err.to_string().contains("include bits 0x1 this host does not support"),
            "{err}"
        );
        assert!(
            !fake.calls.iter().any(|c| c.name() == "KVM_TDX_INIT_VM"),
            "refused before the call"
        );

        let image = Launch {
            metadata: Vec::new(),
            pages: loaded.image.pages.clone(),
            vcpus: vec![VcpuState::reset(); FAKE_MAX_VCPUS + 1],
        };
        let plan = TdxPlan::new(&memory, &image, TdxOptions::new([0; 32], vec![], HOB)).unwrap();
        let err = launch_tdx(&mut Fake::default(), &plan).unwrap_err();
        assert_eq!(err.step, "KVM_CHECK_EXTENSION(KVM_CAP_MAX_VCPUS)");
        assert!(err.to_string().ends_with("9 vCPUs, a TD here has at most 8"), "{err}");
    }
}
