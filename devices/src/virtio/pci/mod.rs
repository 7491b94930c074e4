//! The virtio-pci transport (virtio 1.2 §4.1, modern only): a PCI function
//! with one 64-bit memory BAR holding the common configuration, the ISR,
//! the device configuration, the queue notification addresses and the
//! MSI-X table and pending bits, each announced by a vendor capability.
//!
//! BAR 0 layout (offsets):
//! ```text
//! 0x0000  common configuration (0x3c bytes)
//! 0x1000  ISR status (1 byte, read to clear)
//! 0x2000  device configuration (up to 0x1000 bytes)
//! 0x3000  notifications: queue i at 0x3000 + 4 * i (multiplier 4)
//! 0x4000  MSI-X table (one vector per queue, plus one for configuration)
//! 0x5000  MSI-X pending bits
//! ```

pub mod common;
pub mod interrupt;
pub mod state;

use super::{features, status, Activation, ActiveQueue, GuestMemory, VirtioDevice};
use crate::pci::config::{BarKind, ConfigError, Identity, PciConfig};
use crate::pci::msix::{self, MsiRoutes, Msix};
use crate::pci::PciFunction;
use common::{Action, CommonConfig};
use interrupt::PciInterrupt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Where the common configuration is in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Where the ISR byte is.
pub const ISR_OFFSET: u64 = 0x1000;
/// Where the device configuration is.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Bytes reserved for the device configuration.
pub const DEVICE_CONFIG_LEN: u64 = 0x1000;
/// Where the notification addresses are.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Where the MSI-X table is.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Where the MSI-X pending bits are.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// The most queues a device may have here (notification and table room).
pub const MAX_QUEUES: usize = 255;

/// Red Hat's virtio vendor ID.
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
const MODERN_DEVICE_BASE: u16 = 0x1040;
/// Vendor-specific capability ID (virtio structures).
const CAP_VENDOR: u8 = 0x09;

/// `cfg_type` of each virtio capability.
mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI_CFG: u8 = 5;
}

/// The PCI class code a device type shows (Linux ignores it; `lspci` shows it).
fn class_of(device_type: u32) -> u32 {
    match device_type {
        2 => 0x01_80_00, // mass storage, other
        3 => 0x07_80_00, // simple communication, other
        _ => 0xff_00_00, // unclassified
    }
}

/// A virtio capability's body after its ID and next pointer.
fn virtio_cap(kind: u8, offset: u32, length: u32, extra: Option<u32>) -> Vec<u8> {
    let len = 16 + if extra.is_some() { 4 } else { 0 };
    let mut body = vec![len as u8, kind, 0, 0, 0, 0];
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&length.to_le_bytes());
    if let Some(extra) = extra {
        body.extend_from_slice(&extra.to_le_bytes());
    }
    body
}

/// The transport of one virtio device.
pub struct VirtioPci {
    name: String,
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    offered: u64,
    max_sizes: Vec<u16>,
    common: CommonConfig,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    interrupt: Arc<PciInterrupt>,
    notifies: Vec<EventFd>,
    memory: GuestMemory,
    failed: Arc<AtomicBool>,
    active: bool,
    /// Accesses to nothing in BAR 0, and refused driver actions.
    ignored: u64,
    /// A confidential VM's: the device starts only while its memory is shared.
    gate: Option<Arc<dyn crate::virtio::MemoryGate>>,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("name", &self.name)
            .field("type", &self.device.device_type())
            .field("status", &self.common.status)
            .finish()
    }
}

/// Why a transport cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration space refused the layout.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A device with no queue or more than [`MAX_QUEUES`].
    #[error("a virtio device needs 1 to {MAX_QUEUES} queues, not {0}")]
    Queues(usize),
    /// An eventfd could not be made.
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(std::io::Error),
}

