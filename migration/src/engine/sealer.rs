//! The sealer seam: the one place where pages and state become wire
//! records (source) and records become memory and state (destination).
//!
//! The engine decides *which* pages move and *when* (dirty log, rounds,
//! convergence, pause); a [`Sealer`] decides *how* they are carried and
//! whether the source may take its guest back, and an [`Opener`] undoes
//! the sealing and decides whether the destination commits. The plain
//! pair here reads guest memory directly and sends `Pages` / `ZeroPages`
//! / `State` (protocol version 1). The confidential pair (in the VMM)
//! replaces exactly these two objects: its sealer hands the addresses to
//! the in-guest agent and forwards the sealed records the agent produces
//! (`Sealed`, protocol version 2); its opener hands records to the
//! destination agent, whose sealed Commit or abort token travels back as
//! `Control`. Nothing else in the engine changes: "one engine, two
//! sealers".
//!
//! What the engine calls, in order:
//!
//! | source ([`Sealer`])                          | destination ([`Opener`])                    |
//! |----------------------------------------------|---------------------------------------------|
//! | `version()`: the Hello's version             | (the factory of `receive_with` sees it)      |
//! | `handshake(link)` after HelloAck             | `handshake(link)` after HelloAck             |
//! | per round: `seal_runs`…, `end_round`, then the engine's RoundEnd | `open_pages` for every record frame, then the engine checks RoundEnd |
//! | paused: `seal_state(state)`                  | `open_pages` (records after the last round), `open_state` |
//! | after Complete: `read_decision(answer)`      | after Complete: `commit(vm)`, its message sent |
//! | on failure: `may_resume()`                   | on failure before commit: `abort(reason)`, its message sent before Abort |
//!
//! Record accounting: every message a sealer passes to its
//! [`RecordSink`] during a round (in `seal_runs` *and* `end_round`) counts
//! in the round's `RoundEnd.bytes` (payload bytes); the destination counts
//! every message its opener claims ([`Opener::is_page_record`]). So a
//! `Sealed` frame carrying only the agent's sealed round-end record counts
//! on both sides, with `Carried { pages: 0, .. }`, and the round balances.

use super::report::AgentCosts;
use super::MigrationError;
use crate::protocol::{Message, ProtocolError, Wire, MAX_PAGES_PER_FRAME, PROTOCOL_VERSION};
use crate::vm::{DestinationVm, SourceVm};
use std::io::{Read, Write};
use std::time::Duration;

/// Sends each record the sealer produces (the engine counts its bytes).
pub type RecordSink<'a> = dyn FnMut(&Message) -> Result<(), ProtocolError> + 'a;

/// Pages a record (or a batch of records) carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Round the records belong to.
    pub round: u32,
    /// Pages carried, zero pages included.
    pub pages: u64,
    /// Of which as zero-page markers.
    pub zero_pages: u64,
}

impl Carried {
    /// Nothing carried yet in `round`: what a sealer adds its records to.
    pub fn empty(round: u32) -> Self {
        Carried {
            round,
            ..Carried::default()
        }
    }

    /// Counts what `more` carried too (in the same round).
    pub fn add(&mut self, more: Carried) {
        self.pages += more.pages;
        self.zero_pages += more.zero_pages;
    }
}

/// Sends and receives whole messages during a sealer's or opener's
/// handshake (the engine's connection, in its version).
pub trait Link {
    /// Sends `message` and flushes.
    fn send(&mut self, message: &Message) -> Result<(), ProtocolError>;
    /// Reads the next message (an `Abort` included: the engine reports the
    /// peer's reason if the handshake then fails).
    fn receive(&mut self) -> Result<Message, ProtocolError>;
}

impl<S: Read + Write> Link for Wire<S> {
    fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        self.send_now(message)
    }

    fn receive(&mut self) -> Result<Message, ProtocolError> {
        Wire::receive(self)
    }
}

