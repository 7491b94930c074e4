//! A TDX VM (a TD): built through its launch ([`TdxVmLaunch`]) on a
//! backend ([`TdxVmOps`] and [`IntoLaunched`]; real KVM:
//! `KvmLaunch<TdxState>`), then assembled
//! into a [`Vm`] like any other: devices, vCPU threads, the migration
//! agent's vCPU.
//!
//! What differs from the other VMs: the VM is `KVM_X86_TDX_VM`, its RAM
//! slots are guest_memfd-backed and private, it has a split irqchip (no
//! in-kernel PIC, IOAPIC or PIT: KVM refuses them a TD, and covm has no
//! userspace IOAPIC, so COM1's IRQ is not wired, [`TD_DEVICES`]), nothing
//! is set on its vCPUs (the TDX module owns their state; CPUID is
//! `KVM_TDX_INIT_VM`'s), the guest's MapGPA (`KVM_HC_MAP_GPA_RANGE`
//! exits) reaches `platform::snp::hypercall` and its other forwarded
//! TDVMCALLs (`KVM_EXIT_TDX`) `platform::tdx::exit`, and it can neither
//! log dirty pages nor migrate ([`TDX_NOT_MIGRATABLE`]). Its platform's
//! measurement is the MRTD `covm measure --platform tdx=on` computes for
//! the same options.

use super::build::Origin;
use super::devices::SerialIrq;
use super::private::{refuse_unsupported, PrivateLaunch};
use super::{Vm, VmError};
use crate::config::VmConfig;
use crate::platform::hardware::error::CallError;
use crate::platform::hardware::host::Unavailable;
use crate::platform::hardware::kvm_launch::{IntoLaunched, KvmLaunch};
use crate::platform::hardware::TDX_NOT_MIGRATABLE;
use crate::platform::tdx::construct::{TdxVmError, TdxVmLaunch, TdxVmOps};
use crate::platform::tdx::kvm::TdxState;
use crate::platform::tdx::{self, TD_DEVICES};
use crate::platform::{image, TdxConfig};
use crate::vcpu::ExitNotifier;
use crate::vm::kvm;
use crate::vm::memory::{self, GuestMemory};
use kvm_bindings::{kvm_enable_cap, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::Arc;
use std::time::Instant;

impl TdxVmOps for KvmLaunch<'_, TdxState> {
    fn probe(&mut self) -> Result<(), Unavailable> {
        tdx::probe_tdx()
    }

    fn enable_split_irqchip(&mut self, ioapic_pins: u64) -> Result<(), CallError> {
        split_irqchip(self.vm()?, ioapic_pins)
    }
}

/// `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)` on `vm`, `ioapic_pins` routes
/// reserved.
fn split_irqchip(vm: &VmFd, ioapic_pins: u64) -> Result<(), CallError> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = ioapic_pins;
    Ok(vm.enable_cap(&cap)?)
}

impl Vm {
    /// A TD on this host's KVM.
    pub(super) fn build_tdx_on_kvm(
        config: &VmConfig,
        tdx: &TdxConfig,
        start: Instant,
        notify: ExitNotifier,
        origin: Origin,
    ) -> Result<Self, VmError> {
        let kvm = kvm::open()?;
        Self::build_tdx(config, tdx, start, notify, origin, &kvm, |memory| {
            KvmLaunch::new(&kvm, memory, TdxState)
        })
    }

