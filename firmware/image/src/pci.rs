//! PCI Express through ECAM (`layout::PCI_ECAM_BASE`), from ring 3.
//!
//! Enumeration, BAR sizing and the command register go through
//! virtio-drivers' `PciRoot` over its `MmioCam`; the few registers it has
//! no method for (a capability's body, the MSI-X message control) are read
//! and written here as plain 32-bit ECAM accesses.
//!
//! BARs: covm programs every BAR itself inside the 32-bit MMIO window;
//! QEMU microvm leaves them at 0. The firmware keeps every BAR that has an
//! address and places each memory BAR still at 0 in
//! `layout::PCI_MMIO32_BASE..+PCI_MMIO32_SIZE`, naturally aligned (a BAR's
//! size is a power of two), clear of every BAR already there, 64-bit BARs
//! too (below 4 GiB: the firmware maps nothing above). I/O BARs are left
//! alone: the drivers use memory BARs only. Then memory decoding and bus
//! mastering are switched on, INTx off (the firmware takes MSI-X only).
//! Only bus 0 is scanned: microvm's and covm's devices sit there, and the
//! firmware configures no bridges.

use crate::mmio;
use crate::serial::Text;
use core::fmt;
use covm_guest_abi::layout::{PCI_ECAM_BASE, PCI_MMIO32_BASE, PCI_MMIO32_SIZE};
use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, DeviceFunction, DeviceFunctionInfo, HeaderType, MemoryBarType, MmioCam, PciRoot,
};

/// Most functions the firmware keeps track of (bus 0 has at most 256).
const MAX_FUNCTIONS: usize = 32;
/// Most memory BARs in the window the allocator steers around.
const MAX_BARS: usize = MAX_FUNCTIONS * 6;
/// PCI capability ID of MSI-X.
const CAP_MSIX: u8 = 0x11;

/// A function found on bus 0.
pub struct Function {
    pub df: DeviceFunction,
    pub info: DeviceFunctionInfo,
}

/// Why PCI could not be set up, naming the function and BAR.
#[derive(Debug)]
pub enum Error {
    /// Bus 0 has more functions than the firmware tracks.
    TooManyFunctions,
    /// A BAR with a type the PCI specification reserves.
    BadBar { df: DeviceFunction, bar: u8 },
    /// No naturally aligned room left in the 32-bit window.
    NoRoom { df: DeviceFunction, bar: u8, size: u64 },
    /// The function did not keep the address written to its BAR.
    NotTaken {
        df: DeviceFunction,
        bar: u8,
        wrote: u64,
        reads: u64,
    },
    /// An MSI-X table in an unassigned BAR, or not inside it.
    BadMsixTable { df: DeviceFunction, bar: u8, offset: u32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyFunctions => write!(f, "pci: more than {MAX_FUNCTIONS} functions on bus 0"),
            Self::BadBar { df, bar } => write!(f, "pci: {df} bar{bar} has a reserved memory type"),
            Self::NoRoom { df, bar, size } => write!(
                f,
                "pci: no room for {df} bar{bar} ({size:#x} bytes) in the 32-bit window {PCI_MMIO32_BASE:#x}+{PCI_MMIO32_SIZE:#x}"
            ),
            Self::NotTaken { df, bar, wrote, reads } => {
                write!(f, "pci: {df} bar{bar} reads {reads:#x} after the firmware wrote {wrote:#x}")
            }
            Self::BadMsixTable { df, bar, offset } => {
                write!(f, "pci: {df} MSI-X table at bar{bar}+{offset:#x} is not inside an assigned memory BAR")
            }
        }
    }
}

/// Bus 0 after BAR assignment.
pub struct Pci {
    pub root: PciRoot<MmioCam<'static>>,
    functions: [Option<Function>; MAX_FUNCTIONS],
}

/// Where a function's MSI-X table is.
pub struct Msix {
    /// Offset of the MSI-X capability in configuration space.
    cap: u8,
    /// Guest-physical address of the table.
    pub table: u64,
    /// Number of table entries.
    pub entries: u16,
}

fn ecam(df: DeviceFunction, offset: u16) -> *mut u32 {
    let bdf = (df.bus as u64) << 20 | (df.device as u64) << 15 | (df.function as u64) << 12;
    (PCI_ECAM_BASE + bdf + offset as u64) as *mut u32
}

