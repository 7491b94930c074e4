//! The port I/O bus: maps port ranges to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on the port I/O bus.
pub trait PioDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes `data` at `offset` from the device's base port.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A shared handle on a device.
pub type SharedDevice = Arc<Mutex<dyn PioDevice>>;

/// Errors building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim the same port.
    #[error("ports {base:#x}..{end:#x} overlap a device already at {other:#x}")]
    Overlap {
        /// First port of the new range.
        base: u16,
        /// One past its last port.
        end: u32,
        /// First port of the range it overlaps.
        other: u16,
    },
    /// A range of zero length.
    #[error("device at port {0:#x} has an empty range")]
    Empty(u16),
}

struct Range {
    len: u16,
    device: SharedDevice,
}

/// Port ranges and their devices. Accesses to no device read as all ones and
/// writes are dropped, as on a PC's ISA bus.
#[derive(Default)]
pub struct PioBus {
    ranges: BTreeMap<u16, Range>,
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = u32::from(base) + u32::from(len);
        let clash = self
            .ranges
            .iter()
            .find(|(&b, r)| u32::from(b) < end && u32::from(base) < u32::from(b) + u32::from(r.len));
        if let Some((&other, _)) = clash {
            return Err(BusError::Overlap { base, end, other });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &Range)> {
        let (&base, range) = self.ranges.range(..=port).next_back()?;
        (u32::from(port) < u32::from(base) + u32::from(range.len)).then_some((port - base, range))
    }

    /// Dispatches a read; returns false when no device is at `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((offset, range)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device is at `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((offset, range)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, surviving a panic in another vCPU thread: device state is
/// plain data, and a VMM that stops serving I/O would hang the guest.
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert!(!bus.write(0x400, &[9]));
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![9])]);
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = PioBus::new();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        bus.insert(0x64, 1, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        let err = bus
            .insert(0x5f, 2, Arc::new(Mutex::new(Recorder::default())))
            .unwrap_err();
        assert_eq!(
            err,
            BusError::Overlap {
                base: 0x5f,
                end: 0x61,
                other: 0x60
            }
        );
        assert_eq!(
            bus.insert(0x70, 0, Arc::new(Mutex::new(Recorder::default()))),
            Err(BusError::Empty(0x70))
        );
        bus.insert(0xfff0, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(bus.write(0xffff, &[1]));
    }
}
