//! A confidential VM's migration session on the host: covm drives the
//! firmware migration agents through their mailbox, relays the attested
//! handshake, and plugs the agents into the migration engine as its sealer
//! (source) and opener (destination). covm only ever carries ciphertext.
//! docs/confidential-migration.md is the design; `covm_guest_abi::mailbox`
//! the ABI.

pub mod call;
pub mod handshake;
pub mod mailbox;
pub mod opener;
pub mod sealer;
pub mod session;
pub mod shared_pages;

pub use mailbox::AgentMailbox;
pub use opener::ConfidentialOpener;
pub use sealer::ConfidentialSealer;
pub use session::SessionInfo;
