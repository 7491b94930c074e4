//! A VM with private memory (SEV-SNP, TDX), assembled around what its
//! hardware launch made: the same devices, confidential runtime, vCPU
//! threads and agent vCPU as any confidential VM, plus the private-memory
//! exits of its vCPUs and the reason it cannot migrate.

use super::build::{msr_indices, split_off_agents, Origin};
use super::confidential::{CvmRuntime, LaunchMode};
use super::devices::{build_bus, ExitSink, SerialIrq, SharedSerial};
use super::pci::PciDevices;
use super::snp::VmAttributes;
use super::{Vm, VmError};
use crate::config::{DirtyTracking, VmConfig};
use crate::dirty::DirtyTracker;
use crate::platform::hardware::kvm_launch::Launched;
use crate::platform::hardware::private_memory::RamRegion;
use crate::platform::Platform;
use crate::vcpu::control::RunControl;
use crate::vcpu::{ExitNotifier, PrivateMemoryExits, Vcpu};
use covm_devices::power::PowerButton;
use covm_devices::{MmioBus, PowerSink};
use kvm_ioctls::Kvm;
use std::sync::Arc;
use std::time::Instant;

/// What a hardware launch hands over.
pub(super) struct PrivateLaunch {
    /// The launched VM, its vCPUs (the agent's last: the highest APIC
    /// ID), guest_memfds and covm's mapping of its memory.
    pub launched: Launched,
    /// Its RAM, for the guest's private/shared conversions.
    pub ram: Vec<RamRegion>,
    /// Its platform object.
    pub platform: Arc<dyn Platform>,
    /// Whether COM1's interrupt line reaches an in-kernel interrupt
    /// controller (a TD has none).
    pub serial_irq: SerialIrq,
    /// Why it cannot migrate.
    pub refusal: &'static str,
}

/// Refuses what a VM with private memory cannot be: an incoming one (it
/// cannot migrate: `refusal` says why) or one with a dirty ring (KVM has
/// none for guest_memfd-backed memory: `ring_refusal` says so). Checked
/// before anything is made.
pub(super) fn refuse_unsupported(
    config: &VmConfig,
    origin: Origin,
    refusal: &'static str,
    ring_refusal: &'static str,
) -> Result<(), VmError> {
    if origin != Origin::Boot {
        return Err(VmError::Unsupported(refusal));
    }
    if let DirtyTracking::Ring { .. } = config.dirty_tracking {
        return Err(VmError::Unsupported(ring_refusal));
    }
    Ok(())
}

impl Vm {
    /// The VM around `launch`.
    pub(super) fn assemble_private(
        config: &VmConfig,
        start: Instant,
        notify: ExitNotifier,
        kvm: &Kvm,
        launch: PrivateLaunch,
    ) -> Result<Self, VmError> {
        let PrivateLaunch {
            launched:
                Launched {
                    vcpus: fds,
                    vm,
                    guest_memfds,
                    memory,
                },
            ram,
            platform,
            serial_irq,
            refusal,
        } = launch;
        let vm_fd = Arc::new(vm);
        let cvm = Arc::new(CvmRuntime::new(
            LaunchMode::Fresh,
            memory.clone(),
            u32::from(config.agent_vcpus()),
        ));
        let sink: Arc<dyn PowerSink> = Arc::new(ExitSink(notify.clone()));
        let power_button = PowerButton::default();
        let (mut bus, serial): (_, Option<SharedSerial>) = build_bus(
            &vm_fd,
            config,
            (sink, power_button.clone()),
            start,
            Some(&cvm),
            serial_irq,
        )?;
        cvm.set_platform(platform.clone());
        let exits = Arc::new(PrivateMemoryExits::new(Box::new(VmAttributes(vm_fd.clone())), ram));
        // Devices see covm's mapping of the shared window alone: the
        // guest's conversions (page-state changes, MapGPA) say which of its
        // pages are shared, and the devices start once all are.
        let mut mmio = MmioBus::new();
        let pci = if config.devices.any() {
            let pci = PciDevices::build_confined(&vm_fd, &memory, &config.devices, (false, true), &mut bus, &mut mmio)?;
            if let Some(window) = pci.shared_window() {
                exits.set_shared_window(window.clone());
            }
            Some(pci)
        } else {
            None
        };
        let mut vcpus: Vec<Vcpu> = fds
            .into_iter()
            .enumerate()
            .map(|(index, fd)| {
                let mut vcpu = Vcpu::from_fd(fd, index as u8);
                vcpu.set_runtime(cvm.clone());
                vcpu.set_private_memory(exits.clone());
                vcpu
            })
            .collect();
        let agent_vcpus = split_off_agents(&mut vcpus, config);
        let msr_indices = msr_indices(kvm)?;
        Ok(Self {
            vcpu_counters: vcpus.iter().chain(&agent_vcpus).map(Vcpu::counters).collect(),
            vcpu_fds: vcpus.iter().map(Vcpu::shared_fd).collect(),
            memory,
            vcpus,
            threads: Arc::default(),
            throttler: None,
            dirty: DirtyTracker::Unsupported(refusal),
            buses: crate::vcpu::Buses {
                pio: Arc::new(bus),
                mmio: Arc::new(mmio),
            },
            pci,
            control: Arc::new(RunControl::default()),
            notify,
            serial,
            power_button,
            msr_indices,
            platform,
            cvm: Some(cvm),
            agent_vcpus,
            agent_control: Arc::new(RunControl::default()),
            agent_threads: Vec::new(),
            vm_fd,
            _guest_memfds: guest_memfds,
        })
    }
}

