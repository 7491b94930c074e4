//! Building a plain or emulated_cvm VM: KVM's VM and chips, guest memory,
//! the devices, the vCPUs with their CPUID, MSRs and boot state, the
//! payload loaded and the platform launched over it. (An SEV-SNP VM and a
//! TD are built around their launches: `snp.rs`, `tdx.rs`.)

use super::confidential::{CvmRuntime, LaunchMode};
use super::devices::{build_bus, ExitSink, SerialIrq};
use super::pci::PciDevices;
use super::{kvm, memory, Vm, VmError};
use crate::arch::{cpuid, regs};
use crate::config::{DirtyTracking, VmConfig};
use crate::dirty::ring::DirtyRings;
use crate::dirty::{self, DirtyTracker};
use crate::platform::{self, image, Platform, PlatformConfig};
use crate::vcpu::control::RunControl;
use crate::vcpu::{ExitNotifier, Vcpu};
use covm_devices::power::PowerButton;
use covm_devices::{MmioBus, PowerSink};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use memory::GuestMemory;
use std::sync::Arc;
use std::time::Instant;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Where KVM keeps the real-mode TSS (three pages below the BIOS area, in
/// the MMIO hole, never RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// KVM's identity-map page for real mode on Intel, just below the TSS.
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// How a new VM gets its first state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Load the payload and set the boot registers.
    Boot,
    /// Leave memory and registers for a migration to fill.
    Incoming,
    /// Boot a confidential VM's firmware in incoming mode: the agent
    /// imports memory and state.
    IncomingConfidential,
}

impl Vm {
    /// Builds the VM described by `config` and loads its payload; `start`
    /// is covm's start, from which boot markers are timed, and `notify`
    /// hears why the VM ended (guest power requests and crashes).
    pub fn new(config: &VmConfig, start: Instant, notify: ExitNotifier) -> Result<Self, VmError> {
        Self::build(config, start, notify, Origin::Boot, None)
    }

    /// A plain incoming VM ([`Vm::new_incoming`]) around `memory`, which
    /// the caller allocated for `config` (a migration writes pages into it
    /// while this runs).
    pub fn new_incoming_on(
        config: &VmConfig,
        memory: GuestMemory,
        start: Instant,
        notify: ExitNotifier,
    ) -> Result<Self, VmError> {
        debug_assert!(!config.platform.is_confidential());
        Self::build(config, start, notify, Origin::Incoming, Some(memory))
    }

    /// Builds the VM described by `config` with nothing loaded: memory and
    /// state arrive by migration ([`Vm::restore_state`]).
    ///
    /// A confidential VM is instead launched exactly as its source was (so
    /// it measures the same) in incoming mode: its workload vCPUs park and
    /// only the agent runs ([`Vm::start_incoming_agent`]).
    pub fn new_incoming(config: &VmConfig, start: Instant, notify: ExitNotifier) -> Result<Self, VmError> {
        if config.platform.is_confidential() {
            return Self::build(config, start, notify, Origin::IncomingConfidential, None);
        }
        Self::build(config, start, notify, Origin::Incoming, None)
    }

    /// `memory`: guest memory allocated for `config` already, or `None`.
    fn build(
        config: &VmConfig,
        start: Instant,
        notify: ExitNotifier,
        origin: Origin,
        memory: Option<GuestMemory>,
    ) -> Result<Self, VmError> {
        match &config.platform {
            PlatformConfig::SevSnp(snp) => return Self::build_snp_on_kvm(config, snp, start, notify, origin),
            PlatformConfig::Tdx(tdx) => return Self::build_tdx_on_kvm(config, tdx, start, notify, origin),
            PlatformConfig::Plain | PlatformConfig::EmulatedCvm(_) => {}
        }
        let kvm = kvm::open()?;
        let call = |what| move |source| VmError::KvmCall { what, source };
        let vm_fd = kvm.create_vm().map_err(call("create a VM"))?;
        // Needed only to migrate; a kernel without it can still run VMs.
        // Enabled before any memory slot exists: later it costs ~14 ms here.
        let manual_dirty_protect = match dirty::log::enable_manual_protect(&vm_fd) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{e}: this VM cannot be live-migrated");
                false
            }
        };
        // The ring must be enabled before the first vCPU exists.
        if let DirtyTracking::Ring { entries } = config.dirty_tracking {
            dirty::ring::enable(&vm_fd, entries)?;
        }
        let memory = match memory {
            Some(memory) => memory,
            None => memory::allocate(config.memory.size)?,
        };
        let cvm = config.platform.is_confidential().then(|| {
            let mode = match origin {
                Origin::IncomingConfidential => LaunchMode::Incoming,
                _ => LaunchMode::Fresh,
            };
            Arc::new(CvmRuntime::new(mode, memory.clone(), u32::from(config.agent_vcpus())))
        });
        // Order matters for start-up time: a memory slot registered before
        // the in-kernel irqchip exists costs about 0.5 ms on this project's
        // hosts, after it about 4 ms (docs/benchmarks.md).
        register_memory(&vm_fd, &memory)?;
        create_chips(&vm_fd)?;
        let vm_fd = Arc::new(vm_fd);
        let sink: Arc<dyn PowerSink> = Arc::new(ExitSink(notify.clone()));
        let power_button = PowerButton::default();
        let (mut bus, serial) = build_bus(
            &vm_fd,
            config,
            (sink, power_button.clone()),
            start,
            cvm.as_ref(),
            SerialIrq::Wired,
        )?;
        let mut mmio = MmioBus::new();
        let incoming = origin != Origin::Boot;
        // A confidential guest's devices see only its shared window.
        let pci = match cvm {
            Some(_) => {
                PciDevices::build_confined(&vm_fd, &memory, &config.devices, (incoming, false), &mut bus, &mut mmio)?
            }
            None => PciDevices::build(&vm_fd, &memory, &config.devices, incoming, &mut bus, &mut mmio)?,
        };
        let (mut vcpus, platform) = build_vcpus(&kvm, &vm_fd, &memory, config, origin)?;
        let platform: Arc<dyn Platform> = Arc::from(platform);
        if let Some(cvm) = &cvm {
            cvm.set_platform(platform.clone());
            for vcpu in &mut vcpus {
                vcpu.set_runtime(cvm.clone());
            }
        }

        let dirty = match config.dirty_tracking {
            DirtyTracking::Log => DirtyTracker::Log {
                manual_protect: manual_dirty_protect,
            },
            DirtyTracking::Ring { entries } => {
                let fds: Vec<_> = vcpus.iter().map(Vcpu::shared_fd).collect();
                let guards: Vec<_> = fds
                    .iter()
                    .map(|fd| fd.lock().unwrap_or_else(|p| p.into_inner()))
                    .collect();
                let refs: Vec<&VcpuFd> = guards.iter().map(|g| &**g).collect();
                let rings = Arc::new(DirtyRings::new(&vm_fd, &refs, entries, &memory)?);
                for vcpu in &mut vcpus {
                    vcpu.set_dirty_rings(rings.clone());
                }
                DirtyTracker::Ring(rings)
            }
        };
        let agent_vcpus = split_off_agents(&mut vcpus, config);
        let msr_indices = msr_indices(&kvm)?;
        Ok(Self {
            vcpu_counters: vcpus.iter().chain(&agent_vcpus).map(Vcpu::counters).collect(),
            vcpu_fds: vcpus.iter().map(Vcpu::shared_fd).collect(),
            memory,
            vcpus,
            threads: Arc::default(),
            throttler: None,
            dirty,
            buses: crate::vcpu::Buses {
                pio: Arc::new(bus),
                mmio: Arc::new(mmio),
            },
            pci: Some(pci),
            control: Arc::new(RunControl::default()),
            notify,
            serial,
            power_button,
            msr_indices,
            platform,
            cvm,
            agent_vcpus,
            agent_control: Arc::new(RunControl::default()),
            agent_threads: Vec::new(),
            vm_fd,
            _guest_memfds: Vec::new(),
        })
    }
}

