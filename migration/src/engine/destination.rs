//! The destination side: accept the Hello, build the VM, apply records
//! with their checks, restore, commit.

use super::report::{ms, ReceiveReport};
use super::{MigrationError, Opener, Phase, PlainOpener, Progress, ReceiveOptions};
use crate::protocol::{fit_reason, Message, Wire, PROTOCOL_VERSION};
use crate::transport::Stream;
use crate::vm::{DestinationVm, VmError};
use std::time::{Duration, Instant};

/// A received, restored and committed VM: the VMM runs it now.
pub struct Incoming<V = Box<dyn DestinationVm>> {
    /// The VM the factory built, memory and state loaded.
    pub vm: V,
    /// What the migration carried.
    pub report: ReceiveReport,
}

/// Receives a VM over `stream` with plain page records. `build` makes the
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
    F: FnOnce(&[u8]) -> Result<V, VmError>,
{
    receive_with(stream, build, &mut PlainOpener, options, progress)
}

/// [`receive`] with another [`Opener`] (the confidential session's).
pub fn receive_with<F, V>(
    stream: Box<dyn Stream>,
    build: F,
    opener: &mut dyn Opener,
    options: &ReceiveOptions,
    progress: &Progress,
) -> Result<Incoming<V>, MigrationError>
where
    V: DestinationVm,
    F: FnOnce(&[u8]) -> Result<V, VmError>,
{
    tracing::info!(peer = %stream.peer(), "migration: receiving");
    let mut wire = Wire::new(stream);
    let result = wire
        .stream()
        .set_io_timeout(Some(options.io_timeout))
        .map_err(MigrationError::Timeouts)
        .and_then(|()| Receiver::new(progress).run(&mut wire, build, opener));
    match result {
        Ok(incoming) => {
            progress.set_phase(Phase::Completed);
            tracing::info!(report = %incoming.report.to_json(), "migration: received and committed");
            Ok(incoming)
        }
        Err(error) => {
            if !error.peer_knows() {
                let _ = wire.stream().set_io_timeout(Some(Duration::from_millis(500)));
                let _ = wire.send_now(&Message::Abort {
                    reason: fit_reason(&error.to_string()),
                });
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

    fn run<F, V>(
        mut self,
        wire: &mut Wire<Box<dyn Stream>>,
        build: F,
        opener: &mut dyn Opener,
    ) -> Result<Incoming<V>, MigrationError>
    where
        V: DestinationVm,
        F: FnOnce(&[u8]) -> Result<V, VmError>,
    {
        self.progress.set_phase(Phase::Handshake);
        let config = match wire.receive()? {
            Message::Hello { version, config } if version == PROTOCOL_VERSION => config,
            Message::Hello { version, .. } => {
                let error = MigrationError::Version {
                    found: version,
                    expected: PROTOCOL_VERSION,
                };
                wire.send_now(&Message::Refuse {
                    reason: error.to_string(),
                })?;
                return Err(error);
            }
            Message::Abort { reason } => return Err(MigrationError::PeerAborted { reason }),
            other => {
                return Err(MigrationError::Unexpected {
                    got: other.kind(),
                    during: "waiting for Hello",
                })
            }
        };
        let mut vm = match build(&config) {
            Ok(vm) => vm,
            Err(source) => {
                let error = MigrationError::Vm {
                    op: "build the incoming VM",
                    source,
                };
                wire.send_now(&Message::Refuse {
                    reason: fit_reason(&error.to_string()),
                })?;
                return Err(error);
            }
        };
        wire.send_now(&Message::HelloAck)?;
        self.progress.set_phase(Phase::PreCopy);
        loop {
            let message = wire.receive()?;
            let frame_bytes = message.payload_len() as u64;
            if opener.is_page_record(&message) {
                if self.state_done {
                    return Err(MigrationError::stream("a page record after the state"));
                }
                let carried = opener.open_pages(&mut vm, message)?;
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
                let received = wire.bytes_received();
                self.progress.update(|p| {
                    p.pages += carried.pages;
                    p.bytes_transferred = received;
                });
                continue;
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
                    wire.send_now(&Message::Commit)?;
                    self.report.total_ms = ms(self.started.elapsed());
                    self.report.bytes_received = wire.bytes_received();
                    return Ok(Incoming {
                        vm,
                        report: self.report,
                    });
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
