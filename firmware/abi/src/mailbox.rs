//! The migration agent's mailbox: how covm drives the in-guest agent on a
//! confidential platform (docs/confidential-migration.md, "Mailbox ABI").
//!
//! # Memory
//!
//! The 16 MiB *agent window* `[AGENT_WINDOW_START, AGENT_WINDOW_END)` is
//! never exported nor imported: it holds the mailbox (the only guest
//! memory covm reads or writes during a confidential migration) and the
//! agent's private memory (its stack, its working buffers, the emulated
//! VMSA area and the destination's epoch table). Every other page of RAM
//! is guest-private and moves only sealed, by the agent.
//!
//! ```text
//! 0x0100_0000  HEADER       one page: command, arguments, results, evidence
//! 0x0110_0000  TO_AGENT     2 MiB: bytes covm hands the agent (handshake
//!                           messages, record batches, control records)
//! 0x0130_0000  FROM_AGENT   2 MiB: bytes the agent hands covm (handshake
//!                           messages, sealed records)
//! 0x0150_0000  agent-private (covm never touches it, except the emulated
//!              platform's VMSA area, the stand-in for SNP's VMSA pages):
//!   0x0150_0000  AGENT_STACK        1 MiB (top at 0x0160_0000)
//!   0x0160_0000  AGENT_SCRATCH      512 KiB: records are copied in here
//!                                   before they are opened, and sealed
//!                                   here before they are copied out
//!   0x0168_0000  AGENT_TEAM         1.5 MiB: the team's control page,
//!                                   then one 64 KiB stack per helper
//!   0x0180_0000  AGENT_VCPU_STATES  2 MiB: one 64 KiB slot per workload
//!                                   vCPU (`u32` length, then the state)
//!   0x01A0_0000  AGENT_DATA         1 MiB: the agent's session objects
//!   0x01B0_0000  AGENT_HEAP         1 MiB: the heap of the SEV-SNP
//!                                   evidence check (RSA, X.509)
//!   0x01C0_0000  AGENT_EPOCHS       4 MiB: one `u32` per 4 KiB frame
//!                                   below 4 GiB (the destination's checks)
//! 0x0200_0000  end of the window
//! ```
//!
//! # Doorbell
//!
//! covm fills the header's command fields and, last, `command_seq`, then
//! wakes the agent. The agent waits with a 32-bit `in` from
//! [`ports::AGENT_DOORBELL`](crate::ports::AGENT_DOORBELL): covm completes
//! that read once a command is posted, with the low 32 bits of its
//! sequence number, or with [`DOORBELL_RETRY`] when it only needs the
//! agent's vCPU out of the read (to pause or stop it); the agent then
//! reads again. The agent answers by writing `status`, `out_len`, the
//! results and, last, `done_seq`, then a 32-bit `out` of the sequence's low
//! bits to [`ports::AGENT_DONE`](crate::ports::AGENT_DONE). Neither side
//! polls or sleeps on a timer; the agent's vCPU costs nothing while idle.
//!
//! # Team
//!
//! The agent may have several vCPUs ([`ports::AGENT_VCPUS`](crate::ports::AGENT_VCPUS)):
//! agent 0 serves the mailbox, and with a session of several lanes it
//! hands each helper a lane's work through the control page at
//! [`AGENT_TEAM`] (private memory), wakes them with an `out` to
//! [`ports::TEAM_START`](crate::ports::TEAM_START) and waits in `in` from
//! [`ports::TEAM_JOIN`](crate::ports::TEAM_JOIN); a helper waits in `in`
//! from its own [`ports::team_wait`](crate::ports::team_wait) and reports with an
//! `out` to [`ports::TEAM_DONE`](crate::ports::TEAM_DONE). The ports only
//! block and wake: what work there is and whether it is done, the agent
//! reads from its private control page, so a host that wakes a vCPU early
//! or late delays the agent but cannot make it run work twice or go on
//! before its helpers finished.
//!
//! # Evidence
//!
//! The agent asks the platform for an attestation report by writing the
//! 64-byte report data at [`header::REPORT_DATA`] and a 32-bit `out` of 0
//! to [`ports::AGENT_REPORT`](crate::ports::AGENT_REPORT); the platform
//! writes the platform code at [`header::REPORT_PLATFORM`], its status at
//! [`header::REPORT_STATUS`] (0: done) and the 0x4A0-byte report at
//! [`header::REPORT`] before the `out` completes. (On SEV-SNP this is the
//! encrypted guest request to the PSP; here it is covm's emulated root.)

pub mod words;

