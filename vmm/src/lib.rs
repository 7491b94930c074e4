//! covm: a KVM virtual machine monitor for confidential VMs that must still
//! move. This library is the `covm` binary's body, split into modules with
//! one job each; see docs/architecture.md for the map.
#![deny(missing_docs)]
// The docs are for covm's maintainers (`cargo doc --document-private-items`):
// public items may point at the private modules that implement them.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod api;
pub(crate) mod arch;
pub(crate) mod boot;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub(crate) mod dirty;
pub mod event_monitor;
pub mod exit;
pub(crate) mod logging;
pub(crate) mod migration;
pub mod platform;
pub(crate) mod state;
pub(crate) mod test_hooks;
pub mod vcpu;
pub mod vm;
