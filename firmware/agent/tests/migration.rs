//! Whole migrations between two agents, driven through the mailbox bytes
//! exactly as covm does: BEGIN, the handshake relay, round 0 over all of
//! memory, a dirty round, EXPORT_FINAL, IMPORT, COMMIT, READ_CONTROL.

mod common;

use common::*;
use covm_agent_protocol::record::COMMIT_RECORD_LEN;
use covm_guest_abi::layout::MIGRATION_POLICY;
use covm_guest_abi::mailbox::words::{
    BeginArgs, CommitArgs, CostsArgs, EndRoundArgs, ExportFinalArgs, ExportListArgs, ExportPagesArgs, MintAbortArgs,
    ReadControlReply, Role, SessionState, StatusReply,
};
use covm_guest_abi::mailbox::{status, AGENT_WINDOW_START};

/// Pages the dirty round rewrites (some were zero, some not) and pages it
/// clears (they travel as ZeroPages and must be cleared at the destination).
fn dirty_round(src: &mut Vm, dst: &mut Vm) -> u64 {
    let pages: Vec<u64> = map().iter().collect();
    let written: Vec<u64> = pages
        .iter()
        .copied()
        .step_by(97)
        .filter(|&g| g != MIGRATION_POLICY)
        .collect();
    let cleared: Vec<u64> = pages.iter().copied().skip(5).step_by(501).collect();
    for &gpa in &written {
        src.memory_mut().put(gpa, &content(gpa, 1));
    }
    for &gpa in &cleared {
        assert!(written.iter().all(|&w| w != gpa));
        src.memory().put(gpa, &[0; PAGE as usize]);
    }
    let mut sent = 0;
    // The dirty log is only a hint: any private page, any order, plus a
    // page outside private memory, which is skipped.
    let mut ask: Vec<u64> = written.iter().chain(&cleared).copied().collect();
    ask.reverse();
    ask.push(AGENT_WINDOW_START);
    for gpa in ask {
        let a = src
            .send(
                ExportPagesArgs {
                    round: 1,
                    first: gpa,
                    count: 1,
                },
                &[],
            )
            .ok();
        sent += a.reply().pages;
        if !a.output.is_empty() {
            let i = dst.import(&a.output).ok();
            assert_eq!(i.reply().pages, a.reply().pages);
            assert_eq!(i.reply().zero_pages, a.reply().zero_pages);
        }
    }
    assert_eq!(sent, (written.len() + cleared.len()) as u64);
    let end = src.send(EndRoundArgs, &[]).ok();
    assert_eq!(end.reply().pages, sent);
    dst.import(&end.output).ok();
    sent
}

fn check_memory_moved(src: &Vm, dst: &Vm) {
    for gpa in map().iter() {
        assert!(
            src.memory().page(gpa) == dst.memory().page(gpa),
            "page {gpa:#x} differs"
        );
    }
    // Outside private memory nothing travelled.
    assert!(dst.memory().slice(0xA0000, 64).iter().all(|&b| b == 0));
    assert!(dst.memory().slice(0x9fc00, 64).iter().all(|&b| b == 0));
}

fn migrate(verified: bool) -> (Vm, Vm) {
    let mut src = Vm::source(1);
    let mut dst = Vm::destination(2);
    fill(&mut src);
    assert_eq!(
        src.status(),
        StatusReply {
            role: None,
            state: SessionState::Idle,
            may_resume: true,
            epoch: 0,
            records: 0,
            pages: 0
        }
    );

    handshake(&mut src, &mut dst).expect("handshake");
    assert_eq!(src.session(), (Some(Role::Source), SessionState::Streaming, true));
    assert_eq!(dst.session(), (Some(Role::Destination), SessionState::Streaming, false));

    let (pages, zeros) = round0(&mut src, &mut dst, 256);
    assert_eq!(pages, map().pages());
    assert!(zeros > pages / 2 && zeros < pages);
    let dirty = dirty_round(&mut src, &mut dst);
    assert_eq!(src.status().epoch, 2, "epoch");

    // The platform put the paused vCPUs' states in the VMSA area.
    src.put_vcpu_state(0, b"vcpu zero state");
    src.put_vcpu_state(1, &[0x5A; 3000]);
    let fin = src.send(ExportFinalArgs { vcpus: VCPUS, verified }, &[]).ok();
    assert_eq!(src.session(), (Some(Role::Source), SessionState::FinalSent, false));
    let imported = dst.import(&fin.output).ok().reply();
    assert!(imported.complete, "Final accepted");
    assert_eq!(imported.vcpu_states, u64::from(VCPUS));
    assert_eq!(imported.verified, verified);
    assert_eq!(dst.state(), SessionState::Complete);

    let commit = dst.send(CommitArgs { verified }, &[]).ok();
    assert_eq!(commit.output.len(), COMMIT_RECORD_LEN);
    assert_eq!(dst.state(), SessionState::Committed);
    assert_eq!(src.agent.platform().retired, 0);
    let read = src.read_control(&commit.output).ok();
    assert_eq!(read.reply(), ReadControlReply::Committed, "committed");
    assert_eq!(
        src.agent.platform().retired,
        1,
        "the platform was told to retire the source"
    );

    check_memory_moved(&src, &dst);
    assert_eq!(dst.vcpu_slot(0), b"vcpu zero state");
    assert_eq!(dst.vcpu_slot(1), vec![0x5A; 3000]);

    let s = src.status();
    assert_eq!(
        (s.role, s.state, s.may_resume, s.epoch),
        (Some(Role::Source), SessionState::Committed, false, 2)
    );
    assert_eq!(s.pages, pages + dirty);
    assert_eq!(dst.role_and_state(), (Some(Role::Destination), SessionState::Committed));
    (src, dst)
}

