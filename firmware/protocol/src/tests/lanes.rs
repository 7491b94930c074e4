//! A record stream spread over several lanes: every guarantee of one
//! stream holds, records of different lanes may arrive in any order,
//! within a lane they may not.

use super::support::*;
use crate::record::{RecordHeader, COMMIT_RECORD_LEN, COUNT_RECORD_LEN, PAGE_RECORD_LEN};
use crate::{Error, ImportChecker, ImportEvent, ImportPhase, SourceSession, PAGE_SIZE};
use std::collections::HashSet;

fn page_on(src: &mut SourceSession, lane: u16, gpa: u64, version: u64) -> Vec<u8> {
    let mut out = [0u8; PAGE_RECORD_LEN];
    out[crate::record::HEADER_LEN..crate::record::HEADER_LEN + PAGE_SIZE].copy_from_slice(&page(gpa / 4096, version));
    src.seal_page_on(lane, gpa, &mut out).unwrap();
    out.to_vec()
}

fn round_end_on(src: &mut SourceSession, lane: u16) -> Vec<u8> {
    let mut out = [0u8; COUNT_RECORD_LEN];
    src.seal_round_end_on(lane, &mut out).unwrap();
    out.to_vec()
}

/// Lane `l`'s records of a 3-lane migration of 12 pages, as three lists:
/// round 0 sends page `i` on lane `i % 3`; round 1 sends pages 1, 4 and 7
/// again, each on a lane other than the first time; then lane 0 carries
/// two vCPU states and the Final.
fn three_lanes(seed: u64) -> ([Vec<Vec<u8>>; 3], crate::DestinationSession) {
    let (mut src, dst) = sessions(seed);
    src.set_lanes(3).unwrap();
    let mut lanes: [Vec<Vec<u8>>; 3] = Default::default();
    for i in 0..12u64 {
        let lane = (i % 3) as u16;
        lanes[lane as usize].push(page_on(&mut src, lane, i * 4096, 0));
    }
    for lane in 0..3u16 {
        lanes[lane as usize].push(round_end_on(&mut src, lane));
    }
    assert_eq!(src.epoch(), 1, "the round closes once every lane ended it");
    for (i, lane) in [(1u64, 2u16), (4, 0), (7, 1)] {
        lanes[lane as usize].push(page_on(&mut src, lane, i * 4096, 1));
    }
    for lane in [2u16, 0, 1] {
        lanes[lane as usize].push(round_end_on(&mut src, lane));
    }
    lanes[0].push(seal_vcpu(&mut src, 0, b"vcpu zero"));
    lanes[0].push(seal_vcpu(&mut src, 1, b"vcpu one"));
    let fin = seal_final(&mut src, None);
    lanes[0].push(fin);
    (lanes, dst)
}

/// Interleaves the lanes' records within each round: `order` picks which
/// lane goes next while it has records of the open round left.
fn interleave(lanes: &[Vec<Vec<u8>>; 3], order: &[usize]) -> Vec<Vec<u8>> {
    // Records of each lane split by round: a round's part ends with its RoundEnd.
    let mut parts: Vec<Vec<Vec<Vec<u8>>>> = lanes
        .iter()
        .map(|records| {
            let mut rounds = vec![Vec::new()];
            for r in records {
                rounds.last_mut().unwrap().push(r.clone());
                if RecordHeader::decode(r).unwrap().record_type == crate::RecordType::RoundEnd {
                    rounds.push(Vec::new());
                }
            }
            rounds
        })
        .collect();
    let mut out = Vec::new();
    let rounds = parts[0].len();
    for round in 0..rounds {
        let mut step = 0;
        while parts.iter().any(|p| p.get(round).is_some_and(|r| !r.is_empty())) {
            let lane = order[step % order.len()];
            step += 1;
            if let Some(r) = parts[lane].get_mut(round).filter(|r| !r.is_empty()) {
                out.push(r.remove(0));
            }
        }
    }
    out
}

fn checker_for<'t>(dst: crate::DestinationSession, table: &'t mut [u32], lanes: u16) -> ImportChecker<'t> {
    let mut checker = ImportChecker::new(dst, table);
    checker.set_lanes(lanes).unwrap();
    checker
}

