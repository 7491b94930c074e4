//! The source's confidential sealer: the engine picks the pages, the
//! agent seals them, covm forwards ciphertext. covm never reads a private
//! page or a vCPU register here: it hands the agent addresses (the dirty
//! log, a hint) and carries what comes out of the mailbox. The pages the
//! guest shares with the host (its devices' window) covm reads and sends
//! itself, in the clear, as a plain migration does ([`super::shared_pages`]).

use super::call;
use super::handshake;
use super::mailbox::AgentMailbox;
use super::session::SessionInfo;
use super::shared_pages;
use covm_guest_abi::layout::PAGE_SIZE;
use covm_guest_abi::mailbox::words::{
    Args, EndRoundArgs, ExportFinalArgs, ExportListArgs, ExportPagesArgs, ReadControlArgs, ReadControlReply, Role,
    SessionState, StatusArgs,
};
use covm_guest_abi::mailbox::{AGENT_WINDOW_END, AGENT_WINDOW_START};
use covm_migration::engine::{AgentCosts, Carried, Link, MigrationError, PlainSealer, RecordSink, Sealer};
use covm_migration::protocol::{Message, PROTOCOL_VERSION_CONFIDENTIAL};
use covm_migration::vm::SourceVm;
use std::time::Duration;

/// Pages per engine chunk (32 MiB): the agent stops where its 2 MiB of
/// output is full, so a chunk costs one agent call per 2 MiB of sealed
/// data, and one call in all when its pages are zero.
const CHUNK_PAGES: u64 = 8192;

/// Whether the run `(gpa, count)` lies wholly in the agent window.
fn in_agent_window((gpa, count): (u64, u64)) -> bool {
    gpa >= AGENT_WINDOW_START && gpa.saturating_add(count.saturating_mul(PAGE_SIZE)) <= AGENT_WINDOW_END
}

/// Seals through the source VM's agent.
pub struct ConfidentialSealer {
    /// Sends the shared pages, in the clear.
    plain: PlainSealer,
    mailbox: AgentMailbox,
    info: SessionInfo,
    workload_vcpus: u32,
    verified: bool,
    /// The agent's open epoch (rounds ended so far).
    epoch: u32,
}

impl ConfidentialSealer {
    /// A sealer over `mailbox` for a VM with `workload_vcpus` vCPUs (the
    /// agent's own not counted); `verified` adds the memory digest.
    pub fn new(mailbox: AgentMailbox, info: SessionInfo, workload_vcpus: u32, verified: bool) -> Self {
        ConfidentialSealer {
            plain: PlainSealer::default(),
            mailbox,
            info,
            workload_vcpus,
            verified,
            epoch: 0,
        }
    }

    /// Runs one agent command, timing it as crypto time.
    fn call<A: Args>(&mut self, args: A, input: &[u8]) -> Result<A::Reply, MigrationError> {
        call::timed(&mut self.mailbox, &self.info, args, input)
    }

    /// Passes one export call's output `records` on (one `Sealed` frame)
    /// and counts the `pages` it sealed, `zero_pages` of them zero.
    fn forward_export(
        &mut self,
        records: Vec<u8>,
        (pages, zero_pages): (u64, u64),
        out: &mut RecordSink<'_>,
        carried: &mut Carried,
    ) -> Result<(), MigrationError> {
        self.info.add(u64::from(!records.is_empty()), pages, self.epoch);
        self.send(carried.round, records, out)?;
        carried.pages += pages;
        carried.zero_pages += zero_pages;
        Ok(())
    }

    /// Sends the agent's last output (if any) as one `Sealed` message.
    fn forward(&mut self, round: u32, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        let records = self.mailbox.take_output();
        self.send(round, records, out)
    }

    /// Sends `records` (if any) as one `Sealed` message.
    fn send(&mut self, round: u32, records: Vec<u8>, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        if records.is_empty() {
            return Ok(());
        }
        let message = Message::Sealed { round, records };
        let sent = out(&message);
        if let Message::Sealed { records, .. } = message {
            self.mailbox.recycle(records);
        }
        Ok(sent?)
    }

    /// The agent seals `count` pages from `gpa` (it skips what is not
    /// private: the agent window and the pages the guest shares).
    ///
    /// Pipelined: once an output is in covm's hands the agent is asked
    /// for the rest at once and seals it while covm sends that output.
    fn agent_pages(
        &mut self,
        round: u32,
        gpa: u64,
        count: u64,
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        let mut carried = Carried::empty(round);
        // The agent window is never migrated (the agent would skip it):
        // its dirty pages (the mailbox itself) cost no agent call.
        if in_agent_window((gpa, count)) {
            return Ok(carried);
        }
        let ask = |done: u64| ExportPagesArgs {
            round,
            first: gpa + done * PAGE_SIZE,
            count: count - done,
        };
        let mut done = 0;
        call::post(&mut self.mailbox, &self.info, ask(done), &[])?;
        loop {
            let reply = call::finish::<ExportPagesArgs>(&mut self.mailbox, &self.info)?;
            let walked = reply.walked_frames;
            if walked == 0 || walked > count - done {
                return Err(MigrationError::stream(format!(
                    "the agent walked {walked} of the {} pages asked for from {:#x}",
                    count - done,
                    gpa + done * PAGE_SIZE
                )));
            }
            done += walked;
            let records = self.mailbox.take_output();
            if done < count {
                call::post(&mut self.mailbox, &self.info, ask(done), &[])?;
            }
            self.forward_export(records, (reply.pages, reply.zero_pages), out, &mut carried)?;
            if done == count {
                return Ok(carried);
            }
        }
    }

