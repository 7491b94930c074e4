//! virtio-net (network device, type 1) over a TAP interface, for Cloud
//! Hypervisor's `--net tap=NAME|fd=N,mac=MAC[,ip=IP,mask=MASK]`.
//!
//! One queue pair: receive (0) and transmit (1). Frames keep the 12-byte
//! `virtio_net_hdr_v1` on both sides (`tap`), so the transmit path copies
//! a chain's bytes to the TAP as they are and the receive path copies a
//! TAP frame into the driver's buffers, setting `num_buffers` to 1. No
//! offloads, no mergeable buffers: a receive buffer must hold a whole
//! frame with its header (1526 bytes for a 1500-byte MTU), or the frame is
//! dropped and counted.
//!
//! A thread of the device's own reads the TAP (non-blocking, woken by
//! `poll`) into a bounded queue of frames and hands them to the guest
//! itself, serving the receive queue under the worker's lock (no wake-up
//! of the worker per frame); the worker serves the transmit queue and the
//! receive queue when the driver posts buffers. Frames
//! that arrive while the VM is paused, or while the driver has posted no
//! buffer, wait in that queue up to [`MAX_PENDING`], beyond which they are
//! dropped, as a NIC drops what its ring cannot take. They are not part of
//! the migrated state: a network may lose frames, and TCP resends.

mod announce;
pub mod tap;
#[cfg(test)]
mod tests;

use super::lock;
use super::worker::{give_back_held, QueueFailure, QueueHandler, ServeHandle, Worker};
use super::{features, ActivateError, Activation, GuestMemory, Handover, VirtioDevice};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tap::{Tap, VNET_HDR_LEN};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Frames kept for the driver while it has no buffer.
pub const MAX_PENDING: usize = 256;
/// The largest frame with its header: a 64 KiB frame is more than any
/// non-offloaded TAP delivers.
const MAX_FRAME: usize = 65536 + VNET_HDR_LEN;
/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_AT: usize = 10;

/// Feature bits of virtio-net (virtio 1.2 §5.1.3).
pub mod net_features {
    /// The device has a MAC address in its configuration.
    pub const MAC: u64 = 1 << 5;
    /// The configuration's status field is valid (link up).
    pub const STATUS: u64 = 1 << 16;
    /// There is a control queue.
    pub const CTRL_VQ: u64 = 1 << 17;
    /// The driver announces itself when the device asks (after a migration).
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
}

/// `status` in the configuration: the link is up.
const LINK_UP: u16 = 1;

/// What the device, its worker and its reader thread share.
#[derive(Default)]
struct Shared {
    /// Frames (header included) read from the TAP, not yet given to the driver.
    pending: Mutex<VecDeque<Vec<u8>>>,
    /// Serves the receive queue on the reader's thread while active (its
    /// slot among the active queues): frames reach the guest without
    /// waking the worker.
    receiver: Mutex<Option<(ServeHandle, usize)>>,
    /// The TAP while attached (not while a migration carries the VM).
    tap: Mutex<Option<Arc<Tap>>>,
    rx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_dropped: AtomicU64,
    tx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
    warned_guest: AtomicBool,
    warned_tap: AtomicBool,
    /// `VIRTIO_NET_S_ANNOUNCE`: the driver is asked to announce itself.
    announce: AtomicBool,
}

impl Shared {
    fn push(&self, frame: Vec<u8>) {
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.rx_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push_back(frame);
    }

    /// Gives the pending frames to the guest now, if the device is active.
    fn deliver(&self) {
        let receiver = lock(&self.receiver).clone();
        if let Some((handle, slot)) = receiver {
            handle.serve(slot);
        }
    }

    fn guest_fault(&self, why: &str) {
        if !self.warned_guest.swap(true, Ordering::Relaxed) {
            tracing::warn!("virtio-net: {why} (further such buffers are not logged)");
        }
    }

    fn tap_error(&self, e: &std::io::Error) {
        if !self.warned_tap.swap(true, Ordering::Relaxed) {
            tracing::warn!("virtio-net: the TAP failed: {e} (further errors are not logged)");
        }
    }
}

