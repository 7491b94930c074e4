//! What a confidential VM (emulated platform) has that a plain one does
//! not: the ports its firmware and agent use and what its vCPU threads
//! share with the migration session ([`runtime`]; the agent's vCPUs
//! waiting on each other, [`agent_team`]), and the VMSA area where
//! the platform hands paused vCPU states to the agent ([`vmsa_area`]).

pub mod agent_team;
pub mod runtime;
pub mod shared_window;
pub mod vmsa_area;

pub use runtime::{CvmRuntime, LaunchMode};
