//! What the agent refuses, and what each refusal leaves behind.

mod common;

use common::*;
use covm_agent::{Agent, Config, MapError, MemoryMap, SCRATCH_LEN};
use covm_agent_protocol::handshake::messages::MAX_HANDSHAKE_MSG_LEN;
use covm_agent_protocol::record::{ABORT_RECORD_LEN, HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{EmulatedRootVerifier, SourceHandshake};
use covm_guest_abi::layout::MIGRATION_POLICY;
use covm_guest_abi::mailbox::{command, state, status, AGENT_DATA, FROM_AGENT_SIZE, MAX_VCPU_STATE};

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
    src.call(command::EXPORT_PAGES, &[0, 0, 16], &[]).ok();
    src.call(command::EXPORT_PAGES, &[0, 32 * PAGE, 16], &[]).refused(
        status::REFUSED,
        "round 0 must cover every private page in ascending order",
    );
    let s = src.status();
    assert_eq!(s[1], state::FAILED);
    assert_eq!(s[2], 1, "no Final: the source may resume");
    src.call(command::EXPORT_PAGES, &[0, 16 * PAGE, 16], &[])
        .refused(status::BAD_STATE, "failed");
    src.call(command::END_ROUND, &[], &[])
        .refused(status::BAD_STATE, "failed");
}

#[test]
fn round0_going_backwards_is_refused() {
    let (mut src, _dst) = connected();
    src.call(command::EXPORT_PAGES, &[0, 0, 16], &[]).ok();
    src.call(command::EXPORT_PAGES, &[0, 8 * PAGE, 16], &[])
        .refused(status::REFUSED, "asked for 0x8000, the next one is 0x10000");
    assert_eq!(src.state(), state::FAILED);
}

#[test]
fn round0_may_skip_what_is_not_private_but_not_end_early() {
    let (mut src, _dst) = connected();
    // Chunks over the legacy hole and the agent window carry nothing.
    let a = src.call(command::EXPORT_PAGES, &[0, 0xA0000, 96], &[]).ok();
    assert_eq!(a.results[0], 0);
    assert!(a.output.is_empty());
    src.call(command::EXPORT_PAGES, &[0, 0, 160], &[]).ok();
    src.call(command::END_ROUND, &[], &[]).refused(
        status::REFUSED,
        "round 0 cannot end before every private page was sealed: the next one is 0x100000",
    );
    assert_eq!(src.state(), state::FAILED);
}

#[test]
fn export_arguments_are_checked_without_failing_the_session() {
    let (mut src, _dst) = connected();
    src.call(command::EXPORT_PAGES, &[1, 0, 1], &[])
        .refused(status::BAD_COMMAND, "round 0 is open");
    src.call(command::EXPORT_PAGES, &[0, 12, 1], &[])
        .refused(status::BAD_COMMAND, "not 4 KiB aligned");
    src.call(command::EXPORT_FINAL, &[2, 1], &[])
        .refused(status::BAD_STATE, "round 0 has not ended");
    assert_eq!(src.state(), state::STREAMING);
    let a = src.call(command::EXPORT_PAGES, &[0, 0, 506], &[]).ok();
    assert_eq!(a.results[0], 159 + 250, "below the EBDA, then from 1 MiB");
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
        let a = src
            .call(command::EXPORT_PAGES, &[0, first * PAGE, frames - first], &[])
            .ok();
        let walked = a.results[2];
        assert!(walked > 0 && walked <= frames - first);
        assert!(a.output.len() as u64 <= FROM_AGENT_SIZE);
        sealed += a.results[0];
        if !a.output.is_empty() {
            dst.call(command::IMPORT, &[a.output.len() as u64], &a.output).ok();
        }
        first += walked;
        calls += 1;
    }
    assert_eq!(sealed, map().pages());
    assert!(calls > 2, "{calls} calls: the walk never stopped early");
    let end = src.call(command::END_ROUND, &[], &[]).ok();
    dst.call(command::IMPORT, &[end.output.len() as u64], &end.output).ok();
    for &gpa in &private {
        assert!(src.memory().page(gpa) == dst.memory().page(gpa), "page {gpa:#x}");
    }
}

