//! PCI bus 0: up to 32 single-function devices, their configuration space
//! through configuration mechanism 1 (ports 0xCF8/0xCFC, what Linux uses
//! without ACPI) and through an ECAM window, and their BARs' MMIO.

use super::config::PciConfig;
use crate::bus::{MmioDevice, PioDevice};
use std::sync::{Arc, Mutex, MutexGuard};

/// Devices on a bus.
pub const SLOTS: usize = 32;
/// Configuration mechanism 1's address port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Ports of mechanism 1: the address (0xCF8..0xCFB) and data (0xCFC..0xCFF).
pub const CONFIG_PORT_COUNT: u16 = 8;
/// ECAM bytes per bus (32 devices × 8 functions × 4 KiB).
pub const ECAM_BUS_LEN: u64 = 1 << 20;

/// A bus/device/function address on bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Device number, 0 to 31.
    pub device: u8,
    /// Function number, 0 to 7 (covm's devices are function 0).
    pub function: u8,
}

impl std::fmt::Display for Bdf {
    /// As Cloud Hypervisor's `PciDeviceInfo.bdf`: `0000:00:DD.F`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0000:00:{:02x}.{}", self.device, self.function)
    }
}

/// A function on the bus: its configuration space and BARs.
pub trait PciFunction: Send {
    /// Its configuration space (for where its BARs decode).
    fn config(&self) -> &PciConfig;
    /// A configuration read at `offset` (a function whose capabilities
    /// read through to its BARs overrides it).
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// A configuration write at `offset` (the function applies it to its
    /// space and acts on what changed).
    fn config_write(&mut self, offset: usize, data: &[u8]);
    /// A read of BAR `bar` at `offset` into it.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A write to BAR `bar` at `offset` into it.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// A function, shared between the bus and its owner.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

fn lock(f: &SharedFunction) -> MutexGuard<'_, dyn PciFunction + 'static> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a device cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    /// Every slot is taken.
    #[error("the PCI bus is full ({SLOTS} devices)")]
    Full,
    /// The slot asked for is taken or does not exist.
    #[error("PCI slot {0} is taken or does not exist")]
    Slot(u8),
}

/// Bus 0.
#[derive(Default)]
pub struct PciBus {
    slots: Vec<Option<SharedFunction>>,
}

impl PciBus {
    /// An empty bus.
    pub fn new() -> Self {
        PciBus {
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    /// Places `function` in the first free slot; returns its address.
    pub fn add(&mut self, function: SharedFunction) -> Result<Bdf, PciBusError> {
        let device = self.slots.iter().position(Option::is_none).ok_or(PciBusError::Full)?;
        self.slots[device] = Some(function);
        Ok(Bdf {
            device: device as u8,
            function: 0,
        })
    }

    /// Places `function` in slot `device`.
    pub fn add_at(&mut self, device: u8, function: SharedFunction) -> Result<Bdf, PciBusError> {
        match self.slots.get_mut(usize::from(device)) {
            Some(slot @ None) => {
                *slot = Some(function);
                Ok(Bdf { device, function: 0 })
            }
            _ => Err(PciBusError::Slot(device)),
        }
    }

    /// The next free slot.
    pub fn next_free(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|d| d as u8)
    }

    fn function(&self, bdf: Bdf) -> Option<&SharedFunction> {
        if bdf.function != 0 {
            return None;
        }
        self.slots.get(usize::from(bdf.device))?.as_ref()
    }

    /// Reads configuration space (all ones where no function is).
    pub fn config_read(&self, bdf: Bdf, offset: usize, data: &mut [u8]) {
        match self.function(bdf) {
            Some(f) => lock(f).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space (dropped where no function is).
    pub fn config_write(&self, bdf: Bdf, offset: usize, data: &[u8]) {
        if let Some(f) = self.function(bdf) {
            lock(f).config_write(offset, data);
        }
    }

    /// The function and BAR whose decoded range holds `[addr, addr + len)`,
    /// and the offset into it.
    fn decoding(&self, addr: u64, len: usize) -> Option<(&SharedFunction, usize, u64)> {
        self.slots.iter().flatten().find_map(|f| {
            let guard = lock(f);
            (0..super::config::BAR_COUNT).find_map(|bar| {
                let (start, end) = guard.config().decoded(bar)?;
                (addr >= start && addr.checked_add(len as u64)? <= end).then(|| (f, bar, addr - start))
            })
        })
    }

    /// An MMIO read at guest address `addr`; false when no BAR decodes it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.decoding(addr, data.len()) {
            Some((f, bar, offset)) => {
                lock(f).bar_read(bar, offset, data);
                true
            }
            None => false,
        }
    }

    /// An MMIO write at guest address `addr`; false when no BAR decodes it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.decoding(addr, data.len()) {
            Some((f, bar, offset)) => {
                lock(f).bar_write(bar, offset, data);
                true
            }
            None => false,
        }
    }
}