    /// The agent seals the runs `(gpa, count)`, by one list when several.
    fn agent_runs(
        &mut self,
        round: u32,
        runs: &[(u64, u64)],
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        // The agent window is never migrated: its runs cost no call.
        let mut todo: Vec<(u64, u64)> = runs.iter().copied().filter(|&r| !in_agent_window(r)).collect();
        match todo[..] {
            [] => return Ok(Carried::empty(round)),
            [(gpa, count)] => return self.agent_pages(round, gpa, count, out),
            _ => {}
        }
        let mut carried = Carried::empty(round);
        // One EXPORT_LIST per output: the agent says how many entries it
        // finished and how far it got into the next; ask again from there,
        // at once, and send the output while the agent seals the rest.
        let mut list = Vec::with_capacity(todo.len() * 16);
        let mut ask = |sealer: &mut Self, todo: &[(u64, u64)]| {
            list.clear();
            for &(gpa, count) in todo {
                list.extend_from_slice(&gpa.to_le_bytes());
                list.extend_from_slice(&count.to_le_bytes());
            }
            let args = ExportListArgs {
                round,
                entries: todo.len() as u64,
            };
            call::post(&mut sealer.mailbox, &sealer.info, args, &list)
        };
        ask(self, &todo)?;
        loop {
            let reply = call::finish::<ExportListArgs>(&mut self.mailbox, &self.info)?;
            let (done, partial) = (reply.entries_done, reply.next_entry_frames);
            let progress_ok = match todo.get(done as usize) {
                Some(&(_, count)) => partial < count && (done > 0 || partial > 0),
                None => done as usize == todo.len() && partial == 0,
            };
            if !progress_ok {
                return Err(MigrationError::stream(format!(
                    "the agent walked {done} of {} entries and {partial} pages of the next",
                    todo.len()
                )));
            }
            todo.drain(..done as usize);
            if let Some(next) = todo.first_mut() {
                *next = (next.0 + partial * PAGE_SIZE, next.1 - partial);
            }
            let records = self.mailbox.take_output();
            if !todo.is_empty() {
                ask(self, &todo)?;
            }
            self.forward_export(records, (reply.pages, reply.zero_pages), out, &mut carried)?;
            if todo.is_empty() {
                break;
            }
        }
        Ok(carried)
    }
}

impl Sealer for ConfidentialSealer {
    fn version(&self) -> u16 {
        PROTOCOL_VERSION_CONFIDENTIAL
    }

    fn handshake(&mut self, link: &mut dyn Link) -> Result<(), MigrationError> {
        handshake::run(&mut self.mailbox, Role::Source, link, &self.info)
    }

    fn chunk_pages(&self) -> u64 {
        CHUNK_PAGES
    }

    fn seal_runs(
        &mut self,
        vm: &dyn SourceVm,
        round: u32,
        runs: &[(u64, u64)],
        out: &mut RecordSink<'_>,
    ) -> Result<Carried, MigrationError> {
        let shared = vm.shared_memory();
        if shared.is_empty() {
            return self.agent_runs(round, runs, out);
        }
        let (clear, sealed) = shared_pages::split(runs, &shared);
        let mut carried = self.agent_runs(round, &sealed, out)?;
        // The shared pages go in the clear, frame by frame, as plain ones do.
        carried.add(self.plain.seal_runs(vm, round, &clear, out)?);
        Ok(carried)
    }

    fn end_round(&mut self, round: u32, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        self.call(EndRoundArgs, &[])?;
        self.forward(round, out)?;
        self.epoch = round + 1;
        self.info.add(1, 0, self.epoch);
        Ok(())
    }

    fn seal_state(&mut self, state: Vec<u8>, out: &mut RecordSink<'_>) -> Result<(), MigrationError> {
        // The platform layer already put the paused vCPUs' states in the
        // agent's private VMSA area (Vm::save_state); the agent seals them
        // and the Final record. `state` is the host-owned device state.
        self.info.set_state("final");
        self.call(
            ExportFinalArgs {
                vcpus: self.workload_vcpus,
                verified: self.verified,
            },
            &[],
        )?;
        self.forward(self.epoch, out)?;
        self.info.add(u64::from(self.workload_vcpus) + 1, 0, self.epoch);
        Ok(out(&Message::State { state })?)
    }

    fn read_decision(&mut self, message: Message) -> Result<(), MigrationError> {
        match message {
            Message::Control { record } => {
                let reply = self.call(
                    ReadControlArgs {
                        len: record.len() as u64,
                    },
                    &record,
                )?;
                match reply {
                    ReadControlReply::Committed => {
                        self.info.set_state("committed");
                        Ok(())
                    }
                    ReadControlReply::Aborted { reason } => {
                        self.info.set_state("aborted");
                        Err(MigrationError::PeerAborted {
                            reason: format!("the destination's agent gave a valid abort token (reason code {reason})"),
                        })
                    }
                }
            }
            Message::Abort { reason } => Err(MigrationError::PeerAborted { reason }),
            other => Err(MigrationError::Unexpected {
                got: other.kind(),
                during: "waiting for the destination's sealed Commit",
            }),
        }
    }

    fn may_resume(&mut self) -> bool {
        // Only the agent knows whether a Final record may exist; if it
        // cannot say, the guest stays paused (it may run elsewhere).
        match self.mailbox.call(StatusArgs, &[]) {
            Ok(status) => {
                if !status.may_resume && status.state == SessionState::FinalSent {
                    self.info.set_state("undecided");
                }
                status.may_resume
            }
            Err(e) => {
                tracing::error!("cannot ask the migration agent whether the guest may resume: {e}");
                false
            }
        }
    }

    fn crypto_time(&self) -> Duration {
        self.info.crypto()
    }

    fn agent_costs(&mut self) -> Option<AgentCosts> {
        call::costs(&mut self.mailbox)
    }
}
