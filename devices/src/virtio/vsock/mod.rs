//! virtio-vsock (socket device, type 19) in Firecracker's and Cloud
//! Hypervisor's hybrid form, for `--vsock cid=N,socket=PATH`: the guest's
//! stream sockets meet host processes on UNIX sockets ([`muxer`]).
//!
//! Queues: receive (0), transmit (1), event (2). Receive buffers are held
//! as virtio-net holds them and filled when the muxer has a packet; a
//! thread of the device's own waits on the host sockets and hands packets
//! to the guest under the worker's lock.
//!
//! Migration: the guest's sockets, listeners included, are guest memory
//! and move with it; the host ends of open connections are this process's
//! descriptors and cannot. The destination therefore resets, towards the
//! guest, every connection the source had (a reset packet for each, and a
//! transport-reset event where the driver posted event buffers, as Linux
//! does), as Cloud Hypervisor does; the host listener moves by name at the
//! switch. A migration that fails leaves the source's connections open.

pub mod connection;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;
mod unix;

use super::lock;
use super::worker::{give_back_held, QueueFailure, QueueHandler, ServeHandle, Worker};
use super::{features, ActivateError, Activation, GuestMemory, Handover, VirtioDevice};
use muxer::{Muxer, LISTENER};
use packet::{Header, HEADER_LEN};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT, Reader, Writer};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// The largest payload a guest packet may carry.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The lowest context id a guest may have (0–2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// The transport-reset event's id.
const EVENT_TRANSPORT_RESET: u32 = 0;

const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;
/// The backend thread's own epoll tokens (the muxer's are 0 and 16 on).
const STOP: u64 = 1;
const WAKE: u64 = 2;

/// The device's migration state: the guest's context id (checked against
/// the destination's), the connections to reset and the next host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u64,
    /// Open connections, as (host port, guest port).
    pub connections: Vec<(u32, u32)>,
    /// The next port a host-initiated connection gets.
    pub next_host_port: u32,
}

/// What the device, its worker and its backend thread share.
struct Shared {
    muxer: Mutex<Muxer>,
    /// Serves the receive and event queues on the backend thread while
    /// active: their slots among the active queues.
    receiver: Mutex<Option<(ServeHandle, usize, Option<usize>)>>,
    /// A transport reset is owed to the driver (after a migration).
    transport_reset: AtomicBool,
    warned_guest: AtomicBool,
    wake: EventFd,
}

impl Shared {
    fn deliver(&self) {
        let receiver = lock(&self.receiver).clone();
        if let Some((handle, rx, event)) = receiver {
            handle.serve(rx);
            if let Some(event) = event.filter(|_| self.transport_reset.load(Ordering::SeqCst)) {
                handle.serve(event);
            }
        }
    }

    fn guest_fault(&self, why: &str) {
        if !self.warned_guest.swap(true, Ordering::Relaxed) {
            tracing::warn!("virtio-vsock: {why} (further such buffers are not logged)");
        }
    }
}

/// Waits on the host sockets and hands what they bring to the guest.
fn run_backend(shared: Arc<Shared>, epoll: Arc<Epoll>) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(250, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-vsock: epoll failed: {e}");
                return;
            }
        };
        let pending = {
            let mut muxer = lock(&shared.muxer);
            for event in &events[..n] {
                match event.data() {
                    STOP => return,
                    WAKE => {
                        let _ = shared.wake.read();
                    }
                    token => muxer.on_event(token, event.events()),
                }
            }
            muxer.expire(Instant::now());
            muxer.has_for_guest()
        };
        if pending || shared.transport_reset.load(Ordering::SeqCst) {
            shared.deliver();
        }
    }
}

