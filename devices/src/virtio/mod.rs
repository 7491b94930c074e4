//! Virtio 1.x devices over PCI.
//!
//! A device ([`VirtioDevice`]) knows its queues, features and
//! configuration; the transport ([`pci::VirtioPci`]) is the PCI function
//! the guest drives (common configuration, notifications, ISR, device
//! configuration, MSI-X) and hands the device its queues when the driver
//! sets DRIVER_OK. Queues are `virtio-queue`'s; requests are served on the
//! device's own worker thread ([`worker`]), woken by the queues' eventfds
//! (KVM ioeventfds on the notification addresses), never on a vCPU thread.

pub mod block;
pub mod console;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(test)]
mod test_support;
pub mod vsock;
pub mod worker;

use crate::write_bitmap::WriteBitmap;
use std::sync::Arc;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it: vm-memory's mmap backend with the
/// dirty bitmap, so pages a device writes are logged for migration.
pub type GuestMemory = vm_memory::GuestMemoryMmap<WriteBitmap>;

/// Feature bits every covm device offers.
pub mod features {
    /// Virtio 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
    /// Descriptors may be indirect tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// How a device tells the driver about used buffers and configuration
/// changes (the transport maps them to MSI-X vectors).
pub trait VirtioInterrupt: Send + Sync {
    /// Queue `index` has used buffers.
    fn queue(&self, index: u16);
    /// The device configuration (or its status) changed.
    fn config_changed(&self);
}

/// A queue handed to a device at activation.
pub struct ActiveQueue {
    /// Its index.
    pub index: u16,
    /// The queue, as the driver configured it.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue.
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub memory: GuestMemory,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// The queues the driver enabled, in index order.
    pub queues: Vec<ActiveQueue>,
    /// Where its interrupts go.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Raised by the device when a queue fails: the transport reports
    /// DEVICE_NEEDS_RESET.
    pub failed: Arc<std::sync::atomic::AtomicBool>,
    /// Start paused: serve nothing until [`VirtioDevice::resume`] (an
    /// incoming VM's restored devices wait for the migration's commit).
    pub paused: bool,
}

impl Activation {
    /// What the device's worker serves.
    pub fn into_worker_start(self) -> worker::WorkerStart {
        worker::WorkerStart {
            queues: self.queues,
            memory: self.memory,
            interrupt: self.interrupt,
            failed: self.failed,
            paused: self.paused,
        }
    }
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a queue set the device cannot work with.
    #[error("{0}")]
    Queues(String),
    /// The worker thread or a host resource failed.
    #[error("cannot start the device: {0}")]
    Host(#[from] std::io::Error),
}

/// Locks `m`, taking over a lock whose holder panicked (a device thread
/// that died must not take the VMM's other threads with it).
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies the device configuration `config` from `offset` into `data`:
/// what lies past its end reads as zero (every device's `read_config`).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 block, 3 console, 4 entropy).
    fn device_type(&self) -> u32;
    /// Its queues' maximum sizes (one entry per queue).
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The features it offers ([`features::VERSION_1`] included).
    fn features(&self) -> u64;
    /// Reads its configuration space at `offset` (0 past its end).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops serving and gives the queues back (the driver reset the
    /// device, or the VM stops); `None` if it was not active.
    fn reset(&mut self) -> Option<Vec<Queue>>;
    /// The worker serving its queues while active (the defaults below
    /// pause, resume and save through it).
    fn worker(&self) -> Option<&worker::Worker> {
        None
    }
    /// Stops taking requests, finishing those it took (no request is left
    /// half done: their results are in guest memory when this returns).
    fn pause(&mut self) {
        if let Some(w) = self.worker() {
            w.pause();
        }
    }
    /// Takes requests again, including those that arrived while paused.
    fn resume(&mut self) {
        if let Some(w) = self.worker() {
            w.resume();
        }
    }
    /// The queues as they stand, while active and paused (for migration).
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.worker().map(worker::Worker::queue_states)
    }
    /// Counters for `vm.counters`, named as Cloud Hypervisor names them.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Gives up or takes back what the device holds exclusively on the
    /// host (a disk image's lock) around a live migration's switch.
    fn handover(&mut self, step: Handover) -> Result<(), String> {
        let _ = step;
        Ok(())
    }
    /// What the device keeps beyond its queues, for migration (paused).
    fn save_state(&self) -> DeviceState {
        DeviceState::Stateless
    }
    /// Takes a migrated [`save_state`](Self::save_state) before the
    /// device is activated, checking it against this device.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Stateless => Ok(()),
            other => Err(format!("saved with {other:?}, this device keeps no state of its own")),
        }
    }
}

/// A device's own migration state, beside its transport's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceState {
    /// Everything is in the queues and guest memory (block, net, console,
    /// entropy).
    Stateless,
    /// A socket device's connection table.
    Vsock(vsock::VsockState),
}

/// A live migration's steps that move a device's exclusive host resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The source, paused and drained, lets go (the destination may now
    /// take them).
    Release,
    /// The destination at the commit, or a source whose migration failed,
    /// takes them.
    Acquire,
}

/// What stands between a device and guest memory on a confidential VM:
/// its devices may use only memory the guest has shared with the host.
/// (Their view of guest memory holds only the shared window; the gate
/// keeps them stopped while any page of it is private.)
pub trait MemoryGate: Send + Sync {
    /// A device starts using its memory, if all of it is shared now;
    /// counted until [`MemoryGate::stopped`] (meanwhile the guest cannot
    /// make any of it private).
    fn start(&self) -> Result<(), String>;
    /// A device stopped using its memory (reset, or its start failed).
    fn stopped(&self);
}

/// A shared handle on a device.
pub type SharedVirtioDevice = Arc<std::sync::Mutex<dyn VirtioDevice>>;
