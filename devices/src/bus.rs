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

/// A device on the MMIO bus.
pub trait MmioDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the device's base address.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the device's base address.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared handle on an MMIO device.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// Why an MMIO range cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioBusError {
    /// Two devices claim the same addresses, or the range wraps.
    #[error("MMIO {base:#x}+{len:#x} overlaps a device already at {other:#x} or wraps")]
    Overlap {
        /// Its base.
        base: u64,
        /// Its length.
        len: u64,
        /// The base of the range it overlaps (its own on a wrap).
        other: u64,
    },
}

struct MmioRange {
    len: u64,
    device: SharedMmioDevice,
}

/// Guest-physical ranges outside RAM and their devices. Accesses to no
/// device read as all ones and writes are dropped.
#[derive(Default)]
pub struct MmioBus {
    ranges: BTreeMap<u64, MmioRange>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedMmioDevice) -> Result<(), MmioBusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(MmioBusError::Overlap { base, len, other: base })?;
        if let Some((&other, _)) = self.ranges.iter().find(|(&b, r)| b < end && base < b + r.len) {
            return Err(MmioBusError::Overlap { base, len, other });
        }
        self.ranges.insert(base, MmioRange { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &MmioRange)> {
        let (&base, range) = self.ranges.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        (end <= base + range.len).then_some((addr - base, range))
    }

    /// Dispatches a read; returns false (data all ones) when no device
    /// holds the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, range)) => {
                range
                    .device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device holds the whole
    /// access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, range)) => {
                range
                    .device
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
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

    struct Window(Vec<(u64, Vec<u8>)>);

    impl MmioDevice for Window {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn mmio_dispatches_whole_accesses_only() {
        let dev = Arc::new(Mutex::new(Window(vec![])));
        let mut bus = MmioBus::new();
        bus.insert(0xe000_0000, 0x1000, dev.clone()).unwrap();
        let mut d = [0u8; 4];
        assert!(bus.read(0xe000_0010, &mut d));
        assert_eq!(d, [0x10; 4]);
        assert!(!bus.read(0xe000_0ffe, &mut d), "straddles the end");
        assert_eq!(d, [0xff; 4]);
        assert!(bus.write(0xe000_0ffc, &[1, 2, 3, 4]));
        assert!(!bus.write(0xdfff_fffe, &[1, 2, 3, 4]));
        assert_eq!(dev.lock().unwrap().0, vec![(0xffc, vec![1, 2, 3, 4])]);
        assert_eq!(
            bus.insert(0xe000_0800, 0x1000, dev.clone()),
            Err(MmioBusError::Overlap {
                base: 0xe000_0800,
                len: 0x1000,
                other: 0xe000_0000
            })
        );
        assert!(bus.insert(u64::MAX - 10, 0x100, dev.clone()).is_err(), "wraps");
        assert!(bus.insert(0x1000, 0, dev).is_err(), "empty");
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
