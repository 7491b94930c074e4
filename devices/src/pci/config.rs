//! A type-0 function's configuration space: the standard header with the
//! BARs the VMM placed, and a capability list.
//!
//! Every register is kept as bytes with a per-byte mask of the bits the
//! guest may write; the BARs are kept as their programmed addresses and
//! sizes, so the usual sizing probe (write all ones, read the size mask
//! back, restore) works and the address the guest leaves is the one the
//! device decodes.

use serde::{Deserialize, Serialize};

/// Bytes of conventional configuration space (all that port 0xCF8/0xCFC
/// reaches; ECAM reads above it return 0: no extended capabilities).
pub const CONFIG_SPACE_LEN: usize = 256;

/// The header's registers covm gives meaning to.
pub mod reg {
    /// Vendor ID (u16).
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (u16).
    pub const COMMAND: usize = 0x04;
    /// Status (u16).
    pub const STATUS: usize = 0x06;
    /// Revision ID (u8).
    pub const REVISION: usize = 0x08;
    /// Programming interface, subclass, class (u8 each).
    pub const CLASS_PROG: usize = 0x09;
    /// Header type (u8).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First BAR (six u32s).
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID (u16).
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer (u8).
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line (u8, the guest's scratch).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (u8; 0: no INTx, covm's devices interrupt by MSI-X).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// The function may master the bus (DMA).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register: a capability list follows the header.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Where the first capability goes.
const FIRST_CAPABILITY: usize = 0x40;
/// Number of BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;

/// How a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (two registers).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// One BAR: its size (a power of two, at least 16), kind and the address
/// it is programmed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bar {
    /// Bytes it decodes.
    pub size: u64,
    /// How.
    pub kind: BarKind,
    /// Programmed base address (may be the sizing pattern while probed).
    pub address: u64,
}

impl Bar {
    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 { prefetchable } => 0b100 | if prefetchable { 0b1000 } else { 0 },
        }
    }
}

/// The identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code (class << 16 | subclass << 8 | programming interface).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// Why a configuration space cannot be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A BAR size that is not a power of two of at least 16 bytes.
    #[error("BAR {index}: size {size:#x} is not a power of two of at least 16 bytes")]
    BarSize {
        /// The BAR.
        index: usize,
        /// Its size.
        size: u64,
    },
    /// A BAR index past the header's six, or a 64-bit BAR in the last.
    #[error("BAR {0} does not exist in a type-0 header (or a 64-bit BAR has no room for its upper half)")]
    BarIndex(usize),
    /// Two BARs in one register.
    #[error("BAR {0} is already in use")]
    BarTaken(usize),
    /// A BAR address not aligned to its size, or a 32-bit BAR above 4 GiB.
    #[error("BAR {index}: address {address:#x} does not fit a BAR of {size:#x} bytes")]
    BarAddress {
        /// The BAR.
        index: usize,
        /// The address.
        address: u64,
        /// Its size.
        size: u64,
    },
    /// The capability list is full.
    #[error("no room for a {len}-byte capability in configuration space")]
    CapabilitySpace {
        /// Its length.
        len: usize,
    },
}

/// What a configuration write changed that the owner must act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteEffects {
    /// A BAR's programmed address changed (its index).
    pub bar_moved: Option<usize>,
    /// The command register changed.
    pub command_changed: bool,
}

/// A function's configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_LEN],
    writable: [u8; CONFIG_SPACE_LEN],
    bars: [Option<Bar>; BAR_COUNT],
    /// The register index holding a 64-bit BAR's upper half → its BAR.
    upper_of: [Option<usize>; BAR_COUNT],
    next_capability: usize,
    last_capability: Option<usize>,
}

/// What of a configuration space migrates: the bytes and the BAR
/// addresses (the layout itself is rebuilt from the device's options at
/// the destination and must match).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigState {
    /// All 256 bytes as the guest reads them, BARs excluded.
    pub bytes: Vec<u8>,
    /// Each BAR's programmed address.
    pub bar_addresses: Vec<Option<u64>>,
}

