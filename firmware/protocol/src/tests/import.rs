//! Every destination check fails when it should, and poisons the checker.

use super::support::*;
use crate::record::payload::Summary;
use crate::record::{RecordType, COMMIT_RECORD_LEN, HEADER_LEN, RECORD_OVERHEAD};
use crate::{Error, ImportChecker, ImportEvent, ImportPhase, MemoryDigest, SourceSession, PAGE_SIZE};

/// A session's destination and the small stream's records (see
/// [`small_stream`] for their order).
fn stream(seed: u64) -> (Vec<Vec<u8>>, crate::DestinationSession) {
    let (mut src, dst) = sessions(seed);
    (small_stream(&mut src), dst)
}

/// Feeds `records`, expects the error at `index`, and checks the checker
/// is poisoned afterwards (even the next good record is refused, while an
/// abort token can still be minted).
fn expect_failure(records: &[Vec<u8>], dst: crate::DestinationSession, index: usize, error: Error) {
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    assert_eq!(feed(&mut checker, records), Err((index, error)));
    assert_eq!(checker.phase(), ImportPhase::Poisoned);
    let mut again = records[index.min(records.len() - 1)].clone();
    assert_eq!(checker.open(&mut again), Err(Error::Poisoned));
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    assert_eq!(checker.commit(None, &mut commit), Err(Error::Poisoned));
    abort_token(&mut checker, 7);
    assert_eq!(checker.phase(), ImportPhase::Aborted);
}

/// [`expect_failure`] where the record at `index` is a `ty` the checker
/// does not take `during` its current phase.
fn expect_out_of_place(
    records: &[Vec<u8>],
    dst: crate::DestinationSession,
    index: usize,
    ty: RecordType,
    during: &'static str,
) {
    let error = Error::UnexpectedRecord { got: ty as u8, during };
    expect_failure(records, dst, index, error);
}

#[test]
fn the_good_stream_passes() {
    let (records, dst) = stream(20);
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    feed_and_commit(&mut checker, &records);
    drop(checker);
    // Entries hold epoch + 1 of the last import.
    assert_eq!(&table[..5], &[1, 1, 2, 1, 0]);
}

#[test]
fn flipped_bit_in_a_page_record() {
    for at in [
        0usize,
        4,
        8,
        16,
        24,
        HEADER_LEN,
        HEADER_LEN + 2000,
        HEADER_LEN + PAGE_SIZE + 3,
    ] {
        let (mut records, dst) = stream(21);
        records[1][at] ^= 0x01;
        let err = match at {
            0 => Error::UnknownRecordType(0),
            4 => Error::Length {
                what: "record payload",
                expected: PAGE_SIZE,
                got: PAGE_SIZE + 1,
            },
            8 => Error::Sequence { expected: 1, got: 0 },
            _ => Error::RecordAuthentication,
        };
        expect_failure(&records, dst, 1, err);
    }
}

#[test]
fn record_replayed_from_an_earlier_round() {
    let (mut records, dst) = stream(22);
    // The round-0 copy of page 2 instead of (and in the position of) the
    // round-1 copy: its sequence number gives it away.
    records[5] = records[2].clone();
    expect_failure(&records, dst, 5, Error::Sequence { expected: 5, got: 2 });
}

#[test]
fn duplicated_record() {
    let (mut records, dst) = stream(23);
    records.insert(2, records[1].clone());
    expect_failure(&records, dst, 2, Error::Sequence { expected: 2, got: 1 });
}

#[test]
fn two_records_swapped() {
    let (mut records, dst) = stream(24);
    records.swap(1, 2);
    expect_failure(&records, dst, 1, Error::Sequence { expected: 1, got: 2 });
}

#[test]
fn dropped_record() {
    let (mut records, dst) = stream(25);
    records.remove(3);
    expect_failure(&records, dst, 3, Error::Sequence { expected: 3, got: 4 });
}

/// Seals an arbitrary record with the source's own stream key, bypassing
/// its bookkeeping: what a buggy (or compromised) source agent could send.
fn raw_seal(src: &mut SourceSession, ty: RecordType, epoch: u32, address: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; payload.len() + RECORD_OVERHEAD];
    r[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let sealer = src.sealer_for_test();
    let seq = sealer.reserve(0).unwrap();
    sealer.cipher().seal(seq, ty, epoch, address, &mut r).unwrap();
    r
}