#[test]
fn export_lists_are_checked() {
    let entry = |gpa: u64, n: u64| [gpa.to_le_bytes(), n.to_le_bytes()].concat();
    let (mut src, _dst) = connected();
    src.call(command::EXPORT_LIST, &[0, 0], &[])
        .refused(status::BAD_COMMAND, "0 entries");
    src.call(command::EXPORT_LIST, &[1, 1], &entry(0, 1))
        .refused(status::BAD_COMMAND, "round 0 is open");
    assert_eq!(src.state(), state::STREAMING);
    // Round 0 in order through a list: two entries.
    let two = [entry(0, 0x100), entry(0x100000, 0x80)].concat();
    let r = src.call(command::EXPORT_LIST, &[0, 2], &two).ok();
    assert_eq!(r.results[2], 2);
    // A gap in round 0 fails the session, as with EXPORT_PAGES.
    src.call(command::EXPORT_LIST, &[0, 1], &entry(0x200000, 1))
        .refused(status::REFUSED, "ascending order");
    assert_eq!(src.state(), state::FAILED);
    // An empty or unaligned entry after sealed ones fails the session.
    for (bad, why) in [
        (entry(0x100000, 0), "entry 1 has no pages"),
        (entry(12, 1), "not 4 KiB aligned"),
    ] {
        let (mut src, _dst) = connected();
        let list = [entry(0, 1), bad].concat();
        src.call(command::EXPORT_LIST, &[0, 2], &list)
            .refused(status::BAD_COMMAND, why);
        assert_eq!(src.state(), state::FAILED);
    }
}

#[test]
fn vcpu_states_are_checked_before_anything_is_sealed() {
    let (mut src, mut dst) = connected();
    round0(&mut src, &mut dst, 256);
    src.put_vcpu_state(0, b"zero");
    src.call(command::EXPORT_FINAL, &[2, 1], &[])
        .refused(status::REFUSED, "vCPU 1's slot holds no state (length 0");
    src.put_vcpu_state(1, &vec![1; MAX_VCPU_STATE as usize + 1]);
    src.call(command::EXPORT_FINAL, &[2, 1], &[])
        .refused(status::REFUSED, "vCPU 1's slot holds no state");
    src.call(command::EXPORT_FINAL, &[3, 1], &[])
        .refused(status::REFUSED, "2 workload vCPUs, not 3");
    assert_eq!(src.status()[..3], [1, state::STREAMING, 1]);
    src.put_vcpu_state(1, b"one");
    let fin = src.call(command::EXPORT_FINAL, &[2, 0], &[]).ok();
    let i = dst.call(command::IMPORT, &[fin.output.len() as u64], &fin.output).ok();
    assert_eq!(i.results[2], 1);
    dst.call(command::COMMIT, &[1], &[])
        .refused(status::BAD_COMMAND, "has no memory digest");
    assert_eq!(dst.state(), state::COMPLETE, "a wrong mode does not poison");
    dst.call(command::COMMIT, &[0], &[]).ok();
}

#[test]
fn a_flipped_bit_is_refused_and_the_source_gets_an_abort_token() {
    let (mut src, mut dst) = connected();
    let mut batch = src.call(command::EXPORT_PAGES, &[0, 0, 64], &[]).ok().output;
    // The first record is a page (page 0 holds content): flip a bit of
    // its ciphertext.
    assert_eq!(batch.len() % 8, 0);
    batch[HEADER_LEN + 100] ^= 0x04;
    let a = dst
        .call(command::IMPORT, &[batch.len() as u64], &batch)
        .refused(status::REFUSED, "record authentication failed");
    assert_eq!(a.results[0], 0, "nothing applied");
    assert_eq!(dst.state(), state::FAILED);
    assert!(dst.memory().page(0).iter().all(|&b| b == 0));
    dst.call(command::COMMIT, &[0], &[])
        .refused(status::BAD_STATE, "failed");
    let token = dst.call(command::MINT_ABORT, &[3], &[]).ok().output;
    assert_eq!(token.len(), ABORT_RECORD_LEN);
    let r = src.call(command::READ_CONTROL, &[token.len() as u64], &token).ok();
    assert_eq!(r.results[..2], [2, 3]);
    assert_eq!(src.status()[..3], [1, state::ABORTED, 1]);
}

