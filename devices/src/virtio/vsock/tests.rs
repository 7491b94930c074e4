//! virtio-vsock tests: the device's queues driven as a driver would, its
//! host side over real UNIX sockets in a temporary directory.

use super::connection::BUF_ALLOC;
use super::packet::{Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::test_support::wait_for;
use crate::virtio::DeviceState;
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CID: u64 = 42;
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x20_0000;
const BUF: u32 = 4096;

fn raw(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
}

/// A test's socket directory, removed when the test ends.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("covm-vsock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A driver over the device's handler: one 4 KiB buffer per packet.
struct Driver<'m> {
    mem: &'m GuestMemory,
    handler: Handler,
    rx: MockSplitQueue<'m, GuestMemory>,
    rx_queue: Queue,
    tx: MockSplitQueue<'m, GuestMemory>,
    tx_queue: Queue,
    rx_posted: u16,
    rx_seen: u16,
    tx_sent: u16,
    /// Our credit, as the guest tells it.
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl<'m> Driver<'m> {
    fn new(dev: &Vsock, mem: &'m GuestMemory) -> Self {
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1000), 256);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x8000), 256);
        Driver {
            mem,
            handler: Handler {
                shared: dev.shared.clone(),
                memory: Arc::new(mem.clone()),
                payload: Vec::new(),
                held_rx: VecDeque::new(),
                held_rx_count: Arc::default(),
                held_event: VecDeque::new(),
                held_event_count: Arc::default(),
            },
            rx_queue: rx.create_queue().unwrap(),
            tx_queue: tx.create_queue().unwrap(),
            rx,
            tx,
            rx_posted: 0,
            rx_seen: 0,
            tx_sent: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    fn header(&self, op: Op, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            kind: TYPE_STREAM,
            op: op.code(),
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Sends `h` with `data` (its `len` set from it unless `keep_len`).
    fn send_raw(&mut self, mut h: Header, data: &[u8], keep_len: bool) {
        if !keep_len {
            h.len = data.len() as u32;
        }
        let i = self.tx_sent;
        let addr = TX_BASE + u64::from(i) * 0x1_0000;
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(data);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        self.tx.add_desc_chains(&[raw(addr, bytes.len() as u32, 0)], i).unwrap();
        self.tx_sent += 1;
        self.handler.process(self.mem, TX, &mut self.tx_queue).unwrap();
    }

    fn send(&mut self, op: Op, src_port: u32, dst_port: u32, data: &[u8]) {
        let h = self.header(op, src_port, dst_port);
        self.send_raw(h, data, false);
    }

    /// Posts a receive buffer and serves the queue; the packet, if any.
    fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        if self.rx_posted == self.rx_seen {
            let i = self.rx_posted;
            let addr = RX_BASE + u64::from(i) * u64::from(BUF);
            self.rx
                .add_desc_chains(&[raw(addr, BUF, VRING_DESC_F_WRITE)], i)
                .unwrap();
            self.rx_posted += 1;
        }
        self.handler.process(self.mem, RX, &mut self.rx_queue).unwrap();
        let used_idx = self.rx.used().idx().load();
        if used_idx == self.rx_seen {
            return None;
        }
        let elem = self.rx.used().ring().ref_at(usize::from(self.rx_seen)).unwrap().load();
        self.rx_seen += 1;
        let addr = RX_BASE + u64::from(elem.id()) * u64::from(BUF);
        let mut bytes = vec![0u8; elem.len() as usize];
        self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        let h = Header::decode(bytes[..HEADER_LEN].try_into().unwrap());
        Some((h, bytes[HEADER_LEN..].to_vec()))
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        let mut got = None;
        wait_for("a packet for the guest", || {
            got = self.try_recv();
            got.is_some()
        });
        got.unwrap()
    }
}

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
}

fn connect(path: &Path, line: &str) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s
}

/// Whether the host stream ends (EOF or reset) without data.
fn ends(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

use std::path::Path;

#[test]
fn config_is_the_guest_cid_and_reserved_cids_are_refused() {
    let dir = temp_dir("config");
    let dev = Vsock::new(CID, dir.join("v.sock"), true).unwrap();
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), CID);
    assert_eq!(dev.device_type(), 19);
    for bad in [0, 1, 2, 1 << 33] {
        let e = Vsock::new(bad, dir.join("w.sock"), true).err().unwrap();
        assert!(e.contains(&format!("cid={bad}")), "{e}");
    }
}

