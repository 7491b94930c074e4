//! `IMPORT` on several lanes: worker `w` of the [`Team`] opens the records
//! of the lanes `l` with `l % workers == w`, in batch order.
//!
//! Every worker walks the batch's headers (in the clear, read from
//! `TO_AGENT`) and takes the records of its lanes: copied into its own
//! private buffer, admitted under the lock, opened outside it, settled
//! under it again, then applied outside it. A host that changes the
//! batch while the workers read it can make them disagree about where a
//! record starts; that only ever skips or repeats a sequence number on a
//! lane, which the checker refuses as it refuses any gap or replay.
//!
//! A batch from covm holds the output of one export call, so its records
//! are all of one round: no lane has to wait here for another to end a
//! round. (A batch that mixes rounds is refused by the checker, which
//! takes no record of a lane that already ended the open round.)

use super::{LaneTally, Lock, Tallies};
use crate::env::{GuestMemory, Team};
use crate::import::apply;
use crate::mailbox;
use crate::memmap::MemoryMap;
use crate::reply::{fail, Fail};
use covm_agent_protocol::record::{RecordHeader, HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{ImportChecker, Summary};
use covm_guest_abi::mailbox::status;
use covm_guest_abi::mailbox::words::ImportReply;

/// What the workers share: the checker, under one lock, and the results.
struct Shared<'x, 'a> {
    checker: &'x mut ImportChecker<'a>,
    /// The first failure: every worker stops at its next record.
    failed: Option<Fail>,
    /// The Final's summary, once it settled.
    summary: Option<Summary>,
}

/// What a lane import did.
pub(crate) struct Opened {
    /// Records and pages over all workers (up to a failure).
    pub(crate) tally: LaneTally,
    pub(crate) summary: Option<Summary>,
    pub(crate) failed: Option<Fail>,
}

/// Opens the `len` bytes of records in `TO_AGENT` with `team`, each
/// worker its lanes; `workload` as for [`apply`]. Worker 0 opens lane 0,
/// whose records may be as large as a vCPU state, in `scratch` (at least
/// `MAX_RECORD_LEN`); the others, on their small stacks, take records of
/// at most a page (a larger one on their lanes is refused).
pub(crate) fn open(
    team: &dyn Team,
    mem: &impl GuestMemory,
    map: &MemoryMap,
    checker: &mut ImportChecker<'_>,
    (len, workload): (usize, u32),
    scratch: &mut [u8],
) -> Opened {
    let workers = team.workers().min(usize::from(checker.lanes()));
    let cipher = checker.cipher();
    let shared = Lock::new(Shared {
        checker,
        failed: None,
        summary: None,
    });
    let tallies = Tallies::new();
    let scratch = Lock::new(scratch);
    team.join(&|w| {
        if w >= workers {
            return;
        }
        let mut own = [0u8; PAGE_RECORD_LEN];
        let mut scratch = (w == 0).then(|| scratch.lock());
        let record: &mut [u8] = match &mut scratch {
            Some(scratch) => &mut scratch[..],
            None => &mut own,
        };
        let mut counts = ImportReply {
            pages: 0,
            zero_pages: 0,
            complete: false,
            vcpu_states: 0,
            verified: false,
        };
        let mut records = 0;
        let mut offset = 0;
        let result = loop {
            if offset >= len {
                break Ok(());
            }
            let rest = len - offset;
            let mut head = [0u8; HEADER_LEN];
            let n = rest.min(HEADER_LEN);
            mailbox::read_input(mem, offset, &mut head[..n]);
            let header = match RecordHeader::decode(&head[..n]) {
                Ok(header) if header.record_len() <= rest => header,
                Ok(header) => {
                    break Err(fail!(
                        status::REFUSED,
                        "IMPORT: the record at byte {offset} is {} bytes, {rest} are left",
                        header.record_len()
                    ))
                }
                Err(e) => break Err(fail!(status::REFUSED, "IMPORT: record at byte {offset}: {e}")),
            };
            let size = header.record_len();
            if usize::from(header.lane) % workers != w {
                offset += size;
                continue;
            }
            if size > record.len() {
                break Err(fail!(
                    status::REFUSED,
                    "IMPORT: the record at byte {offset} is {size} bytes; only lane 0 carries records larger than \
                     a page"
                ));
            }
            let record = &mut record[..size];
            mailbox::read_input(mem, offset, record);
            let admitted = {
                let mut s = shared.lock();
                if s.failed.is_some() {
                    break Ok(());
                }
                s.checker.admit(record)
            };
            let refused = |e| fail!(status::REFUSED, "IMPORT: record at byte {offset} refused: {e}");
            let admitted = match admitted {
                Ok(admitted) => admitted,
                Err(e) => break Err(refused(e)),
            };
            records += 1;
            let opened = admitted.open(&cipher, record);
            let event = match shared.lock().checker.settle(admitted, opened) {
                Ok(event) => event,
                Err(e) => break Err(refused(e)),
            };
            match apply(event, mem, map, workload, &mut counts) {
                Ok(Some(summary)) => shared.lock().summary = Some(summary),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            offset += size;
        };
        if let Err(e) = result {
            shared.lock().failed.get_or_insert(e);
        }
        tallies.set(
            w,
            LaneTally {
                records,
                pages: counts.pages,
                zero_pages: counts.zero_pages,
                vcpu_states: counts.vcpu_states,
                out_len: 0,
            },
        );
    });
    let shared = shared.into_inner();
    Opened {
        tally: tallies.sum(workers),
        summary: shared.summary,
        failed: shared.failed,
    }
}