/// A Final (sealed in round 1, no memory digest) claiming `rounds`,
/// `vcpus` and `total_pages`, whatever the source really sent.
fn raw_final(src: &mut SourceSession, rounds: u32, vcpus: u32, total_pages: u64) -> Vec<u8> {
    let summary = Summary {
        rounds,
        vcpus,
        total_pages,
        lanes: 1,
        memory_digest: None,
    };
    raw_seal(src, RecordType::Final, 1, 0, &summary.encode())
}

/// [`expect_failure`] where the Final at `index` claims `claimed` of
/// `what`, but `received` arrived.
fn expect_final_mismatch(
    records: &[Vec<u8>],
    dst: crate::DestinationSession,
    index: usize,
    what: &'static str,
    claimed: u64,
    received: u64,
) {
    let error = Error::FinalMismatch {
        what,
        claimed,
        received,
    };
    expect_failure(records, dst, index, error);
}

#[test]
fn round_end_count_must_match() {
    let (mut src, dst) = sessions(26);
    let records = vec![
        seal_page(&mut src, 0, &page(0, 0)),
        seal_page(&mut src, 4096, &page(1, 0)),
        raw_seal(&mut src, RecordType::RoundEnd, 0, 0, &3u64.to_le_bytes()),
    ];
    expect_failure(
        &records,
        dst,
        2,
        Error::RoundCount {
            epoch: 0,
            claimed: 3,
            received: 2,
        },
    );
}

#[test]
fn epochs_never_go_backwards_or_skip() {
    let (mut src, dst) = sessions(27);
    let mut records = vec![seal_page(&mut src, 0, &page(0, 0)), seal_round_end(&mut src)];
    records.push(raw_seal(&mut src, RecordType::Page, 0, 4096, &page(1, 0)));
    expect_failure(&records, dst, 2, Error::Epoch { open: 1, got: 0 });

    let (mut src, dst) = sessions(28);
    let records = vec![raw_seal(&mut src, RecordType::Page, 2, 0, &page(0, 0))];
    expect_failure(&records, dst, 0, Error::Epoch { open: 0, got: 2 });
}

#[test]
fn stale_or_duplicated_page_in_a_round() {
    let (mut src, dst) = sessions(29);
    let records = vec![
        seal_page(&mut src, 8192, &page(2, 0)),
        seal_page(&mut src, 8192, &page(2, 1)),
    ];
    expect_failure(&records, dst, 1, Error::StalePage { gpa: 8192, epoch: 0 });

    // A zero run that overlaps a page already sent this round.
    let (mut src, dst) = sessions(30);
    let first = seal_page(&mut src, 8192, &page(2, 0));
    let mut z = [0u8; crate::record::COUNT_RECORD_LEN];
    src.seal_zero_pages(0, 4, &mut z).unwrap();
    expect_failure(&[first, z.to_vec()], dst, 1, Error::StalePage { gpa: 8192, epoch: 0 });
}

#[test]
fn page_outside_the_table() {
    let (mut src, dst) = sessions(32);
    let records = vec![seal_page(&mut src, 16 * 4096, &page(0, 0))];
    expect_failure(&records, dst, 0, Error::OutOfRange(16 * 4096));
}

#[test]
fn page_moved_to_another_address() {
    let (mut records, dst) = stream(33);
    // Rewrite the clear header's address: the AAD no longer matches.
    records[1][16..24].copy_from_slice(&(3u64 * 4096).to_le_bytes());
    expect_failure(&records, dst, 1, Error::RecordAuthentication);
}

#[test]
fn record_relabelled_as_another_round_or_type() {
    let (mut records, dst) = stream(34);
    records[1][24] = 1;
    expect_failure(&records, dst, 1, Error::RecordAuthentication);
    // A RoundEnd relabelled as a ZeroPages run (same payload size).
    let (mut records, dst) = stream(35);
    records[4][0] = RecordType::ZeroPages as u8;
    records[4][16..24].copy_from_slice(&(4u64 * 4096).to_le_bytes());
    expect_failure(&records, dst, 4, Error::RecordAuthentication);
}

