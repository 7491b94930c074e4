//! The VM's devices on its port bus: COM1 (its interrupt an irqfd), the
//! i8042, the debug port, the power device and button, and a confidential
//! VM's agent ports. (The PCI bus and virtio devices join here.)

use super::confidential::runtime::CvmPort;
use super::confidential::CvmRuntime;
use super::VmError;
use crate::config::{SerialMode, VmConfig};
use crate::exit::VmExit;
use crate::vcpu::ExitNotifier;
use covm_devices::debug_port::DebugPort;
use covm_devices::i8042::{self, I8042};
use covm_devices::power::{PowerButton, PowerDevice};
use covm_devices::serial::{self, SerialDevice, SerialOutput};
use covm_devices::{PioBus, PowerAction, PowerSink};
use covm_guest_abi::ports;
use kvm_ioctls::VmFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Forwards the guest's power requests to whoever waits for the VM to end.
pub(super) struct ExitSink(pub(super) ExitNotifier);

impl PowerSink for ExitSink {
    fn request(&self, action: PowerAction) {
        tracing::info!("guest power request: {action:?}");
        (self.0)(VmExit::Power(action));
    }
}

/// COM1, shared by the port bus and the VM (for its state and counters).
pub(super) type SharedSerial = Arc<Mutex<SerialDevice>>;

/// Whether COM1's interrupt reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SerialIrq {
    /// IRQ 4 through the in-kernel irqchip (an irqfd on GSI 4).
    Wired,
    /// Not wired: the VM has no in-kernel PIC or IOAPIC to route GSI 4 to
    /// (a TD's split irqchip); the guest polls COM1.
    Unwired,
}

/// Places the legacy devices on the port bus.
pub(super) fn build_bus(
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
