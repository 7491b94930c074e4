//! The engine carrying a confidential-style migration (protocol version 2)
//! through the Sealer/Opener seam, against the fake VM, over real sockets.
//!
//! The "agents" here are a TEST FAKE: [`ToySealer`] and [`ToyOpener`]
//! "seal" with a keyed XOR whose key comes from a toy handshake. That is
//! not cryptography; it only makes the records opaque to the engine and
//! lets the fake agents keep the real agents' rules: a handshake before
//! any record, round ends sealed by the agent, vCPU state and a Final
//! sealed after the pause, a Commit that echoes the Final, an abort token
//! minted only before commit, and a source that may not resume after
//! Final without a valid token.

mod fake;

use covm_migration::engine::{
    self, Carried, Link, MigrationError, Opener, Phase, Progress, ReceiveOptions, ReceiveReport, RecordSink, Sealer,
    SendOptions,
};
use covm_migration::protocol::{
    write_frame_in, Message, ProtocolError, Wire, MAX_PAGES_PER_FRAME, PAGE_BYTES, PROTOCOL_VERSION,
    PROTOCOL_VERSION_CONFIDENTIAL,
};
use covm_migration::transport::Stream;
use covm_migration::vm::{DestinationVm, SourceVm, VmOpError, PAGE_SIZE};
use fake::{assert_same_memory, options, pair, FakeSource, Guest, Received};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// TEST FAKE agents: toy records under a keyed XOR (not cryptography).
// ---------------------------------------------------------------------------

/// Toy record types (a nod to docs/confidential-protocol.md §7).
const PAGE: u8 = 1;
const ZERO: u8 = 2;
const ROUND_END: u8 = 3;
const VCPU: u8 = 4;
const FINAL: u8 = 5;
const COMMIT: u8 = 6;
const ABORT: u8 = 7;

/// TEST FAKE "encryption": XOR with a key stream derived from one byte.
fn toy_xor(key: u8, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key.wrapping_mul(31).wrapping_add(i as u8);
    }
}

/// Toy record: type u8, address u64, length u32, body (XORed).
fn toy_seal(key: u8, kind: u8, addr: u64, body: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let start = out.len();
    out.extend_from_slice(body);
    toy_xor(key, &mut out[start..]);
}

fn toy_open(key: u8, mut bytes: &[u8]) -> Result<Vec<(u8, u64, Vec<u8>)>, MigrationError> {
    let bad = || MigrationError::stream("toy agent: a malformed record");
    let mut records = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 13 {
            return Err(bad());
        }
        let kind = bytes[0];
        let addr = u64::from_le_bytes(bytes[1..9].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
        let mut body = bytes.get(13..13 + len).ok_or_else(bad)?.to_vec();
        toy_xor(key, &mut body);
        records.push((kind, addr, body));
        bytes = &bytes[13 + len..];
    }
    Ok(records)
}

/// What the toy agents did, for the tests to check.
#[derive(Default)]
struct AgentLog {
    /// Handshake messages this side received.
    handshake: Vec<Vec<u8>>,
    /// Rounds whose sealed round end this side sealed (source) or checked
    /// (destination).
    round_ends: Vec<u32>,
    /// Each `seal_runs` call of the source: its round and runs.
    seals: Vec<(u32, Vec<(u64, u64)>)>,
    final_sealed: bool,
    final_checked: bool,
    committed: bool,
    token: bool,
}

type SharedLog = Arc<Mutex<AgentLog>>;

fn handshake_message(link: &mut dyn Link, prefix: &[u8], log: &SharedLog) -> Result<Vec<u8>, MigrationError> {
    match link.receive()? {
        Message::Handshake { message } if message.starts_with(prefix) => {
            log.lock().unwrap().handshake.push(message.clone());
            Ok(message[prefix.len()..].to_vec())
        }
        other => Err(MigrationError::Unexpected {
            got: other.kind(),
            during: "the toy handshake",
        }),
    }
}

