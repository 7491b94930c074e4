//! A man in the middle between two covm processes' migration sockets: it
//! records every byte in both directions and, as an attacker on the host
//! would, can drop, replay, reorder, alter or cut frames.
//!
//! It works on covm's migration frames (24-byte header, see
//! `covm_migration::protocol`): frames pass through a tamper function and
//! are renumbered on the way out, so a tampered stream stays well-formed
//! at the framing layer and only the agents' checks can catch it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Frame header bytes.
pub const HEADER: usize = 24;
/// Message kinds (covm_migration::protocol::MessageKind): `Handshake`.
pub const KIND_HANDSHAKE: u16 = 11;
/// `Sealed`.
pub const KIND_SEALED: u16 = 12;
/// `Control`.
pub const KIND_CONTROL: u16 = 13;

/// One frame: its kind and payload (header rebuilt on the way out).
#[derive(Clone, Debug)]
pub struct Frame {
    /// Header bytes 0..6 (magic, version), kept as they came.
    pub prefix: [u8; 6],
    /// Message kind.
    pub kind: u16,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    fn encode(&self, sequence: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// What to do with a frame: the frames to send instead (empty: drop it),
/// or cut the connection.
pub enum Verdict {
    /// Send these.
    Send(Vec<Frame>),
    /// Close both directions now.
    Cut,
}

/// Decides each frame's fate; called in order, per direction.
pub type Tamper = Box<dyn FnMut(Frame) -> Verdict + Send>;

/// Passes every frame unchanged.
pub fn pass() -> Tamper {
    Box::new(|f| Verdict::Send(vec![f]))
}

/// A running proxy.
pub struct Proxy {
    /// Where the source connects (`unix:` this path).
    pub path: PathBuf,
    /// Every byte the source sent (as received).
    pub to_destination: Arc<Mutex<Vec<u8>>>,
    /// Every byte the destination sent (as received).
    pub to_source: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens at `path`; the first connection is forwarded to the UNIX
    /// socket `destination`, S→D frames through `forward`, D→S frames
    /// through `backward`.
    pub fn start(path: &Path, destination: &Path, forward: Tamper, backward: Tamper) -> Proxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the proxy socket");
        let to_destination = Arc::new(Mutex::new(Vec::new()));
        let to_source = Arc::new(Mutex::new(Vec::new()));
        let (td, ts) = (to_destination.clone(), to_source.clone());
        let destination = destination.to_path_buf();
        let thread = std::thread::spawn(move || {
            let (source, _) = listener.accept().expect("accept the source");
            let dest = UnixStream::connect(&destination).expect("connect to the destination");
            let (s2, d2) = (source.try_clone().unwrap(), dest.try_clone().unwrap());
            let back = std::thread::spawn(move || pump(d2, s2, ts, backward));
            pump(source, dest, td, forward);
            let _ = back.join();
        });
        Proxy {
            path: path.to_path_buf(),
            to_destination,
            to_source,
            thread: Some(thread),
        }
    }

    /// Waits for both directions to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A frame header's message kind and payload length.
fn kind_and_len(header: &[u8]) -> (u16, usize) {
    let kind = u16::from_le_bytes([header[6], header[7]]);
    (kind, u32::from_le_bytes(header[12..16].try_into().unwrap()) as usize)
}

/// The frames recorded in `bytes` (one direction's stream), as their kinds
/// and payloads; a last frame cut short keeps what arrived of its payload.
pub fn frames(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let (kind, len) = kind_and_len(&bytes[at..]);
        let start = at + HEADER;
        frames.push((kind, &bytes[start..(start + len).min(bytes.len())]));
        at = start + len;
    }
    frames
}

fn read_exact_or_end(from: &mut UnixStream, buf: &mut [u8]) -> bool {
    from.read_exact(buf).is_ok()
}

/// Copies frames `from` → `to`, recording the raw bytes and renumbering.
fn pump(mut from: UnixStream, mut to: UnixStream, record: Arc<Mutex<Vec<u8>>>, mut tamper: Tamper) {
    let mut sequence = 0u64;
    let mut out = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        if !read_exact_or_end(&mut from, &mut header) {
            break;
        }
        let (kind, len) = kind_and_len(&header);
        let mut payload = vec![0u8; len];
        if !read_exact_or_end(&mut from, &mut payload) {
            break;
        }
        {
            let mut r = record.lock().unwrap();
            r.extend_from_slice(&header);
            r.extend_from_slice(&payload);
        }
        let frame = Frame {
            prefix: header[..6].try_into().unwrap(),
            kind,
            payload,
        };
        match tamper(frame) {
            Verdict::Send(frames) => {
                out.clear();
                for f in frames {
                    f.encode(sequence, &mut out);
                    sequence += 1;
                }
                if to.write_all(&out).is_err() {
                    break;
                }
            }
            Verdict::Cut => break,
        }
    }
    // Half-close: the other direction goes on, so an answer already on
    // its way (the destination's abort token) still arrives.
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

/// The agent records inside a `Sealed` payload (after its round u32): each
/// record's 32-byte header says its length (protocol §7).
pub fn sealed_records(payload: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = 4;
    while at + 32 <= payload.len() {
        let len = covm_agent_protocol::record::record_len(&payload[at..]).expect("a record header");
        spans.push((at, at + len));
        at += len;
    }
    spans
}
