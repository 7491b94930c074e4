//! virtio-console (type 3): one port, for Cloud Hypervisor's `--console
//! off|null|tty|file=PATH` (the UART stays `--serial`).
//!
//! The transmit queue's bytes go to an output; an input, when given, is
//! read by its own thread into a bounded buffer that the receive queue's
//! buffers are filled from as the driver makes them available. The
//! emergency write (a config-space write, from the vCPU's thread) is the
//! driver's early output path, before the queues work.

#[cfg(test)]
mod tests;

use super::lock;
use super::worker::{give_back_held, QueueFailure, QueueHandler, Worker};
use super::{features, ActivateError, Activation, GuestMemory, VirtioDevice, VirtioInterrupt};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::EventFd;

/// Each queue's size.
pub const QUEUE_SIZE: u16 = 64;
/// The most input kept while the driver has no receive buffer; beyond
/// it, input is dropped (and counted in `rx_dropped`).
pub const MAX_PENDING: usize = 64 << 10;
/// The receive queue's index.
const RECEIVEQ: u16 = 0;
/// The transmit queue's index.
const TRANSMITQ: u16 = 1;
/// The columns and rows reported until [`Console::set_size`].
pub const DEFAULT_SIZE: (u16, u16) = (80, 25);

// Feature bits and `struct virtio_console_config` (virtio 1.2 §5.3.3,
// §5.3.4): virtio-bindings has no virtio_console module.
const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;
const CONFIG_COLS: usize = 0;
const CONFIG_ROWS: usize = 2;
const CONFIG_MAX_NR_PORTS: usize = 4;
const CONFIG_EMERG_WR: u64 = 8;
const CONFIG_LEN: usize = 12;

/// Why a console cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The thread reading the input could not start.
    #[error("cannot start the console's input thread: {0}")]
    InputThread(#[source] std::io::Error),
}

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// What the device, its worker and its input thread share.
#[derive(Default)]
struct Shared {
    /// Input the driver has no buffer for yet.
    pending: Mutex<VecDeque<u8>>,
    /// The receive queue's notification while active: the input thread
    /// wakes the worker through it.
    wake: Mutex<Option<EventFd>>,
    /// The input thread stops after its current read (the device is gone).
    stop: AtomicBool,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    warned_guest: AtomicBool,
    warned_output: AtomicBool,
    warned_dropped: AtomicBool,
}

impl Shared {
    /// Keeps `bytes` for the driver, up to [`MAX_PENDING`].
    fn push(&self, bytes: &[u8]) {
        let mut pending = lock(&self.pending);
        let keep = bytes.len().min(MAX_PENDING - pending.len());
        pending.extend(&bytes[..keep]);
        drop(pending);
        let dropped = bytes.len() - keep;
        if dropped > 0 {
            self.rx_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            if !self.warned_dropped.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "virtio-console: the guest is not reading its console; input beyond {MAX_PENDING} \
                     bytes is dropped (counted in rx_dropped)"
                );
            }
        }
        if let Some(wake) = lock(&self.wake).as_ref() {
            let _ = wake.write(1);
        }
    }

    fn guest_fault(&self, why: &str) {
        if !self.warned_guest.swap(true, Ordering::Relaxed) {
            tracing::warn!("virtio-console: {why} (further such buffers are not logged)");
        }
    }

    /// Writes to the output; a failing output loses the bytes, not the
    /// guest's progress.
    fn output(&self, output: &Output, f: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>) {
        let mut out = lock(output);
        match f(&mut **out).and_then(|n| out.flush().map(|()| n)) {
            Ok(n) => {
                self.tx_bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.warned_output.swap(true, Ordering::Relaxed) {
                    tracing::warn!("virtio-console: cannot write the output: {e} (further errors are not logged)");
                }
            }
        }
    }
}

/// Reads `input` into `shared` until it ends or the device is gone.
fn read_input(mut input: Box<dyn Read + Send>, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("virtio-console: cannot read the input: {e}; the guest gets no more input");
                return;
            }
        };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        shared.push(&buf[..n]);
    }
}