#[test]
fn verified_migration_moves_memory_and_vcpus() {
    let (mut src, mut dst) = migrate(true);
    // The source retired: only STATUS is answered, for good.
    src.send(
        BeginArgs {
            role: Role::Source,
            lanes: 1,
        },
        &[],
    )
    .refused(status::BAD_STATE, "never runs here again");
    src.send(
        ExportPagesArgs {
            round: 2,
            first: 0,
            count: 1,
        },
        &[],
    )
    .refused(status::BAD_STATE, "never runs here again");
    assert_eq!(src.session(), (Some(Role::Source), SessionState::Committed, false));
    // The destination runs the guest: no abort, no second import, the
    // Commit again (a lost one is re-sent).
    dst.send(MintAbortArgs { reason: 1 }, &[])
        .refused(status::BAD_STATE, "committed");
    let again = dst.send(CommitArgs { verified: true }, &[]).ok();
    assert_eq!(again.output.len(), COMMIT_RECORD_LEN);
    dst.import(&again.output).refused(status::REFUSED, "committed");
    dst.send(
        BeginArgs {
            role: Role::Destination,
            lanes: 1,
        },
        &[],
    )
    .refused(status::BAD_STATE, "it can only migrate on");
    assert_eq!(dst.role_and_state(), (Some(Role::Destination), SessionState::Committed));
}

#[test]
fn a_migrated_guest_migrates_on() {
    let (_a, mut b) = migrate(true);
    let mut c = Vm::destination(3);
    handshake(&mut b, &mut c).expect("B as a source");
    // The guest ran at B meanwhile.
    let gpa = map().iter().nth(4000).unwrap();
    b.memory_mut().put(gpa, &content(gpa, 9));
    round0(&mut b, &mut c, 200);
    b.put_vcpu_state(0, b"b0");
    b.put_vcpu_state(1, b"b1");
    let fin = b
        .send(
            ExportFinalArgs {
                vcpus: 2,
                verified: true,
            },
            &[],
        )
        .ok();
    c.import(&fin.output).ok();
    let commit = c.send(CommitArgs { verified: true }, &[]).ok();
    b.read_control(&commit.output).ok();
    check_memory_moved(&b, &c);
    assert_eq!(c.vcpu_slot(1), b"b1");
    assert_eq!(b.agent.platform().retired, 1);
}

/// COSTS accounts each side's commands and per-page stages, inside the
/// commands' time, and still answers once the source retired.
#[test]
fn costs_account_for_each_side_and_answer_after_commit() {
    let (mut src, mut dst) = migrate(false);
    for (side, vm) in [("source", &mut src), ("destination", &mut dst)] {
        let costs = vm.send(CostsArgs, &[]).ok().reply();
        assert!(costs.commands >= 5, "{side}: {costs:?}");
        assert!(
            costs.crypto_ticks > 0 && costs.copy_in_ticks > 0 && costs.copy_out_ticks > 0,
            "{side}: {costs:?}"
        );
        let stages = costs.copy_in_ticks + costs.crypto_ticks + costs.copy_out_ticks + costs.zero_ticks;
        assert!(stages <= costs.busy_ticks, "{side}: {costs:?}");
    }
    // A new session starts the counts again.
    let mut fresh = Vm::source(3);
    fresh
        .send(
            BeginArgs {
                role: Role::Source,
                lanes: 1,
            },
            &[],
        )
        .ok();
    let costs = fresh.send(CostsArgs, &[]).ok().reply();
    assert_eq!((costs.commands, costs.crypto_ticks), (1, 0), "{costs:?}");
}

