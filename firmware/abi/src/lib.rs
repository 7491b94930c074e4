//! The contract between covm and its built-in guest firmware.
//!
//! Both sides link this crate: the VMM (std) and the bare-metal firmware
//! (`no_std`). Everything one side writes and the other reads is defined
//! here once: I/O ports and the values written to them, the guest-physical
//! layout of the `dirty` workload, the workload command line, and the page
//! content function that lets tests outside the guest recognise the
//! workload's data.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

pub mod layout;
pub mod mailbox;
pub mod metadata;
pub mod pattern;
pub mod ports;
pub mod shared_map;
pub mod workload;
