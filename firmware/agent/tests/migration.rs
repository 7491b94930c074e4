//! Whole migrations between two agents, driven through the mailbox bytes
//! exactly as covm does: BEGIN, the handshake relay, round 0 over all of
//! memory, a dirty round, EXPORT_FINAL, IMPORT, COMMIT, READ_CONTROL.

mod common;

use common::*;
use covm_agent_protocol::record::COMMIT_RECORD_LEN;
use covm_guest_abi::layout::MIGRATION_POLICY;
use covm_guest_abi::mailbox::{command, result, state, status, AGENT_WINDOW_START};

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
        src.memory_mut().page_mut(gpa).fill(0);
    }
    let mut sent = 0;
    // The dirty log is only a hint: any private page, any order, plus a
    // page outside private memory, which is skipped.
    let mut ask: Vec<u64> = written.iter().chain(&cleared).copied().collect();
    ask.reverse();
    ask.push(AGENT_WINDOW_START);
    for gpa in ask {
        let a = src.call(command::EXPORT_PAGES, &[1, gpa, 1], &[]).ok();
        sent += a.results[0];
        if !a.output.is_empty() {
            let i = dst.call(command::IMPORT, &[a.output.len() as u64], &a.output).ok();
            assert_eq!(i.results[0], a.results[0]);
            assert_eq!(i.results[1], a.results[1]);
        }
    }
    assert_eq!(sent, (written.len() + cleared.len()) as u64);
    let end = src.call(command::END_ROUND, &[], &[]).ok();
    assert_eq!(end.results[0], sent);
    dst.call(command::IMPORT, &[end.output.len() as u64], &end.output).ok();
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
    assert_eq!(src.status(), [0, state::IDLE, 1, 0, 0, 0]);

    handshake(&mut src, &mut dst).expect("handshake");
    assert_eq!(src.status()[..3], [1, state::STREAMING, 1]);
    assert_eq!(dst.status()[..3], [2, state::STREAMING, 0]);

    let (pages, zeros) = round0(&mut src, &mut dst, 256);
    assert_eq!(pages, map().pages());
    assert!(zeros > pages / 2 && zeros < pages);
    let dirty = dirty_round(&mut src, &mut dst);
    assert_eq!(src.status()[3], 2, "epoch");

    // The platform put the paused vCPUs' states in the VMSA area.
    src.put_vcpu_state(0, b"vcpu zero state");
    src.put_vcpu_state(1, &[0x5A; 3000]);
    let fin = src
        .call(command::EXPORT_FINAL, &[u64::from(VCPUS), u64::from(verified)], &[])
        .ok();
    assert_eq!(src.status()[..3], [1, state::FINAL_SENT, 0]);
    let imported = dst.call(command::IMPORT, &[fin.output.len() as u64], &fin.output).ok();
    assert_eq!(imported.results[2], 1, "Final accepted");
    assert_eq!(imported.results[3], u64::from(VCPUS));
    assert_eq!(imported.results[result::IMPORT_VERIFIED], u64::from(verified));
    assert_eq!(dst.state(), state::COMPLETE);

    let commit = dst.call(command::COMMIT, &[u64::from(verified)], &[]).ok();
    assert_eq!(commit.output.len(), COMMIT_RECORD_LEN);
    assert_eq!(dst.state(), state::COMMITTED);
    assert_eq!(src.agent.platform().retired, 0);
    let read = src
        .call(command::READ_CONTROL, &[commit.output.len() as u64], &commit.output)
        .ok();
    assert_eq!(read.results[0], 1, "committed");
    assert_eq!(
        src.agent.platform().retired,
        1,
        "the platform was told to retire the source"
    );

    check_memory_moved(&src, &dst);
    assert_eq!(dst.vcpu_slot(0), b"vcpu zero state");
    assert_eq!(dst.vcpu_slot(1), vec![0x5A; 3000]);

    let s = src.status();
    assert_eq!(s[..4], [1, state::COMMITTED, 0, 2]);
    assert_eq!(s[5], pages + dirty);
    assert_eq!(dst.status()[..2], [2, state::COMMITTED]);
    (src, dst)
}

