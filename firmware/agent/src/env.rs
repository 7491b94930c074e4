//! What the agent needs from its surroundings: guest memory, the platform
//! (evidence, randomness, the one-way "retire" notice) and the
//! destination's epoch table. The firmware implements them over
//! identity-mapped memory and I/O ports, the tests over plain vectors.

use core::fmt;
use covm_agent_protocol::evidence::REPORT_LEN;
use covm_agent_protocol::{Evidence, Platform as PlatformCode, PAGE_SIZE};
use covm_guest_abi::mailbox::{header, HEADER};

/// Guest-physical memory as the agent sees it.
///
/// The agent calls the page functions only for pages of its private
/// memory map ([`crate::MemoryMap`]) and the window functions only for
/// the agent window (header, `TO_AGENT`, `FROM_AGENT`, the VMSA area), so
/// an implementation may trust every address it is given.
///
/// Guest pages may change while they are read (the workload runs during
/// pre-copy): an implementation copies what it sees, and the agent seals
/// that copy, never the live page.
///
/// Every method takes `&self`, and the memory is `Sync`: with several
/// lanes the agent's vCPUs read and write guest memory at once (each its
/// own pages and its own part of `FROM_AGENT`), as guest memory is.
pub trait GuestMemory: Sync {
    /// Copies the 4 KiB page at `gpa` into `out`.
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]);
    /// Writes the 4 KiB page at `gpa`.
    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]);
    /// Whether every byte of the page at `gpa` reads as zero.
    fn page_is_zero(&self, gpa: u64) -> bool;
    /// Whether the page at `gpa` is known to hold zeros without reading
    /// it: launch left it zero and nothing has written it since (the
    /// firmware answers from its page tables' dirty bits, see
    /// `covm_guest_abi::layout::WRITE_TRACKED_START`). `false` only means
    /// "read it to know"; an implementation with no such record answers
    /// `false` always.
    fn known_zero(&self, gpa: u64) -> bool;
    /// Pages in each aligned block [`GuestMemory::known_zero`] answers
    /// for as one (the firmware: 512, one 2 MiB page-table entry): its
    /// answer for a block's first page holds for every page of the block,
    /// so a zero block is skipped whole. 1 (the default): page by page.
    fn known_zero_block(&self) -> u64 {
        1
    }
    /// Fills the page at `gpa` with zeros.
    fn zero_page(&self, gpa: u64);
    /// Copies `out.len()` bytes of the agent window from `gpa`.
    fn read_window(&self, gpa: u64, out: &mut [u8]);
    /// Writes `data` into the agent window at `gpa`.
    fn write_window(&self, gpa: u64, data: &[u8]);
}

/// The pages of the block starting at `page` when the whole block lies
/// before `end` and is known zero ([`GuestMemory::known_zero_block`]);
/// `None` where it must be looked at page by page.
pub(crate) fn known_zero_block_at(mem: &impl GuestMemory, page: u64, end: u64) -> Option<u64> {
    let block = mem.known_zero_block();
    let span = block.checked_mul(covm_agent_protocol::PAGE_SIZE as u64)?;
    (block > 1 && page % span == 0 && page.checked_add(span)? <= end && mem.known_zero(page)).then_some(block)
}

/// Why the platform could not do what the agent asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformError {
    /// The platform wrote no report (its status code).
    NoReport(u32),
    /// The report the platform wrote does not decode.
    BadReport(covm_agent_protocol::Error),
    /// No random bytes (RDRAND kept failing, or there is none).
    NoRandomness,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformError::NoReport(code) => write!(f, "the platform wrote no attestation report (status {code})"),
            PlatformError::BadReport(e) => write!(f, "the platform's attestation report is malformed: {e}"),
            PlatformError::NoRandomness => f.write_str("the platform gives no random bytes"),
        }
    }
}

