//! covm's end of the agent's mailbox: write a command, ring the doorbell,
//! wait for the agent, read its results and output
//! (`covm_guest_abi::mailbox` is the ABI).
//!
//! covm reads and writes only the mailbox pages here, never a private
//! guest page.

use crate::vm::confidential::runtime::{CvmRuntime, WaitError};
use covm_guest_abi::mailbox::words::{Args, Words, WordsError, WORDS};
use covm_guest_abi::mailbox::{self, command, header, status};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// Longest a command may take. Generous: a verified-mode commit hashes all
/// of guest memory, and the agent's vCPU shares the host's cores.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent refused it.
    #[error("the migration agent refused {command}: {text} (status {status})")]
    Refused {
        /// The command's name.
        command: &'static str,
        /// `mailbox::status`.
        status: u32,
        /// The agent's own words.
        text: String,
    },
    /// No answer.
    #[error("{command}: {source}")]
    Wait {
        /// The command's name.
        command: &'static str,
        /// Why.
        source: WaitError,
    },
    /// The mailbox could not be read or written.
    #[error("cannot access the agent's mailbox for {command}: {message}")]
    Mailbox {
        /// The command's name.
        command: &'static str,
        /// Why.
        message: String,
    },
    /// The agent's results are not what the command's reply can be.
    #[error("the migration agent's reply to {command} is malformed: {source}")]
    Malformed {
        /// The command's name.
        command: &'static str,
        /// What was wrong with the words.
        source: WordsError,
    },
    /// Input larger than the mailbox.
    #[error("{command}: {len} bytes of input exceed the mailbox's {max}")]
    TooLarge {
        /// The command's name.
        command: &'static str,
        /// Input bytes.
        len: usize,
        /// Room.
        max: u64,
    },
}

/// The name of a command, for messages.
pub fn command_name(command: u32) -> &'static str {
    match command {
        command::BEGIN => "Begin",
        command::HANDSHAKE => "Handshake",
        command::EXPORT_PAGES => "ExportPages",
        command::END_ROUND => "EndRound",
        command::EXPORT_FINAL => "ExportFinal",
        command::READ_CONTROL => "ReadControl",
        command::IMPORT => "Import",
        command::COMMIT => "Commit",
        command::MINT_ABORT => "MintAbort",
        command::STATUS => "Status",
        command::EXPORT_LIST => "ExportList",
        command::COSTS => "Costs",
        _ => "an unknown command",
    }
}

/// The reply to `A`'s command in the result words the agent wrote.
fn read_reply<A: Args>(results: &[u64; WORDS]) -> Result<A::Reply, AgentError> {
    A::Reply::from_words(results).map_err(|source| AgentError::Malformed {
        command: command_name(A::COMMAND),
        source,
    })
}

/// A command posted and not yet collected.
struct Pending {
    command: u32,
    input: usize,
    posted: Instant,
}

/// covm's handle on one VM's agent.
pub struct AgentMailbox {
    runtime: Arc<CvmRuntime>,
    seq: u64,
    output: Vec<u8>,
    /// The command posted and not yet collected.
    pending: Option<Pending>,
    /// Time covm waited for answers (a pipelined command's work while
    /// covm sends is not in it).
    waited: Duration,
    /// Time copying input in and output out.
    copied: Duration,
}

fn at(offset: usize) -> GuestAddress {
    GuestAddress(mailbox::HEADER + offset as u64)
}

impl AgentMailbox {
    /// The mailbox of the VM whose runtime is `runtime`.
    pub fn new(runtime: Arc<CvmRuntime>) -> Self {
        AgentMailbox {
            runtime,
            seq: 0,
            output: Vec::new(),
            pending: None,
            waited: Duration::ZERO,
            copied: Duration::ZERO,
        }
    }

