//! A whole migration between two in-memory agents.

use super::support::*;
use crate::record::{COMMIT_RECORD_LEN, COUNT_RECORD_LEN, FINAL_RECORD_LEN, PAGE_RECORD_LEN, RECORD_OVERHEAD};
use crate::{ImportChecker, ImportEvent, ImportPhase, MemoryDigest, SourceState, PAGE_SIZE};

const PAGES: usize = 64;

/// The source guest's memory: some pages zero, the rest a pattern.
fn source_memory() -> Vec<[u8; PAGE_SIZE]> {
    (0..PAGES as u64)
        .map(|i| if i % 5 == 0 { [0u8; PAGE_SIZE] } else { page(i, 0) })
        .collect()
}

fn digest(memory: &[[u8; PAGE_SIZE]]) -> [u8; 32] {
    let mut d = MemoryDigest::new();
    for (i, p) in memory.iter().enumerate() {
        d.add_page(i as u64 * PAGE_SIZE as u64, p).unwrap();
    }
    d.finish()
}

/// Applies one record at the destination, as the agent would.
fn apply(
    checker: &mut ImportChecker<'_>,
    memory: &mut [[u8; PAGE_SIZE]],
    vcpus: &mut Vec<(u32, Vec<u8>)>,
    record: &mut [u8],
) -> Option<crate::Summary> {
    match checker.open(record).expect("destination accepts every record") {
        ImportEvent::Page { gpa, data } => memory[(gpa / 4096) as usize] = *data,
        ImportEvent::ZeroPages { gpa, count } => {
            for p in &mut memory[(gpa / 4096) as usize..][..count as usize] {
                *p = [0; PAGE_SIZE];
            }
        }
        ImportEvent::RoundEnd { .. } => {}
        ImportEvent::VcpuState { index, state } => vcpus.push((index, state.to_vec())),
        ImportEvent::Complete(summary) => return Some(summary),
    }
    None
}

/// Sends `dirty` pages of `memory` (zero pages as ZeroPages runs of one)
/// and ends the round, delivering each record at once.
fn send_round(
    src: &mut crate::SourceSession,
    memory: &[[u8; PAGE_SIZE]],
    dirty: &[usize],
    mut deliver: impl FnMut(&mut [u8]),
) {
    for &i in dirty {
        let gpa = i as u64 * PAGE_SIZE as u64;
        if memory[i] == [0; PAGE_SIZE] {
            let mut r = [0u8; COUNT_RECORD_LEN];
            src.seal_zero_pages(gpa, 1, &mut r).unwrap();
            deliver(&mut r);
        } else {
            let mut r = [0u8; PAGE_RECORD_LEN];
            // The agent reads the page straight into the record buffer.
            r[32..32 + PAGE_SIZE].copy_from_slice(&memory[i]);
            let header = src.seal_page_in_place(gpa, &mut r).unwrap();
            assert_eq!(header.address, gpa);
            // The plaintext is gone from the buffer.
            assert_ne!(&r[32..32 + PAGE_SIZE], &memory[i][..]);
            deliver(&mut r);
        }
    }
    let mut r = [0u8; COUNT_RECORD_LEN];
    assert_eq!(src.seal_round_end(&mut r).unwrap(), dirty.len() as u64);
    deliver(&mut r);
}

