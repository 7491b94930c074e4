//! virtio-pci devices through the virtio-drivers crate (rcore-os), in ring 3.
//!
//! - [`FwHal`]: DMA memory is a bump allocator over `layout::VIRTIO_DMA`;
//!   guest memory is identity-mapped, so physical == virtual, and sharing
//!   a buffer with a device is handing over its address.
//! - [`FwTransport`]: virtio-drivers' `PciTransport`, plus the one thing it
//!   does not do: give a queue an MSI-X vector (common configuration
//!   `queue_msix_vector`), written while the driver sets the queue up,
//!   before `queue_enable`, as the virtio specification orders it.
//! - [`Devices`]: bus 0 after `pci::Pci::probe`, and the drivers on it.

use crate::pci::{self, Pci};
use crate::pvh::{MemmapEntry, E820_RAM};
use crate::{heap, hw, mmio, println};
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use covm_guest_abi::layout::{CONFIDENTIAL_DMA_SIZE, PCI_MMIO32_BASE, PCI_MMIO32_SIZE, VIRTIO_DMA, VIRTIO_DMA_SIZE};
use covm_guest_abi::mailbox::launch_mode;
use covm_guest_abi::workload::FAIL_DEVICE;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub type Blk = VirtIOBlk<FwHal, FwTransport>;
pub type Console = VirtIOConsole<FwHal, FwTransport>;
pub type Rng = VirtIORng<FwHal, FwTransport>;
/// The `net` workload's driver: 16 buffers a queue of `NET_BUF` bytes.
pub type Net = virtio_drivers::device::net::VirtIONet<FwHal, FwTransport, 16>;
/// A receive buffer's size: a 1514-byte frame and the 12-byte header.
pub const NET_BUF: usize = 2048;
/// The `vsock` workload's driver, with receive buffers of `VSOCK_BUF` bytes.
pub type VsockDriver = virtio_drivers::device::socket::VirtIOSocket<FwHal, FwTransport, VSOCK_BUF>;
/// A vsock receive buffer: a 44-byte header and up to 4052 bytes of data.
pub const VSOCK_BUF: usize = 4096;

/// `virtio_pci_cap.cfg_type` of the common configuration.
const CAP_COMMON_CFG: u8 = 1;
/// PCI capability ID of a vendor capability (virtio's).
const CAP_VENDOR: u8 = 0x09;
/// Offsets in `virtio_pci_common_cfg`.
const COMMON_QUEUE_SELECT: u64 = 22;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 26;

/// Next free byte of the DMA pool.
static DMA_NEXT: AtomicU64 = AtomicU64::new(VIRTIO_DMA);

/// `pages` zeroed pages of the DMA pool, or `None` when it is used up.
/// Never given back: devices and their buffers live for the whole boot.
pub fn dma_pages(pages: usize) -> Option<u64> {
    let bytes = (pages * PAGE_SIZE) as u64;
    // A confidential VM's pool is the first part of its shared window.
    let size = if crate::shared::confidential() {
        CONFIDENTIAL_DMA_SIZE
    } else {
        VIRTIO_DMA_SIZE
    };
    let at = DMA_NEXT.fetch_add(bytes, Ordering::Relaxed);
    if at + bytes > VIRTIO_DMA + size {
        return None;
    }
    // SAFETY: a part of the pool (RAM, checked by `prepare_memory`) that
    // this call alone was handed.
    unsafe { core::ptr::write_bytes(at as *mut u8, 0, bytes as usize) };
    Some(at)
}

/// virtio-drivers' view of the machine.
pub struct FwHal;

