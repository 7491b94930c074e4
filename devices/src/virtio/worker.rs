//! A device's worker thread: it waits on its queues' eventfds and serves
//! them with the device's [`QueueHandler`], off the vCPU threads.
//!
//! All serving happens under one lock, so pausing is: raise the flag, take
//! the lock once. When [`Worker::pause`] returns, the request being served
//! has finished (its result and used-ring entry are in guest memory) and
//! no other will start until [`Worker::resume`]; requests the driver made
//! available meanwhile stay in the available ring, which migrates with
//! guest memory and the queue's indices.

use super::lock;
use super::{ActiveQueue, GuestMemory, VirtioInterrupt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a queue cannot be served any more (the device then needs a reset).
#[derive(Debug, thiserror::Error)]
#[error("queue {queue}: {reason}")]
pub struct QueueFailure {
    /// The queue.
    pub queue: u16,
    /// What went wrong.
    pub reason: String,
}

impl QueueFailure {
    /// Queue `queue` failed for `reason` (a virtio-queue error, or a host one).
    pub fn new(queue: u16, reason: impl std::fmt::Display) -> Self {
        QueueFailure {
            queue,
            reason: reason.to_string(),
        }
    }
}

/// A device's request handling.
pub trait QueueHandler: Send + 'static {
    /// Serves every chain queue `index` has available: pops them all from
    /// `queue`, adding each to the used ring once done (a device that must
    /// wait for data, as a console's receive queue does, pops and holds the
    /// buffers; the worker serves a queue again only while the driver makes
    /// more available). Returns whether it used any. A malformed request is answered with an error status where the
    /// device type has one; only a queue that cannot be read at all fails.
    fn process(&mut self, memory: &GuestMemory, index: u16, queue: &mut Queue) -> Result<bool, QueueFailure>;

    /// [`process`](Self::process) for a handler that answers requests as
    /// they finish while others are still in flight: after adding used
    /// entries it calls `notify`, which interrupts the driver if it wants
    /// to know. Returns whether it used any it has not notified. It still
    /// returns only once every request it took is answered.
    fn process_notifying(
        &mut self,
        memory: &GuestMemory,
        index: u16,
        queue: &mut Queue,
        notify: &mut dyn FnMut(&mut Queue) -> Result<(), QueueFailure>,
    ) -> Result<bool, QueueFailure> {
        let _ = notify;
        self.process(memory, index, queue)
    }
}

struct Serving<H> {
    handler: H,
    queues: Vec<ActiveQueue>,
    memory: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl<H: QueueHandler> Serving<H> {
    /// Serves queue `slot` until the driver adds nothing more, then
    /// interrupts it if it used anything and the driver wants to know.
    fn serve(&mut self, slot: usize) -> Result<(), QueueFailure> {
        let Serving {
            handler,
            queues,
            memory,
            interrupt,
        } = self;
        let active = &mut queues[slot];
        let index = active.index;
        let fail = |e: virtio_queue::Error| QueueFailure::new(index, e);
        let mut notify = |queue: &mut Queue| -> Result<(), QueueFailure> {
            let wants = queue.needs_notification(memory).map_err(fail)?;
            if wants {
                interrupt.queue(index);
            }
            Ok(())
        };
        let mut used = false;
        loop {
            active.queue.disable_notification(memory).map_err(fail)?;
            used |= handler.process_notifying(memory, active.index, &mut active.queue, &mut notify)?;
            if !active.queue.enable_notification(memory).map_err(fail)? {
                break;
            }
        }
        if used && active.queue.needs_notification(memory).map_err(fail)? {
            interrupt.queue(active.index);
        }
        Ok(())
    }
}

/// Dyn-compatible view of a worker's serving state.
trait Served: Send {
    fn serve_all(&mut self) -> Result<(), QueueFailure>;
    fn serve_slot(&mut self, slot: usize) -> Result<(), QueueFailure>;
    fn states(&self) -> Vec<QueueState>;
    fn into_queues(self: Box<Self>) -> Vec<Queue>;
    fn interrupt(&self) -> Arc<dyn VirtioInterrupt>;
}

impl<H: QueueHandler> Served for Serving<H> {
    fn serve_all(&mut self) -> Result<(), QueueFailure> {
        (0..self.queues.len()).try_for_each(|slot| self.serve(slot))
    }
    fn serve_slot(&mut self, slot: usize) -> Result<(), QueueFailure> {
        self.serve(slot)
    }
    fn states(&self) -> Vec<QueueState> {
        self.queues.iter().map(|q| q.queue.state()).collect()
    }
    fn into_queues(self: Box<Self>) -> Vec<Queue> {
        self.queues.into_iter().map(|q| q.queue).collect()
    }
    fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }
}

/// What a worker serves, from the device's activation.
pub struct WorkerStart {
    /// The queues.
    pub queues: Vec<ActiveQueue>,
    /// Guest memory.
    pub memory: GuestMemory,
    /// Where interrupts go.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Raised when a queue fails (the transport reports DEVICE_NEEDS_RESET).
    pub failed: Arc<AtomicBool>,
    /// Start paused (an incoming VM's devices, until the migration commits).
    pub paused: bool,
}

/// A receive queue's buffers that a device took and holds until data
/// comes (`held`: the queue's slot and how many), given back in `states`:
/// they are the last ones taken, so the saved state says they are still
/// available and a restored device takes them again.
pub fn give_back_held(mut states: Vec<QueueState>, held: Option<&(usize, Arc<AtomicUsize>)>) -> Vec<QueueState> {
    if let Some((slot, held)) = held {
        if let Some(state) = states.get_mut(*slot) {
            state.next_avail = state.next_avail.wrapping_sub(held.load(Ordering::SeqCst) as u16);
        }
    }
    states
}

