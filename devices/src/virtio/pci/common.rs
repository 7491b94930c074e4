//! The common configuration structure (virtio 1.2 §4.1.4.3): feature
//! negotiation, device status, and each queue's size, vector and rings, as
//! the driver writes them before DRIVER_OK.

use serde::{Deserialize, Serialize};

/// "No vector" for a queue or the configuration.
pub const NO_VECTOR: u16 = 0xffff;
/// Bytes of the structure (up to `queue_reset`).
pub const LEN: u64 = 0x3c;

mod reg {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    pub const QUEUE_RESET: u64 = 0x3a;
}

/// One queue as the driver configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// The device's maximum.
    pub max_size: u16,
    /// The size the driver chose (starts at the maximum).
    pub size: u16,
    /// Its MSI-X vector.
    pub vector: u16,
    /// The driver enabled it.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring (driver area) address.
    pub driver: u64,
    /// Used ring (device area) address.
    pub device: u64,
}

impl QueueConfig {
    fn reset(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// The structure's state (it migrates as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommonConfig {
    /// Which 32 feature bits `device_feature` shows.
    pub device_feature_select: u32,
    /// Which 32 feature bits `driver_feature` takes.
    pub driver_feature_select: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// The configuration-change vector.
    pub config_vector: u16,
    /// Device status.
    pub status: u8,
    /// Bumped when the device configuration changes.
    pub generation: u8,
    /// The queue the `queue_*` registers show.
    pub queue_select: u16,
    /// Each queue.
    pub queues: Vec<QueueConfig>,
}

/// What a write asks the transport to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more.
    None,
    /// The driver wrote 0 to the status: reset the device.
    Reset,
    /// The driver set FEATURES_OK: check its features.
    FeaturesOk,
    /// The driver set DRIVER_OK: start the device.
    DriverOk,
}

impl CommonConfig {
    /// The structure at reset for queues of `max_sizes`.
    pub fn new(max_sizes: &[u16]) -> Self {
        CommonConfig {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            queues: max_sizes.iter().map(|&m| QueueConfig::reset(m)).collect(),
        }
    }

