//! A virtio function's interrupts: each queue and the configuration have
//! an MSI-X vector the driver chose; the ISR byte records why (for a
//! driver that reads it).

use super::common::NO_VECTOR;
use crate::pci::Msix;
use crate::virtio::VirtioInterrupt;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// ISR bit: a queue interrupt.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: a configuration change.
pub const ISR_CONFIG: u8 = 2;

/// The vectors, shared between the transport (which the driver programs)
/// and the device's worker (which raises them).
pub struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    queue_vectors: Vec<AtomicU16>,
    config_vector: AtomicU16,
    isr: AtomicU8,
}

impl PciInterrupt {
    /// `queues` queues, no vectors chosen yet.
    pub fn new(msix: Arc<Mutex<Msix>>, queues: usize) -> Self {
        PciInterrupt {
            msix,
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(NO_VECTOR),
            isr: AtomicU8::new(0),
        }
    }

    /// Takes the vectors the driver wrote.
    pub fn set_vectors(&self, config: u16, queues: impl Iterator<Item = u16>) {
        self.config_vector.store(config, Ordering::SeqCst);
        for (slot, vector) in self.queue_vectors.iter().zip(queues) {
            slot.store(vector, Ordering::SeqCst);
        }
    }

    /// Reads and clears the ISR byte.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    /// The ISR byte, left as it is (for migration).
    pub fn isr(&self) -> u8 {
        self.isr.load(Ordering::SeqCst)
    }

    /// Sets the ISR byte (a restored device).
    pub fn set_isr(&self, isr: u8) {
        self.isr.store(isr, Ordering::SeqCst);
    }

    fn raise(&self, vector: u16) {
        if vector != NO_VECTOR {
            self.msix.lock().unwrap_or_else(|p| p.into_inner()).notify(vector);
        }
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn queue(&self, index: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(v) = self.queue_vectors.get(usize::from(index)) {
            self.raise(v.load(Ordering::SeqCst));
        }
    }

    fn config_changed(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        self.raise(self.config_vector.load(Ordering::SeqCst));
    }
}
