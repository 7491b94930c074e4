//! A VM: KVM objects, guest memory, devices and vCPUs, and running it.

use crate::arch::{cpuid, regs};
use crate::boot::BootError;
use crate::config::{DirtyTracking, SerialMode, VmConfig};
use crate::dirty_ring::{self, DirtyRings};
use crate::exit::VmExit;
use crate::kvm::{self, KvmError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::platform::{self, image, Platform, PlatformError};
use crate::vcpu::{ExitNotifier, Vcpu, VcpuCounters, VcpuError};
use crate::vcpu_control::{Desired, RunControl, THROTTLE_PERIOD};
use crate::vm_snapshot::{SnapshotError, VmSnapshot, SNAPSHOT_VERSION};
use crate::{dirty_log, machine_state, vcpu_state};
use covm_devices::debug_port::DebugPort;
use covm_devices::i8042::{self, I8042};
use covm_devices::power::PowerDevice;
use covm_devices::serial::{self, SerialDevice, SerialOutput};
use covm_devices::{BusError, PioBus, PowerAction, PowerSink};
use covm_guest_abi::ports;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use std::collections::BTreeMap;
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
    Chips(#[from] machine_state::ChipsError),
    /// A vCPU's state.
    #[error(transparent)]
    VcpuState(#[from] vcpu_state::VcpuStateError),
    /// A snapshot that does not fit.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A device's state.
    #[error(transparent)]
    DeviceState(#[from] covm_devices::serial::StateError),
    /// Dirty logging.
    #[error(transparent)]
    DirtyLog(#[from] dirty_log::DirtyLogError),
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
    manual_dirty_protect: bool,
    /// The dirty rings, in ring mode; `None` in bitmap (log) mode.
    dirty_rings: Option<Arc<DirtyRings>>,
    bus: Arc<PioBus>,
    control: Arc<RunControl>,
    notify: ExitNotifier,
    vcpu_counters: Vec<Arc<VcpuCounters>>,
    vcpu_fds: Vec<Arc<Mutex<VcpuFd>>>,
    serial: Option<SharedSerial>,
    msr_indices: Vec<u32>,
    platform: Box<dyn Platform>,
    // Kept open for the VM's lifetime: dropping it destroys the VM.
    vm_fd: VmFd,
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
    pub fn new_incoming(config: &VmConfig, start: Instant, notify: ExitNotifier) -> Result<Self, VmError> {
        Self::build(config, start, notify, Origin::Incoming)
    }

    fn build(config: &VmConfig, start: Instant, notify: ExitNotifier, origin: Origin) -> Result<Self, VmError> {
        let kvm = kvm::open()?;
        let call = |what| move |source| VmError::KvmCall { what, source };
        let vm_fd = kvm.create_vm().map_err(call("create a VM"))?;
        // Needed only to migrate; a kernel without it can still run VMs.
        // Enabled before any memory slot exists: later it costs ~14 ms here.
        let manual_dirty_protect = match dirty_log::enable_manual_protect(&vm_fd) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{e}: this VM cannot be live-migrated");
                false
            }
        };
        // The ring must be enabled before the first vCPU exists.
        if let DirtyTracking::Ring { entries } = config.dirty_tracking {
            dirty_ring::enable(&vm_fd, entries)?;
        }
        let memory = memory::allocate(config.memory.size)?;
        // Order matters for start-up time: a memory slot registered before
        // the in-kernel irqchip exists costs about 0.5 ms on this project's
        // hosts, after it about 4 ms (docs/benchmarks.md).
        register_memory(&vm_fd, &memory)?;
        create_chips(&vm_fd)?;
        let sink: Arc<dyn PowerSink> = Arc::new(ExitSink(notify.clone()));
        let (bus, serial) = build_bus(&vm_fd, config, sink, start)?;
        let (mut vcpus, platform) = build_vcpus(&kvm, &vm_fd, &memory, config, origin)?;
        let dirty_rings = match config.dirty_tracking {
            DirtyTracking::Log => None,
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
                Some(rings)
            }
        };
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(call("list the MSRs"))?
            .as_slice()
            .to_vec();
        Ok(Self {
            vcpu_counters: vcpus.iter().map(Vcpu::counters).collect(),
            vcpu_fds: vcpus.iter().map(Vcpu::shared_fd).collect(),
            memory,
            vcpus,
            threads: Arc::default(),
            throttler: None,
            manual_dirty_protect,
            dirty_rings,
            bus: Arc::new(bus),
            control: Arc::new(RunControl::default()),
            notify,
            serial,
            msr_indices,
            platform,
            vm_fd,
        })
    }

    /// The VM's platform, chosen at launch.
    pub fn platform(&self) -> &dyn Platform {
        &*self.platform
    }

    /// Every piece of state but memory, encoded; the vCPUs must be paused
    /// (or never started).
    pub fn save_state(&self) -> Result<Vec<u8>, VmError> {
        let chips = machine_state::save(&self.vm_fd)?;
        let mut vcpus = Vec::with_capacity(self.vcpu_fds.len());
        for (index, fd) in self.vcpu_fds.iter().enumerate() {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            vcpus.push(vcpu_state::save(&fd, index as u8, &self.msr_indices)?);
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
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), VmError> {
        let snapshot = VmSnapshot::decode(bytes, self.vcpu_fds.len(), self.serial.is_some())?;
        machine_state::restore(&self.vm_fd, &snapshot.chips)?;
        for (index, (fd, state)) in self.vcpu_fds.iter().zip(&snapshot.vcpus).enumerate() {
            let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
            vcpu_state::restore(&fd, index as u8, state)?;
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

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<(), VmError> {
        for vcpu in self.vcpus.drain(..) {
            let thread = vcpu.spawn(self.bus.clone(), self.control.clone(), self.notify.clone())?;
            self.threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
        }
        Ok(())
    }

    /// Parks every vCPU outside `KVM_RUN`; returns once all are parked.
    pub fn pause(&self) {
        self.control
            .pause(&self.threads.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Stops and joins the vCPU threads; dropping the VM then frees it.
    pub fn stop(mut self) {
        self.set_throttle(0);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        self.control.stop(threads);
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

    /// Turns dirty-page logging on or off for all of guest memory.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        if let Some(rings) = &self.dirty_rings {
            dirty_log::set_logging(&self.vm_fd, &self.memory, on)?;
            // Off: whatever was gathered belongs to a migration that ended.
            if !on {
                rings.reset()?;
            }
            return Ok(());
        }
        if on && !self.manual_dirty_protect {
            return Err(VmError::Unsupported(
                "KVM lacks manual dirty-log protection (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)",
            ));
        }
        Ok(dirty_log::set_logging(&self.vm_fd, &self.memory, on)?)
    }

    /// Pages written since last cleared: (region start, length, one bit per page).
    pub fn dirty_bitmaps(&self) -> Result<Vec<(u64, u64, Vec<u64>)>, VmError> {
        match &self.dirty_rings {
            Some(rings) => Ok(rings.dirty_bitmaps(&self.memory)?),
            None => Ok(dirty_log::dirty_bitmaps(&self.vm_fd, &self.memory)?),
        }
    }

    /// For each of `pages` guest pages from `gpa` (inside one region):
    /// whether the host never populated it, so it is zero without reading.
    pub fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmError> {
        let (_, region) = memory::region_of(&self.memory, gpa, pages * dirty_log::PAGE_SIZE)
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
        let Some(rings) = &self.dirty_rings else {
            return Ok(dirty_log::clear(&self.vm_fd, &self.memory, gpa, pages)?);
        };
        let (slot, region) = memory::region_of(&self.memory, gpa, pages * dirty_log::PAGE_SIZE)
            .ok_or(VmError::OutsideMemory { gpa, pages })?;
        let first = (gpa - region.start_addr().0) / dirty_log::PAGE_SIZE;
        rings.clear(slot, first, pages);
        dirty_log::forget_vmm_writes(region, first, pages);
        Ok(())
    }

    /// Device and vCPU counters.
    pub fn counters(&self) -> Counters {
        let mut all = Counters::new();
        for (index, c) in self.vcpu_counters.iter().enumerate() {
            let vcpu = all.entry(format!("vcpu{index}")).or_default();
            vcpu.insert("io_exits".into(), c.io_exits.load(Ordering::Relaxed));
            vcpu.insert("mmio_exits".into(), c.mmio_exits.load(Ordering::Relaxed));
            vcpu.insert("interrupted".into(), c.interrupted.load(Ordering::Relaxed));
            if self.dirty_rings.is_some() {
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
    let mut vcpus = (0..config.cpus.boot_vcpus)
        .map(|i| Vcpu::create(vm_fd, i))
        .collect::<Result<Vec<_>, _>>()?;
    let topo = cpuid::Topology {
        vcpus: config.cpus.boot_vcpus,
        // Every vCPU runs at the host's TSC rate.
        tsc_khz: vcpus[0].fd().get_tsc_khz().map_err(call("read the TSC frequency"))?,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    for vcpu in &mut vcpus {
        vcpu.configure(&supported, topo)?;
    }
    let platform = match origin {
        Origin::Boot => {
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

/// Places the legacy devices on the port bus.
fn build_bus(
    vm_fd: &VmFd,
    config: &VmConfig,
    sink: Arc<dyn PowerSink>,
    start: Instant,
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
        vm_fd
            .register_irqfd(&irq, serial::COM1_IRQ)
            .map_err(|source| VmError::KvmCall {
                what: "wire the serial interrupt",
                source,
            })?;
        let uart = Arc::new(Mutex::new(SerialDevice::new(irq, output)));
        serial = Some(uart.clone());
        bus.insert(serial::COM1_PORT, serial::PORT_COUNT, uart)?;
    }
    let keyboard = Arc::new(Mutex::new(I8042::new(sink.clone())));
    bus.insert(i8042::DATA_PORT, i8042::COMMAND_PORT - i8042::DATA_PORT + 1, keyboard)?;
    bus.insert(ports::DEBUG_PORT, 1, Arc::new(Mutex::new(DebugPort::new(start))))?;
    bus.insert(ports::POWER, 1, Arc::new(Mutex::new(PowerDevice::new(sink))))?;
    Ok((bus, serial))
}