/// TEST FAKE source agent and its host-side sealer in one.
struct ToySealer {
    nonce: u8,
    key: Option<u8>,
    /// Rounds ended (the agent's open epoch).
    epoch: u32,
    pages: u64,
    round_pages: u64,
    summary: Vec<u8>,
    final_sealed: bool,
    aborted: bool,
    committed: bool,
    crypto: Duration,
    log: SharedLog,
}

impl ToySealer {
    fn new(log: SharedLog) -> Self {
        ToySealer {
            nonce: 0x3c,
            key: None,
            epoch: 0,
            pages: 0,
            round_pages: 0,
            summary: Vec::new(),
            final_sealed: false,
            aborted: false,
            committed: false,
            crypto: Duration::ZERO,
            log,
        }
    }

    fn key(&self) -> Result<u8, MigrationError> {
        self.key
            .ok_or_else(|| MigrationError::stream("toy agent: no session key"))
    }
}

impl ToySealer {
    /// One `Sealed` message of the `count` pages from `gpa`.
    fn seal_run(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        gpa: u64,
        count: u64,
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        let started = Instant::now();
        let key = self.key()?;
        let mut page = vec![0u8; PAGE_BYTES];
        let mut records = Vec::new();
        let mut zero_pages = 0;
        for i in 0..count {
            let at = gpa + i * PAGE_BYTES as u64;
            vm.read_memory(at, &mut page).map_err(|source| MigrationError::Vm {
                op: "read guest memory",
                source,
            })?;
            if page.iter().all(|b| *b == 0) {
                zero_pages += 1;
                toy_seal(key, ZERO, at, &1u64.to_le_bytes(), &mut records);
            } else {
                toy_seal(key, PAGE, at, &page, &mut records);
            }
        }
        self.crypto += started.elapsed();
        self.round_pages += count;
        self.pages += count;
        out(&Message::Sealed { round, records })?;
        Ok(Carried {
            round,
            pages: count,
            zero_pages,
        })
    }
}

impl Sealer for ToySealer {
    fn version(&self) -> u16 {
        PROTOCOL_VERSION_CONFIDENTIAL
    }

    fn handshake(&mut self, link: &mut dyn Link) -> Result<(), MigrationError> {
        link.send(&Message::Handshake {
            message: [b"S-HELLO".as_slice(), &[self.nonce]].concat(),
        })?;
        let theirs = handshake_message(link, b"D-HELLO", &self.log)?;
        let key = self.nonce ^ theirs[0];
        link.send(&Message::Handshake {
            message: [b"S-FINISHED".as_slice(), &[key]].concat(),
        })?;
        if handshake_message(link, b"D-FINISHED", &self.log)? != [key] {
            return Err(MigrationError::stream("toy agent: the keys differ"));
        }
        self.key = Some(key);
        Ok(())
    }

    fn seal_runs(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        runs: &[(u64, u64)],
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        self.log.lock().unwrap().seals.push((round, runs.to_vec()));
        let mut carried = Carried::empty(round);
        for &(gpa, count) in runs {
            carried.add(self.seal_run(vm, round, gpa, count, out)?);
        }
        Ok(carried)
    }

    fn end_round(&mut self, round: u32, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        let mut records = Vec::new();
        toy_seal(self.key()?, ROUND_END, 0, &self.round_pages.to_le_bytes(), &mut records);
        out(&Message::Sealed { round, records })?;
        self.round_pages = 0;
        self.epoch = round + 1;
        self.log.lock().unwrap().round_ends.push(round);
        Ok(())
    }

    fn seal_state(&mut self, state: Vec<u8>, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        // As the real agent: Final counts as sealed once attempted.
        self.final_sealed = true;
        self.log.lock().unwrap().final_sealed = true;
        let key = self.key()?;
        // The first half plays the vCPU state (sealed), the rest the
        // host-owned device state (plain).
        let (vcpu, devices) = state.split_at(state.len() / 2);
        self.summary = [self.epoch.to_le_bytes().as_slice(), &self.pages.to_le_bytes()].concat();
        let mut records = Vec::new();
        toy_seal(key, VCPU, 0, vcpu, &mut records);
        toy_seal(key, FINAL, 0, &self.summary, &mut records);
        out(&Message::Sealed {
            round: self.epoch,
            records,
        })?;
        out(&Message::State {
            state: devices.to_vec(),
        })?;
        Ok(())
    }