#[test]
fn verified_migration_moves_memory_and_vcpus() {
    let (mut src, mut dst) = migrate(true);
    // The source retired: only STATUS is answered, for good.
    src.call(command::BEGIN, &[0], &[])
        .refused(status::BAD_STATE, "never runs here again");
    src.call(command::EXPORT_PAGES, &[2, 0, 1], &[])
        .refused(status::BAD_STATE, "never runs here again");
    assert_eq!(src.status()[..3], [1, state::COMMITTED, 0]);
    // The destination runs the guest: no abort, no second import, the
    // Commit again (a lost one is re-sent).
    dst.call(command::MINT_ABORT, &[1], &[])
        .refused(status::BAD_STATE, "committed");
    let again = dst.call(command::COMMIT, &[1], &[]).ok();
    assert_eq!(again.output.len(), COMMIT_RECORD_LEN);
    dst.call(command::IMPORT, &[again.output.len() as u64], &again.output)
        .refused(status::REFUSED, "committed");
    dst.call(command::BEGIN, &[1], &[])
        .refused(status::BAD_STATE, "it can only migrate on");
    assert_eq!(dst.status()[..2], [2, state::COMMITTED]);
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
    let fin = b.call(command::EXPORT_FINAL, &[2, 1], &[]).ok();
    c.call(command::IMPORT, &[fin.output.len() as u64], &fin.output).ok();
    let commit = c.call(command::COMMIT, &[1], &[]).ok();
    b.call(command::READ_CONTROL, &[commit.output.len() as u64], &commit.output)
        .ok();
    check_memory_moved(&b, &c);
    assert_eq!(c.vcpu_slot(1), b"b1");
    assert_eq!(b.agent.platform().retired, 1);
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
    let before = dst.memory().page_writes;
    round0(&mut src, &mut dst, 256);
    let nonzero = map()
        .iter()
        .filter(|&g| src.memory().page(g).iter().any(|&b| b != 0))
        .count() as u64;
    // The policy page is already equal at the destination but not zero:
    // written again like any other page.
    assert_eq!(dst.memory().page_writes - before, nonzero);
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
    let (src_reads, dst_reads) = (src.memory().zero_reads.get(), dst.memory().zero_reads.get());
    let (pages, zeros) = round0(&mut src, &mut dst, 256);
    assert_eq!(pages, map().pages());
    // Data: the low page, the policy page and the tracked page.
    assert_eq!(zeros, pages - 3);
    check_memory_moved(&src, &dst);

    let tracked = |g: &u64| *g >= WRITE_TRACKED_START;
    let untracked = map().iter().filter(|g| !tracked(g)).count() as u64;
    // The source read every untracked page and the written 2 MiB page,
    // not one page of the three untouched ones.
    assert_eq!(src.memory().zero_reads.get() - src_reads, untracked + BIG / PAGE);
    // The destination checked the untracked zeros and the zeros of its
    // two written 2 MiB pages, nothing else.
    let dst_checked = dst.memory().zero_reads.get() - dst_reads;
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
    src.memory_mut().page_mut(c).fill(0);
    let entries = [(b, 1), (AGENT_WINDOW_START, 4), (a, 2), (c, 1)];
    let r = src
        .call(command::EXPORT_LIST, &[1, entries.len() as u64], &list(&entries))
        .ok();
    assert_eq!(r.results[..4], [4, 1, 4, 0]);
    let i = dst.call(command::IMPORT, &[r.output.len() as u64], &r.output).ok();
    assert_eq!(i.results[..2], [4, 1]);
    let end = src.call(command::END_ROUND, &[], &[]).ok();
    assert_eq!(end.results[0], 4);
    dst.call(command::IMPORT, &[end.output.len() as u64], &end.output).ok();
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
            .call(command::EXPORT_LIST, &[2, todo.len() as u64], &list(&todo))
            .ok();
        dst.call(command::IMPORT, &[r.output.len() as u64], &r.output).ok();
        let (done, partial) = (r.results[2] as usize, r.results[3]);
        todo.drain(..done);
        if let Some(next) = todo.first_mut() {
            *next = (next.0 + partial * PAGE, next.1 - partial);
        }
        calls += 1;
    }
    assert!(calls > 2, "{calls} calls: the list never stopped early");
    let end = src.call(command::END_ROUND, &[], &[]).ok();
    dst.call(command::IMPORT, &[end.output.len() as u64], &end.output).ok();
    check_memory_moved(&src, &dst);
}

#[test]
fn destination_can_start_again_after_an_abort() {
    let mut src = Vm::source(1);
    let mut dst = Vm::destination(2);
    fill(&mut src);
    handshake(&mut src, &mut dst).unwrap();
    round0(&mut src, &mut dst, 128);
    let token = dst.call(command::MINT_ABORT, &[7], &[]).ok();
    assert_eq!(dst.state(), state::ABORTED);
    let read = src
        .call(command::READ_CONTROL, &[token.output.len() as u64], &token.output)
        .ok();
    assert_eq!(read.results[..2], [2, 7]);
    assert_eq!(src.status()[..3], [1, state::ABORTED, 1]);
    // A new session: a new epoch table, everything again.
    handshake(&mut src, &mut dst).unwrap();
    assert_eq!(dst.agent.platform().retired, 0);
    round0(&mut src, &mut dst, 300);
    src.put_vcpu_state(0, b"a");
    src.put_vcpu_state(1, b"b");
    let fin = src.call(command::EXPORT_FINAL, &[2, 1], &[]).ok();
    dst.call(command::IMPORT, &[fin.output.len() as u64], &fin.output).ok();
    let commit = dst.call(command::COMMIT, &[1], &[]).ok();
    src.call(command::READ_CONTROL, &[commit.output.len() as u64], &commit.output)
        .ok();
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
