//! A VM's complete non-memory state, as it travels in a migration.
//!
//! Encoded with postcard behind a version number; decoding is bounded in
//! size and checked against the receiving VM (vCPU count, devices) before
//! anything is loaded.

use crate::state::chips::ChipsState;
use crate::state::vcpu::VcpuState;
use covm_devices::serial::SerialDeviceState;
use serde::{Deserialize, Serialize};

/// Bumped whenever the layout changes; a mismatch is refused.
pub const SNAPSHOT_VERSION: u32 = 3;
/// Largest encoded snapshot accepted (32 vCPUs need well under 1 MiB).
pub const MAX_SNAPSHOT_BYTES: usize = 16 << 20;

/// Everything but guest memory.
#[derive(Serialize, Deserialize)]
pub struct VmSnapshot {
    /// [`SNAPSHOT_VERSION`] of the writer.
    pub version: u32,
    /// PICs, IOAPIC, PIT, kvmclock.
    pub chips: ChipsState,
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// COM1, when the VM has one.
    pub serial: Option<SerialDeviceState>,
    /// The PCI devices, in bus order (checked against the receiving VM's
    /// when restored).
    pub devices: Vec<crate::vm::pci::DeviceSnapshot>,
    /// A confidential VM's shared window (what of it the guest shared),
    /// restored before its devices.
    pub shared_window: Option<crate::vm::confidential::shared_window::SharedWindowState>,
}

/// A snapshot that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Too large to be one.
    #[error("VM state of {0} bytes exceeds the {MAX_SNAPSHOT_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not decodable.
    #[error("VM state is malformed: {0}")]
    Malformed(String),
    /// Written by another layout.
    #[error("VM state version {found} is not the supported {SNAPSHOT_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// Does not fit the receiving VM.
    #[error("VM state does not match this VM: {0}")]
    Mismatch(String),
}

impl VmSnapshot {
    /// Encodes the snapshot.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding plain data into a Vec cannot fail")
    }

    /// Decodes and checks a snapshot for a VM with `vcpus` vCPUs and
    /// `has_serial` telling whether it has COM1.
    pub fn decode(bytes: &[u8], vcpus: usize, has_serial: bool) -> Result<Self, SnapshotError> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(SnapshotError::TooLarge(bytes.len()));
        }
        let snapshot: Self = postcard::from_bytes(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version {
                found: snapshot.version,
            });
        }
        if snapshot.vcpus.len() != vcpus {
            return Err(SnapshotError::Mismatch(format!(
                "{} vCPUs in the state, {vcpus} in this VM",
                snapshot.vcpus.len()
            )));
        }
        if snapshot.chips.irqchips.len() != 3 {
            return Err(SnapshotError::Mismatch(format!(
                "{} interrupt controllers, expected 3",
                snapshot.chips.irqchips.len()
            )));
        }
        if snapshot.serial.is_some() != has_serial {
            return Err(SnapshotError::Mismatch("serial port present on one side only".into()));
        }
        Ok(snapshot)
    }
}