    /// Back to reset (the generation keeps counting).
    pub fn reset(&mut self) {
        let max: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        let generation = self.generation;
        *self = CommonConfig::new(&max);
        self.generation = generation;
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The register value at `offset` (its start), or `None` past the end.
    fn register(&self, offset: u64, offered: u64) -> Option<(u64, u64)> {
        let q = self.selected();
        let half = |features: u64, select: u32| match select {
            0 => features & 0xffff_ffff,
            1 => features >> 32,
            _ => 0,
        };
        let (start, value) = match offset {
            0x00..=0x03 => (reg::DEVICE_FEATURE_SELECT, u64::from(self.device_feature_select)),
            0x04..=0x07 => (reg::DEVICE_FEATURE, half(offered, self.device_feature_select)),
            0x08..=0x0b => (reg::DRIVER_FEATURE_SELECT, u64::from(self.driver_feature_select)),
            0x0c..=0x0f => (
                reg::DRIVER_FEATURE,
                half(self.driver_features, self.driver_feature_select),
            ),
            0x10..=0x11 => (reg::CONFIG_MSIX_VECTOR, u64::from(self.config_vector)),
            0x12..=0x13 => (reg::NUM_QUEUES, self.queues.len() as u64),
            0x14 => (reg::DEVICE_STATUS, u64::from(self.status)),
            0x15 => (reg::CONFIG_GENERATION, u64::from(self.generation)),
            0x16..=0x17 => (reg::QUEUE_SELECT, u64::from(self.queue_select)),
            0x18..=0x19 => (reg::QUEUE_SIZE, q.map_or(0, |q| u64::from(q.size))),
            0x1a..=0x1b => (
                reg::QUEUE_MSIX_VECTOR,
                q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            ),
            0x1c..=0x1d => (reg::QUEUE_ENABLE, q.map_or(0, |q| u64::from(q.enabled))),
            0x1e..=0x1f => (reg::QUEUE_NOTIFY_OFF, u64::from(self.queue_select)),
            0x20..=0x27 => (reg::QUEUE_DESC, q.map_or(0, |q| q.desc)),
            0x28..=0x2f => (reg::QUEUE_DRIVER, q.map_or(0, |q| q.driver)),
            0x30..=0x37 => (reg::QUEUE_DEVICE, q.map_or(0, |q| q.device)),
            0x38..=0x39 => (reg::QUEUE_NOTIFY_DATA, u64::from(self.queue_select)),
            0x3a..=0x3b => (reg::QUEUE_RESET, 0),
            _ => return None,
        };
        Some((start, value))
    }

    /// Reads `data.len()` bytes at `offset` (0 past the end). `offered`
    /// is the device's features; `needs_reset` adds DEVICE_NEEDS_RESET to
    /// the status.
    pub fn read(&self, offset: u64, data: &mut [u8], offered: u64, needs_reset: bool) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = match self.register(at, offered) {
                Some((start, mut value)) => {
                    if start == reg::DEVICE_STATUS && needs_reset {
                        value |= u64::from(super::super::status::DEVICE_NEEDS_RESET);
                    }
                    (value >> (8 * (at - start))) as u8
                }
                None => 0,
            };
        }
    }

    /// Writes `data` at `offset`; `vectors` is the MSI-X table's size (a
    /// vector past it reads back as [`NO_VECTOR`], as the spec asks).
    pub fn write(&mut self, offset: u64, data: &[u8], vectors: u16) -> Action {
        if data.is_empty() || data.len() > 8 {
            return Action::None;
        }
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let vector = |v: u64| if v < u64::from(vectors) { v as u16 } else { NO_VECTOR };
        let features_locked = self.status & super::super::status::FEATURES_OK != 0;
        let queues_locked = self.status & super::super::status::DRIVER_OK != 0;
        let select = usize::from(self.queue_select);
        match offset {
            reg::DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            reg::DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            reg::DRIVER_FEATURE if !features_locked => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | (value & 0xffff_ffff),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value & 0xffff_ffff) << 32,
                _ => {}
            },
            reg::CONFIG_MSIX_VECTOR => self.config_vector = vector(value),
            reg::DEVICE_STATUS => return self.write_status(value as u8),
            reg::QUEUE_SELECT => self.queue_select = value as u16,
            _ if queues_locked => {}
            _ => {
                let Some(q) = self.queues.get_mut(select) else {
                    return Action::None;
                };
                let set_half = |field: &mut u64, at: u64, start: u64| {
                    if at == start && data.len() == 8 {
                        *field = value;
                    } else if at == start {
                        *field = (*field & !0xffff_ffff) | (value & 0xffff_ffff);
                    } else {
                        *field = (*field & 0xffff_ffff) | (value & 0xffff_ffff) << 32;
                    }
                };
                match offset {
                    reg::QUEUE_SIZE if !q.enabled => q.size = value as u16,
                    reg::QUEUE_MSIX_VECTOR => q.vector = vector(value),
                    reg::QUEUE_ENABLE if value & 1 == 1 => q.enabled = true,
                    reg::QUEUE_DESC | 0x24 if !q.enabled => set_half(&mut q.desc, offset, reg::QUEUE_DESC),
                    reg::QUEUE_DRIVER | 0x2c if !q.enabled => set_half(&mut q.driver, offset, reg::QUEUE_DRIVER),
                    reg::QUEUE_DEVICE | 0x34 if !q.enabled => set_half(&mut q.device, offset, reg::QUEUE_DEVICE),
                    _ => {}
                }
            }
        }
        Action::None
    }

    fn write_status(&mut self, new: u8) -> Action {
        use super::super::status::{DRIVER_OK, FEATURES_OK};
        if new == 0 {
            return Action::Reset;
        }
        let old = self.status;
        // Bits are only added (clearing one is the driver's mistake; the
        // spec allows only a reset to clear them).
        self.status |= new;
        if old & FEATURES_OK == 0 && new & FEATURES_OK != 0 {
            return Action::FeaturesOk;
        }
        if old & DRIVER_OK == 0 && new & DRIVER_OK != 0 {
            return Action::DriverOk;
        }
        Action::None
    }

    /// Checks a saved structure against the device: as many queues with the
    /// same maximums, sizes powers of two within them, vectors within the
    /// table, features the device offers.
    pub fn check(&self, max_sizes: &[u16], offered: u64, vectors: u16) -> Result<(), String> {
        if self.driver_features & !offered != 0 {
            return Err(format!(
                "the driver's features {:#x} include {:#x}, which the device does not offer",
                self.driver_features,
                self.driver_features & !offered
            ));
        }
        let known = |v: u16| v == NO_VECTOR || v < vectors;
        if !known(self.config_vector) {
            return Err(format!(
                "configuration vector {} is past the {vectors}-vector table",
                self.config_vector
            ));
        }
        if self.queues.len() != max_sizes.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                self.queues.len(),
                max_sizes.len()
            ));
        }
        for (i, (q, &max)) in self.queues.iter().zip(max_sizes).enumerate() {
            if q.max_size != max {
                return Err(format!(
                    "queue {i}: maximum size {} saved, the device's is {max}",
                    q.max_size
                ));
            }
            if q.enabled && (q.size == 0 || !q.size.is_power_of_two() || q.size > max) {
                return Err(format!("queue {i}: size {} (a power of two up to {max})", q.size));
            }
            if !known(q.vector) {
                return Err(format!(
                    "queue {i}: vector {} is past the {vectors}-vector table",
                    q.vector
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::status;

    fn read(c: &CommonConfig, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(offset, &mut b[..len], 0x1_0000_0206, false);
        u64::from_le_bytes(b)
    }

    #[test]
    fn features_are_read_and_acked_in_halves() {
        let mut c = CommonConfig::new(&[256]);
        assert_eq!(read(&c, 0x04, 4), 0x206);
        c.write(0x00, &1u32.to_le_bytes(), 2);
        assert_eq!(read(&c, 0x04, 4), 1);
        c.write(0x00, &7u32.to_le_bytes(), 2);
        assert_eq!(read(&c, 0x04, 4), 0);
        c.write(0x0c, &0x200u32.to_le_bytes(), 2);
        c.write(0x08, &1u32.to_le_bytes(), 2);
        c.write(0x0c, &1u32.to_le_bytes(), 2);
        assert_eq!(c.driver_features, 0x1_0000_0200);
        assert_eq!(c.write(0x14, &[status::FEATURES_OK], 2), Action::FeaturesOk);
        c.write(0x0c, &0u32.to_le_bytes(), 2);
        assert_eq!(c.driver_features, 0x1_0000_0200, "locked after FEATURES_OK");
    }

    #[test]
    fn queues_are_configured_until_driver_ok() {
        let mut c = CommonConfig::new(&[256, 128]);
        assert_eq!(read(&c, 0x12, 2), 2);
        c.write(0x16, &1u16.to_le_bytes(), 2);
        assert_eq!(read(&c, 0x18, 2), 128);
        assert_eq!(read(&c, 0x1e, 2), 1, "notify offset is the index");
        c.write(0x18, &64u16.to_le_bytes(), 2);
        c.write(0x1a, &1u16.to_le_bytes(), 2);
        c.write(0x20, &0x1000u32.to_le_bytes(), 2);
        c.write(0x24, &1u32.to_le_bytes(), 2);
        c.write(0x28, &0x2000u64.to_le_bytes(), 2);
        c.write(0x30, &0x3000u64.to_le_bytes(), 2);
        c.write(0x1c, &1u16.to_le_bytes(), 2);
        assert_eq!(
            c.queues[1],
            QueueConfig {
                max_size: 128,
                size: 64,
                vector: 1,
                enabled: true,
                desc: 0x1_0000_1000,
                driver: 0x2000,
                device: 0x3000
            }
        );
        c.write(0x18, &32u16.to_le_bytes(), 2);
        assert_eq!(c.queues[1].size, 64, "an enabled queue keeps its size");
        c.write(0x1a, &5u16.to_le_bytes(), 2);
        assert_eq!(read(&c, 0x1a, 2), u64::from(NO_VECTOR), "a vector past the table");
        assert_eq!(c.write(0x14, &[status::DRIVER_OK], 2), Action::DriverOk);
        c.write(0x16, &0u16.to_le_bytes(), 2);
        c.write(0x20, &0x5000u64.to_le_bytes(), 2);
        assert_eq!(c.queues[0].desc, 0, "locked after DRIVER_OK");
        // A selected queue that does not exist reads as size 0.
        c.write(0x16, &9u16.to_le_bytes(), 2);
        assert_eq!(read(&c, 0x18, 2), 0);
        assert_eq!(c.write(0x14, &[0], 2), Action::Reset);
    }

    #[test]
    fn status_reads_needs_reset_and_odd_accesses_are_harmless() {
        let mut c = CommonConfig::new(&[16]);
        c.write(0x14, &[status::ACKNOWLEDGE | status::DRIVER], 1);
        let mut b = [0u8; 1];
        c.read(0x14, &mut b, 0, true);
        assert_eq!(b[0], 0x43);
        c.write(0x14, &[status::ACKNOWLEDGE], 1);
        assert_eq!(c.status, 3, "bits are not cleared but by reset");
        c.write(0x100, &[1; 4], 1);
        c.write(0x13, &[], 1);
        c.write(0x13, &[0; 9], 1);
        let mut far = [0xaau8; 4];
        c.read(0x3c, &mut far, 0, false);
        assert_eq!(far, [0; 4]);
    }

    #[test]
    fn check_names_what_a_saved_structure_gets_wrong() {
        let good = {
            let mut c = CommonConfig::new(&[256]);
            c.queues[0].enabled = true;
            c.queues[0].vector = 1;
            c.driver_features = 1 << 32;
            c
        };
        good.check(&[256], 1 << 32, 2).unwrap();
        let mut c = good.clone();
        c.driver_features |= 1 << 7;
        assert!(c.check(&[256], 1 << 32, 2).unwrap_err().contains("does not offer"));
        let mut c = good.clone();
        c.queues[0].size = 100;
        assert!(c.check(&[256], 1 << 32, 2).unwrap_err().contains("size 100"));
        let mut c = good.clone();
        c.queues[0].vector = 2;
        assert!(c.check(&[256], 1 << 32, 2).unwrap_err().contains("vector 2"));
        assert!(good
            .check(&[256, 256], 1 << 32, 2)
            .unwrap_err()
            .contains("1 queues saved"));
        assert!(good.check(&[128], 1 << 32, 2).unwrap_err().contains("maximum size 256"));
    }
}
