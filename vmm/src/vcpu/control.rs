//! Running, pausing and stopping vCPU threads.
//!
//! Every vCPU thread checks the VM's desired state before each `KVM_RUN`.
//! To change it, the controller sets the state and then kicks the threads
//! out of `KVM_RUN` with a real-time signal. A kick that lands just before
//! a vCPU thread enters `KVM_RUN` sets its `immediate_exit` ([`KickExit`]),
//! so that `KVM_RUN` returns at once; the controller still repeats the kick
//! until every thread has acknowledged, for threads that have no run
//! structure armed.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// What the vCPU threads should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Desired {
    /// Run the guest.
    Run = 0,
    /// Park until told otherwise.
    Pause = 1,
    /// Leave the thread.
    Stop = 2,
}

/// How often an unacknowledged kick is repeated.
const KICK_INTERVAL: Duration = Duration::from_micros(500);
/// The throttle's period: each period every vCPU is kicked once and sleeps
/// its share of it (as QEMU's auto-converge does).
pub const THROTTLE_PERIOD: Duration = Duration::from_millis(10);
/// Most a vCPU can be throttled, in percent.
pub const MAX_THROTTLE: u8 = 99;

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This vCPU thread's `kvm_run.immediate_exit` byte, while it runs
    /// (null on every other thread).
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Delivery during KVM_RUN makes it return EINTR. A kick landing just
    // before KVM_RUN (after the thread checked it may run) would be lost
    // and the vCPU would run on until the next re-kick, 0.5 ms later:
    // `immediate_exit` makes that KVM_RUN return at once instead.
    let flag = IMMEDIATE_EXIT.with(Cell::get);
    if !flag.is_null() {
        // SAFETY: set by `KickExit::arm` on this very thread to the byte
        // of its vCPU's kvm_run mapping, which outlives the guard that
        // resets the pointer; a plain byte store is async-signal-safe.
        unsafe { flag.write_volatile(1) };
    }
}

/// While alive, kicks to this thread set its vCPU's `immediate_exit`.
pub struct KickExit(());

impl KickExit {
    /// Arms kicks for the vCPU whose run structure is `run`, on this thread.
    /// The caller keeps the vCPU fd (and so the mapping) alive longer than
    /// the guard; [`RunControl::wait_to_run`] resets the flag before it
    /// decides whether to run.
    pub fn arm(run: &mut kvm_bindings::kvm_run) -> KickExit {
        IMMEDIATE_EXIT.with(|c| c.set(&raw mut run.immediate_exit));
        KickExit(())
    }

    /// Resets this thread's flag (if armed): kicks from now on count.
    fn reset() {
        let flag = IMMEDIATE_EXIT.with(Cell::get);
        if !flag.is_null() {
            // SAFETY: as in `on_kick`: this thread's armed kvm_run byte.
            unsafe { flag.write_volatile(0) };
        }
        // The handler runs on this thread: keep the compiler from moving
        // the reset after the caller's read of the desired state.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
}

impl Drop for KickExit {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// Installs the kick handler; once per process, before any vCPU runs.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), on_kick).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The state shared by a VM's vCPU threads and their controller.
#[derive(Debug)]
pub struct RunControl {
    desired: AtomicU8,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Signalled by each thread that parks, so a pause returns as soon as
    /// the last one did rather than at its next re-kick.
    parked_one: Condvar,
    throttle_percent: AtomicU8,
    throttle_period: AtomicU64,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            desired: AtomicU8::new(Desired::Run as u8),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            parked_one: Condvar::new(),
            throttle_percent: AtomicU8::new(0),
            throttle_period: AtomicU64::new(0),
        }
    }
}

impl RunControl {
    /// The current desired state (cheap: read before every `KVM_RUN`).
    pub fn desired(&self) -> Desired {
        match self.desired.load(Ordering::SeqCst) {
            0 => Desired::Run,
            1 => Desired::Pause,
            _ => Desired::Stop,
        }
    }

