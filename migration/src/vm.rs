//! What the engine needs from a VM, and nothing more.
//!
//! The engine never opens `/dev/kvm`: the VMM implements these traits over
//! its KVM VM (dirty log with manual protection, guest memory, vCPU
//! pause/resume and throttling, state save/restore), and the engine's unit
//! tests implement them over a fake VM.

/// Size of a guest page as the dirty log counts them.
pub const PAGE_SIZE: u64 = 4096;

/// Why a VM operation failed, in the VMM's words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VmError(pub String);

/// A RAM range of the guest: (guest-physical start, length in bytes).
pub type MemoryRange = (u64, u64);

/// Dirty pages of one memory range: bit `i` of word `i / 64` set means the
/// page at `range.0 + i * PAGE_SIZE` was written since it was last cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// The range the bitmap covers.
    pub range: MemoryRange,
    /// One bit per page.
    pub bits: Vec<u64>,
}

/// The source side: a running VM whose memory and state leave.
pub trait SourceVm: Send {
    /// The guest's RAM ranges, in address order.
    fn memory_ranges(&self) -> Vec<MemoryRange>;

    /// Turns dirty tracking on: from now on every page the guest (or the
    /// VMM) writes is reported by [`SourceVm::dirty_pages`] until cleared.
    fn start_dirty_tracking(&mut self) -> Result<(), VmError>;

    /// Turns dirty tracking off (after a failed migration).
    fn stop_dirty_tracking(&mut self) -> Result<(), VmError>;

    /// Pages written since they were last cleared, one bitmap per range.
    /// Reading does not clear: pages stay reported until
    /// [`SourceVm::clear_dirty`] (KVM's manual dirty-log protection).
    fn dirty_pages(&mut self) -> Result<Vec<DirtyBitmap>, VmError>;

    /// Clears (re-arms) dirty tracking of `pages` pages from `gpa`. The
    /// engine clears a chunk *before* reading it, so a write racing the
    /// read dirties the page again instead of being lost.
    fn clear_dirty(&mut self, gpa: u64, pages: u64) -> Result<(), VmError>;

    /// Copies guest memory at `gpa` into `buf`.
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmError>;

    /// For each of `pages` pages from `gpa`: `true` if the page is known to
    /// be zero without reading it (never populated in the host), `false`
    /// if unknown. Reading untouched memory costs a host page fault per
    /// page, which is slow under nested virtualisation; the engine skips
    /// the reads of pages reported here.
    fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmError>;

    /// Slows the vCPUs so they run only `100 - percent` % of the time
    /// (0 = full speed), to let pre-copy converge.
    fn set_throttle(&mut self, percent: u8) -> Result<(), VmError>;

    /// Stops the vCPUs (stop-and-copy).
    fn pause(&mut self) -> Result<(), VmError>;

    /// Runs the vCPUs again: the migration failed before the destination
    /// committed, so the source keeps the guest.
    fn resume(&mut self) -> Result<(), VmError>;

    /// Every piece of state but memory (vCPUs, interrupt controllers,
    /// timers, devices), serialised; called while paused.
    fn save_state(&mut self) -> Result<Vec<u8>, VmError>;
}

/// The destination side: an incoming VM being filled.
pub trait DestinationVm: Send {
    /// Writes `data` into guest memory at `gpa`.
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmError>;

    /// Fills `pages` pages from `gpa` with zeros.
    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmError>;

    /// Loads the state produced by [`SourceVm::save_state`].
    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmError>;
}

/// A boxed destination (the engine's tests build trait objects).
impl<T: DestinationVm + ?Sized> DestinationVm for Box<T> {
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmError> {
        (**self).write_memory(gpa, data)
    }

    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmError> {
        (**self).zero_memory(gpa, pages)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmError> {
        (**self).restore_state(state)
    }
}