fn migrate(verified: bool) {
    let (mut src, dst_session) = sessions(1);
    assert_eq!(src.session_id(), dst_session.session_id());
    assert_eq!(src.peer().measurement, MEASUREMENT);
    assert_eq!(dst_session.peer().policy_version, 1);

    let mut memory = source_memory();
    let mut table = vec![0xFFFF_FFFFu32; PAGES];
    let mut checker = ImportChecker::new(dst_session, &mut table);
    let mut dst_memory = vec![[0xEEu8; PAGE_SIZE]; PAGES];
    let mut vcpus = Vec::new();
    let mut summary = None;

    // Round 0: every page. Rounds 1 and 2: pages dirtied meanwhile,
    // some twice, one becoming zero. Round 3: the paused last pass.
    let all: Vec<usize> = (0..PAGES).collect();
    let dirty_sets: [&[usize]; 4] = [&all, &[3, 7, 8, 9, 40], &[7, 9, 63], &[7, 1]];
    for (round, dirty) in dirty_sets.iter().enumerate() {
        assert_eq!(src.epoch(), round as u32);
        send_round(&mut src, &memory, dirty, |r| {
            assert!(apply(&mut checker, &mut dst_memory, &mut vcpus, r).is_none());
        });
        // The guest runs on and writes (not during the paused last round).
        if round < 3 {
            for &i in dirty_sets[round + 1] {
                memory[i] = if i == 9 && round == 1 {
                    [0; PAGE_SIZE]
                } else {
                    page(i as u64, round as u64 + 1)
                };
            }
        }
    }
    assert_eq!(src.state(), SourceState::Streaming);
    assert!(src.may_resume());

    let states: [&[u8]; 3] = [b"bsp registers", &[7u8; 5000], b"ap 2"];
    for (i, s) in states.iter().enumerate() {
        let mut r = vec![0u8; s.len() + RECORD_OVERHEAD];
        assert_eq!(src.seal_vcpu_state(i as u32, s, &mut r).unwrap(), r.len());
        apply(&mut checker, &mut dst_memory, &mut vcpus, &mut r);
    }
    assert_eq!(src.state(), SourceState::SealingState);
    assert!(src.may_resume());

    let source_digest = digest(&memory);
    let mut r = [0u8; FINAL_RECORD_LEN];
    let sealed = src.seal_final(verified.then_some(&source_digest), &mut r).unwrap();
    assert!(
        !src.may_resume(),
        "after Final the source waits for Commit or an abort token"
    );
    summary = summary.or(apply(&mut checker, &mut dst_memory, &mut vcpus, &mut r));
    let summary = summary.expect("Final completes the import");
    assert_eq!(summary, sealed);
    assert_eq!(summary.rounds, 4);
    assert_eq!(summary.vcpus, 3);
    assert_eq!(summary.total_pages, (PAGES + 5 + 3 + 2) as u64);
    assert_eq!(checker.phase(), ImportPhase::Complete);

    // The destination's memory is the source's final memory.
    assert!(dst_memory == memory, "pages decrypt to the source's content");
    assert_eq!(vcpus.len(), 3);
    for (i, s) in states.iter().enumerate() {
        assert_eq!(vcpus[i], (i as u32, s.to_vec()));
    }

    let mut commit = [0u8; COMMIT_RECORD_LEN];
    let ours = digest(&dst_memory);
    checker
        .commit(summary.memory_digest.map(|_| &ours), &mut commit)
        .unwrap();
    assert_eq!(checker.phase(), ImportPhase::Committed);

    src.read_commit(&mut commit).unwrap();
    assert_eq!(src.state(), SourceState::Committed);
    assert!(!src.may_resume());
}

#[test]
fn full_migration_plain_mode() {
    migrate(false);
}

#[test]
fn full_migration_verified_mode() {
    migrate(true);
}

#[test]
fn records_can_be_split_from_one_buffer() {
    let (mut src, dst) = sessions(2);
    let records = small_stream(&mut src);
    let joined: Vec<u8> = records.concat();
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    let mut rest = &mut joined.clone()[..];
    let mut n = 0;
    while !rest.is_empty() {
        let len = crate::record::record_len(rest).unwrap();
        let (one, tail) = rest.split_at_mut(len);
        checker.open(one).unwrap();
        rest = tail;
        n += 1;
    }
    assert_eq!(n, records.len());
    assert_eq!(checker.phase(), ImportPhase::Complete);
}

#[test]
fn record_sizes_are_as_documented() {
    assert_eq!(PAGE_RECORD_LEN, 4144);
    assert_eq!(COUNT_RECORD_LEN, 56);
    assert_eq!(FINAL_RECORD_LEN, 104);
    assert_eq!(COMMIT_RECORD_LEN, 104);
    assert_eq!(crate::record::ABORT_RECORD_LEN, 56);
    assert_eq!(crate::handshake::messages::EVIDENCE_MSG_LEN, 1200);
    assert_eq!(crate::handshake::messages::MAX_EVIDENCE_MSG_LEN, 1200 + 8192);
    assert_eq!(crate::policy::MAX_POLICY_LEN, 996);
    assert_eq!(crate::handshake::messages::MAX_SRC_HELLO_LEN, 1098);
    assert_eq!(policy(1).encoded_len(), 32 + 48 + 49);
}