#[test]
fn lanes_interleaved_in_any_order_import_and_commit() {
    for (seed, order) in [
        (60, vec![0, 1, 2]),
        (61, vec![2, 1, 0]),
        (62, vec![1, 1, 0, 2, 2, 2, 0]),
    ] {
        let (lanes, dst) = three_lanes(seed);
        let records = interleave(&lanes, &order);
        let mut table = vec![0u32; 16];
        let mut checker = checker_for(dst, &mut table, 3);
        let mut pages = HashSet::new();
        for r in &records {
            let mut r = r.clone();
            match checker.open(&mut r).unwrap() {
                ImportEvent::Page { gpa, data } => {
                    assert_eq!(data, &page(gpa / 4096, u64::from(checker.epoch())));
                    pages.insert(gpa);
                }
                ImportEvent::Complete(summary) => {
                    assert_eq!((summary.lanes, summary.rounds, summary.total_pages), (3, 2, 15));
                }
                _ => {}
            }
        }
        assert_eq!(pages.len(), 12);
        let mut commit = [0u8; COMMIT_RECORD_LEN];
        checker.commit(None, &mut commit).unwrap();
        drop(checker);
        assert_eq!(&table[..12], &[1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1]);
    }
}

#[test]
fn reordering_within_a_lane_is_refused() {
    let (lanes, dst) = three_lanes(63);
    let mut records = interleave(&lanes, &[0, 1, 2]);
    // Lane 1's first two records (pages 1 and 4) swapped.
    let first = records
        .iter()
        .position(|r| RecordHeader::decode(r).unwrap().lane == 1)
        .unwrap();
    let second = first
        + 1
        + records[first + 1..]
            .iter()
            .position(|r| RecordHeader::decode(r).unwrap().lane == 1)
            .unwrap();
    records.swap(first, second);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 3);
    assert_eq!(
        feed(&mut checker, &records),
        Err((first, Error::Sequence { expected: 0, got: 1 }))
    );
    assert_eq!(checker.phase(), ImportPhase::Poisoned);
}

#[test]
fn a_page_on_two_lanes_in_one_round_is_refused() {
    let (mut src, dst) = sessions(64);
    src.set_lanes(2).unwrap();
    let records = [page_on(&mut src, 0, 8192, 0), page_on(&mut src, 1, 8192, 0)];
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    assert_eq!(
        feed(&mut checker, &records),
        Err((1, Error::StalePage { gpa: 8192, epoch: 0 }))
    );
}

/// A Page record sealed on `lane` without the session's checks (what a
/// faulty or hostile source could produce with the key).
fn raw_page_on(src: &mut SourceSession, lane: u16, gpa: u64, epoch: u32) -> Vec<u8> {
    let sealer = src.sealer_for_test();
    let seq = sealer.reserve(lane).unwrap();
    let mut r = vec![0u8; PAGE_RECORD_LEN];
    sealer
        .cipher()
        .seal(seq, crate::RecordType::Page, epoch, gpa, &mut r)
        .unwrap();
    r
}

#[test]
fn a_lane_that_ended_the_round_waits_for_the_others() {
    // The source refuses to seal on a lane that ended the open round ...
    let (mut src, _) = sessions(65);
    src.set_lanes(2).unwrap();
    round_end_on(&mut src, 0);
    let mut out = [0u8; PAGE_RECORD_LEN];
    assert_eq!(
        src.seal_page_on(0, 0, &mut out),
        Err(Error::LaneEnded { lane: 0, epoch: 0 })
    );
    let mut out = [0u8; COUNT_RECORD_LEN];
    assert_eq!(
        src.seal_round_end_on(0, &mut out),
        Err(Error::LaneEnded { lane: 0, epoch: 0 })
    );

    // ... and the destination refuses such a record: the round is still open.
    let (mut src, dst) = sessions(66);
    src.set_lanes(2).unwrap();
    let records = [
        round_end_on(&mut src, 0),
        page_on(&mut src, 1, 4096, 0),
        raw_page_on(&mut src, 0, 0, 0),
    ];
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    assert!(matches!(
        checker.open(&mut records[0].clone()),
        Ok(ImportEvent::RoundEnd { lane: 0, pages: 0, .. })
    ));
    assert!(checker.open(&mut records[1].clone()).is_ok());
    assert_eq!(checker.epoch(), 0, "lane 1 has not ended round 0");
    assert_eq!(
        checker.open(&mut records[2].clone()),
        Err(Error::LaneEnded { lane: 0, epoch: 0 })
    );
}

