//! A bandwidth cap on a migration stream: writes are paced so that, over
//! any stretch longer than a few milliseconds, the stream carries at most
//! the given bytes per second.
//!
//! Operators cap a migration so that it leaves the host's link to the
//! guests (QEMU's `max-bandwidth` does the same). The pace is kept by
//! sleeping after each write until the bytes written so far are due; idle
//! time earns at most [`MAX_CREDIT`] of credit, so a stream that waited
//! (for the destination, for the agent) does not then burst above the cap.
//! The engine measures the capped link like any other, so convergence and
//! auto-converge see the cap.

use crate::transport::Stream;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The most idle time a paced stream may spend at once afterwards.
pub const MAX_CREDIT: Duration = Duration::from_millis(10);

/// Bytes written per pacing step: one step's sleep is at most this long at
/// the cap (at the lowest cap, 1 MiB/s, 64 ms).
const STEP: usize = 64 << 10;

/// The lowest cap: below it a migration of any real guest takes hours.
pub const MIN_BANDWIDTH: u64 = 1 << 20;

/// A [`Stream`] whose writes carry at most `bytes_per_s`.
pub struct Paced {
    inner: Box<dyn Stream>,
    bytes_per_s: u64,
    /// When the bytes written so far are due at the cap.
    due: Option<Instant>,
}

impl Paced {
    /// Caps `inner` at `bytes_per_s` (at least [`MIN_BANDWIDTH`], which
    /// callers check and name in their own errors).
    pub fn new(inner: Box<dyn Stream>, bytes_per_s: u64) -> Self {
        debug_assert!(bytes_per_s >= MIN_BANDWIDTH);
        Paced {
            inner,
            bytes_per_s: bytes_per_s.max(1),
            due: None,
        }
    }

    /// Accounts for `n` bytes written now and returns how long to wait
    /// before the next write.
    fn account(&mut self, n: usize, now: Instant) -> Duration {
        let earliest = now.checked_sub(MAX_CREDIT).unwrap_or(now);
        let from = self.due.map_or(now, |due| due.max(earliest));
        let due = from + Duration::from_secs_f64(n as f64 / self.bytes_per_s as f64);
        self.due = Some(due);
        due.saturating_duration_since(now)
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(STEP)])?;
        let wait = self.account(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Stream for Paced {
    fn set_io_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_io_timeout(timeout)
    }

    fn peer(&self) -> String {
        format!("{} (capped at {} bytes/s)", self.inner.peer(), self.bytes_per_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn paced(bytes_per_s: u64) -> Paced {
        let (a, _b) = UnixStream::pair().unwrap();
        Paced::new(Box::new(a), bytes_per_s)
    }

    /// Back-to-back writes are due one after another at the cap.
    #[test]
    fn writes_are_due_at_the_cap() {
        let mut p = paced(MIN_BANDWIDTH);
        let t = Instant::now();
        assert_eq!(p.account(1 << 20, t), Duration::from_secs(1));
        assert_eq!(p.account(1 << 19, t), Duration::from_millis(1500));
        // Half a second later, one second of writes is still owed.
        assert_eq!(p.account(0, t + Duration::from_millis(500)), Duration::from_secs(1));
    }

    /// Idle time earns at most MAX_CREDIT.
    #[test]
    fn idle_time_earns_little_credit() {
        let mut p = paced(100 << 20);
        let t = Instant::now();
        p.account(1 << 20, t); // due at t + 10 ms
        let later = t + Duration::from_secs(5);
        // 100 MiB/s: 10 ms of credit covers 1 MiB; 2 MiB then waits 10 ms.
        let wait = p.account(2 << 20, later);
        assert_eq!(wait, Duration::from_millis(10));
    }

    /// A real stream at a cap: 512 KiB at 2 MiB/s takes about 250 ms, the
    /// bytes arrive intact, and a read passes through.
    #[test]
    fn a_paced_stream_carries_bytes_at_the_cap() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut p = Paced::new(Box::new(a), 2 << 20);
        let data: Vec<u8> = (0..512 << 10).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 512 << 10];
            b.read_exact(&mut got).unwrap();
            b.write_all(b"ok").unwrap();
            got
        });
        let started = Instant::now();
        p.write_all(&data).unwrap();
        let took = started.elapsed();
        assert_eq!(reader.join().unwrap(), data);
        // Never faster than the cap (minus the credit): a lower bound, which
        // a slow machine cannot break.
        assert!(took >= Duration::from_millis(250) - MAX_CREDIT, "{took:?}");
        let mut ok = [0u8; 2];
        p.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok");
        assert!(p.peer().contains("capped at 2097152 bytes/s"));
    }
}