/// First byte of the agent window.
pub const AGENT_WINDOW_START: u64 = 0x0100_0000;
/// End (exclusive) of the agent window.
pub const AGENT_WINDOW_END: u64 = 0x0200_0000;

/// The header page.
pub const HEADER: u64 = 0x0100_0000;
/// Bytes covm hands the agent.
pub const TO_AGENT: u64 = 0x0110_0000;
/// Size of [`TO_AGENT`].
pub const TO_AGENT_SIZE: u64 = 2 << 20;
/// Bytes the agent hands covm.
pub const FROM_AGENT: u64 = 0x0130_0000;
/// Size of [`FROM_AGENT`].
pub const FROM_AGENT_SIZE: u64 = 2 << 20;

/// The agent's stack (grows down from `AGENT_STACK + AGENT_STACK_SIZE`).
pub const AGENT_STACK: u64 = 0x0150_0000;
/// Size of [`AGENT_STACK`].
pub const AGENT_STACK_SIZE: u64 = 1 << 20;
/// The agent's private record buffer.
pub const AGENT_SCRATCH: u64 = 0x0160_0000;
/// Size of [`AGENT_SCRATCH`].
pub const AGENT_SCRATCH_SIZE: u64 = 512 << 10;
/// The agent's team (see "Team" above): a control page agent 0 and its
/// helpers share, then the helpers' stacks ([`helper_stack_top`]).
pub const AGENT_TEAM: u64 = 0x0168_0000;
/// Size of [`AGENT_TEAM`].
pub const AGENT_TEAM_SIZE: u64 = 0x0018_0000;
/// Bytes of each helper's stack.
pub const HELPER_STACK_SIZE: u64 = 64 << 10;
/// Most vCPUs the agent may have: agent 0 and a stack's worth of helpers.
pub const MAX_AGENT_VCPUS: u32 = 1 + ((AGENT_TEAM_SIZE - 4096) / HELPER_STACK_SIZE) as u32;

/// The top of helper `index`'s stack (1 to `MAX_AGENT_VCPUS - 1`).
pub const fn helper_stack_top(index: u32) -> u64 {
    AGENT_TEAM + 4096 + index as u64 * HELPER_STACK_SIZE
}

const _: () = assert!(AGENT_SCRATCH + AGENT_SCRATCH_SIZE <= AGENT_TEAM);
const _: () = assert!(AGENT_TEAM + AGENT_TEAM_SIZE <= AGENT_VCPU_STATES);
/// The emulated VMSA area: vCPU `i`'s state slot is at
/// `AGENT_VCPU_STATES + i * VCPU_STATE_SLOT`.
pub const AGENT_VCPU_STATES: u64 = 0x0180_0000;
/// Bytes per vCPU state slot: a little-endian `u32` length, then the state.
pub const VCPU_STATE_SLOT: u64 = 64 << 10;
/// Most workload vCPUs the VMSA area holds.
pub const MAX_WORKLOAD_VCPUS: u64 = (2 << 20) / VCPU_STATE_SLOT;
/// Largest vCPU state a slot holds.
pub const MAX_VCPU_STATE: u64 = VCPU_STATE_SLOT - 4;
/// The agent's session objects.
pub const AGENT_DATA: u64 = 0x01A0_0000;
/// Size of [`AGENT_DATA`].
pub const AGENT_DATA_SIZE: u64 = 1 << 20;
/// The agent's heap: only the SEV-SNP evidence check allocates (RSA and
/// X.509 in `covm-snp-verify`, some tens of KiB a check, all freed).
pub const AGENT_HEAP: u64 = 0x01B0_0000;
/// Size of [`AGENT_HEAP`].
pub const AGENT_HEAP_SIZE: u64 = 1 << 20;

const _: () = assert!(AGENT_DATA + AGENT_DATA_SIZE <= AGENT_HEAP);
const _: () = assert!(AGENT_HEAP + AGENT_HEAP_SIZE <= AGENT_EPOCHS);
/// The destination's epoch table: one `u32` per 4 KiB frame.
pub const AGENT_EPOCHS: u64 = 0x01C0_0000;
/// Frames the epoch table covers (all of the first 4 GiB, the most an
/// emulated confidential VM's firmware maps).
pub const AGENT_EPOCH_FRAMES: u64 = (AGENT_WINDOW_END - AGENT_EPOCHS) / 4;

/// Whether the page at `gpa` is inside the agent window (never migrated).
pub const fn in_agent_window(gpa: u64) -> bool {
    gpa >= AGENT_WINDOW_START && gpa < AGENT_WINDOW_END
}

