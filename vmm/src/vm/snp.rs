//! An SEV-SNP VM: built through its launch ([`SnpVmLaunch`]) on a
//! backend ([`SnpVmOps`] and [`IntoLaunched`]; real KVM:
//! `KvmLaunch<SnpState>`), then assembled
//! into a [`Vm`] like any other: devices, vCPU threads, the migration
//! agent's vCPU.
//!
//! What differs from the other VMs: the VM is `KVM_X86_SNP_VM`, its RAM
//! slots are guest_memfd-backed and private, its vCPUs' first state is
//! measured (so every vCPU's RDX is set to the measured value), the
//! guest's `KVM_HC_MAP_GPA_RANGE` exits reach
//! `platform::snp::hypercall`, and it can neither log dirty pages nor
//! migrate ([`SNP_NOT_MIGRATABLE`]). Its platform's measurement is the
//! one `covm measure` computes for the same options.

use super::build::{create_chips, Origin};
use super::devices::SerialIrq;
use super::private::{refuse_unsupported, PrivateLaunch};
use super::{Vm, VmError};
use crate::arch::{cpuid, regs};
use crate::config::VmConfig;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::host::Unavailable;
use crate::platform::hardware::kvm_launch::{IntoLaunched, KvmLaunch, VcpuSetup};
use crate::platform::hardware::private_memory::PrivateMemoryOps;
use crate::platform::hardware::SNP_NOT_MIGRATABLE;
use crate::platform::snp::construct::{SnpVmError, SnpVmLaunch, SnpVmOps, VcpuBoot};
use crate::platform::snp::kvm::SnpState;
use crate::platform::snp::{self, probe::WHAT};
use crate::platform::{image, SevSnpConfig};
use crate::vcpu::{self, ExitNotifier};
use crate::vm::kvm;
use crate::vm::memory::{self, GuestMemory};
use covm_measure::cpuid_page::{cpuid_page, CpuidEntry};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use std::sync::Arc;
use std::time::Instant;