/// The backend thread and how to stop it.
struct Backend {
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The socket device.
pub struct Vsock {
    guest_cid: u64,
    shared: Arc<Shared>,
    worker: Option<Worker>,
    /// The receive queue's slot and how many of its buffers are held.
    receive: Option<(usize, Arc<AtomicUsize>)>,
    /// The event queue's slot and how many of its buffers are held.
    event: Option<(usize, Arc<AtomicUsize>)>,
    // Dropped last: stops the thread before the muxer goes.
    _backend: Backend,
}

impl Vsock {
    /// A device for guest `guest_cid` with its host side at `path`. With
    /// `listen`, the listener is bound now; otherwise (an incoming VM's)
    /// at [`Handover::Acquire`], once the source let go of the path.
    pub fn new(guest_cid: u64, path: PathBuf, listen: bool) -> Result<Self, String> {
        if guest_cid < MIN_GUEST_CID || guest_cid > u64::from(u32::MAX) {
            return Err(format!(
                "cid={guest_cid}: a guest's context id is from {MIN_GUEST_CID} to {} (0-2 are reserved)",
                u32::MAX
            ));
        }
        let epoll = Arc::new(Epoll::new().map_err(|e| format!("epoll: {e}"))?);
        let mut muxer = Muxer::new(guest_cid, path, epoll.clone());
        if listen {
            muxer.listen()?;
        }
        let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
        for (fd, token) in [(stop.as_raw_fd(), STOP), (wake.as_raw_fd(), WAKE)] {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
                .map_err(|e| format!("epoll: {e}"))?;
        }
        const { assert!(LISTENER != STOP && LISTENER != WAKE) };
        let shared = Arc::new(Shared {
            muxer: Mutex::new(muxer),
            receiver: Mutex::new(None),
            transport_reset: AtomicBool::new(false),
            warned_guest: AtomicBool::new(false),
            wake,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("virtio-vsock-{guest_cid}"))
                .spawn(move || run_backend(shared, epoll))
                .map_err(|e| format!("cannot start its thread: {e}"))?
        };
        Ok(Vsock {
            guest_cid,
            shared,
            worker: None,
            receive: None,
            event: None,
            _backend: Backend {
                stop,
                thread: Some(thread),
            },
        })
    }
}

/// A buffer taken from a queue, kept until there is something to put in it.
type Held = DescriptorChain<Arc<GuestMemory>>;

/// The queues' handling on the worker.
struct Handler {
    shared: Arc<Shared>,
    memory: Arc<GuestMemory>,
    payload: Vec<u8>,
    held_rx: VecDeque<Held>,
    held_rx_count: Arc<AtomicUsize>,
    held_event: VecDeque<Held>,
    held_event_count: Arc<AtomicUsize>,
}

impl Handler {
    /// Takes every receive buffer the driver made available, then fills
    /// them, in order, with what the muxer has for the guest.
    fn receive(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        self.held_rx.extend(queue.iter(self.memory.clone())?);
        let mut used = false;
        while let Some(chain) = self.held_rx.pop_front() {
            let head = chain.head_index();
            let mut writer = match Writer::new(&*self.memory, chain.clone()) {
                Ok(w) if w.available_bytes() > HEADER_LEN => w,
                Ok(w) => {
                    self.shared.guest_fault(&format!(
                        "a receive buffer of {} bytes cannot hold a packet header and data",
                        w.available_bytes()
                    ));
                    queue.add_used(memory, head, 0)?;
                    used = true;
                    continue;
                }
                Err(e) => {
                    self.shared
                        .guest_fault(&format!("a receive buffer is outside guest memory ({e})"));
                    queue.add_used(memory, head, 0)?;
                    used = true;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HEADER_LEN).min(MAX_PAYLOAD);
            let Some(header) = lock(&self.shared.muxer).next_for_guest(room, &mut self.payload) else {
                self.held_rx.push_front(chain);
                break;
            };
            let written = match writer
                .write_all(&header.encode())
                .and_then(|_| writer.write_all(&self.payload))
            {
                Ok(()) => (HEADER_LEN + self.payload.len()) as u32,
                Err(e) => {
                    self.shared
                        .guest_fault(&format!("a receive buffer cannot be written: {e}"));
                    0
                }
            };
            queue.add_used(memory, head, written)?;
            used = true;
        }
        self.held_rx_count.store(self.held_rx.len(), Ordering::SeqCst);
        Ok(used)
    }

    /// Hands the driver's packets to the muxer.
    fn transmit(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        let chains: Vec<_> = queue.iter(memory)?.collect();
        let used = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            match Reader::new(memory, chain) {
                Ok(mut reader) => {
                    let mut raw = [0u8; HEADER_LEN];
                    if reader.read_exact(&mut raw).is_err() {
                        self.shared
                            .guest_fault("a transmit buffer is shorter than a packet header");
                    } else {
                        let header = Header::decode(&raw);
                        let len = header.len as usize;
                        if len > MAX_PAYLOAD || len > reader.available_bytes() {
                            self.shared.guest_fault(&format!(
                                "a packet says {len} bytes of data, its buffer has {} (at most {MAX_PAYLOAD})",
                                reader.available_bytes()
                            ));
                        } else {
                            self.payload.resize(len, 0);
                            match reader.read_exact(&mut self.payload) {
                                Ok(()) => lock(&self.shared.muxer).from_guest(&header, &self.payload),
                                Err(e) => self
                                    .shared
                                    .guest_fault(&format!("a transmit buffer cannot be read: {e}")),
                            }
                        }
                    }
                }
                Err(e) => self
                    .shared
                    .guest_fault(&format!("a transmit buffer is outside guest memory ({e})")),
            }
            queue.add_used(memory, head, 0)?;
        }
        if used && lock(&self.shared.muxer).has_for_guest() {
            // Replies go out on the receive queue, which the backend
            // thread serves once this worker lets go of the lock.
            let _ = self.shared.wake.write(1);
        }
        Ok(used)
    }

