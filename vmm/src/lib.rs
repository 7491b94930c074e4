//! covm: a KVM virtual machine monitor for confidential VMs that must still
//! move. This library is the `covm` binary's body, split into modules with
//! one job each; see docs/architecture.md for the map.
#![deny(missing_docs)]

pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod config;
pub mod cvm;
pub mod dirty_log;
pub mod dirty_ring;
pub mod event_monitor;
pub mod exit;
pub mod kvm;
pub mod logging;
pub mod machine_state;
pub mod memory;
pub mod migrate;
pub mod migration_vm;
pub mod platform;
pub mod test_hooks;
pub mod vcpu;
pub mod vcpu_control;
pub mod vcpu_state;
pub mod vm;
pub mod vm_snapshot;
pub mod vmm;