/// The confidential platform, from inside the guest.
pub trait Platform {
    /// A signed attestation report of this VM carrying `report_data`.
    fn report(&mut self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError>;
    /// Fills `out` with random bytes from the platform's generator.
    fn fill_random(&mut self, out: &mut [u8]) -> Result<(), PlatformError>;
    /// Tells the platform the destination committed: this VM's workload
    /// must never run again ([`covm_guest_abi::ports::AGENT_RETIRE`]).
    fn retire(&mut self);
    /// What the host holds `pages` pages from page number `first` to be
    /// (`ports::page_state::QUERY`: `SHARED`, `PRIVATE`, `MIXED`, or
    /// anything else where the platform cannot say).
    fn page_state_query(&mut self, first: u64, pages: u64) -> u32;
    /// A monotonic tick count for `COSTS` (the firmware: the time-stamp
    /// counter); 0 always where there is no clock (the counts are then 0).
    fn ticks(&self) -> u64 {
        0
    }
    /// The agent's vCPUs that work together on a session's lanes (see
    /// [`Team`]); `None` (the default): the agent's own vCPU only.
    fn team(&self) -> Option<&dyn Team> {
        None
    }
}

/// Most workers a [`Team`] may have: one per lane.
pub const MAX_WORKERS: usize = covm_agent_protocol::record::MAX_LANES;

/// The agent's vCPUs working as one: with a session of several lanes,
/// worker `w` seals or opens the records of lane `w`. The firmware runs
/// worker 0 on the agent's own vCPU and the others on its helper vCPUs;
/// the tests on threads.
pub trait Team {
    /// Workers, the calling vCPU's included (1 to [`MAX_WORKERS`]).
    fn workers(&self) -> usize;
    /// Runs `work(w)` for every worker `w` at once (worker 0 on the calling
    /// vCPU) and returns once every call has returned.
    fn join(&self, work: &(dyn Fn(usize) + Sync));
}

/// Lends the destination's epoch table (`mailbox::AGENT_EPOCHS`: one
/// `u32` per 4 KiB frame) to an [`covm_agent_protocol::ImportChecker`].
///
/// The checker keeps the table for its whole life and cannot give it
/// back, so each destination session borrows it anew. The agent asks only
/// when no checker holding an earlier loan is alive any more (it drops
/// the old session first), so an implementation over one fixed region
/// never hands out two live references to it.
pub trait EpochTables<'a> {
    /// The table; its contents do not matter (the checker zeroes it).
    fn lend(&mut self) -> &'a mut [u32];
}

/// Asks the platform for a report through the mailbox header, the way the
/// ABI says (`mailbox` module doc, "Evidence"): writes `report_data` and a
/// stale status, calls `ring` (the firmware's `out` to
/// [`covm_guest_abi::ports::AGENT_REPORT`]), then copies the platform's
/// code, status and report into private memory before decoding them.
pub fn request_report<M: GuestMemory>(
    memory: &mut M,
    report_data: &[u8; 64],
    ring: impl FnOnce(&mut M),
) -> Result<Evidence, PlatformError> {
    let at = |offset: usize| HEADER + offset as u64;
    memory.write_window(at(header::REPORT_DATA), report_data);
    memory.write_window(at(header::REPORT_STATUS), &u32::MAX.to_le_bytes());
    ring(memory);
    let mut word = [0u8; 4];
    memory.read_window(at(header::REPORT_STATUS), &mut word);
    let status = u32::from_le_bytes(word);
    if status != 0 {
        return Err(PlatformError::NoReport(status));
    }
    let mut code = [0u8; 2];
    memory.read_window(at(header::REPORT_PLATFORM), &mut code);
    let mut report = [0u8; REPORT_LEN];
    memory.read_window(at(header::REPORT), &mut report);
    let platform = PlatformCode::from_code(u16::from_le_bytes(code)).map_err(PlatformError::BadReport)?;
    Evidence::from_raw(platform, &report).map_err(PlatformError::BadReport)
}
