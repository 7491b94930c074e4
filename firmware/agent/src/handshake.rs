//! `BEGIN` and `HANDSHAKE`: starting a session and relaying the six
//! handshake messages through the state machines of the protocol crate.
//!
//! Each `HANDSHAKE` carries one peer message; its type byte says which
//! step it is (the state machine refuses one out of order). Messages are
//! copied into private memory first; the agent's own messages are built
//! in private memory and copied out, each as a `u32` length and the bytes.

use crate::env::{EpochTables, GuestMemory, Platform};
use crate::mailbox::{self, Output};
use crate::reply::{fail, Done, Fail, Hex, Outcome};
use crate::rng::Drawn;
use crate::verifier::PeerVerifier;
use crate::{Agent, Role, Run, Session};
use covm_agent_protocol::evidence::report::offset::MEASUREMENT;
use covm_agent_protocol::handshake::messages::{kind, FINISHED_MSG_LEN, MAX_HANDSHAKE_MSG_LEN};
use covm_agent_protocol::{
    DestinationHandshake, Error, Evidence, ImportChecker, PeerIdentity, SourceHandshake, PAGE_SIZE,
};
use covm_guest_abi::mailbox::status;
use covm_guest_abi::mailbox::words::{BeginArgs, BeginReply, HandshakeArgs, HandshakeReply};

/// Where a report sits in an evidence message: type and reserved (8),
/// then the evidence's platform, certificate table length and report
/// length (8).
const REPORT_IN_MESSAGE: usize = 16;

/// "peer refused: …": the peer's message failed our checks.
fn refused(side: &str, what: &str, message: &[u8], e: Error) -> Fail {
    if e == Error::MeasurementNotAllowed {
        if let Some(m) = message.get(REPORT_IN_MESSAGE + MEASUREMENT..REPORT_IN_MESSAGE + MEASUREMENT + 48) {
            return fail!(
                status::REFUSED,
                "peer refused: {side} measurement {} is not allowed by the policy",
                Hex(m)
            );
        }
    }
    fail!(status::REFUSED, "peer refused: {side}'s {what}: {e}")
}

/// Our own step failed.
fn own_step(what: &str, e: Error) -> Fail {
    fail!(status::REFUSED, "handshake failed: {what}: {e}")
}

