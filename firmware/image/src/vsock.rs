//! The `vsock` workload: the first virtio-vsock device driven by
//! virtio-drivers' socket driver and connection manager, in ring 3.
//!
//! - An echo service on `port`: every connection a host process opens
//!   (`CONNECT <port>` on covm's UNIX socket) gets back what it sends, up
//!   to [`MAX_ECHO`] connections at once.
//! - With `peer=Q`, a client: it connects to host port Q (covm's
//!   `<socket>_Q`), streams `kib` KiB of [`vsock_pattern`], checks that the
//!   echo coming back is the same pattern, closes, and starts the next
//!   round. A reset connection (a migration resets the host ends) starts a
//!   new round; wrong bytes are a `FAIL`.
//!
//! Every 100 ms: `heartbeat <n> echoed=<bytes> conns=<accepted>
//! rounds=<verified> streamed=<bytes verified> resets=<n> ok`. The power
//! button stops it cleanly.

use crate::hw::{self, rdtsc};
use crate::println;
use crate::virtio::{self, Devices, VsockDriver};
use alloc::vec;
use alloc::vec::Vec;
use covm_guest_abi::ports::{self, power};
use covm_guest_abi::workload::{vsock_pattern, VsockArgs};
use virtio_drivers::device::socket::{
    DisconnectReason, SocketError, VsockAddr, VsockConnectionManager, VsockEventType, VMADDR_CID_HOST,
};

/// Echo connections served at once; more are closed at once.
const MAX_ECHO: usize = 8;
/// Bytes a connection may buffer towards the guest (its credit to the host).
const CONNECTION_BUFFER: u32 = 32 * 1024;
/// Bytes an echo connection holds to send back, at most.
const MAX_PENDING: usize = 32 * 1024;
/// The largest packet the workload sends.
const CHUNK: usize = 16 * 1024;
/// The client's first local port (each round takes the next).
const CLIENT_PORT_BASE: u32 = 40_000;

type Manager = VsockConnectionManager<crate::virtio::FwHal, crate::virtio::FwTransport, { virtio::VSOCK_BUF }>;

/// An echo connection and what it has yet to send back.
struct Echo {
    peer: VsockAddr,
    pending: Vec<u8>,
}

/// The client's round.
struct Client {
    peer: VsockAddr,
    local_port: u32,
    connected: bool,
    sent: u64,
    verified: u64,
    round: u64,
}

#[derive(Default)]
struct Counts {
    echoed: u64,
    conns: u64,
    rounds: u64,
    streamed: u64,
    resets: u64,
}

fn is_out_of_credit(e: &virtio_drivers::Error) -> bool {
    matches!(
        e,
        virtio_drivers::Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)
    )
}

fn device_failed(what: &str, e: virtio_drivers::Error) -> ! {
    virtio::fail_device(format_args!("vsock: {what}: {e}"))
}

/// Sends what `pending` holds as far as the peer's credit allows.
fn send_pending(m: &mut Manager, peer: VsockAddr, port: u32, pending: &mut Vec<u8>) -> u64 {
    let mut sent = 0;
    while !pending.is_empty() {
        let n = pending.len().min(CHUNK);
        match m.send(peer, port, &pending[..n]) {
            Ok(()) => {
                pending.drain(..n);
                sent += n as u64;
            }
            Err(e) if is_out_of_credit(&e) => break,
            // The connection went away meanwhile: its bytes go with it.
            Err(virtio_drivers::Error::SocketDeviceError(SocketError::NotConnected)) => {
                pending.clear();
                break;
            }
            Err(e) => device_failed("send", e),
        }
    }
    sent
}

impl Client {
    fn start(&mut self, m: &mut Manager) {
        self.local_port = CLIENT_PORT_BASE + (self.round % 10_000) as u32;
        self.connected = false;
        self.sent = 0;
        self.verified = 0;
        if let Err(e) = m.connect(self.peer, self.local_port) {
            device_failed("connect", e);
        }
    }

    /// Sends the next part of the pattern the credit allows.
    fn send(&mut self, m: &mut Manager, total: u64, chunk: &mut [u8]) {
        while self.connected && self.sent < total {
            let n = (total - self.sent).min(chunk.len() as u64) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = vsock_pattern(self.sent + i as u64);
            }
            match m.send(self.peer, self.local_port, &chunk[..n]) {
                Ok(()) => self.sent += n as u64,
                Err(e) if is_out_of_credit(&e) => break,
                Err(virtio_drivers::Error::SocketDeviceError(SocketError::NotConnected)) => break,
                Err(e) => device_failed("client send", e),
            }
        }
    }

    /// Checks the echo received.
    fn check(&mut self, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let at = self.verified + i as u64;
            let want = vsock_pattern(at);
            if b != want {
                println!(
                    "FAIL vsock stream round {} byte {at} is {b:#04x}, expected {want:#04x}",
                    self.round
                );
                hw::power_off(power::FAIL_VERIFY);
            }
        }
        self.verified += data.len() as u64;
    }
}

