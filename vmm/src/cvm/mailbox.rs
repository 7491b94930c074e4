//! covm's end of the agent's mailbox: write a command, ring the doorbell,
//! wait for the agent, read its results and output
//! (`covm_guest_abi::mailbox` is the ABI).
//!
//! covm reads and writes only the mailbox pages here, never a private
//! guest page.

use super::runtime::{CvmRuntime, WaitError};
use covm_guest_abi::mailbox::{self, command, header, status};
use std::sync::Arc;
use std::time::Duration;
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

/// What a completed command returned (its output is in [`AgentMailbox::output`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reply {
    /// `results[0..8]`.
    pub results: [u64; 8],
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
        _ => "an unknown command",
    }
}

/// covm's handle on one VM's agent.
pub struct AgentMailbox {
    runtime: Arc<CvmRuntime>,
    seq: u64,
    output: Vec<u8>,
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

    /// Runs `command` with `args` and `input` (copied to `TO_AGENT`).
    /// Every command's time is logged at debug level (`covm -vv`).
    pub fn call(&mut self, command: u32, args: &[u64], input: &[u8]) -> Result<Reply, AgentError> {
        let started = std::time::Instant::now();
        let reply = self.exchange(command, args, input);
        tracing::debug!(
            command = command_name(command),
            input = input.len(),
            output = self.output.len(),
            us = started.elapsed().as_micros() as u64,
            "agent command"
        );
        reply
    }

    /// One command through the mailbox: writes it, waits for the agent,
    /// reads the reply and the output.
    fn exchange(&mut self, command: u32, args: &[u64], input: &[u8]) -> Result<Reply, AgentError> {
        let name = command_name(command);
        if input.len() as u64 > mailbox::TO_AGENT_SIZE {
            return Err(AgentError::TooLarge {
                command: name,
                len: input.len(),
                max: mailbox::TO_AGENT_SIZE,
            });
        }
        let memory = self.runtime.memory();
        let io = |e: vm_memory::GuestMemoryError| AgentError::Mailbox {
            command: name,
            message: e.to_string(),
        };
        self.seq = self.runtime.next_seq();
        let mut words = [0u64; 8];
        words[..args.len()].copy_from_slice(args);
        memory.write_slice(input, GuestAddress(mailbox::TO_AGENT)).map_err(io)?;
        for (i, word) in words.iter().enumerate() {
            memory.write_obj(*word, at(header::ARGS + 8 * i)).map_err(io)?;
        }
        memory.write_obj(command, at(header::COMMAND)).map_err(io)?;
        memory.write_obj(self.seq, at(header::COMMAND_SEQ)).map_err(io)?;
        self.runtime.post(self.seq);
        self.runtime
            .wait_done(self.seq, COMMAND_TIMEOUT)
            .map_err(|source| AgentError::Wait { command: name, source })?;
        let code: u32 = memory.read_obj(at(header::STATUS)).map_err(io)?;
        if code != status::OK {
            let len: u32 = memory.read_obj(at(header::ERROR_LEN)).map_err(io)?;
            let mut text = vec![0u8; (len as usize).min(header::ERROR_TEXT_MAX)];
            memory.read_slice(&mut text, at(header::ERROR_TEXT)).map_err(io)?;
            return Err(AgentError::Refused {
                command: name,
                status: code,
                text: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        let mut reply = Reply::default();
        for (i, result) in reply.results.iter_mut().enumerate() {
            *result = memory.read_obj(at(header::RESULTS + 8 * i)).map_err(io)?;
        }
        let out_len: u64 = memory.read_obj(at(header::OUT_LEN)).map_err(io)?;
        if out_len > mailbox::FROM_AGENT_SIZE {
            return Err(AgentError::Mailbox {
                command: name,
                message: format!("the agent claims {out_len} bytes of output"),
            });
        }
        self.output.resize(out_len as usize, 0);
        memory
            .read_slice(&mut self.output, GuestAddress(mailbox::FROM_AGENT))
            .map_err(io)?;
        Ok(reply)
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
        let names: Vec<_> = (command::BEGIN..=command::EXPORT_LIST).map(command_name).collect();
        assert!(!names.contains(&"an unknown command"), "{names:?}");
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(command_name(command::EXPORT_LIST + 1), "an unknown command");
    }
}