    fn read_decision(&mut self, message: Message) -> Result<(), MigrationError> {
        let Message::Control { record } = message else {
            return Err(MigrationError::Unexpected {
                got: message.kind(),
                during: "waiting for the toy agent's Control",
            });
        };
        let invalid = || MigrationError::stream("toy agent: an invalid control record");
        let records = toy_open(self.key()?, &record).map_err(|_| invalid())?;
        match records.as_slice() {
            [(COMMIT, 0, echo)] if self.final_sealed && !self.aborted && *echo == self.summary => {
                self.committed = true;
                self.log.lock().unwrap().committed = true;
                Ok(())
            }
            [(ABORT, 0, reason)] if !self.committed => {
                self.aborted = true;
                self.log.lock().unwrap().token = true;
                Err(MigrationError::PeerAborted {
                    reason: format!("toy abort token: {}", String::from_utf8_lossy(reason)),
                })
            }
            _ => Err(invalid()),
        }
    }

    fn may_resume(&mut self) -> bool {
        !self.committed && (!self.final_sealed || self.aborted)
    }

    fn crypto_time(&self) -> Duration {
        self.crypto
    }
}

/// How the TEST FAKE destination agent (and its host) behaves.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Honest,
    /// Refuses to commit (a policy check): mints an abort token.
    RefuseCommit,
    /// Refuses to commit after a while.
    RefuseCommitSlowly(Duration),
    /// A host that forges the agent's decision: garbage in the Control.
    ForgeCommit,
    /// Refuses to commit and cannot mint a token: only the plain Abort.
    Tokenless,
}

/// TEST FAKE destination agent and its host-side opener in one.
struct ToyOpener {
    behaviour: Behaviour,
    nonce: u8,
    key: Option<u8>,
    epoch: u32,
    round_pages: u64,
    pages: u64,
    vcpu: Option<Vec<u8>>,
    summary: Option<Vec<u8>>,
    committed: bool,
    aborted: bool,
    log: SharedLog,
}

impl ToyOpener {
    fn new(behaviour: Behaviour, log: SharedLog) -> Self {
        ToyOpener {
            behaviour,
            nonce: 0xa5,
            key: None,
            epoch: 0,
            round_pages: 0,
            pages: 0,
            vcpu: None,
            summary: None,
            committed: false,
            aborted: false,
            log,
        }
    }

    fn control(&self, kind: u8, body: &[u8]) -> Message {
        let mut record = Vec::new();
        toy_seal(self.key.unwrap(), kind, 0, body, &mut record);
        Message::Control { record }
    }
}

fn vm_err(op: &'static str) -> impl FnOnce(VmOpError) -> MigrationError {
    move |source| MigrationError::Vm { op, source }
}

impl Opener for ToyOpener {
    fn handshake(&mut self, link: &mut dyn Link) -> Result<(), MigrationError> {
        let theirs = handshake_message(link, b"S-HELLO", &self.log)?;
        link.send(&Message::Handshake {
            message: [b"D-HELLO".as_slice(), &[self.nonce]].concat(),
        })?;
        let key = self.nonce ^ theirs[0];
        if handshake_message(link, b"S-FINISHED", &self.log)? != [key] {
            return Err(MigrationError::stream("toy agent: the keys differ"));
        }
        link.send(&Message::Handshake {
            message: [b"D-FINISHED".as_slice(), &[key]].concat(),
        })?;
        self.key = Some(key);
        Ok(())
    }

    fn is_page_record(&self, message: &Message) -> bool {
        matches!(message, Message::Sealed { .. })
    }

