//! What the device tests share: an interrupt recorder and a waiter.

use super::VirtioInterrupt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records the interrupts a device raises.
#[derive(Default)]
pub(crate) struct Irqs {
    pub(crate) queues: Mutex<Vec<u16>>,
    pub(crate) config: AtomicUsize,
}

impl VirtioInterrupt for Irqs {
    fn queue(&self, index: u16) {
        self.queues.lock().unwrap().push(index);
    }
    fn config_changed(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

/// Waits up to 10 s for `done`, failing the test with `what` otherwise.
pub(crate) fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
