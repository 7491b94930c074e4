//! The destination side: accept the Hello, build the VM and its opener,
//! the opener's handshake, apply records with their checks, restore,
//! commit (or abort with the opener's token).

use super::report::{ms, whole_ms, ReceiveReport};
use super::sealer::handshake_over;
use super::{Carried, MigrationError, Opener, Phase, PlainOpener, Progress, ReceiveOptions};
use crate::protocol::{fit_reason, Message, Wire, PROTOCOL_VERSION, SUPPORTED_VERSIONS};
use crate::transport::Stream;
use crate::vm::{DestinationVm, VmOpError};
use std::time::{Duration, Instant};

/// How long a failing destination tries to write its abort token and Abort.
const ABORT_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// A received, restored and committed VM: the VMM runs it now.
pub struct Incoming<V = Box<dyn DestinationVm>> {
    /// The VM the factory built, memory and state loaded.
    pub vm: V,
    /// What the migration carried.
    pub report: ReceiveReport,
}

/// Receives a VM over `stream` with plain page records (protocol version
/// 1 only: a Hello of any other version is refused). `build` makes the
/// incoming VM from the source's configuration; if it fails the source is
/// refused. On `Err` the VM (if any) was dropped: the VMM stays ready for
/// another attempt.
pub fn receive<F, V>(
    stream: Box<dyn Stream>,
    build: F,
    options: &ReceiveOptions,
    progress: &Progress,
) -> Result<Incoming<V>, MigrationError>
where
    V: DestinationVm,
    F: FnOnce(&[u8]) -> Result<V, VmOpError>,
{
    let build = move |_version: u16, config: &[u8]| -> Result<(V, Box<dyn Opener>), VmOpError> {
        Ok((build(config)?, Box::new(PlainOpener)))
    };
    receive_versions(stream, &[PROTOCOL_VERSION], build, options, progress)
}

/// [`receive`] for any protocol version this covm speaks, the VM and its
/// [`Opener`] made by `build` from the Hello's version and configuration
/// (the factory refuses what it cannot receive that way, e.g. a
/// confidential VM over version 1: its error is the source's Refuse).
///
/// After HelloAck the opener's handshake runs; after Complete and the
/// engine's checks, [`Opener::commit`] decides and its message goes to
/// the source. Any failure before that: [`Opener::abort`]'s message (the
/// abort token), then Abort{reason}, both best effort, and the VM is
/// dropped. Once the opener committed in version 2 the VM is returned even
/// if its `Control` cannot be written (the commit cannot be undone); in
/// version 1 a Commit that cannot be written drops the VM (the source,
/// without it, resumes).
pub fn receive_with<F, V>(
    stream: Box<dyn Stream>,
    build: F,
    options: &ReceiveOptions,
    progress: &Progress,
) -> Result<Incoming<V>, MigrationError>
where
    V: DestinationVm,
    F: FnOnce(u16, &[u8]) -> Result<(V, Box<dyn Opener>), VmOpError>,
{
    receive_versions(stream, &SUPPORTED_VERSIONS, build, options, progress)
}

fn receive_versions<F, V>(
    stream: Box<dyn Stream>,
    accepted: &'static [u16],
    build: F,
    options: &ReceiveOptions,
    progress: &Progress,
) -> Result<Incoming<V>, MigrationError>
where
    V: DestinationVm,
    F: FnOnce(u16, &[u8]) -> Result<(V, Box<dyn Opener>), VmOpError>,
{
    tracing::info!(peer = %stream.peer(), "migration: receiving");
    let mut wire = Wire::new(stream);
    // Made with the VM by the factory; kept here to abort on failure.
    let mut opener: Option<Box<dyn Opener>> = None;
    let result = wire
        .stream()
        .set_io_timeout(Some(options.io_timeout))
        .map_err(MigrationError::Timeouts)
        .and_then(|()| Receiver::new(progress).run(&mut wire, accepted, build, &mut opener));
    match result {
        Ok(incoming) => {
            progress.set_phase(Phase::Completed);
            tracing::info!(report = %incoming.report.to_json(), "migration: received and committed");
            Ok(incoming)
        }
        Err(error) => {
            let reason = fit_reason(&error.to_string());
            // The abort token even when the source aborted first: it is
            // what lets a source whose agent sealed its Final resume.
            let token = opener.as_mut().and_then(|opener| opener.abort(&reason));
            let _ = wire.stream().set_io_timeout(Some(ABORT_WRITE_TIMEOUT));
            if let Some(token) = token {
                if let Err(e) = wire.send_now(&token) {
                    tracing::warn!(error = %e, "could not send the abort token to the source");
                }
            }
            if !error.peer_knows() {
                let _ = wire.send_now(&Message::Abort { reason });
            }
            tracing::error!(%error, "incoming migration failed; its VM is discarded");
            progress.update(|p| {
                p.phase = Phase::Failed;
                p.error = Some(error.to_string());
            });
            Err(error)
        }
    }
}

