//! Guest-physical layout shared by covm and the firmware.
//!
//! ```text
//! 0x0000_6000  migration policy (confidential platforms; written by covm)
//! 0x0000_7000  PVH start info + memory map (written by covm)
//! 0x0000_8000  AP start-up trampoline (firmware, real mode)
//! 0x0010_0000  firmware image (text, data, bss with per-CPU stacks)
//! 0x0200_0000  dirty workload: generation table, one u32 per page
//! 0x0400_0000  dirty workload: the region, page i at DIRTY_REGION + i * 4096
//! ```
//! The generation of each page lives in the table, away from the page, so a
//! page put back to an older version is told apart from a current one.

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
