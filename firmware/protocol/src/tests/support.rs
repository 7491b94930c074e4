//! Fixtures shared by the tests.

use crate::evidence::AttestationReport;
use crate::handshake::messages::{kind, MAX_HANDSHAKE_MSG_LEN};
use crate::record::{ABORT_RECORD_LEN, COMMIT_RECORD_LEN, COUNT_RECORD_LEN, FINAL_RECORD_LEN, PAGE_RECORD_LEN};
use crate::{
    DestinationHandshake, DestinationSession, EmulatedRoot, EmulatedRootVerifier, Evidence, ImportChecker, ImportEvent,
    Platform, Policy, Result, SourceHandshake, SourceSession, TcbVersion, PAGE_SIZE,
};
use rand_core::{impls, CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// A deterministic RNG for tests: SHA-256(seed ‖ counter) blocks. Not for
/// production: the agent gets its randomness from the platform.
pub struct TestRng {
    seed: u64,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng {
            seed,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl RngCore for TestRng {
    // Whole words come out of fill_bytes like any other bytes (little-endian).
    fn next_u32(&mut self) -> u32 {
        impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            if self.used == 32 {
                let mut h = Sha256::new();
                h.update(self.seed.to_le_bytes());
                h.update(self.counter.to_le_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> core::result::Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

/// An RNG that returns exactly the given bytes (for fixed vectors).
pub struct FixedRng(pub Vec<u8>);

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        unimplemented!("the protocol only calls fill_bytes")
    }

    fn next_u64(&mut self) -> u64 {
        unimplemented!("the protocol only calls fill_bytes")
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(self.0.len() >= dest.len(), "FixedRng ran out of bytes");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> core::result::Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for FixedRng {}

/// The launch measurement both agents run with.
pub const MEASUREMENT: [u8; 48] = [0x4D; 48];
/// The emulated root's secret scalar.
pub const ROOT_SECRET: [u8; 48] = [0x11; 48];

/// The emulated root every test trusts.
pub fn root() -> EmulatedRoot {
    EmulatedRoot::from_secret(&ROOT_SECRET).unwrap()
}

/// A version-`version` policy: emulated platform, [`MEASUREMENT`], the
/// test root, minimum TCB 1/0/8/100 and guest SVN 1.
pub fn policy(version: u32) -> Policy {
    let mut p = Policy::new(version);
    p.allow_platform(Platform::EmulatedCvm)
        .allow_measurement(&MEASUREMENT)
        .unwrap()
        .trust_root(&root().public_key())
        .unwrap()
        .set_min_tcb(TcbVersion::new(1, 0, 8, 100))
        .set_min_guest_svn(1);
    p
}

/// A report as the emulated platform would make it for a guest running
/// `policy` (unsigned).
pub fn report(policy: &Policy, report_data: [u8; 64]) -> AttestationReport {
    let mut r = AttestationReport::zeroed();
    r.version = 3;
    r.guest_svn = 2;
    r.policy = 0x3_0000; // SMT allowed, reserved bit 17 set; no debug
    r.measurement = MEASUREMENT;
    r.host_data = policy.host_data();
    r.report_data = report_data;
    r.reported_tcb = TcbVersion::new(2, 0, 9, 120);
    r.current_tcb = r.reported_tcb;
    r.launch_tcb = r.reported_tcb;
    r.committed_tcb = r.reported_tcb;
    r
}

/// Signed emulated evidence for `policy` and `report_data`, after `edit`.
pub fn evidence(policy: &Policy, report_data: [u8; 64], edit: &dyn Fn(&mut AttestationReport)) -> Evidence {
    let mut r = report(policy, report_data);
    edit(&mut r);
    root().sign(&mut r);
    Evidence::new(Platform::EmulatedCvm, &r)
}

/// No change to a report.
pub fn as_is(_: &mut AttestationReport) {}

/// No change to a message.
pub fn pass(_: u8, _: &mut Vec<u8>) {}

/// How a handshake is set up; every field has a default in [`Setup::new`].
pub struct Setup<'a> {
    pub src_policy: Policy,
    pub dst_policy: Policy,
    pub src_edit: &'a dyn Fn(&mut AttestationReport),
    pub dst_edit: &'a dyn Fn(&mut AttestationReport),
    pub seed: u64,
}

impl Setup<'_> {
    pub fn new(seed: u64) -> Self {
        Setup {
            src_policy: policy(1),
            dst_policy: policy(1),
            src_edit: &as_is,
            dst_edit: &as_is,
            seed,
        }
    }
}

/// Runs a whole handshake in memory; `relay` sees (and may alter) every
/// message by type before it is delivered.
pub fn handshake_with(
    setup: &Setup<'_>,
    relay: &mut dyn FnMut(u8, &mut Vec<u8>),
) -> Result<(SourceSession, DestinationSession)> {
    let mut rng = TestRng::new(setup.seed);
    let mut src = SourceHandshake::new(&setup.src_policy, &mut rng);
    let mut dst = DestinationHandshake::new(&setup.dst_policy, &mut rng);
    let verifier = EmulatedRootVerifier;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG_LEN];
    let mut send = |k: u8, n: usize, buf: &[u8]| {
        let mut m = buf[..n].to_vec();
        relay(k, &mut m);
        m
    };

    let n = src.write_hello(&mut buf)?;
    dst.read_src_hello(&send(kind::SRC_HELLO, n, &buf))?;
    let n = dst.write_hello(&mut buf)?;
    let dst_hello = send(kind::DST_HELLO, n, &buf);
    let ev = evidence(&setup.dst_policy, dst.report_data()?, setup.dst_edit);
    let n = dst.write_evidence(&ev, &mut buf)?;
    let dst_evidence = send(kind::DST_EVIDENCE, n, &buf);
    src.read_dst_hello(&dst_hello)?;
    src.read_dst_evidence(&dst_evidence, &verifier)?;
    let ev = evidence(&setup.src_policy, src.report_data()?, setup.src_edit);
    let n = src.write_evidence(&ev, &mut buf)?;
    let src_evidence = send(kind::SRC_EVIDENCE, n, &buf);
    let n = src.write_finished(&mut buf)?;
    let src_finished = send(kind::SRC_FINISHED, n, &buf);
    dst.read_src_evidence(&src_evidence, &verifier)?;
    dst.read_src_finished(&src_finished)?;
    let (n, dst_session) = dst.write_finished(&mut buf)?;
    let dst_finished = send(kind::DST_FINISHED, n, &buf);
    let src_session = src.read_dst_finished(&dst_finished)?;
    Ok((src_session, dst_session))
}

/// A default handshake that must succeed.
pub fn sessions(seed: u64) -> (SourceSession, DestinationSession) {
    handshake_with(&Setup::new(seed), &mut pass).expect("handshake")
}

/// Bytes of the pattern page `i` of version `v`.
pub fn page(i: u64, v: u64) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (j, chunk) in p.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i.wrapping_mul(0x9E37_79B9) ^ (v << 40) ^ j as u64).to_le_bytes());
    }
    p
}

