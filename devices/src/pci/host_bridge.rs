//! The host bridge at 0000:00:00.0, as Cloud Hypervisor presents its root
//! (Intel vendor ID, device 0x0d57, class host bridge): a guest's PCI probe
//! starts there.

use super::bus::PciFunction;
use super::config::{Identity, PciConfig};

/// The host bridge.
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    /// Intel 0x0d57, class 06/00/00.
    pub fn new() -> Self {
        HostBridge {
            config: PciConfig::new(Identity {
                vendor: 0x8086,
                device: 0x0d57,
                revision: 0,
                class: 0x06_00_00,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}