    fn open_pages(&mut self, vm: &mut dyn DestinationVm, message: Message) -> Result<Carried, MigrationError> {
        let Message::Sealed { round, records } = message else {
            return Err(MigrationError::stream("toy agent: not a sealed batch"));
        };
        if self.aborted || round != self.epoch {
            return Err(MigrationError::stream("toy agent: a record out of its epoch"));
        }
        let mut carried = Carried::empty(round);
        let key = self
            .key
            .ok_or_else(|| MigrationError::stream("toy agent: no session key"))?;
        for (kind, addr, body) in toy_open(key, &records)? {
            match kind {
                PAGE => {
                    vm.write_memory(addr, &body).map_err(vm_err("write guest memory"))?;
                    carried.pages += 1;
                }
                ZERO => {
                    let count = u64::from_le_bytes(body.try_into().unwrap());
                    vm.zero_memory(addr, count).map_err(vm_err("zero guest memory"))?;
                    carried.pages += count;
                    carried.zero_pages += count;
                }
                ROUND_END => {
                    let claimed = u64::from_le_bytes(body.try_into().unwrap());
                    if claimed != self.round_pages + carried.pages {
                        return Err(MigrationError::stream("toy agent: a round end that does not add up"));
                    }
                    self.pages += claimed;
                    self.round_pages = 0;
                    carried.pages = 0;
                    self.log.lock().unwrap().round_ends.push(self.epoch);
                    self.epoch += 1;
                }
                VCPU => self.vcpu = Some(body),
                FINAL => {
                    let expect = [self.epoch.to_le_bytes().as_slice(), &self.pages.to_le_bytes()].concat();
                    if body != expect || self.vcpu.is_none() {
                        return Err(MigrationError::stream("toy agent: Final does not match what arrived"));
                    }
                    self.summary = Some(body);
                    self.log.lock().unwrap().final_checked = true;
                }
                _ => return Err(MigrationError::stream("toy agent: an unknown record")),
            }
        }
        self.round_pages += carried.pages;
        Ok(carried)
    }

    fn open_state(&mut self, message: Message) -> Result<Option<Vec<u8>>, MigrationError> {
        let Message::State { state } = message else {
            return Ok(None);
        };
        let vcpu = self
            .vcpu
            .clone()
            .ok_or_else(|| MigrationError::stream("toy agent: device state before the vCPU state"))?;
        Ok(Some([vcpu, state].concat()))
    }

    fn commit(&mut self, _vm: &mut dyn DestinationVm) -> Result<Message, MigrationError> {
        let refuse = || MigrationError::stream("toy agent: the policy forbids this host");
        match self.behaviour {
            Behaviour::Honest => {}
            Behaviour::ForgeCommit => return Ok(Message::Control { record: vec![0xde; 40] }),
            Behaviour::RefuseCommit | Behaviour::Tokenless => return Err(refuse()),
            Behaviour::RefuseCommitSlowly(delay) => {
                thread::sleep(delay);
                return Err(refuse());
            }
        }
        let summary = self.summary.clone().filter(|_| !self.aborted);
        let summary = summary.ok_or_else(|| MigrationError::stream("toy agent: no checked Final"))?;
        self.committed = true;
        self.log.lock().unwrap().committed = true;
        Ok(self.control(COMMIT, &summary))
    }

    fn abort(&mut self, reason: &str) -> Option<Message> {
        if self.committed || self.key.is_none() || self.behaviour == Behaviour::Tokenless {
            return None;
        }
        self.aborted = true;
        self.log.lock().unwrap().token = true;
        Some(self.control(ABORT, &reason.as_bytes()[..reason.len().min(64)]))
    }