    fn set(&self, desired: Desired) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.desired.store(desired as u8, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Called by a vCPU thread before each `KVM_RUN`: parks while paused,
    /// sleeps its throttle share once per throttle period (`seen_period`
    /// is the thread's own record of the last period it slept in), then
    /// says whether to run (`true`) or leave the thread (`false`).
    pub fn wait_to_run(&self, seen_period: &mut u64) -> bool {
        // Before reading the desired state: a kick after this point either
        // finds `Pause` below or makes the coming KVM_RUN return at once.
        KickExit::reset();
        loop {
            match self.desired() {
                Desired::Run => {
                    self.throttle_sleep(seen_period);
                    return true;
                }
                Desired::Pause => self.park(),
                Desired::Stop => return false,
            }
        }
    }

    fn throttle_sleep(&self, seen_period: &mut u64) {
        let period = self.throttle_period.load(Ordering::SeqCst);
        if period == *seen_period {
            return;
        }
        *seen_period = period;
        let percent = u32::from(self.throttle_percent.load(Ordering::SeqCst).min(MAX_THROTTLE));
        if percent > 0 {
            // Sleep p% of a period for every (100 - p)% run: p / (100 - p).
            std::thread::sleep(THROTTLE_PERIOD * percent / (100 - percent));
        }
    }

    /// The throttle in percent.
    pub fn throttle(&self) -> u8 {
        self.throttle_percent.load(Ordering::SeqCst)
    }

    /// Sets the throttle (0 turns it off; the caller runs the kicks).
    pub fn set_throttle(&self, percent: u8) {
        self.throttle_percent.store(percent.min(MAX_THROTTLE), Ordering::SeqCst);
    }

    /// Starts a throttle period: every vCPU sleeps once more, when kicked.
    pub fn next_throttle_period<T>(&self, threads: &[JoinHandle<T>]) {
        self.throttle_period.fetch_add(1, Ordering::SeqCst);
        kick(threads);
    }

    /// Waits until the state is no longer `Pause`, counted as parked meanwhile.
    fn park(&self) {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.parked.fetch_add(1, Ordering::SeqCst);
        self.parked_one.notify_all();
        while self.desired() == Desired::Pause {
            guard = self.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Pauses every thread in `threads`, returning once all are parked.
    ///
    /// It waits for the parking threads' signal, not a fixed interval: a
    /// sleep between the checks made every pause last at least that
    /// interval (0.5 ms of every migration's downtime, measured at 0.65 ms
    /// for 2 vCPUs). The timeout only repeats the kick, for a thread whose
    /// kick found no armed [`KickExit`].
    pub fn pause<T>(&self, threads: &[JoinHandle<T>]) {
        self.set(Desired::Pause);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.parked.load(Ordering::SeqCst) + finished(threads) < threads.len() {
            kick(threads);
            guard = self
                .parked_one
                .wait_timeout(guard, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Lets parked threads run again.
    pub fn resume(&self) {
        self.set(Desired::Run);
    }

    /// Stops and joins every thread.
    pub fn stop<T>(&self, threads: Vec<JoinHandle<T>>) {
        self.set(Desired::Stop);
        while finished(&threads) < threads.len() {
            kick(&threads);
            std::thread::sleep(KICK_INTERVAL);
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn finished<T>(threads: &[JoinHandle<T>]) -> usize {
    threads.iter().filter(|t| t.is_finished()).count()
}

fn kick<T>(threads: &[JoinHandle<T>]) {
    for thread in threads.iter().filter(|t| !t.is_finished()) {
        // A thread that exits between the check and the kill makes this
        // fail harmlessly; the loop re-checks.
        let _ = thread.kill(kick_signal());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_resume_stop_threads_that_block() {
        install_kick_handler().unwrap();
        let control = Arc::new(RunControl::default());
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let control = control.clone();
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    let mut seen = 0;
                    while control.wait_to_run(&mut seen) {
                        // Stands in for KVM_RUN: blocks until a signal arrives.
                        // SAFETY: pause(2) has no preconditions.
                        unsafe { libc::pause() };
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        control.pause(&threads);
        assert_eq!(control.parked.load(Ordering::SeqCst), 3);
        control.resume();
        control.stop(threads);
        assert_eq!(control.desired(), Desired::Stop);
    }
}