#[test]
fn record_from_another_session() {
    let (records_a, _dst_a) = stream(36);
    let (records_b, dst_b) = stream(37);
    let mut mixed = records_b.clone();
    mixed[2] = records_a[2].clone();
    expect_failure(&mixed, dst_b, 2, Error::RecordAuthentication);
}

#[test]
fn truncated_stream_cannot_commit() {
    for cut in [0, 4, 7, 9] {
        let (records, dst) = stream(38);
        let mut table = vec![0u32; 16];
        let mut checker = ImportChecker::new(dst, &mut table);
        feed(&mut checker, &records[..cut]).unwrap();
        let mut commit = [0u8; COMMIT_RECORD_LEN];
        assert_eq!(
            checker.commit(None, &mut commit),
            Err(Error::Incomplete),
            "cut at {cut}"
        );
        assert_eq!(checker.phase(), ImportPhase::Poisoned);
    }
}

#[test]
fn wrong_vcpu_count() {
    // Final claims 3 vCPUs, 2 arrived.
    let (mut src, dst) = sessions(40);
    let mut records = vec![seal_page(&mut src, 0, &page(0, 0)), seal_round_end(&mut src)];
    records.push(seal_vcpu(&mut src, 0, b"a"));
    records.push(seal_vcpu(&mut src, 1, b"b"));
    records.push(raw_final(&mut src, 1, 3, 1));
    expect_final_mismatch(&records, dst, 4, "vcpus", 3, 2);

    // Two states, but of vCPUs 0 and 2: not 0..2.
    let (mut src, dst) = sessions(41);
    let mut records = vec![seal_round_end(&mut src)];
    records.push(seal_vcpu(&mut src, 0, b"a"));
    records.push(seal_vcpu(&mut src, 2, b"c"));
    records.push(seal_final(&mut src, None));
    expect_final_mismatch(&records, dst, 3, "vcpus (highest index + 1)", 2, 3);
}

#[test]
fn final_totals_must_match() {
    for (rounds, pages, what, claimed, received) in [(2, 1, "rounds", 2, 1), (1, 5, "pages", 5, 1)] {
        let (mut src, dst) = sessions(42);
        let mut records = vec![seal_page(&mut src, 0, &page(0, 0)), seal_round_end(&mut src)];
        records.push(seal_vcpu(&mut src, 0, b"a"));
        records.push(raw_final(&mut src, rounds, 1, pages));
        expect_final_mismatch(&records, dst, 3, what, claimed, received);
    }
}

#[test]
fn duplicate_vcpu_state() {
    let (mut src, dst) = sessions(43);
    let records = vec![seal_vcpu(&mut src, 0, b"a"), seal_vcpu(&mut src, 0, b"a again")];
    expect_failure(&records, dst, 1, Error::DuplicateVcpu(0));
}

#[test]
fn memory_after_vcpu_state_or_state_before_round_end() {
    let (mut src, dst) = sessions(44);
    let records = vec![
        seal_vcpu(&mut src, 0, b"a"),
        raw_seal(&mut src, RecordType::Page, 0, 0, &page(0, 0)),
    ];
    expect_out_of_place(&records, dst, 1, RecordType::Page, "after the first vCPU state");

    let (mut src, dst) = sessions(45);
    let records = vec![
        seal_page(&mut src, 0, &page(0, 0)),
        raw_seal(&mut src, RecordType::VcpuState, 0, 0, b"too early"),
    ];
    expect_out_of_place(&records, dst, 1, RecordType::VcpuState, "while memory is imported");
    // The source refuses the same mistake itself.
    let (mut src, _) = sessions(46);
    seal_page(&mut src, 0, &page(0, 0));
    let mut out = [0u8; 64];
    assert!(matches!(
        src.seal_vcpu_state(0, b"x", &mut out),
        Err(Error::State { .. })
    ));
}

