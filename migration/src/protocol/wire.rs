//! One end of a connection: frames out with their sequence and the
//! connection's version, frames in checked against both, small frames
//! batched into few writes.

use super::frame::{read_frame_in, write_frame_in, HEADER_LEN};
use super::{Message, ProtocolError, PROTOCOL_VERSION, SUPPORTED_VERSIONS};
use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

/// Small frames are gathered up to this many bytes before a write; larger
/// payloads go straight to the stream.
const BATCH: usize = 64 * 1024;

/// A framed connection over a byte stream.
///
/// Its version (every frame's, both directions) is learnt from the first
/// frame it reads (any version this covm speaks), or set by the first
/// frame it sends: a `Hello` naming a version this covm speaks sets that
/// version, anything else (a `Hello` of an unknown version included)
/// version 1.
pub struct Wire<S: Read + Write> {
    reader: BufReader<S>,
    version: Option<u16>,
    pending: Vec<u8>,
    send_sequence: u64,
    receive_sequence: u64,
    bytes_sent: u64,
    bytes_received: u64,
    /// Time in the stream's reads and writes (framing included).
    io_time: Duration,
}

impl<S: Read + Write> Wire<S> {
    /// Starts both directions at sequence 0, the version not known yet.
    pub fn new(stream: S) -> Self {
        Wire {
            reader: BufReader::with_capacity(BATCH, stream),
            version: None,
            pending: Vec::with_capacity(BATCH + HEADER_LEN + 64),
            send_sequence: 0,
            receive_sequence: 0,
            bytes_sent: 0,
            bytes_received: 0,
            io_time: Duration::ZERO,
        }
    }

    /// Queues `message` as the next frame. It reaches the peer at the next
    /// [`Wire::flush`] at the latest.
    pub fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        let version = *self.version.get_or_insert(match message {
            Message::Hello { version, .. } if SUPPORTED_VERSIONS.contains(version) => *version,
            _ => PROTOCOL_VERSION,
        });
        let len = message.payload_len();
        if len >= BATCH {
            self.flush()?;
            let started = Instant::now();
            let written = write_frame_in(self.reader.get_mut(), version, self.send_sequence, message);
            self.io_time += started.elapsed();
            written?;
        } else {
            write_frame_in(&mut self.pending, version, self.send_sequence, message)?;
            if self.pending.len() >= BATCH {
                self.flush()?;
            }
        }
        self.send_sequence += 1;
        self.bytes_sent += (HEADER_LEN + len) as u64;
        Ok(())
    }

    /// Writes queued frames and flushes the stream.
    pub fn flush(&mut self) -> Result<(), ProtocolError> {
        let started = Instant::now();
        let stream = self.reader.get_mut();
        let mut result = Ok(());
        if !self.pending.is_empty() {
            result = stream.write_all(&self.pending);
            self.pending.clear();
        }
        let result = result.and_then(|()| stream.flush());
        self.io_time += started.elapsed();
        result.map_err(|e| ProtocolError::io("writing", e))
    }

    /// Sends `message` and flushes.
    pub fn send_now(&mut self, message: &Message) -> Result<(), ProtocolError> {
        self.send(message)?;
        self.flush()
    }

    /// Reads the next frame (queued frames are flushed first, so a request
    /// is never left waiting in our buffer while we wait for its answer).
    pub fn receive(&mut self) -> Result<Message, ProtocolError> {
        self.flush()?;
        let started = Instant::now();
        let read = read_frame_in(&mut self.reader, self.version, self.receive_sequence);
        self.io_time += started.elapsed();
        let (header, message) = read?;
        self.version = Some(header.version);
        self.receive_sequence += 1;
        self.bytes_received += (HEADER_LEN + header.len as usize) as u64;
        Ok(message)
    }

    /// The connection's version, once a frame was read or sent.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Frame bytes sent so far (headers included).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Frame bytes received so far (headers included).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Time spent in the stream's reads and writes so far: blocked on the
    /// peer or the network, framing included.
    pub fn io_time(&self) -> Duration {
        self.io_time
    }

    /// The underlying stream (to change its timeouts).
    pub fn stream(&self) -> &S {
        self.reader.get_ref()
    }
}