#[test]
fn a_replayed_record_is_refused() {
    let (mut src, mut dst) = connected();
    let batch = src.call(command::EXPORT_PAGES, &[0, 0, 64], &[]).ok().output;
    dst.call(command::IMPORT, &[batch.len() as u64], &batch).ok();
    dst.call(command::IMPORT, &[batch.len() as u64], &batch)
        .refused(status::REFUSED, "sequence");
    assert_eq!(dst.state(), state::FAILED);
    // Poisoned for good.
    let next = src.call(command::EXPORT_PAGES, &[0, 64 * PAGE, 64], &[]).ok().output;
    dst.call(command::IMPORT, &[next.len() as u64], &next)
        .refused(status::REFUSED, "earlier failure");
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
    assert_eq!(src.status()[..3], [1, state::FAILED, 1]);
    src.call(command::EXPORT_PAGES, &[0, 0, 1], &[])
        .refused(status::BAD_STATE, "no confirmed source session");
    // A new session may start.
    src.call(command::BEGIN, &[0], &[]).ok();
    assert_eq!(src.state(), state::HANDSHAKE);
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
    assert_eq!(dst.status()[..2], [2, state::FAILED]);
}

#[test]
fn a_policy_that_does_not_hash_to_host_data_stops_the_agent() {
    let mut launch = Launch::source(1);
    launch.host_data = [0x77; 32];
    let mut vm = Vm::launch(&launch);
    assert!(vm.agent.startup_error().is_some());
    vm.call(command::BEGIN, &[0], &[]).refused(
        status::REFUSED,
        "is not the one this VM was launched with (HOST_DATA 7777",
    );
    vm.call(command::IMPORT, &[0], &[])
        .refused(status::REFUSED, "did not start");
    assert_eq!(vm.status()[..2], [0, state::FAILED]);
}

#[test]
fn a_missing_policy_or_map_stops_the_agent() {
    let mut launch = Launch::source(1);
    launch.policy_page = vec![0; 32];
    let mut vm = Vm::launch(&launch);
    vm.call(command::BEGIN, &[1], &[])
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
    vm.call(command::BEGIN, &[0], &[])
        .refused(status::PLATFORM, "no random bytes");
    assert_eq!(vm.state(), state::IDLE);
}

