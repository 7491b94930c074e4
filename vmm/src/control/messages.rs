//! What the control loop is told and answers: the API's requests and
//! replies, and every event it reacts to (API requests, migrations ending,
//! the VM ending, signals). The API, the migration threads and the vCPUs
//! depend on these types only, never on the loop itself.

use crate::config::VmConfig;
use crate::exit::VmExit;
use crate::vm::{Counters, Vm};
use covm_migration::engine::{ReceiveReport, SendOptions};
use covm_migration::transport::Endpoint;
use std::time::Instant;

/// The VM's lifecycle state, as Cloud Hypervisor names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Configured, never booted.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// Booted once, now stopped; can boot again.
    Shutdown,
}

impl VmState {
    /// The name used by the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Running => "Running",
            Self::Paused => "Paused",
            Self::Shutdown => "Shutdown",
        }
    }
}

/// What the API asks of the VMM.
#[derive(Debug)]
pub enum Request {
    /// `vmm.ping`.
    Ping,
    /// `vmm.shutdown`.
    ShutdownVmm,
    /// `vm.create`.
    Create(Box<VmConfig>),
    /// `vm.boot`.
    Boot,
    /// `vm.info`.
    Info,
    /// `vm.counters`.
    Counters,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`.
    ShutdownVm,
    /// `vm.reboot`.
    Reboot,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.delete`.
    Delete,
    /// `vm.send-migration`.
    SendMigration {
        /// Where to.
        endpoint: Endpoint,
        /// Downtime target, timeout and strategy.
        options: Box<SendOptions>,
        /// covm extension: confidential verified mode (the destination
        /// proves its memory equals the source's final memory).
        verified: bool,
    },
    /// `vm.receive-migration`.
    ReceiveMigration {
        /// Where to listen.
        endpoint: Endpoint,
    },
    /// `vm.add-disk` (before the VM boots: a cold plug).
    AddDisk(Box<crate::config::DiskConfig>),
    /// `vm.add-net` (before the VM boots: a cold plug); `true` when its
    /// TAP descriptor came with the request (closed if it is refused).
    AddNet(Box<crate::config::NetConfig>, bool),
    /// `vm.add-vsock` (before the VM boots: a cold plug).
    AddVsock(Box<crate::config::VsockConfig>),
}

/// What a request returns.
#[derive(Debug)]
pub enum Reply {
    /// Done, nothing to return.
    Done,
    /// `vmm.ping`.
    Ping {
        /// covm's process id.
        pid: u32,
    },
    /// `vm.info`.
    Info {
        /// The configuration.
        config: Box<VmConfig>,
        /// The state.
        state: VmState,
        /// Guest memory in bytes.
        memory_actual_size: u64,
        /// The current or last migration.
        migration: Option<serde_json::Value>,
        /// The platform: kind, protection, measurement, host data.
        platform: serde_json::Value,
        /// The PCI devices (id and address), once the VM is built.
        devices: Vec<(String, String)>,
    },
    /// `vm.counters`.
    Counters(Counters),
}

/// Why a request was refused, in the API's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request itself is wrong (400).
    BadRequest(String),
    /// No VM is created (404).
    NotCreated(String),
    /// The action is invalid in the VM's state (405).
    InvalidState(String),
    /// covm failed to carry it out (500).
    Internal(String),
    /// A device with that id already exists (409).
    Conflict(String),
}

impl ApiError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m)
            | Self::NotCreated(m)
            | Self::InvalidState(m)
            | Self::Internal(m)
            | Self::Conflict(m) => m,
        }
    }
}

/// Where a reply goes.
pub type Responder = tokio::sync::oneshot::Sender<Result<Reply, ApiError>>;

/// Everything the control loop reacts to.
pub enum Event {
    /// An API request and where to answer it.
    Api(Request, Responder),
    /// An outgoing migration ended: `Ok(report)` means the destination
    /// committed and runs the guest; `Err` comes with the VM back.
    MigrationSent {
        /// The report (JSON) or the error.
        result: Result<String, String>,
        /// The VM, returned on failure.
        vm: Option<Vm>,
        /// The failure came after the agent sealed its Final record and
        /// neither a Commit nor a valid abort token was read: the VM stays
        /// paused (it may be running at the destination).
        undecided: bool,
    },
    /// An incoming migration committed: run this VM.
    MigrationReceived {
        /// The restored VM, not yet running.
        vm: Vm,
        /// Its configuration.
        config: Box<VmConfig>,
        /// The destination's report (its resume time still to fill in).
        report: ReceiveReport,
        /// When Commit was sent: the guest has been down since before.
        committed: Instant,
    },
    /// SIGINT or SIGTERM: stop the VM and end covm cleanly.
    Signal(i32),
    /// The VM of boot number `generation` ended.
    VmExit {
        /// Which boot of the VM reported it (late reports of a VM already
        /// stopped are ignored).
        generation: u64,
        /// Why.
        exit: VmExit,
    },
}