/// Takes the migration agent's vCPUs off the end of `vcpus` (they have the
/// highest APIC IDs) and marks them as the agent's.
pub(super) fn split_off_agents(vcpus: &mut Vec<Vcpu>, config: &VmConfig) -> Vec<Vcpu> {
    vcpus
        .split_off(vcpus.len() - usize::from(config.agent_vcpus()))
        .into_iter()
        .map(Vcpu::into_agent)
        .collect()
}

/// The MSRs KVM can save and restore: what a snapshot or migration of
/// each vCPU carries.
pub(super) fn msr_indices(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, VmError> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(|source| VmError::KvmCall {
            what: "list the MSRs",
            source,
        })?
        .as_slice()
        .to_vec())
}

/// The in-kernel interrupt controllers and timer, and KVM's real-mode helpers.
pub(super) fn create_chips(vm_fd: &VmFd) -> Result<(), VmError> {
    let call = |what| move |source| VmError::KvmCall { what, source };
    vm_fd
        .set_tss_address(KVM_TSS_ADDRESS)
        .map_err(call("set the TSS address"))?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(call("set the identity map address"))?;
    vm_fd.create_irq_chip().map_err(call("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(call("create the in-kernel PIT"))
}

/// Loads the payload, creates the vCPUs with their boot state and
/// launches the platform over what was loaded.
fn build_vcpus(
    kvm: &kvm_ioctls::Kvm,
    vm_fd: &VmFd,
    memory: &GuestMemory,
    config: &VmConfig,
    origin: Origin,
) -> Result<(Vec<Vcpu>, Box<dyn Platform>), VmError> {
    let call = |what| move |source| VmError::KvmCall { what, source };

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(call("read the supported CPUID"))?;
    let total = config.kvm_vcpus();
    let mut vcpus = (0..total)
        .map(|i| Vcpu::create(vm_fd, i))
        .collect::<Result<Vec<_>, _>>()?;
    let topo = cpuid::Topology {
        vcpus: total,
        // Every vCPU runs at the host's TSC rate.
        tsc_khz: vcpus[0].fd().get_tsc_khz().map_err(call("read the TSC frequency"))?,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    for vcpu in &mut vcpus {
        vcpu.configure(&supported, topo)?;
    }
    let platform = match origin {
        Origin::Boot | Origin::IncomingConfidential => {
            let loaded = image::load(memory, config)?;
            let entry = loaded.entry;
            tracing::info!("booting {:?} entry at {:#x}", entry.mode, entry.entry);
            let platform = config.platform.launch(memory, &loaded.image)?;
            regs::apply_bsp(&vcpus[0].fd(), &loaded.bsp)?;
            platform
        }
        Origin::Incoming => platform::launch_incoming(config)?,
    };
    Ok((vcpus, platform))
}

/// Gives KVM each RAM region as a memory slot.
fn register_memory(vm_fd: &VmFd, memory: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = region.as_ptr() as u64;
        let slot_def = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the region is a live mapping owned by `memory`, which the VM
        // keeps for as long as the VM fd exists, and slots do not overlap.
        unsafe { vm_fd.set_user_memory_region(slot_def) }.map_err(|source| VmError::KvmCall {
            what: "register guest memory",
            source,
        })?;
    }
    Ok(())
}