/// vCPU 0's `vsock` loop.
pub fn run(args: &VsockArgs, mut devices: Devices, tsc_khz: u64) -> ! {
    let (driver, df): (VsockDriver, _) = devices
        .vsock()
        .unwrap_or_else(|e| virtio::fail_device(format_args!("vsock: {e}")));
    let cid = driver.guest_cid();
    let mut m = Manager::new_with_capacity(driver, CONNECTION_BUFFER);
    m.listen(args.port);
    println!(
        "vsock: {df} cid {cid} echo port {} client {}",
        args.port,
        match args.peer {
            Some(_) => "on",
            None => "off",
        }
    );
    let total = args.kib * 1024;
    let mut client = args.peer.map(|port| Client {
        peer: VsockAddr {
            cid: VMADDR_CID_HOST,
            port,
        },
        local_port: 0,
        connected: false,
        sent: 0,
        verified: 0,
        round: 0,
    });
    if let Some(c) = client.as_mut() {
        c.start(&mut m);
    }
    let mut echoes: Vec<Echo> = Vec::new();
    let mut counts = Counts::default();
    let mut buf = vec![0u8; CHUNK];
    let mut chunk = vec![0u8; CHUNK];
    let heartbeat_ticks = 100 * tsc_khz;
    let mut next_heartbeat = rdtsc() + heartbeat_ticks;
    let mut heartbeats = 0u64;
    let mut last_activity = rdtsc();
    loop {
        let mut active = false;
        while let Some(event) = m.poll().unwrap_or_else(|e| device_failed("poll", e)) {
            active = true;
            let (peer, local) = (event.source, event.destination.port);
            let is_client = client.as_ref().is_some_and(|c| c.local_port == local && c.peer == peer);
            match event.event_type {
                VsockEventType::ConnectionRequest if local == args.port => {
                    if echoes.len() >= MAX_ECHO {
                        let _ = m.force_close(peer, local);
                    } else {
                        counts.conns += 1;
                        echoes.push(Echo {
                            peer,
                            pending: Vec::new(),
                        });
                    }
                }
                VsockEventType::Connected if is_client => {
                    if let Some(c) = client.as_mut() {
                        c.connected = true;
                    }
                }
                VsockEventType::Received { .. } if is_client => {
                    let c = client.as_mut().expect("is_client");
                    loop {
                        let n = m.recv(peer, local, &mut buf).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        c.check(&buf[..n]);
                    }
                    let _ = m.update_credit(peer, local);
                    if c.verified == total {
                        counts.rounds += 1;
                        counts.streamed += total;
                        let _ = m.force_close(peer, local);
                        c.round += 1;
                        c.start(&mut m);
                    }
                }
                // Echo data is taken below, as far as there is room for it.
                VsockEventType::Received { .. } => {}
                VsockEventType::Disconnected { reason } => {
                    if is_client {
                        let c = client.as_mut().expect("is_client");
                        if reason == DisconnectReason::Reset {
                            counts.resets += 1;
                            println!(
                                "vsock: stream round {} reset after {} of {total} bytes; starting again",
                                c.round, c.verified
                            );
                        }
                        let _ = m.force_close(peer, local);
                        c.round += 1;
                        c.start(&mut m);
                    } else {
                        echoes.retain(|e| e.peer != peer);
                    }
                }
                _ => {}
            }
        }
        for e in echoes.iter_mut() {
            // Only as much as can be sent back soon: what stays in the
            // driver's buffer holds the host back (its credit).
            let mut took = false;
            while e.pending.len() < MAX_PENDING {
                let room = (MAX_PENDING - e.pending.len()).min(buf.len());
                match m.recv(e.peer, args.port, &mut buf[..room]) {
                    Ok(n) if n > 0 => {
                        e.pending.extend_from_slice(&buf[..n]);
                        took = true;
                    }
                    _ => break,
                }
            }
            if took {
                let _ = m.update_credit(e.peer, args.port);
            }
            let n = send_pending(&mut m, e.peer, args.port, &mut e.pending);
            counts.echoed += n;
            active |= n > 0;
        }
        if let Some(c) = client.as_mut() {
            let before = c.sent;
            c.send(&mut m, total, &mut chunk);
            active |= c.sent != before;
        }
        let tsc = rdtsc();
        if tsc >= next_heartbeat {
            heartbeats += 1;
            println!(
                "heartbeat {heartbeats} echoed={} conns={} rounds={} streamed={} resets={} ok",
                counts.echoed, counts.conns, counts.rounds, counts.streamed, counts.resets
            );
            next_heartbeat = (next_heartbeat + heartbeat_ticks).max(tsc);
            if hw::inb(ports::POWER) == power::READ_BUTTON_PRESSED {
                println!("power button pressed: powering off");
                hw::power_off(power::OFF);
            }
        }
        // Poll without pause while data flows; after 2 ms idle, sleep up
        // to 1 ms between polls (the device is polled, not interrupting).
        if active {
            last_activity = tsc;
        }
        if tsc - last_activity > 2 * tsc_khz {
            hw::halt_until(rdtsc() + tsc_khz);
        } else {
            core::hint::spin_loop();
        }
    }
}
