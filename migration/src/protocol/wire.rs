//! One end of a connection: frames out with their sequence, frames in
//! checked against theirs, small frames batched into few writes.

use super::frame::{read_frame, write_frame, HEADER_LEN};
use super::{Message, ProtocolError};
use std::io::{BufReader, Read, Write};

/// Small frames are gathered up to this many bytes before a write; larger
/// payloads go straight to the stream.
const BATCH: usize = 64 * 1024;

/// A framed connection over a byte stream.
pub struct Wire<S: Read + Write> {
    reader: BufReader<S>,
    pending: Vec<u8>,
    send_sequence: u64,
    receive_sequence: u64,
    bytes_sent: u64,
    bytes_received: u64,
}

impl<S: Read + Write> Wire<S> {
    /// Starts both directions at sequence 0.
    pub fn new(stream: S) -> Self {
        Wire {
            reader: BufReader::with_capacity(BATCH, stream),
            pending: Vec::with_capacity(BATCH + HEADER_LEN + 64),
            send_sequence: 0,
            receive_sequence: 0,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    /// Queues `message` as the next frame. It reaches the peer at the next
    /// [`Wire::flush`] at the latest.
    pub fn send(&mut self, message: &Message) -> Result<(), ProtocolError> {
        let len = message.payload_len();
        if len >= BATCH {
            self.flush()?;
            write_frame(self.reader.get_mut(), self.send_sequence, message)?;
        } else {
            write_frame(&mut self.pending, self.send_sequence, message)?;
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
        let stream = self.reader.get_mut();
        if !self.pending.is_empty() {
            let result = stream.write_all(&self.pending);
            self.pending.clear();
            result.map_err(|e| ProtocolError::io("writing", e))?;
        }
        stream.flush().map_err(|e| ProtocolError::io("writing", e))
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
        let (message, len) = read_frame(&mut self.reader, self.receive_sequence)?;
        self.receive_sequence += 1;
        self.bytes_received += (HEADER_LEN + len) as u64;
        Ok(message)
    }

    /// Frame bytes sent so far (headers included).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Frame bytes received so far (headers included).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The underlying stream (to change its timeouts).
    pub fn stream(&self) -> &S {
        self.reader.get_ref()
    }
}