impl PciConfig {
    /// A header for `id`, with no BARs and no capabilities; the command
    /// register's I/O, memory, bus-master and INTx-disable bits and the
    /// interrupt line are writable.
    pub fn new(id: Identity) -> Self {
        let mut config = PciConfig {
            bytes: [0; CONFIG_SPACE_LEN],
            writable: [0; CONFIG_SPACE_LEN],
            bars: [None; BAR_COUNT],
            upper_of: [None; BAR_COUNT],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
        };
        config.put16(reg::VENDOR_ID, id.vendor);
        config.put16(reg::DEVICE_ID, id.device);
        config.bytes[reg::REVISION] = id.revision;
        config.bytes[reg::CLASS_PROG..reg::CLASS_PROG + 3].copy_from_slice(&id.class.to_le_bytes()[..3]);
        config.put16(reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        config.put16(reg::SUBSYSTEM_ID, id.subsystem);
        let cmd = command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        config.writable[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&cmd.to_le_bytes());
        config.writable[reg::INTERRUPT_LINE] = 0xff;
        config
    }

    fn put16(&mut self, at: usize, value: u16) {
        self.bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// Adds BAR `index` at `address`.
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind, address: u64) -> Result<(), ConfigError> {
        if !size.is_power_of_two() || size < 16 {
            return Err(ConfigError::BarSize { index, size });
        }
        let wide = matches!(kind, BarKind::Memory64 { .. });
        if index >= BAR_COUNT || (wide && index + 1 >= BAR_COUNT) {
            return Err(ConfigError::BarIndex(index));
        }
        let taken = |i: usize| self.bars[i].is_some() || self.upper_of[i].is_some();
        if taken(index) || (wide && taken(index + 1)) {
            return Err(ConfigError::BarTaken(index));
        }
        if !address.is_multiple_of(size) || (!wide && address.checked_add(size).is_none_or(|end| end > 1 << 32)) {
            return Err(ConfigError::BarAddress { index, address, size });
        }
        self.bars[index] = Some(Bar { size, kind, address });
        if wide {
            self.upper_of[index + 1] = Some(index);
        }
        Ok(())
    }

    /// BAR `index`, if the function has one there.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get16(reg::COMMAND)
    }

    /// Where BAR `index` decodes now: its address range, when memory
    /// decoding is on and the address is not a sizing pattern past the end
    /// of the address space.
    pub fn decoded(&self, index: usize) -> Option<(u64, u64)> {
        let bar = self.bar(index)?;
        let end = bar.address.checked_add(bar.size)?;
        (self.command() & command::MEMORY != 0).then_some((bar.address, end))
    }

