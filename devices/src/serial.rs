//! The 16550 UART on COM1, built on vm-superio's model.

use crate::bus::PioDevice;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's base port.
pub const COM1_PORT: u16 = covm_guest_abi::ports::SERIAL_COM1;
/// Ports the UART occupies.
pub const PORT_COUNT: u16 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by signalling an eventfd; the VMM registers
/// the same eventfd with KVM as an irqfd, so this knows nothing of KVM.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `fd`.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's serial output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// Byte counts of the UART, for the VMM's counters.
#[derive(Debug, Default)]
pub struct SerialCounters {
    /// Bytes written to the output.
    pub tx_bytes: AtomicU64,
    /// Bytes lost because the output failed.
    pub tx_lost: AtomicU64,
}

/// Feeds vm-superio's events into [`SerialCounters`].
struct CountingEvents(Arc<SerialCounters>);

impl SerialEvents for CountingEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.0.tx_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.0.tx_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {}
}

/// COM1.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, CountingEvents, SerialOutput>,
    counters: Arc<SerialCounters>,
}

impl SerialDevice {
    /// A UART writing to `out` and raising its interrupt through `irq`.
    pub fn new(irq: EventFd, out: SerialOutput) -> Self {
        let counters = Arc::new(SerialCounters::default());
        let events = CountingEvents(counters.clone());
        Self {
            uart: Serial::with_events(EventFdTrigger::new(irq), events, out),
            counters,
        }
    }

    /// The UART's byte counters.
    pub fn counters(&self) -> Arc<SerialCounters> {
        self.counters.clone()
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if let (Ok(offset), Some(byte)) = (u8::try_from(offset), data.first_mut()) {
            *byte = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            // A full disk or a closed stdout must not stop the guest; the
            // byte is lost and the operator is told once per failure.
            tracing::warn!("serial output failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_reports_empty_transmitter() {
        let buf = SharedBuf::default();
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(buf.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hi\n");
        assert_eq!(dev.counters().tx_bytes.load(Ordering::Relaxed), 3);
        // Line status register: transmitter holding register empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn transmit_interrupt_signals_the_eventfd() {
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        // Enable the "transmitter holding register empty" interrupt (IER bit 1).
        dev.write(1, &[0x02]);
        dev.write(0, b"x");
        assert!(irq.read().unwrap() >= 1);
    }

    fn libc_nonblock() -> i32 {
        // EFD_NONBLOCK, so a missing interrupt fails the test instead of hanging it.
        0o4000
    }
}