/// The engine's [`Link`] for a handshake: remembers the peer's Abort, so
/// a handshake that fails after one reports the peer's reason.
struct HandshakeLink<'w, S: Read + Write> {
    wire: &'w mut Wire<S>,
    peer_abort: Option<String>,
}

impl<S: Read + Write> Link for HandshakeLink<'_, S> {
    fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        self.wire.send_now(message)
    }

    fn receive(&mut self) -> Result<Message, ProtocolError> {
        let message = self.wire.receive()?;
        if let Message::Abort { reason } = &message {
            self.peer_abort = Some(reason.clone());
        }
        Ok(message)
    }
}

/// Runs a sealer's or opener's `handshake` over `wire`.
pub(super) fn handshake_over<S: Read + Write>(
    wire: &mut Wire<S>,
    handshake: impl FnOnce(&mut dyn Link) -> Result<(), MigrationError>,
) -> Result<(), MigrationError> {
    let mut link = HandshakeLink { wire, peer_abort: None };
    handshake(&mut link).map_err(|error| match (link.peer_abort, error) {
        (Some(reason), error) if !matches!(error, MigrationError::PeerAborted { .. }) => {
            tracing::debug!(%error, "the handshake failed on the peer's Abort");
            MigrationError::PeerAborted { reason }
        }
        (_, error) => error,
    })
}

/// Source side: turns pages and state into records, and reads the
/// destination's decision.
pub trait Sealer: Send {
    /// The protocol version its records need (the Hello carries it, and
    /// it is the connection's). Plain: 1.
    fn version(&self) -> u16 {
        PROTOCOL_VERSION
    }

    /// After HelloAck, before dirty tracking starts: e.g. the agents'
    /// attested handshake. Plain: nothing.
    fn handshake(&mut self, link: &mut dyn Link) -> Result<(), MigrationError> {
        let _ = link;
        Ok(())
    }

    /// Pages the engine hands [`Sealer::seal_runs`] at most at once (and
    /// between its cancellation and progress checks). Plain: one `Pages`
    /// frame's worth, [`MAX_PAGES_PER_FRAME`].
    fn chunk_pages(&self) -> u64 {
        MAX_PAGES_PER_FRAME as u64
    }

    /// Pages round 0 clears and exports at a time (a run
    /// [`Sealer::seal_runs`] gets whole): by default
    /// [`Sealer::chunk_pages`].
    fn full_round_chunk(&self) -> u64 {
        self.chunk_pages()
    }