impl VirtioPci {
    /// `device` as a PCI function named `name` (for logs), its BAR 0 at
    /// `bar_address` (aligned to [`BAR_SIZE`]); its interrupts go through
    /// `routes`.
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        bar_address: u64,
        memory: GuestMemory,
        routes: Arc<dyn MsiRoutes>,
    ) -> Result<Self, TransportError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(TransportError::Queues(max_sizes.len()));
        }
        let device_type = device.device_type();
        let mut config = PciConfig::new(Identity {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + device_type as u16,
            revision: 1,
            class: class_of(device_type),
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.add_bar(0, BAR_SIZE, BarKind::Memory64 { prefetchable: false }, bar_address)?;
        let queues = max_sizes.len() as u32;
        let caps = [
            virtio_cap(cfg_type::COMMON, COMMON_OFFSET as u32, common::LEN as u32, None),
            virtio_cap(
                cfg_type::NOTIFY,
                NOTIFY_OFFSET as u32,
                queues * NOTIFY_MULTIPLIER,
                Some(NOTIFY_MULTIPLIER),
            ),
            virtio_cap(cfg_type::ISR, ISR_OFFSET as u32, 1, None),
            virtio_cap(
                cfg_type::DEVICE,
                DEVICE_CONFIG_OFFSET as u32,
                DEVICE_CONFIG_LEN as u32,
                None,
            ),
        ];
        for body in &caps {
            config.add_capability(CAP_VENDOR, body, &vec![0; body.len()])?;
        }
        // VIRTIO_PCI_CAP_PCI_CFG: bar, offset, length and data writable.
        let pci_cfg = virtio_cap(cfg_type::PCI_CFG, 0, 0, Some(0));
        let mut writable = vec![0u8; pci_cfg.len()];
        writable[2] = 0xff;
        writable[6..18].fill(0xff);
        let pci_cfg_cap = config.add_capability(CAP_VENDOR, &pci_cfg, &writable)?;
        let vectors = queues as u16 + 1;
        let msix = Msix::new(vectors, routes);
        let (body, writable) = msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(msix::CAPABILITY_ID, &body, &writable)?;
        let msix = Arc::new(Mutex::new(msix));
        let notifies = (0..max_sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(TransportError::EventFd)?;
        Ok(VirtioPci {
            name: name.to_string(),
            offered: device.features() | features::VERSION_1,
            common: CommonConfig::new(&max_sizes),
            interrupt: Arc::new(PciInterrupt::new(msix.clone(), max_sizes.len())),
            max_sizes,
            config,
            device,
            msix,
            msix_cap,
            pci_cfg_cap,
            notifies,
            memory,
            failed: Arc::new(AtomicBool::new(false)),
            active: false,
            ignored: 0,
            gate: None,
        })
    }

    /// Makes the device start only through `gate` (a confidential VM's).
    pub fn set_memory_gate(&mut self, gate: Arc<dyn crate::virtio::MemoryGate>) {
        self.gate = Some(gate);
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// BAR 0's programmed address.
    pub fn bar_address(&self) -> u64 {
        self.config.bar(0).map_or(0, |b| b.address)
    }

    /// Each queue's notification address in guest memory (BAR 0 where it
    /// is programmed now) and the eventfd a write there must signal: the
    /// VMM registers them as ioeventfds so a notification never stops a
    /// vCPU in the VMM.
    pub fn notify_addresses(&self) -> Vec<(u64, &EventFd)> {
        let base = self.bar_address() + NOTIFY_OFFSET;
        self.notifies
            .iter()
            .enumerate()
            .map(|(i, fd)| (base + i as u64 * u64::from(NOTIFY_MULTIPLIER), fd))
            .collect()
    }

    /// Whether the driver started the device and it did not fail.
    pub fn active(&self) -> bool {
        self.active && !self.failed.load(Ordering::SeqCst)
    }

    /// Stops serving requests, finishing those taken (see
    /// [`VirtioDevice::pause`]).
    pub fn pause(&mut self) {
        if self.active {
            self.device.pause();
        }
    }

    /// Serves requests again.
    pub fn resume(&mut self) {
        if self.active {
            self.device.resume();
        }
    }

    /// Counters: the device's, and the transport's ignored accesses.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.device.counters();
        c.push(("ignored_accesses", self.ignored));
        c
    }

    fn warn_once(&mut self, what: String) {
        if self.ignored == 0 {
            tracing::warn!("{}: {what} (further such accesses are counted, not logged)", self.name);
        }
        self.ignored += 1;
    }

    fn features_ok(&mut self) {
        let acked = self.common.driver_features;
        if acked & !self.offered != 0 || acked & features::VERSION_1 == 0 {
            // The driver reads FEATURES_OK back clear: negotiation failed.
            self.common.status &= !status::FEATURES_OK;
            self.warn_once(format!(
                "the driver accepted features {acked:#x} (offered {:#x}, VERSION_1 required)",
                self.offered
            ));
        }
    }

    /// Builds the enabled queues from the driver's configuration.
    fn queues(&self, runtime: Option<&[state::SavedQueue]>) -> Result<Vec<ActiveQueue>, String> {
        let event_idx = self.common.driver_features & features::RING_EVENT_IDX != 0;
        let mut out = Vec::new();
        for (i, q) in self.common.queues.iter().enumerate().filter(|(_, q)| q.enabled) {
            let mut queue = Queue::new(q.max_size).map_err(|e| format!("queue {i}: {e}"))?;
            let bad = |e: virtio_queue::Error| format!("queue {i}: {e}");
            queue.try_set_size(q.size).map_err(bad)?;
            queue.try_set_desc_table_address(GuestAddress(q.desc)).map_err(bad)?;
            queue.try_set_avail_ring_address(GuestAddress(q.driver)).map_err(bad)?;
            queue.try_set_used_ring_address(GuestAddress(q.device)).map_err(bad)?;
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            if let Some(saved) = runtime.and_then(|r| r.iter().find(|s| usize::from(s.index) == i)) {
                queue.set_next_avail(saved.next_avail);
                queue.set_next_used(saved.next_used);
            }
            if !queue.is_valid(&self.memory) {
                return Err(format!(
                    "queue {i}: rings at {:#x}/{:#x}/{:#x} (size {}) are not all inside guest memory",
                    q.desc, q.driver, q.device, q.size
                ));
            }
            let notify = self.notifies[i].try_clone().map_err(|e| format!("queue {i}: {e}"))?;
            out.push(ActiveQueue {
                index: i as u16,
                queue,
                notify,
            });
        }
        if out.is_empty() {
            return Err("no queue is enabled".into());
        }
        Ok(out)
    }

    fn activate(&mut self, runtime: Option<&[state::SavedQueue]>, paused: bool) -> Result<(), String> {
        // The vectors first: a failure below is told through the
        // configuration vector.
        self.interrupt
            .set_vectors(self.common.config_vector, self.common.queues.iter().map(|q| q.vector));
        let queues = self.queues(runtime)?;
        if let Some(gate) = &self.gate {
            gate.start()?;
        }
        let started = self.device.activate(Activation {
            memory: self.memory.clone(),
            acked_features: self.common.driver_features,
            queues,
            interrupt: self.interrupt.clone(),
            failed: self.failed.clone(),
            paused,
        });
        if let Err(e) = started {
            if let Some(gate) = &self.gate {
                gate.stopped();
            }
            return Err(e.to_string());
        }
        self.active = true;
        Ok(())
    }

    fn driver_ok(&mut self) {
        if let Err(e) = self.activate(None, false) {
            self.failed.store(true, Ordering::SeqCst);
            tracing::warn!("{}: cannot start: {e}; it needs a reset", self.name);
            self.interrupt_config();
        }
    }

    fn interrupt_config(&self) {
        use crate::virtio::VirtioInterrupt;
        self.interrupt.config_changed();
    }

    fn reset(&mut self) {
        self.device.reset();
        if let (true, Some(gate)) = (self.active, &self.gate) {
            gate.stopped();
        }
        self.common.reset();
        self.interrupt.take_isr();
        self.failed.store(false, Ordering::SeqCst);
        self.active = false;
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let vectors = self.max_sizes.len() as u16 + 1;
        match self.common.write(offset, data, vectors) {
            Action::None => {}
            Action::Reset => self.reset(),
            Action::FeaturesOk => self.features_ok(),
            Action::DriverOk => self.driver_ok(),
        }
        if self.active {
            // Vectors may change while running (Linux moves them).
            self.interrupt
                .set_vectors(self.common.config_vector, self.common.queues.iter().map(|q| q.vector));
        }
    }

    /// The VIRTIO_PCI_CAP_PCI_CFG window: the access its fields describe.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let at = self.pci_cfg_cap;
        let bar = self.config.read_u32(at + 4) & 0xff;
        let offset = u64::from(self.config.read_u32(at + 8));
        let length = self.config.read_u32(at + 12) as usize;
        (bar == 0 && matches!(length, 1 | 2 | 4)).then_some((offset, length))
    }

    fn touches(offset: usize, len: usize, start: usize, end: usize) -> bool {
        offset < end && start < offset + len
    }
}

