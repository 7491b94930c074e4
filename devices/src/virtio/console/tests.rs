//! virtio-console tests: queues driven as a driver would, the handler
//! called directly and through the worker.

use super::*;
use crate::virtio::test_support::{wait_for, Irqs};
use crate::virtio::ActiveQueue;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

const MEM_SIZE: u64 = 1 << 20;
const BUF: u64 = 0x10000;

fn memory() -> GuestMemory {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// What the console wrote.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// A write has begun.
    started: Arc<AtomicBool>,
    /// Each write takes this long.
    delay: Duration,
}

impl Sink {
    fn get(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.started.store(true, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Input the test sends; ends when the sender is dropped.
struct Chan(Receiver<Vec<u8>>, Vec<u8>);

impl Read for Chan {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1.is_empty() {
            match self.0.recv() {
                Ok(v) => self.1 = v,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.1.len());
        buf[..n].copy_from_slice(&self.1[..n]);
        self.1.drain(..n);
        Ok(n)
    }
}

/// A buffer: address, length, device-writable.
type Buf = (u64, u32, bool);

fn r(addr: u64, len: u32) -> Buf {
    (addr, len, false)
}

fn w(addr: u64, len: u32) -> Buf {
    (addr, len, true)
}

/// The driver's side of one queue of [`QUEUE_SIZE`].
struct Driver<'a> {
    mem: &'a GuestMemory,
    mock: MockSplitQueue<'a, GuestMemory>,
    queue: Queue,
    next_desc: u16,
    next_used: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemory, at: u64) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(at), QUEUE_SIZE);
        let queue = mock.create_queue().unwrap();
        Driver {
            mem,
            mock,
            queue,
            next_desc: 0,
            next_used: 0,
        }
    }

    fn add(&mut self, bufs: &[Buf]) {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let index = self.next_desc + i as u16;
            let desc = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, index + 1));
            if i == 0 {
                self.mock.add_desc_chains(&[desc], index).unwrap();
            } else {
                self.mock.desc_table().store(index, desc).unwrap();
            }
        }
        self.next_desc += bufs.len() as u16;
    }

    /// Sends `text` as one readable buffer at `addr`.
    fn send(&mut self, addr: u64, text: &[u8]) {
        self.mem.write_slice(text, GuestAddress(addr)).unwrap();
        self.add(&[r(addr, text.len() as u32)]);
    }

    fn used_idx(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// The next used entry's length, if there is one.
    fn used(&mut self) -> Option<u32> {
        if self.used_idx() == self.next_used {
            return None;
        }
        let elem = self.mock.used().ring().ref_at(self.next_used as usize).unwrap().load();
        self.next_used += 1;
        Some(elem.len())
    }
}

fn guest_bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn counter(console: &Console, name: &str) -> u64 {
    console.counters().into_iter().find(|(n, _)| *n == name).unwrap().1
}

fn console(sink: &Sink) -> Console {
    Console::new(Box::new(sink.clone()), None).unwrap()
}

/// A handler called directly, as the worker would.
fn handler(console: &Console, mem: &GuestMemory) -> Handler {
    console.handler(mem, Arc::default())
}

#[test]
fn output_keeps_its_order_across_chains() {
    let (sink, mem) = (Sink::default(), memory());
    let c = console(&sink);
    let mut h = handler(&c, &mem);
    let mut tx = Driver::new(&mem, 0);
    tx.send(BUF, b"hello ");
    mem.write_slice(b"world", GuestAddress(BUF + 0x1000)).unwrap();
    tx.add(&[r(BUF + 0x1000, 3), r(BUF + 0x1003, 2)]);
    assert!(h.process(&mem, TRANSMITQ, &mut tx.queue).unwrap());
    tx.send(BUF + 0x2000, b"!\n");
    h.process(&mem, TRANSMITQ, &mut tx.queue).unwrap();
    assert_eq!(sink.get(), b"hello world!\n");
    assert_eq!(
        [tx.used(), tx.used(), tx.used(), tx.used()],
        [Some(0), Some(0), Some(0), None]
    );
    assert_eq!(counter(&c, "tx_bytes"), 13);
}

#[test]
fn transmit_ignores_writable_and_outside_buffers() {
    let (sink, mem) = (Sink::default(), memory());
    let c = console(&sink);
    let mut h = handler(&c, &mem);
    let mut tx = Driver::new(&mem, 0);
    mem.write_slice(b"abc", GuestAddress(BUF)).unwrap();
    mem.write_slice(&[0x77; 16], GuestAddress(BUF + 0x100)).unwrap();
    tx.add(&[r(BUF, 3), w(BUF + 0x100, 16)]);
    tx.add(&[r(MEM_SIZE - 2, 4)]);
    tx.send(BUF + 0x200, b"d");
    h.process(&mem, TRANSMITQ, &mut tx.queue).unwrap();
    assert_eq!(sink.get(), b"abcd");
    assert_eq!(guest_bytes(&mem, BUF + 0x100, 16), [0x77; 16], "not written");
    assert_eq!([tx.used(), tx.used(), tx.used()], [Some(0); 3]);
}

