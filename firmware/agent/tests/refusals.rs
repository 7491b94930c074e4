//! What the agent refuses, and what each refusal leaves behind.

mod common;

use common::*;
use covm_agent::{Agent, Config, MapError, MemoryMap, SCRATCH_LEN};
use covm_agent_protocol::handshake::messages::MAX_HANDSHAKE_MSG_LEN;
use covm_agent_protocol::record::{ABORT_RECORD_LEN, HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{EmulatedRootVerifier, SourceHandshake};
use covm_guest_abi::layout::MIGRATION_POLICY;
use covm_guest_abi::mailbox::words::{
    BeginArgs, CommitArgs, EndRoundArgs, ExportFinalArgs, ExportListArgs, ExportPagesArgs, HandshakeArgs,
    MintAbortArgs, ReadControlReply, Role, SessionState,
};
use covm_guest_abi::mailbox::{command, status, AGENT_DATA, FROM_AGENT_SIZE, MAX_VCPU_STATE};

/// `EXPORT_PAGES` of `count` pages from `first` in `round`.
fn pages(round: u32, first: u64, count: u64) -> ExportPagesArgs {
    ExportPagesArgs { round, first, count }
}

/// `EXPORT_FINAL` of the test VMs' `vcpus`.
fn final_args(vcpus: u32, verified: bool) -> ExportFinalArgs {
    ExportFinalArgs { vcpus, verified }
}

const SOURCE: BeginArgs = BeginArgs {
    role: Role::Source,
    lanes: 1,
};
const DESTINATION: BeginArgs = BeginArgs {
    role: Role::Destination,
    lanes: 1,
};

/// Two agents with a confirmed session.
fn connected() -> (Vm, Vm) {
    connected_with(1, 2)
}

/// The same with other random seeds (the test platform is deterministic:
/// equal seeds give equal sessions).
fn connected_with(src_seed: u64, dst_seed: u64) -> (Vm, Vm) {
    let mut src = Vm::source(src_seed);
    let mut dst = Vm::destination(dst_seed);
    fill(&mut src);
    handshake(&mut src, &mut dst).expect("handshake");
    (src, dst)
}

#[test]
fn round0_with_a_gap_is_refused() {
    let (mut src, _dst) = connected();
    src.send(pages(0, 0, 16), &[]).ok();
    src.send(pages(0, 32 * PAGE, 16), &[]).refused(
        status::REFUSED,
        "round 0 must cover every private page in ascending order",
    );
    let s = src.status();
    assert_eq!(s.state, SessionState::Failed);
    assert!(s.may_resume, "no Final: the source may resume");
    src.send(pages(0, 16 * PAGE, 16), &[])
        .refused(status::BAD_STATE, "failed");
    src.send(EndRoundArgs, &[]).refused(status::BAD_STATE, "failed");
}

#[test]
fn round0_going_backwards_is_refused() {
    let (mut src, _dst) = connected();
    src.send(pages(0, 0, 16), &[]).ok();
    src.send(pages(0, 8 * PAGE, 16), &[])
        .refused(status::REFUSED, "asked for 0x8000, the next one is 0x10000");
    assert_eq!(src.state(), SessionState::Failed);
}

#[test]
fn round0_may_skip_what_is_not_private_but_not_end_early() {
    let (mut src, _dst) = connected();
    // Chunks over the legacy hole and the agent window carry nothing.
    let a = src.send(pages(0, 0xA0000, 96), &[]).ok();
    assert_eq!(a.reply().pages, 0);
    assert!(a.output.is_empty());
    src.send(pages(0, 0, 160), &[]).ok();
    src.send(EndRoundArgs, &[]).refused(
        status::REFUSED,
        "round 0 cannot end before every private page was sealed: the next one is 0x100000",
    );
    assert_eq!(src.state(), SessionState::Failed);
}

#[test]
fn export_arguments_are_checked_without_failing_the_session() {
    let (mut src, _dst) = connected();
    src.send(pages(1, 0, 1), &[])
        .refused(status::BAD_COMMAND, "round 0 is open");
    src.send(pages(0, 12, 1), &[])
        .refused(status::BAD_COMMAND, "not 4 KiB aligned");
    src.send(final_args(2, true), &[])
        .refused(status::BAD_STATE, "round 0 has not ended");
    assert_eq!(src.state(), SessionState::Streaming);
    let a = src.send(pages(0, 0, 506), &[]).ok();
    assert_eq!(a.reply().pages, 159 + 250, "below the EBDA, then from 1 MiB");
}

/// A range larger than the output holds is walked as far as it fits; the
/// host asks again from where the agent stopped, and nothing is lost or
/// sealed twice.
#[test]
fn a_full_output_stops_the_walk_where_the_host_resumes() {
    let (mut src, mut dst) = connected();
    let private: Vec<u64> = map().iter().collect();
    for &gpa in private.iter().filter(|&&g| g != MIGRATION_POLICY) {
        src.memory_mut().put(gpa, &content(gpa, 1));
    }
    let frames = MEMORY / PAGE;
    let (mut first, mut calls, mut sealed) = (0, 0, 0);
    while first < frames {
        let a = src.send(pages(0, first * PAGE, frames - first), &[]).ok();
        let walked = a.reply().walked_frames;
        assert!(walked > 0 && walked <= frames - first);
        assert!(a.output.len() as u64 <= FROM_AGENT_SIZE);
        sealed += a.reply().pages;
        if !a.output.is_empty() {
            dst.import(&a.output).ok();
        }
        first += walked;
        calls += 1;
    }
    assert_eq!(sealed, map().pages());
    assert!(calls > 2, "{calls} calls: the walk never stopped early");
    let end = src.send(EndRoundArgs, &[]).ok();
    dst.import(&end.output).ok();
    for &gpa in &private {
        assert!(src.memory().page(gpa) == dst.memory().page(gpa), "page {gpa:#x}");
    }
}

#[test]
fn export_lists_are_checked() {
    let entry = |gpa: u64, n: u64| [gpa.to_le_bytes(), n.to_le_bytes()].concat();
    let (mut src, _dst) = connected();
    src.send(ExportListArgs { round: 0, entries: 0 }, &[])
        .refused(status::BAD_COMMAND, "0 entries");
    src.send(ExportListArgs { round: 1, entries: 1 }, &entry(0, 1))
        .refused(status::BAD_COMMAND, "round 0 is open");
    assert_eq!(src.state(), SessionState::Streaming);
    // Round 0 in order through a list: two entries.
    let two = [entry(0, 0x100), entry(0x100000, 0x80)].concat();
    let r = src.send(ExportListArgs { round: 0, entries: 2 }, &two).ok();
    assert_eq!(r.reply().entries_done, 2);
    // A gap in round 0 fails the session, as with EXPORT_PAGES.
    src.send(ExportListArgs { round: 0, entries: 1 }, &entry(0x200000, 1))
        .refused(status::REFUSED, "ascending order");
    assert_eq!(src.state(), SessionState::Failed);
    // An empty or unaligned entry after sealed ones fails the session.
    for (bad, why) in [
        (entry(0x100000, 0), "entry 1 has no pages"),
        (entry(12, 1), "not 4 KiB aligned"),
    ] {
        let (mut src, _dst) = connected();
        let list = [entry(0, 1), bad].concat();
        src.send(ExportListArgs { round: 0, entries: 2 }, &list)
            .refused(status::BAD_COMMAND, why);
        assert_eq!(src.state(), SessionState::Failed);
    }
}

#[test]
fn vcpu_states_are_checked_before_anything_is_sealed() {
    let (mut src, mut dst) = connected();
    round0(&mut src, &mut dst, 256);
    src.put_vcpu_state(0, b"zero");
    src.send(final_args(2, true), &[])
        .refused(status::REFUSED, "vCPU 1's slot holds no state (length 0");
    src.put_vcpu_state(1, &vec![1; MAX_VCPU_STATE as usize + 1]);
    src.send(final_args(2, true), &[])
        .refused(status::REFUSED, "vCPU 1's slot holds no state");
    src.send(final_args(3, true), &[])
        .refused(status::REFUSED, "2 workload vCPUs, not 3");
    assert_eq!(src.session(), (Some(Role::Source), SessionState::Streaming, true));
    src.put_vcpu_state(1, b"one");
    let fin = src.send(final_args(2, false), &[]).ok();
    let i = dst.import(&fin.output).ok();
    assert!(i.reply().complete);
    dst.send(CommitArgs { verified: true }, &[])
        .refused(status::BAD_COMMAND, "has no memory digest");
    assert_eq!(dst.state(), SessionState::Complete, "a wrong mode does not poison");
    dst.send(CommitArgs { verified: false }, &[]).ok();
}

#[test]
fn a_flipped_bit_is_refused_and_the_source_gets_an_abort_token() {
    let (mut src, mut dst) = connected();
    let mut batch = src.send(pages(0, 0, 64), &[]).ok().output;
    // The first record is a page (page 0 holds content): flip a bit of
    // its ciphertext.
    assert_eq!(batch.len() % 8, 0);
    batch[HEADER_LEN + 100] ^= 0x04;
    let a = dst
        .import(&batch)
        .refused(status::REFUSED, "record authentication failed");
    assert_eq!(a.reply().pages, 0, "nothing applied");
    assert_eq!(dst.state(), SessionState::Failed);
    assert!(dst.memory().page(0).iter().all(|&b| b == 0));
    dst.send(CommitArgs { verified: false }, &[])
        .refused(status::BAD_STATE, "failed");
    let token = dst.send(MintAbortArgs { reason: 3 }, &[]).ok().output;
    assert_eq!(token.len(), ABORT_RECORD_LEN);
    let r = src.read_control(&token).ok();
    assert_eq!(r.reply(), ReadControlReply::Aborted { reason: 3 });
    assert_eq!(src.session(), (Some(Role::Source), SessionState::Aborted, true));
}

#[test]
fn a_replayed_record_is_refused() {
    let (mut src, mut dst) = connected();
    let batch = src.send(pages(0, 0, 64), &[]).ok().output;
    dst.import(&batch).ok();
    dst.import(&batch).refused(status::REFUSED, "sequence");
    assert_eq!(dst.state(), SessionState::Failed);
    // Poisoned for good.
    let next = src.send(pages(0, 64 * PAGE, 64), &[]).ok().output;
    dst.import(&next).refused(status::REFUSED, "earlier failure");
}

#[test]
fn a_destination_measurement_the_policy_does_not_allow_is_refused() {
    let mut src = Vm::source(1);
    let mut launch = Launch::destination(2);
    launch.measurement = OTHER_MEASUREMENT;
    let mut dst = Vm::launch(&launch);
    let (side, answer) = *handshake(&mut src, &mut dst).expect_err("the source must refuse");
    assert_eq!(side, "source");
    answer.refused(
        status::REFUSED,
        &format!(
            "peer refused: destination measurement {} is not allowed by the policy",
            "6d".repeat(48)
        ),
    );
    assert_eq!(src.session(), (Some(Role::Source), SessionState::Failed, true));
    src.send(pages(0, 0, 1), &[])
        .refused(status::BAD_STATE, "no confirmed source session");
    // A new session may start.
    src.send(SOURCE, &[]).ok();
    assert_eq!(src.state(), SessionState::Handshake);
}

#[test]
fn a_source_measurement_the_policy_does_not_allow_is_refused() {
    let mut launch = Launch::source(1);
    launch.measurement = OTHER_MEASUREMENT;
    let mut src = Vm::launch(&launch);
    let mut dst = Vm::destination(2);
    // The source refuses nothing (the destination is fine); the
    // destination refuses the source's evidence.
    let (side, answer) = *handshake(&mut src, &mut dst).expect_err("the destination must refuse");
    assert_eq!(side, "destination");
    answer.refused(status::REFUSED, "peer refused: source measurement 6d6d");
    assert_eq!(dst.role_and_state(), (Some(Role::Destination), SessionState::Failed));
}

#[test]
fn a_policy_that_does_not_hash_to_host_data_stops_the_agent() {
    let mut launch = Launch::source(1);
    launch.host_data = [0x77; 32];
    let mut vm = Vm::launch(&launch);
    assert!(vm.agent.startup_error().is_some());
    vm.send(SOURCE, &[]).refused(
        status::REFUSED,
        "is not the one this VM was launched with (HOST_DATA 7777",
    );
    vm.import(&[]).refused(status::REFUSED, "did not start");
    assert_eq!(vm.role_and_state(), (None, SessionState::Failed));
}

#[test]
fn a_missing_policy_or_map_stops_the_agent() {
    let mut launch = Launch::source(1);
    launch.policy_page = vec![0; 32];
    let mut vm = Vm::launch(&launch);
    vm.send(DESTINATION, &[])
        .refused(status::REFUSED, "the migration policy page holds no policy");
    let agent = Agent::new(
        VecMemory::new(),
        FakePlatform::new(MEASUREMENT, [0; 32], 1),
        HeapTables { lent: 0 },
        Box::leak(vec![0u8; SCRATCH_LEN].into_boxed_slice()),
        Err::<MemoryMap, _>(MapError::NoMap),
        Config {
            workload_vcpus: 2,
            incoming: false,
        },
    );
    assert!(agent
        .startup_error()
        .unwrap()
        .as_str()
        .contains("no private memory map: the loader gave no memory map"));
}

#[test]
fn no_randomness_is_a_platform_failure() {
    let mut vm = Vm::launch_with(&Launch::source(1), |p| p.no_randomness = true);
    vm.send(SOURCE, &[]).refused(status::PLATFORM, "no random bytes");
    assert_eq!(vm.state(), SessionState::Idle);
}

#[test]
fn forged_control_records_after_final_change_nothing() {
    let (mut src, mut dst) = connected();
    round0(&mut src, &mut dst, 256);
    src.put_vcpu_state(0, b"zero");
    src.put_vcpu_state(1, b"one");
    let fin = src.send(final_args(2, true), &[]).ok();
    assert_eq!(src.session(), (Some(Role::Source), SessionState::FinalSent, false));

    // A forged token: the right shape, garbage under the tag.
    let mut forged = vec![0u8; ABORT_RECORD_LEN];
    forged[0] = 7;
    forged[1] = 1;
    forged[4] = 8;
    forged[HEADER_LEN..].iter_mut().for_each(|b| *b = 0x42);
    src.read_control(&forged)
        .refused(status::REFUSED, "the abort token is refused");
    // A forged Commit the same way.
    let mut commit = vec![0u8; 104];
    commit[0] = 6;
    commit[1] = 1;
    commit[4] = 56;
    src.read_control(&commit)
        .refused(status::REFUSED, "the destination's Commit is refused");
    // Garbage and a record of another type.
    src.read_control(&[1, 2, 3])
        .refused(status::REFUSED, "not a control record");
    src.read_control(&fin.output).refused(status::REFUSED, "record is");
    // A genuine token of another session.
    let (_, mut other_dst) = connected_with(3, 4);
    let other = other_dst.send(MintAbortArgs { reason: 1 }, &[]).ok().output;
    src.read_control(&other)
        .refused(status::REFUSED, "the abort token is refused");
    // None of it changed anything, nor may a new session free the guest.
    assert_eq!(src.session(), (Some(Role::Source), SessionState::FinalSent, false));
    src.send(SOURCE, &[]).refused(status::BAD_STATE, "sealed its Final");
    assert_eq!(src.agent.platform().retired, 0);
    // The real Commit still works.
    dst.import(&fin.output).ok();
    let c = dst.send(CommitArgs { verified: true }, &[]).ok().output;
    assert_eq!(src.read_control(&c).ok().reply(), ReadControlReply::Committed);
    assert_eq!(src.agent.platform().retired, 1);
}

#[test]
fn a_page_outside_private_memory_is_refused_at_the_destination() {
    // A rogue source (the protocol crate with a genuine report, but not
    // the agent's checks) sends a page of the agent window.
    let mut dst = Vm::destination(2);
    let launch = Launch::source(1);
    let mut rng = common_rng();
    let mut hs = SourceHandshake::new(&policy(), &mut rng);
    let mut msg = [0u8; MAX_HANDSHAKE_MSG_LEN];
    let n = hs.write_hello(&mut msg).unwrap();
    dst.send(DESTINATION, &[]).ok();
    let a = dst.handshake_message(&msg[..n]).ok();
    let m = messages(&a.output);
    hs.read_dst_hello(&m[0]).unwrap();
    hs.read_dst_evidence(&m[1], &EmulatedRootVerifier).unwrap();
    let ev = report(&root(), launch.measurement, launch.host_data, hs.report_data().unwrap());
    let n = hs.write_evidence(&ev, &mut msg).unwrap();
    dst.handshake_message(&msg[..n]).ok();
    let n = hs.write_finished(&mut msg).unwrap();
    let a = dst.handshake_message(&msg[..n]).ok();
    assert!(a.reply().complete);
    let mut source = hs.read_dst_finished(&messages(&a.output)[0]).unwrap();
    let mut record = [0u8; PAGE_RECORD_LEN];
    source.seal_page(AGENT_DATA, &[0x99; 4096], &mut record).unwrap();
    dst.import(&record)
        .refused(status::REFUSED, "a page at 0x1a00000, outside private memory");
    assert_eq!(dst.state(), SessionState::Failed);
    dst.import(&[]).refused(status::BAD_STATE, "abort token");
    dst.send(MintAbortArgs { reason: 1 }, &[]).ok();
}

fn common_rng() -> impl rand_core::CryptoRngCore {
    struct R(u64);
    impl rand_core::RngCore for R {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = (self.next_u64() >> 33) as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for R {}
    R(77)
}

#[test]
fn commands_out_of_place_are_refused() {
    let mut vm = Vm::destination(1);
    vm.handshake_message(&[1, 2, 3, 4])
        .refused(status::BAD_STATE, "no handshake under way");
    vm.import(&[]).refused(status::BAD_STATE, "no confirmed destination");
    vm.read_control(&[]).refused(status::BAD_STATE, "no confirmed source");
    vm.call(command::BEGIN, &[2], &[])
        .refused(status::BAD_COMMAND, "role 2");
    vm.call(99, &[], &[]).refused(status::BAD_COMMAND, "unknown command 99");
    vm.send(DESTINATION, &[]).ok();
    vm.send(MintAbortArgs { reason: 1 }, &[])
        .refused(status::BAD_STATE, "the source may simply resume");
    vm.handshake_message(&[])
        .refused(status::BAD_COMMAND, "1 to 9392 bytes");
    vm.send(HandshakeArgs { len: 3 << 20 }, &[])
        .refused(status::BAD_COMMAND, "the mailbox holds");
    // A message of the wrong side fails the handshake.
    vm.handshake_message(&[6; 33])
        .refused(status::REFUSED, "not one the source sends");
    assert_eq!(vm.role_and_state(), (Some(Role::Destination), SessionState::Failed));
}

#[test]
fn roles_follow_the_launch() {
    // A running guest's VM never receives one over it.
    let mut fresh = Vm::source(1);
    fresh
        .send(DESTINATION, &[])
        .refused(status::BAD_STATE, "not launched to receive a migration");
    // An incoming VM has no guest to send until it committed.
    let mut incoming = Vm::destination(2);
    incoming
        .send(SOURCE, &[])
        .refused(status::BAD_STATE, "holds no committed guest to send");
    assert_eq!(fresh.state(), SessionState::Idle);
    assert_eq!(incoming.state(), SessionState::Idle);
}

#[test]
fn start_up_is_tried_again_until_the_platform_gives_a_report() {
    let mut vm = Vm::launch_with(&Launch::source(1), |p| p.report_failures = 2);
    let why = vm.agent.startup_error().unwrap().to_string();
    assert!(why.contains("no attestation report of its own"), "{why}");
    assert_eq!(vm.status().state, SessionState::Failed);
    vm.send(SOURCE, &[])
        .refused(status::REFUSED, "the platform wrote no attestation report (status 1)");
    vm.send(SOURCE, &[]).ok();
    assert!(vm.agent.startup_error().is_none());
    assert_eq!(vm.state(), SessionState::Handshake);
}