    /// Exports the runs `(gpa, count)` of one dirty chunk for `round`
    /// (ascending, their dirty bits already cleared, at most
    /// [`Sealer::chunk_pages`] pages in all, or [`Sealer::full_round_chunk`]
    /// in round 0), passing every record to `out`. The engine hands over
    /// whole chunks, so a sealer that can take a list in one go (the
    /// confidential agent's `EXPORT_LIST`) does.
    fn seal_runs(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        runs: &[(u64, u64)],
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError>;

    /// After a round's last `seal_runs` and before the engine's
    /// `RoundEnd` (every round, the final one included): e.g. the agent's
    /// sealed round end. What it passes to `out` counts in the round's
    /// bytes, and carries no page. Plain: nothing.
    fn end_round(&mut self, round: u32, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        let _ = (round, out);
        Ok(())
    }

    /// The paused VM's state ([`SourceVm::save_state`]) into records,
    /// passed to `out`, after the final round's `RoundEnd`. Record frames
    /// (the ones the opener's [`Opener::is_page_record`] claims) come
    /// first, with the round after the final one (`Complete`'s `rounds`)
    /// and no page; then exactly one state record (the one
    /// [`Opener::open_state`] opens). Plain: one `State` message.
    fn seal_state(&mut self, state: Vec<u8>, out: &mut RecordSink<'_>) -> Result<(), MigrationError>;

    /// The destination's answer after Complete (and any `Control` message
    /// seen earlier, e.g. while looking for the peer's reason after a
    /// failed write). `Ok(())` = committed: the guest belongs to the
    /// destination. `Err(PeerAborted)` = a valid abort (the engine then
    /// looks for the destination's `Abort` reason). The engine handles a
    /// plain `Abort` itself and never passes it here. Plain: `Commit` →
    /// `Ok`, `Abort{reason}` → `PeerAborted`, anything else `Unexpected`.
    fn read_decision(&mut self, message: Message) -> Result<(), MigrationError>;

    /// After a failure: may the guest run here again? Plain: always.
    /// Confidential: not once the agent sealed its Final record, until it
    /// read a valid abort token. `false` keeps the paused guest paused and
    /// the engine returns [`MigrationError::Undecided`].
    fn may_resume(&mut self) -> bool {
        true
    }

    /// Time spent sealing so far (crypto and mailbox), for the report.
    /// Plain: zero.
    fn crypto_time(&self) -> Duration {
        Duration::ZERO
    }

    /// Where the agent's work went, for the report (asked once, after the
    /// Commit). Plain: none.
    fn agent_costs(&mut self) -> Option<AgentCosts> {
        None
    }
}

/// Destination side: applies records and commits or aborts.
pub trait Opener: Send {
    /// After HelloAck, before the first record: e.g. the agents' attested
    /// handshake. Plain: nothing.
    fn handshake(&mut self, link: &mut dyn Link) -> Result<(), MigrationError> {
        let _ = link;
        Ok(())
    }

    /// Whether `message` is a record frame this opener applies (its bytes
    /// count in the round's).
    fn is_page_record(&self, message: &Message) -> bool;

    /// Applies a record frame to the VM and says what it carried. The
    /// engine checks the round and the counts. A `Sealed` batch may carry
    /// non-page records (the agent's round end, vCPU states, Final):
    /// `Carried { pages: 0, .. }` for those.
    fn open_pages(&mut self, vm: &mut dyn DestinationVm, message: Message) -> Result<Carried, MigrationError>;

    /// Finishes applying a page record still in progress, if any, and
    /// says what it carried. An opener may return from
    /// [`Opener::open_pages`] before a record is applied (the agent
    /// imports a batch while the engine reads the next one); it then
    /// reports that batch from its next `open_pages` or from here. The
    /// engine calls this before any message that is not a page record.
    /// Plain: nothing is ever in progress.
    fn settle(&mut self, vm: &mut dyn DestinationVm) -> Result<Option<Carried>, MigrationError> {
        let _ = vm;
        Ok(None)
    }

    /// The VM state inside a state record, or `None` if `message` is not
    /// one (the engine then refuses the message as unexpected).
    fn open_state(&mut self, message: Message) -> Result<Option<Vec<u8>>, MigrationError>;

    /// Everything arrived and the engine checked it (after Complete):
    /// commit. Returns the message that tells the source (plain:
    /// `Commit`; confidential: `Control` with the agent's sealed Commit).
    /// After `Ok` the VM must run here. An `Err` aborts (see
    /// [`Opener::abort`]).
    fn commit(&mut self, vm: &mut dyn DestinationVm) -> Result<Message, MigrationError> {
        let _ = vm;
        Ok(Message::Commit)
    }

    /// A failure before commit: a message that lets the source resume
    /// (confidential: `Control` with the agent's abort token, after which
    /// it can never commit). The engine sends it before its plain
    /// `Abort{reason}`, even when the source aborted first. Plain: `None`.
    fn abort(&mut self, reason: &str) -> Option<Message> {
        let _ = reason;
        None
    }

    /// Time spent opening so far (crypto and mailbox), for the report.
    /// Plain: zero.
    fn crypto_time(&self) -> Duration {
        Duration::ZERO
    }

    /// Where the agent's work went, for the report (asked once, after the
    /// Commit was sent). Plain: none.
    fn agent_costs(&mut self) -> Option<AgentCosts> {
        None
    }
}