#[test]
fn host_connect_reaches_the_guest_and_data_flows_both_ways() {
    let dir = temp_dir("host");
    let path = dir.join("v.sock");
    let dev = Vsock::new(CID, path.clone(), true).unwrap();
    let mem = memory();
    let mut g = Driver::new(&dev, &mem);

    let mut host = connect(&path, "CONNECT 5000\nearly bytes");
    let (req, _) = g.recv();
    assert_eq!(req.op, Op::Request.code());
    assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (HOST_CID, CID, 5000));
    let host_port = req.src_port;
    assert!(host_port >= 1 << 30);
    g.send(Op::Response, 5000, host_port, &[]);
    let mut line = String::new();
    BufReader::new(&host).read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {host_port}\n"));
    // What the client wrote after its CONNECT line comes first.
    let (rw, data) = g.recv();
    assert_eq!((rw.op, data.as_slice()), (Op::Rw.code(), &b"early bytes"[..]));
    assert_eq!(rw.buf_alloc, BUF_ALLOC);
    host.write_all(b"ping").unwrap();
    let (rw, data) = g.recv();
    assert_eq!((rw.op, data.as_slice()), (Op::Rw.code(), &b"ping"[..]));
    g.send(Op::Rw, 5000, host_port, b"pong");
    let mut back = [0u8; 4];
    host.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong");

    // The host closes: the guest is told (both directions) and resets.
    drop(host);
    let (shut, _) = g.recv();
    assert_eq!(
        (shut.op, shut.flags),
        (Op::Shutdown.code(), SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    g.send(Op::Rst, 5000, host_port, &[]);
    assert!(lock(&dev.shared.muxer).table().0.is_empty());
    let counters = dev.counters();
    assert!(counters.contains(&("connections", 1)), "{counters:?}");
    assert!(counters.contains(&("tx_bytes", 4)), "{counters:?}");
}

#[test]
fn garbage_connect_lines_and_refused_ports_close_the_host_stream() {
    let dir = temp_dir("garbage");
    let path = dir.join("v.sock");
    let dev = Vsock::new(CID, path.clone(), true).unwrap();
    let mem = memory();
    let mut g = Driver::new(&dev, &mem);
    for bad in [
        "HELLO\n",
        "CONNECT\n",
        "CONNECT -1\n",
        "CONNECT 99999999999\n",
        "CONNECT 1 2\n",
    ] {
        let mut s = connect(&path, bad);
        assert!(ends(&mut s), "{bad:?} was not refused");
    }
    // An overlong line without an end is cut off.
    let mut s = connect(&path, &"C".repeat(40));
    assert!(ends(&mut s));
    // The guest refuses the port: the host stream closes.
    let mut s = connect(&path, "CONNECT 7\n");
    let (req, _) = g.recv();
    g.send(Op::Rst, 7, req.src_port, &[]);
    assert!(ends(&mut s));
    // The guest never answers: after the timeout the host stream closes
    // and the guest is reset.
    let mut s = connect(&path, "CONNECT 8\n");
    let (req, _) = g.recv();
    assert!(ends(&mut s));
    let (rst, _) = g.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (Op::Rst.code(), req.src_port, 8));
    let refused = dev.counters().into_iter().find(|c| c.0 == "refused").unwrap().1;
    assert!(refused >= 6, "{refused}");
}

#[test]
fn guest_connects_to_path_port_and_bad_packets_are_refused() {
    let dir = temp_dir("guest");
    let path = dir.join("v.sock");
    let dev = Vsock::new(CID, path.clone(), true).unwrap();
    let listener = UnixListener::bind(dir.join("v.sock_7000")).unwrap();
    let mem = memory();
    let mut g = Driver::new(&dev, &mem);

    g.send(Op::Request, 1234, 7000, &[]);
    let (resp, _) = g.recv();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (Op::Response.code(), 7000, 1234)
    );
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.send(Op::Rw, 1234, 7000, b"stream from the guest");
    let mut got = [0u8; 21];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"stream from the guest");
    peer.write_all(b"reply").unwrap();
    let (rw, data) = g.recv();
    assert_eq!((rw.op, data.as_slice()), (Op::Rw.code(), &b"reply"[..]));

    // Nothing listens on port 7001: reset.
    g.send(Op::Request, 1235, 7001, &[]);
    assert_eq!(g.recv().0.op, Op::Rst.code());
    // To another cid, or an unknown op: reset.
    let mut h = g.header(Op::Request, 1236, 7000);
    h.dst_cid = 5;
    g.send_raw(h, &[], false);
    assert_eq!(g.recv().0.op, Op::Rst.code());
    let mut h = g.header(Op::Rw, 1234, 7000);
    h.op = 99;
    g.send_raw(h, &[], false);
    assert_eq!(g.recv().0.op, Op::Rst.code());
    // From a cid not the guest's: dropped without answer.
    let mut h = g.header(Op::Request, 1237, 7000);
    h.src_cid = 77;
    g.send_raw(h, &[], false);
    assert!(g.try_recv().is_none());
    // A length beyond the buffer: the buffer is used, nothing happens.
    let mut h = g.header(Op::Rw, 1234, 7000);
    h.len = 60_000;
    g.send_raw(h, b"short", true);
    // The first connection still works.
    g.send(Op::Rw, 1234, 7000, b"still");
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
}

