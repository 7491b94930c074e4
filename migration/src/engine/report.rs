//! What a finished migration reports, on each side.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where the source's downtime went: from the pause to the Commit. The
/// destination's resume comes after; it is in the destination's
/// [`ReceiveReport::resume_ms`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DowntimeBreakdown {
    /// Reading the last dirty log and sending the last pages.
    pub final_pages_ms: f64,
    /// `save_state` on the paused VM and sealing its state (the sealer's
    /// records are queued, or written if large).
    pub state_save_ms: f64,
    /// Sending what is queued and Complete.
    pub state_transfer_ms: f64,
    /// From Complete sent to Commit read: the destination's restore, its
    /// checks and commit, and the round trip.
    pub restore_and_commit_ms: f64,
}

/// Where one side's confidential page work went: covm's view (waiting
/// on the agent, copying to and from its mailbox) and the agent's own
/// (its clock's ticks, converted). A plain migration has none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentCosts {
    /// Agent commands run.
    pub commands: u64,
    /// covm waiting on the agent, from posting a command to its answer.
    pub wait_ms: f64,
    /// The agent inside its commands; the rest of `wait_ms` is exits, the
    /// doorbell and the agent's vCPU waiting for a host CPU.
    pub busy_ms: f64,
    /// Copying into the agent's private memory: a page into its record
    /// (source), a record out of the mailbox (destination).
    pub copy_in_ms: f64,
    /// Sealing (source); opening and checking (destination).
    pub crypto_ms: f64,
    /// Copying out: a record into the mailbox (source), a page into guest
    /// memory, with its first touch (destination).
    pub copy_out_ms: f64,
    /// Zero pages: checked (source), cleared (destination).
    pub zero_ms: f64,
    /// covm copying input into the mailbox and output out of it.
    pub mailbox_copy_ms: f64,
}

/// The source's summary of a successful migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// From Hello to Commit.
    pub total_ms: f64,
    /// Of which before the first page: the destination building its VM
    /// and, confidential, the agents' attested handshake.
    #[serde(default)]
    pub setup_ms: f64,
    /// From the pause to the Commit (the guest ran nowhere meanwhile).
    pub downtime_ms: f64,
    /// Where the downtime went.
    pub downtime: DowntimeBreakdown,
    /// Frame bytes sent, headers included.
    pub bytes_sent: u64,
    /// Pages sent with their data.
    pub pages_sent: u64,
    /// Pages sent as zero-page markers.
    pub zero_pages: u64,
    /// Rounds, the full pass and the final one included.
    pub rounds: u32,
    /// Pages of the final (paused) round.
    pub final_round_pages: u64,
    /// Bytes of non-memory state.
    pub state_bytes: u64,
    /// Highest vCPU throttle applied, in percent.
    pub max_throttle_percent: u8,
    /// Bytes sent over total time.
    pub throughput_bytes_per_s: u64,
    /// False when `timeout_s` with strategy `Ignore` forced the pause.
    pub converged: bool,
    /// Milliseconds the sealer spent sealing (confidential: the agent's
    /// crypto and the mailbox; plain: 0).
    #[serde(default)]
    pub crypto_ms: u64,
    /// Time blocked writing frames to the link (and framing them).
    #[serde(default)]
    pub wire_ms: f64,
    /// Confidential: where the agent's work went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentCosts>,
}

/// The destination's summary of a successful migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiveReport {
    /// From Hello to Commit sent.
    pub total_ms: f64,
    /// Of which before the first page: building the VM and, confidential,
    /// the agents' attested handshake.
    #[serde(default)]
    pub setup_ms: f64,
    /// `restore_state`.
    pub restore_ms: f64,
    /// Frame bytes received, headers included.
    pub bytes_received: u64,
    /// Pages received with their data.
    pub pages: u64,
    /// Pages received as zero-page markers.
    pub zero_pages: u64,
    /// Rounds, the final one included.
    pub rounds: u32,
    /// Bytes of non-memory state.
    pub state_bytes: u64,
    /// From Commit sent to the vCPUs running again: the last part of the
    /// downtime, which the source cannot see. Filled in by the VMM, which
    /// alone starts the VM.
    pub resume_ms: f64,
    /// Milliseconds the opener spent opening (confidential: the agent's
    /// crypto and the mailbox; plain: 0).
    #[serde(default)]
    pub crypto_ms: u64,
    /// Time blocked reading frames from the link (and decoding them).
    #[serde(default)]
    pub wire_ms: f64,
    /// Confidential: where the agent's work went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentCosts>,
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn whole_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl MigrationReport {
    /// The report as one JSON object (for logs and `vm.info`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ReceiveReport {
    /// The report as one JSON object (for logs and `vm.info`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