    fn crypto_time(&self) -> Duration {
        Duration::from_millis(3)
    }
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

type Built = (Box<dyn DestinationVm>, Box<dyn Opener>);

/// The destination VMM's factory for a confidential VM: version 2 only.
fn confidential_factory(
    received: Arc<Mutex<Received>>,
    behaviour: Behaviour,
    log: SharedLog,
) -> impl FnOnce(u16, &[u8]) -> Result<Built, VmOpError> {
    move |version, config| {
        if version != PROTOCOL_VERSION_CONFIDENTIAL {
            return Err(VmOpError::Refused(format!(
                "a confidential VM arrives only over protocol version 2, not version {version}"
            )));
        }
        let vm = fake::factory(received)(config)?;
        Ok((vm, Box::new(ToyOpener::new(behaviour, log))))
    }
}

struct Destination {
    handle: JoinHandle<Result<ReceiveReport, MigrationError>>,
    received: Arc<Mutex<Received>>,
    log: SharedLog,
}

fn confidential_destination(stream: Box<dyn Stream>, behaviour: Behaviour) -> Destination {
    let received = Arc::new(Mutex::new(Received::default()));
    let log = SharedLog::default();
    let build = confidential_factory(received.clone(), behaviour, log.clone());
    let handle = thread::spawn(move || {
        let options = ReceiveOptions {
            io_timeout: Duration::from_secs(5),
        };
        engine::receive_with(stream, build, &options, &Progress::new()).map(|incoming| incoming.report)
    });
    Destination { handle, received, log }
}

/// Runs a confidential source against `behaviour`; returns its result, the
/// source agent's log, the progress, and the destination.
fn migrate(
    vm: &mut FakeSource,
    behaviour: Behaviour,
    options: &SendOptions,
) -> (
    Result<engine::MigrationReport, MigrationError>,
    SharedLog,
    Progress,
    Destination,
) {
    let (a, b) = pair();
    let destination = confidential_destination(b, behaviour);
    let log = SharedLog::default();
    let mut sealer = ToySealer::new(log.clone());
    let progress = Progress::new();
    let result = engine::send_with(a, vm, &fake::config(), &mut sealer, options, &progress);
    (result, log, progress, destination)
}

/// After Final without a decision: paused, never resumed, but unthrottled
/// and untracked.
fn assert_left_paused(g: &Guest) {
    assert!(g.paused, "the guest must stay paused");
    assert_eq!((g.pauses, g.resumes), (1, 0));
    assert_eq!(g.throttle, 0);
    assert!(!g.tracking);
}

/// Resumed at the source after the pause.
fn assert_resumed(g: &Guest) {
    assert!(!g.paused);
    assert_eq!((g.pauses, g.resumes), (1, 1));
    assert_eq!(g.throttle, 0);
    assert!(!g.tracking);
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn confidential_migration_moves_the_guest_in_sealed_records() {
    let mut vm = FakeSource::new(0.25);
    let (result, source_log, progress, destination) = migrate(&mut vm, Behaviour::Honest, &options(0));
    let report = result.expect("the source succeeds");
    let received = destination.handle.join().unwrap().expect("the destination succeeds");
    assert_eq!(progress.snapshot().phase, Phase::Completed);
    let g = vm.guest();
    assert_same_memory(&g, &destination.received.lock().unwrap());
    // Committed: the source never resumes.
    assert!(g.paused);
    assert_eq!((g.pauses, g.resumes), (1, 0));
    assert!(report.rounds > 3, "pre-copy ran rounds: {report:?}");

    let (s, d) = (source_log.lock().unwrap(), destination.log.lock().unwrap());
    // The handshake went both ways before any record.
    assert_eq!(s.handshake.len(), 2);
    assert!(s.handshake[0].starts_with(b"D-HELLO") && s.handshake[1].starts_with(b"D-FINISHED"));
    assert_eq!(d.handshake.len(), 2);
    assert!(d.handshake[0].starts_with(b"S-HELLO") && d.handshake[1].starts_with(b"S-FINISHED"));
    // Every round, the final one included, ended with a sealed round end
    // that the destination agent checked (and the engine's counts, which
    // include those frames, balanced).
    let rounds: Vec<u32> = (0..report.rounds).collect();
    assert_eq!(s.round_ends, rounds);
    assert_eq!(d.round_ends, rounds);
    assert!(s.final_sealed && d.final_checked);
    assert!(s.committed && d.committed, "the sealed Commit was read");
    assert!(!s.token && !d.token);

    assert_eq!(received.rounds, report.rounds);
    assert_eq!(
        (received.pages, received.zero_pages),
        (report.pages_sent, report.zero_pages)
    );
    assert!(report.zero_pages > 0, "zero pages counted through the seam");
    assert_eq!(received.crypto_ms, 3, "the opener's crypto time is reported");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(json["crypto_ms"].is_u64());
}

/// A dirty round hands the sealer runs from several chunks at once, up to
/// a chunk's worth of pages: each call is an agent round trip, and a
/// paused final round of a few pages spread over the guest is one call.
#[test]
fn sparse_rounds_reach_the_sealer_in_few_calls() {
    let mut vm = FakeSource::new(0.25);
    let (result, source_log, _, destination) = migrate(&mut vm, Behaviour::Honest, &options(0));
    result.expect("the source succeeds");
    destination.handle.join().unwrap().expect("the destination succeeds");
    let chunk = MAX_PAGES_PER_FRAME as u64; // the toy sealer's chunk
    let pages = |runs: &[(u64, u64)]| runs.iter().map(|r| r.1).sum::<u64>();
    let log = source_log.lock().unwrap();
    let mut spanning = 0;
    for round in 1..=log.round_ends.last().copied().unwrap() {
        let calls: Vec<&Vec<(u64, u64)>> = log
            .seals
            .iter()
            .filter(|(r, _)| *r == round)
            .map(|(_, runs)| runs)
            .collect();
        let total: u64 = calls.iter().map(|runs| pages(runs)).sum();
        for runs in &calls {
            assert!(pages(runs) <= chunk, "round {round}: a call of {} pages", pages(runs));
        }
        // Flushed only when the next chunk's runs would not fit, so two
        // calls in a row hold more than a chunk: a round of at most a
        // chunk's worth is one call.
        assert!(
            calls.len() as u64 <= (2 * total).div_ceil(chunk) + 1,
            "round {round}: {} calls for {total} pages",
            calls.len()
        );
        if total > 0 && total <= chunk {
            assert_eq!(calls.len(), 1, "round {round}: {total} pages in {} calls", calls.len());
        }
        // Runs from more than one chunk of address space in one call.
        spanning += calls
            .iter()
            .filter(|runs| {
                let first = runs.first().unwrap().0 / (chunk * PAGE_SIZE);
                runs.iter().any(|r| r.0 / (chunk * PAGE_SIZE) != first)
            })
            .count();
    }
    assert!(spanning > 0, "no call carried runs of two chunks: {:?}", log.seals);
}

#[test]
fn a_refusing_destination_sends_its_token_and_the_source_resumes() {
    let mut vm = FakeSource::new(0.25);
    let (result, source_log, progress, destination) = migrate(&mut vm, Behaviour::RefuseCommit, &options(0));
    let e = result.unwrap_err();
    // The token freed the guest; the Abort that followed gave the reason.
    assert!(
        matches!(&e, MigrationError::PeerAborted { reason }
            if reason.contains("policy forbids this host") && reason.contains("toy abort token")),
        "{e}"
    );
    assert!(
        source_log.lock().unwrap().final_sealed,
        "the token, not the timing, freed it"
    );
    assert!(source_log.lock().unwrap().token);
    assert_resumed(&vm.guest());
    assert_eq!(progress.snapshot().phase, Phase::Failed);
    let de = destination.handle.join().unwrap().unwrap_err();
    assert!(de.to_string().contains("policy forbids"), "{de}");
    assert!(destination.log.lock().unwrap().token);
}

#[test]
fn an_invalid_decision_after_final_leaves_the_guest_paused() {
    let mut vm = FakeSource::new(0.25);
    let (result, _, progress, destination) = migrate(&mut vm, Behaviour::ForgeCommit, &options(0));
    let e = result.unwrap_err();
    let MigrationError::Undecided { error } = &e else {
        panic!("expected Undecided, got {e}");
    };
    assert!(error.to_string().contains("invalid control record"), "{error}");
    assert!(e.to_string().contains("stays paused"), "{e}");
    assert!(e.to_string().contains("may be running at the destination"), "{e}");
    assert_left_paused(&vm.guest());
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.phase, Phase::Failed);
    assert!(snapshot.error.unwrap().contains("stays paused"));
    // The (forging) destination believes it committed.
    destination.handle.join().unwrap().expect("the destination committed");
}

#[test]
fn a_plain_abort_after_final_does_not_free_the_guest() {
    let mut vm = FakeSource::new(0.0);
    let (result, source_log, _, destination) = migrate(&mut vm, Behaviour::Tokenless, &options(0));
    let e = result.unwrap_err();
    assert!(
        matches!(&e, MigrationError::Undecided { error }
            if matches!(&**error, MigrationError::PeerAborted { reason } if reason.contains("policy forbids"))),
        "{e}"
    );
    assert!(!source_log.lock().unwrap().token);
    assert_left_paused(&vm.guest());
    assert!(destination.handle.join().unwrap().is_err());
}

#[test]
fn a_token_that_comes_after_the_commit_timeout_still_frees_the_guest() {
    let mut vm = FakeSource::new(0.0);
    let options = SendOptions {
        commit_timeout: Duration::from_millis(150),
        ..options(0)
    };
    let (result, source_log, _, destination) = migrate(
        &mut vm,
        Behaviour::RefuseCommitSlowly(Duration::from_millis(400)),
        &options,
    );
    let e = result.unwrap_err();
    assert!(matches!(e, MigrationError::CommitTimeout(_)), "{e}");
    assert!(source_log.lock().unwrap().token);
    assert_resumed(&vm.guest());
    assert!(destination.handle.join().unwrap().is_err());
}

/// An honest confidential destination that accepted a scripted source's
/// version-2 Hello, and the source's end of the wire.
fn accepted_destination() -> (Destination, Wire<Box<dyn Stream>>) {
    let (a, b) = pair();
    let destination = confidential_destination(b, Behaviour::Honest);
    let mut w = Wire::new(a);
    w.send_now(&Message::Hello {
        version: 2,
        config: fake::config(),
    })
    .unwrap();
    assert_eq!(w.receive().unwrap(), Message::HelloAck);
    (destination, w)
}

#[test]
fn a_failed_handshake_reports_the_peers_reason() {
    // The destination's VM factory is fine, but its agent's handshake is
    // fed garbage by a scripted source: the destination aborts (no key
    // yet, so no token) and says why.
    let (destination, mut w) = accepted_destination();
    w.send_now(&Message::Handshake {
        message: b"NOT A HELLO".to_vec(),
    })
    .unwrap();
    let e = destination.handle.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("toy handshake"), "{e}");
    assert!(matches!(w.receive().unwrap(), Message::Abort { reason } if reason.contains("toy handshake")));

