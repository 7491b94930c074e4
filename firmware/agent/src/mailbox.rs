//! The mailbox's bytes: reading a posted command, writing the answer, and
//! moving data between the shared buffers and private memory.
//!
//! The host may change shared bytes at any time, so every field is read
//! once, into private memory, and decisions are made on that copy.

use crate::env::GuestMemory;
use crate::reply::{fail, Fail, Reply};
use covm_agent_protocol::PeerIdentity;
use covm_guest_abi::mailbox::words::WORDS;
use covm_guest_abi::mailbox::{header, peer, status, FROM_AGENT, FROM_AGENT_SIZE, HEADER, TO_AGENT, TO_AGENT_SIZE};

fn at(offset: usize) -> u64 {
    HEADER + offset as u64
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

/// A posted command, as read (once) from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    /// `command_seq`.
    pub seq: u64,
    /// The command.
    pub command: u32,
    /// Its argument words (`covm_guest_abi::mailbox::words`).
    pub args: [u64; WORDS],
}

/// Reads the posted command: sequence, command and arguments, in one copy.
pub fn read_posted(memory: &impl GuestMemory) -> Posted {
    const FIRST: usize = header::COMMAND_SEQ;
    const END: usize = header::ARGS + 8 * WORDS;
    let mut raw = [0u8; END - FIRST];
    memory.read_window(at(FIRST), &mut raw);
    let mut args = [0u64; WORDS];
    for (i, arg) in args.iter_mut().enumerate() {
        *arg = u64_at(&raw, header::ARGS - FIRST + 8 * i);
    }
    Posted {
        seq: u64_at(&raw, 0),
        command: u32_at(&raw, header::COMMAND - FIRST),
        args,
    }
}

/// Writes `reply` for command `seq`: status, error text, output length and
/// results, then, last, `done_seq`.
pub fn write_reply(memory: &impl GuestMemory, seq: u64, reply: &Reply) {
    const FIRST: usize = header::STATUS;
    const END: usize = header::RESULTS + 8 * WORDS;
    let text = reply.error.as_bytes();
    memory.write_window(at(header::ERROR_TEXT), text);
    let mut raw = [0u8; END - FIRST];
    raw[..4].copy_from_slice(&reply.status.to_le_bytes());
    raw[header::ERROR_LEN - FIRST..][..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    raw[header::OUT_LEN - FIRST..][..8].copy_from_slice(&reply.out_len.to_le_bytes());
    for (i, result) in reply.results.iter().enumerate() {
        raw[header::RESULTS - FIRST + 8 * i..][..8].copy_from_slice(&result.to_le_bytes());
    }
    memory.write_window(at(FIRST), &raw);
    memory.write_window(at(header::DONE_SEQ), &seq.to_le_bytes());
}

/// Announces the agent: magic and ABI version.
pub fn announce(memory: &impl GuestMemory) {
    use covm_guest_abi::mailbox::{ABI_VERSION, MAGIC};
    memory.write_window(at(header::ABI_VERSION), &ABI_VERSION.to_le_bytes());
    memory.write_window(at(header::MAGIC), &MAGIC.to_le_bytes());
}

/// Writes the peer identity block (or zeroes it with `None`).
pub fn write_peer(memory: &impl GuestMemory, identity: Option<&PeerIdentity>) {
    let mut block = [0u8; 64];
    if let Some(p) = identity {
        block[peer::PLATFORM..][..2].copy_from_slice(&p.platform.code().to_le_bytes());
        block[peer::POLICY_VERSION..][..4].copy_from_slice(&p.policy_version.to_le_bytes());
        block[peer::TCB..][..8].copy_from_slice(&p.reported_tcb.0.to_le_bytes());
        block[peer::MEASUREMENT..][..48].copy_from_slice(&p.measurement);
    }
    memory.write_window(at(header::PEER), &block);
}

/// Checks an input length argument against `TO_AGENT`.
pub(crate) fn input_len(len: u64, what: &str) -> Result<usize, Fail> {
    if len > TO_AGENT_SIZE {
        return Err(fail!(
            status::BAD_COMMAND,
            "{what}: {len} bytes of input, the mailbox holds {TO_AGENT_SIZE}"
        ));
    }
    Ok(len as usize)
}

/// Copies `out.len()` bytes of `TO_AGENT` from `offset` into private memory.
pub(crate) fn read_input(memory: &impl GuestMemory, offset: usize, out: &mut [u8]) {
    memory.read_window(TO_AGENT + offset as u64, out);
}

/// The agent's output in `FROM_AGENT`, appended piece by piece: all of
/// it, or one lane's part ([`Output::part`]).
pub(crate) struct Output {
    /// Where this output starts, as an offset into `FROM_AGENT`.
    base: usize,
    /// Bytes it may hold.
    cap: usize,
    len: usize,
}

impl Output {
    pub fn new() -> Self {
        Output::part(0, FROM_AGENT_SIZE as usize)
    }

    /// `cap` bytes of `FROM_AGENT` from offset `base` (within it).
    pub fn part(base: usize, cap: usize) -> Self {
        debug_assert!(base + cap <= FROM_AGENT_SIZE as usize);
        Output { base, cap, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Appends `bytes` (copied out of private memory).
    pub fn put(&mut self, memory: &impl GuestMemory, bytes: &[u8]) -> Result<(), Fail> {
        if bytes.len() > self.room() {
            return Err(fail!(
                status::NO_ROOM,
                "{} more bytes of output do not fit the mailbox's {} left",
                bytes.len(),
                self.room()
            ));
        }
        memory.write_window(FROM_AGENT + (self.base + self.len) as u64, bytes);
        self.len += bytes.len();
        Ok(())
    }

    /// Appends a handshake message: `u32` length, then the message.
    pub fn put_message(&mut self, memory: &impl GuestMemory, message: &[u8]) -> Result<(), Fail> {
        if 4 + message.len() > self.room() {
            return Err(fail!(status::NO_ROOM, "a handshake message does not fit the mailbox"));
        }
        self.put(memory, &(message.len() as u32).to_le_bytes())?;
        self.put(memory, message)
    }
}
