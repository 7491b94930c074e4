//! Guest-physical layout shared by covm and the firmware.
//!
//! ```text
//! 0x0000_6000  migration policy (confidential platforms; written by covm)
//! 0x0000_7000  PVH start info + memory map (written by covm)
//! 0x0000_8000  AP start-up trampoline (firmware, real mode)
//! 0x0010_0000  firmware image (text, data, bss with per-CPU stacks)
//! 0x0040_0000  virtio DMA pool (virtqueues and I/O buffers), 4 MiB
//! 0x0080_0000  blk workload: generation table, one u32 per 4 KiB disk block
//! 0x00C0_0000  virtio heap (the drivers' small allocations), 1 MiB
//! 0x0100_0000  migration agent window (`mailbox`, confidential VMs only)
//! 0x0200_0000  dirty workload: generation table, one u32 per page
//! 0x0400_0000  dirty workload: the region, page i at DIRTY_REGION + i * 4096
//!     ...
//! 0xC000_0000  PCI 32-bit MMIO window (BARs), 512 MiB
//! 0xE000_0000  PCI ECAM (configuration space), 256 MiB
//! ```
//! The generation of each page lives in the table, away from the page, so a
//! page put back to an older version is told apart from a current one.
//!
//! The virtio regions sit between the image and the agent window: the
//! image must end below [`WRITE_TRACKED_START`] (4 MiB), the agent window
//! starts at 16 MiB, and `dirty` owns everything from 32 MiB, so 4-16 MiB
//! is the one stretch of low RAM no other user has; a guest of 16 MiB
//! holds it all. They are above `WRITE_TRACKED_START` on purpose: only
//! the workloads that use virtio ever write them, so a VM that never does
//! keeps their 2 MiB pages clean for the migration agent's zero-page
//! shortcut. (A device's DMA writes set no dirty bit: confidential VMs,
//! where that shortcut is used, give devices no access to private memory
//! anyway.)

/// The page where covm places the guest owner's migration policy on a
/// confidential platform (`--migration-policy`): its canonical encoding
/// (`covm_agent_protocol::Policy`, docs/confidential-protocol.md §6) at
/// offset 0, the rest of the page zero. Its length follows from the
/// encoding's own header (32 + 48 × byte 28 + 49 × byte 29, at most 996).
///
/// Covm writes it, the in-guest migration agent reads it. Its contents are
/// not in the launch measurement (the page enters it as one UNMEASURED
/// entry, as on SEV-SNP): they are bound by HOST_DATA = SHA-256 of the
/// encoding instead, which is what lets a policy list the measurement of
/// the very VM it is launched with. A plain VM has nothing here. The page
/// is free in every layout covm uses: below the PVH start info, above the
/// boot GDT/IDT page, away from the firmware image and the `dirty` region.
pub const MIGRATION_POLICY: u64 = 0x0000_6000;

/// Where the firmware image is linked and loaded.
pub const FIRMWARE_BASE: u64 = 0x0010_0000;

/// Where write tracking starts: the first 2 MiB boundary above the
/// firmware image (link.ld asserts the image ends below it). The
/// firmware's page tables map memory in 2 MiB pages; below this address
/// (everything covm loads at launch, and everything the firmware writes
/// before paging is on) their dirty bits are preset, above it they start
/// clear and the CPU sets one on the first
/// write through that 2 MiB page. The guest uses no other mapping, and a
/// confidential VM's private memory is written by no one but the guest,
/// so above this address a clear dirty bit means "zeros, as launch left
/// them": the migration agent seals such pages as zeros without reading
/// them, and the destination's agent need not clear them. Covm never
/// loads anything at or above it into a firmware VM.
pub const WRITE_TRACKED_START: u64 = 0x0040_0000;

/// Where the `dirty` workload keeps one little-endian `u32` generation per
/// page of its region (0 means never written).
pub const DIRTY_GEN_TABLE: u64 = 0x0200_0000;

/// Start of the `dirty` workload's region.
pub const DIRTY_REGION: u64 = 0x0400_0000;

/// The largest region the generation table can describe.
pub const DIRTY_MAX_PAGES: u64 = (DIRTY_REGION - DIRTY_GEN_TABLE) / 4;

/// Size of a page of the region.
pub const PAGE_SIZE: u64 = 4096;

/// Guest-physical address of page `index` of the `dirty` region.
pub const fn dirty_page_gpa(index: u64) -> u64 {
    DIRTY_REGION + index * PAGE_SIZE
}