/// What every VM with private memory must refuse, checked alike for
/// SEV-SNP (`vm/snp.rs`) and TDX (`vm/tdx.rs`).
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    /// `config` (an SEV-SNP or TDX test configuration) with an entropy device.
    pub(crate) fn with_rng(mut config: VmConfig) -> VmConfig {
        config.devices.rng = Some(crate::config::RngConfig {
            src: "/dev/urandom".into(),
        });
        config
    }

    /// Checks that `vm`'s one device (from [`with_rng`]) is confined to its
    /// shared window: it may not start until the guest's conversion of the
    /// window (`KVM_HC_MAP_GPA_RANGE`, as an SNP page-state change or a TDX
    /// MapGPA arrives) is recorded there, then it starts; the emulated
    /// page-state ports only answer queries.
    pub(crate) fn assert_devices_confined(vm: &Vm) {
        use covm_devices::virtio::MemoryGate;
        use covm_guest_abi::ports::page_state;
        assert_eq!(
            vm.pci_devices(),
            vec![("__rng".to_string(), "0000:00:01.0".to_string())]
        );
        let window = vm.pci.as_ref().and_then(|p| p.shared_window()).expect("confined");
        assert!(window.start().is_err(), "nothing shared yet");
        let shared = window.hardware_convert(
            covm_guest_abi::layout::SHARED_WINDOW,
            covm_guest_abi::layout::SHARED_WINDOW_SIZE / 4096,
            false,
            || Ok(0),
        );
        assert_eq!(shared, Ok(0));
        window.start().unwrap();
        window.stopped();
        assert_eq!(window.request(0x400, 1, page_state::TO_PRIVATE), page_state::REFUSED);
        assert_eq!(window.request(0x400, 1, page_state::QUERY), page_state::SHARED);
    }

    /// Checks that `vm` neither logs dirty pages nor migrates, saying
    /// `refusal` why; turning dirty logging off is no error.
    pub(crate) fn assert_not_migratable(vm: &Vm, refusal: &str) {
        assert_eq!(vm.migration_refusal(), Some(refusal));
        assert_eq!(vm.set_dirty_logging(true).unwrap_err().to_string(), refusal);
        assert!(vm.dirty_bitmaps().is_err());
        assert!(vm.clear_dirty(0, 1).is_err());
        vm.set_dirty_logging(false).unwrap();
    }

    /// Checks that `config`'s VM is refused as an incoming one (with
    /// `refusal`, where this machine has KVM), then has `build` make it
    /// with a dirty ring on this machine's KVM and returns why that was
    /// refused (None without KVM).
    pub(crate) fn dirty_ring_refusal(
        config: VmConfig,
        refusal: &str,
        build: impl FnOnce(&VmConfig, &Kvm, ExitNotifier) -> Result<Vm, VmError>,
    ) -> Option<String> {
        let notify: ExitNotifier = Arc::new(|_| {});
        let err = Vm::new_incoming(&config, Instant::now(), notify.clone())
            .err()
            .expect("refused")
            .to_string();
        if crate::vm::kvm::open().is_ok() {
            assert_eq!(err, refusal);
        }
        let ring = VmConfig {
            dirty_tracking: DirtyTracking::Ring { entries: 4096 },
            ..config
        };
        let kvm = crate::platform::hardware::hybrid::kvm_or_skip()?;
        let err = build(&ring, &kvm, notify).err().expect("refused");
        Some(err.to_string())
    }
}