impl PciFunction for VirtioPci {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + 16;
        if Self::touches(offset, data.len(), window, window + 4) {
            if let Some((at, length)) = self.pci_cfg_window() {
                let mut value = [0u8; 4];
                self.bar_read(0, at, &mut value[..length]);
                for (i, byte) in data.iter_mut().enumerate() {
                    let pos = offset + i;
                    *byte = if (window..window + 4).contains(&pos) {
                        value[pos - window]
                    } else {
                        self.config.read_u32(pos & !3).to_le_bytes()[pos % 4]
                    };
                }
                return;
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let window = self.pci_cfg_cap + 16;
        if Self::touches(offset, data.len(), window, window + 4) {
            if let Some((at, length)) = self.pci_cfg_window() {
                let start = window.saturating_sub(offset);
                if let Some(bytes) = data.get(start..start + length) {
                    self.bar_write(0, at, bytes);
                }
                return;
            }
        }
        self.config.write(offset, data);
        let control = self.msix_cap + 2;
        if Self::touches(offset, data.len(), control, control + 2) {
            let bits = (self.config.read_u32(self.msix_cap) >> 16) as u16;
            self.msix.lock().unwrap_or_else(|p| p.into_inner()).set_control(bits);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        let len = data.len() as u64;
        let within = |start: u64, size: u64| offset >= start && offset + len <= start + size;
        if within(COMMON_OFFSET, common::LEN) {
            let needs_reset = self.failed.load(Ordering::SeqCst);
            self.common
                .read(offset - COMMON_OFFSET, data, self.offered, needs_reset);
        } else if within(ISR_OFFSET, 1) {
            data[0] = self.interrupt.take_isr();
        } else if within(DEVICE_CONFIG_OFFSET, DEVICE_CONFIG_LEN) {
            self.device.read_config(offset - DEVICE_CONFIG_OFFSET, data);
        } else if within(MSIX_TABLE_OFFSET, Msix::table_len(self.max_sizes.len() as u16 + 1)) {
            self.msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .table_read(offset - MSIX_TABLE_OFFSET, data);
        } else if within(MSIX_PBA_OFFSET, Msix::pba_len(self.max_sizes.len() as u16 + 1)) {
            self.msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pba_read(offset - MSIX_PBA_OFFSET, data);
        } else if !within(NOTIFY_OFFSET, self.notifies.len() as u64 * u64::from(NOTIFY_MULTIPLIER)) {
            self.warn_once(format!(
                "read of {len} bytes at BAR 0 offset {offset:#x}, where nothing is"
            ));
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let len = data.len() as u64;
        let within = |start: u64, size: u64| offset >= start && offset + len <= start + size;
        let notify_len = self.notifies.len() as u64 * u64::from(NOTIFY_MULTIPLIER);
        if within(COMMON_OFFSET, common::LEN) {
            self.common_write(offset - COMMON_OFFSET, data);
        } else if within(DEVICE_CONFIG_OFFSET, DEVICE_CONFIG_LEN) {
            self.device.write_config(offset - DEVICE_CONFIG_OFFSET, data);
        } else if within(NOTIFY_OFFSET, notify_len) {
            // Without an ioeventfd (or with BAR 0 moved off it) the write
            // comes here: signal the queue as KVM would.
            let queue = ((offset - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
            let _ = self.notifies[queue].write(1);
        } else if within(MSIX_TABLE_OFFSET, Msix::table_len(self.max_sizes.len() as u16 + 1)) {
            self.msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .table_write(offset - MSIX_TABLE_OFFSET, data);
        } else {
            self.warn_once(format!(
                "write of {len} bytes at BAR 0 offset {offset:#x}, where nothing writable is"
            ));
        }
    }
}

#[cfg(test)]
mod tests;
