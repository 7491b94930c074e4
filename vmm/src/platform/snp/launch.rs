//! The SEV-SNP launch sequence over [`SnpLaunchOps`]: the first failing
//! call stops it, and the error names that call.
//!
//! It comes in two halves so that covm's VM construction can create and
//! configure its vCPUs between them (the vCPUs must exist, with their boot
//! registers, before `KVM_SEV_SNP_LAUNCH_FINISH` turns them into VMSAs,
//! and after `KVM_SEV_INIT2`): [`prepare`] and [`finish`]; `launch_snp`
//! (tests) runs both with `create_vcpus_step` between.

use super::bindings::SNP_VM_TYPE;
use super::ops::SnpLaunchOps;
use super::plan::SnpPlan;
use crate::platform::hardware::error::{at, LaunchError};
use crate::platform::hardware::private_memory::register_private;
use crate::platform::hex;

/// The platform's name in errors.
pub const PLATFORM: &str = "AMD SEV-SNP";

/// The whole launch of `plan`.
#[cfg(test)]
pub fn launch_snp(ops: &mut impl SnpLaunchOps, plan: &SnpPlan) -> Result<(), LaunchError> {
    prepare(ops, plan)?;
    crate::platform::hardware::create::create_vcpus_step(ops, plan.vcpus, PLATFORM)?;
    finish(ops, plan)
}

/// Up to the vCPUs: the VM, its SEV context, private memory, the guest context.
pub fn prepare(ops: &mut impl SnpLaunchOps, plan: &SnpPlan) -> Result<(), LaunchError> {
    at(
        PLATFORM,
        "KVM_CREATE_VM",
        || "type KVM_X86_SNP_VM".into(),
        ops.create_vm(SNP_VM_TYPE),
    )?;
    at(
        PLATFORM,
        "KVM_SEV_INIT2",
        || {
            format!(
                "vmsa_features {:#x}, GHCB version {}",
                plan.init.vmsa_features, plan.init.ghcb_version
            )
        },
        ops.sev_init2(&plan.init),
    )?;
    register_private(ops, &plan.ram, PLATFORM)?;
    at(
        PLATFORM,
        "KVM_SEV_SNP_LAUNCH_START",
        || format!("policy {:#x}", plan.start.policy),
        ops.snp_launch_start(&plan.start),
    )
}

/// After the vCPUs: the image's pages, then the finish.
pub fn finish(ops: &mut impl SnpLaunchOps, plan: &SnpPlan) -> Result<(), LaunchError> {
    for run in &plan.updates {
        at(
            PLATFORM,
            "KVM_SEV_SNP_LAUNCH_UPDATE",
            || {
                format!(
                    "{} {} page(s) at GPA {:#x}: {}",
                    run.pages,
                    run.page_type.name(),
                    run.gpa,
                    run.what
                )
            },
            ops.snp_launch_update(&run.to_kvm()),
        )?;
    }
    let finish = plan.finish();
    at(
        PLATFORM,
        "KVM_SEV_SNP_LAUNCH_FINISH",
        || {
            format!(
                "host data {}, ID block {}",
                hex(&plan.host_data),
                if plan.id.is_some() { "given" } else { "none" }
            )
        },
        ops.snp_launch_finish(&finish),
    )
}

#[cfg(test)]
mod tests {
    use super::super::fake::{SnpCall, SnpFake as Fake, PREPARE_CALLS};
    use super::super::plan::SnpOptions;
    use super::*;
    use crate::platform::hardware::fake::{each_call_failing, loaded_firmware, MEMORY};
    use crate::platform::image::Loaded;
    use crate::platform::measure::image_digest;
    use crate::platform::MigrationPolicy;
    use covm_measure::PageType;
    use kvm_bindings::{KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEM_GUEST_MEMFD};

    const POLICY: u64 = 0x70000;

    fn plan() -> (crate::vm::memory::GuestMemory, Loaded, SnpPlan) {
        let (memory, loaded, host_data) = loaded_firmware();
        let plan = SnpPlan::new(&memory, &loaded.image, SnpOptions::new(POLICY, host_data)).unwrap();
        (memory, loaded, plan)
    }