/// A 32-bit configuration read (offset 4-byte aligned).
pub fn config_read(df: DeviceFunction, offset: u16) -> u32 {
    // SAFETY: ECAM is identity-mapped uncached device memory (ring0.s);
    // a read of a function's configuration space has no side effects.
    unsafe { mmio::read_u32(ecam(df, offset)) }
}

fn config_write(df: DeviceFunction, offset: u16, value: u32) {
    // SAFETY: as for `config_read`; callers write only registers they own.
    unsafe { mmio::write_u32(ecam(df, offset), value) }
}

/// A memory BAR's address and size, if it is one.
fn memory_bar(info: &Option<BarInfo>) -> Option<(u64, u64, MemoryBarType)> {
    match info {
        Some(BarInfo::Memory {
            address_type,
            address,
            size,
            ..
        }) if *size != 0 => Some((*address, *size, *address_type)),
        _ => None,
    }
}

/// Places naturally aligned BARs in the window, around the ones in `used`.
struct Allocator {
    used: [(u64, u64); MAX_BARS],
    count: usize,
}

impl Allocator {
    fn add(&mut self, start: u64, end: u64) {
        if self.count < MAX_BARS {
            self.used[self.count] = (start, end);
            self.count += 1;
        }
    }

    fn place(&mut self, size: u64) -> Option<u64> {
        let end = PCI_MMIO32_BASE + PCI_MMIO32_SIZE;
        let mut at = PCI_MMIO32_BASE.next_multiple_of(size);
        'search: while at + size <= end {
            for &(s, e) in &self.used[..self.count] {
                if at < e && s < at + size {
                    at = e.next_multiple_of(size);
                    continue 'search;
                }
            }
            self.add(at, at + size);
            return Some(at);
        }
        None
    }
}

impl Pci {
    /// Scans bus 0, assigns the unassigned memory BARs and enables the
    /// functions. Prints one line per function.
    pub fn probe() -> Result<Pci, Error> {
        // SAFETY: the ECAM window is identity-mapped uncached (ring0.s) for
        // the whole run and accessed only as configuration space.
        let cam = unsafe { MmioCam::new(PCI_ECAM_BASE as *mut u8, Cam::Ecam) };
        let mut pci = Pci {
            root: PciRoot::new(cam),
            functions: [const { None }; MAX_FUNCTIONS],
        };
        let mut count = 0;
        for (df, info) in pci.root.enumerate_bus(0) {
            // All ones is "no function"; a VMM that answers zeros is not a
            // function either.
            if info.vendor_id == 0 || info.vendor_id == 0xffff {
                continue;
            }
            if count == MAX_FUNCTIONS {
                return Err(Error::TooManyFunctions);
            }
            pci.functions[count] = Some(Function { df, info });
            count += 1;
        }
        let mut alloc = Allocator {
            used: [(0, 0); MAX_BARS],
            count: 0,
        };
        // The BARs already placed (by covm), so new ones steer clear.
        for i in 0..count {
            let df = pci.functions[i].as_ref().expect("counted").df;
            if pci.functions[i].as_ref().expect("counted").info.header_type != HeaderType::Standard {
                continue;
            }
            let mut index = 0u8;
            while index < 6 {
                let bar = pci.bar(df, index)?;
                if let Some((address, size, _)) = memory_bar(&bar) {
                    if address != 0 {
                        alloc.add(address, address + size);
                    }
                }
                index += if bar.as_ref().is_some_and(BarInfo::takes_two_entries) {
                    2
                } else {
                    1
                };
            }
        }
        for i in 0..count {
            let function = pci.functions[i].as_ref().expect("counted");
            let (df, info) = (function.df, function.info.clone());
            if info.header_type != HeaderType::Standard {
                crate::println!("pci: {df} {info}: not an endpoint, left alone (buses behind bridges are not scanned)");
                continue;
            }
            pci.assign(df, &info, &mut alloc)?;
        }
        Ok(pci)
    }

    /// Sizes BAR `index` of `df` (virtio-drivers turns decoding off meanwhile).
    fn bar(&mut self, df: DeviceFunction, index: u8) -> Result<Option<BarInfo>, Error> {
        self.root
            .bar_info(df, index)
            .map_err(|_| Error::BadBar { df, bar: index })
    }

