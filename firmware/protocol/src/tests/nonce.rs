//! Nonces never repeat under a key: not across many records, not after
//! failed seals, not at the end of the counter.

use super::support::*;
use crate::record::stream::{nonce, StreamId};
use crate::record::{RecordHeader, COUNT_RECORD_LEN, PAGE_RECORD_LEN, RECORD_OVERHEAD};
use crate::{Error, ImportChecker, PAGE_SIZE};
use std::collections::HashSet;

#[test]
fn many_records_many_nonces_even_after_failed_seals() {
    let (mut src, dst) = sessions(10);
    let mut seen = HashSet::new();
    let mut sealed = Vec::new();
    let mut failures = 0;
    let same_page = page(1, 1);
    for i in 0..2000u64 {
        let before = src.next_sequence();
        let mut r = [0u8; PAGE_RECORD_LEN];
        // Every 7th seal is bad (unaligned address): it must still use up
        // its number.
        let gpa = if i % 7 == 3 { i * 4096 + 1 } else { i * 4096 };
        match src.seal_page(gpa, &same_page, &mut r) {
            Ok(h) => {
                assert_eq!(h.sequence, before);
                assert!(
                    seen.insert(nonce(StreamId::S2dRecords, h.lane, h.sequence)),
                    "nonce reused"
                );
                sealed.push(r);
            }
            Err(Error::Unaligned(_)) => failures += 1,
            Err(e) => panic!("{e}"),
        }
        assert_eq!(
            src.next_sequence(),
            before + 1,
            "a seal, failed or not, takes one number"
        );
    }
    assert!(failures > 200);
    // The same plaintext never gives the same ciphertext.
    let ciphertexts: HashSet<&[u8]> = sealed.iter().map(|r| &r[32..]).collect();
    assert_eq!(ciphertexts.len(), sealed.len());

    // Other record types share the counter.
    let mut c = [0u8; COUNT_RECORD_LEN];
    let h = src.seal_zero_pages(0x10_0000_0000, 3, &mut c).unwrap();
    assert!(seen.insert(nonce(StreamId::S2dRecords, h.lane, h.sequence)));
    let mut bad = [0u8; RECORD_OVERHEAD];
    assert!(src.seal_vcpu_state(0, &[], &mut bad).is_err(), "empty state refused");
    src.seal_round_end(&mut c).unwrap();
    assert_eq!(RecordHeader::decode(&c).unwrap().sequence, h.sequence + 2);

    // The destination sees the gap a failed seal left: fail closed.
    let mut table = vec![0u32; 4096];
    let mut checker = ImportChecker::new(dst, &mut table);
    let (i, e) = feed(&mut checker, &sealed.iter().map(|r| r.to_vec()).collect::<Vec<_>>()).unwrap_err();
    assert_eq!(i, 3);
    assert_eq!(e, Error::Sequence { expected: 3, got: 4 });
}

#[test]
fn the_counter_never_wraps() {
    let (mut src, _dst) = sessions(11);
    src.sealer_for_test().set_next_for_test(u64::MAX - 1);
    let mut r = [0u8; PAGE_RECORD_LEN];
    let h = src.seal_page(0, &[1; PAGE_SIZE], &mut r).unwrap();
    assert_eq!(h.sequence, u64::MAX - 1);
    for _ in 0..3 {
        assert_eq!(
            src.seal_page(4096, &[1; PAGE_SIZE], &mut r),
            Err(Error::CounterExhausted)
        );
        assert_eq!(src.next_sequence(), u64::MAX);
    }
}

#[test]
fn nonce_layout_is_stream_then_counter() {
    assert_eq!(
        nonce(StreamId::D2sAbort, 0, 0x0102_0304_0506_0708),
        [3, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
    );
    // A lane is the stream id's upper half: lane 0 is the stream's own.
    assert_eq!(nonce(StreamId::S2dRecords, 2, 5), [1, 0, 2, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(nonce(StreamId::S2dRecords, 0, 5)[..4], [1, 0, 0, 0]);
    // Two sessions never share a session id (or keys).
    let (a, _) = sessions(12);
    let (b, _) = sessions(13);
    assert_ne!(a.session_id(), b.session_id());
}
