//! The source's last commands: `EXPORT_FINAL` (the paused vCPUs' states,
//! then the Final record) and `READ_CONTROL` (the destination's Commit or
//! abort token).

use crate::env::{EpochTables, GuestMemory, Platform};
use crate::export::{fail_run, head, memory_digest, Exporting};
use crate::mailbox::{self, Output};
use crate::reply::{fail, Done, Outcome};
use crate::{Agent, Session};
use covm_agent_protocol::record::{
    RecordHeader, RecordType, FINAL_RECORD_LEN, HEADER_LEN, MAX_RECORD_LEN, RECORD_OVERHEAD,
};
use covm_agent_protocol::PAGE_SIZE;
use covm_guest_abi::mailbox::words::{ExportFinalArgs, ExportFinalReply, ReadControlArgs, ReadControlReply};
use covm_guest_abi::mailbox::{
    status, AGENT_VCPU_STATES, FROM_AGENT_SIZE, MAX_VCPU_STATE, MAX_WORKLOAD_VCPUS, VCPU_STATE_SLOT,
};
use covm_guest_abi::shared_map::{MAP_LEN, SHARED_MAP};

impl<'a, M: GuestMemory, P: Platform, E: EpochTables<'a>> Agent<'a, M, P, E> {
    pub(crate) fn export_final(
        &mut self,
        ExportFinalArgs { vcpus, verified }: ExportFinalArgs,
    ) -> Outcome<ExportFinalReply> {
        let workload = self.config.workload_vcpus;
        let began = self.session_map.as_ref().map(|(_, shared)| *shared);
        let Exporting {
            mem,
            map,
            s,
            scratch,
            run,
            ..
        } = self.streaming_parts("EXPORT_FINAL")?;
        if s.epoch() == 0 {
            return Err(fail!(status::BAD_STATE, "EXPORT_FINAL: round 0 has not ended"));
        }
        if s.pages_in_round() != 0 {
            return Err(fail!(
                status::BAD_STATE,
                "EXPORT_FINAL: round {} has {} pages and no end yet",
                s.epoch(),
                s.pages_in_round()
            ));
        }
        if vcpus == 0 || u64::from(vcpus) > MAX_WORKLOAD_VCPUS {
            return Err(fail!(
                status::BAD_COMMAND,
                "EXPORT_FINAL: {vcpus} vCPUs (1 to {MAX_WORKLOAD_VCPUS})"
            ));
        }
        if workload != 0 && vcpus != workload {
            return Err(fail!(
                status::REFUSED,
                "EXPORT_FINAL: this guest has {workload} workload vCPUs, not {vcpus}"
            ));
        }
        // What the guest shares cannot have changed since the session
        // began: the pages left to covm are the ones it still shares.
        let page = head::<PAGE_SIZE>(scratch);
        mem.read_page(SHARED_MAP, page);
        if began.is_some_and(|b| b[..] != page[..MAP_LEN]) {
            return Err(fail_run(
                run,
                fail!(
                    status::REFUSED,
                    "EXPORT_FINAL: the guest changed which pages it shares with the host during the migration"
                ),
            ));
        }
        // Every slot's length, read once; all must be valid and fit.
        let mut lens = [0usize; MAX_WORKLOAD_VCPUS as usize];
        let mut total = FINAL_RECORD_LEN;
        for (i, len) in lens.iter_mut().enumerate().take(vcpus as usize) {
            let mut word = [0u8; 4];
            mem.read_window(AGENT_VCPU_STATES + i as u64 * VCPU_STATE_SLOT, &mut word);
            let n = u32::from_le_bytes(word);
            if n == 0 || u64::from(n) > MAX_VCPU_STATE {
                return Err(fail!(
                    status::REFUSED,
                    "EXPORT_FINAL: vCPU {i}'s slot holds no state (length {n}, 1 to {MAX_VCPU_STATE})"
                ));
            }
            *len = n as usize;
            total += *len + RECORD_OVERHEAD;
        }
        if total as u64 > FROM_AGENT_SIZE {
            return Err(fail!(
                status::NO_ROOM,
                "EXPORT_FINAL: {total} bytes of records do not fit the mailbox's {FROM_AGENT_SIZE}"
            ));
        }
        let (record, state) = scratch.split_at_mut(MAX_RECORD_LEN);
        let digest = if verified {
            Some(memory_digest(mem, map, head::<PAGE_SIZE>(state))?)
        } else {
            None
        };
        let mut out = Output::new();
        let mut sealed = Ok(());
        for (i, &len) in lens.iter().enumerate().take(vcpus as usize) {
            let state = &mut state[..len];
            mem.read_window(AGENT_VCPU_STATES + i as u64 * VCPU_STATE_SLOT + 4, state);
            run.records += 1;
            sealed = s
                .seal_vcpu_state(i as u32, state, record)
                .map_err(|e| fail!(status::REFUSED, "sealing vCPU {i}'s state: {e}"))
                .and_then(|n| out.put(mem, &record[..n]));
            if sealed.is_err() {
                break;
            }
        }
        sealed.map_err(|e| fail_run(run, e))?;
        let mut record = [0u8; FINAL_RECORD_LEN];
        run.records += 1;
        s.seal_final(digest.as_ref(), &mut record)
            .map_err(|e| fail_run(run, fail!(status::REFUSED, "sealing the Final record: {e}")))?;
        out.put(mem, &record)?;
        Ok(Done::new(ExportFinalReply).with_output(out.len()))
    }

    pub(crate) fn read_control(&mut self, args: ReadControlArgs) -> Outcome<ReadControlReply> {
        let len = mailbox::input_len(args.len, "READ_CONTROL")?;
        let Agent {
            mem,
            platform,
            session,
            scratch,
            run,
            retired,
            ..
        } = self;
        let Session::Source(s) = session else {
            return Err(fail!(status::BAD_STATE, "READ_CONTROL: no confirmed source session"));
        };
        if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&len) {
            return Err(fail!(
                status::REFUSED,
                "READ_CONTROL: {len} bytes are not a control record"
            ));
        }
        // A bad record changes nothing: the session stays as it is.
        let record = &mut scratch[..len];
        mailbox::read_input(mem, 0, record);
        let header = RecordHeader::decode(record)
            .map_err(|e| fail!(status::REFUSED, "READ_CONTROL: not a control record: {e}"))?;
        if header.record_len() != len {
            return Err(fail!(
                status::REFUSED,
                "READ_CONTROL: the record is {} bytes, {len} were given",
                header.record_len()
            ));
        }
        match header.record_type {
            RecordType::Commit => {
                s.read_commit(record)
                    .map_err(|e| fail!(status::REFUSED, "the destination's Commit is refused: {e}"))?;
                run.records += 1;
                *retired = true;
                platform.retire();
                Ok(Done::new(ReadControlReply::Committed))
            }
            RecordType::AbortToken => {
                let reason = s
                    .read_abort(record)
                    .map_err(|e| fail!(status::REFUSED, "the abort token is refused: {e}"))?;
                run.records += 1;
                Ok(Done::new(ReadControlReply::Aborted { reason }))
            }
            other => Err(fail!(
                status::REFUSED,
                "READ_CONTROL: record type {} is neither a Commit nor an abort token",
                other as u8
            )),
        }
    }
}
