//! Sessions of several lanes, each sealed and opened by its own worker
//! (threads here, the agent's helper vCPUs in the firmware): whole
//! migrations through the mailbox bytes, and what they must refuse.

mod common;

use common::*;
use covm_agent_protocol::record::{RecordHeader, RecordType};
use covm_guest_abi::layout::MIGRATION_POLICY;
use covm_guest_abi::mailbox::status;
use covm_guest_abi::mailbox::words::{
    BeginArgs, CommitArgs, EndRoundArgs, ExportFinalArgs, ExportListArgs, ExportPagesArgs, ExportPagesReply,
    ReadControlReply, Role, SessionState,
};
use std::collections::BTreeSet;

/// A VM whose agent has `workers` vCPUs (1: no team).
fn vm(launch: &Launch, workers: usize) -> Vm {
    Vm::launch_with(launch, |p| {
        if workers > 1 {
            p.team = Some(ThreadTeam { workers });
        }
    })
}

/// The records of a batch: (lane, type, address).
fn records(batch: &[u8]) -> Vec<(u16, RecordType, u64)> {
    let mut out = Vec::new();
    let mut rest = batch;
    while !rest.is_empty() {
        let h = RecordHeader::decode(rest).expect("a record");
        out.push((h.lane, h.record_type, h.address));
        rest = &rest[h.record_len()..];
    }
    out
}

fn lanes_of(batch: &[u8]) -> BTreeSet<u16> {
    records(batch).into_iter().map(|(lane, ..)| lane).collect()
}