/// Reads frames from the TAP into `shared` until `stop` is signalled.
fn read_frames(tap: Arc<Tap>, shared: Arc<Shared>, stop: EventFd) {
    let mut fds = [
        libc::pollfd {
            fd: tap.file().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        // SAFETY: `fds` is an array of two pollfd that lives for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            shared.tap_error(&e);
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let mut read = false;
        loop {
            match tap.file().read(&mut buf) {
                Ok(0) => break,
                Ok(n) if n > VNET_HDR_LEN => {
                    shared.push(buf[..n].to_vec());
                    read = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    shared.tap_error(&e);
                    return;
                }
            }
        }
        if read {
            shared.deliver();
        }
    }
}

/// The TAP and the thread reading it.
struct Attachment {
    tap: Arc<Tap>,
    stop: EventFd,
    reader: std::thread::JoinHandle<()>,
}

impl Attachment {
    fn start(tap: Tap, shared: &Arc<Shared>) -> std::io::Result<Attachment> {
        let tap = Arc::new(tap);
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let reader = {
            let (tap, shared, stop) = (tap.clone(), shared.clone(), stop.try_clone()?);
            std::thread::Builder::new()
                .name(format!("virtio-net-{}", tap.name()))
                .spawn(move || read_frames(tap, shared, stop))?
        };
        *lock(&shared.tap) = Some(tap.clone());
        Ok(Attachment { tap, stop, reader })
    }

    /// Stops the reader; the TAP closes when the last reference goes.
    fn stop(self, shared: &Shared) -> Arc<Tap> {
        let _ = self.stop.write(1);
        let _ = self.reader.join();
        *lock(&shared.tap) = None;
        self.tap
    }
}

/// How the device gets its TAP back after letting it go.
#[derive(Debug, Clone)]
pub struct Reattach {
    /// The interface's name.
    pub name: String,
    /// The host side's address and netmask, set if the interface is down
    /// (a TAP created anew, on another host).
    pub ip: std::net::Ipv4Addr,
    /// Its netmask.
    pub mask: std::net::Ipv4Addr,
}

/// The network device.
pub struct Net {
    attachment: Option<Attachment>,
    /// Set for a TAP opened by name: it can be let go and taken again
    /// around a live migration (an inherited descriptor cannot).
    reattach: Option<Reattach>,
    mac: [u8; 6],
    shared: Arc<Shared>,
    worker: Option<Worker>,
    /// The receive queue's slot among the active queues, and how many of
    /// its buffers the worker holds for frames to come.
    receive: Option<(usize, Arc<AtomicUsize>)>,
    /// The driver's interrupt and whether it announces itself (it took
    /// GUEST_ANNOUNCE and the control queue), while active.
    announcer: Option<(Arc<dyn super::VirtioInterrupt>, bool)>,
    /// Restored from a migration: announce the guest when it resumes.
    announce_pending: bool,
}

impl Net {
    /// A device on `tap` with the guest's MAC address `mac`; starts the
    /// thread reading the TAP. With `reattach`, the TAP can be handed over
    /// in a live migration.
    pub fn new(tap: Tap, mac: [u8; 6], reattach: Option<Reattach>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let reattach = reattach.map(|r| Reattach {
            name: tap.name().to_string(),
            ..r
        });
        let attachment = Attachment::start(tap, &shared)?;
        Ok(Net {
            attachment: Some(attachment),
            reattach: reattach.clone(),
            mac,
            shared,
            worker: None,
            receive: None,
            announcer: None,
            announce_pending: false,
        })
    }

    /// A device whose TAP is taken only at [`Handover::Acquire`]: an
    /// incoming VM's, while the source still holds it.
    pub fn detached(reattach: Reattach, mac: [u8; 6]) -> Self {
        Net {
            attachment: None,
            reattach: Some(reattach),
            mac,
            shared: Arc::default(),
            worker: None,
            receive: None,
            announcer: None,
            announce_pending: false,
        }
    }

    /// The TAP's name, while attached.
    pub fn tap_name(&self) -> Option<&str> {
        self.attachment.as_ref().map(|a| a.tap.name())
    }

    /// Lets the TAP go, keeping the interface (persistent) for the covm
    /// that takes it next; frames not yet given to the guest are lost.
    fn detach(&mut self) -> Result<(), String> {
        let Some(reattach) = &self.reattach else {
            return Err("a TAP passed as a descriptor cannot be handed to another covm".into());
        };
        let Some(attachment) = self.attachment.take() else {
            return Ok(());
        };
        let tap = attachment.stop(&self.shared);
        tap.set_persist(true)
            .map_err(|e| format!("tap={}: cannot keep it for the next covm: {e}", reattach.name))?;
        lock(&self.shared.pending).clear();
        Ok(())
    }

    /// Takes the TAP (again): attaches to the interface the last holder
    /// kept, or creates it, and lets it go with this covm.
    fn attach(&mut self) -> Result<(), String> {
        if self.attachment.is_some() {
            return Ok(());
        }
        let Some(r) = self.reattach.clone() else {
            return Err("no TAP to attach to".into());
        };
        let tap = Tap::open(&r.name).map_err(|e| e.to_string())?;
        if !tap.is_up().map_err(|e| format!("tap={}: {e}", r.name))? {
            tap.configure(r.ip, r.mask).map_err(|e| e.to_string())?;
        }
        tap.set_persist(false)
            .map_err(|e| format!("tap={}: cannot make it end with this covm: {e}", r.name))?;
        self.attachment = Some(Attachment::start(tap, &self.shared).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        let announce = if self.shared.announce.load(Ordering::SeqCst) {
            announce::STATUS_ANNOUNCE
        } else {
            0
        };
        c[6..8].copy_from_slice(&(LINK_UP | announce).to_le_bytes());
        // max_virtqueue_pairs: one.
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(attachment) = self.attachment.take() {
            attachment.stop(&self.shared);
        }
    }
}

/// A receive buffer taken from the queue, kept until a frame comes.
type Held = DescriptorChain<Arc<GuestMemory>>;

/// The queues' handling on the worker.
struct Handler {
    shared: Arc<Shared>,
    buffer: Vec<u8>,
    /// Guest memory the held chains refer to (the worker's regions).
    memory: Arc<GuestMemory>,
    /// Receive buffers taken from the available ring, oldest first: the
    /// worker serves a queue until the driver has nothing more available,
    /// so they are taken at once and kept until frames come; giving them
    /// back is moving `next_avail` back by their number
    /// ([`Net::queue_states`]).
    held: VecDeque<Held>,
    held_count: Arc<AtomicUsize>,
}

const RX: u16 = 0;
const TX: u16 = 1;
/// The control queue (after the one queue pair).
const CTRL: u16 = 2;
/// The control queue's size.
const CTRL_QUEUE_SIZE: u16 = 64;

impl Handler {
    /// Takes every available receive buffer, then fills them in order
    /// with the pending frames.
    fn receive(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        self.held.extend(queue.iter(self.memory.clone())?);
        let mut used = false;
        while !self.held.is_empty() {
            let Some(mut frame) = lock(&self.shared.pending).pop_front() else {
                break;
            };
            let Some(chain) = self.held.pop_front() else { break };
            let head = chain.head_index();
            let written = match Writer::new(&*self.memory, chain) {
                Ok(mut writer) if writer.available_bytes() >= frame.len() => {
                    frame[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&1u16.to_le_bytes());
                    match writer.write_all(&frame) {
                        Ok(()) => {
                            self.shared.rx_frames.fetch_add(1, Ordering::Relaxed);
                            self.shared
                                .rx_bytes
                                .fetch_add((frame.len() - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                            frame.len() as u32
                        }
                        Err(e) => {
                            self.shared
                                .guest_fault(&format!("a receive buffer cannot be written: {e}"));
                            self.shared.rx_dropped.fetch_add(1, Ordering::Relaxed);
                            0
                        }
                    }
                }
                Ok(writer) => {
                    self.shared.guest_fault(&format!(
                        "a receive buffer of {} bytes cannot hold a frame of {} with its header",
                        writer.available_bytes(),
                        frame.len()
                    ));
                    self.shared.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    0
                }
                Err(e) => {
                    self.shared
                        .guest_fault(&format!("a receive buffer is outside guest memory ({e})"));
                    self.shared.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            queue.add_used(memory, head, written)?;
            used = true;
        }
        self.held_count.store(self.held.len(), Ordering::SeqCst);
        Ok(used)
    }

    /// Sends the driver's frames to the TAP.
    fn transmit(&mut self, memory: &GuestMemory, queue: &mut Queue) -> Result<bool, virtio_queue::Error> {
        let chains: Vec<_> = queue.iter(memory)?.collect();
        let used = !chains.is_empty();
        for chain in chains {
            let head = chain.head_index();
            match Reader::new(memory, chain) {
                Ok(mut reader) => {
                    let len = reader.available_bytes();
                    if !(VNET_HDR_LEN + 14..=MAX_FRAME).contains(&len) {
                        self.shared.guest_fault(&format!(
                            "a frame of {len} bytes with its header (a header and an Ethernet header at least, \
                             {MAX_FRAME} at most)"
                        ));
                        self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.buffer.resize(len, 0);
                        let tap = lock(&self.shared.tap).clone();
                        match reader.read_exact(&mut self.buffer) {
                            Ok(()) if tap.is_none() => {
                                self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(()) => match tap.as_ref().map_or(Ok(0), |t| t.file().write(&self.buffer)) {
                                Ok(_) => {
                                    self.shared.tx_frames.fetch_add(1, Ordering::Relaxed);
                                    self.shared
                                        .tx_bytes
                                        .fetch_add((len - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    self.shared.tap_error(&e);
                                    self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                                }
                            },
                            Err(e) => {
                                self.shared
                                    .guest_fault(&format!("a transmit buffer cannot be read: {e}"));
                                self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(e) => {
                    self.shared
                        .guest_fault(&format!("a transmit buffer is outside guest memory ({e})"));
                    self.shared.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            queue.add_used(memory, head, 0)?;
        }
        Ok(used)
    }
}

impl QueueHandler for Handler {
    fn process(&mut self, memory: &GuestMemory, index: u16, queue: &mut Queue) -> Result<bool, QueueFailure> {
        let result = match index {
            RX => self.receive(memory, queue),
            TX => self.transmit(memory, queue),
            CTRL => {
                let shared = &self.shared;
                announce::serve_control(memory, queue, || shared.announce.store(false, Ordering::SeqCst))
            }
            _ => Ok(false),
        };
        result.map_err(|e| QueueFailure::new(index, e))
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        1
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE, CTRL_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | net_features::MAC
            | net_features::STATUS
            | net_features::CTRL_VQ
            | net_features::GUEST_ANNOUNCE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let slot = activation
            .queues
            .iter()
            .position(|q| q.index == RX)
            .ok_or_else(|| ActivateError::Queues("the receive queue (0) is not enabled".into()))?;
        if !activation.queues.iter().any(|q| q.index == TX) {
            return Err(ActivateError::Queues("the transmit queue (1) is not enabled".into()));
        }
        let announces = activation.acked_features & (net_features::GUEST_ANNOUNCE | net_features::CTRL_VQ)
            == net_features::GUEST_ANNOUNCE | net_features::CTRL_VQ
            && activation.queues.iter().any(|q| q.index == CTRL);
        self.announcer = Some((activation.interrupt.clone(), announces));
        let held_count = Arc::new(AtomicUsize::new(0));
        let handler = Handler {
            shared: self.shared.clone(),
            buffer: Vec::new(),
            memory: Arc::new(activation.memory.clone()),
            held: VecDeque::new(),
            held_count: held_count.clone(),
        };
        self.receive = Some((slot, held_count));
        let name = format!("virtio-net-{}", self.tap_name().unwrap_or("detached"));
        let worker = Worker::start(&name, handler, activation.into_worker_start())?;
        *lock(&self.shared.receiver) = Some((worker.handle(), slot));
        self.worker = Some(worker);
        // Frames that came while inactive.
        self.shared.deliver();
        Ok(())
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        *lock(&self.shared.receiver) = None;
        self.announcer = None;
        self.shared.announce.store(false, Ordering::SeqCst);
        self.worker.take().map(Worker::stop)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// Takes requests again; the first time after a migration, the guest
    /// is announced where it now is.
    fn resume(&mut self) {
        if let Some(w) = self.worker() {
            w.resume();
        }
        if std::mem::take(&mut self.announce_pending) {
            announce::announce(&self.shared, self.mac, self.announcer.as_ref());
        }
    }

    /// A migrated interface has no state beyond its queues; restoring one
    /// means the guest moved, so it is announced at its resumption.
    fn restore_state(&mut self, state: &super::DeviceState) -> Result<(), String> {
        match state {
            super::DeviceState::Stateless => {
                self.announce_pending = true;
                Ok(())
            }
            other => Err(format!(
                "saved with {other:?}, a network device keeps no state of its own"
            )),
        }
    }

    /// The receive buffers the worker holds are given back: the state
    /// says they are still available, so a restored device takes them again.
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        let states = self.worker.as_ref().map(Worker::queue_states)?;
        Some(give_back_held(states, self.receive.as_ref()))
    }

    fn handover(&mut self, step: Handover) -> Result<(), String> {
        match step {
            Handover::Release => self.detach(),
            Handover::Acquire => self.attach(),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared;
        vec![
            ("rx_bytes", s.rx_bytes.load(Ordering::Relaxed)),
            ("rx_frames", s.rx_frames.load(Ordering::Relaxed)),
            ("tx_bytes", s.tx_bytes.load(Ordering::Relaxed)),
            ("tx_frames", s.tx_frames.load(Ordering::Relaxed)),
            ("rx_dropped", s.rx_dropped.load(Ordering::Relaxed)),
            ("tx_dropped", s.tx_dropped.load(Ordering::Relaxed)),
        ]
    }
}
