//! Why a VM could not be built, run, saved or restored.

use super::confidential::vmsa_area::VmsaAreaError;
use super::kvm::KvmError;
use super::memory::MemoryError;
use crate::arch::regs;
use crate::boot::BootError;
use crate::dirty::{self, DirtyError};
use crate::platform::{image, PlatformError};
use crate::state::snapshot::SnapshotError;
use crate::state::{self, chips};
use crate::vcpu::VcpuError;
use covm_devices::BusError;

/// Errors building a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A device could not be built, restored or handed over.
    #[error("device {id}: {reason}")]
    Device {
        /// The device's id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A KVM VM-level call failed.
    #[error("cannot {what}: {source}")]
    KvmCall {
        /// What was being done.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the payload.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Loading the payload and boot structures.
    #[error(transparent)]
    Load(#[from] image::LoadError),
    /// The platform (root key, measurement).
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Boot registers.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Device placement.
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    /// The serial output file.
    #[error("--serial: cannot create {path}: {source}")]
    SerialFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An eventfd.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// The in-kernel chips' state.
    #[error(transparent)]
    Chips(#[from] chips::ChipsError),
    /// A vCPU's state.
    #[error(transparent)]
    VcpuState(#[from] state::vcpu::VcpuStateError),
    /// A snapshot that does not fit.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A device's state.
    #[error(transparent)]
    DeviceState(#[from] covm_devices::serial::StateError),
    /// Setting up dirty-page tracking.
    #[error(transparent)]
    DirtyLog(#[from] dirty::log::DirtyLogError),
    /// Tracking or reading dirty pages.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// A page range that is not guest RAM.
    #[error("{pages} pages from {gpa:#x} are outside guest memory")]
    OutsideMemory {
        /// Start of the range.
        gpa: u64,
        /// Its length in pages.
        pages: u64,
    },
    /// /proc/self/pagemap could not be read.
    #[error("cannot read /proc/self/pagemap: {0}")]
    PageMap(std::io::Error),
    /// Something this host's KVM cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The emulated platform's VMSA area.
    #[error(transparent)]
    VmsaArea(#[from] VmsaAreaError),
    /// The agent committed a migration: the guest runs elsewhere now.
    #[error("this VM's migration agent read the destination's Commit: the guest runs at the destination and never runs here again")]
    Retired,
    /// An SEV-SNP VM's construction.
    #[error(transparent)]
    Snp(#[from] crate::platform::snp::construct::SnpVmError),
    /// A TDX VM's construction.
    #[error(transparent)]
    Tdx(#[from] crate::platform::tdx::construct::TdxVmError),
    /// An incoming confidential VM's firmware did not get ready.
    #[error("the incoming confidential VM's firmware was not ready within {seconds} s ({what})")]
    AgentNotReady {
        /// How long covm waited.
        seconds: u64,
        /// What was missing.
        what: String,
    },
}