#[test]
fn records_after_final_or_commit() {
    let (mut src, dst) = sessions(47);
    let mut records = small_stream(&mut src);
    records.push(raw_seal(&mut src, RecordType::VcpuState, 2, 5, b"late"));
    expect_out_of_place(&records, dst, 10, RecordType::VcpuState, "after the final record");

    let (mut src, dst) = sessions(48);
    let records = small_stream(&mut src);
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    let commit = feed_and_commit(&mut checker, &records);
    let mut again = commit;
    assert!(matches!(checker.commit(None, &mut again), Err(Error::State { .. })));
    let mut late = raw_seal(&mut src, RecordType::VcpuState, 2, 5, b"late");
    assert!(matches!(checker.open(&mut late), Err(Error::State { .. })));
    assert_eq!(
        checker.phase(),
        ImportPhase::Committed,
        "a committed checker stays committed"
    );
}

/// A verified-mode run: the source sends a digest if `src_digest`, the
/// destination gives its own if `dst_digest`; `tamper` changes a page the
/// destination holds (as if the host had hidden a dirty page).
fn verified_run(seed: u64, tamper: bool, src_digest: bool, dst_digest: bool) -> Result<(), Error> {
    let (mut src, dst) = sessions(seed);
    let memory: Vec<[u8; PAGE_SIZE]> = (0..4).map(|i| page(i, 0)).collect();
    let mut digest = MemoryDigest::new();
    let mut records = Vec::new();
    for (i, p) in memory.iter().enumerate() {
        digest.add_page(i as u64 * 4096, p).unwrap();
        records.push(seal_page(&mut src, i as u64 * 4096, p));
    }
    records.push(seal_round_end(&mut src));
    records.push(seal_vcpu(&mut src, 0, b"a"));
    let source_digest = digest.finish();
    records.push(seal_final(&mut src, src_digest.then_some(&source_digest)));

    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    let mut dst_memory = [[0u8; PAGE_SIZE]; 4];
    for r in &records {
        let mut r = r.clone();
        match checker.open(&mut r)? {
            ImportEvent::Page { gpa, data } => dst_memory[(gpa / 4096) as usize] = *data,
            ImportEvent::Complete(s) => assert_eq!(s.memory_digest.is_some(), src_digest),
            _ => {}
        }
    }
    if tamper {
        dst_memory[3][100] ^= 1;
    }
    let mut ours = MemoryDigest::new();
    for (i, p) in dst_memory.iter().enumerate() {
        ours.add_page(i as u64 * 4096, p)?;
    }
    let ours = ours.finish();
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    let result = checker.commit(dst_digest.then_some(&ours), &mut commit);
    if result.is_err() {
        assert_eq!(checker.phase(), ImportPhase::Poisoned);
    }
    result
}

#[test]
fn verified_mode_digests() {
    assert_eq!(verified_run(50, false, true, true), Ok(()));
    assert_eq!(verified_run(51, true, true, true), Err(Error::DigestMismatch));
    assert_eq!(
        verified_run(52, false, true, false),
        Err(Error::DigestMode { source_verified: true })
    );
    assert_eq!(
        verified_run(53, false, false, true),
        Err(Error::DigestMode { source_verified: false })
    );
    assert_eq!(
        verified_run(54, true, false, false),
        Ok(()),
        "plain mode cannot see a hidden page"
    );
}

#[test]
fn memory_digest_order_and_alignment() {
    let mut d = MemoryDigest::new();
    d.add_page(4096, &[0; PAGE_SIZE]).unwrap();
    assert_eq!(
        d.add_page(4096, &[0; PAGE_SIZE]),
        Err(Error::DigestOrder {
            previous: 4096,
            gpa: 4096
        })
    );
    assert_eq!(d.add_page(8193, &[0; PAGE_SIZE]), Err(Error::Unaligned(8193)));
    // Address and content both count.
    let one = |gpa: u64, byte: u8| {
        let mut d = MemoryDigest::new();
        d.add_page(gpa, &[byte; PAGE_SIZE]).unwrap();
        d.finish()
    };
    assert_ne!(one(0, 1), one(4096, 1));
    assert_ne!(one(0, 1), one(0, 2));
    assert_ne!(MemoryDigest::new().finish(), one(0, 0));
}