    #[test]
    fn sequence_and_arguments() {
        let (memory, loaded, plan) = plan();
        let mut fake = Fake::default();
        launch_snp(&mut fake, &plan).unwrap();
        let names: Vec<&str> = fake.calls.iter().map(SnpCall::name).collect();
        let updates = plan.updates.len();
        let mut expected = PREPARE_CALLS.to_vec();
        expected.push("KVM_CREATE_VCPU");
        expected.extend(std::iter::repeat_n("KVM_SEV_SNP_LAUNCH_UPDATE", updates));
        expected.push("KVM_SEV_SNP_LAUNCH_FINISH");
        assert_eq!(names, expected);

        let SnpCall::CreateVm(vm_type) = fake.calls[0] else {
            panic!()
        };
        assert_eq!(vm_type, 4, "KVM_X86_SNP_VM");
        let SnpCall::SevInit2(init) = fake.calls[1] else {
            panic!()
        };
        assert_eq!((init.vmsa_features, init.flags, init.ghcb_version), (0, 0, 2));
        let SnpCall::CreateGuestMemfd(gmem) = fake.calls[2] else {
            panic!()
        };
        assert_eq!((gmem.size, gmem.flags), (MEMORY, 0));
        let SnpCall::SetUserMemoryRegion2(slot) = fake.calls[3] else {
            panic!()
        };
        assert_eq!(slot.flags, KVM_MEM_GUEST_MEMFD);
        assert_eq!((slot.slot, slot.guest_phys_addr, slot.memory_size), (0, 0, MEMORY));
        assert_eq!(slot.guest_memfd, Fake::FIRST_FD, "the guest_memfd just created");
        assert_eq!(slot.guest_memfd_offset, 0);
        assert_eq!(slot.userspace_addr, plan.ram[0].uaddr);
        let SnpCall::SetMemoryAttributes(attrs) = fake.calls[4] else {
            panic!()
        };
        assert_eq!(
            (attrs.address, attrs.size, attrs.attributes, attrs.flags),
            (0, MEMORY, u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE), 0)
        );
        let SnpCall::EnableExitHypercall(mask) = fake.calls[5] else {
            panic!()
        };
        assert_eq!(mask, 1 << 12);
        let SnpCall::LaunchStart(start) = fake.calls[6] else {
            panic!()
        };
        assert_eq!((start.policy, start.flags, start.gosvw), (POLICY, 0, [0; 16]));
        let SnpCall::CreateVcpus(vcpus) = fake.calls[7] else {
            panic!()
        };
        assert_eq!(vcpus, loaded.image.vcpus.len());
        assert_eq!(vcpus, 3, "2 vCPUs and the agent's");

        // The updates launch exactly the image's pages, in its order, with
        // its types, from covm's mapping of each page.
        let mut launched = Vec::new();
        for call in &fake.calls[8..8 + updates] {
            let SnpCall::LaunchUpdate(u) = call else { panic!() };
            assert_eq!(u.len % 4096, 0);
            assert_eq!((u.flags, u.pad0), (0, 0));
            for i in 0..u.len / 4096 {
                let gpa = (u.gfn_start + i) * 4096;
                let host = crate::platform::hardware::private_memory::host_address(&plan.ram, gpa, 4096).unwrap();
                assert_eq!(u.uaddr + i * 4096, host, "page {gpa:#x} copied from covm's mapping");
                launched.push((gpa, u.type_));
            }
        }
        let listed: Vec<(u64, u8)> = loaded.image.pages.iter().map(|p| (p.gpa, p.page_type as u8)).collect();
        assert_eq!(launched, listed);
        // ... which are the entries the measurement covers before its VMSAs.
        let measured = image_digest(&memory, &loaded.image).unwrap();
        let measured_pages: Vec<(u64, u8)> = measured
            .pages
            .iter()
            .filter(|p| p.page_type != PageType::Vmsa)
            .map(|p| (p.gpa, p.page_type as u8))
            .collect();
        assert_eq!(launched, measured_pages);
        assert_eq!(measured.pages.len() - measured_pages.len(), vcpus, "one VMSA per vCPU");
        assert!(launched.contains(&(covm_guest_abi::layout::MIGRATION_POLICY, PageType::Unmeasured as u8)));
        assert!(plan.updates.len() < loaded.image.pages.len(), "adjacent pages coalesce");

        let SnpCall::LaunchFinish(finish) = fake.calls.last().unwrap() else {
            panic!()
        };
        assert_eq!(finish.host_data, plan.host_data);
        assert_eq!(finish.host_data, MigrationPolicy::empty().host_data());
        assert_eq!((finish.id_block_en, finish.auth_key_en, finish.flags), (0, 0, 0));
    }

    #[test]
    fn a_failing_call_stops_the_launch_and_is_named() {
        let (_memory, _loaded, plan) = plan();
        each_call_failing(PLATFORM, |fake: &mut Fake| launch_snp(fake, &plan));
    }

    #[test]
    fn update_errors_say_which_pages() {
        let (_memory, _loaded, plan) = plan();
        let mut fake = Fake::failing("KVM_SEV_SNP_LAUNCH_UPDATE", 1);
        let err = launch_snp(&mut fake, &plan).unwrap_err().to_string();
        let run = plan.updates[1];
        assert!(
            err.contains(&format!(
                "{} normal page(s) at GPA {:#x}: {}",
                run.pages, run.gpa, run.what
            )),
            "{err}"
        );
        assert!(!fake.calls.iter().any(|c| c.name() == "KVM_SEV_SNP_LAUNCH_FINISH"));
    }
}
