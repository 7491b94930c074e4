//! COM1 output shared by all CPUs.
//!
//! Each byte is one port write (a VM exit); covm and QEMU take bytes as
//! fast as they come, so the line status register is not polled.

use crate::hw;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use covm_guest_abi::ports;

static LOCK: AtomicBool = AtomicBool::new(false);

struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            hw::outb(ports::SERIAL_COM1, b);
        }
        Ok(())
    }
}

/// Prints `args` as one unit; lines of different CPUs do not interleave.
pub fn print(args: fmt::Arguments) {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let _ = fmt::Write::write_fmt(&mut Com1, args);
    LOCK.store(false, Ordering::Release);
}

/// Prints even if the lock looks stuck (the holder may have panicked).
pub fn print_urgent(args: fmt::Arguments) {
    let mut spins = 0u64;
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
        && spins < 100_000_000
    {
        spins += 1;
        core::hint::spin_loop();
    }
    let _ = fmt::Write::write_fmt(&mut Com1, args);
    LOCK.store(false, Ordering::Release);
}

/// A line built in pieces without an allocator; what does not fit in `N`
/// bytes is cut off (at a character boundary).
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text { buf: [0; N], len: 0 }
    }

    pub fn push(&mut self, args: fmt::Arguments) {
        let _ = fmt::Write::write_fmt(self, args);
    }

    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut take = s.len().min(N - self.len);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::serial::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
