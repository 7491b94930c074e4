//! The HTTP API on a UNIX socket, compatible with Cloud Hypervisor's.
//!
//! The server runs on its own thread and never touches KVM: each request
//! becomes a [`crate::control::messages::Request`] sent to the control loop, whose reply
//! it renders. See docs/api.md and resources/openapi/covm.yaml.

pub mod ch_defaults;
pub mod migration_data;
#[cfg(test)]
mod openapi_check;
pub mod passed_fds;
pub mod routes;
pub mod server;
pub mod socket;
pub mod vm_config;
pub mod wire;
