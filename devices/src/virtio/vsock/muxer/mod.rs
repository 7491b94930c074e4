//! The host side of hybrid vsock, as Firecracker and Cloud Hypervisor
//! define it: a UNIX listener at the configured path where a host process
//! writes `CONNECT <port>\n` and, once the guest's listener accepts, reads
//! `OK <host port>\n`; a guest's connection to host port P goes to the
//! UNIX socket `PATH_P`. The muxer keeps the connection table, turns the
//! guest's packets into stream I/O and stream events into packets for the
//! guest. It holds no queue: the device's handler asks it for the next
//! packet when the guest has a buffer.

mod host_clients;

use super::connection::{Connection, Phase, BUF_ALLOC};
use super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::{bind_listener, connect_nonblocking};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Open connections and pending `CONNECT`s a device keeps at most; more
/// are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host clients that have not sent their `CONNECT` line yet, at most.
pub const MAX_HANDSHAKES: usize = 64;
/// The longest `CONNECT` line (`CONNECT 4294967295\n` is 19 bytes).
const MAX_CONNECT_LINE: usize = 32;
/// How long a host client may take to send `CONNECT`, the guest to
/// accept it, and the guest to reset a connection whose host side ended.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Host ports covm gives host-initiated connections start here (as
/// Firecracker's do), away from ports a guest connects to.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Epoll tokens: the listener, then the device's own; connections and
/// handshakes get tokens from 16 on.
pub const LISTENER: u64 = 0;
/// The first token handed out.
const FIRST_TOKEN: u64 = 16;

/// A connection's key: (host port, guest port).
pub type Key = (u32, u32);

/// A host client that has not said which port it wants.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// A packet covm owes the guest without data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    key: Key,
    op: Op,
    flags: u32,
}

/// What the host side did that the device counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Bytes the guest received.
    pub rx_bytes: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Connections established.
    pub connections: u64,
    /// Host clients and guest requests refused (by covm or by the guest),
    /// and guest packets refused.
    pub refused: u64,
}

/// The connection table and the host listener.
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: Option<UnixListener>,
    epoll: std::sync::Arc<Epoll>,
    handshakes: HashMap<u64, Handshake>,
    connections: HashMap<Key, Connection>,
    tokens: HashMap<u64, Key>,
    next_token: u64,
    next_host_port: u32,
    control: VecDeque<Control>,
    /// Connections with host data and guest credit, in turn.
    ready: VecDeque<Key>,
    /// Counters.
    pub counts: Counts,
    warned: bool,
}

impl Muxer {
    /// A muxer for guest `guest_cid` whose host side is `path`; the
    /// listener is bound by [`Muxer::listen`].
    pub fn new(guest_cid: u64, path: PathBuf, epoll: std::sync::Arc<Epoll>) -> Self {
        Muxer {
            guest_cid,
            path,
            listener: None,
            epoll,
            handshakes: HashMap::new(),
            connections: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            counts: Counts::default(),
            warned: false,
        }
    }

    /// The host socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Binds the listener (a stale socket file left by a process that
    /// ended is replaced; one in use is not).
    pub fn listen(&mut self) -> Result<(), String> {
        if self.listener.is_some() {
            return Ok(());
        }
        let listener = bind_listener(&self.path)?;
        self.epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(|e| format!("{}: epoll: {e}", self.path.display()))?;
        self.listener = Some(listener);
        Ok(())
    }