fn list(entries: &[(u64, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|&(gpa, n)| gpa.to_le_bytes().into_iter().chain(n.to_le_bytes()))
        .collect()
}

/// Round 0 over all of memory from the source, asked again from where
/// each answer stopped; `each` sees every answer's output and reply.
/// Returns the pages sealed.
fn export_round0(src: &mut Vm, mut each: impl FnMut(&[u8], ExportPagesReply)) -> u64 {
    let (mut pages, mut done, total) = (0, 0, MEMORY / PAGE);
    while done < total {
        let a = src
            .send(
                ExportPagesArgs {
                    round: 0,
                    first: done * PAGE,
                    count: total - done,
                },
                &[],
            )
            .ok();
        done += a.reply().walked_frames;
        pages += a.reply().pages;
        each(&a.output, a.reply());
    }
    pages
}

/// A whole migration of `lanes` lanes, the source's agent with `lanes`
/// workers, the destination's with `dst_workers`: round 0, a dirty round
/// as one list, the Final, the Commit; memory and vCPU states equal.
fn migrate(lanes: u32, dst_workers: usize) {
    let mut src = vm(&Launch::source(1), lanes as usize);
    let mut dst = vm(&Launch::destination(2), dst_workers);
    fill(&mut src);
    handshake_lanes(&mut src, &mut dst, lanes).expect("handshake");

    let mut seen = BTreeSet::new();
    let pages = export_round0(&mut src, |batch, sealed| {
        seen.extend(lanes_of(batch));
        let i = dst.import(batch).ok().reply();
        assert_eq!((i.pages, i.zero_pages), (sealed.pages, sealed.zero_pages));
    });
    assert_eq!(pages, map().pages(), "round 0 covers every private page");
    assert_eq!(seen, (0..lanes as u16).collect(), "every lane carried pages");
    let end = src.send(EndRoundArgs, &[]).ok();
    assert_eq!(end.reply().pages, pages);
    assert_eq!(records(&end.output).len(), lanes as usize, "one RoundEnd per lane");
    dst.import(&end.output).ok();

    // Round 1: pages written and cleared, as one list.
    let private: Vec<u64> = map().iter().filter(|&g| g != MIGRATION_POLICY).collect();
    let written: Vec<u64> = private.iter().copied().step_by(37).collect();
    for &gpa in &written {
        src.memory().put(gpa, &content(gpa, 5));
    }
    let cleared = private[3];
    src.memory().put(cleared, &[0; PAGE as usize]);
    let mut todo: Vec<(u64, u64)> = written.iter().map(|&g| (g, 1)).collect();
    todo.push((cleared, 1));
    let mut sent = 0;
    while !todo.is_empty() {
        let r = src
            .send(
                ExportListArgs {
                    round: 1,
                    entries: todo.len() as u64,
                },
                &list(&todo),
            )
            .ok();
        sent += r.reply().pages;
        dst.import(&r.output).ok();
        let (entries, partial) = (r.reply().entries_done as usize, r.reply().next_entry_frames);
        todo.drain(..entries);
        if let Some(next) = todo.first_mut() {
            *next = (next.0 + partial * PAGE, next.1 - partial);
        }
    }
    assert_eq!(sent, written.len() as u64 + 1);
    let end = src.send(EndRoundArgs, &[]).ok();
    assert_eq!(end.reply().pages, sent);
    dst.import(&end.output).ok();

    src.put_vcpu_state(0, b"vcpu zero state");
    src.put_vcpu_state(1, &[0x5A; 3000]);
    let fin = src
        .send(
            ExportFinalArgs {
                vcpus: VCPUS,
                verified: true,
            },
            &[],
        )
        .ok();
    assert_eq!(lanes_of(&fin.output), BTreeSet::from([0]), "states and Final on lane 0");
    let imported = dst.import(&fin.output).ok().reply();
    assert!(imported.complete && imported.verified);
    let commit = dst.send(CommitArgs { verified: true }, &[]).ok();
    assert_eq!(
        src.read_control(&commit.output).ok().reply(),
        ReadControlReply::Committed
    );
    for gpa in map().iter() {
        assert!(
            src.memory().page(gpa) == dst.memory().page(gpa),
            "page {gpa:#x} differs"
        );
    }
    assert_eq!(dst.vcpu_slot(1), vec![0x5A; 3000]);
    assert_eq!(dst.role_and_state(), (Some(Role::Destination), SessionState::Committed));
}

#[test]
fn two_lanes_on_two_vcpus_each_side_migrate_everything() {
    migrate(2, 2);
}

#[test]
fn four_lanes_open_on_fewer_vcpus_or_one() {
    // Worker w opens the lanes l with l % workers == w.
    migrate(4, 3);
    migrate(4, 1);
}

/// An untouched guest's round 0 on two lanes is a handful of records
/// (the 2 MiB blocks nothing wrote since launch go as runs), and the
/// lanes never look at the agent window (the memory's own checks).
#[test]
fn untouched_blocks_are_one_record_per_run_on_lanes_too() {
    let mut src = vm(&Launch::source(1), 2);
    let mut dst = vm(&Launch::destination(2), 2);
    handshake_lanes(&mut src, &mut dst, 2).unwrap();
    let mut count = 0;
    export_round0(&mut src, |batch, _| {
        count += records(batch).len();
        dst.import(batch).ok();
    });
    // Below WRITE_TRACKED_START (4 MiB) pages are read one by one and
    // zero runs split where the policy and the firmware's pages are; the
    // 2 MiB blocks above it are known zero.
    assert!(count < 40, "{count} records for an untouched guest");
}

/// A request of a few pages (a paused final round's) is sealed on lane 0
/// alone, without waking the helpers, and its batch opened by agent 0
/// alone; the other lanes carry nothing in that round and still end it.
#[test]
fn a_few_pages_go_on_lane_0_alone() {
    let mut src = vm(&Launch::source(1), 2);
    let mut dst = vm(&Launch::destination(2), 2);
    fill(&mut src);
    handshake_lanes(&mut src, &mut dst, 2).unwrap();
    for batch in two_lane_round0(&mut src) {
        dst.import(&batch).ok();
    }
    let private: Vec<u64> = map().iter().filter(|&g| g != MIGRATION_POLICY).collect();
    let pages = [private[10], private[700], private[701]];
    for &gpa in &pages {
        src.memory().put(gpa, &content(gpa, 9));
    }
    let entries: Vec<(u64, u64)> = vec![(pages[0], 1), (pages[1], 2)];
    let r = src.send(ExportListArgs { round: 1, entries: 2 }, &list(&entries)).ok();
    assert_eq!(r.reply().pages, 3);
    assert_eq!(lanes_of(&r.output), BTreeSet::from([0]));
    dst.import(&r.output).ok();
    let end = src.send(EndRoundArgs, &[]).ok();
    assert_eq!(lanes_of(&end.output), BTreeSet::from([0, 1]));
    dst.import(&end.output).ok();
    for gpa in pages {
        assert!(src.memory().page(gpa) == dst.memory().page(gpa), "page {gpa:#x}");
    }
}

#[test]
fn a_source_needs_a_vcpu_per_lane_and_lanes_are_bounded() {
    let mut src = vm(&Launch::source(1), 2);
    for (lanes, text) in [
        (3, "3 lanes, but the agent has 2 vCPUs"),
        (0, "0 lanes (1 to 64)"),
        (65, "65 lanes (1 to 64)"),
    ] {
        src.send(
            BeginArgs {
                role: Role::Source,
                lanes,
            },
            &[],
        )
        .refused(status::BAD_COMMAND, text);
    }
    // A destination opens any number with what it has.
    let mut dst = vm(&Launch::destination(2), 1);
    dst.send(
        BeginArgs {
            role: Role::Destination,
            lanes: 64,
        },
        &[],
    )
    .ok();
}

/// Round 0 of a two-lane session, up to its end; returns the batches.
fn two_lane_round0(src: &mut Vm) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    export_round0(src, |batch, _| batches.push(batch.to_vec()));
    batches.push(src.send(EndRoundArgs, &[]).ok().output);
    batches
}