    // The real source against a destination that aborts its handshake: the
    // source reports the destination's reason, not its own confusion.
    let (a, b) = pair();
    let script = thread::spawn(move || {
        let mut w = Wire::new(b);
        assert!(matches!(w.receive().unwrap(), Message::Hello { version: 2, .. }));
        w.send_now(&Message::HelloAck).unwrap();
        assert!(matches!(w.receive().unwrap(), Message::Handshake { .. }));
        w.send_now(&Message::Abort {
            reason: "evidence does not match the policy".into(),
        })
        .unwrap();
    });
    let mut vm = FakeSource::new(0.0);
    let mut sealer = ToySealer::new(SharedLog::default());
    let e = engine::send_with(a, &mut vm, &fake::config(), &mut sealer, &options(0), &Progress::new()).unwrap_err();
    script.join().unwrap();
    assert!(
        matches!(&e, MigrationError::PeerAborted { reason } if reason.contains("evidence")),
        "{e}"
    );
    let g = vm.guest();
    assert_eq!((g.pauses, g.tracking_stopped), (0, 0), "tracking never started");
}

#[test]
fn confidential_source_and_plain_destination_refuse_each_other_by_name() {
    // A version-2 source, a plain destination (engine::receive).
    let (a, b) = pair();
    let plain = thread::spawn(move || {
        let received = Arc::new(Mutex::new(Received::default()));
        engine::receive(b, fake::factory(received), &ReceiveOptions::default(), &Progress::new()).err()
    });
    let mut vm = FakeSource::new(0.0);
    let log = SharedLog::default();
    let mut sealer = ToySealer::new(log.clone());
    let e = engine::send_with(a, &mut vm, &fake::config(), &mut sealer, &options(0), &Progress::new()).unwrap_err();
    assert!(
        matches!(&e, MigrationError::Refused { reason }
            if reason.contains("version 2") && reason.contains("accepts version 1")),
        "{e}"
    );
    assert!(log.lock().unwrap().handshake.is_empty(), "no handshake after a Refuse");
    assert_eq!(vm.guest().pauses, 0);
    let de = plain.join().unwrap().unwrap();
    assert!(
        matches!(de, MigrationError::Version { found: 2, accepted } if accepted == [PROTOCOL_VERSION]),
        "{de}"
    );

    // A plain source (engine::send, version 1), a destination whose
    // factory takes confidential VMs only.
    let (a, b) = pair();
    let destination = confidential_destination(b, Behaviour::Honest);
    let mut vm = FakeSource::new(0.0);
    let e = engine::send(a, &mut vm, &fake::config(), &options(0), &Progress::new()).unwrap_err();
    assert!(
        matches!(&e, MigrationError::Refused { reason } if reason.contains("only over protocol version 2")),
        "{e}"
    );
    let de = destination.handle.join().unwrap().unwrap_err();
    assert!(matches!(de, MigrationError::Vm { .. }), "{de}");
}