impl<'a, M: GuestMemory, P: Platform, E: EpochTables<'a>> Agent<'a, M, P, E> {
    pub(crate) fn begin(&mut self, BeginArgs { role, lanes }: BeginArgs) -> Outcome<BeginReply> {
        let max = covm_agent_protocol::record::MAX_LANES;
        let lanes = match u16::try_from(lanes) {
            Ok(n) if (1..=max as u16).contains(&n) => n,
            _ => return Err(fail!(status::BAD_COMMAND, "BEGIN: {lanes} lanes (1 to {max})")),
        };
        // A source seals each lane on its own vCPU; a destination opens
        // any number of lanes with the vCPUs it has.
        let workers = self.platform.team().map_or(1, |t| t.workers());
        if role == Role::Source && lanes > 1 && workers < usize::from(lanes) {
            return Err(fail!(
                status::BAD_COMMAND,
                "BEGIN: {lanes} lanes, but the agent has {workers} vCPUs to seal them on"
            ));
        }
        match role {
            Role::Destination if !self.config.incoming => {
                return Err(fail!(
                    status::BAD_STATE,
                    "BEGIN: this VM was not launched to receive a migration: its guest runs here"
                ))
            }
            Role::Destination if self.imported => {
                return Err(fail!(
                    status::BAD_STATE,
                    "BEGIN: the migrated guest runs here since its commit: it can only migrate on"
                ))
            }
            Role::Source if self.config.incoming && !self.imported => {
                return Err(fail!(
                    status::BAD_STATE,
                    "BEGIN: this VM was launched to receive a migration and holds no committed guest to send"
                ))
            }
            _ => {}
        }
        if let Session::Source(s) = &self.session {
            if !s.may_resume() {
                return Err(fail!(
                    status::BAD_STATE,
                    "BEGIN: the source sealed its Final ({}): read the destination's Commit or abort token first",
                    s.state()
                ));
            }
        }
        let mut rng = Drawn::from(&mut self.platform).map_err(|e| fail!(status::PLATFORM, "BEGIN: {e}"))?;
        // The earlier session goes first: its keys are zeroized on drop,
        // and a destination's checker gives the epoch table back.
        self.session = Session::Idle;
        self.run = Run {
            lanes,
            ..Run::default()
        };
        self.session_map = None;
        mailbox::write_peer(&self.mem, None);
        let own = match &self.own {
            Ok(own) => own,
            Err(why) => return Err(fail!(status::REFUSED, "the migration agent did not start: {why}")),
        };
        match role {
            Role::Source => {
                let mut hs = SourceHandshake::new(&own.policy, &mut rng);
                if rng.ran_short() {
                    return Err(fail!(status::PLATFORM, "BEGIN: the handshake wanted more random bytes"));
                }
                let mut msg = [0u8; MAX_HANDSHAKE_MSG_LEN];
                let n = match hs.write_hello(&mut msg) {
                    Ok(n) => n,
                    Err(e) => {
                        self.session = Session::HandshakeFailed(Role::Source);
                        return Err(own_step("SrcHello", e));
                    }
                };
                let len = self.send_messages(&[&msg[..n]])?;
                self.session = Session::SourceHandshake(hs);
                Ok(Done::new(BeginReply).with_output(len))
            }
            Role::Destination => {
                let hs = DestinationHandshake::new(&own.policy, &mut rng);
                if rng.ran_short() {
                    return Err(fail!(status::PLATFORM, "BEGIN: the handshake wanted more random bytes"));
                }
                self.session = Session::DestinationHandshake(hs);
                Ok(Done::new(BeginReply))
            }
        }
    }

    pub(crate) fn handshake(&mut self, args: HandshakeArgs) -> Outcome<HandshakeReply> {
        let len = mailbox::input_len(args.len, "HANDSHAKE")?;
        if len == 0 || len > MAX_HANDSHAKE_MSG_LEN {
            return Err(fail!(
                status::BAD_COMMAND,
                "HANDSHAKE: a handshake message is 1 to {MAX_HANDSHAKE_MSG_LEN} bytes, not {len}"
            ));
        }
        let mut buf = [0u8; MAX_HANDSHAKE_MSG_LEN];
        mailbox::read_input(&self.mem, 0, &mut buf[..len]);
        let message = &buf[..len];
        match core::mem::replace(&mut self.session, Session::Idle) {
            Session::SourceHandshake(hs) => {
                let (next, outcome) = self.source_step(hs, message);
                self.session = next;
                outcome
            }
            Session::DestinationHandshake(hs) => {
                let (next, outcome) = self.destination_step(hs, message);
                self.session = next;
                outcome
            }
            other => {
                self.session = other;
                Err(fail!(status::BAD_STATE, "HANDSHAKE: no handshake under way"))
            }
        }
    }

    /// The handshake finished: say who the peer is.
    fn peer_confirmed(&mut self, peer: &PeerIdentity) -> Done<HandshakeReply> {
        mailbox::write_peer(&self.mem, Some(peer));
        Done::new(HandshakeReply { complete: true })
    }

    /// A handshake step that did not finish it, with `len` bytes of output.
    fn step_done(len: usize) -> Done<HandshakeReply> {
        Done::new(HandshakeReply { complete: false }).with_output(len)
    }

    /// Copies our handshake `messages` out to `FROM_AGENT`, in order;
    /// returns the output's length.
    fn send_messages(&mut self, messages: &[&[u8]]) -> Result<usize, Fail> {
        let mut out = Output::new();
        for message in messages {
            out.put_message(&self.mem, message)?;
        }
        Ok(out.len())
    }

    /// Gets the platform's report for the handshake's `report_data` and
    /// has the handshake `write` it into `out` as our evidence message
    /// (`what`, named in errors); the same on either side. Returns the
    /// message's length.
    fn own_evidence(
        &mut self,
        what: &str,
        report_data: Result<[u8; 64], Error>,
        out: &mut [u8],
        write: impl FnOnce(&Evidence, &mut [u8]) -> Result<usize, Error>,
    ) -> Result<usize, Fail> {
        let report_data = report_data.map_err(|e| own_step(what, e))?;
        let evidence = self
            .platform
            .report(&report_data)
            .map_err(|e| fail!(status::PLATFORM, "{what}: {e}"))?;
        write(&evidence, out).map_err(|e| own_step(what, e))
    }

    fn source_step(&mut self, mut hs: SourceHandshake, msg: &[u8]) -> (Session<'a>, Outcome<HandshakeReply>) {
        let failed = Session::HandshakeFailed(Role::Source);
        match msg[0] {
            kind::DST_HELLO => match hs.read_dst_hello(msg) {
                Ok(()) => (Session::SourceHandshake(hs), Ok(Self::step_done(0))),
                Err(e) => (failed, Err(refused("destination", "hello", msg, e))),
            },
            kind::DST_EVIDENCE => {
                if let Err(e) = hs.read_dst_evidence(msg, &PeerVerifier) {
                    return (failed, Err(refused("destination", "evidence", msg, e)));
                }
                let mut ev_msg = [0u8; MAX_HANDSHAKE_MSG_LEN];
                let ev_len = self.own_evidence("SrcEvidence", hs.report_data(), &mut ev_msg, |ev, out| {
                    hs.write_evidence(ev, out)
                });
                let n = match ev_len {
                    Ok(n) => n,
                    Err(fail) => return (failed, Err(fail)),
                };
                let mut fin = [0u8; FINISHED_MSG_LEN];
                let m = match hs.write_finished(&mut fin) {
                    Ok(m) => m,
                    Err(e) => return (failed, Err(own_step("SrcFinished", e))),
                };
                match self.send_messages(&[&ev_msg[..n], &fin[..m]]) {
                    Ok(len) => (Session::SourceHandshake(hs), Ok(Self::step_done(len))),
                    Err(fail) => (failed, Err(fail)),
                }
            }
            kind::DST_FINISHED => match hs.read_dst_finished(msg) {
                Ok(mut session) => {
                    if let Err(e) = session.set_lanes(self.run.lanes) {
                        return (failed, Err(fail!(status::REFUSED, "{} lanes: {e}", self.run.lanes)));
                    }
                    let done = self.peer_confirmed(session.peer());
                    // Private memory less what the guest shares now: covm
                    // carries the shared pages, in the clear.
                    let mut page = [0u8; covm_agent_protocol::PAGE_SIZE];
                    self.mem.read_page(covm_guest_abi::shared_map::SHARED_MAP, &mut page);
                    let map = match self.own.as_ref() {
                        Ok(own) => crate::shared_check::private_map(&own.map, &page),
                        Err(_) => return (failed, Err(fail!(status::REFUSED, "the migration agent did not start"))),
                    };
                    let map = match map {
                        Ok(map) => map,
                        Err(e) => return (failed, Err(fail!(status::REFUSED, "the guest's shared map: {e}"))),
                    };
                    self.run.cursor = map.first();
                    let mut shared = [0u8; covm_guest_abi::shared_map::MAP_LEN];
                    shared.copy_from_slice(&page[..covm_guest_abi::shared_map::MAP_LEN]);
                    self.session_map = Some((map, shared));
                    (Session::Source(session), Ok(done))
                }
                Err(e) => (failed, Err(refused("destination", "Finished", msg, e))),
            },
            other => (
                failed,
                Err(fail!(
                    status::REFUSED,
                    "peer refused: handshake message type {other} is not one the destination sends"
                )),
            ),
        }
    }

    fn destination_step(&mut self, mut hs: DestinationHandshake, msg: &[u8]) -> (Session<'a>, Outcome<HandshakeReply>) {
        let failed = Session::HandshakeFailed(Role::Destination);
        match msg[0] {
            kind::SRC_HELLO => {
                if let Err(e) = hs.read_src_hello(msg) {
                    return (failed, Err(refused("source", "hello", msg, e)));
                }
                let mut hello = [0u8; MAX_HANDSHAKE_MSG_LEN];
                let n = match hs.write_hello(&mut hello) {
                    Ok(n) => n,
                    Err(e) => return (failed, Err(own_step("DstHello", e))),
                };
                let mut ev_msg = [0u8; MAX_HANDSHAKE_MSG_LEN];
                let ev_len = self.own_evidence("DstEvidence", hs.report_data(), &mut ev_msg, |ev, out| {
                    hs.write_evidence(ev, out)
                });
                let m = match ev_len {
                    Ok(m) => m,
                    Err(fail) => return (failed, Err(fail)),
                };
                match self.send_messages(&[&hello[..n], &ev_msg[..m]]) {
                    Ok(len) => (Session::DestinationHandshake(hs), Ok(Self::step_done(len))),
                    Err(fail) => (failed, Err(fail)),
                }
            }
            kind::SRC_EVIDENCE => match hs.read_src_evidence(msg, &PeerVerifier) {
                Ok(_) => (Session::DestinationHandshake(hs), Ok(Self::step_done(0))),
                Err(e) => (failed, Err(refused("source", "evidence", msg, e))),
            },
            kind::SRC_FINISHED => {
                if let Err(e) = hs.read_src_finished(msg) {
                    return (failed, Err(refused("source", "Finished", msg, e)));
                }
                let mut fin = [0u8; FINISHED_MSG_LEN];
                let (n, session) = match hs.write_finished(&mut fin) {
                    Ok(done) => done,
                    Err(e) => return (failed, Err(own_step("DstFinished", e))),
                };
                let len = match self.send_messages(&[&fin[..n]]) {
                    Ok(len) => len,
                    Err(fail) => return (failed, Err(fail)),
                };
                let done = self.peer_confirmed(session.peer());
                // No checker is alive: the session in `self` is Idle
                // while a step runs, and BEGIN dropped any earlier one.
                // The checker clears the table, so it gets only the frames
                // of private memory: the whole table covers 4 GiB, and
                // clearing its 4 MiB cost 5 ms of first-touch faults on
                // every migration's handshake.
                let frames = self.own.as_ref().map_or(0, |o| o.map.end() / PAGE_SIZE as u64);
                let table = self.epochs.lend();
                let frames = (frames as usize).min(table.len());
                let mut checker = ImportChecker::new(session, table.split_at_mut(frames).0);
                if let Err(e) = checker.set_lanes(self.run.lanes) {
                    return (failed, Err(fail!(status::REFUSED, "{} lanes: {e}", self.run.lanes)));
                }
                (Session::Destination(checker), Ok(done.with_output(len)))
            }
            other => (
                failed,
                Err(fail!(
                    status::REFUSED,
                    "peer refused: handshake message type {other} is not one the source sends"
                )),
            ),
        }
    }
}