/// `"COVMAGNT"`, at [`header::MAGIC`] once the agent is ready.
pub const MAGIC: u64 = u64::from_le_bytes(*b"COVMAGNT");
/// The mailbox ABI version, at [`header::ABI_VERSION`].
pub const ABI_VERSION: u32 = 1;

/// The doorbell's answer that is not a command: read the doorbell again.
pub const DOORBELL_RETRY: u32 = 0;

/// Values the firmware reads from
/// [`ports::LAUNCH_MODE`](crate::ports::LAUNCH_MODE). Any other value
/// (a plain VM has no such port): not confidential, no agent.
pub mod launch_mode {
    /// A confidential VM's first launch: the workload runs.
    pub const FRESH: u32 = 0x4352_4646;
    /// A confidential VM launched to receive a migration: the workload
    /// vCPUs park ([`ports::PARK`](crate::ports::PARK)) and only the
    /// agent runs until the platform hands them the imported state.
    pub const INCOMING: u32 = 0x434e_4e49;
}

/// Byte offsets in the header page. All fields little-endian.
pub mod header {
    /// `u64` [`super::MAGIC`], written by the agent when it is ready.
    pub const MAGIC: usize = 0x00;
    /// `u32` [`super::ABI_VERSION`], written by the agent.
    pub const ABI_VERSION: usize = 0x08;
    /// `u64` sequence number of the posted command, written by covm last.
    pub const COMMAND_SEQ: usize = 0x10;
    /// `u32` the command ([`super::command`]).
    pub const COMMAND: usize = 0x18;
    /// `[u64; 8]` the command's arguments ([`super::words`]).
    pub const ARGS: usize = 0x20;
    /// `u64` sequence number of the last completed command, written by the
    /// agent last.
    pub const DONE_SEQ: usize = 0x60;
    /// `u32` [`super::status`] of the completed command.
    pub const STATUS: usize = 0x68;
    /// `u32` length of the UTF-8 error text at [`ERROR_TEXT`].
    pub const ERROR_LEN: usize = 0x6C;
    /// `u64` bytes of output at `FROM_AGENT`.
    pub const OUT_LEN: usize = 0x70;
    /// `[u64; 8]` the command's results ([`super::words`]).
    pub const RESULTS: usize = 0x78;
    /// The peer identity after a handshake ([`super::peer`]).
    pub const PEER: usize = 0xC0;
    /// Up to [`ERROR_TEXT_MAX`] bytes of UTF-8 saying why a command failed.
    pub const ERROR_TEXT: usize = 0x100;
    /// Size of the error text field.
    pub const ERROR_TEXT_MAX: usize = 0x100;
    /// 64 bytes of report data the agent asks a report for.
    pub const REPORT_DATA: usize = 0x200;
    /// `u16` platform code of the report (protocol §1).
    pub const REPORT_PLATFORM: usize = 0x240;
    /// `u32` 0 when the platform wrote a report, else a failure.
    pub const REPORT_STATUS: usize = 0x244;
    /// The 0x4A0-byte attestation report.
    pub const REPORT: usize = 0x400;
}

/// The peer identity block at [`header::PEER`] (64 bytes), filled when a
/// handshake completes.
pub mod peer {
    /// `u16` the peer's platform code.
    pub const PLATFORM: usize = 0;
    /// `u32` the peer's policy version.
    pub const POLICY_VERSION: usize = 4;
    /// `u64` the peer's reported TCB.
    pub const TCB: usize = 8;
    /// 48 bytes: the peer's launch measurement.
    pub const MEASUREMENT: usize = 16;
}

