//! covm's device models.
//!
//! None of them knows about KVM: interrupts leave through [`vm_superio::Trigger`]
//! (an eventfd the VMM wires to an irqfd), and power requests through the
//! [`PowerSink`] trait. Each device is tested here without a VM.
#![deny(missing_docs)]

pub mod bus;
pub mod debug_port;
pub mod i8042;
pub mod pci;
pub mod power;
pub mod serial;
pub mod virtio;
pub mod write_bitmap;

pub use bus::{BusError, MmioBus, MmioDevice, PioBus, PioDevice};
pub use power::{PowerAction, PowerSink};
pub use write_bitmap::WriteBitmap;