    /// The output of the last command.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Takes the output of the last command (the next one allocates anew).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Gives a buffer back for the next output (saves an allocation).
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        buffer.clear();
        if buffer.capacity() > self.output.capacity() {
            self.output = buffer;
        }
    }

    /// Runs the command `args` are for, with `input` (copied to
    /// `TO_AGENT`); its reply (its output is in [`AgentMailbox::output`]).
    /// Every command's time is logged at debug level (`covm -vv`).
    pub fn call<A: Args>(&mut self, args: A, input: &[u8]) -> Result<A::Reply, AgentError> {
        self.post(args, input)?;
        self.finish::<A>()
    }

    /// Posts the command `args` are for, with `input`, and returns while
    /// the agent works: covm may send the last output meanwhile.
    /// [`AgentMailbox::finish`] collects the reply. A command still
    /// pending is waited for first (its reply and output dropped), so an
    /// error path can never post over a command in flight.
    pub fn post<A: Args>(&mut self, args: A, input: &[u8]) -> Result<(), AgentError> {
        if let Some(pending) = self.pending.take() {
            if let Err(e) = self.collect(pending.command) {
                tracing::debug!("a pipelined agent command was dropped: {e}");
            }
        }
        self.write_command(A::COMMAND, &args.to_words(), input)?;
        self.pending = Some(Pending {
            command: A::COMMAND,
            input: input.len(),
            posted: Instant::now(),
        });
        Ok(())
    }

    /// The command posted and not yet collected, if any.
    pub fn pending(&self) -> Option<u32> {
        self.pending.as_ref().map(|p| p.command)
    }

    /// Waits for the command [`AgentMailbox::post`] posted; its reply.
    pub fn finish<A: Args>(&mut self) -> Result<A::Reply, AgentError> {
        let pending = match self.pending.take() {
            Some(p) if p.command == A::COMMAND => p,
            other => {
                self.pending = other;
                return Err(AgentError::Mailbox {
                    command: command_name(A::COMMAND),
                    message: "no such command is pending".into(),
                });
            }
        };
        let reply = self.collect(A::COMMAND).and_then(|results| read_reply::<A>(&results));
        tracing::debug!(
            command = command_name(A::COMMAND),
            input = pending.input,
            output = self.output.len(),
            us = pending.posted.elapsed().as_micros() as u64,
            "agent command"
        );
        reply
    }

    fn io_error(command: u32) -> impl Fn(vm_memory::GuestMemoryError) -> AgentError {
        move |e| AgentError::Mailbox {
            command: command_name(command),
            message: e.to_string(),
        }
    }

    /// Writes one command into the mailbox and rings the doorbell.
    fn write_command(&mut self, command: u32, args: &[u64; WORDS], input: &[u8]) -> Result<(), AgentError> {
        let name = command_name(command);
        if input.len() as u64 > mailbox::TO_AGENT_SIZE {
            return Err(AgentError::TooLarge {
                command: name,
                len: input.len(),
                max: mailbox::TO_AGENT_SIZE,
            });
        }
        let memory = self.runtime.memory();
        let io = Self::io_error(command);
        self.seq = self.runtime.next_seq();
        let started = Instant::now();
        memory
            .write_slice(input, GuestAddress(mailbox::TO_AGENT))
            .map_err(&io)?;
        self.copied += started.elapsed();
        for (i, word) in args.iter().enumerate() {
            memory.write_obj(*word, at(header::ARGS + 8 * i)).map_err(&io)?;
        }
        memory.write_obj(command, at(header::COMMAND)).map_err(&io)?;
        memory.write_obj(self.seq, at(header::COMMAND_SEQ)).map_err(&io)?;
        self.runtime.post(self.seq);
        Ok(())
    }

    /// Waits for the posted command, reads the result words and the output.
    fn collect(&mut self, command: u32) -> Result<[u64; WORDS], AgentError> {
        let name = command_name(command);
        let waiting = Instant::now();
        let answered = self.runtime.wait_done(self.seq, COMMAND_TIMEOUT);
        self.waited += waiting.elapsed();
        answered.map_err(|source| AgentError::Wait { command: name, source })?;
        let memory = self.runtime.memory();
        let io = Self::io_error(command);
        let code: u32 = memory.read_obj(at(header::STATUS)).map_err(&io)?;
        if code != status::OK {
            let len: u32 = memory.read_obj(at(header::ERROR_LEN)).map_err(&io)?;
            let mut text = vec![0u8; (len as usize).min(header::ERROR_TEXT_MAX)];
            memory.read_slice(&mut text, at(header::ERROR_TEXT)).map_err(&io)?;
            return Err(AgentError::Refused {
                command: name,
                status: code,
                text: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        let mut results = [0u64; WORDS];
        for (i, result) in results.iter_mut().enumerate() {
            *result = memory.read_obj(at(header::RESULTS + 8 * i)).map_err(&io)?;
        }
        let out_len: u64 = memory.read_obj(at(header::OUT_LEN)).map_err(&io)?;
        if out_len > mailbox::FROM_AGENT_SIZE {
            return Err(AgentError::Mailbox {
                command: name,
                message: format!("the agent claims {out_len} bytes of output"),
            });
        }
        let started = Instant::now();
        self.output.resize(out_len as usize, 0);
        memory
            .read_slice(&mut self.output, GuestAddress(mailbox::FROM_AGENT))
            .map_err(&io)?;
        self.copied += started.elapsed();
        Ok(results)
    }

    /// Time waiting on the agent and time copying to and from the
    /// mailbox, over every command so far.
    pub fn host_times(&self) -> (Duration, Duration) {
        (self.waited, self.copied)
    }

    /// The record stream's lanes: one per agent vCPU, at both ends (the
    /// destination is built from the source's configuration).
    pub fn lanes(&self) -> u32 {
        self.runtime.agent_vcpus()
    }

    /// The VM's guest memory (a handle; for the destination's prefault
    /// helper, which touches no byte of it).
    pub fn guest_memory(&self) -> crate::vm::memory::GuestMemory {
        self.runtime.memory().clone()
    }

    /// The guest's time-stamp counter rate, to convert the agent's ticks.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.runtime.tsc_khz()
    }

    /// The peer identity block after a completed handshake.
    pub fn peer(&self) -> Result<PeerInfo, AgentError> {
        let mut block = [0u8; 64];
        self.runtime
            .memory()
            .read_slice(&mut block, at(header::PEER))
            .map_err(|e| AgentError::Mailbox {
                command: "Handshake",
                message: e.to_string(),
            })?;
        use covm_guest_abi::mailbox::peer;
        let u16_at = |o: usize| u16::from_le_bytes([block[o], block[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(block[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(block[o..o + 8].try_into().expect("8 bytes"));
        let mut measurement = [0u8; 48];
        measurement.copy_from_slice(&block[peer::MEASUREMENT..peer::MEASUREMENT + 48]);
        Ok(PeerInfo {
            platform: u16_at(peer::PLATFORM),
            policy_version: u32_at(peer::POLICY_VERSION),
            tcb: u64_at(peer::TCB),
            measurement,
        })
    }
}

/// The attested peer, as the agent reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// Platform code (protocol §1).
    pub platform: u16,
    /// Its policy's version.
    pub policy_version: u32,
    /// Its reported TCB.
    pub tcb: u64,
    /// Its launch measurement.
    pub measurement: [u8; 48],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors and the debug log name every command of the ABI.
    #[test]
    fn every_command_has_a_name() {
        let names: Vec<_> = (command::BEGIN..=command::COSTS).map(command_name).collect();
        assert!(!names.contains(&"an unknown command"), "{names:?}");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(command_name(command::COSTS + 1), "an unknown command");
    }

    /// Result words no agent writes are refused with the command's name
    /// and what was wrong; valid ones are the reply.
    #[test]
    fn replies_are_read_through_their_types() {
        use covm_guest_abi::mailbox::words::{ImportArgs, ReadControlArgs, ReadControlReply, SessionState, StatusArgs};
        let status = read_reply::<StatusArgs>(&[1, 3, 0, 2, 10, 20, 0, 0]).unwrap();
        assert_eq!(
            (status.state, status.may_resume, status.epoch),
            (SessionState::FinalSent, false, 2)
        );
        let e = read_reply::<StatusArgs>(&[1, 9, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the migration agent's reply to Status is malformed: state 9 (0 to 7)"
        );
        assert_eq!(
            read_reply::<ReadControlArgs>(&[2, 4, 0, 0, 0, 0, 0, 0]).unwrap(),
            ReadControlReply::Aborted { reason: 4 }
        );
        let e = read_reply::<ReadControlArgs>(&[7, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(
            e.to_string().contains("reply to ReadControl is malformed: outcome 7"),
            "{e}"
        );
        let e = read_reply::<ImportArgs>(&[1, 0, 2, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().ends_with("complete is 0 or 1, not 2"), "{e}");
    }
}
