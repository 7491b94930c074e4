//! PCI as covm's guests see it: bus 0 with configuration space through
//! ports 0xCF8/0xCFC and an ECAM window, type-0 functions whose BARs the
//! VMM places in the 32-bit MMIO hole, and MSI-X. Nothing here knows KVM:
//! a function's interrupts leave through [`msix::MsiRoutes`].

pub mod bus;
pub mod config;
pub mod host_bridge;
pub mod msix;

pub use bus::{BarWindow, Bdf, ConfigPorts, Ecam, PciBus, PciFunction, SharedFunction};
pub use config::{BarKind, Identity, PciConfig};
pub use msix::{MsiMessage, MsiRoutes, Msix};