// SAFETY: DMA regions are disjoint pages of the pool, zeroed, and
// identity-mapped (their address is the device's address); MMIO regions
// are checked to lie in the uncached PCI window; buffers are shared in
// place, which an identity-mapped guest without an IOMMU allows.
unsafe impl Hal for FwHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match dma_pages(pages) {
            Some(at) => (at, NonNull::new(at as *mut u8).expect("the pool is not at 0")),
            // Physical address 0 is virtio-drivers' "out of DMA memory".
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Only reached if a driver were dropped; the pool is never reused.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let end = PCI_MMIO32_BASE + PCI_MMIO32_SIZE;
        assert!(
            paddr >= PCI_MMIO32_BASE && paddr + size as u64 <= end,
            "virtio: device registers at {paddr:#x}+{size:#x} are outside the PCI window {PCI_MMIO32_BASE:#x}-{end:#x}, \
             the only MMIO the firmware maps uncached for drivers"
        );
        NonNull::new(paddr as *mut u8).expect("checked above")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { crate::shared::share(buffer, direction) }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { crate::shared::unshare(paddr, buffer, direction) }
    }
}

/// A queue to give an MSI-X vector while it is set up.
#[derive(Clone, Copy)]
struct QueueVector {
    queue: u16,
    vector: u16,
    /// Guest-physical address of the common configuration structure.
    common_cfg: u64,
}

/// What the device read back for the last vector written (`u32::MAX`:
/// none written yet). A static because the driver owns the transport.
static VECTOR_READBACK: AtomicU32 = AtomicU32::new(u32::MAX);

/// `PciTransport`, giving one queue an MSI-X vector.
pub struct FwTransport {
    inner: PciTransport,
    vector: Option<QueueVector>,
}

impl FwTransport {
    fn write_common_u16(&self, common_cfg: u64, offset: u64, value: u16) {
        // SAFETY: the common configuration lies in an assigned BAR of this
        // device (found through its capability), identity-mapped uncached.
        unsafe { mmio::write_u16((common_cfg + offset) as *mut u16, value) }
    }

    fn read_common_u16(&self, common_cfg: u64, offset: u64) -> u16 {
        // SAFETY: as in `write_common_u16`.
        unsafe { mmio::read_u16((common_cfg + offset) as *const u16) }
    }
}