    /// Closes the listener and removes its path (for the covm that takes
    /// the VM next); open connections stay.
    pub fn unlisten(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, listener.as_raw_fd(), EpollEvent::default());
            let _ = std::fs::remove_file(&self.path);
            for (_, h) in self.handshakes.drain() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, h.stream.as_raw_fd(), EpollEvent::default());
            }
        }
    }

    /// The connections as (host port, guest port), and the next host port.
    pub fn table(&self) -> (Vec<Key>, u32) {
        let mut keys: Vec<Key> = self.connections.keys().copied().collect();
        keys.sort_unstable();
        (keys, self.next_host_port)
    }

    /// Takes a migrated table: the host side of those connections stayed
    /// with the source, so each is reset towards the guest.
    pub fn reset_migrated(&mut self, keys: &[Key], next_host_port: u32) {
        self.next_host_port = next_host_port.max(FIRST_HOST_PORT);
        for &key in keys {
            self.control.push_back(Control {
                key,
                op: Op::Rst,
                flags: 0,
            });
        }
    }

    /// Whether a packet waits for the guest.
    pub fn has_for_guest(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn warn(&mut self, what: &str) {
        self.counts.refused += 1;
        if !self.warned {
            self.warned = true;
            tracing::warn!("virtio-vsock: {what} (further refusals are not logged)");
        } else {
            tracing::debug!("virtio-vsock: {what}");
        }
    }

    /// Keeps a connection's epoll registration in line with what it needs.
    fn rearm(&mut self, key: Key) {
        let Some(c) = self.connections.get_mut(&key) else {
            return;
        };
        let want = c.interest();
        let fd = c.stream.as_raw_fd();
        let result = match (c.registered, want) {
            (None, 0) => Ok(()),
            (Some(_), 0) => self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, w) => self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::from_bits_truncate(w), c.token),
            ),
            (Some(now), w) if now == w => Ok(()),
            (Some(_), w) => self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(EventSet::from_bits_truncate(w), c.token),
            ),
        };
        c.registered = (want != 0).then_some(want);
        if let Err(e) = result {
            tracing::warn!("virtio-vsock: epoll on a connection failed: {e}");
        }
    }

    /// Drops a connection (its stream closes), telling the guest with a
    /// reset if `tell`.
    fn close(&mut self, key: Key, tell: bool) {
        if let Some(c) = self.connections.remove(&key) {
            if c.registered.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, c.stream.as_raw_fd(), EpollEvent::default());
            }
            self.tokens.remove(&c.token);
        }
        self.ready.retain(|k| *k != key);
        if tell {
            self.control.push_back(Control {
                key,
                op: Op::Rst,
                flags: 0,
            });
        }
    }

    fn queue(&mut self, key: Key, op: Op, flags: u32) {
        self.control.push_back(Control { key, op, flags });
    }

    /// Marks a connection's host side readable and queues it for the
    /// guest if the guest has room.
    fn mark_readable(&mut self, key: Key) {
        let Some(c) = self.connections.get_mut(&key) else {
            return;
        };
        c.readable = true;
        let ready = c.phase == Phase::Established && !c.guest_stopped_receiving;
        let credit = c.peer_credit() > 0;
        let ask = !credit && !c.credit_requested;
        if ask {
            c.credit_requested = true;
        }
        self.rearm(key);
        if ready && credit && !self.ready.contains(&key) {
            self.ready.push_back(key);
        } else if ready && ask {
            self.queue(key, Op::CreditRequest, 0);
        }
    }

    /// Handles an epoll event for `token`.
    pub fn on_event(&mut self, token: u64, events: u32) {
        if token == LISTENER {
            self.accept();
        } else if self.handshakes.contains_key(&token) {
            self.read_connect_line(token);
        } else if let Some(&key) = self.tokens.get(&token) {
            let hangup = events & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            if events & libc::EPOLLOUT as u32 != 0 || hangup {
                self.flush(key);
            }
            if events & libc::EPOLLIN as u32 != 0 || hangup {
                self.mark_readable(key);
            }
        }
    }

    /// A host port not in use towards guest port `guest_port`.
    fn free_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = p.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.connections.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    /// Writes what waits for a connection's host stream; a stream that
    /// fails resets the connection.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.connections.get_mut(&key) else {
            return;
        };
        match c.flush() {
            Ok(_) => {
                if c.owes_credit_update() {
                    self.queue(key, Op::CreditUpdate, 0);
                }
                self.rearm(key);
            }
            Err(_) => self.close(key, true),
        }
    }

    /// Gives up on what took too long: host clients that never sent
    /// `CONNECT`, requests the guest never answered, and connections the
    /// guest never reset after their host side ended.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            self.drop_handshake(t);
        }
        let late: Vec<Key> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Connecting { deadline } | Phase::Closing { deadline } if deadline <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.close(key, true);
        }
    }

    /// The next packet for the guest, given a buffer with room for
    /// `room` payload bytes: control packets first, then data in turn.
    /// `payload` gets the data of an RW packet.
    pub fn next_for_guest(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        if let Some(ctl) = self.control.pop_front() {
            return Some(self.header(ctl.key, ctl.op, ctl.flags, 0));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.connections.get_mut(&key) else {
                continue;
            };
            let max = room.min(c.peer_credit() as usize).min(BUF_ALLOC as usize);
            if max == 0 {
                if !c.credit_requested {
                    c.credit_requested = true;
                    return Some(self.header(key, Op::CreditRequest, 0, 0));
                }
                continue;
            }
            match c.read_for_guest(max, payload) {
                Ok(Some(0)) => {
                    // The host side ended: the guest is told, and resets.
                    c.phase = Phase::Closing {
                        deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                    };
                    self.rearm(key);
                    return Some(self.header(key, Op::Shutdown, SHUTDOWN_RCV | SHUTDOWN_SEND, 0));
                }
                Ok(Some(n)) => {
                    c.sent_to_guest(n as u32);
                    self.counts.rx_bytes += n as u64;
                    if c.readable || !c.early.is_empty() {
                        self.ready.push_back(key);
                    } else {
                        self.rearm(key);
                    }
                    return Some(self.header(key, Op::Rw, 0, n as u32));
                }
                Ok(None) => self.rearm(key),
                Err(_) => {
                    self.close(key, false);
                    return Some(self.header(key, Op::Rst, 0, 0));
                }
            }
        }
        None
    }

    /// A header from the host to the guest on connection `key`, telling
    /// its credit.
    fn header(&mut self, key: Key, op: Op, flags: u32, len: u32) -> Header {
        let fwd_cnt = match self.connections.get_mut(&key) {
            Some(c) => {
                c.told_guest();
                c.fwd_cnt
            }
            None => 0,
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            kind: TYPE_STREAM,
            op: op.code(),
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// Handles a packet the guest sent (`payload` is an RW packet's data).
    pub fn from_guest(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.guest_cid {
            self.warn(&format!(
                "a packet from cid {} on a device of cid {} was dropped",
                h.src_cid, self.guest_cid
            ));
            return;
        }
        let key = (h.dst_port, h.src_port);
        let op = Op::from_code(h.op);
        if h.dst_cid != HOST_CID || h.kind != TYPE_STREAM || op.is_none() {
            self.warn(&format!(
                "a packet to cid {} of type {} with op {} was refused (only stream packets to the host, cid 2)",
                h.dst_cid, h.kind, h.op
            ));
            if op != Some(Op::Rst) {
                self.queue(key, Op::Rst, 0);
            }
            return;
        }
        let op = op.expect("checked above");
        if op == Op::Request {
            self.guest_connects(key, h);
            return;
        }
        let Some(c) = self.connections.get_mut(&key) else {
            // Nothing to say to a reset of nothing.
            if op != Op::Rst {
                self.queue(key, Op::Rst, 0);
            }
            return;
        };
        c.peer_credit_from(h.buf_alloc, h.fwd_cnt);
        match op {
            Op::Request => {}
            Op::Response => match c.phase {
                Phase::Connecting { .. } => {
                    c.phase = Phase::Established;
                    self.counts.connections += 1;
                    // The client reads this line before any data; the
                    // stream was idle until now, so its buffer takes it
                    // whole, and it is not the guest's data to count.
                    let line = format!("OK {}\n", key.0);
                    if !matches!(c.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                        self.close(key, true);
                        return;
                    }
                    let early = !c.early.is_empty();
                    self.flush(key);
                    if early {
                        self.mark_readable(key);
                    }
                }
                _ => self.close(key, true),
            },
            Op::Rst => {
                // The guest refused a host client's CONNECT.
                if matches!(c.phase, Phase::Connecting { .. }) {
                    self.counts.refused += 1;
                }
                self.close(key, false)
            }
            Op::Shutdown => {
                c.guest_stopped_receiving |= h.flags & SHUTDOWN_RCV != 0;
                c.guest_stopped_sending |= h.flags & SHUTDOWN_SEND != 0;
                if c.guest_stopped_receiving && c.guest_stopped_sending {
                    let _ = c.flush();
                    self.close(key, true);
                } else {
                    self.flush(key);
                }
            }
            Op::Rw => {
                if c.phase != Phase::Established {
                    return self.close(key, true);
                }
                if let Err(e) = c.from_guest(payload) {
                    self.warn(&e);
                    return self.close(key, true);
                }
                self.counts.tx_bytes += payload.len() as u64;
                self.flush(key);
            }
            Op::CreditUpdate => {
                if c.readable {
                    self.mark_readable(key);
                }
            }
            Op::CreditRequest => self.queue(key, Op::CreditUpdate, 0),
        }
    }

    /// The guest connects to host port `key.0`: to the UNIX socket
    /// `PATH_<port>`, refused with a reset if nothing listens there.
    fn guest_connects(&mut self, key: Key, h: &Header) {
        if self.connections.contains_key(&key) {
            self.warn(&format!("guest port {} asked twice for host port {}", key.1, key.0));
            return self.close(key, true);
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            self.warn("a guest connection was refused: too many connections");
            return self.queue(key, Op::Rst, 0);
        }
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let token = self.token();
                let mut c = Connection::new(stream, token, Phase::Established);
                c.peer_credit_from(h.buf_alloc, h.fwd_cnt);
                self.connections.insert(key, c);
                self.tokens.insert(token, key);
                self.counts.connections += 1;
                self.queue(key, Op::Response, 0);
                self.rearm(key);
            }
            Err(e) => {
                tracing::debug!("virtio-vsock: guest connection to {}: {e}", Path::new(&path).display());
                self.counts.refused += 1;
                self.queue(key, Op::Rst, 0);
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        self.unlisten();
    }
}