/// Commands (at [`header::COMMAND`]). Each command's arguments and
/// results are a type of [`words`] (`BEGIN`: [`words::BeginArgs`] and
/// [`words::BeginReply`], and so on), which says what each word holds.
pub mod command {
    /// Start a session in a role ([`super::words::BeginArgs`]). The
    /// source's output is its first handshake message. Any earlier session
    /// is dropped (refused once a destination committed or a source saw its
    /// Commit).
    pub const BEGIN: u32 = 1;
    /// Feed the peer's next handshake message (`TO_AGENT`,
    /// [`super::words::HandshakeArgs`]). Output: the agent's next messages,
    /// each as a `u32` length then the bytes. The reply says when the
    /// handshake is complete (the peer identity is then in
    /// [`super::header::PEER`]).
    pub const HANDSHAKE: u32 = 2;
    /// Source: seal `count` pages from gpa `first` for `round`
    /// ([`super::words::ExportPagesArgs`]; the host's dirty log: a hint).
    /// Round 0 must walk all of RAM in ascending order. Pages in the agent
    /// window are skipped. The agent stops early when the output might not
    /// hold the next page's records. Output: the records; the reply
    /// ([`super::words::ExportPagesReply`]) counts the pages sealed, of
    /// which zero, and the 4 KiB frames of the range it walked (`count`
    /// when done; else ask again for the rest).
    pub const EXPORT_PAGES: u32 = 3;
    /// Source: seal the open round's RoundEnd. Output: the record; the
    /// reply counts the round's pages ([`super::words::EndRoundReply`]).
    pub const END_ROUND: u32 = 4;
    /// Source, workload paused: seal the states of workload vCPUs
    /// `0..vcpus` from the VMSA area, then Final (verified mode: with the
    /// memory digest; [`super::words::ExportFinalArgs`]). Output: the
    /// records.
    pub const EXPORT_FINAL: u32 = 5;
    /// Source: read the destination's control record (`TO_AGENT`): a
    /// Commit or an abort token ([`super::words::ReadControlReply`]: 1
    /// committed, 2 aborted with the reason code).
    pub const READ_CONTROL: u32 = 6;
    /// Destination: open and apply the records in `TO_AGENT`. The reply
    /// ([`super::words::ImportReply`]) counts pages, zero pages and vCPU
    /// states, says once the Final record was accepted, and whether it
    /// carries a memory digest (the commit must then be in verified mode).
    pub const IMPORT: u32 = 7;
    /// Destination: commit (verified mode: recompute the memory digest
    /// first; [`super::words::CommitArgs`]). Output: the Commit record.
    pub const COMMIT: u32 = 8;
    /// Destination: give up with a reason code
    /// ([`super::words::MintAbortArgs`]). Output: the abort token. Refused
    /// after a commit.
    pub const MINT_ABORT: u32 = 9;
    /// Where the session stands ([`super::words::StatusReply`]): role,
    /// [`super::state`], whether the source may resume its guest, epoch,
    /// records sealed or opened, pages.
    pub const STATUS: u32 = 10;
    /// Source: `EXPORT_PAGES` over a list of ranges (the host's dirty log,
    /// a hint): `TO_AGENT` holds `entries` entries of gpa u64 and page
    /// count u64 (little-endian), for `round`
    /// ([`super::words::ExportListArgs`]), walked in order with
    /// `EXPORT_PAGES`' rules and one output. The agent stops early when the
    /// output might not hold the next page's records. Output: the records;
    /// the reply ([`super::words::ExportListReply`]) counts the pages
    /// sealed, of which zero, the entries walked to their end and the 4 KiB
    /// frames walked of the next entry (ask again from there).
    pub const EXPORT_LIST: u32 = 11;
    /// Where the agent's time went in the session so far
    /// ([`super::words::CostsReply`]): commands served and, in ticks of
    /// the guest's time-stamp counter, the time inside them and in each
    /// per-page stage (copies in and out, sealing or opening, zero
    /// checks and fills). Answered in any state, like `STATUS`; `BEGIN`
    /// starts the counts again. Accounting only: nothing depends on it.
    pub const COSTS: u32 = 12;
}

/// Session states reported by [`command::STATUS`] (the codes of
/// [`words::SessionState`]).
pub mod state {
    /// No session.
    pub const IDLE: u64 = 0;
    /// Handshake under way.
    pub const HANDSHAKE: u64 = 1;
    /// Pages flowing.
    pub const STREAMING: u64 = 2;
    /// Source: Final sealed, waiting for Commit or an abort token.
    pub const FINAL_SENT: u64 = 3;
    /// Destination: everything arrived and checked, not yet committed.
    pub const COMPLETE: u64 = 4;
    /// Committed (source: Commit read; destination: Commit sealed).
    pub const COMMITTED: u64 = 5;
    /// Aborted (source: valid token read; destination: token minted).
    pub const ABORTED: u64 = 6;
    /// A check failed; the session takes no more records.
    pub const FAILED: u64 = 7;
}

/// Status codes (at [`header::STATUS`]); the text at
/// [`header::ERROR_TEXT`] says more.
pub mod status {
    /// Done.
    pub const OK: u32 = 0;
    /// Unknown command or bad arguments.
    pub const BAD_COMMAND: u32 = 1;
    /// Not allowed in the session's state.
    pub const BAD_STATE: u32 = 2;
    /// The protocol refused (a check, a tag, the policy).
    pub const REFUSED: u32 = 3;
    /// Output does not fit `FROM_AGENT`.
    pub const NO_ROOM: u32 = 4;
    /// The platform failed (no report, no randomness).
    pub const PLATFORM: u32 = 5;
}