#[test]
fn credit_limits_what_each_side_sends() {
    let dir = temp_dir("credit");
    let path = dir.join("v.sock");
    let dev = Vsock::new(CID, path.clone(), true).unwrap();
    let listener = UnixListener::bind(dir.join("v.sock_9")).unwrap();
    let mem = memory();
    let mut g = Driver::new(&dev, &mem);
    g.buf_alloc = 100;
    g.send(Op::Request, 50, 9, &[]);
    assert_eq!(g.recv().0.op, Op::Response.code());
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(&[5u8; 300]).unwrap();
    let (rw, data) = g.recv();
    assert_eq!((rw.op, data.len()), (Op::Rw.code(), 100));
    // Out of credit: the device asks for an update rather than sending.
    let (ask, _) = g.recv();
    assert_eq!(ask.op, Op::CreditRequest.code());
    assert!(g.try_recv().is_none());
    g.fwd_cnt = 100;
    g.send(Op::CreditUpdate, 50, 9, &[]);
    let (rw, data) = g.recv();
    assert_eq!((rw.op, data.len()), (Op::Rw.code(), 100));
    // A guest that sends beyond the device's credit (the peer reads
    // nothing, so the socket fills) is reset.
    let mut rst = false;
    for _ in 0..40 {
        g.send(Op::Rw, 50, 9, &vec![1u8; 60_000]);
        while let Some((h, _)) = g.try_recv() {
            rst |= h.op == Op::Rst.code();
        }
        if rst {
            break;
        }
    }
    assert!(rst, "no reset for a guest beyond its credit");
}

#[test]
fn migrated_connections_are_reset_and_the_state_is_checked() {
    let dir = temp_dir("state");
    let path = dir.join("v.sock");
    let src = Vsock::new(CID, path.clone(), true).unwrap();
    let _l = UnixListener::bind(dir.join("v.sock_9")).unwrap();
    let mem = memory();
    let mut g = Driver::new(&src, &mem);
    g.send(Op::Request, 50, 9, &[]);
    assert_eq!(g.recv().0.op, Op::Response.code());
    let state = src.save_state();
    let DeviceState::Vsock(s) = &state else { panic!() };
    assert_eq!(s.connections, vec![(9, 50)]);

    // The source lets the listener go; the destination takes the path.
    let mut src = src;
    src.handover(Handover::Release).unwrap();
    assert!(!path.exists());
    let mut dst = Vsock::new(CID, path.clone(), false).unwrap();
    dst.restore_state(&state).unwrap();
    dst.handover(Handover::Acquire).unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    let mut g2 = Driver::new(&dst, &mem);
    let (rst, _) = g2.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (Op::Rst.code(), 9, 50));
    // A driver's event buffer gets the transport reset.
    let ev = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let mut ev_queue = ev.create_queue().unwrap();
    ev.add_desc_chains(&[raw(0x30_0000, 4, VRING_DESC_F_WRITE)], 0).unwrap();
    assert!(g2.handler.process(&mem, EVENT, &mut ev_queue).unwrap());
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(), 0);

    // Bad states are named.
    let other = Vsock::new(CID + 1, dir.join("o.sock"), false);
    let e = other.unwrap().restore_state(&state).unwrap_err();
    assert!(e.contains("cid 42"), "{e}");
    let dup = DeviceState::Vsock(VsockState {
        guest_cid: CID,
        connections: vec![(1, 2), (1, 2)],
        next_host_port: 0,
    });
    let e = Vsock::new(CID, dir.join("d.sock"), false)
        .unwrap()
        .restore_state(&dup)
        .unwrap_err();
    assert!(e.contains("twice"), "{e}");
    let e = Vsock::new(CID, dir.join("e.sock"), false)
        .unwrap()
        .restore_state(&DeviceState::Stateless)
        .unwrap_err();
    assert!(e.contains("not a vsock"), "{e}");
}

#[test]
fn the_listener_replaces_a_stale_socket_and_not_one_in_use() {
    let dir = temp_dir("stale");
    let path = dir.join("v.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dev = Vsock::new(CID, path.clone(), true).unwrap();
    let e = Vsock::new(CID, path.clone(), true).err().unwrap();
    assert!(e.contains("another process listens"), "{e}");
    drop(dev);
    std::fs::write(dir.join("plain"), b"x").unwrap();
    let e = Vsock::new(CID, dir.join("plain"), true).err().unwrap();
    assert!(e.contains("not a socket"), "{e}");
}
