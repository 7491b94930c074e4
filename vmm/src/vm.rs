//! A VM: KVM objects, guest memory, devices and vCPUs, and running it.

use crate::arch::{cpuid, regs};
use crate::boot::{self, BootError};
use crate::config::{SerialMode, VmConfig};
use crate::exit::VmExit;
use crate::kvm::{self, KvmError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};
use covm_devices::debug_port::DebugPort;
use covm_devices::i8042::{self, I8042};
use covm_devices::power::PowerDevice;
use covm_devices::serial::{self, SerialDevice, SerialOutput};
use covm_devices::{BusError, PioBus, PowerAction, PowerSink};
use covm_guest_abi::ports;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, VmFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
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
}

/// Forwards the guest's power requests to the thread waiting for the VM to end.
struct ExitSink(Mutex<Sender<VmExit>>);

impl PowerSink for ExitSink {
    fn request(&self, action: PowerAction) {
        tracing::info!("guest power request: {action:?}");
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(VmExit::Power(action));
    }
}

/// A built VM, not yet running.
pub struct Vm {
    // Kept open for the VM's lifetime: dropping it would destroy the VM.
    _vm_fd: VmFd,
    memory: GuestMemory,
    vcpus: Vec<Vcpu>,
    bus: Arc<PioBus>,
    exits_tx: Sender<VmExit>,
    exits_rx: Receiver<VmExit>,
}

impl Vm {
    /// Builds the VM described by `config`; `start` is covm's start, from
    /// which boot markers are timed.
    pub fn new(config: &VmConfig, start: Instant) -> Result<Self, VmError> {
        let kvm = kvm::open()?;
        let call = |what| move |source| VmError::KvmCall { what, source };
        let vm_fd = kvm.create_vm().map_err(call("create a VM"))?;
        let memory = memory::allocate(config.memory.size)?;
        // Order matters for start-up time: a memory slot registered before
        // the in-kernel irqchip exists costs about 0.5 ms on this project's
        // hosts, after it about 4 ms (docs/benchmarks.md).
        register_memory(&vm_fd, &memory)?;
        create_chips(&vm_fd)?;
        let (bus, vcpus, exits) = build_devices_and_vcpus(&kvm, &vm_fd, &memory, config, start)?;
        let (exits_tx, exits_rx) = exits;
        Ok(Self {
            _vm_fd: vm_fd,
            memory,
            vcpus,
            bus,
            exits_tx,
            exits_rx,
        })
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Starts every vCPU and waits for the first reason to stop.
    pub fn run(self) -> Result<VmExit, VmError> {
        let Self {
            vcpus,
            bus,
            exits_tx,
            exits_rx,
            ..
        } = self;
        for vcpu in vcpus {
            // The threads are detached: covm exits when the VM ends.
            vcpu.spawn(bus.clone(), exits_tx.clone())?;
        }
        Ok(exits_rx.recv().expect("covm holds a sender, so the channel stays open"))
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

/// What [`build_devices_and_vcpus`] makes.
type Built = (Arc<PioBus>, Vec<Vcpu>, (Sender<VmExit>, Receiver<VmExit>));

/// Places the devices, loads the payload and creates the vCPUs with their
/// boot state: everything but the memory slots.
fn build_devices_and_vcpus(
    kvm: &kvm_ioctls::Kvm,
    vm_fd: &VmFd,
    memory: &GuestMemory,
    config: &VmConfig,
    start: Instant,
) -> Result<Built, VmError> {
    let call = |what| move |source| VmError::KvmCall { what, source };
    let (exits_tx, exits_rx) = channel();
    let sink: Arc<dyn PowerSink> = Arc::new(ExitSink(Mutex::new(exits_tx.clone())));
    let bus = Arc::new(build_bus(vm_fd, config, sink, start)?);

    let entry = boot::load(memory, config)?;
    tracing::info!("booting {:?} entry at {:#x}", entry.mode, entry.entry);

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
    regs::setup_bsp(vcpus[0].fd(), memory, &entry)?;
    Ok((bus, vcpus, (exits_tx, exits_rx)))
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
fn build_bus(vm_fd: &VmFd, config: &VmConfig, sink: Arc<dyn PowerSink>, start: Instant) -> Result<PioBus, VmError> {
    let mut bus = PioBus::new();
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
        let uart = SerialDevice::new(irq, output);
        bus.insert(serial::COM1_PORT, serial::PORT_COUNT, Arc::new(Mutex::new(uart)))?;
    }
    let keyboard = Arc::new(Mutex::new(I8042::new(sink.clone())));
    bus.insert(i8042::DATA_PORT, i8042::COMMAND_PORT - i8042::DATA_PORT + 1, keyboard)?;
    bus.insert(ports::DEBUG_PORT, 1, Arc::new(Mutex::new(DebugPort::new(start))))?;
    bus.insert(ports::POWER, 1, Arc::new(Mutex::new(PowerDevice::new(sink))))?;
    Ok(bus)
}