/// Guest-physical address of the generation counter of page `index`.
pub const fn dirty_gen_gpa(index: u64) -> u64 {
    DIRTY_GEN_TABLE + index * 4
}

/// Start of the firmware's virtio DMA pool: the virtqueues and the I/O
/// buffers that devices read and write. Identity-mapped like all guest
/// memory, so a buffer's guest-physical address is its address.
pub const VIRTIO_DMA: u64 = 0x0040_0000;

/// Size of [`VIRTIO_DMA`].
pub const VIRTIO_DMA_SIZE: u64 = 4 << 20;

/// A confidential VM's shared window: the only memory it can share with
/// the host, and the only memory covm's devices see. The DMA pool is its
/// first 3 MiB ([`CONFIDENTIAL_DMA_SIZE`]); the drivers' bounce buffers
/// (private buffers copied in and out) the rest.
pub const SHARED_WINDOW: u64 = VIRTIO_DMA;
/// Size of [`SHARED_WINDOW`].
pub const SHARED_WINDOW_SIZE: u64 = VIRTIO_DMA_SIZE;
/// A confidential VM's DMA pool: the first part of the window.
pub const CONFIDENTIAL_DMA_SIZE: u64 = 3 << 20;
/// Where the bounce buffers start.
pub const BOUNCE: u64 = SHARED_WINDOW + CONFIDENTIAL_DMA_SIZE;
/// Size of [`BOUNCE`].
pub const BOUNCE_SIZE: u64 = SHARED_WINDOW_SIZE - CONFIDENTIAL_DMA_SIZE;

/// Where the `blk` workload keeps one little-endian `u32` generation per
/// 4 KiB block of its disk region (0 means never written). In guest memory,
/// not on the disk, so it migrates with the VM and a disk that comes back
/// older than the memory is caught.
pub const BLK_GEN_TABLE: u64 = 0x0080_0000;

/// Size of [`BLK_GEN_TABLE`]: at most `BLK_MAX_BLOCKS` blocks.
pub const BLK_GEN_TABLE_SIZE: u64 = 4 << 20;

/// Size of a disk block of the `blk` workload (eight 512-byte sectors).
pub const BLK_BLOCK_SIZE: u64 = 4096;

/// The most blocks the generation table describes (4 GiB of disk).
pub const BLK_MAX_BLOCKS: u64 = BLK_GEN_TABLE_SIZE / 4;

/// Guest-physical address of the generation counter of disk block `block`.
pub const fn blk_gen_gpa(block: u64) -> u64 {
    BLK_GEN_TABLE + block * 4
}

/// The virtio drivers' heap: the few small allocations virtio-drivers
/// makes (indirect descriptor lists, the console's receive buffer). Apart
/// from the migration agent's heap, which is private to the agent.
pub const VIRTIO_HEAP: u64 = 0x00C0_0000;

/// Size of [`VIRTIO_HEAP`].
pub const VIRTIO_HEAP_SIZE: u64 = 1 << 20;

/// Base of the PCI Express enhanced configuration space (ECAM): 4 KiB per
/// function at `base + (bus << 20 | device << 15 | function << 12)`. QEMU's
/// `microvm,pcie=on` puts it here too.
pub const PCI_ECAM_BASE: u64 = 0xE000_0000;

/// Size of [`PCI_ECAM_BASE`]'s window: 256 buses.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;

/// The 32-bit MMIO window for PCI BARs (QEMU microvm: `gpex_mmio_window`).
/// covm programs every BAR inside it; the firmware places any BAR it finds
/// unassigned (address 0) here, naturally aligned, 64-bit BARs too.
pub const PCI_MMIO32_BASE: u64 = 0xC000_0000;

/// Size of [`PCI_MMIO32_BASE`]'s window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;

const _: () = assert!(VIRTIO_DMA >= WRITE_TRACKED_START);
const _: () = assert!(VIRTIO_DMA + VIRTIO_DMA_SIZE <= BLK_GEN_TABLE);
const _: () = assert!(BLK_GEN_TABLE + BLK_GEN_TABLE_SIZE <= VIRTIO_HEAP);
const _: () = assert!(VIRTIO_HEAP + VIRTIO_HEAP_SIZE <= crate::shared_map::SHARED_MAP);
const _: () = assert!(crate::shared_map::SHARED_MAP + PAGE_SIZE <= crate::mailbox::AGENT_WINDOW_START);
const _: () = assert!(PCI_MMIO32_BASE + PCI_MMIO32_SIZE <= PCI_ECAM_BASE);