    fn assign(&mut self, df: DeviceFunction, info: &DeviceFunctionInfo, alloc: &mut Allocator) -> Result<(), Error> {
        let mut line = Text::<256>::new();
        line.push(format_args!("pci: {df} {:04x}:{:04x}", info.vendor_id, info.device_id));
        if let Some(kind) = virtio_drivers::transport::pci::virtio_device_type(info) {
            line.push(format_args!(" virtio {kind:?}"));
        }
        let mut index = 0u8;
        let mut any_memory = false;
        while index < 6 {
            let bar = self.bar(df, index)?;
            let wide = bar.as_ref().is_some_and(BarInfo::takes_two_entries);
            if let Some((mut address, size, kind)) = memory_bar(&bar) {
                any_memory = true;
                let mut how = "";
                if address == 0 {
                    address = alloc.place(size).ok_or(Error::NoRoom { df, bar: index, size })?;
                    match kind {
                        MemoryBarType::Width64 => self.root.set_bar_64(df, index, address),
                        _ => self.root.set_bar_32(df, index, address as u32),
                    }
                    let reads = memory_bar(&self.bar(df, index)?).map_or(0, |(a, _, _)| a);
                    if reads != address {
                        return Err(Error::NotTaken {
                            df,
                            bar: index,
                            wrote: address,
                            reads,
                        });
                    }
                    how = " placed";
                }
                let width = if wide { "64" } else { "32" };
                line.push(format_args!(" bar{index} {address:#x}+{size:#x} ({width}-bit{how})"));
            }
            index += if wide { 2 } else { 1 };
        }
        if any_memory {
            let (_, command) = self.root.get_status_command(df);
            self.root.set_command(
                df,
                command | Command::MEMORY_SPACE | Command::BUS_MASTER | Command::INTERRUPT_DISABLE,
            );
        }
        crate::println!("{}", line.as_str());
        Ok(())
    }

    /// The functions found on bus 0.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter().flatten()
    }

    /// The assigned address of memory BAR `bar` of `df`, if it has one.
    pub fn bar_address(&mut self, df: DeviceFunction, bar: u8) -> Option<(u64, u64)> {
        let info = self.root.bar_info(df, bar).ok()?;
        memory_bar(&info)
            .filter(|&(address, _, _)| address != 0)
            .map(|(a, s, _)| (a, s))
    }

    /// The function's MSI-X table, if it has the capability.
    pub fn msix(&mut self, df: DeviceFunction) -> Option<Result<Msix, Error>> {
        let cap = self.root.capabilities(df).find(|c| c.id == CAP_MSIX)?;
        let entries = (cap.private_header & 0x7ff) + 1;
        let table = config_read(df, cap.offset as u16 + 4);
        let (bar, offset) = ((table & 7) as u8, table & !7);
        let bad = Error::BadMsixTable { df, bar, offset };
        let located = match self.bar_address(df, bar) {
            Some((base, size)) if offset as u64 + entries as u64 * 16 <= size => Ok(Msix {
                cap: cap.offset,
                table: base + offset as u64,
                entries,
            }),
            _ => Err(bad),
        };
        Some(located)
    }

    /// Points MSI-X table entry `entry` at local APIC `apic_id` (xAPIC,
    /// physical destination mode) with `vector`, fixed delivery, edge,
    /// unmasked; then enables MSI-X on the function with the function mask
    /// clear. The other entries stay as they are (masked since reset).
    pub fn msix_route(&mut self, df: DeviceFunction, msix: &Msix, entry: u16, apic_id: u32, vector: u8) {
        assert!(entry < msix.entries, "pci: {df} has no MSI-X entry {entry}");
        let slot = (msix.table + entry as u64 * 16) as *mut u32;
        // SAFETY: the entry lies inside the function's assigned memory BAR
        // (checked by `msix`), identity-mapped uncached; the table is
        // accessed 32 bits at a time, as the PCI specification requires.
        unsafe {
            mmio::write_u32(slot.add(3), 1); // masked while it changes
            mmio::write_u32(slot, 0xfee0_0000 | (apic_id & 0xff) << 12);
            mmio::write_u32(slot.add(1), 0);
            mmio::write_u32(slot.add(2), vector as u32);
            mmio::write_u32(slot.add(3), 0);
        }
        let header = config_read(df, msix.cap as u16);
        // Message control is the upper half: bit 31 enable, 30 function mask.
        config_write(df, msix.cap as u16, (header | 1 << 31) & !(1 << 30));
    }
}