#[test]
fn emergency_write_and_config() {
    let sink = Sink::default();
    let mut c = console(&sink);
    c.write_config(8, &(b'X' as u32).to_le_bytes());
    c.write_config(8, b"Y");
    c.write_config(0, &[b'Z', 0, 0, 0]);
    c.write_config(8, &[b'W'; 8]);
    assert_eq!(sink.get(), b"XY");
    assert_eq!(counter(&c, "tx_bytes"), 2);
    let read = |c: &Console, offset: u64, len: usize| {
        let mut v = vec![0xee; len];
        c.read_config(offset, &mut v);
        v
    };
    let mut expect = vec![80, 0, 25, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(read(&c, 0, 12), expect);
    c.set_size(132, 43);
    expect[..4].copy_from_slice(&[132, 0, 43, 0]);
    assert_eq!(read(&c, 0, 16), [&expect[..], &[0; 4]].concat(), "0 past the end");
    assert_eq!(read(&c, 2, 2), [43, 0]);
    assert_eq!(read(&c, u64::MAX, 2), [0, 0]);
    assert_eq!(c.device_type(), 3);
    assert_eq!(c.queue_max_sizes(), [64, 64]);
    let f = c.features();
    assert_eq!(f & 0b101, 0b101, "SIZE and EMERG_WRITE");
    assert_eq!(f & 0b10, 0, "no MULTIPORT");
    assert_ne!(f & features::VERSION_1, 0);
}

#[test]
fn input_before_and_after_buffers() {
    let (sink, mem) = (Sink::default(), memory());
    let c = console(&sink);
    let mut h = handler(&c, &mem);
    let mut rx = Driver::new(&mem, 0);
    // Input first: it waits for a buffer.
    c.shared.push(b"abc");
    assert!(!h.process(&mem, RECEIVEQ, &mut rx.queue).unwrap());
    rx.add(&[w(BUF, 16)]);
    assert!(h.process(&mem, RECEIVEQ, &mut rx.queue).unwrap());
    assert_eq!(rx.used(), Some(3));
    assert_eq!(guest_bytes(&mem, BUF, 3), b"abc");
    // Buffers first: they wait for input, which fills them in order.
    rx.add(&[w(BUF + 0x100, 4)]);
    rx.add(&[w(BUF + 0x200, 2), w(BUF + 0x300, 8)]);
    assert!(!h.process(&mem, RECEIVEQ, &mut rx.queue).unwrap());
    assert_eq!(rx.used(), None);
    assert_eq!(h.held.len(), 2);
    c.shared.push(b"123456");
    assert!(h.process(&mem, RECEIVEQ, &mut rx.queue).unwrap());
    assert_eq!([rx.used(), rx.used()], [Some(4), Some(2)]);
    assert_eq!(guest_bytes(&mem, BUF + 0x100, 4), b"1234");
    assert_eq!(guest_bytes(&mem, BUF + 0x200, 2), b"56");
    assert_eq!(counter(&c, "rx_bytes"), 9);
    assert_eq!(h.held_count.load(Ordering::SeqCst), 0);
}

#[test]
fn receive_skips_unusable_buffers() {
    let (sink, mem) = (Sink::default(), memory());
    let c = console(&sink);
    let mut h = handler(&c, &mem);
    let mut rx = Driver::new(&mem, 0);
    mem.write_slice(&[0x77; 8], GuestAddress(BUF)).unwrap();
    rx.add(&[r(BUF, 8)]);
    rx.add(&[w(MEM_SIZE - 4, 8)]);
    rx.add(&[w(BUF + 0x100, 8)]);
    c.shared.push(b"hi");
    h.process(&mem, RECEIVEQ, &mut rx.queue).unwrap();
    assert_eq!([rx.used(), rx.used(), rx.used()], [Some(0), Some(0), Some(2)]);
    assert_eq!(
        guest_bytes(&mem, BUF, 8),
        [0x77; 8],
        "a read-only buffer is not written"
    );
    assert_eq!(guest_bytes(&mem, BUF + 0x100, 2), b"hi");
}

#[test]
fn input_beyond_the_limit_is_dropped() {
    let (sink, mem) = (Sink::default(), memory());
    let c = console(&sink);
    let mut h = handler(&c, &mem);
    let mut rx = Driver::new(&mem, 0);
    let input: Vec<u8> = (0..MAX_PENDING + 6000).map(|i| (i % 251) as u8).collect();
    c.shared.push(&input[..1000]);
    c.shared.push(&input[1000..]);
    assert_eq!(counter(&c, "rx_dropped"), 6000);
    rx.add(&[w(BUF, MAX_PENDING as u32 + 100)]);
    h.process(&mem, RECEIVEQ, &mut rx.queue).unwrap();
    assert_eq!(rx.used(), Some(MAX_PENDING as u32));
    assert_eq!(guest_bytes(&mem, BUF, MAX_PENDING), input[..MAX_PENDING]);
}

/// Activates `c` with both queues; returns their notifications.
fn activate(c: &mut Console, mem: &GuestMemory, rx: &Driver, tx: &Driver, irqs: &Arc<Irqs>) -> [EventFd; 2] {
    let notify = [EventFd::new(EFD_NONBLOCK).unwrap(), EventFd::new(EFD_NONBLOCK).unwrap()];
    let queues = [(RECEIVEQ, rx), (TRANSMITQ, tx)]
        .into_iter()
        .zip(&notify)
        .map(|((index, d), fd)| ActiveQueue {
            index,
            queue: d.mock.create_queue().unwrap(),
            notify: fd.try_clone().unwrap(),
        })
        .collect();
    c.activate(Activation {
        memory: mem.clone(),
        acked_features: c.features(),
        queues,
        interrupt: irqs.clone(),
        failed: Arc::default(),
        paused: false,
    })
    .unwrap();
    notify
}

#[test]
fn input_thread_and_worker() {
    let (sink, mem) = (Sink::default(), memory());
    let (input, chan): (Sender<Vec<u8>>, _) = channel();
    let mut c = Console::new(Box::new(sink.clone()), Some(Box::new(Chan(chan, Vec::new())))).unwrap();
    input.send(b"early".to_vec()).unwrap();
    wait_for("the input thread", || lock(&c.shared.pending).len() == 5);
    let (mut rx, mut tx) = (Driver::new(&mem, 0), Driver::new(&mem, 0x4000));
    let irqs = Arc::new(Irqs::default());
    let [rx_kick, tx_kick] = activate(&mut c, &mem, &rx, &tx, &irqs);
    rx.add(&[w(BUF, 64)]);
    rx_kick.write(1).unwrap();
    wait_for("early input", || rx.used_idx() == 1);
    assert_eq!(rx.used(), Some(5));
    assert_eq!(guest_bytes(&mem, BUF, 5), b"early");
    // A buffer waiting, then input: the input thread wakes the worker.
    rx.add(&[w(BUF + 0x100, 64)]);
    rx_kick.write(1).unwrap();
    input.send(b"late".to_vec()).unwrap();
    wait_for("late input", || rx.used_idx() == 2);
    assert_eq!(rx.used(), Some(4));
    assert_eq!(guest_bytes(&mem, BUF + 0x100, 4), b"late");
    wait_for("the interrupts", || irqs.queues.lock().unwrap().len() >= 2);
    assert!(irqs.queues.lock().unwrap().iter().all(|&q| q == RECEIVEQ));

    tx.send(BUF + 0x1000, b"out");
    tx_kick.write(1).unwrap();
    wait_for("output", || sink.get() == b"out");
    wait_for("the transmit interrupt", || {
        irqs.queues.lock().unwrap().contains(&TRANSMITQ)
    });

    // A buffer the worker holds for input is still available in the
    // state a migration saves.
    rx.add(&[w(BUF + 0x200, 64)]);
    rx_kick.write(1).unwrap();
    wait_for("the buffer taken", || {
        c.receive.as_ref().unwrap().1.load(Ordering::SeqCst) == 1
    });
    c.pause();
    let states = c.queue_states().unwrap();
    assert_eq!((states[0].next_avail, states[0].next_used), (2, 2));
    assert_eq!((states[1].next_avail, states[1].next_used), (1, 1));
    c.resume();

    c.set_size(100, 30);
    assert_eq!(irqs.config.load(Ordering::SeqCst), 1);
    assert_eq!(c.reset().map(|q| q.len()), Some(2));
    assert!(lock(&c.shared.wake).is_none());
    drop(c);
    drop(input);
}

#[test]
fn pause_leaves_nothing_half_written() {
    let mem = memory();
    let sink = Sink {
        delay: Duration::from_millis(5),
        ..Sink::default()
    };
    let mut c = console(&sink);
    let (rx, mut tx) = (Driver::new(&mem, 0), Driver::new(&mem, 0x4000));
    let irqs = Arc::new(Irqs::default());
    let [_, tx_kick] = activate(&mut c, &mem, &rx, &tx, &irqs);
    let data: Vec<u8> = (0..64 << 10).map(|i| (i % 253) as u8).collect();
    mem.write_slice(&data, GuestAddress(BUF)).unwrap();
    let bufs: Vec<Buf> = (0..8).map(|i| r(BUF + i * 0x2000, 0x2000)).collect();
    tx.add(&bufs);
    tx_kick.write(1).unwrap();
    wait_for("the first write", || sink.started.load(Ordering::SeqCst));
    c.pause();
    // The chain being written when pause was called is whole.
    assert_eq!(sink.get(), data);
    assert_eq!(tx.used_idx(), 1);
    tx.send(BUF + 0x20000, b"later");
    tx_kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(sink.get().len(), data.len(), "nothing while paused");
    assert_eq!(tx.used_idx(), 1);
    c.resume();
    wait_for("the output after resume", || tx.used_idx() == 2);
    assert_eq!(&sink.get()[data.len()..], b"later");
}
