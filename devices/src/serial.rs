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

/// The UART's registers and unread input, for migration; mirrors
/// vm-superio's `SerialState` with serde.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// `Self` with the UART registers of `$state`, which vm-superio's
/// `SerialState` and [`SerialDeviceState`] name alike, and `$in_buffer`:
/// one field list for the conversions both ways.
macro_rules! uart_state_from {
    ($state:ident, $in_buffer:expr) => {
        Self {
            baud_divisor_low: $state.baud_divisor_low,
            baud_divisor_high: $state.baud_divisor_high,
            interrupt_enable: $state.interrupt_enable,
            interrupt_identification: $state.interrupt_identification,
            line_control: $state.line_control,
            line_status: $state.line_status,
            modem_control: $state.modem_control,
            modem_status: $state.modem_status,
            scratch: $state.scratch,
            in_buffer: $in_buffer,
        }
    };
}

impl From<vm_superio::serial::SerialState> for SerialDeviceState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        uart_state_from!(s, s.in_buffer)
    }
}

impl From<&SerialDeviceState> for vm_superio::serial::SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        uart_state_from!(s, s.in_buffer.clone())
    }
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

    /// The UART's state.
    pub fn state(&self) -> SerialDeviceState {
        self.uart.state().into()
    }

    /// Puts the UART in `state`, keeping its output and interrupt line.
    pub fn restore(&mut self, state: &SerialDeviceState) -> Result<(), StateError> {
        if state.in_buffer.len() > self.uart.fifo_capacity() {
            return Err(StateError(format!(
                "serial input buffer of {} bytes exceeds the FIFO's {}",
                state.in_buffer.len(),
                self.uart.fifo_capacity()
            )));
        }
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| StateError(e.to_string()))?;
        let events = CountingEvents(self.counters.clone());
        let out = std::mem::replace(self.uart.writer_mut(), Box::new(io::sink()));
        self.uart = Serial::from_state(&state.into(), EventFdTrigger::new(irq), events, out)
            .map_err(|e| StateError(format!("{e:?}")))?;
        Ok(())
    }
}

/// A device state that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid device state: {0}")]
pub struct StateError(pub String);

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
    fn state_round_trips_and_keeps_the_output() {
        let buf = SharedBuf::default();
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut a = SerialDevice::new(irq.try_clone().unwrap(), Box::new(buf.clone()));
        a.write(3, &[0x83]); // DLAB on, 8 bits
        a.write(0, &[0x01]); // divisor low
        a.write(3, &[0x03]); // DLAB off
        a.write(7, &[0x5a]); // scratch
        let state = a.state();
        assert_eq!(
            (state.baud_divisor_low, state.scratch, state.line_control),
            (1, 0x5a, 3)
        );
        let out = SharedBuf::default();
        let mut b = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        b.restore(&state).unwrap();
        assert_eq!(b.state(), state);
        b.write(0, b"z");
        assert_eq!(&*out.0.lock().unwrap(), b"z");
        let mut too_big = state.clone();
        too_big.in_buffer = vec![0; 1 << 20];
        assert!(b.restore(&too_big).is_err());
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
