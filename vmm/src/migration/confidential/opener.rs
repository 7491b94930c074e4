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
use crate::migration::prefault::{self, Prefaulter};
use covm_agent_protocol::record::{RecordHeader, RecordType};
use covm_guest_abi::mailbox::words::{Args, CommitArgs, CostsArgs, ImportArgs, MintAbortArgs, Role};
use covm_migration::engine::{AgentCosts, Carried, Link, MigrationError, Opener, PlainOpener};
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
    /// Populates the pages of each batch while the agent imports it.
    prefault: Option<Prefaulter>,
    /// The round of the batch the agent is importing (posted, not yet
    /// settled).
    importing: Option<u32>,
}

/// The pages the Page records of `records` name, as runs: their headers
/// are in the clear (protocol §"Sealed records"). Stops at the first
/// header that does not decode (the agent refuses that record).
fn page_runs(records: &[u8]) -> Vec<(u64, u64)> {
    let mut gpas = Vec::new();
    let mut rest = records;
    while let Ok(header) = RecordHeader::decode(rest) {
        if header.record_type == RecordType::Page {
            gpas.push(header.address);
        }
        match rest.get(header.record_len()..) {
            Some(next) => rest = next,
            None => break,
        }
    }
    let mut runs = Vec::new();
    prefault::runs_of(gpas, &mut runs);
    runs
}

impl ConfidentialOpener {
    /// An opener over `mailbox`.
    pub fn new(mailbox: AgentMailbox, info: SessionInfo) -> Self {
        ConfidentialOpener {
            plain: PlainOpener,
            clear: ClearPages::default(),
            prefault: Prefaulter::start(mailbox.guest_memory()),
            mailbox,
            info,
            verified: false,
            committed: false,
            importing: None,
        }
    }

    fn call<A: Args>(&mut self, args: A, input: &[u8]) -> Result<A::Reply, MigrationError> {
        call::timed(&mut self.mailbox, &self.info, args, input)
    }

    /// Waits for the batch the agent is importing, if any: what it carried.
    fn settle_import(&mut self) -> Result<Option<Carried>, MigrationError> {
        let Some(round) = self.importing.take() else {
            return Ok(None);
        };
        let reply = call::finish::<ImportArgs>(&mut self.mailbox, &self.info)?;
        if reply.complete {
            self.verified = reply.verified;
            self.info.set_state("complete");
        }
        self.info.add(1, reply.pages, round);
        Ok(Some(Carried {
            round,
            pages: reply.pages,
            zero_pages: reply.zero_pages,
        }))
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
        if let Some(prefault) = &mut self.prefault {
            prefault.ahead(page_runs(&records));
        }
        // Pipelined: the agent imports this batch while the engine reads
        // the next; the one before is finished (and reported) first, as
        // the mailbox holds one batch.
        let settled = self.settle_import()?;
        let args = ImportArgs {
            len: records.len() as u64,
        };
        call::post(&mut self.mailbox, &self.info, args, &records)?;
        self.importing = Some(round);
        Ok(settled.unwrap_or(Carried::empty(round)))
    }

    fn settle(&mut self, _vm: &mut dyn DestinationVm) -> Result<Option<Carried>, MigrationError> {
        self.settle_import()
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
        let record = self.mailbox.take_output();
        // The cost breakdown for the report, asked now: the agent answers
        // while the Commit goes out, not while the guest waits to resume.
        if let Err(e) = self.mailbox.post(CostsArgs, &[]) {
            tracing::debug!("COSTS not posted: {e}");
        }
        Ok(Message::Control { record })
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

    fn agent_costs(&mut self) -> Option<AgentCosts> {
        call::costs(&mut self.mailbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use covm_agent_protocol::record::{COUNT_RECORD_LEN, PAGE_RECORD_LEN};

    fn record(record_type: RecordType, address: u64, len: usize) -> Vec<u8> {
        let header = RecordHeader {
            record_type,
            lane: 0,
            length: (len - covm_agent_protocol::record::RECORD_OVERHEAD) as u32,
            sequence: 0,
            address,
            epoch: 0,
        };
        let mut record = header.encode().to_vec();
        record.resize(len, 0xee);
        record
    }

    /// The prefault helper is told the pages of the Page records, in
    /// runs; zero runs and a broken tail are left to the agent.
    #[test]
    fn page_runs_come_from_the_clear_headers() {
        let mut batch = Vec::new();
        for gpa in [0x10_0000, 0x10_1000, 0x10_2000] {
            batch.extend(record(RecordType::Page, gpa, PAGE_RECORD_LEN));
        }
        batch.extend(record(RecordType::ZeroPages, 0x10_3000, COUNT_RECORD_LEN));
        batch.extend(record(RecordType::Page, 0x20_0000, PAGE_RECORD_LEN));
        assert_eq!(page_runs(&batch), [(0x10_0000, 3), (0x20_0000, 1)]);
        batch.extend([9u8; 40]);
        batch.extend(record(RecordType::Page, 0x30_0000, PAGE_RECORD_LEN));
        assert_eq!(page_runs(&batch), [(0x10_0000, 3), (0x20_0000, 1)]);
        assert!(page_runs(&[]).is_empty());
    }
}
