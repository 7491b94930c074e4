//! A VM: KVM objects, guest memory, devices and vCPUs, and running it.
//!
//! A plain or emulated_cvm VM is built here; an SEV-SNP VM through its
//! launch ([`snp`]); a TDX VM through its launch ([`tdx`]).

pub mod confidential;
pub mod kvm;
pub mod memory;

mod private;
mod snp;
mod tdx;
#[cfg(test)]
pub(crate) use snp::tests as snp_tests;
#[cfg(test)]
pub(crate) use tdx::tests as tdx_tests;

use crate::arch::{cpuid, regs};
use crate::boot::BootError;
use crate::config::{DirtyTracking, SerialMode, VmConfig};
use crate::dirty::ring::DirtyRings;
use crate::dirty::{self, DirtyError, DirtyTracker};
use crate::exit::VmExit;
use crate::platform::{self, image, Platform, PlatformConfig, PlatformError};
use crate::state::snapshot::{SnapshotError, VmSnapshot, SNAPSHOT_VERSION};
use crate::state::{self, chips};
use crate::vcpu::control::{Desired, RunControl, THROTTLE_PERIOD};
use crate::vcpu::{ExitNotifier, Vcpu, VcpuCounters, VcpuError};
use confidential::vmsa_area::{self, VmsaAreaError};
use confidential::{runtime::CvmPort, CvmRuntime, LaunchMode};
use covm_devices::debug_port::DebugPort;
use covm_devices::i8042::{self, I8042};
use covm_devices::power::{PowerButton, PowerDevice};
use covm_devices::serial::{self, SerialDevice, SerialOutput};
use covm_devices::{BusError, PioBus, PowerAction, PowerSink};
use covm_guest_abi::ports;
use covm_migration::vm::DirtyBitmap;
use kvm::KvmError;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use memory::{GuestMemory, MemoryError};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where KVM keeps the real-mode TSS (three pages below the BIOS area, in
/// the MMIO hole, never RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// KVM's identity-map page for real mode on Intel, just below the TSS.
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Errors building a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A KVM VM-level call failed.
    #[error("cannot {what}: {source}")]
    KvmCall {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the payload.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Loading the payload and boot structures.
    #[error(transparent)]
    Load(#[from] image::LoadError),
    /// The platform (root key, measurement).
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Boot registers.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Device placement.
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    /// The serial output file.
    #[error("--serial: cannot create {path}: {source}")]
    SerialFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The in-kernel chips' state.
    #[error(transparent)]
    Chips(#[from] chips::ChipsError),
    /// A vCPU's state.
    #[error(transparent)]
    VcpuState(#[from] state::vcpu::VcpuStateError),
    /// A snapshot that does not fit.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A device's state.
    #[error(transparent)]
    DeviceState(#[from] covm_devices::serial::StateError),
    /// Setting up dirty-page tracking.
    #[error(transparent)]
    DirtyLog(#[from] dirty::log::DirtyLogError),
    /// Tracking or reading dirty pages.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// A page range that is not guest RAM.
    #[error("{pages} pages from {gpa:#x} are outside guest memory")]
    OutsideMemory {
        /// Start of the range.
        gpa: u64,
        /// Its length in pages.
        pages: u64,
    },
    /// /proc/self/pagemap could not be read.
    #[error("cannot read /proc/self/pagemap: {0}")]
    PageMap(std::io::Error),
    /// Something this host's KVM cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The emulated platform's VMSA area.
    #[error(transparent)]
    VmsaArea(#[from] VmsaAreaError),
    /// The agent committed a migration: the guest runs elsewhere now.
    #[error("this VM's migration agent read the destination's Commit: the guest runs at the destination and never runs here again")]
    Retired,
    /// An SEV-SNP VM's construction.
    #[error(transparent)]
    Snp(#[from] crate::platform::snp::vm::SnpVmError),
    /// A TDX VM's construction.
    #[error(transparent)]
    Tdx(#[from] crate::platform::tdx::vm::TdxVmError),
    /// An incoming confidential VM's firmware did not get ready.
    #[error("the incoming confidential VM's firmware was not ready within {seconds} s ({what})")]
    AgentNotReady {
        /// How long covm waited.
        seconds: u64,
        /// What was missing.
        what: String,
    },
}

/// Forwards the guest's power requests to whoever waits for the VM to end.
struct ExitSink(ExitNotifier);

impl PowerSink for ExitSink {
    fn request(&self, action: PowerAction) {
        tracing::info!("guest power request: {action:?}");
        (self.0)(VmExit::Power(action));
    }
}

/// Counters of a VM, by device, for `vm.counters`.
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

/// A VM: built, then started, paused, resumed and stopped by the VMM.
pub struct Vm {
    // Dropped last (declaration order): vCPU fds and memory go first.
    memory: GuestMemory,
    vcpus: Vec<Vcpu>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    throttler: Option<JoinHandle<()>>,
    /// How dirty pages are tracked (dirty log, dirty rings, or not at all
    /// for an SEV-SNP VM's or a TD's guest_memfd-backed memory).
    dirty: DirtyTracker,
    bus: Arc<PioBus>,
    control: Arc<RunControl>,
    notify: ExitNotifier,
    vcpu_counters: Vec<Arc<VcpuCounters>>,
    vcpu_fds: Vec<Arc<Mutex<VcpuFd>>>,
    serial: Option<SharedSerial>,
    /// Pressed by `vm.power-button`, read by the guest on the power port.
    power_button: PowerButton,
    msr_indices: Vec<u32>,
    platform: Arc<dyn Platform>,
    /// A confidential VM's shared runtime (ports, agent, park gate).
    cvm: Option<Arc<CvmRuntime>>,
    /// The agent's vCPU (a confidential VM's last), run apart from the
    /// workload: pausing or throttling the guest never stops the agent.
    agent_vcpu: Option<Vcpu>,
    agent_control: Arc<RunControl>,
    agent_thread: Option<JoinHandle<()>>,
    // Kept open for the VM's lifetime: dropping it destroys the VM (the
    // vCPUs of a VM with private memory share it for their conversions).
    vm_fd: Arc<VmFd>,
    /// The guest_memfds backing an SEV-SNP VM's or a TD's private memory,
    /// kept open with the VM.
    _guest_memfds: Vec<OwnedFd>,
}

/// COM1, shared by the port bus and the VM (for its state and counters).
type SharedSerial = Arc<Mutex<SerialDevice>>;

/// How a new VM gets its first state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
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
        Self::build(config, start, notify, Origin::Boot)
    }

    /// Builds the VM described by `config` with nothing loaded: memory and
    /// state arrive by migration ([`Vm::restore_state`]).
    ///
    /// A confidential VM is instead launched exactly as its source was (so
    /// it measures the same) in incoming mode: its workload vCPUs park and
    /// only the agent runs ([`Vm::start_incoming_agent`]).
    pub fn new_incoming(config: &VmConfig, start: Instant, notify: ExitNotifier) -> Result<Self, VmError> {
        if config.platform.is_confidential() {
            return Self::build(config, start, notify, Origin::IncomingConfidential);
        }
        Self::build(config, start, notify, Origin::Incoming)
    }

    fn build(config: &VmConfig, start: Instant, notify: ExitNotifier, origin: Origin) -> Result<Self, VmError> {
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
        let memory = memory::allocate(config.memory.size)?;
        let cvm = config.platform.is_confidential().then(|| {
            let mode = match origin {
                Origin::IncomingConfidential => LaunchMode::Incoming,
                _ => LaunchMode::Fresh,
            };
            Arc::new(CvmRuntime::new(mode, memory.clone()))
        });
        // Order matters for start-up time: a memory slot registered before
        // the in-kernel irqchip exists costs about 0.5 ms on this project's
        // hosts, after it about 4 ms (docs/benchmarks.md).
        register_memory(&vm_fd, &memory)?;
        create_chips(&vm_fd)?;
        let sink: Arc<dyn PowerSink> = Arc::new(ExitSink(notify.clone()));
        let power_button = PowerButton::default();
        let (bus, serial) = build_bus(
            &vm_fd,
            config,
            (sink, power_button.clone()),
            start,
            cvm.as_ref(),
            SerialIrq::Wired,
        )?;
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
        // The agent's vCPU is the last one (the highest APIC ID).
        let agent_vcpu = cvm
            .as_ref()
            .map(|_| vcpus.pop().expect("a confidential VM has an agent vCPU"));
        let msr_indices = msr_indices(&kvm)?;
        Ok(Self {
            vcpu_counters: vcpus.iter().chain(agent_vcpu.as_ref()).map(Vcpu::counters).collect(),
            vcpu_fds: vcpus.iter().map(Vcpu::shared_fd).collect(),
            memory,
            vcpus,
            threads: Arc::default(),
            throttler: None,
            dirty,
            bus: Arc::new(bus),
            control: Arc::new(RunControl::default()),
            notify,
            serial,
            power_button,
            msr_indices,
            platform,
            cvm,
            agent_vcpu,
            agent_control: Arc::new(RunControl::default()),
            agent_thread: None,
            vm_fd: Arc::new(vm_fd),
            _guest_memfds: Vec::new(),
        })
    }

    /// Why this VM cannot migrate, if it cannot (`vm.send-migration` and
    /// dirty logging are refused with it).
    pub fn migration_refusal(&self) -> Option<&'static str> {
        self.dirty.unsupported()
    }

    /// Presses the VM's power button (`vm.power-button`): the guest sees it
    /// on its next read of the power port (covm's built-in firmware then
    /// powers off).
    pub fn press_power_button(&self) {
        self.power_button.press();
    }

    /// The VM's platform, chosen at launch.
    pub fn platform(&self) -> &dyn Platform {
        &*self.platform
    }

    /// Every piece of state but memory, encoded; the vCPUs must be paused
    /// (or never started).
    ///
    /// On a confidential VM the vCPUs' states are private: the platform
    /// layer puts them in the agent's VMSA area (as SEV-SNP hardware keeps
    /// them in VMSA pages) and the returned state holds the host-owned
    /// devices only.
    pub fn save_state(&self) -> Result<Vec<u8>, VmError> {
        let chips = chips::save(&self.vm_fd)?;
        let mut vcpus = Vec::with_capacity(self.vcpu_fds.len());
        for (index, fd) in self.vcpu_fds.iter().enumerate() {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            let state = state::vcpu::save(&fd, index as u8, &self.msr_indices)?;
            match &self.cvm {
                Some(_) => vmsa_area::put(&self.memory, index, &state)?,
                None => vcpus.push(state),
            }
        }
        let serial = self
            .serial
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).state());
        Ok(VmSnapshot {
            version: SNAPSHOT_VERSION,
            chips,
            vcpus,
            serial,
        }
        .encode())
    }

    /// Loads state from [`Vm::save_state`] into a VM that has not started.
    ///
    /// On a confidential VM the vCPUs' states come from the agent's VMSA
    /// area, where the agent left the states it opened and checked.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), VmError> {
        let in_state = if self.cvm.is_some() { 0 } else { self.vcpu_fds.len() };
        let snapshot = VmSnapshot::decode(bytes, in_state, self.serial.is_some())?;
        chips::restore(&self.vm_fd, &snapshot.chips)?;
        for (index, fd) in self.vcpu_fds.iter().enumerate() {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            match &self.cvm {
                Some(_) => state::vcpu::restore(&fd, index as u8, &vmsa_area::take(&self.memory, index)?)?,
                None => state::vcpu::restore(&fd, index as u8, &snapshot.vcpus[index])?,
            }
        }
        if let (Some(serial), Some(state)) = (&self.serial, &snapshot.serial) {
            serial.lock().unwrap_or_else(|p| p.into_inner()).restore(state)?;
        }
        Ok(())
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Starts one thread per vCPU (the agent's too). On an incoming
    /// confidential VM, whose threads already run, releases the parked
    /// workload vCPUs instead: their imported state is loaded.
    pub fn start(&mut self) -> Result<(), VmError> {
        if let Some(cvm) = self.cvm.as_ref().filter(|c| c.mode() == LaunchMode::Incoming) {
            if self.vcpus.is_empty() {
                cvm.release_workload();
                return Ok(());
            }
        }
        for vcpu in self.vcpus.drain(..) {
            let thread = vcpu.spawn(self.bus.clone(), self.control.clone(), self.notify.clone())?;
            self.threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
        }
        if let Some(agent) = self.agent_vcpu.take() {
            self.agent_thread = Some(agent.spawn(self.bus.clone(), self.agent_control.clone(), self.notify.clone())?);
        }
        Ok(())
    }

    /// Incoming confidential VM: starts its vCPUs and waits until the
    /// workload vCPUs parked and the agent announced itself, so nothing
    /// but the agent touches guest memory while it imports.
    pub fn start_incoming_agent(&mut self, timeout: std::time::Duration) -> Result<(), VmError> {
        let cvm = self.cvm.clone().expect("only for confidential VMs");
        let workload = self.vcpus.len();
        self.start()?;
        let deadline = Instant::now() + timeout;
        loop {
            let (parked, ready) = (cvm.parked(), cvm.agent_ready());
            if parked == workload && ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmError::AgentNotReady {
                    seconds: timeout.as_secs(),
                    what: format!(
                        "{parked} of {workload} workload vCPUs parked, agent {}",
                        if ready { "ready" } else { "not ready" }
                    ),
                });
            }
            // Short polls: the firmware parks within a few milliseconds,
            // and every migration's handshake waits for this.
            std::thread::sleep(std::time::Duration::from_micros(250));
        }
    }

    /// The confidential runtime (ports, agent mailbox), on a confidential VM.
    pub fn cvm(&self) -> Option<&Arc<CvmRuntime>> {
        self.cvm.as_ref()
    }

    /// Parks every workload vCPU outside `KVM_RUN`; returns once all are
    /// parked. The agent's vCPU keeps running.
    pub fn pause(&self) {
        self.control
            .pause(&self.threads.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Lets the vCPUs run again; refused once the agent committed a
    /// migration away.
    pub fn resume(&self) -> Result<(), VmError> {
        if self.cvm.as_ref().is_some_and(|c| c.retired()) {
            return Err(VmError::Retired);
        }
        self.control.resume();
        Ok(())
    }

    /// Stops and joins the vCPU threads; dropping the VM then frees it.
    pub fn stop(mut self) {
        self.set_throttle(0);
        if let Some(cvm) = &self.cvm {
            cvm.close();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        self.control.stop(threads);
        if let Some(agent) = self.agent_thread.take() {
            self.agent_control.stop(vec![agent]);
        }
    }

    /// Slows the vCPUs to run only `100 - percent` % of the time (0 = full
    /// speed), so that a migration's pre-copy can converge.
    pub fn set_throttle(&mut self, percent: u8) {
        self.control.set_throttle(percent);
        if percent > 0 && self.throttler.is_none() {
            let (control, threads) = (self.control.clone(), self.threads.clone());
            self.throttler = Some(std::thread::spawn(move || {
                while control.throttle() > 0 && control.desired() != Desired::Stop {
                    control.next_throttle_period(&threads.lock().unwrap_or_else(|p| p.into_inner()));
                    std::thread::sleep(THROTTLE_PERIOD);
                }
            }));
        } else if percent == 0 {
            if let Some(throttler) = self.throttler.take() {
                let _ = throttler.join();
            }
        }
    }

    /// Turns dirty-page tracking on or off for all of guest memory.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        Ok(self.dirty.set_logging(&self.vm_fd, &self.memory, on)?)
    }

    /// Pages written since last cleared, one bitmap per memory region.
    pub fn dirty_bitmaps(&self) -> Result<Vec<DirtyBitmap>, VmError> {
        Ok(self.dirty.dirty_bitmaps(&self.vm_fd, &self.memory)?)
    }

    /// For each of `pages` guest pages from `gpa` (inside one region):
    /// whether the host never populated it, so it is zero without reading.
    pub fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmError> {
        let (_, region) = memory::region_of(&self.memory, gpa, pages * dirty::log::PAGE_SIZE)
            .ok_or(VmError::OutsideMemory { gpa, pages })?;
        let host = region.as_ptr() as u64 + (gpa - region.start_addr().0);
        memory::unpopulated_host_pages(host, pages).map_err(VmError::PageMap)
    }

    /// Whether covm wrote the page at `gpa` through vm-memory since the VM
    /// was created (the guest's own writes are not counted: this serves
    /// incoming VMs, which do not run while they are filled).
    pub fn written_since_creation(&self, gpa: u64) -> bool {
        memory::region_of(&self.memory, gpa, 1)
            .is_some_and(|(_, r)| memory::vmm_writes(r).is_addr_set((gpa - r.start_addr().0) as usize))
    }

    /// Clears and re-arms dirty tracking of `pages` pages from `gpa`.
    pub fn clear_dirty(&self, gpa: u64, pages: u64) -> Result<(), VmError> {
        Ok(self.dirty.clear(&self.vm_fd, &self.memory, gpa, pages)?)
    }

    /// Device and vCPU counters.
    pub fn counters(&self) -> Counters {
        let mut all = Counters::new();
        for (index, c) in self.vcpu_counters.iter().enumerate() {
            let vcpu = all.entry(format!("vcpu{index}")).or_default();
            vcpu.insert("io_exits".into(), c.io_exits.load(Ordering::Relaxed));
            vcpu.insert("mmio_exits".into(), c.mmio_exits.load(Ordering::Relaxed));
            vcpu.insert("interrupted".into(), c.interrupted.load(Ordering::Relaxed));
            if matches!(self.dirty, DirtyTracker::Ring(_)) {
                vcpu.insert("dirty_ring_full".into(), c.dirty_ring_full.load(Ordering::Relaxed));
            }
        }
        if let Some(c) = self
            .serial
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).counters())
        {
            let serial = all.entry("serial".into()).or_default();
            serial.insert("tx_bytes".into(), c.tx_bytes.load(Ordering::Relaxed));
            serial.insert("tx_lost".into(), c.tx_lost.load(Ordering::Relaxed));
        }
        all
    }
}

/// The MSRs KVM can save and restore: what a snapshot or migration of
/// each vCPU carries.
fn msr_indices(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, VmError> {
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
fn create_chips(vm_fd: &VmFd) -> Result<(), VmError> {
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

/// Whether COM1's interrupt reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SerialIrq {
    /// IRQ 4 through the in-kernel irqchip (an irqfd on GSI 4).
    Wired,
    /// Not wired: the VM has no in-kernel PIC or IOAPIC to route GSI 4 to
    /// (a TD's split irqchip); the guest polls COM1.
    Unwired,
}

/// Places the legacy devices on the port bus.
fn build_bus(
    vm_fd: &VmFd,
    config: &VmConfig,
    (sink, power_button): (Arc<dyn PowerSink>, PowerButton),
    start: Instant,
    cvm: Option<&Arc<CvmRuntime>>,
    serial_irq: SerialIrq,
) -> Result<(PioBus, Option<SharedSerial>), VmError> {
    let mut bus = PioBus::new();
    let mut serial = None;
    let output: Option<SerialOutput> = match &config.serial {
        SerialMode::Tty => Some(Box::new(std::io::stdout())),
        SerialMode::Null => Some(Box::new(std::io::sink())),
        SerialMode::Off => None,
        SerialMode::File(path) => {
            let file = std::fs::File::create(path).map_err(|source| VmError::SerialFile {
                path: path.display().to_string(),
                source,
            })?;
            Some(Box::new(file))
        }
    };
    if let Some(output) = output {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(VmError::EventFd)?;
        if serial_irq == SerialIrq::Wired {
            vm_fd
                .register_irqfd(&irq, serial::COM1_IRQ)
                .map_err(|source| VmError::KvmCall {
                    what: "wire the serial interrupt",
                    source,
                })?;
        }
        let uart = Arc::new(Mutex::new(SerialDevice::new(irq, output)));
        serial = Some(uart.clone());
        bus.insert(serial::COM1_PORT, serial::PORT_COUNT, uart)?;
    }
    let keyboard = Arc::new(Mutex::new(I8042::new(sink.clone())));
    bus.insert(i8042::DATA_PORT, i8042::COMMAND_PORT - i8042::DATA_PORT + 1, keyboard)?;
    bus.insert(ports::DEBUG_PORT, 1, Arc::new(Mutex::new(DebugPort::new(start))))?;
    bus.insert(
        ports::POWER,
        1,
        Arc::new(Mutex::new(PowerDevice::new(sink, power_button))),
    )?;
    for (port, device) in cvm.map(CvmPort::all).unwrap_or_default() {
        bus.insert(port, 4, Arc::new(Mutex::new(device)))?;
    }
    Ok((bus, serial))
}