    /// Appends a capability with `id`, its body after the two-byte header
    /// (`body`), and which bits of the body the guest may write
    /// (`writable`, as long as the body). Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Result<usize, ConfigError> {
        debug_assert_eq!(body.len(), writable.len());
        let len = 2 + body.len();
        let at = self.next_capability;
        if at + len > CONFIG_SPACE_LEN {
            return Err(ConfigError::CapabilitySpace { len });
        }
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + len].copy_from_slice(body);
        self.writable[at + 2..at + len].copy_from_slice(writable);
        match self.last_capability {
            None => {
                self.bytes[reg::CAPABILITIES] = at as u8;
                let status = self.get16(reg::STATUS) | STATUS_CAPABILITIES;
                self.put16(reg::STATUS, status);
            }
            Some(previous) => self.bytes[previous + 1] = at as u8,
        }
        self.last_capability = Some(at);
        self.next_capability = (at + len + 3) & !3;
        Ok(at)
    }

    /// The bytes at `offset` (the BAR registers as programmed).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i;
            *byte = if at >= CONFIG_SPACE_LEN {
                0
            } else if (reg::BAR0..reg::BAR0 + 4 * BAR_COUNT).contains(&at) {
                let register = (at - reg::BAR0) / 4;
                self.bar_register(register).to_le_bytes()[(at - reg::BAR0) % 4]
            } else {
                self.bytes[at]
            };
        }
    }

    /// Reads the dword at `offset` (rounded down to 4).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset & !3, &mut b);
        u32::from_le_bytes(b)
    }

    fn bar_register(&self, register: usize) -> u32 {
        if let Some(bar) = self.bars[register] {
            (bar.address as u32 & !(bar.size as u32).wrapping_sub(1)) | bar.flags()
        } else if let Some(lower) = self.upper_of[register] {
            let bar = self.bars[lower].expect("an upper half has its lower");
            ((bar.address & !(bar.size - 1)) >> 32) as u32
        } else {
            0
        }
    }

    /// Writes `data` at `offset`: only the writable bits change; a BAR
    /// takes the address bits its size leaves.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> WriteEffects {
        let mut effects = WriteEffects::default();
        let old_command = self.command();
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i;
            if at >= CONFIG_SPACE_LEN {
                break;
            }
            if (reg::BAR0..reg::BAR0 + 4 * BAR_COUNT).contains(&at) {
                let register = (at - reg::BAR0) / 4;
                if let Some(moved) = self.write_bar_byte(register, (at - reg::BAR0) % 4, byte) {
                    effects.bar_moved = Some(moved);
                }
                continue;
            }
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (byte & mask);
        }
        effects.command_changed = self.command() != old_command;
        effects
    }

    /// One byte of a BAR register; returns the BAR if its address changed.
    fn write_bar_byte(&mut self, register: usize, byte_index: usize, value: u8) -> Option<usize> {
        let (index, shift) = if self.bars[register].is_some() {
            (register, 0)
        } else {
            (self.upper_of[register]?, 32)
        };
        let bar = self.bars[index].as_mut().expect("checked above");
        let bit = shift + 8 * byte_index as u32;
        let mut address = (bar.address & !(0xff << bit)) | (u64::from(value) << bit);
        address &= !(bar.size - 1);
        if matches!(bar.kind, BarKind::Memory32) {
            address &= 0xffff_ffff;
        }
        (address != bar.address).then(|| {
            bar.address = address;
            index
        })
    }

    /// What migrates.
    pub fn save(&self) -> PciConfigState {
        PciConfigState {
            bytes: self.bytes.to_vec(),
            bar_addresses: self.bars.iter().map(|b| b.map(|b| b.address)).collect(),
        }
    }

    /// Takes `state` over this (freshly built, same layout) space: only
    /// bytes the guest can write may differ, and each BAR must exist in
    /// both with an address its size allows.
    pub fn restore(&mut self, state: &PciConfigState) -> Result<(), String> {
        if state.bytes.len() != CONFIG_SPACE_LEN || state.bar_addresses.len() != BAR_COUNT {
            return Err(format!(
                "configuration space of {} bytes and {} BARs (expected {CONFIG_SPACE_LEN} and {BAR_COUNT})",
                state.bytes.len(),
                state.bar_addresses.len()
            ));
        }
        for (at, (&saved, &ours)) in state.bytes.iter().zip(self.bytes.iter()).enumerate() {
            if (reg::BAR0..reg::BAR0 + 4 * BAR_COUNT).contains(&at) {
                continue;
            }
            if (saved ^ ours) & !self.writable[at] != 0 {
                return Err(format!(
                    "configuration byte {at:#x} is {saved:#04x}, which this device cannot hold (read-only bits {ours:#04x})"
                ));
            }
        }
        for (index, address) in state.bar_addresses.iter().enumerate() {
            match (self.bars[index].as_mut(), address) {
                (None, None) => {}
                (Some(bar), Some(address)) => {
                    let fits = address & (bar.size - 1) == 0
                        && (matches!(bar.kind, BarKind::Memory64 { .. }) || *address <= u64::from(u32::MAX));
                    if !fits {
                        return Err(format!(
                            "BAR {index} at {address:#x} does not fit its {:#x} bytes",
                            bar.size
                        ));
                    }
                    bar.address = *address;
                }
                _ => return Err(format!("BAR {index} exists on one side only")),
            }
        }
        self.bytes.copy_from_slice(&state.bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_80_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn header_reads_as_built() {
        let c = PciConfig::new(id());
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0180_0001);
        assert_eq!(c.read_u32(0x2c), 0x0040_1af4);
        assert_eq!(c.read_u32(0x3c), 0, "no INTx pin");
        assert_eq!(c.read_u32(0x100), 0, "no extended capabilities");
    }

    #[test]
    fn read_only_bits_stay() {
        let mut c = PciConfig::new(id());
        c.write(0, &[0xff; 4]);
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        c.write(reg::COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), 0x0407);
        c.write(reg::INTERRUPT_LINE, &[0x0b]);
        assert_eq!(c.read_u32(0x3c) & 0xff, 0x0b);
    }

    #[test]
    fn a_64_bit_bar_sizes_and_moves() {
        let mut c = PciConfig::new(id());
        c.add_bar(0, 0x8000, BarKind::Memory64 { prefetchable: false }, 0xc000_0000)
            .unwrap();
        assert_eq!(c.read_u32(0x10), 0xc000_0004);
        assert_eq!(c.read_u32(0x14), 0);
        // The sizing probe: all ones, read back, restore.
        assert_eq!(c.write(0x10, &[0xff; 4]).bar_moved, Some(0));
        c.write(0x14, &[0xff; 4]);
        assert_eq!(c.read_u32(0x10), 0xffff_8004);
        assert_eq!(c.read_u32(0x14), 0xffff_ffff);
        assert_eq!(c.decoded(0), None, "the sizing pattern decodes nothing");
        c.write(0x10, &0xc000_0000u32.to_le_bytes());
        c.write(0x14, &0u32.to_le_bytes());
        assert_eq!(c.bar(0).unwrap().address, 0xc000_0000);
        assert_eq!(c.decoded(0), None, "memory decoding is off");
        c.write(reg::COMMAND, &command::MEMORY.to_le_bytes());
        assert_eq!(c.decoded(0), Some((0xc000_0000, 0xc000_8000)));
        // A move, byte by byte.
        c.write(0x12, &[0x10]);
        assert_eq!(c.bar(0).unwrap().address, 0xc010_0000);
    }

    #[test]
    fn bad_bars_are_refused_by_name() {
        let mut c = PciConfig::new(id());
        assert_eq!(
            c.add_bar(0, 0x3000, BarKind::Memory32, 0),
            Err(ConfigError::BarSize { index: 0, size: 0x3000 })
        );
        assert_eq!(
            c.add_bar(5, 0x1000, BarKind::Memory64 { prefetchable: true }, 0),
            Err(ConfigError::BarIndex(5))
        );
        assert_eq!(
            c.add_bar(1, 0x1000, BarKind::Memory32, 0x800),
            Err(ConfigError::BarAddress {
                index: 1,
                address: 0x800,
                size: 0x1000
            })
        );
        c.add_bar(0, 0x1000, BarKind::Memory64 { prefetchable: false }, 0)
            .unwrap();
        assert_eq!(
            c.add_bar(1, 0x1000, BarKind::Memory32, 0),
            Err(ConfigError::BarTaken(1))
        );
    }

    #[test]
    fn capabilities_chain() {
        let mut c = PciConfig::new(id());
        let a = c.add_capability(0x09, &[14, 1, 0, 0], &[0; 4]).unwrap();
        let b = c.add_capability(0x11, &[0x03, 0x00], &[0x00, 0xc0]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(c.read_u32(reg::STATUS) >> 16 & 0x10, 0x10, "status says a list follows");
        assert_eq!(c.read_u32(reg::CAPABILITIES) & 0xff, 0x40);
        assert_eq!(c.read_u32(0x40) & 0xffff, 0x4809);
        assert_eq!(c.read_u32(0x48) & 0xffff, 0x0011);
        c.write(0x4a, &[0xff, 0xff]);
        assert_eq!(c.read_u32(0x48) >> 16, 0xc003, "only the writable bits");
        let big = vec![0; 200];
        assert_eq!(
            c.add_capability(0x09, &big, &big),
            Err(ConfigError::CapabilitySpace { len: 202 })
        );
    }

    #[test]
    fn state_round_trips_and_foreign_state_is_refused() {
        let mut a = PciConfig::new(id());
        a.add_bar(0, 0x8000, BarKind::Memory64 { prefetchable: false }, 0xc000_0000)
            .unwrap();
        a.write(reg::COMMAND, &(command::MEMORY | command::BUS_MASTER).to_le_bytes());
        a.write(0x10, &0xd000_0000u32.to_le_bytes());
        let state = a.save();
        let mut b = PciConfig::new(id());
        b.add_bar(0, 0x8000, BarKind::Memory64 { prefetchable: false }, 0xc000_0000)
            .unwrap();
        b.restore(&state).unwrap();
        assert_eq!(b, a);

        let mut other = PciConfig::new(Identity { device: 0x1044, ..id() });
        other
            .add_bar(0, 0x8000, BarKind::Memory64 { prefetchable: false }, 0xc000_0000)
            .unwrap();
        let err = other.restore(&state).unwrap_err();
        assert!(err.contains("configuration byte 0x2"), "{err}");
        let mut misplaced = state.clone();
        misplaced.bar_addresses[0] = Some(0xc000_0100);
        assert!(b.restore(&misplaced).unwrap_err().contains("BAR 0 at 0xc0000100"));
        let mut extra = state;
        extra.bar_addresses[2] = Some(0);
        assert!(b.restore(&extra).unwrap_err().contains("one side only"));
    }
}
