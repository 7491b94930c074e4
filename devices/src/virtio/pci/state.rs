//! A virtio function's migration state, and its checked restore.

use super::common::CommonConfig;
use super::VirtioPci;
use crate::pci::config::PciConfigState;
use crate::pci::msix::MsixState;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// Where an active queue stands (the rest of it is in the common
/// configuration and in guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// The queue.
    pub index: u16,
    /// The next available entry the device will take.
    pub next_avail: u16,
    /// The next used entry the device will write.
    pub next_used: u16,
}

/// Everything of a virtio function the guest can see, taken while its
/// device is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// The virtio device type (checked at the destination).
    pub device_type: u32,
    /// Configuration space.
    pub config: PciConfigState,
    /// MSI-X.
    pub msix: MsixState,
    /// The common configuration.
    pub common: CommonConfig,
    /// Whether the driver had started the device.
    pub active: bool,
    /// Whether it needed a reset.
    pub failed: bool,
    /// The ISR byte.
    pub isr: u8,
    /// Each active queue's indices.
    pub queues: Vec<SavedQueue>,
    /// The device's own state.
    pub device: crate::virtio::DeviceState,
}

impl VirtioPci {
    /// The function's state. Pause it first: the queue indices are then
    /// final.
    pub fn save(&self) -> VirtioPciState {
        let queues = self
            .device
            .queue_states()
            .unwrap_or_default()
            .into_iter()
            .zip(self.common.queues.iter().enumerate().filter(|(_, q)| q.enabled))
            .map(|(state, (index, _))| SavedQueue {
                index: index as u16,
                next_avail: state.next_avail,
                next_used: state.next_used,
            })
            .collect();
        VirtioPciState {
            device_type: self.device.device_type(),
            config: self.config.save(),
            msix: self.msix.lock().unwrap_or_else(|p| p.into_inner()).save(),
            common: self.common.clone(),
            active: self.active,
            failed: self.failed.load(Ordering::SeqCst),
            isr: self.interrupt.isr(),
            queues,
            device: self.device.save_state(),
        }
    }

    /// Takes `state` over this freshly built function, checking it against
    /// the device: same type, the same configuration-space layout, features
    /// the device offers, queue sizes and vectors it allows, rings inside
    /// guest memory. An active device restarts paused; [`VirtioPci::resume`]
    /// lets it serve (once the migration committed).
    pub fn restore(&mut self, state: &VirtioPciState) -> Result<(), String> {
        let name = self.name.clone();
        let fail = |e: String| format!("{name}: {e}");
        if state.device_type != self.device.device_type() {
            return Err(fail(format!(
                "saved as virtio device type {}, this device is type {}",
                state.device_type,
                self.device.device_type()
            )));
        }
        let vectors = self.max_sizes.len() as u16 + 1;
        state
            .common
            .check(&self.max_sizes, self.offered, vectors)
            .map_err(fail)?;
        if state.active {
            if state.queues.len() != state.common.queues.iter().filter(|q| q.enabled).count() {
                return Err(fail(format!(
                    "{} queue positions saved for {} enabled queues",
                    state.queues.len(),
                    state.common.queues.iter().filter(|q| q.enabled).count()
                )));
            }
            let size = |i: u16| state.common.queues.get(usize::from(i)).map(|q| (q.enabled, q.size));
            for q in &state.queues {
                match size(q.index) {
                    Some((true, n)) if q.next_avail.wrapping_sub(q.next_used) <= n => {}
                    Some((true, n)) => {
                        return Err(fail(format!(
                            "queue {}: {} requests in flight for a queue of {n}",
                            q.index,
                            q.next_avail.wrapping_sub(q.next_used)
                        )))
                    }
                    _ => return Err(fail(format!("queue {} is not enabled", q.index))),
                }
            }
        }
        self.device.restore_state(&state.device).map_err(fail)?;
        self.config.restore(&state.config).map_err(fail)?;
        self.msix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(&state.msix)
            .map_err(fail)?;
        self.common = state.common.clone();
        self.interrupt.set_isr(state.isr);
        self.failed.store(state.failed, Ordering::SeqCst);
        if state.active && !state.failed {
            self.activate(Some(&state.queues), true).map_err(fail)?;
        }
        self.active = state.active;
        Ok(())
    }
}
