//! The host side of a confidential VM (emulated platform): the ports its
//! firmware uses, the agent's mailbox, and the sealer and opener that
//! plug the agent into the migration engine. docs/confidential-migration.md
//! is the design; `covm_guest_abi::mailbox` the ABI.

pub mod call;
pub mod handshake;
pub mod mailbox;
pub mod opener;
pub mod runtime;
pub mod sealer;
pub mod session;
pub mod vcpu_states;

pub use mailbox::AgentMailbox;
pub use opener::ConfidentialOpener;
pub use runtime::{CvmRuntime, LaunchMode};
pub use sealer::ConfidentialSealer;
pub use session::SessionInfo;