    /// A TD built on the backend `backend` makes from its guest memory:
    /// the construction's calls, then the KVM objects they made.
    pub(super) fn build_tdx<B: TdxVmOps + IntoLaunched>(
        config: &VmConfig,
        tdx: &TdxConfig,
        start: Instant,
        notify: ExitNotifier,
        origin: Origin,
        kvm: &Kvm,
        backend: impl FnOnce(GuestMemory) -> B,
    ) -> Result<Self, VmError> {
        refuse_unsupported(
            config,
            origin,
            TDX_NOT_MIGRATABLE,
            "--dirty-tracking mode=ring: KVM has no dirty ring for an Intel TDX VM's private \
             (guest_memfd-backed) memory, and a TD cannot migrate",
        )?;
        let call = |what| move |source| VmError::KvmCall { what, source };
        let memory = memory::allocate(config.memory.size)?;
        let loaded = image::load(&memory, config)?;
        tracing::info!(
            "loaded {:?} entry at {:#x} (a TD starts at the reset vector, RCX the TD HOB at {:#x})",
            loaded.entry.mode,
            loaded.entry.entry,
            covm_measure::mrtd::TD_HOB_GPA
        );
        // What covm would give a plain VM's vCPUs; INIT_VM keeps the bits
        // the host lets a TD configure.
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(call("read the supported CPUID"))?
            .as_slice()
            .to_vec();
        let launch = TdxVmLaunch::new(&memory, &loaded, tdx, cpuid).map_err(VmError::from)?;
        tracing::warn!("{}", tdx::GUEST_NOT_READY);
        tracing::warn!("{TD_DEVICES}");

        let mut ops = backend(memory.clone());
        launch.run(&mut ops)?;
        let launched = ops.into_launched().map_err(TdxVmError::from)?;
        tracing::info!(
            "Intel TDX launch finished: expected MRTD {} over {} pages",
            crate::platform::hex(&launch.expected.mrtd),
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
                serial_irq: SerialIrq::Unwired,
                refusal: TDX_NOT_MIGRATABLE,
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::private::tests::{assert_not_migratable, dirty_ring_refusal};
    use super::*;
    use crate::platform::hardware::hybrid::{kvm_or_skip, Hybrid};
    use crate::platform::measure::measure_tdx;
    use crate::platform::tdx::bindings::{TdxCapabilities, TdxInitMemRegion, TdxInitVm};
    use crate::platform::tdx::fake::{TdxCall, TdxFake};
    use crate::platform::tdx::ops::TdxLaunchOps;
    use crate::platform::PlatformConfig;
    use kvm_bindings::kvm_pit_config;

    // The TD on the shared `Hybrid`: the TDX calls are the fake's only, and
    // this machine's KVM makes the split irqchip real too, so that a whole
    // `Vm` comes out: nothing here needs TDX hardware.

    impl TdxLaunchOps for Hybrid<'_, '_, TdxCall> {
        fn tdx_capabilities(&mut self) -> Result<TdxCapabilities, CallError> {
            self.fake.tdx_capabilities()
        }
        fn max_vcpus(&mut self) -> Result<usize, CallError> {
            self.fake.max_vcpus()
        }
        fn tdx_init_vm(&mut self, init: &TdxInitVm) -> Result<(), CallError> {
            self.fake.tdx_init_vm(init)
        }
        fn tdx_init_vcpu(&mut self, vcpu: usize, rcx: u64) -> Result<(), CallError> {
            self.fake.tdx_init_vcpu(vcpu, rcx)
        }
        fn tdx_init_mem_region(&mut self, vcpu: usize, r: &TdxInitMemRegion, flags: u32) -> Result<(), CallError> {
            self.fake.tdx_init_mem_region(vcpu, r, flags)
        }
        fn tdx_finalize_vm(&mut self) -> Result<(), CallError> {
            self.fake.tdx_finalize_vm()
        }
    }

    impl TdxVmOps for Hybrid<'_, '_, TdxCall> {
        fn probe(&mut self) -> Result<(), Unavailable> {
            self.fake.probe()
        }
        fn enable_split_irqchip(&mut self, ioapic_pins: u64) -> Result<(), CallError> {
            self.fake.enable_split_irqchip(ioapic_pins)?;
            split_irqchip(self.real.vm()?, ioapic_pins)
        }
    }

    /// `--platform tdx=on --cpus boot=2 --memory size=64M --cmdline
    /// workload=hello` and the empty migration policy, as `covm measure`
    /// reads the same options.
    pub(crate) fn tdx_config() -> VmConfig {
        crate::platform::hardware::test_config("tdx=on")
    }

    /// A TD [`Vm`] built on [`Hybrid`] (None without KVM), and the calls
    /// the fake recorded.
    pub(crate) fn tdx_vm(config: &VmConfig) -> Option<(Vm, Vec<TdxCall>)> {
        let kvm = kvm_or_skip()?;
        let PlatformConfig::Tdx(tdx) = &config.platform else {
            panic!("{:?}", config.platform)
        };
        let mut fake = TdxFake::default();
        let notify: ExitNotifier = Arc::new(|_| {});
        let vm = Vm::build_tdx(config, tdx, Instant::now(), notify, Origin::Boot, &kvm, |memory| {
            Hybrid {
                fake: &mut fake,
                real: KvmLaunch::new(&kvm, memory, ()),
            }
        })
        .unwrap();
        Some((vm, fake.calls))
    }

    #[test]
    fn a_td_gets_devices_confined_to_its_shared_window() {
        let config = crate::vm::private::tests::with_rng(tdx_config());
        let Some((vm, _)) = tdx_vm(&config) else { return };
        crate::vm::private::tests::assert_devices_confined(&vm);
    }

    /// A whole TD comes out of the construction: the launch's calls in
    /// order, a real VM with a split irqchip and no in-kernel PIC or PIT,
    /// real vCPUs, the platform measuring the MRTD `covm measure` prints,
    /// and dirty logging and migration refused with the reason.
    #[test]
    fn a_td_is_built_on_its_launch() {
        let config = tdx_config();
        let Some((vm, calls)) = tdx_vm(&config) else { return };
        let names: Vec<&str> = calls.iter().map(TdxCall::name).collect();
        assert_eq!(&names[..2], ["probe", "KVM_CREATE_VM"]);
        assert!(matches!(calls[1], TdxCall::CreateVm(5)));
        let split = names
            .iter()
            .position(|n| *n == "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)")
            .unwrap();
        assert_eq!(
            names[split + 1],
            "KVM_CREATE_VCPU",
            "split irqchip right before the vCPUs"
        );
        assert!(!names.contains(&"KVM_CREATE_IRQCHIP"));
        assert_eq!(names.last(), Some(&"KVM_TDX_FINALIZE_VM"));
        let hob: Vec<u64> = calls
            .iter()
            .filter_map(|c| match c {
                TdxCall::InitVcpu { rcx, .. } => Some(*rcx),
                _ => None,
            })
            .collect();
        assert_eq!(hob, vec![0x4000; 3]);

        // The platform: covm measure's MRTD for the same options.
        let measured = measure_tdx(&config).unwrap();
        assert_eq!(vm.platform().kind(), "tdx");
        assert!(vm.platform().hardware_protection());
        assert_eq!(vm.platform().measurement(), Some(measured.mrtd));
        assert_eq!(vm.platform().host_data(), config.platform.host_data());
        let err = vm.platform().evidence(&[0; 64]).unwrap_err().to_string();
        assert!(err.contains("needs the guest's own request to the TDX module"), "{err}");
        let info = vm.platform().info();
        assert_eq!(info["note"], tdx::GUEST_NOT_READY);
        assert_eq!(info["devices"], TD_DEVICES);
        assert!(info["migration"].as_str().unwrap().starts_with("refused: "));

        // The real VM has the split irqchip: a full irqchip exists already
        // (EEXIST) and there is no in-kernel PIC for a PIT (ENOENT).
        let err = vm.vm_fd.create_irq_chip().unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST, "{err}");
        let err = vm.vm_fd.create_pit2(kvm_pit_config::default()).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT, "{err}");
        assert_eq!(vm.vcpu_fds.len() + 1, 3, "2 vCPUs and the agent's");
        assert_eq!(vm.agent_vcpus.len(), 1);

        // No dirty logging, no migration: said why.
        assert_not_migratable(&vm, TDX_NOT_MIGRATABLE);
        vm.stop();
    }

    /// Neither an incoming TD nor one with a dirty ring is built.
    #[test]
    fn incoming_and_dirty_ring_are_refused() {
        let config = tdx_config();
        let err = crate::platform::launch_incoming(&config).unwrap_err().to_string();
        assert_eq!(err, format!("a tdx VM cannot be received: {TDX_NOT_MIGRATABLE}"));
        let refused = dirty_ring_refusal(config, TDX_NOT_MIGRATABLE, |ring, kvm, notify| {
            let PlatformConfig::Tdx(tdx) = &ring.platform else {
                unreachable!()
            };
            Vm::build_tdx(
                ring,
                tdx,
                Instant::now(),
                notify,
                Origin::Boot,
                kvm,
                |_| -> Hybrid<TdxCall> { panic!("nothing is built") },
            )
        });
        let Some(err) = refused else { return };
        assert!(
            err.starts_with("--dirty-tracking mode=ring: KVM has no dirty ring for an Intel TDX VM"),
            "{err}"
        );
    }
}
