//! One vsock connection between a guest port and a host UNIX stream, with
//! virtio-vsock's credit accounting (virtio 1.2 §5.10.6.3): neither side
//! sends more than the other has said it can buffer.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// The receive buffer covm offers the guest per connection: what the
/// guest may send before covm has written it to the host stream.
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A host client asked (`CONNECT`); the guest has not answered by
    /// `deadline`.
    Connecting {
        /// When the request is given up.
        deadline: Instant,
    },
    /// Data flows.
    Established,
    /// covm told the guest the host side ended; the guest's reset is due
    /// by `deadline`.
    Closing {
        /// When covm resets it anyway.
        deadline: Instant,
    },
}

/// A connection.
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Its epoll token.
    pub token: u64,
    /// Where it stands.
    pub phase: Phase,
    /// The guest's receive buffer and what it has consumed of it, from
    /// its latest header.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes received from the guest.
    recv_cnt: u32,
    /// Bytes of those written to the host stream (the `fwd_cnt` covm tells).
    pub fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    told_fwd_cnt: u32,
    /// The guest's bytes the host stream has not taken yet.
    to_host: Vec<u8>,
    /// Host bytes read before the connection was established (sent after
    /// a `CONNECT` line in the same write).
    pub early: Vec<u8>,
    /// The host stream may have data (or an end) covm has not read.
    pub readable: bool,
    /// A credit request was sent and not answered yet.
    pub credit_requested: bool,
    /// The guest will receive nothing more.
    pub guest_stopped_receiving: bool,
    /// The guest will send nothing more (the host stream's write side is
    /// shut once `to_host` is written).
    pub guest_stopped_sending: bool,
    /// Registered with epoll, and for what.
    pub registered: Option<u32>,
}

impl Connection {
    /// A connection on `stream`, in `phase`.
    pub fn new(stream: UnixStream, token: u64, phase: Phase) -> Self {
        Connection {
            stream,
            token,
            phase,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            recv_cnt: 0,
            fwd_cnt: 0,
            told_fwd_cnt: 0,
            to_host: Vec::new(),
            early: Vec::new(),
            readable: false,
            credit_requested: false,
            guest_stopped_receiving: false,
            guest_stopped_sending: false,
            registered: None,
        }
    }

    /// Takes the guest's credit from a header it sent.
    pub fn peer_credit_from(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `n` bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Records that a header telling `fwd_cnt` went to the guest.
    pub fn told_guest(&mut self) {
        self.told_fwd_cnt = self.fwd_cnt;
    }

    /// Whether the guest should hear of freed buffer space now: half of
    /// what it was offered has been forwarded since it last heard.
    pub fn owes_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.told_fwd_cnt) >= BUF_ALLOC / 2
    }

    /// Takes `data` from the guest for the host stream. Fails if the guest
    /// sent more than the credit it was given (it broke the protocol).
    pub fn from_guest(&mut self, data: &[u8]) -> Result<(), String> {
        let buffered = self.recv_cnt.wrapping_sub(self.fwd_cnt);
        if u64::from(buffered) + data.len() as u64 > u64::from(BUF_ALLOC) {
            return Err(format!(
                "the guest sent {} bytes with {} of its {BUF_ALLOC}-byte credit left",
                data.len(),
                BUF_ALLOC - buffered.min(BUF_ALLOC)
            ));
        }
        self.recv_cnt = self.recv_cnt.wrapping_add(data.len() as u32);
        self.to_host.extend_from_slice(data);
        Ok(())
    }

    /// Writes to the host stream what it takes without blocking. Returns
    /// whether everything was written.
    pub fn flush(&mut self) -> std::io::Result<bool> {
        let mut written = 0;
        while written < self.to_host.len() {
            match self.stream.write(&self.to_host[written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.to_host.drain(..written);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        if self.to_host.is_empty() && self.guest_stopped_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(self.to_host.is_empty())
    }

    /// Whether bytes wait for the host stream.
    pub fn has_unwritten(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// The epoll interest it needs: input while established and the host
    /// side may be read, output while bytes wait for it.
    pub fn interest(&self) -> u32 {
        let mut events = 0;
        if self.phase == Phase::Established && !self.readable && !self.guest_stopped_receiving {
            events |= libc::EPOLLIN as u32;
        }
        if self.has_unwritten() {
            events |= libc::EPOLLOUT as u32;
        }
        events
    }

    /// Reads up to `max` host bytes for the guest into `out`: the bytes
    /// read early first. `Ok(None)` when the stream has nothing now (it is
    /// no longer readable), `Ok(Some(0))` at its end.
    pub fn read_for_guest(&mut self, max: usize, out: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
        out.clear();
        if !self.early.is_empty() {
            let n = self.early.len().min(max);
            out.extend(self.early.drain(..n));
            return Ok(Some(n));
        }
        out.resize(max, 0);
        loop {
            match self.stream.read(out) {
                Ok(n) => {
                    out.truncate(n);
                    if n == 0 {
                        self.readable = false;
                    }
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    out.clear();
                    self.readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    out.clear();
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_what_the_peer_offered_less_what_is_in_flight() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, 9, Phase::Established);
        assert_eq!(c.peer_credit(), 0, "no credit before the guest says");
        c.peer_credit_from(4096, 0);
        c.sent_to_guest(4000);
        assert_eq!(c.peer_credit(), 96);
        c.sent_to_guest(96);
        assert_eq!(c.peer_credit(), 0);
        c.peer_credit_from(4096, 1000);
        assert_eq!(c.peer_credit(), 1000);
        // Counters wrap as the protocol's u32s do.
        let mut w = Connection::new(UnixStream::pair().unwrap().0, 1, Phase::Established);
        w.rx_cnt = u32::MAX - 10;
        w.peer_credit_from(100, u32::MAX - 10);
        w.sent_to_guest(50);
        assert_eq!(w.peer_credit(), 50);
    }

    #[test]
    fn a_guest_beyond_its_credit_is_refused_and_writes_advance_fwd_cnt() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new(a, 9, Phase::Established);
        c.from_guest(&vec![7u8; BUF_ALLOC as usize]).unwrap();
        let e = c.from_guest(&[1]).unwrap_err();
        assert!(e.contains("with 0 of its"), "{e}");
        // The socket buffer takes part; the rest waits, counted as unforwarded.
        let drained = c.flush().unwrap();
        assert!(c.fwd_cnt > 0);
        assert_eq!(drained, !c.has_unwritten());
        let mut got = vec![0u8; c.fwd_cnt as usize];
        b.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&x| x == 7));
        while !c.flush().unwrap() {
            let mut sink = vec![0u8; 65536];
            let _ = b.read(&mut sink).unwrap();
        }
        assert_eq!(c.fwd_cnt, BUF_ALLOC);
        assert!(c.owes_credit_update());
        c.told_guest();
        assert!(!c.owes_credit_update());
        c.from_guest(&[1]).unwrap();
    }
}