    /// Holds the driver's event buffers; writes a transport reset into one
    /// when owed.
    fn events(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        self.held_event.extend(queue.iter(self.memory.clone())?);
        let mut used = false;
        if self.shared.transport_reset.load(Ordering::SeqCst) {
            if let Some(chain) = self.held_event.pop_front() {
                let head = chain.head_index();
                let event = EVENT_TRANSPORT_RESET.to_le_bytes();
                let written = match Writer::new(&*self.memory, chain).map(|mut w| w.write_all(&event)) {
                    Ok(Ok(())) => event.len() as u32,
                    _ => {
                        self.shared.guest_fault("an event buffer cannot take a 4-byte event");
                        0
                    }
                };
                queue.add_used(memory, head, written)?;
                self.shared.transport_reset.store(false, Ordering::SeqCst);
                used = true;
            }
        }
        self.held_event_count.store(self.held_event.len(), Ordering::SeqCst);
        Ok(used)
    }
}

impl QueueHandler for Handler {
    fn process(&mut self, memory: &GuestMemory, index: u16, queue: &mut Queue) -> Result<bool, QueueFailure> {
        let result = match index {
            RX => self.receive(memory, queue),
            TX => self.transmit(memory, queue),
            EVENT => self.events(memory, queue),
            _ => Ok(false),
        };
        result.map_err(|e| QueueFailure::new(index, e))
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        19
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let slot_of = |index: u16| activation.queues.iter().position(|q| q.index == index);
        let rx = slot_of(RX).ok_or_else(|| ActivateError::Queues("the receive queue (0) is not enabled".into()))?;
        if slot_of(TX).is_none() {
            return Err(ActivateError::Queues("the transmit queue (1) is not enabled".into()));
        }
        let event = slot_of(EVENT);
        let (held_rx_count, held_event_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handler = Handler {
            shared: self.shared.clone(),
            memory: Arc::new(activation.memory.clone()),
            payload: Vec::new(),
            held_rx: VecDeque::new(),
            held_rx_count: held_rx_count.clone(),
            held_event: VecDeque::new(),
            held_event_count: held_event_count.clone(),
        };
        self.receive = Some((rx, held_rx_count));
        self.event = event.map(|slot| (slot, held_event_count));
        let worker = Worker::start(
            &format!("virtio-vsock-{}", self.guest_cid),
            handler,
            activation.into_worker_start(),
        )?;
        *lock(&self.shared.receiver) = Some((worker.handle(), rx, event));
        self.worker = Some(worker);
        self.shared.deliver();
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        *lock(&self.shared.receiver) = None;
        self.worker.take().map(Worker::stop)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    fn queue_states(&self) -> Option<Vec<QueueState>> {
        let states = self.worker.as_ref().map(Worker::queue_states)?;
        let states = give_back_held(states, self.receive.as_ref());
        Some(give_back_held(states, self.event.as_ref()))
    }

    fn handover(&mut self, step: Handover) -> Result<(), String> {
        let mut muxer = lock(&self.shared.muxer);
        match step {
            Handover::Release => {
                muxer.unlisten();
                Ok(())
            }
            Handover::Acquire => muxer.listen(),
        }
    }

    fn save_state(&self) -> super::DeviceState {
        let (connections, next_host_port) = lock(&self.shared.muxer).table();
        super::DeviceState::Vsock(VsockState {
            guest_cid: self.guest_cid,
            connections,
            next_host_port,
        })
    }

    fn restore_state(&mut self, state: &super::DeviceState) -> Result<(), String> {
        let super::DeviceState::Vsock(state) = state else {
            return Err(format!("saved as {state:?}, not a vsock device's state"));
        };
        if state.guest_cid != self.guest_cid {
            return Err(format!(
                "saved for guest cid {}, this device is cid {}",
                state.guest_cid, self.guest_cid
            ));
        }
        if state.connections.len() > muxer::MAX_CONNECTIONS {
            return Err(format!(
                "{} connections saved, a device keeps at most {}",
                state.connections.len(),
                muxer::MAX_CONNECTIONS
            ));
        }
        let mut keys = state.connections.clone();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err("a connection is saved twice".into());
        }
        lock(&self.shared.muxer).reset_migrated(&keys, state.next_host_port);
        self.shared.transport_reset.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = lock(&self.shared.muxer).counts;
        vec![
            ("rx_bytes", c.rx_bytes),
            ("tx_bytes", c.tx_bytes),
            ("connections", c.connections),
            ("refused", c.refused),
        ]
    }
}