pub fn seal_page(src: &mut SourceSession, gpa: u64, data: &[u8; PAGE_SIZE]) -> Vec<u8> {
    let mut out = [0u8; PAGE_RECORD_LEN];
    src.seal_page(gpa, data, &mut out).unwrap();
    out.to_vec()
}

pub fn seal_round_end(src: &mut SourceSession) -> Vec<u8> {
    let mut out = [0u8; COUNT_RECORD_LEN];
    src.seal_round_end(&mut out).unwrap();
    out.to_vec()
}

pub fn seal_vcpu(src: &mut SourceSession, index: u32, state: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; state.len() + crate::record::RECORD_OVERHEAD];
    src.seal_vcpu_state(index, state, &mut out).unwrap();
    out
}

pub fn seal_final(src: &mut SourceSession, digest: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out = [0u8; FINAL_RECORD_LEN];
    src.seal_final(digest, &mut out).unwrap();
    out.to_vec()
}

/// Sealed records of a small migration, for the destination tests:
/// 0-3 pages of round 0, 4 RoundEnd(0), 5 page 2 again, 6 RoundEnd(1),
/// 7-8 the states of vCPUs 0 and 1, 9 Final.
pub fn small_stream(src: &mut SourceSession) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..4 {
        records.push(seal_page(src, i * 4096, &page(i, 0)));
    }
    records.push(seal_round_end(src));
    records.push(seal_page(src, 2 * 4096, &page(2, 1)));
    records.push(seal_round_end(src));
    records.push(seal_vcpu(src, 0, b"vcpu zero"));
    records.push(seal_vcpu(src, 1, b"vcpu one"));
    records.push(seal_final(src, None));
    records
}

/// Feeds `records` to `checker`; returns the first error with its index.
pub fn feed(checker: &mut ImportChecker<'_>, records: &[Vec<u8>]) -> core::result::Result<(), (usize, crate::Error)> {
    for (i, r) in records.iter().enumerate() {
        let mut r = r.clone();
        checker.open(&mut r).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// Feeds records that must all pass, then commits.
pub fn feed_and_commit(checker: &mut ImportChecker<'_>, records: &[Vec<u8>]) -> [u8; COMMIT_RECORD_LEN] {
    for r in records {
        let mut r = r.clone();
        match checker.open(&mut r) {
            Ok(ImportEvent::Complete(_)) | Ok(_) => {}
            Err(e) => panic!("record refused: {e}"),
        }
    }
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    checker.commit(None, &mut commit).expect("commit");
    commit
}

/// Mints an abort token.
pub fn abort_token(checker: &mut ImportChecker<'_>, reason: u32) -> [u8; ABORT_RECORD_LEN] {
    let mut out = [0u8; ABORT_RECORD_LEN];
    checker.mint_abort(reason, &mut out).expect("mint abort");
    out
}