/// KVM's CPUID entries as the SEV-SNP CPUID page takes them: the subleaf
/// 0 where KVM's index is not significant.
pub(crate) fn cpuid_entries(cpuid: &[kvm_cpuid_entry2]) -> Vec<CpuidEntry> {
    cpuid
        .iter()
        .map(|e| CpuidEntry {
            function: e.function,
            index: if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 {
                e.index
            } else {
                0
            },
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect()
}

/// Writes the SEV-SNP CPUID page for `cpuid` at `gpa`.
pub(crate) fn write_cpuid_page(memory: &GuestMemory, gpa: u64, cpuid: &kvm_bindings::CpuId) -> Result<(), String> {
    use vm_memory::Bytes;
    let page = cpuid_page(&cpuid_entries(cpuid.as_slice())).map_err(|e| e.to_string())?;
    memory
        .write_slice(&page[..], vm_memory::GuestAddress(gpa))
        .map_err(|e| format!("cannot write the SEV-SNP CPUID page at {gpa:#x}: {e}"))
}

impl SnpVmOps for KvmLaunch<'_, SnpState> {
    fn probe(&mut self) -> Result<(), Unavailable> {
        snp::probe_snp()?;
        self.platform.ensure_open().map_err(|e| Unavailable {
            what: WHAT,
            missing: vec![e.to_string()],
        })
    }

    fn create_chips(&mut self) -> Result<(), CallError> {
        chips(self.vm()?)
    }

    fn set_boot_state(&mut self, vcpu: usize, boot: &VcpuBoot) -> Result<(), CallError> {
        let fd = self
            .vcpus
            .get(vcpu)
            .ok_or_else(|| CallError::Refused(format!("no vCPU {vcpu}: KVM_CREATE_VCPU comes first")))?;
        boot_state(fd, boot)
    }
}

/// The in-kernel irqchip and PIT, as every covm VM has them.
fn chips(vm: &VmFd) -> Result<(), CallError> {
    create_chips(vm).map_err(|e| match e {
        VmError::KvmCall { source, .. } => CallError::from(source),
        other => CallError::Refused(other.to_string()),
    })
}

/// Sets a vCPU's boot state: covm's boot registers for vCPU 0, then RDX.
fn boot_state(fd: &VcpuFd, boot: &VcpuBoot) -> Result<(), CallError> {
    if let Some(bsp) = &boot.bsp {
        regs::apply_bsp(fd, bsp).map_err(|e| match e {
            regs::RegsError::Kvm { source, .. } => CallError::from(source),
            other => CallError::Refused(other.to_string()),
        })?;
    }
    let mut regs = fd.get_regs()?;
    regs.rdx = boot.rdx;
    fd.set_regs(&regs)?;
    Ok(())
}

/// The running VM's conversions: `KVM_SET_MEMORY_ATTRIBUTES` on its fd,
/// shared by its vCPUs. Nothing else is done once the VM runs. (A TD's
/// too: `vm/tdx.rs`.)
pub(super) struct VmAttributes(pub(super) Arc<VmFd>);

impl PrivateMemoryOps for VmAttributes {
    fn create_guest_memfd(&mut self, _: &kvm_create_guest_memfd) -> Result<u32, CallError> {
        Err(CallError::Refused("the VM runs: its memory is set up".into()))
    }

    fn set_user_memory_region2(&mut self, _: &kvm_userspace_memory_region2) -> Result<(), CallError> {
        Err(CallError::Refused("the VM runs: its memory is set up".into()))
    }

    fn set_memory_attributes(&mut self, attributes: &kvm_memory_attributes) -> Result<(), CallError> {
        Ok(self.0.set_memory_attributes(*attributes)?)
    }

    fn enable_exit_hypercall(&mut self, _: u64) -> Result<(), CallError> {
        Err(CallError::Refused("the VM runs: its exits are set up".into()))
    }
}

impl Vm {
    /// An SEV-SNP VM on this host's KVM.
    pub(super) fn build_snp_on_kvm(
        config: &VmConfig,
        snp: &SevSnpConfig,
        start: Instant,
        notify: ExitNotifier,
        origin: Origin,
    ) -> Result<Self, VmError> {
        let kvm = kvm::open()?;
        Self::build_snp(config, snp, start, notify, origin, &kvm, |memory, setup| {
            KvmLaunch::new(&kvm, memory, SnpState::unopened()).with_vcpu_setup(setup)
        })
    }

    /// An SEV-SNP VM built on the backend `backend` makes from its guest
    /// memory and the vCPUs' setup: the construction's calls, then the KVM
    /// objects they made.
    pub(super) fn build_snp<'k, B: SnpVmOps + IntoLaunched>(
        config: &VmConfig,
        snp: &SevSnpConfig,
        start: Instant,
        notify: ExitNotifier,
        origin: Origin,
        kvm: &Kvm,
        backend: impl FnOnce(GuestMemory, VcpuSetup<'k>) -> B,
    ) -> Result<Self, VmError> {
        refuse_unsupported(
            config,
            origin,
            SNP_NOT_MIGRATABLE,
            "--dirty-tracking mode=ring: KVM has no dirty ring for an AMD SEV-SNP VM's private \
             (guest_memfd-backed) memory, and such a VM cannot migrate",
        )?;
        let call = |what| move |source| VmError::KvmCall { what, source };
        let memory = memory::allocate(config.memory.size)?;
        let loaded = image::load(&memory, config)?;
        tracing::info!("booting {:?} entry at {:#x}", loaded.entry.mode, loaded.entry.entry);
        let launch = SnpVmLaunch::new(&memory, &loaded, snp)?;
        tracing::warn!("{}", snp::GUEST_NOT_READY);

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(call("read the supported CPUID"))?;
        let vcpus = config.kvm_vcpus();
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        // The CPUID page the firmware's metadata asks for holds vCPU 0's
        // CPUID as covm sets it: written when vCPU 0 is set up, before the
        // launch updates the page (its contents are not measured).
        let cpuid_gpa = loaded
            .image
            .metadata
            .iter()
            .find(|s| s.kind == covm_guest_abi::metadata::SectionKind::Cpuid)
            .map(|s| s.gpa);
        let cpuid_memory = memory.clone();
        let setup: VcpuSetup<'k> = Box::new(move |fd: &VcpuFd, index: usize| {
            let topo = cpuid::Topology {
                vcpus,
                // Every vCPU runs at the host's TSC rate.
                tsc_khz: fd
                    .get_tsc_khz()
                    .map_err(|e| format!("cannot read the TSC frequency: {e}"))?,
                tsc_deadline,
            };
            if let (0, Some(gpa)) = (index, cpuid_gpa) {
                write_cpuid_page(&cpuid_memory, gpa, &cpuid::for_vcpu(&supported, topo, 0))?;
            }
            vcpu::configure_fd(fd, index as u8, &supported, topo).map_err(|e| e.to_string())
        });
        let mut ops = backend(memory.clone(), setup);
        launch.run(&mut ops)?;
        let launched = ops.into_launched().map_err(SnpVmError::from)?;
        tracing::info!(
            "AMD SEV-SNP launch finished: expected measurement {} over {} entries",
            crate::platform::hex(&launch.expected.digest),
            launch.expected.pages.len()
        );

        Self::assemble_private(
            config,
            start,
            notify,
            kvm,
            PrivateLaunch {
                launched,
                ram: launch.plan.ram.clone(),
                platform: Arc::new(launch.platform()),
                serial_irq: SerialIrq::Wired,
                refusal: SNP_NOT_MIGRATABLE,
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::private::tests::{assert_not_migratable, dirty_ring_refusal};
    use super::*;
    use crate::platform::hardware::hybrid::{kvm_or_skip, Hybrid};
    use crate::platform::measure::measure_sev_snp;
    use crate::platform::snp::fake::{SnpCall, SnpFake};
    use crate::platform::snp::ops::SnpLaunchOps;
    use crate::platform::PlatformConfig;
    use covm_guest_abi::metadata::SNP_CPUID_GPA;
    use covm_measure::snp::SnpLaunch;
    use covm_measure::PageType;
    use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update};
    use vm_memory::Bytes;

    // The SEV-SNP VM on the shared `Hybrid`: the SEV-SNP calls are the
    // fake's only, and this machine's KVM makes the chips and the vCPUs'
    // registers real too, so that a whole `Vm` comes out: nothing here
    // needs SEV-SNP hardware.

    impl SnpLaunchOps for Hybrid<'_, '_, SnpCall> {
        fn sev_init2(&mut self, init: &kvm_sev_init) -> Result<(), CallError> {
            self.fake.sev_init2(init)
        }
        fn snp_launch_start(&mut self, start: &kvm_sev_snp_launch_start) -> Result<(), CallError> {
            self.fake.snp_launch_start(start)
        }
        fn snp_launch_update(&mut self, update: &kvm_sev_snp_launch_update) -> Result<(), CallError> {
            self.fake.snp_launch_update(update)
        }
        fn snp_launch_finish(&mut self, finish: &kvm_sev_snp_launch_finish) -> Result<(), CallError> {
            self.fake.snp_launch_finish(finish)
        }
    }

    impl SnpVmOps for Hybrid<'_, '_, SnpCall> {
        fn probe(&mut self) -> Result<(), Unavailable> {
            self.fake.probe()
        }
        fn create_chips(&mut self) -> Result<(), CallError> {
            self.fake.create_chips()?;
            chips(self.real.vm()?)
        }
        fn set_boot_state(&mut self, vcpu: usize, boot: &VcpuBoot) -> Result<(), CallError> {
            self.fake.set_boot_state(vcpu, boot)?;
            boot_state(&self.real.vcpus[vcpu], boot)
        }
    }

    /// `--platform sev_snp=on,policy=0x70000,vcpu_type=EPYC-Milan --cpus
    /// boot=2 --memory size=64M --cmdline workload=hello` and the empty
    /// migration policy, as `covm measure` reads the same options.
    pub(crate) fn snp_config() -> VmConfig {
        crate::platform::hardware::test_config(crate::platform::hardware::SNP_TEST_PLATFORM)
    }

    /// An SEV-SNP [`Vm`] built on [`Hybrid`] (None without KVM), and the
    /// calls the fake recorded.
    pub(crate) fn snp_vm(config: &VmConfig) -> Option<(Vm, Vec<SnpCall>)> {
        let kvm = kvm_or_skip()?;
        let PlatformConfig::SevSnp(snp) = &config.platform else {
            panic!("{:?}", config.platform)
        };
        let mut fake = SnpFake::default();
        let notify: ExitNotifier = Arc::new(|_| {});
        let vm = Vm::build_snp(
            config,
            snp,
            Instant::now(),
            notify,
            Origin::Boot,
            &kvm,
            |memory, setup| Hybrid {
                fake: &mut fake,
                real: KvmLaunch::new(&kvm, memory, ()).with_vcpu_setup(setup),
            },
        )
        .unwrap();
        Some((vm, fake.calls))
    }

    /// A whole SEV-SNP VM comes out of the construction: the launch's
    /// calls in order, real vCPUs whose registers the launch set (RDX the
    /// signature), the platform measuring what `covm measure` prints, and
    /// dirty logging refused with the reason.
    #[test]
    fn an_snp_vm_is_built_on_its_launch() {
        let config = snp_config();
        let Some((vm, calls)) = snp_vm(&config) else { return };

        // The same calls, in the same order, as the construction alone.
        let memory = crate::vm::memory::allocate(config.memory.size).unwrap();
        let loaded = image::load(&memory, &config).unwrap();
        let PlatformConfig::SevSnp(snp) = &config.platform else {
            unreachable!()
        };
        let launch = SnpVmLaunch::new(&memory, &loaded, snp).unwrap();
        let mut alone = SnpFake::default();
        launch.run(&mut alone).unwrap();
        let names = |calls: &[SnpCall]| calls.iter().map(SnpCall::name).collect::<Vec<_>>();
        assert_eq!(names(&calls), names(&alone.calls));
        assert_eq!(&names(&calls)[..3], ["probe", "KVM_CREATE_VM", "KVM_SEV_INIT2"]);
        assert!(matches!(calls[1], SnpCall::CreateVm(4)));
        let SnpCall::LaunchFinish(finish) = calls.last().unwrap() else {
            panic!()
        };
        assert_eq!(finish.host_data, snp.policy.host_data());

        // The platform: covm measure's measurement for the same options.
        let measured = measure_sev_snp(
            &config,
            &SnpLaunch {
                vcpu_signature: 0xa00f11,
                kernel_hashes: None,
                cpuid_page: None,
            },
        )
        .unwrap();
        assert_eq!(vm.platform().kind(), "sev_snp");
        assert!(vm.platform().hardware_protection());
        assert_eq!(vm.platform().measurement(), Some(measured.digest));
        assert_eq!(vm.platform().host_data(), Some(snp.policy.host_data()));
        assert!(vm.platform().evidence(&[0; 64]).is_err());

        // The vCPUs KVM holds carry the launch's registers.
        let mut fds = vm.vcpu_fds.clone();
        fds.extend(vm.agent_vcpus.iter().map(crate::vm::Vcpu::shared_fd));
        assert_eq!(fds.len(), 3, "2 vCPUs and the agent's");
        for (index, fd) in fds.iter().enumerate() {
            let regs = fd.lock().unwrap().get_regs().unwrap();
            assert_eq!(regs.rdx, 0xa00f11, "vCPU {index}");
            if index == 0 {
                assert_eq!(regs.rip, loaded.bsp.rip);
                assert_eq!(regs.rbx, loaded.bsp.rbx);
            }
        }

        // The firmware's metadata pages were launched with their types, and
        // the CPUID page holds vCPU 0's CPUID as covm set it: leaf 1 with
        // three logical processors and APIC ID 0.
        let updates: Vec<(u64, u64, u8)> = calls
            .iter()
            .filter_map(|c| match c {
                SnpCall::LaunchUpdate(u) => Some((u.gfn_start, u.len, u.type_)),
                _ => None,
            })
            .collect();
        assert!(updates.contains(&(0x2, 4096, PageType::Secrets as u8)), "{updates:x?}");
        assert!(updates.contains(&(0x3, 4096, PageType::Cpuid as u8)), "{updates:x?}");
        let mut page = [0u8; 4096];
        vm.memory()
            .read_slice(&mut page, vm_memory::GuestAddress(SNP_CPUID_GPA))
            .unwrap();
        let word = |at: usize| u32::from_le_bytes(page[at..at + 4].try_into().unwrap());
        let count = word(0) as usize;
        assert!((1..=64).contains(&count), "{count}");
        let leaf1 = (0..count)
            .map(|i| 16 + i * 48)
            .find(|&at| word(at) == 1)
            .expect("leaf 1 in the CPUID page");
        assert_eq!((word(leaf1 + 0x1c) >> 16) & 0xff, 3, "three logical processors");
        assert_eq!(word(leaf1 + 0x1c) >> 24, 0, "vCPU 0's APIC ID");

        // No dirty logging, no migration: said why.
        assert_not_migratable(&vm, SNP_NOT_MIGRATABLE);
        vm.stop();
    }

    /// The CPUID page of the CPUID covm configures (leaf 1 with the vCPU
    /// count, the extended topology subleaves, the timing leaf), entry by
    /// entry: KVM's entries as covm sets them on vCPU 0, subleaves only
    /// where KVM's index is significant.
    #[test]
    fn an_snp_vm_gets_devices_confined_to_its_shared_window() {
        let config = crate::vm::private::tests::with_rng(snp_config());
        let Some((vm, _)) = snp_vm(&config) else { return };
        crate::vm::private::tests::assert_devices_confined(&vm);
    }

    #[test]
    fn cpuid_page_of_covms_cpuid() {
        use crate::arch::cpuid::{for_vcpu, test_entry, Topology, LEAF_TIMING};
        use covm_measure::cpuid_page::{ENTRY_LEN, HEADER_LEN};
        use kvm_bindings::CpuId;
        let u32_at = |p: &[u8], at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
        let u64_at = |p: &[u8], at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
        let supported = CpuId::from_entries(&[
            test_entry(0, 0, [0xd, 0x6874_7541, 0, 0]),
            test_entry(1, 0, [0xa00f11, 0, 0, 0]),
            test_entry(0xb, 1, [0; 4]),
            kvm_cpuid_entry2 {
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..test_entry(0xd, 1, [0xf, 0x240, 0, 0])
            },
        ])
        .unwrap();
        let topo = Topology {
            vcpus: 3,
            tsc_khz: 2_000_000,
            tsc_deadline: true,
        };
        let cpuid = for_vcpu(&supported, topo, 0);
        let entries = cpuid.as_slice();
        let page = cpuid_page(&cpuid_entries(entries)).unwrap();
        assert_eq!(u32_at(&page[..], 0) as usize, entries.len());
        assert_eq!(entries.len(), 5, "the four leaves and the timing leaf");
        assert_eq!(&page[4..16], &[0; 12], "reserved");
        let entry = |i: usize| &page[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
        for (i, e) in entries.iter().enumerate() {
            let b = entry(i);
            assert_eq!(u32_at(b, 0), e.function);
            assert_eq!(
                (u32_at(b, 0x18), u32_at(b, 0x1c), u32_at(b, 0x20), u32_at(b, 0x24)),
                (e.eax, e.ebx, e.ecx, e.edx)
            );
            assert_eq!((u64_at(b, 0x10), u64_at(b, 0x28)), (0, 0), "xss_in, reserved");
        }
        // Leaf 1: three logical processors, APIC ID 0, hypervisor bit.
        let leaf1 = entry(1);
        assert_eq!((u32_at(leaf1, 0), u32_at(leaf1, 4)), (1, 0));
        assert_eq!((u32_at(leaf1, 0x1c) >> 16) & 0xff, 3);
        assert_ne!(u32_at(leaf1, 0x20) & (1 << 31), 0);
        // Leaf 0xb subleaf 1 (a significant index): three cores.
        let topo_leaf = entry(2);
        assert_eq!((u32_at(topo_leaf, 0), u32_at(topo_leaf, 4)), (0xb, 1));
        assert_eq!(u32_at(topo_leaf, 0x1c), 3);
        // Leaf 0xd subleaf 1: for XCR0 = x87.
        let xsave = entry(3);
        assert_eq!((u32_at(xsave, 0), u32_at(xsave, 4), u64_at(xsave, 8)), (0xd, 1, 1));
        // The timing leaf: the TSC frequency, in kHz.
        let timing = entry(4);
        assert_eq!((u32_at(timing, 0), u32_at(timing, 0x18)), (LEAF_TIMING, 2_000_000));
        assert!(page[HEADER_LEN + 5 * ENTRY_LEN..].iter().all(|&b| b == 0));
        // An index KVM does not flag significant is subleaf 0.
        let any_index = test_entry(7, 3, [1, 0, 0, 0]);
        assert_eq!(cpuid_entries(&[any_index])[0].index, 0);
        let significant = kvm_cpuid_entry2 {
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..any_index
        };
        assert_eq!(cpuid_entries(&[significant])[0].index, 3);
    }

    /// Neither an incoming SEV-SNP VM nor one with a dirty ring is built.
    #[test]
    fn incoming_and_dirty_ring_are_refused() {
        let refused = dirty_ring_refusal(snp_config(), SNP_NOT_MIGRATABLE, |ring, kvm, notify| {
            let PlatformConfig::SevSnp(snp) = &ring.platform else {
                unreachable!()
            };
            Vm::build_snp(
                ring,
                snp,
                Instant::now(),
                notify,
                Origin::Boot,
                kvm,
                |_, _| -> Hybrid<SnpCall> { panic!("nothing is built") },
            )
        });
        let Some(err) = refused else { return };
        assert!(
            err.starts_with("--dirty-tracking mode=ring: KVM has no dirty ring"),
            "{err}"
        );
    }
}