impl Transport for FwTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(&mut self, queue: u16, size: u32, descriptors: PhysAddr, driver: PhysAddr, device: PhysAddr) {
        if let Some(v) = self.vector.filter(|v| v.queue == queue) {
            // After the reset and feature negotiation, before the inner
            // queue_set writes queue_enable. The transport is owned by one
            // driver on one CPU, so queue_select is not raced.
            self.write_common_u16(v.common_cfg, COMMON_QUEUE_SELECT, queue);
            self.write_common_u16(v.common_cfg, COMMON_QUEUE_MSIX_VECTOR, v.vector);
            let readback = self.read_common_u16(v.common_cfg, COMMON_QUEUE_MSIX_VECTOR);
            VECTOR_READBACK.store(readback as u32, Ordering::Relaxed);
        }
        self.inner.queue_set(queue, size, descriptors, driver, device)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(&mut self, offset: usize, value: T) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

/// Why a device could not be used; names the device.
#[derive(Debug)]
pub enum OpenError {
    /// No function of that type on bus 0.
    Missing(DeviceType),
    /// The RAM the drivers need is not there.
    Memory(u64),
    Pci(pci::Error),
    Transport(DeviceFunction, VirtioPciError),
    Driver(DeviceFunction, DeviceType, virtio_drivers::Error),
    /// MSI-X asked for, but the function has no MSI-X capability.
    NoMsix(DeviceFunction),
    /// The MSI-X capability or the common configuration is unusable.
    BadMsix(DeviceFunction, &'static str),
    /// The device did not keep the queue's vector (it reads back
    /// `VIRTIO_MSI_NO_VECTOR`, 0xffff, for one it refuses).
    VectorRefused {
        df: DeviceFunction,
        wrote: u16,
        reads: u32,
    },
    /// A confidential VM could not share its window with the host.
    Shared(&'static str),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(kind) => write!(f, "no virtio {kind:?} device on PCI bus 0 (ECAM {:#x})", covm_guest_abi::layout::PCI_ECAM_BASE),
            Self::Memory(end) => write!(
                f,
                "the virtio drivers need RAM from {VIRTIO_DMA:#x} to {:#x} (at least {} MiB of guest memory); the RAM entry holding {VIRTIO_DMA:#x} ends at {end:#x}",
                covm_guest_abi::shared_map::SHARED_MAP + PAGE_SIZE as u64,
                (covm_guest_abi::shared_map::SHARED_MAP + PAGE_SIZE as u64).div_ceil(1 << 20)
            ),
            Self::Pci(e) => write!(f, "{e}"),
            Self::Transport(df, e) => write!(f, "virtio {df}: {e}"),
            Self::Driver(df, kind, e) => write!(f, "virtio {kind:?} {df}: {e}"),
            Self::NoMsix(df) => write!(f, "virtio {df}: no MSI-X capability"),
            Self::BadMsix(df, why) => write!(f, "virtio {df}: {why}"),
            Self::VectorRefused { df, wrote, reads } => write!(
                f,
                "virtio {df}: queue_msix_vector reads {reads:#x} after the firmware wrote {wrote} (the device refused the vector)"
            ),
            Self::Shared(why) => write!(f, "{why}"),
        }
    }
}

/// Prints `error: <why>` and powers off with `workload::FAIL_DEVICE`.
pub fn fail_device(why: fmt::Arguments) -> ! {
    println!("error: {why}");
    hw::power_off(FAIL_DEVICE)
}

static MEMORY_READY: AtomicBool = AtomicBool::new(false);

/// Checks that RAM holds the DMA pool, the blk generation table and the
/// drivers' heap, and hands the heap to its allocator (once).
fn prepare_memory(memmap: &[MemmapEntry]) -> Result<(), OpenError> {
    if MEMORY_READY.load(Ordering::Relaxed) {
        return Ok(());
    }
    // The shared map's page (a confidential VM's) comes right after the heap.
    let end = covm_guest_abi::shared_map::SHARED_MAP + PAGE_SIZE as u64;
    let ram = memmap
        .iter()
        .find(|e| e.kind == E820_RAM && e.addr <= VIRTIO_DMA && VIRTIO_DMA - e.addr < e.size);
    let ram_end = ram.map_or(0, |e| e.addr + e.size);
    if ram_end < end {
        return Err(OpenError::Memory(ram_end));
    }
    heap::init_virtio();
    // A confidential VM shares its window with the host first, and bounces.
    let mode = hw::launch_mode();
    if mode == launch_mode::FRESH || mode == launch_mode::INCOMING {
        crate::shared::init().map_err(OpenError::Shared)?;
    }
    MEMORY_READY.store(true, Ordering::Relaxed);
    Ok(())
}

/// The devices on bus 0.
pub struct Devices {
    pci: Pci,
    memmap: &'static [MemmapEntry],
}

impl Devices {
    /// Scans bus 0 and assigns BARs (see `pci`). Touches no RAM of its own:
    /// that happens only when a driver is opened.
    pub fn probe(memmap: &'static [MemmapEntry]) -> Result<Devices, OpenError> {
        let pci = Pci::probe().map_err(OpenError::Pci)?;
        Ok(Devices { pci, memmap })
    }

    /// The first virtio function of type `kind`.
    pub fn find(&self, kind: DeviceType) -> Option<DeviceFunction> {
        self.pci
            .functions()
            .find(|f| virtio_drivers::transport::pci::virtio_device_type(&f.info) == Some(kind))
            .map(|f| f.df)
    }

    fn transport(
        &mut self,
        kind: DeviceType,
        vector: Option<QueueVector>,
    ) -> Result<(FwTransport, DeviceFunction), OpenError> {
        let df = self.find(kind).ok_or(OpenError::Missing(kind))?;
        prepare_memory(self.memmap)?;
        let inner = PciTransport::new::<FwHal, _>(&mut self.pci.root, df).map_err(|e| OpenError::Transport(df, e))?;
        Ok((FwTransport { inner, vector }, df))
    }