#[test]
fn unverified_migration_moves_memory_and_vcpus() {
    let (src, dst) = migrate(false);
    assert_eq!(dst.agent.platform().retired, 0);
    assert_eq!(src.agent.platform().retired, 1);
}

#[test]
fn zero_pages_are_not_written_where_already_zero() {
    let mut src = Vm::source(1);
    let mut dst = Vm::destination(2);
    fill(&mut src);
    handshake(&mut src, &mut dst).unwrap();
    let before = dst.memory().page_writes();
    round0(&mut src, &mut dst, 256);
    let nonzero = map()
        .iter()
        .filter(|&g| src.memory().page(g).iter().any(|&b| b != 0))
        .count() as u64;
    // The policy page is already equal at the destination but not zero:
    // written again like any other page.
    assert_eq!(dst.memory().page_writes() - before, nonzero);
}

/// Pages of 2 MiB pages nothing wrote since launch (the firmware's clear
/// dirty bits) are sealed as zeros without a read at the source and left
/// alone at the destination; written ones are read and cleared as usual.
#[test]
fn untouched_memory_is_neither_read_nor_cleared() {
    use covm_guest_abi::layout::WRITE_TRACKED_START;
    const BIG: u64 = 2 << 20;
    let mut src = Vm::source(1);
    let mut dst = Vm::destination(2);
    let low = map().iter().find(|&g| g > 0x200000).unwrap();
    src.memory_mut().put(low, &content(low, 0));
    // One tracked 2 MiB page written at the source (one page of data);
    // at the destination a stale page in it, and in another, that the
    // source's zeros must clear.
    let touched = WRITE_TRACKED_START + BIG;
    src.memory_mut()
        .put(touched + 3 * PAGE, &content(touched + 3 * PAGE, 0));
    dst.memory_mut().put(touched + 7 * PAGE, &[0xEE; 64]);
    let stale = WRITE_TRACKED_START + 3 * BIG;
    dst.memory_mut().put(stale, &[0xEF; 64]);
    handshake(&mut src, &mut dst).unwrap();
    let (src_reads, dst_reads) = (src.memory().zero_reads(), dst.memory().zero_reads());
    let (pages, zeros) = round0(&mut src, &mut dst, 256);
    assert_eq!(pages, map().pages());
    // Data: the low page, the policy page and the tracked page.
    assert_eq!(zeros, pages - 3);
    check_memory_moved(&src, &dst);

    let tracked = |g: &u64| *g >= WRITE_TRACKED_START;
    let untracked = map().iter().filter(|g| !tracked(g)).count() as u64;
    // The source read every untracked page and the written 2 MiB page,
    // not one page of the three untouched ones.
    assert_eq!(src.memory().zero_reads() - src_reads, untracked + BIG / PAGE);
    // The destination checked the untracked zeros and the zeros of its
    // two written 2 MiB pages, nothing else.
    let dst_checked = dst.memory().zero_reads() - dst_reads;
    assert_eq!(dst_checked, untracked - 2 + 2 * BIG / PAGE - 1);
    assert!(dst.memory().page(stale).iter().all(|&b| b == 0), "stale page cleared");
}