#[test]
fn forged_control_records_after_final_change_nothing() {
    let (mut src, mut dst) = connected();
    round0(&mut src, &mut dst, 256);
    src.put_vcpu_state(0, b"zero");
    src.put_vcpu_state(1, b"one");
    let fin = src.call(command::EXPORT_FINAL, &[2, 1], &[]).ok();
    assert_eq!(src.status()[..3], [1, state::FINAL_SENT, 0]);

    // A forged token: the right shape, garbage under the tag.
    let mut forged = vec![0u8; ABORT_RECORD_LEN];
    forged[0] = 7;
    forged[1] = 1;
    forged[4] = 8;
    forged[HEADER_LEN..].iter_mut().for_each(|b| *b = 0x42);
    src.call(command::READ_CONTROL, &[forged.len() as u64], &forged)
        .refused(status::REFUSED, "the abort token is refused");
    // A forged Commit the same way.
    let mut commit = vec![0u8; 104];
    commit[0] = 6;
    commit[1] = 1;
    commit[4] = 56;
    src.call(command::READ_CONTROL, &[commit.len() as u64], &commit)
        .refused(status::REFUSED, "the destination's Commit is refused");
    // Garbage and a record of another type.
    src.call(command::READ_CONTROL, &[3], &[1, 2, 3])
        .refused(status::REFUSED, "not a control record");
    src.call(command::READ_CONTROL, &[fin.output.len() as u64], &fin.output)
        .refused(status::REFUSED, "record is");
    // A genuine token of another session.
    let (_, mut other_dst) = connected_with(3, 4);
    let other = other_dst.call(command::MINT_ABORT, &[1], &[]).ok().output;
    src.call(command::READ_CONTROL, &[other.len() as u64], &other)
        .refused(status::REFUSED, "the abort token is refused");
    // None of it changed anything, nor may a new session free the guest.
    assert_eq!(src.status()[..3], [1, state::FINAL_SENT, 0]);
    src.call(command::BEGIN, &[0], &[])
        .refused(status::BAD_STATE, "sealed its Final");
    assert_eq!(src.agent.platform().retired, 0);
    // The real Commit still works.
    dst.call(command::IMPORT, &[fin.output.len() as u64], &fin.output).ok();
    let c = dst.call(command::COMMIT, &[1], &[]).ok().output;
    assert_eq!(
        src.call(command::READ_CONTROL, &[c.len() as u64], &c).ok().results[0],
        1
    );
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
    dst.call(command::BEGIN, &[1], &[]).ok();
    let a = dst.call(command::HANDSHAKE, &[n as u64], &msg[..n]).ok();
    let m = messages(&a.output);
    hs.read_dst_hello(&m[0]).unwrap();
    hs.read_dst_evidence(&m[1], &EmulatedRootVerifier).unwrap();
    let ev = report(&root(), launch.measurement, launch.host_data, hs.report_data().unwrap());
    let n = hs.write_evidence(&ev, &mut msg).unwrap();
    dst.call(command::HANDSHAKE, &[n as u64], &msg[..n]).ok();
    let n = hs.write_finished(&mut msg).unwrap();
    let a = dst.call(command::HANDSHAKE, &[n as u64], &msg[..n]).ok();
    assert_eq!(a.results[0], 1);
    let mut source = hs.read_dst_finished(&messages(&a.output)[0]).unwrap();
    let mut record = [0u8; PAGE_RECORD_LEN];
    source.seal_page(AGENT_DATA, &[0x99; 4096], &mut record).unwrap();
    dst.call(command::IMPORT, &[record.len() as u64], &record)
        .refused(status::REFUSED, "a page at 0x1a00000, outside private memory");
    assert_eq!(dst.state(), state::FAILED);
    dst.call(command::IMPORT, &[0], &[])
        .refused(status::BAD_STATE, "abort token");
    dst.call(command::MINT_ABORT, &[1], &[]).ok();
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
    vm.call(command::HANDSHAKE, &[4], &[1, 2, 3, 4])
        .refused(status::BAD_STATE, "no handshake under way");
    vm.call(command::IMPORT, &[0], &[])
        .refused(status::BAD_STATE, "no confirmed destination");
    vm.call(command::READ_CONTROL, &[0], &[])
        .refused(status::BAD_STATE, "no confirmed source");
    vm.call(command::BEGIN, &[2], &[])
        .refused(status::BAD_COMMAND, "role 2");
    vm.call(99, &[], &[]).refused(status::BAD_COMMAND, "unknown command 99");
    vm.call(command::BEGIN, &[1], &[]).ok();
    vm.call(command::MINT_ABORT, &[1], &[])
        .refused(status::BAD_STATE, "the source may simply resume");
    vm.call(command::HANDSHAKE, &[0], &[])
        .refused(status::BAD_COMMAND, "1 to 9392 bytes");
    vm.call(command::HANDSHAKE, &[3 << 20], &[])
        .refused(status::BAD_COMMAND, "the mailbox holds");
    // A message of the wrong side fails the handshake.
    vm.call(command::HANDSHAKE, &[33], &[6; 33])
        .refused(status::REFUSED, "not one the source sends");
    assert_eq!(vm.status()[..2], [2, state::FAILED]);
}

#[test]
fn roles_follow_the_launch() {
    // A running guest's VM never receives one over it.
    let mut fresh = Vm::source(1);
    fresh
        .call(command::BEGIN, &[1], &[])
        .refused(status::BAD_STATE, "not launched to receive a migration");
    // An incoming VM has no guest to send until it committed.
    let mut incoming = Vm::destination(2);
    incoming
        .call(command::BEGIN, &[0], &[])
        .refused(status::BAD_STATE, "holds no committed guest to send");
    assert_eq!(fresh.state(), state::IDLE);
    assert_eq!(incoming.state(), state::IDLE);
}

#[test]
fn start_up_is_tried_again_until_the_platform_gives_a_report() {
    let mut vm = Vm::launch_with(&Launch::source(1), |p| p.report_failures = 2);
    let why = vm.agent.startup_error().unwrap().to_string();
    assert!(why.contains("no attestation report of its own"), "{why}");
    assert_eq!(vm.status()[1], state::FAILED);
    vm.call(command::BEGIN, &[0], &[])
        .refused(status::REFUSED, "the platform wrote no attestation report (status 1)");
    vm.call(command::BEGIN, &[0], &[]).ok();
    assert!(vm.agent.startup_error().is_none());
    assert_eq!(vm.state(), state::HANDSHAKE);
}
