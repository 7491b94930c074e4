//! The POST/debug port (0x80): boot-progress markers with timestamps.
//!
//! Each byte a guest writes is logged with the time since covm started, the
//! way Cloud Hypervisor logs its boot-time markers, and kept so the VMM can
//! report them. Reads return 0.

use crate::bus::PioDevice;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Markers kept at most; a guest that writes the port in a loop must not
/// grow the VMM's memory.
pub const MAX_MARKERS: usize = 256;

/// One marker: the byte and when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The value written.
    pub code: u8,
    /// Time since covm started.
    pub elapsed: Duration,
}

/// The markers seen so far, shared with the VMM.
pub type MarkerLog = Arc<Mutex<Vec<Marker>>>;

/// The debug port device.
pub struct DebugPort {
    start: Instant,
    log: MarkerLog,
}

impl DebugPort {
    /// A debug port timing markers from `start` (covm's start).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            log: MarkerLog::default(),
        }
    }

    /// The shared marker log.
    pub fn log(&self) -> MarkerLog {
        self.log.clone()
    }
}

impl PioDevice for DebugPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let Some(&code) = data.first() else { return };
        let elapsed = self.start.elapsed();
        tracing::info!(
            target: "covm::boot",
            "debug port {code:#04x} at {:.3} ms",
            elapsed.as_secs_f64() * 1e3
        );
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() < MAX_MARKERS {
            log.push(Marker { code, elapsed });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_markers_in_order_and_caps_them() {
        let mut port = DebugPort::new(Instant::now());
        let log = port.log();
        port.write(0, &[1]);
        port.write(0, &[2, 0]);
        port.write(0, &[]);
        let seen: Vec<u8> = log.lock().unwrap().iter().map(|m| m.code).collect();
        assert_eq!(seen, vec![1, 2]);
        {
            let markers = log.lock().unwrap();
            assert!(markers[0].elapsed <= markers[1].elapsed);
        }
        for _ in 0..1000 {
            port.write(0, &[3]);
        }
        assert_eq!(log.lock().unwrap().len(), MAX_MARKERS);
    }
}
