//! The destination's confidential opener: covm hands the sealed records to
//! the agent, which checks and applies them; covm only counts what the
//! agent reports. Pages the guest shares arrive in the clear: covm writes
//! them itself, only inside the memory the guest can share, and checks
//! them against what it does share once the state is restored
//! ([`super::shared_pages`]).

use super::call;
use super::handshake;
use super::mailbox::AgentMailbox;
use super::session::SessionInfo;
use super::shared_pages::ClearPages;
use covm_guest_abi::mailbox::words::{Args, CommitArgs, ImportArgs, MintAbortArgs, Role};
use covm_migration::engine::{Carried, Link, MigrationError, Opener, PlainOpener};
use covm_migration::protocol::Message;
use covm_migration::vm::DestinationVm;
use std::time::Duration;

/// The abort reason code the destination's agent puts in its token.
const ABORT_REASON_FAILED: u32 = 1;

/// Opens through the destination VM's agent.
pub struct ConfidentialOpener {
    /// Writes the shared pages, which arrive in the clear.
    plain: PlainOpener,
    clear: ClearPages,
    mailbox: AgentMailbox,
    info: SessionInfo,
    /// The source's Final carried a memory digest: commit in verified mode.
    verified: bool,
    committed: bool,
}

impl ConfidentialOpener {
    /// An opener over `mailbox`.
    pub fn new(mailbox: AgentMailbox, info: SessionInfo) -> Self {
        ConfidentialOpener {
            plain: PlainOpener,
            clear: ClearPages::default(),
            mailbox,
            info,
            verified: false,
            committed: false,
        }
    }

    fn call<A: Args>(&mut self, args: A, input: &[u8]) -> Result<A::Reply, MigrationError> {
        call::timed(&mut self.mailbox, &self.info, args, input)
    }
}

impl Opener for ConfidentialOpener {
    fn handshake(&mut self, link: &mut dyn Link) -> Result<(), MigrationError> {
        handshake::run(&mut self.mailbox, Role::Destination, link, &self.info)
    }

    fn is_page_record(&self, message: &Message) -> bool {
        matches!(
            message,
            Message::Sealed { .. } | Message::Pages { .. } | Message::ZeroPages { .. }
        )
    }

    fn open_pages(&mut self, vm: &mut dyn DestinationVm, message: Message) -> Result<Carried, MigrationError> {
        // Shared pages, in the clear: only where the guest can share.
        let shareable = match &message {
            Message::Pages { .. } | Message::ZeroPages { .. } => vm.shareable_memory(),
            _ => Vec::new(),
        };
        match &message {
            Message::Pages { gpas, .. } => {
                for &gpa in gpas {
                    self.clear.accept(&shareable, gpa, 1).map_err(MigrationError::stream)?;
                }
                return self.plain.open_pages(vm, message);
            }
            Message::ZeroPages { gpa, count, .. } => {
                self.clear
                    .accept(&shareable, *gpa, *count)
                    .map_err(MigrationError::stream)?;
                return self.plain.open_pages(vm, message);
            }
            _ => {}
        }
        let Message::Sealed { round, records } = message else {
            return Err(MigrationError::Unexpected {
                got: message.kind(),
                during: "opening sealed records",
            });
        };
        let reply = self.call(
            ImportArgs {
                len: records.len() as u64,
            },
            &records,
        )?;
        if reply.complete {
            self.verified = reply.verified;
            self.info.set_state("complete");
        }
        self.info.add(1, reply.pages, round);
        Ok(Carried {
            round,
            pages: reply.pages,
            zero_pages: reply.zero_pages,
        })
    }

    fn open_state(&mut self, message: Message) -> Result<Option<Vec<u8>>, MigrationError> {
        Ok(match message {
            Message::State { state } => Some(state),
            _ => None,
        })
    }

    fn commit(&mut self, vm: &mut dyn DestinationVm) -> Result<Message, MigrationError> {
        // What came in the clear must be what the guest shares (the state
        // says which); its agent then holds the host to its sealed map.
        self.clear.check(&vm.shared_memory()).map_err(MigrationError::stream)?;
        self.call(
            CommitArgs {
                verified: self.verified,
            },
            &[],
        )?;
        self.committed = true;
        self.info.set_state("committed");
        Ok(Message::Control {
            record: self.mailbox.take_output(),
        })
    }

    fn abort(&mut self, reason: &str) -> Option<Message> {
        if self.committed {
            return None;
        }
        match self.call(
            MintAbortArgs {
                reason: ABORT_REASON_FAILED,
            },
            &[],
        ) {
            Ok(_) => {
                tracing::info!("confidential migration: abort token minted ({reason})");
                self.info.set_state("aborted");
                Some(Message::Control {
                    record: self.mailbox.take_output(),
                })
            }
            Err(e) => {
                tracing::error!("the agent could not mint an abort token: {e}");
                None
            }
        }
    }

    fn crypto_time(&self) -> Duration {
        self.info.crypto()
    }
}