/// Refuses the source's Hello with `error` as the reason, then fails with
/// `error` (or with the write's error if the Refuse cannot be sent).
fn refuse<T>(wire: &mut Wire<Box<dyn Stream>>, error: MigrationError) -> Result<T, MigrationError> {
    wire.send_now(&Message::Refuse {
        reason: fit_reason(&error.to_string()),
    })?;
    Err(error)
}

/// The destination's bookkeeping: the open round and what arrived.
struct Receiver<'a> {
    progress: &'a Progress,
    started: Instant,
    round: u32,
    round_pages: u64,
    round_zero: u64,
    round_bytes: u64,
    report: ReceiveReport,
    state_done: bool,
}

impl<'a> Receiver<'a> {
    fn new(progress: &'a Progress) -> Self {
        Receiver {
            progress,
            started: Instant::now(),
            round: 0,
            round_pages: 0,
            round_zero: 0,
            round_bytes: 0,
            report: ReceiveReport::default(),
            state_done: false,
        }
    }

    /// Reads the Hello; refuses a version outside `accepted`, or one that
    /// is not the frame's. Returns the version and the configuration.
    fn hello(
        &self,
        wire: &mut Wire<Box<dyn Stream>>,
        accepted: &'static [u16],
    ) -> Result<(u16, Vec<u8>), MigrationError> {
        let (version, config) = match wire.receive()? {
            Message::Hello { version, config } => (version, config),
            Message::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
            other => {
                return Err(MigrationError::Unexpected {
                    got: other.kind(),
                    during: "waiting for Hello",
                })
            }
        };
        let error = if !accepted.contains(&version) {
            MigrationError::Version {
                found: version,
                accepted,
            }
        } else if wire.version() != Some(version) {
            MigrationError::stream(format!(
                "a Hello of version {version} in a frame of version {}",
                wire.version().unwrap_or_default()
            ))
        } else {
            return Ok((version, config));
        };
        refuse(wire, error)
    }

    fn run<F, V>(
        mut self,
        wire: &mut Wire<Box<dyn Stream>>,
        accepted: &'static [u16],
        build: F,
        opener: &mut Option<Box<dyn Opener>>,
    ) -> Result<Incoming<V>, MigrationError>
    where
        V: DestinationVm,
        F: FnOnce(u16, &[u8]) -> Result<(V, Box<dyn Opener>), VmOpError>,
    {
        self.progress.set_phase(Phase::Handshake);
        let (version, config) = self.hello(wire, accepted)?;
        let (mut vm, built) = match build(version, &config) {
            Ok(built) => built,
            Err(source) => {
                let op = "build the incoming VM";
                return refuse(wire, MigrationError::Vm { op, source });
            }
        };
        let opener = opener.insert(built);
        wire.send_now(&Message::HelloAck)?;
        handshake_over(wire, |link| opener.handshake(link))?;
        self.report.setup_ms = ms(self.started.elapsed());
        self.progress.set_phase(Phase::PreCopy);
        loop {
            let message = wire.receive()?;
            let frame_bytes = message.payload_len() as u64;
            if opener.is_page_record(&message) {
                if self.state_done {
                    return Err(MigrationError::stream("a page record after the state"));
                }
                let carried = opener.open_pages(&mut vm, message)?;
                self.carry(carried, frame_bytes, wire.bytes_received())?;
                continue;
            }
            // Whatever comes next needs every earlier record applied.
            if let Some(carried) = opener.settle(&mut vm)? {
                self.carry(carried, 0, wire.bytes_received())?;
            }
            match message {
                Message::RoundEnd {
                    round,
                    pages,
                    zero_pages,
                    bytes,
                } => self.end_round(round, pages, zero_pages, bytes)?,
                Message::Complete { pages, rounds } => {
                    self.check_complete(pages, rounds)?;
                    let decision = opener.commit(&mut vm)?;
                    // Committed: from here the VM runs here.
                    if let Err(e) = wire.send_now(&decision) {
                        if version == PROTOCOL_VERSION {
                            // The source, without Commit, resumes.
                            return Err(e.into());
                        }
                        tracing::error!(
                            error = %e,
                            "could not send the committed decision to the source: the VM runs here, \
                             the source stays paused"
                        );
                    }
                    self.report.total_ms = ms(self.started.elapsed());
                    self.report.bytes_received = wire.bytes_received();
                    self.report.crypto_ms = whole_ms(opener.crypto_time());
                    self.report.wire_ms = ms(wire.io_time());
                    self.report.agent = opener.agent_costs();
                    return Ok(Incoming {
                        vm,
                        report: self.report,
                    });
                }
                Message::Sync { round } => {
                    // Every earlier frame is applied: this loop reads in order.
                    if self.state_done || round.checked_add(1) != Some(self.round) {
                        return Err(MigrationError::stream(format!(
                            "Sync for round {round} while round {} is open{}",
                            self.round,
                            if self.state_done { ", after the state" } else { "" }
                        )));
                    }
                    wire.send_now(&Message::Synced { round })?;
                }
                Message::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
                other => {
                    let kind = other.kind();
                    let Some(state) = opener.open_state(other)? else {
                        return Err(MigrationError::Unexpected {
                            got: kind,
                            during: "receiving pages and state",
                        });
                    };
                    self.restore(&mut vm, &state)?;
                }
            }
            self.progress.update(|p| p.bytes_transferred = wire.bytes_received());
        }
    }