    /// The common configuration structure of `df`, from its capability.
    fn common_cfg(&mut self, df: DeviceFunction) -> Result<u64, OpenError> {
        let cap = self
            .pci
            .root
            .capabilities(df)
            .find(|c| c.id == CAP_VENDOR && (c.private_header >> 8) as u8 == CAP_COMMON_CFG)
            .ok_or(OpenError::BadMsix(df, "no virtio common configuration capability"))?;
        let bar = pci::config_read(df, cap.offset as u16 + 4) as u8;
        let offset = pci::config_read(df, cap.offset as u16 + 8);
        let (base, _) = self
            .pci
            .bar_address(df, bar)
            .ok_or(OpenError::BadMsix(df, "the common configuration's BAR is unassigned"))?;
        Ok(base + offset as u64)
    }

    /// The first virtio-blk disk. With `irq_apic`, its request queue (0)
    /// signals MSI-X table entry 0, routed to that local APIC with
    /// `hw::VIRTIO_VECTOR`; the interrupts are counted by ring 0.
    pub fn blk(&mut self, irq_apic: Option<u32>) -> Result<(Blk, DeviceFunction), OpenError> {
        let vector = match irq_apic {
            None => None,
            Some(apic) => {
                let df = self
                    .find(DeviceType::Block)
                    .ok_or(OpenError::Missing(DeviceType::Block))?;
                let msix = match self.pci.msix(df) {
                    None => return Err(OpenError::NoMsix(df)),
                    Some(located) => located.map_err(OpenError::Pci)?,
                };
                let common_cfg = self.common_cfg(df)?;
                // Entry 0 for queue 0; msix_config (configuration
                // changes) keeps "no vector" from the reset.
                self.pci.msix_route(df, &msix, 0, apic, hw::VIRTIO_VECTOR);
                Some(QueueVector {
                    queue: 0,
                    vector: 0,
                    common_cfg,
                })
            }
        };
        let (transport, df) = self.transport(DeviceType::Block, vector)?;
        VECTOR_READBACK.store(u32::MAX, Ordering::Relaxed);
        let blk = Blk::new(transport).map_err(|e| OpenError::Driver(df, DeviceType::Block, e))?;
        if let Some(v) = vector {
            let reads = VECTOR_READBACK.load(Ordering::Relaxed);
            if reads != v.vector as u32 {
                return Err(OpenError::VectorRefused {
                    df,
                    wrote: v.vector,
                    reads,
                });
            }
        }
        Ok((blk, df))
    }

    /// The first virtio entropy device.
    pub fn rng(&mut self) -> Result<(Rng, DeviceFunction), OpenError> {
        let (transport, df) = self.transport(DeviceType::EntropySource, None)?;
        let rng = Rng::new(transport).map_err(|e| OpenError::Driver(df, DeviceType::EntropySource, e))?;
        Ok((rng, df))
    }

    /// The first virtio-net device.
    pub fn net(&mut self) -> Result<(Net, DeviceFunction), OpenError> {
        let (transport, df) = self.transport(DeviceType::Network, None)?;
        let net = Net::new(transport, NET_BUF).map_err(|e| OpenError::Driver(df, DeviceType::Network, e))?;
        Ok((net, df))
    }

    /// The first virtio-vsock device.
    pub fn vsock(&mut self) -> Result<(VsockDriver, DeviceFunction), OpenError> {
        let (transport, df) = self.transport(DeviceType::Socket, None)?;
        let vsock = VsockDriver::new(transport).map_err(|e| OpenError::Driver(df, DeviceType::Socket, e))?;
        Ok((vsock, df))
    }

    /// The first virtio console (port 0), if there is one.
    pub fn console(&mut self) -> Option<Result<(Console, DeviceFunction), OpenError>> {
        self.find(DeviceType::Console)?;
        Some(self.transport(DeviceType::Console, None).and_then(|(transport, df)| {
            let console = Console::new(transport).map_err(|e| OpenError::Driver(df, DeviceType::Console, e))?;
            Ok((console, df))
        }))
    }
}