#[test]
fn lane_counts_must_agree() {
    // The destination told one lane too few refuses the extra lane's first record.
    let (lanes, dst) = three_lanes(66);
    let records = interleave(&lanes, &[0, 1, 2]);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    let at = records
        .iter()
        .position(|r| RecordHeader::decode(r).unwrap().lane == 2)
        .unwrap();
    assert_eq!(
        feed(&mut checker, &records),
        Err((at, Error::Lane { lane: 2, lanes: 2 }))
    );

    // Told one lane too many, it never closes round 0: the first record
    // of round 1 is refused.
    let (lanes, dst) = three_lanes(67);
    let records = interleave(&lanes, &[0, 1, 2]);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 4);
    let (at, error) = feed(&mut checker, &records).unwrap_err();
    assert_eq!(error, Error::Epoch { open: 0, got: 1 });
    assert_eq!(RecordHeader::decode(&records[at]).unwrap().epoch, 1);

    // A one-lane source and a destination told two: the Final (after the
    // vCPU states, which need a closed round) can never be accepted.
    let (mut src, dst) = sessions(68);
    let records = small_stream(&mut src);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    assert!(feed(&mut checker, &records).is_err());
    assert_ne!(checker.phase(), ImportPhase::Complete);
}

#[test]
fn a_dropped_lane_round_end_or_page_is_found() {
    // Without lane 1's RoundEnd the round never closes.
    let (lanes, dst) = three_lanes(69);
    let mut records = interleave(&lanes, &[0, 1, 2]);
    let drop_at = records
        .iter()
        .position(|r| {
            let h = RecordHeader::decode(r).unwrap();
            h.lane == 1 && h.record_type == crate::RecordType::RoundEnd
        })
        .unwrap();
    records.remove(drop_at);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 3);
    assert!(feed(&mut checker, &records).is_err());
    // Without a page, that lane's sequence has a gap.
    let (mut lanes, dst) = three_lanes(70);
    lanes[2].remove(1);
    let records = interleave(&lanes, &[0, 1, 2]);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 3);
    assert!(matches!(
        feed(&mut checker, &records),
        Err((_, Error::Sequence { expected: 1, got: 2 }))
    ));
}

#[test]
fn lanes_are_set_before_the_first_record_only_and_within_bounds() {
    let (mut src, dst) = sessions(71);
    assert!(src.set_lanes(0).is_err());
    assert!(src.set_lanes(65).is_err());
    src.set_lanes(64).unwrap();
    let _ = page_on(&mut src, 63, 0, 0);
    assert_eq!(
        src.set_lanes(2),
        Err(Error::State {
            op: "set the lanes after the first record",
            state: "streaming"
        })
    );
    let mut out = [0u8; PAGE_RECORD_LEN];
    assert_eq!(
        src.seal_page_on(64, 0, &mut out),
        Err(Error::Lane { lane: 64, lanes: 64 })
    );
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    assert!(checker.set_lanes(0).is_err());
    checker.set_lanes(64).unwrap();
    // Lane 0's nonces and records are a one-lane session's: a record
    // sealed on lane 63 carries its lane in the header.
    let mut r = page_on(&mut src, 63, 4096, 0);
    assert_eq!(RecordHeader::decode(&r).unwrap().lane, 63);
    assert_eq!(checker.open(&mut r), Err(Error::Sequence { expected: 0, got: 1 }));
}

#[test]
fn moving_a_record_to_another_lane_fails_its_tag() {
    let (mut src, dst) = sessions(72);
    src.set_lanes(2).unwrap();
    let mut r = page_on(&mut src, 1, 0, 0);
    r[2] = 0; // lane 1 -> lane 0, same sequence 0
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    assert_eq!(checker.open(&mut r), Err(Error::RecordAuthentication));
}

