//! covm's in-guest confidential migration agent.
//!
//! The agent runs on its own vCPU inside the guest's trust boundary and
//! answers the mailbox commands of `covm_guest_abi::mailbox` (the ABI is
//! documented there; the design in docs/confidential-migration.md): it
//! runs the attested handshake, seals the guest's private pages and vCPU
//! states at the source, checks and applies them at the destination, and
//! commits or aborts — through `covm-agent-protocol`, which does all the
//! cryptography.
//!
//! This crate is the agent's logic, independent of bare metal: guest
//! memory, the platform (evidence, randomness, "retire") and the epoch
//! table are traits ([`GuestMemory`], [`Platform`], [`EpochTables`]). The
//! firmware (`firmware/image`) implements them over identity-mapped memory
//! and I/O ports; the tests over vectors. No statics: the [`Agent`] and
//! everything it holds live where its owner puts it (the firmware: the
//! agent-private `AGENT_DATA` area and stack). Only the SEV-SNP evidence
//! check allocates (RSA and X.509, in `covm-snp-verify`); the firmware
//! gives it a heap in the agent's private window (`AGENT_HEAP`).
//!
//! Rules it keeps (docs/confidential-migration.md, protocol §11):
//! - every buffer handed to the protocol crate is private: records,
//!   handshake messages and control records are copied out of `TO_AGENT`
//!   before they are opened, and sealed in private memory before they are
//!   copied to `FROM_AGENT`;
//! - which pages are private is the agent's own decision
//!   ([`MemoryMap`], from the boot memory map); the host's addresses are
//!   hints, and round 0 must cover every private page in order;
//! - once the source sealed its Final, no new session starts until the
//!   destination's Commit or abort token is read; once the source read a
//!   Commit, only `STATUS` (and the accounting of `COSTS`) is answered,
//!   for good;
//! - only a VM launched to receive a migration takes a destination
//!   session, and only until it committed; after that the guest runs
//!   there and may only migrate on (a source session). A VM launched
//!   incoming is a source only once it committed.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// A failure carries its 256-byte error text by value: there is no
// allocator to box it into, and failures are rare (one per command).
#![allow(clippy::result_large_err)]

mod costs;
mod env;
mod export;
mod export_final;
mod handshake;
mod import;
mod lanes;
pub mod mailbox;
mod memmap;
mod parts;
mod reply;
mod rng;
mod shared_check;
mod startup;
mod verifier;

pub use env::{request_report, EpochTables, GuestMemory, Platform, PlatformError, Team, MAX_WORKERS};
pub use memmap::{E820Entry, MapError, MemoryMap, E820_RAM, MAX_RANGES, PRIVATE_END};
pub use reply::{ErrorText, Reply};

use covm_agent_protocol::record::{COMMIT_RECORD_LEN, MAX_RECORD_LEN};
use covm_agent_protocol::{
    DestinationHandshake, ImportChecker, ImportPhase, Policy, SourceHandshake, SourceSession, SourceState, Summary,
};
use covm_guest_abi::mailbox::words::{Args, CostsArgs, SessionState, StatusArgs, StatusReply, WORDS};
use covm_guest_abi::mailbox::{command, status, MAX_VCPU_STATE};
use reply::{fail, Done, Outcome};

pub use covm_guest_abi::mailbox::words::Role;

/// Bytes of private scratch memory the agent needs: one record of any
/// kind, plus one vCPU state it reads before sealing.
pub const SCRATCH_LEN: usize = MAX_RECORD_LEN + MAX_VCPU_STATE as usize;

/// How the agent's VM was launched, from the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Workload vCPUs (the agent's not counted); 0: unknown, not checked.
    pub workload_vcpus: u32,
    /// Launched to receive a migration (`launch_mode::INCOMING`): the
    /// guest is not here until a destination session commits.
    pub incoming: bool,
}

/// The session objects, by phase.
// One Session exists, in the agent's data area; there is no allocator to
// box the larger variants into, and their sizes are alike (about 4.4 KiB).
#[allow(clippy::large_enum_variant)]
enum Session<'a> {
    Idle,
    SourceHandshake(SourceHandshake),
    DestinationHandshake(DestinationHandshake),
    /// A handshake failed (its keys are gone).
    HandshakeFailed(Role),
    Source(SourceSession),
    Destination(ImportChecker<'a>),
}

/// What the agent knows about itself once started.
struct Own {
    policy: Policy,
    measurement: [u8; 48],
    map: MemoryMap,
}

