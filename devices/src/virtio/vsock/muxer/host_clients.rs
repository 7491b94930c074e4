//! Host clients before they are connections: accepted on the listener,
//! then read until their `CONNECT <port>` line says which guest port they
//! want (anything else closes them).

use super::{Handshake, Muxer, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_HANDSHAKES};
use crate::virtio::vsock::connection::{Connection, Phase};
use crate::virtio::vsock::packet::Op;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::time::Instant;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

impl Muxer {
    pub(super) fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES || self.connections.len() >= MAX_CONNECTIONS {
                        self.warn("a host client was refused: too many connections");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.token();
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            stream.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, token),
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    pub(super) fn drop_handshake(&mut self, token: u64) -> Option<Handshake> {
        let h = self.handshakes.remove(&token)?;
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, h.stream.as_raw_fd(), EpollEvent::default());
        Some(h)
    }

    /// Reads a host client's `CONNECT <port>\n`; on a whole line, asks the
    /// guest to accept (garbage, an overlong line or an early end closes
    /// the client's stream).
    pub(super) fn read_connect_line(&mut self, token: u64) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let n = match h
            .stream
            .read(&mut buf[..MAX_CONNECT_LINE - h.line.len().min(MAX_CONNECT_LINE - 1)])
        {
            Ok(0) => {
                self.drop_handshake(token);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => {
                self.drop_handshake(token);
                return;
            }
        };
        h.line.extend_from_slice(&buf[..n]);
        let Some(end) = h.line.iter().position(|&b| b == b'\n') else {
            if h.line.len() >= MAX_CONNECT_LINE {
                self.drop_handshake(token);
                self.warn("a host client's CONNECT line is longer than 32 bytes");
            }
            return;
        };
        let Some(mut h) = self.drop_handshake(token) else {
            return;
        };
        let early = h.line.split_off(end + 1);
        let port = std::str::from_utf8(&h.line[..end])
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim_end_matches('\r').parse::<u32>().ok());
        let Some(port) = port else {
            let line = String::from_utf8_lossy(&h.line[..end]).into_owned();
            self.warn(&format!("a host client sent {line:?}, not \"CONNECT <port>\""));
            return;
        };
        if self.connections.len() >= MAX_CONNECTIONS {
            self.warn("a host client was refused: too many connections");
            return;
        }
        let host_port = self.free_host_port(port);
        let key = (host_port, port);
        let token = self.token();
        let mut c = Connection::new(
            h.stream,
            token,
            Phase::Connecting {
                deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            },
        );
        c.early = early;
        self.connections.insert(key, c);
        self.tokens.insert(token, key);
        self.queue(key, Op::Request, 0);
    }
}