/// The console device.
pub struct Console {
    output: Output,
    shared: Arc<Shared>,
    cols: u16,
    rows: u16,
    worker: Option<Worker>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    /// The receive queue's slot among the active queues, and how many of
    /// its buffers the worker holds for input to come.
    receive: Option<(usize, Arc<AtomicUsize>)>,
}

impl Console {
    /// A console writing the guest's output to `output` and, if given,
    /// feeding `input` to the guest. The input is read by a thread of its
    /// own; it stops after its first read once the device is dropped.
    pub fn new(output: Box<dyn Write + Send>, input: Option<Box<dyn Read + Send>>) -> Result<Self, ConsoleError> {
        let shared = Arc::new(Shared::default());
        if let Some(input) = input {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("virtio-console-in".into())
                .spawn(move || read_input(input, shared))
                .map_err(ConsoleError::InputThread)?;
        }
        Ok(Console {
            output: Arc::new(Mutex::new(output)),
            shared,
            cols: DEFAULT_SIZE.0,
            rows: DEFAULT_SIZE.1,
            worker: None,
            interrupt: None,
            receive: None,
        })
    }

    /// Sets the columns and rows the driver reads, telling it if active.
    pub fn set_size(&mut self, cols: u16, rows: u16) {
        if (cols, rows) == (self.cols, self.rows) {
            return;
        }
        (self.cols, self.rows) = (cols, rows);
        if let Some(interrupt) = &self.interrupt {
            interrupt.config_changed();
        }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[CONFIG_COLS..][..2].copy_from_slice(&self.cols.to_le_bytes());
        c[CONFIG_ROWS..][..2].copy_from_slice(&self.rows.to_le_bytes());
        c[CONFIG_MAX_NR_PORTS..][..4].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    fn handler(&self, memory: &GuestMemory, held: Arc<AtomicUsize>) -> Handler {
        Handler {
            memory: Arc::new(memory.clone()),
            output: self.output.clone(),
            shared: self.shared.clone(),
            held: VecDeque::new(),
            held_count: held,
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// A receive buffer taken from the queue, kept until input comes.
type Held = DescriptorChain<Arc<GuestMemory>>;

/// The console's request handling, run by its worker.
struct Handler {
    /// Guest memory the held chains refer to (the same regions, and dirty
    /// bitmap, as the worker's).
    memory: Arc<GuestMemory>,
    output: Output,
    shared: Arc<Shared>,
    /// Receive buffers taken from the available ring, oldest first: they
    /// are the last ones taken, so giving them back is moving `next_avail`
    /// back by their number (see [`Console::queue_states`]).
    held: VecDeque<Held>,
    held_count: Arc<AtomicUsize>,
}

/// Whether `chain` has more than a queue's worth of descriptors (an
/// indirect table may), which the device refuses rather than walk.
fn too_long<M>(chain: &DescriptorChain<M>) -> bool
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory,
{
    chain.clone().take(usize::from(QUEUE_SIZE) + 1).count() > usize::from(QUEUE_SIZE)
}

impl Handler {
    fn transmit(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        let chains: Vec<_> = queue.iter(memory)?.collect();
        let used = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            if too_long(&chain) {
                self.shared
                    .guest_fault("a transmit chain longer than the queue is dropped");
            } else {
                if chain.clone().any(|d| d.is_write_only()) {
                    self.shared
                        .guest_fault("a device-writable buffer on the transmit queue is ignored");
                }
                match Reader::new(memory, chain) {
                    Ok(mut reader) => self.shared.output(&self.output, |out| std::io::copy(&mut reader, out)),
                    Err(e) => self
                        .shared
                        .guest_fault(&format!("a transmit buffer outside guest memory is dropped ({e})")),
                }
            }
            // The device writes nothing into transmit buffers.
            queue.add_used(memory, head, 0)?;
        }
        Ok(used)
    }

    /// Takes every available receive buffer, then fills them in order
    /// from the pending input.
    fn receive(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        // The worker serves a queue until the driver has nothing more
        // available, so buffers are taken now and kept until input comes.
        self.held.extend(queue.iter(self.memory.clone())?);
        let mut used = false;
        let mut pending = lock(&self.shared.pending);
        while let Some(chain) = self.held.front() {
            let head = chain.head_index();
            let written = if too_long(chain) {
                self.shared
                    .guest_fault("a receive chain longer than the queue is skipped");
                0
            } else {
                match Writer::new(&*self.memory, chain.clone()) {
                    Ok(w) if w.available_bytes() == 0 => {
                        self.shared
                            .guest_fault("a receive buffer with no device-writable byte is skipped");
                        0
                    }
                    Ok(_) if pending.is_empty() => break,
                    Ok(mut w) => fill(&mut w, &mut pending),
                    Err(e) => {
                        self.shared
                            .guest_fault(&format!("a receive buffer outside guest memory is skipped ({e})"));
                        0
                    }
                }
            };
            self.held.pop_front();
            self.shared.rx_bytes.fetch_add(written as u64, Ordering::Relaxed);
            queue.add_used(memory, head, written as u32)?;
            used = true;
        }
        self.held_count.store(self.held.len(), Ordering::SeqCst);
        Ok(used)
    }
}

/// Moves as much of `pending` as fits into `w`; returns the bytes moved.
fn fill<B: vm_memory::bitmap::BitmapSlice>(w: &mut Writer<'_, B>, pending: &mut VecDeque<u8>) -> usize {
    let n = w.available_bytes().min(pending.len());
    let (a, b) = pending.as_slices();
    let (a, b) = (&a[..n.min(a.len())], &b[..n - n.min(a.len())]);
    // The buffers were checked inside guest memory: writing cannot fail
    // short, but what was written is what is taken.
    let _ = w.write_all(a).and_then(|()| w.write_all(b));
    let written = w.bytes_written();
    pending.drain(..written);
    written
}

impl QueueHandler for Handler {
    fn process(&mut self, memory: &GuestMemory, index: u16, queue: &mut Queue) -> Result<bool, QueueFailure> {
        let result = match index {
            RECEIVEQ => self.receive(memory, queue),
            TRANSMITQ => self.transmit(memory, queue),
            _ => Ok(false),
        };
        result.map_err(|e| QueueFailure::new(index, e))
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | 1 << VIRTIO_CONSOLE_F_SIZE
            | 1 << VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }

    /// The emergency write: a write to `emerg_wr` puts its low byte out
    /// now, on the caller's thread (the guest's early console).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == CONFIG_EMERG_WR && (1..=4).contains(&data.len()) {
            let byte = data[0];
            self.shared
                .output(&self.output, |out| out.write_all(&[byte]).map(|()| 1));
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Queues("the device is already active".into()));
        }
        if let Some(q) = activation.queues.iter().find(|q| q.index > TRANSMITQ) {
            return Err(ActivateError::Queues(format!(
                "queue {} enabled, the device has 2 (multiport is not offered)",
                q.index
            )));
        }
        let slot = activation.queues.iter().position(|q| q.index == RECEIVEQ);
        let wake = match slot {
            Some(s) => Some(activation.queues[s].notify.try_clone()?),
            None => None,
        };
        let held = Arc::new(AtomicUsize::new(0));
        let handler = self.handler(&activation.memory, held.clone());
        let interrupt = activation.interrupt.clone();
        self.worker = Some(Worker::start(
            "virtio-console",
            handler,
            activation.into_worker_start(),
        )?);
        self.interrupt = Some(interrupt);
        self.receive = slot.map(|s| (s, held));
        // Input that came before the driver: served once it has buffers.
        if let Some(wake) = &wake {
            let _ = wake.write(1);
        }
        *lock(&self.shared.wake) = wake;
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        *lock(&self.shared.wake) = None;
        self.interrupt = None;
        self.receive = None;
        self.worker.take().map(Worker::stop)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// The receive buffers the worker holds for input to come are given
    /// back: the state says they are still available, so a restored
    /// device takes them again.
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        let states = self.worker.as_ref().map(Worker::queue_states)?;
        Some(give_back_held(states, self.receive.as_ref()))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared;
        vec![
            ("tx_bytes", s.tx_bytes.load(Ordering::Relaxed)),
            ("rx_bytes", s.rx_bytes.load(Ordering::Relaxed)),
            ("rx_dropped", s.rx_dropped.load(Ordering::Relaxed)),
        ]
    }
}