/// Per-session bookkeeping, reset by `BEGIN`.
#[derive(Default)]
struct Run {
    /// Lanes of the record stream (`BEGIN`'s word; 0 before any).
    lanes: u16,
    /// A check outside the protocol crate failed (a round-0 gap, a page
    /// outside private memory, ...): the session takes no more records.
    failed: bool,
    /// Source, round 0: the next private page the host must ask for
    /// (`None`: every private page was sealed).
    cursor: Option<u64>,
    /// Destination: the Final accepted.
    summary: Option<Summary>,
    /// Destination: the Commit record, kept to be sent again.
    commit: Option<[u8; COMMIT_RECORD_LEN]>,
    /// Records sealed or opened.
    records: u64,
    /// Pages sealed or imported (zero runs counted page by page).
    pages: u64,
    /// Where the time went (`COSTS`).
    costs: costs::Costs,
}

/// The migration agent.
///
/// `'a` is the life of the private memory it is given: the scratch buffer
/// and the epoch tables `E` lends (`&'static` in the firmware).
pub struct Agent<'a, M, P, E> {
    mem: M,
    platform: P,
    epochs: E,
    scratch: &'a mut [u8],
    /// The private memory map as read at boot (kept for start-up retries).
    boot_map: Result<MemoryMap, MapError>,
    own: Result<Own, ErrorText>,
    config: Config,
    session: Session<'a>,
    run: Run,
    /// A source session's private memory: the boot map less the window
    /// pages the guest shares with the host (covm carries those in the
    /// clear), as the guest's shared map said when the session began.
    session_map: Option<(MemoryMap, [u8; covm_guest_abi::shared_map::MAP_LEN])>,
    /// A destination session committed: the guest runs here now.
    imported: bool,
    /// The source read the destination's Commit: the guest runs there,
    /// never here again, and nothing changes any more.
    retired: bool,
}

