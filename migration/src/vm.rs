//! What the engine needs from a VM, and nothing more.
//!
//! The engine never opens `/dev/kvm`: the VMM implements these traits over
//! its KVM VM (dirty log with manual protection, guest memory, vCPU
//! pause/resume and throttling, state save/restore), and the engine's unit
//! tests implement them over a fake VM.

/// Size of a guest page as the dirty log counts them.
pub const PAGE_SIZE: u64 = 4096;

/// Why the VM could not do what the engine asked.
///
/// Named apart from the VMM's own `VmError`: this is the engine's view of
/// any VM, and keeps the VMM's error whole (its type and its causes).
#[derive(Debug, thiserror::Error)]
pub enum VmOpError {
    /// The VMM failed (KVM, guest memory, devices, a confidential VM's
    /// migration agent).
    #[error(transparent)]
    Vmm(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// An address range the VM's memory does not hold whole.
    #[error("{what} outside RAM at {gpa:#x} (+{len:#x} bytes)")]
    OutsideRam {
        /// What was asked (read, write, zero, clear).
        what: &'static str,
        /// First guest-physical address.
        gpa: u64,
        /// Bytes.
        len: u64,
    },
    /// A memory range of the VM is not made of whole pages.
    #[error("memory range {start:#x}+{len:#x} is not made of whole pages")]
    PartialPages {
        /// First guest-physical address.
        start: u64,
        /// Bytes.
        len: u64,
    },
    /// The VM will not become what it was asked to (an incoming
    /// configuration this VMM refuses), in the VMM's words.
    #[error("{0}")]
    Refused(String),
}

impl VmOpError {
    /// The VMM's error `e`, kept whole.
    pub fn vmm(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Vmm(Box::new(e))
    }
}

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
    fn start_dirty_tracking(&mut self) -> Result<(), VmOpError>;

    /// Turns dirty tracking off (after a failed migration).
    fn stop_dirty_tracking(&mut self) -> Result<(), VmOpError>;

    /// Pages written since they were last cleared, one bitmap per range.
    /// Reading does not clear: pages stay reported until
    /// [`SourceVm::clear_dirty`] (KVM's manual dirty-log protection).
    fn dirty_pages(&mut self) -> Result<Vec<DirtyBitmap>, VmOpError>;

    /// Clears (re-arms) dirty tracking of `pages` pages from `gpa`. The
    /// engine clears a chunk *before* reading it, so a write racing the
    /// read dirties the page again instead of being lost.
    fn clear_dirty(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError>;

    /// Copies guest memory at `gpa` into `buf`.
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmOpError>;

    /// For each of `pages` pages from `gpa`: `true` if the page is known to
    /// be zero without reading it (never populated in the host), `false`
    /// if unknown. Reading untouched memory costs a host page fault per
    /// page, which is slow under nested virtualisation; the engine skips
    /// the reads of pages reported here.
    fn unpopulated_pages(&self, gpa: u64, pages: u64) -> Result<Vec<bool>, VmOpError>;

    /// Slows the vCPUs so they run only `100 - percent` % of the time
    /// (0 = full speed), to let pre-copy converge.
    fn set_throttle(&mut self, percent: u8) -> Result<(), VmOpError>;

    /// Stops the vCPUs (stop-and-copy).
    fn pause(&mut self) -> Result<(), VmOpError>;

    /// Runs the vCPUs again: the migration failed before the destination
    /// committed, so the source keeps the guest.
    fn resume(&mut self) -> Result<(), VmOpError>;

    /// Every piece of state but memory (vCPUs, interrupt controllers,
    /// timers, devices), serialised; called while paused.
    fn save_state(&mut self) -> Result<Vec<u8>, VmOpError>;

    /// The memory a confidential guest shares with the host (its devices'
    /// window), which a confidential migration carries in the clear
    /// beside the sealed rest. None by default.
    fn shared_memory(&self) -> Vec<MemoryRange> {
        Vec::new()
    }
}

/// The destination side: an incoming VM being filled.
pub trait DestinationVm: Send {
    /// Writes `data` into guest memory at `gpa`.
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmOpError>;

    /// Fills `pages` pages from `gpa` with zeros.
    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError>;

    /// Loads the state produced by [`SourceVm::save_state`].
    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmOpError>;

    /// The memory a confidential guest may receive in the clear: where
    /// its shared window lies (any page of it, before the state says
    /// which are shared). None by default.
    fn shareable_memory(&self) -> Vec<MemoryRange> {
        Vec::new()
    }

    /// The memory the guest shares, once the state is restored. None by
    /// default.
    fn shared_memory(&self) -> Vec<MemoryRange> {
        Vec::new()
    }
}

/// A boxed destination (the engine's tests build trait objects).
impl<T: DestinationVm + ?Sized> DestinationVm for Box<T> {
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmOpError> {
        (**self).write_memory(gpa, data)
    }

    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        (**self).zero_memory(gpa, pages)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmOpError> {
        (**self).restore_state(state)
    }

    fn shareable_memory(&self) -> Vec<MemoryRange> {
        (**self).shareable_memory()
    }

    fn shared_memory(&self) -> Vec<MemoryRange> {
        (**self).shared_memory()
    }
}