#[test]
fn version_rules_are_enforced_on_the_wire() {
    // A Hello whose version is not its frame's.
    let (mut a, b) = UnixStream::pair().unwrap();
    let destination = confidential_destination(Box::new(b), Behaviour::Honest);
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        config: fake::config(),
    };
    write_frame_in(&mut a, PROTOCOL_VERSION_CONFIDENTIAL, 0, &hello).unwrap();
    let e = destination.handle.join().unwrap().unwrap_err();
    assert!(
        e.to_string().contains("a Hello of version 1 in a frame of version 2"),
        "{e}"
    );

    // A confidential kind in a version-1 connection.
    let (mut a, b) = UnixStream::pair().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let plain = thread::spawn(move || {
        engine::receive(
            Box::new(b) as Box<dyn Stream>,
            fake::factory(received),
            &ReceiveOptions::default(),
            &Progress::new(),
        )
        .err()
    });
    let mut bytes = Vec::new();
    covm_migration::protocol::write_frame(
        &mut bytes,
        0,
        &Message::Hello {
            version: 1,
            config: fake::config(),
        },
    )
    .unwrap();
    // Kind 12 (Sealed) with a version-1 header, by hand.
    bytes.extend_from_slice(b"CVMG");
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&12u16.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&5u32.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0, 1]);
    a.write_all(&bytes).unwrap();
    let e = plain.join().unwrap().unwrap();
    assert!(
        matches!(
            e,
            MigrationError::Protocol(ProtocolError::NotInVersion { version: 1, .. })
        ),
        "{e}"
    );

    // Plain page records in a confidential connection: the opener does
    // not claim them, the engine refuses them.
    let (destination, mut w) = accepted_destination();
    ToySealer::new(SharedLog::default()).handshake(&mut w).unwrap();
    w.send_now(&Message::Pages {
        round: 0,
        gpas: vec![0],
        data: vec![1; PAGE_BYTES],
    })
    .unwrap();
    let e = destination.handle.join().unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            MigrationError::Unexpected {
                got: covm_migration::protocol::MessageKind::Pages,
                ..
            }
        ),
        "{e}"
    );
    // The destination's agent had keys: its abort token comes first.
    assert!(matches!(w.receive().unwrap(), Message::Control { .. }));
    assert!(matches!(w.receive().unwrap(), Message::Abort { reason } if reason.contains("Pages")));
}

/// The `Sync` barrier: answered with `Synced` once the round it names has
/// ended; a `Sync` naming any other round is a stream error.
#[test]
fn sync_is_answered_only_for_the_last_ended_round() {
    let (destination, mut w) = accepted_destination();
    ToySealer::new(SharedLog::default()).handshake(&mut w).unwrap();
    // Round 0 is still open: no round has ended.
    w.send_now(&Message::Sync { round: 0 }).unwrap();
    let e = destination.handle.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("Sync for round 0 while round 0 is open"), "{e}");
}