impl<'a, M: GuestMemory, P: Platform, E: EpochTables<'a>> Agent<'a, M, P, E> {
    /// Starts the agent: asks the platform for its own report (zero report
    /// data), reads the migration policy page and checks that the policy
    /// hashes to the report's HOST_DATA.
    ///
    /// `scratch` is private memory of at least [`SCRATCH_LEN`] bytes;
    /// `map` is the private memory map (from the boot memory map, read
    /// before anything was imported); `config` says how the VM was
    /// launched.
    ///
    /// If anything fails the agent still answers, refusing every command
    /// but `STATUS` with the reason, and tries again at each command (the
    /// platform may not have been ready; nothing can have been imported
    /// meanwhile, and a policy page changed since must still hash to
    /// HOST_DATA).
    pub fn new(
        mem: M,
        mut platform: P,
        epochs: E,
        scratch: &'a mut [u8],
        map: Result<MemoryMap, MapError>,
        config: Config,
    ) -> Self {
        let own = startup::start(&mem, &mut platform, scratch.len(), map.clone());
        Agent {
            mem,
            platform,
            epochs,
            scratch,
            boot_map: map,
            own,
            config,
            session: Session::Idle,
            run: Run::default(),
            session_map: None,
            imported: false,
            retired: false,
        }
    }

    /// Writes the magic and ABI version to the header: covm may post.
    pub fn announce(&mut self) {
        mailbox::announce(&self.mem);
    }

    /// Reads the posted command from the header, executes it and writes
    /// the answer (`done_seq` last). Returns the command's sequence number
    /// (its low 32 bits go to `ports::AGENT_DONE`).
    pub fn serve(&mut self) -> u64 {
        let started = self.platform.ticks();
        let posted = mailbox::read_posted(&self.mem);
        let reply = self.handle(posted.command, &posted.args);
        mailbox::write_reply(&self.mem, posted.seq, &reply);
        let ticks = self.platform.ticks().saturating_sub(started);
        self.run.costs.command(ticks);
        posted.seq
    }

    /// Executes one mailbox command (`covm_guest_abi::mailbox::command`)
    /// with its argument words; input comes from `TO_AGENT`, output goes
    /// to `FROM_AGENT`. The header's result fields are the caller's to
    /// write ([`Agent::serve`] does).
    pub fn handle(&mut self, command: u32, args: &[u64; WORDS]) -> Reply {
        // STATUS and COSTS answer in every state, the agent started or not.
        let always = matches!(command, command::STATUS | command::COSTS);
        if self.own.is_err() && !always {
            self.own = startup::start(&self.mem, &mut self.platform, self.scratch.len(), self.boot_map.clone());
        }
        if !always {
            if let Err(why) = &self.own {
                return Reply::from(fail!(status::REFUSED, "the migration agent did not start: {why}"));
            }
            if self.retired {
                return Reply::from(fail!(
                    status::BAD_STATE,
                    "the destination committed: this VM's guest never runs here again and its agent answers only STATUS and COSTS"
                ));
            }
        }
        match command {
            command::STATUS => self.run(args, |agent, _: StatusArgs| Ok(agent.status())),
            command::COSTS => self.run(args, |agent, _: CostsArgs| Ok(Done::new(agent.run.costs.reply()))),
            command::BEGIN => self.run(args, Self::begin),
            command::HANDSHAKE => self.run(args, Self::handshake),
            command::EXPORT_PAGES => self.run(args, Self::export_pages),
            command::EXPORT_LIST => self.run(args, Self::export_list),
            command::END_ROUND => self.run(args, Self::end_round),
            command::EXPORT_FINAL => self.run(args, Self::export_final),
            command::READ_CONTROL => self.run(args, Self::read_control),
            command::IMPORT => self.run(args, Self::import),
            command::COMMIT => self.run(args, Self::commit),
            command::MINT_ABORT => self.run(args, Self::mint_abort),
            other => Reply::from(fail!(status::BAD_COMMAND, "unknown command {other}")),
        }
    }

    /// Reads the argument `words` as `A` (refusing words `A` cannot hold)
    /// and runs `command` with them; its reply is the only way its
    /// results reach the header.
    fn run<A: Args>(&mut self, words: &[u64; WORDS], command: impl FnOnce(&mut Self, A) -> Outcome<A::Reply>) -> Reply {
        let outcome = A::from_words(words)
            .map_err(|e| fail!(status::BAD_COMMAND, "{}: {e}", A::NAME))
            .and_then(|args| command(self, args));
        Reply::from(outcome)
    }

    /// The guest memory (the firmware's, or a test's).
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The guest memory, to change it (tests play covm through it).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Why the agent did not start, if it did not.
    pub fn startup_error(&self) -> Option<&ErrorText> {
        self.own.as_ref().err()
    }

    /// The launch measurement of this VM (from its own report).
    pub fn measurement(&self) -> Option<&[u8; 48]> {
        self.own.as_ref().ok().map(|o| &o.measurement)
    }

    /// The private memory map.
    pub fn memory_map(&self) -> Option<&MemoryMap> {
        self.own.as_ref().ok().map(|o| &o.map)
    }

    fn role(&self) -> Option<Role> {
        match &self.session {
            Session::Idle => None,
            Session::SourceHandshake(_) | Session::Source(_) => Some(Role::Source),
            Session::DestinationHandshake(_) | Session::Destination(_) => Some(Role::Destination),
            Session::HandshakeFailed(role) => Some(*role),
        }
    }

    /// The session's state as `STATUS` reports it.
    fn state(&self) -> SessionState {
        match &self.session {
            Session::Idle => SessionState::Idle,
            Session::SourceHandshake(_) | Session::DestinationHandshake(_) => SessionState::Handshake,
            Session::HandshakeFailed(_) => SessionState::Failed,
            Session::Source(s) => match s.state() {
                SourceState::Committed => SessionState::Committed,
                SourceState::Aborted => SessionState::Aborted,
                SourceState::FinalSealed => SessionState::FinalSent,
                _ if self.run.failed => SessionState::Failed,
                SourceState::Streaming | SourceState::SealingState => SessionState::Streaming,
            },
            Session::Destination(c) => match c.phase() {
                ImportPhase::Committed => SessionState::Committed,
                ImportPhase::Aborted => SessionState::Aborted,
                _ if self.run.failed => SessionState::Failed,
                ImportPhase::Poisoned => SessionState::Failed,
                ImportPhase::Complete => SessionState::Complete,
                ImportPhase::Memory | ImportPhase::VcpuStates => SessionState::Streaming,
            },
        }
    }

    /// Whether the source's guest may run (no Final may exist, or a valid
    /// abort token said the destination never commits).
    fn may_resume(&self) -> bool {
        match &self.session {
            Session::Source(s) => s.may_resume(),
            Session::Destination(_) | Session::DestinationHandshake(_) => false,
            Session::HandshakeFailed(role) => *role == Role::Source,
            Session::Idle | Session::SourceHandshake(_) => true,
        }
    }

    fn status(&self) -> Done<StatusReply> {
        let epoch = match &self.session {
            Session::Source(s) => s.epoch(),
            Session::Destination(c) => c.epoch(),
            _ => 0,
        };
        let state = if self.own.is_err() {
            SessionState::Failed
        } else {
            self.state()
        };
        Done::new(StatusReply {
            role: self.role(),
            state,
            may_resume: self.may_resume(),
            epoch,
            records: self.run.records,
            pages: self.run.pages,
        })
    }
}