/// Configuration mechanism 1 on ports 0xCF8..0xCFF.
pub struct ConfigPorts {
    bus: Arc<PciBus>,
    address: u32,
}

impl ConfigPorts {
    /// The ports of `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        ConfigPorts { bus, address: 0 }
    }

    /// The function and register the address port selects, if enabled and
    /// on bus 0.
    fn selected(&self) -> Option<(Bdf, usize)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let bus = (a >> 16) & 0xff;
        (enabled && bus == 0).then_some((
            Bdf {
                device: ((a >> 11) & 0x1f) as u8,
                function: ((a >> 8) & 7) as u8,
            },
            (a & 0xfc) as usize,
        ))
    }
}

impl PioDevice for ConfigPorts {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.selected() {
                Some((bdf, register)) => self.bus.config_read(bdf, register + usize::from(offset - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match offset {
            // Only a dword write sets the address (byte writes to 0xCF9 are
            // the PC's reset control, which covm does not have).
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().expect("4 bytes")) & 0x80ff_fffc;
            }
            4..=7 => {
                if let Some((bdf, register)) = self.selected() {
                    self.bus.config_write(bdf, register + usize::from(offset - 4), data);
                }
            }
            _ => {}
        }
    }
}

/// The ECAM window of bus 0 (1 MiB: device << 15 | function << 12 | register).
pub struct Ecam {
    bus: Arc<PciBus>,
}

impl Ecam {
    /// The window of `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Ecam { bus }
    }

    fn split(offset: u64) -> Option<(Bdf, usize)> {
        (offset < ECAM_BUS_LEN).then_some((
            Bdf {
                device: (offset >> 15) as u8 & 0x1f,
                function: (offset >> 12) as u8 & 7,
            },
            (offset & 0xfff) as usize,
        ))
    }
}

impl MmioDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::split(offset) {
            Some((bdf, register)) => self.bus.config_read(bdf, register, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bdf, register)) = Self::split(offset) {
            self.bus.config_write(bdf, register, data);
        }
    }
}

/// The PCI MMIO window: each access goes to the BAR that decodes it now
/// (BARs move when the guest reprograms them).
pub struct BarWindow {
    bus: Arc<PciBus>,
    base: u64,
    unclaimed: u64,
}

impl BarWindow {
    /// The window at guest address `base` over `bus`'s BARs.
    pub fn new(bus: Arc<PciBus>, base: u64) -> Self {
        BarWindow {
            bus,
            base,
            unclaimed: 0,
        }
    }
}

impl MmioDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.bus.mmio_read(self.base + offset, data) {
            self.unclaimed += 1;
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.bus.mmio_write(self.base + offset, data) {
            self.unclaimed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{command, BarKind, Identity};
    use super::*;

    struct Probe {
        config: PciConfig,
        last: Option<(usize, u64, Vec<u8>)>,
    }

    impl PciFunction for Probe {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_write(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 + 1);
            self.last = Some((bar, offset, vec![]));
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last = Some((bar, offset, data.to_vec()));
        }
    }