/// The byte ranges of the Page records of `lane` in `batch`.
fn page_records_of(batch: &[u8], lane: u16) -> Vec<(usize, usize)> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < batch.len() {
        let h = RecordHeader::decode(&batch[at..]).unwrap();
        if h.lane == lane && h.record_type == RecordType::Page {
            out.push((at, at + h.record_len()));
        }
        at += h.record_len();
    }
    out
}

fn fresh_pair(dst_workers: usize) -> (Vm, Vm, Vec<Vec<u8>>) {
    let mut src = vm(&Launch::source(1), 2);
    let mut dst = vm(&Launch::destination(2), dst_workers);
    fill(&mut src);
    handshake_lanes(&mut src, &mut dst, 2).unwrap();
    let batches = two_lane_round0(&mut src);
    (src, dst, batches)
}

#[test]
fn a_tampered_record_on_either_lane_fails_the_session() {
    for (lane, workers) in [(0, 2), (1, 2), (1, 1)] {
        let (_src, mut dst, batches) = fresh_pair(workers);
        let mut batch = batches
            .into_iter()
            .find(|b| !page_records_of(b, lane).is_empty())
            .unwrap();
        let (start, end) = page_records_of(&batch, lane)[0];
        batch[(start + end) / 2] ^= 1;
        dst.import(&batch).refused(status::REFUSED, "refused");
        assert_eq!(dst.state(), SessionState::Failed);
        dst.send(CommitArgs { verified: false }, &[])
            .refused(status::BAD_STATE, "failed");
    }
}

#[test]
fn a_record_dropped_from_one_lane_is_caught() {
    let (_src, mut dst, batches) = fresh_pair(2);
    let mut refused = false;
    let mut dropped = false;
    for batch in batches {
        let mut batch = batch;
        if !dropped {
            if let Some(&(start, end)) = page_records_of(&batch, 1).first() {
                batch.drain(start..end);
                dropped = true;
            }
        }
        let a = dst.import(&batch);
        if a.status != status::OK {
            refused = true;
            break;
        }
    }
    assert!(dropped && refused, "the gap on lane 1 was refused");
    assert_eq!(dst.state(), SessionState::Failed);
}

#[test]
fn lane_counts_must_agree() {
    // Source on two lanes, destination told one: the handshake binds no
    // lane count, the records do, and a lane-1 record is refused.
    let mut src = vm(&Launch::source(1), 2);
    let mut dst = vm(&Launch::destination(2), 2);
    fill(&mut src);
    handshake_mixed(&mut src, &mut dst, 2, 1);
    let batches = two_lane_round0(&mut src);
    let batch = batches.iter().find(|b| lanes_of(b).contains(&1)).unwrap();
    dst.import(batch).refused(status::REFUSED, "lane");
    assert_eq!(dst.state(), SessionState::Failed);
}

/// The handshake with the source told `src_lanes` and the destination
/// `dst_lanes`.
fn handshake_mixed(src: &mut Vm, dst: &mut Vm, src_lanes: u32, dst_lanes: u32) {
    let begin = src
        .send(
            BeginArgs {
                role: Role::Source,
                lanes: src_lanes,
            },
            &[],
        )
        .ok();
    dst.send(
        BeginArgs {
            role: Role::Destination,
            lanes: dst_lanes,
        },
        &[],
    )
    .ok();
    let mut to_dst = messages(&begin.output);
    for _ in 0..8 {
        let mut to_src = Vec::new();
        for m in to_dst.drain(..) {
            to_src.extend(messages(&dst.handshake_message(&m).ok().output));
        }
        if to_src.is_empty() {
            return;
        }
        for m in to_src {
            to_dst.extend(messages(&src.handshake_message(&m).ok().output));
        }
    }
}

#[test]
fn round_0_still_covers_every_private_page_in_order() {
    let mut src = vm(&Launch::source(1), 2);
    let mut dst = vm(&Launch::destination(2), 2);
    fill(&mut src);
    handshake_lanes(&mut src, &mut dst, 2).unwrap();
    src.send(
        ExportPagesArgs {
            round: 0,
            first: 0,
            count: 16,
        },
        &[],
    )
    .ok();
    // Skipping ahead is refused, and fails the session.
    src.send(
        ExportPagesArgs {
            round: 0,
            first: 64 * PAGE,
            count: 16,
        },
        &[],
    )
    .refused(status::REFUSED, "ascending order");
    assert_eq!(src.state(), SessionState::Failed);
}
