//! covm: a KVM virtual machine monitor for confidential VMs that must still
//! move. This library is the `covm` binary's body, split into modules with
//! one job each; see docs/architecture.md for the map.
#![deny(missing_docs)]

pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod config;
pub mod control;
pub mod dirty;
pub mod event_monitor;
pub mod exit;
pub mod logging;
pub mod migration;
pub mod platform;
pub mod state;
pub mod test_hooks;
pub mod vcpu;
pub mod vm;