    fn bus_with_probe() -> (Arc<PciBus>, Arc<Mutex<Probe>>) {
        let mut config = PciConfig::new(Identity {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0xff_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        config
            .add_bar(0, 0x1000, BarKind::Memory64 { prefetchable: false }, 0xc000_0000)
            .unwrap();
        let probe = Arc::new(Mutex::new(Probe { config, last: None }));
        let mut bus = PciBus::new();
        assert_eq!(
            bus.add_at(
                0,
                Arc::new(Mutex::new(Probe {
                    config: PciConfig::new(Identity {
                        vendor: 0x8086,
                        device: 0x0d57,
                        revision: 0,
                        class: 0x06_00_00,
                        subsystem_vendor: 0,
                        subsystem: 0,
                    }),
                    last: None,
                }))
            )
            .unwrap()
            .to_string(),
            "0000:00:00.0"
        );
        assert_eq!(bus.add(probe.clone()).unwrap().to_string(), "0000:00:01.0");
        (Arc::new(bus), probe)
    }

    fn port_read(ports: &mut ConfigPorts, device: u32, register: u32) -> u32 {
        ports.write(0, &(0x8000_0000 | device << 11 | register).to_le_bytes());
        let mut data = [0u8; 4];
        ports.read(4, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn mechanism_1_and_ecam_read_the_same_space() {
        let (bus, _) = bus_with_probe();
        let mut ports = ConfigPorts::new(bus.clone());
        let mut ecam = Ecam::new(bus.clone());
        assert_eq!(port_read(&mut ports, 0, 0), 0x0d57_8086);
        assert_eq!(port_read(&mut ports, 1, 0), 0x1044_1af4);
        assert_eq!(port_read(&mut ports, 2, 0), 0xffff_ffff, "empty slot");
        let mut data = [0u8; 4];
        ecam.read(1 << 15, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x1044_1af4);
        ecam.read(1 << 15 | 1 << 12, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0xffff_ffff, "function 1 does not exist");
        ecam.read(ECAM_BUS_LEN, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0xffff_ffff, "bus 1 does not exist");
        // A byte of the data port at its offset.
        ports.write(0, &(0x8000_0000u32 | 1 << 11).to_le_bytes());
        let mut byte = [0u8; 1];
        ports.read(6, &mut byte);
        assert_eq!(byte[0], 0x44);
        // Disabled or other-bus addresses reach nothing.
        ports.write(0, &(1u32 << 11).to_le_bytes());
        ports.read(4, &mut data);
        assert_eq!(data, [0xff; 4]);
        ports.write(0, &(0x8001_0000u32).to_le_bytes());
        ports.read(4, &mut data);
        assert_eq!(data, [0xff; 4]);
        let mut address = [0u8; 4];
        ports.read(0, &mut address);
        assert_eq!(u32::from_le_bytes(address), 0x8001_0000);
    }

    #[test]
    fn bars_decode_only_with_memory_enabled_and_follow_moves() {
        let (bus, probe) = bus_with_probe();
        let mut window = BarWindow::new(bus.clone(), 0xc000_0000);
        let mut data = [0u8; 4];
        window.read(0x10, &mut data);
        assert_eq!(data, [0xff; 4], "memory decoding off");
        let mut ecam = Ecam::new(bus.clone());
        ecam.write(1 << 15 | 4, &command::MEMORY.to_le_bytes());
        window.read(0x10, &mut data);
        assert_eq!(data, [1; 4]);
        window.write(0xffc, &[9, 9, 9, 9]);
        assert_eq!(probe.lock().unwrap().last, Some((0, 0xffc, vec![9; 4])));
        // Straddling the end of the BAR: not decoded.
        window.write(0xffe, &[1, 2, 3, 4]);
        assert_eq!(probe.lock().unwrap().last, Some((0, 0xffc, vec![9; 4])));
        // Moved by the guest: the old place is empty, the new one decodes.
        ecam.write(1 << 15 | 0x10, &0xc001_0000u32.to_le_bytes());
        window.read(0x10, &mut data);
        assert_eq!(data, [0xff; 4]);
        window.read(0x1_0010, &mut data);
        assert_eq!(data, [1; 4]);
        assert_eq!(window.unclaimed, 3);
    }

    #[test]
    fn a_full_bus_and_a_taken_slot_are_named() {
        let mut bus = PciBus::new();
        let blank = || -> SharedFunction {
            Arc::new(Mutex::new(Probe {
                config: PciConfig::new(Identity {
                    vendor: 1,
                    device: 1,
                    revision: 0,
                    class: 0,
                    subsystem_vendor: 0,
                    subsystem: 0,
                }),
                last: None,
            }))
        };
        for _ in 0..SLOTS {
            bus.add(blank()).unwrap();
        }
        assert_eq!(bus.add(blank()).unwrap_err(), PciBusError::Full);
        assert_eq!(bus.add_at(3, blank()).unwrap_err(), PciBusError::Slot(3));
        assert_eq!(
            bus.add_at(40, blank()).unwrap_err().to_string(),
            "PCI slot 40 is taken or does not exist"
        );
    }
}