fn list(entries: &[(u64, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|&(gpa, n)| gpa.to_le_bytes().into_iter().chain(n.to_le_bytes()))
        .collect()
}

/// A dirty round handed over as one EXPORT_LIST: runs in any order, one
/// inside the agent window (skipped), pages written and cleared since
/// round 0; one output, one import, memory equal afterwards. A list too
/// big for one output stops where the host resumes.
#[test]
fn a_dirty_round_as_one_list() {
    let mut src = Vm::source(1);
    let mut dst = Vm::destination(2);
    fill(&mut src);
    handshake(&mut src, &mut dst).unwrap();
    round0(&mut src, &mut dst, 256);
    let pages: Vec<u64> = map().iter().filter(|&g| g != MIGRATION_POLICY).collect();
    let (a, b, c) = (pages[300], pages[2000], pages[5000]);
    for gpa in [a, a + PAGE, b] {
        src.memory_mut().put(gpa, &content(gpa, 3));
    }
    src.memory().put(c, &[0; PAGE as usize]);
    let entries = [(b, 1), (AGENT_WINDOW_START, 4), (a, 2), (c, 1)];
    let r = src
        .send(
            ExportListArgs {
                round: 1,
                entries: entries.len() as u64,
            },
            &list(&entries),
        )
        .ok();
    let sealed = r.reply();
    assert_eq!(
        (
            sealed.pages,
            sealed.zero_pages,
            sealed.entries_done,
            sealed.next_entry_frames
        ),
        (4, 1, 4, 0)
    );
    let i = dst.import(&r.output).ok().reply();
    assert_eq!((i.pages, i.zero_pages), (4, 1));
    let end = src.send(EndRoundArgs, &[]).ok();
    assert_eq!(end.reply().pages, 4);
    dst.import(&end.output).ok();
    check_memory_moved(&src, &dst);

    // Round 2: every page written again, asked as two entries of which
    // the first alone overflows one output.
    for &gpa in &pages {
        src.memory_mut().put(gpa, &content(gpa, 4));
    }
    let mut todo = vec![(0u64, MEMORY / PAGE / 2), (MEMORY / 2, MEMORY / PAGE / 2)];
    let mut calls = 0;
    while !todo.is_empty() {
        let r = src
            .send(
                ExportListArgs {
                    round: 2,
                    entries: todo.len() as u64,
                },
                &list(&todo),
            )
            .ok();
        dst.import(&r.output).ok();
        let (done, partial) = (r.reply().entries_done as usize, r.reply().next_entry_frames);
        todo.drain(..done);
        if let Some(next) = todo.first_mut() {
            *next = (next.0 + partial * PAGE, next.1 - partial);
        }
        calls += 1;
    }
    assert!(calls > 2, "{calls} calls: the list never stopped early");
    let end = src.send(EndRoundArgs, &[]).ok();
    dst.import(&end.output).ok();
    check_memory_moved(&src, &dst);
}

#[test]
fn destination_can_start_again_after_an_abort() {
    let mut src = Vm::source(1);
    let mut dst = Vm::destination(2);
    fill(&mut src);
    handshake(&mut src, &mut dst).unwrap();
    round0(&mut src, &mut dst, 128);
    let token = dst.send(MintAbortArgs { reason: 7 }, &[]).ok();
    assert_eq!(dst.state(), SessionState::Aborted);
    let read = src.read_control(&token.output).ok();
    assert_eq!(read.reply(), ReadControlReply::Aborted { reason: 7 });
    assert_eq!(src.session(), (Some(Role::Source), SessionState::Aborted, true));
    // A new session: a new epoch table, everything again.
    handshake(&mut src, &mut dst).unwrap();
    assert_eq!(dst.agent.platform().retired, 0);
    round0(&mut src, &mut dst, 300);
    src.put_vcpu_state(0, b"a");
    src.put_vcpu_state(1, b"b");
    let fin = src
        .send(
            ExportFinalArgs {
                vcpus: 2,
                verified: true,
            },
            &[],
        )
        .ok();
    dst.import(&fin.output).ok();
    let commit = dst.send(CommitArgs { verified: true }, &[]).ok();
    src.read_control(&commit.output).ok();
    check_memory_moved(&src, &dst);
}

/// The deepest stack a whole migration uses (both agents on one thread),
/// painted and measured; it must fit the agent's private stack.
#[test]
fn stack_use_fits_the_private_stack() {
    use covm_guest_abi::mailbox::AGENT_STACK_SIZE;
    let handle = std::thread::Builder::new()
        .stack_size(AGENT_STACK_SIZE as usize)
        .spawn(|| {
            let depth = measure_stack(|| {
                migrate(true);
            });
            println!("deepest stack of a whole migration (both agents, this build): {depth} bytes");
            depth
        })
        .unwrap();
    let depth = handle
        .join()
        .expect("the migration overflowed a stack the size of AGENT_STACK");
    assert!(depth < AGENT_STACK_SIZE as usize);
    println!(
        "an Agent (kept in AGENT_DATA by the firmware) is {} bytes",
        std::mem::size_of::<TestAgent>()
    );
}

/// Runs `f`, returning how deep below the caller's frame the stack went.
#[inline(never)]
fn measure_stack(f: impl FnOnce()) -> usize {
    const PAINTED: usize = 768 << 10;
    const PAINT: u8 = 0xA5;
    let marker = 0u8;
    let top = std::ptr::addr_of!(marker) as usize - 512;
    let bottom = top - PAINTED;
    paint(bottom, top, PAINT);
    f();
    (bottom..top)
        .find(|&a| {
            // SAFETY: the painted bytes lie within this thread's stack
            // (AGENT_STACK_SIZE) below the live frames.
            unsafe { std::ptr::read_volatile(a as *const u8) != PAINT }
        })
        .map_or(0, |deepest| top - deepest)
}

#[inline(never)]
fn paint(bottom: usize, top: usize, value: u8) {
    for a in bottom..top {
        // SAFETY: as above; the area is below the current frame, so only
        // frames called later use it.
        unsafe { std::ptr::write_volatile(a as *mut u8, value) };
    }
}
