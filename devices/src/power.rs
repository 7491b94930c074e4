//! covm's power device (port 0x600) and the sink for power requests.
//!
//! One byte: [`power::OFF`] powers off,
//! [`power::RESET`] resets, and any value
//! from [`power::FAIL_FIRST`] up
//! powers off reporting that failure code. It is the ACPI-free way for a guest
//! to end its VM. A read returns
//! [`power::READ_BUTTON_PRESSED`]
//! once after the VMM pressed the [`PowerButton`], else 0.

use crate::bus::PioDevice;
use covm_guest_abi::ports::power;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The VM's power button: the VMM presses it (`vm.power-button`), the guest
/// sees one press on its next read of the power port. Presses the guest has
/// not read yet count once.
#[derive(Debug, Clone, Default)]
pub struct PowerButton(Arc<AtomicBool>);

impl PowerButton {
    /// Presses the button.
    pub fn press(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a press waits for the guest.
    pub fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Takes the waiting press, if any.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

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
    button: PowerButton,
}

impl PowerDevice {
    /// A power device that reports to `sink` and shows `button`'s presses.
    pub fn new(sink: Arc<dyn PowerSink>, button: PowerButton) -> Self {
        Self { sink, button }
    }
}

impl PioDevice for PowerDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && self.button.take() {
            if let Some(first) = data.first_mut() {
                *first = power::READ_BUTTON_PRESSED;
            }
        }
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
        let mut dev = PowerDevice::new(sink.clone(), PowerButton::default());
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

    #[test]
    fn a_press_is_read_once() {
        let button = PowerButton::default();
        let mut dev = PowerDevice::new(Arc::new(RecordingSink::default()), button.clone());
        button.press();
        button.press();
        assert!(button.pending());
        let mut b = [9u8; 4];
        dev.read(0, &mut b);
        assert_eq!(b, [power::READ_BUTTON_PRESSED, 0, 0, 0]);
        assert!(!button.pending());
        dev.read(0, &mut b);
        assert_eq!(b, [power::READ_NOTHING; 4]);
    }
}
