//! A minimal i8042 keyboard controller: enough for the reset line.
//!
//! Guests (Linux's `reboot=k`, many firmwares) reset the machine by writing
//! command 0xfe ("pulse output line 0") to the command port. covm has no
//! keyboard, so the data port reads as empty and the status says so.

use crate::bus::PioDevice;
use crate::power::{PowerAction, PowerSink};
use std::sync::Arc;

/// The data port.
pub const DATA_PORT: u16 = 0x60;
/// The command/status port.
pub const COMMAND_PORT: u16 = 0x64;
/// Offset of the command port from the data port on the bus.
const COMMAND_OFFSET: u16 = COMMAND_PORT - DATA_PORT;
/// "Pulse output line": 0xfe pulses bit 0, the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller, placed at ports 0x60..=0x64.
pub struct I8042 {
    sink: Arc<dyn PowerSink>,
}

impl I8042 {
    /// A controller that reports resets to `sink`.
    pub fn new(sink: Arc<dyn PowerSink>) -> Self {
        Self { sink }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty; data: nothing.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.sink.request(PowerAction::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::tests::RecordingSink;

    #[test]
    fn reset_command_resets() {
        let sink = Arc::new(RecordingSink::default());
        let mut dev = I8042::new(sink.clone());
        dev.write(0, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[0xd1]);
        assert!(sink.0.lock().unwrap().is_empty());
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(*sink.0.lock().unwrap(), vec![PowerAction::Reset]);
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