/// Event tokens besides the queues' slots.
const KILL: u64 = u64::MAX;
const KICK: u64 = u64::MAX - 1;

/// A running worker.
pub struct Worker {
    serving: Arc<Mutex<Option<Box<dyn Served>>>>,
    paused: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    kill: EventFd,
    kick: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `name` serving `queues` with `handler`.
    /// `failed` is raised when a queue fails (the transport then reports
    /// DEVICE_NEEDS_RESET); the interrupt's config change tells the driver.
    pub fn start<H: QueueHandler>(name: &str, handler: H, activation: WorkerStart) -> std::io::Result<Self> {
        let WorkerStart {
            queues,
            memory,
            interrupt,
            failed,
            paused,
        } = activation;
        let epoll = Epoll::new()?;
        for (slot, q) in queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(&q.notify),
                EpollEvent::new(EventSet::IN, slot as u64),
            )?;
        }
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let kick = EventFd::new(EFD_NONBLOCK)?;
        for (fd, token) in [(&kill, KILL), (&kick, KICK)] {
            epoll.ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let notifies: Vec<EventFd> = queues.iter().map(|q| q.notify.try_clone()).collect::<Result<_, _>>()?;
        let serving: Arc<Mutex<Option<Box<dyn Served>>>> = Arc::new(Mutex::new(Some(Box::new(Serving {
            handler,
            queues,
            memory,
            interrupt,
        }))));
        let paused = Arc::new(AtomicBool::new(paused));
        let thread = {
            let (serving, paused, failed) = (serving.clone(), paused.clone(), failed.clone());
            let (kill, kick) = (kill.try_clone()?, kick.try_clone()?);
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || run(epoll, notifies, kill, kick, serving, paused, failed))?
        };
        Ok(Worker {
            serving,
            paused,
            failed,
            kill,
            kick,
            thread: Some(thread),
        })
    }

    /// Stops taking requests once the one being served is done.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        drop(lock(&self.serving));
    }

    /// Takes requests again, serving every queue once for what arrived
    /// while paused.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let _ = self.kick.write(1);
    }

    /// The queues' states (consistent when paused).
    pub fn queue_states(&self) -> Vec<QueueState> {
        lock(&self.serving).as_ref().map(|s| s.states()).unwrap_or_default()
    }

    /// A handle that serves this worker's queues on another thread.
    pub fn handle(&self) -> ServeHandle {
        ServeHandle {
            serving: self.serving.clone(),
            paused: self.paused.clone(),
            failed: self.failed.clone(),
        }
    }

    /// Whether a queue failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stops the thread and gives the queues back.
    pub fn stop(mut self) -> Vec<Queue> {
        self.join();
        lock(&self.serving).take().map(|s| s.into_queues()).unwrap_or_default()
    }

    fn join(&mut self) {
        let _ = self.kill.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}

fn run(
    epoll: Epoll,
    notifies: Vec<EventFd>,
    kill: EventFd,
    kick: EventFd,
    serving: Arc<Mutex<Option<Box<dyn Served>>>>,
    paused: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) {
    let mut events = vec![EpollEvent::default(); notifies.len() + 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker: epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            let result = match token {
                KILL => return,
                KICK => {
                    let _ = kick.read();
                    serve(&serving, &paused, &failed, |s| s.serve_all())
                }
                slot => {
                    let _ = notifies[slot as usize].read();
                    serve(&serving, &paused, &failed, |s| s.serve_slot(slot as usize))
                }
            };
            if let Err(e) = result {
                report_failure(&serving, &failed, &e);
            }
        }
        let _ = &kill;
    }
}

/// A queue failed: the device needs a reset, and the driver is told (once).
fn report_failure(serving: &Mutex<Option<Box<dyn Served>>>, failed: &AtomicBool, e: &QueueFailure) {
    if !failed.swap(true, Ordering::SeqCst) {
        tracing::warn!("virtio device needs a reset: {e}");
        if let Some(s) = lock(serving).as_ref() {
            s.interrupt().config_changed();
        }
    }
}

/// Serves a worker's queue on the caller's thread: a device thread that
/// has data for the guest (frames from a TAP) hands it over without
/// waking the worker, under the worker's lock and subject to its pause.
#[derive(Clone)]
pub struct ServeHandle {
    serving: Arc<Mutex<Option<Box<dyn Served>>>>,
    paused: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl ServeHandle {
    /// Serves queue `slot` now, unless the worker is paused, failed or gone.
    pub fn serve(&self, slot: usize) {
        if let Err(e) = serve(&self.serving, &self.paused, &self.failed, |s| s.serve_slot(slot)) {
            report_failure(&self.serving, &self.failed, &e);
        }
    }
}

/// Serves under the lock, unless paused or failed (a failed device serves
/// nothing until the driver resets it).
fn serve(
    serving: &Mutex<Option<Box<dyn Served>>>,
    paused: &AtomicBool,
    failed: &AtomicBool,
    f: impl FnOnce(&mut dyn Served) -> Result<(), QueueFailure>,
) -> Result<(), QueueFailure> {
    let mut guard = lock(serving);
    match guard.as_mut() {
        Some(s) if !paused.load(Ordering::SeqCst) && !failed.load(Ordering::SeqCst) => f(s.as_mut()),
        _ => Ok(()),
    }
}