    /// Counts what a page record carried (`frame_bytes`: its frame's
    /// payload; 0 for a record applied late, counted when it arrived).
    fn carry(&mut self, carried: Carried, frame_bytes: u64, received: u64) -> Result<(), MigrationError> {
        if carried.round != self.round {
            let what = format!(
                "a page record of round {} while round {} is open",
                carried.round, self.round
            );
            return Err(MigrationError::stream(what));
        }
        self.round_pages += carried.pages;
        self.round_zero += carried.zero_pages;
        self.round_bytes += frame_bytes;
        self.progress.update(|p| {
            p.pages += carried.pages;
            p.bytes_transferred = received;
        });
        Ok(())
    }

    fn end_round(&mut self, round: u32, pages: u64, zero: u64, bytes: u64) -> Result<(), MigrationError> {
        if self.state_done || round != self.round {
            let what = format!("RoundEnd of round {round} while round {} is open", self.round);
            return Err(MigrationError::stream(what));
        }
        for (what, claimed, arrived) in [
            ("pages", pages, self.round_pages),
            ("zero pages", zero, self.round_zero),
            ("bytes", bytes, self.round_bytes),
        ] {
            if claimed != arrived {
                let what = format!("round {round} ended claiming {claimed} {what}, {arrived} arrived");
                return Err(MigrationError::stream(what));
            }
        }
        self.report.pages += pages - zero;
        self.report.zero_pages += zero;
        self.round += 1;
        (self.round_pages, self.round_zero, self.round_bytes) = (0, 0, 0);
        let next = self.round;
        self.progress.update(|p| p.round = next);
        Ok(())
    }

    fn restore(&mut self, vm: &mut dyn DestinationVm, state: &[u8]) -> Result<(), MigrationError> {
        if self.state_done {
            return Err(MigrationError::stream("a second state record"));
        }
        if self.round == 0 || self.round_pages != 0 {
            return Err(MigrationError::stream("the state arrived before the last round ended"));
        }
        self.progress.set_phase(Phase::StopAndCopy);
        let started = Instant::now();
        vm.restore_state(state)
            .map_err(MigrationError::vm("restore the VM state"))?;
        self.report.restore_ms = ms(started.elapsed());
        self.report.state_bytes = state.len() as u64;
        self.state_done = true;
        self.progress.set_phase(Phase::Completing);
        Ok(())
    }

    fn check_complete(&mut self, pages: u64, rounds: u32) -> Result<(), MigrationError> {
        if !self.state_done {
            return Err(MigrationError::stream("Complete arrived before the state"));
        }
        let arrived = self.report.pages + self.report.zero_pages;
        if pages != arrived || rounds != self.round {
            let what = format!(
                "Complete claims {pages} pages in {rounds} rounds, {arrived} pages in {} rounds arrived",
                self.round
            );
            return Err(MigrationError::stream(what));
        }
        self.report.rounds = rounds;
        Ok(())
    }
}
