//! covm's power device (port 0x600) and the sink for power requests.
//!
//! One byte: [`power::OFF`](covm_guest_abi::ports::power::OFF) powers off,
//! [`power::RESET`](covm_guest_abi::ports::power::RESET) resets, and any value
//! from [`power::FAIL_FIRST`](covm_guest_abi::ports::power::FAIL_FIRST) up
//! powers off reporting that failure code. It is the ACPI-free way for a guest
//! to end its VM; reads return 0.

use crate::bus::PioDevice;
use covm_guest_abi::ports::power;
use std::sync::Arc;

/// What a guest asked of the machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power off, successfully.
    Off,
    /// Reset the machine.
    Reset,
    /// Power off, reporting the guest's failure code.
    Fail(u8),
}

impl PowerAction {
    /// Decodes a byte written to the power port.
    pub fn from_byte(value: u8) -> Self {
        match value {
            power::OFF => Self::Off,
            power::RESET => Self::Reset,
            code => Self::Fail(code),
        }
    }
}

/// Receives power requests from devices; the VMM ends or resets the VM.
pub trait PowerSink: Send + Sync {
    /// The guest asked for `action`.
    fn request(&self, action: PowerAction);
}

/// The power device.
pub struct PowerDevice {
    sink: Arc<dyn PowerSink>,
}

impl PowerDevice {
    /// A power device that reports to `sink`.
    pub fn new(sink: Arc<dyn PowerSink>) -> Self {
        Self { sink }
    }
}

impl PioDevice for PowerDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        // Only the low byte at offset 0 carries the request; wider writes
        // (outw/outl) are accepted for guests that use them.
        if offset == 0 {
            if let Some(&value) = data.first() {
                self.sink.request(PowerAction::from_byte(value));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that remembers every request.
    #[derive(Default)]
    pub struct RecordingSink(pub Mutex<Vec<PowerAction>>);

    impl PowerSink for RecordingSink {
        fn request(&self, action: PowerAction) {
            self.0.lock().unwrap().push(action);
        }
    }

    #[test]
    fn decodes_requests() {
        let sink = Arc::new(RecordingSink::default());
        let mut dev = PowerDevice::new(sink.clone());
        dev.write(0, &[0]);
        dev.write(0, &[1]);
        dev.write(0, &[3, 0, 0, 0]);
        dev.write(1, &[0]);
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![PowerAction::Off, PowerAction::Reset, PowerAction::Fail(3)]
        );
        let mut b = [9u8];
        dev.read(0, &mut b);
        assert_eq!(b, [0]);
    }
}