/// Seals `pages` pages of one round on `lanes` threads, each its own lane
/// with its own copy of the cipher, the session shared under a lock only
/// to admit; every lane ends the round, then lane 0 carries one vCPU
/// state and the Final. Returns each lane's records.
fn seal_in_parallel(src: SourceSession, lanes: u16, pages: u64) -> Vec<Vec<Vec<u8>>> {
    use std::sync::Mutex;
    let session = Mutex::new(src);
    session.lock().unwrap().set_lanes(lanes).unwrap();
    let mut per_lane: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..lanes)
            .map(|lane| {
                let session = &session;
                s.spawn(move || {
                    let cipher = session.lock().unwrap().cipher();
                    let mut out = Vec::new();
                    for gpa in (0..pages)
                        .filter(|p| p % u64::from(lanes) == u64::from(lane))
                        .map(|p| p * 4096)
                    {
                        let ticket = session.lock().unwrap().admit_page(lane, gpa).unwrap();
                        let mut record = vec![0u8; PAGE_RECORD_LEN];
                        record[32..32 + PAGE_SIZE].copy_from_slice(&page(gpa / 4096, 0));
                        // The cipher work, outside the lock.
                        ticket.seal(&cipher, &mut record).unwrap();
                        out.push(record);
                    }
                    let mut end = [0u8; COUNT_RECORD_LEN];
                    session.lock().unwrap().seal_round_end_on(lane, &mut end).unwrap();
                    out.push(end.to_vec());
                    out
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut src = session.into_inner().unwrap();
    assert_eq!(src.epoch(), 1);
    per_lane[0].push(seal_vcpu(&mut src, 0, b"the only vcpu"));
    per_lane[0].push(seal_final(&mut src, None));
    per_lane
}

#[test]
fn lanes_sealed_and_opened_on_parallel_threads_commit() {
    use std::sync::Mutex;
    let (src, dst) = sessions(73);
    let lanes = 4u16;
    let per_lane = seal_in_parallel(src, lanes, 64);
    let mut table = vec![0u32; 64];
    let checker = Mutex::new(checker_for(dst, &mut table, lanes));
    // Each lane opened on its own thread: admit and settle under the
    // lock, decrypt outside it, so lanes interleave in whatever order the
    // threads run.
    std::thread::scope(|s| {
        for records in &per_lane {
            let checker = &checker;
            s.spawn(move || {
                let cipher = checker.lock().unwrap().cipher();
                for record in records {
                    let mut record = record.clone();
                    let admitted = checker.lock().unwrap().admit(&record).unwrap();
                    let header = *admitted.header();
                    if header.lane == 0 && header.record_type == crate::RecordType::VcpuState {
                        // vCPU states need the round closed by every lane.
                        while checker.lock().unwrap().epoch() == 0 {
                            std::thread::yield_now();
                        }
                    }
                    let opened = admitted.open(&cipher, &mut record);
                    if let ImportEvent::Page { gpa, data } = checker.lock().unwrap().settle(admitted, opened).unwrap() {
                        assert_eq!(data, &page(gpa / 4096, 0));
                    }
                }
            });
        }
    });
    let mut checker = checker.into_inner().unwrap();
    assert_eq!(checker.phase(), ImportPhase::Complete);
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    checker.commit(None, &mut commit).unwrap();
    drop(checker);
    assert!(table.iter().all(|&e| e == 1));
}

#[test]
fn admitted_records_are_settled_in_lane_order_and_before_commit() {
    let (src, dst) = sessions(74);
    let per_lane = seal_in_parallel(src, 2, 8);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    let cipher = checker.cipher();
    // A lane admits nothing more until its record settled.
    let first = per_lane[1][0].clone();
    let admitted = checker.admit(&first).unwrap();
    assert!(matches!(checker.admit(&per_lane[1][1]), Err(Error::State { .. })));
    assert_eq!(checker.phase(), ImportPhase::Poisoned);
    let mut first = first;
    let opened = admitted.open(&cipher, &mut first);
    assert!(opened.is_ok());
    assert_eq!(checker.settle(admitted, opened).unwrap_err(), Error::Poisoned);

    // An admitted record whose decryption failed poisons the checker.
    let (src, dst) = sessions(75);
    let per_lane = seal_in_parallel(src, 2, 8);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    let cipher = checker.cipher();
    let mut bad = per_lane[0][0].clone();
    bad[100] ^= 1;
    let admitted = checker.admit(&bad).unwrap();
    let opened = admitted.open(&cipher, &mut bad);
    assert_eq!(opened, Err(Error::RecordAuthentication));
    assert_eq!(checker.settle(admitted, opened), Err(Error::RecordAuthentication));
    assert_eq!(checker.phase(), ImportPhase::Poisoned);

    // Everything settled but one admitted record: no commit.
    let (src, dst) = sessions(76);
    let per_lane = seal_in_parallel(src, 2, 8);
    let mut table = vec![0u32; 16];
    let mut checker = checker_for(dst, &mut table, 2);
    feed(&mut checker, &interleave_two(&per_lane)).unwrap();
    assert_eq!(checker.phase(), ImportPhase::Complete);
    // A record with lane 1's next number (its tag is never checked: it
    // stays admitted).
    let mut header = RecordHeader::decode(&per_lane[1][0]).unwrap();
    header.sequence = per_lane[1].len() as u64;
    let mut forged = per_lane[1][0].clone();
    forged[..32].copy_from_slice(&header.encode());
    let admitted = checker.admit(&forged).unwrap();
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    assert_eq!(checker.commit(None, &mut commit), Err(Error::Incomplete));
    drop(admitted);
}

/// Lane 0's and lane 1's records of [`seal_in_parallel`], alternating,
/// lane 0's vCPU state and Final last.
fn interleave_two(per_lane: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let (tail, head0) = per_lane[0].split_at(per_lane[0].len() - 2);
    let mut out = Vec::new();
    for i in 0..tail.len().max(per_lane[1].len()) {
        out.extend(tail.get(i).cloned());
        out.extend(per_lane[1].get(i).cloned());
    }
    out.extend(head0.iter().cloned());
    out
}
