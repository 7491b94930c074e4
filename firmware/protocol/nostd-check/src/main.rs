//! A whole confidential migration, both agents in one freestanding
//! process: handshake with emulated evidence, three rounds of pages,
//! vCPU states, Final in verified mode, commit, and the source's
//! may_resume() turning false. No std, no libc, no allocator: if any
//! dependency needed one, this would not link. Linux only provides the
//! process; the two system calls (write, exit) are made by hand.
//!
//! It also measures the deepest stack the protocol used (the firmware's
//! ring-3 stack is 64 KiB per CPU) by painting the stack first.
#![no_std]
#![no_main]

mod rt;

use covm_agent_protocol::handshake::messages::MAX_HANDSHAKE_MSG_LEN;
use covm_agent_protocol::record::{
    COMMIT_RECORD_LEN, COUNT_RECORD_LEN, FINAL_RECORD_LEN, PAGE_RECORD_LEN, RECORD_OVERHEAD,
};
use covm_agent_protocol::{
    AttestationReport, DestinationHandshake, EmulatedRoot, EmulatedRootVerifier, Error, Evidence, ImportChecker,
    ImportEvent, MemoryDigest, Platform, Policy, SourceHandshake, TcbVersion, PAGE_SIZE,
};
use rand_core::{CryptoRng, RngCore};

/// A deterministic generator (splitmix64). Only for this check: the agent
/// takes its randomness from the platform.
struct CheckRng(u64);

impl RngCore for CheckRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CheckRng {}

const MEASUREMENT: [u8; 48] = [0x4D; 48];
const PAGES: usize = 8;

fn evidence(root: &EmulatedRoot, policy: &Policy, report_data: [u8; 64]) -> Evidence {
    let mut r = AttestationReport::zeroed();
    r.version = 3;
    r.guest_svn = 1;
    r.measurement = MEASUREMENT;
    r.host_data = policy.host_data();
    r.report_data = report_data;
    r.reported_tcb = TcbVersion::new(1, 0, 8, 100);
    root.sign(&mut r);
    Evidence::new(Platform::EmulatedCvm, &r)
}

fn page(i: usize, round: usize) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (j, b) in p.iter_mut().enumerate() {
        *b = (i * 31 + j * 7 + round * 13) as u8;
    }
    p
}

/// The caller's buffers: guest memory on both sides, message and record
/// buffers. In the agent these live in guest memory or static buffers,
/// so they are kept out of the stack measurement.
struct Buffers {
    a: [u8; MAX_HANDSHAKE_MSG_LEN],
    b: [u8; MAX_HANDSHAKE_MSG_LEN],
    memory: [[u8; PAGE_SIZE]; PAGES],
    imported: [[u8; PAGE_SIZE]; PAGES],
    record: [u8; PAGE_RECORD_LEN],
}

/// The whole migration; `Err` names the step that failed.
#[inline(never)]
fn migrate(bufs: &mut Buffers) -> Result<(), (&'static str, Error)> {
    let Buffers {
        a,
        b,
        memory,
        imported,
        record,
    } = bufs;
    let mut rng = CheckRng(0x0123_4567_89AB_CDEF);
    let root = EmulatedRoot::from_secret(&[0x11; 48]).map_err(|e| ("root", e))?;
    let mut policy = Policy::new(1);
    policy
        .allow_platform(Platform::EmulatedCvm)
        .allow_measurement(&MEASUREMENT)
        .and_then(|p| p.trust_root(&root.public_key()))
        .map_err(|e| ("policy", e))?;
    let verifier = EmulatedRootVerifier;

    let mut src = SourceHandshake::new(&policy, &mut rng);
    let mut dst = DestinationHandshake::new(&policy, &mut rng);
    let n = src.write_hello(a).map_err(|e| ("SrcHello", e))?;
    dst.read_src_hello(&a[..n]).map_err(|e| ("SrcHello", e))?;
    let n = dst.write_hello(a).map_err(|e| ("DstHello", e))?;
    src.read_dst_hello(&a[..n]).map_err(|e| ("DstHello", e))?;
    let rd = dst.report_data().map_err(|e| ("DstEvidence", e))?;
    let n = dst
        .write_evidence(&evidence(&root, &policy, rd), a)
        .map_err(|e| ("DstEvidence", e))?;
    src.read_dst_evidence(&a[..n], &verifier)
        .map_err(|e| ("DstEvidence", e))?;
    let rd = src.report_data().map_err(|e| ("SrcEvidence", e))?;
    let n = src
        .write_evidence(&evidence(&root, &policy, rd), a)
        .map_err(|e| ("SrcEvidence", e))?;
    let m = src.write_finished(b).map_err(|e| ("SrcFinished", e))?;
    dst.read_src_evidence(&a[..n], &verifier)
        .map_err(|e| ("SrcEvidence", e))?;
    dst.read_src_finished(&b[..m]).map_err(|e| ("SrcFinished", e))?;
    let (n, session) = dst.write_finished(a).map_err(|e| ("DstFinished", e))?;
    let mut source = src.read_dst_finished(&a[..n]).map_err(|e| ("DstFinished", e))?;

    let mut table = [0u32; PAGES];
    let mut checker = ImportChecker::new(session, &mut table);
    let mut count = [0u8; COUNT_RECORD_LEN];
    for round in 0..3 {
        for (i, p) in memory.iter_mut().enumerate() {
            if round == 0 || i % (round + 1) == 0 {
                *p = page(i, round);
                source
                    .seal_page((i * PAGE_SIZE) as u64, p, record)
                    .map_err(|e| ("seal page", e))?;
                match checker.open(record).map_err(|e| ("import page", e))? {
                    ImportEvent::Page { gpa, data } => imported[gpa as usize / PAGE_SIZE] = *data,
                    _ => return Err(("import page", Error::Incomplete)),
                }
            }
        }
        source.seal_round_end(&mut count).map_err(|e| ("seal round end", e))?;
        checker.open(&mut count).map_err(|e| ("import round end", e))?;
    }
    let mut state = [0u8; 64 + RECORD_OVERHEAD];
    for vcpu in 0..2 {
        let n = source
            .seal_vcpu_state(vcpu, &[vcpu as u8; 64], &mut state)
            .map_err(|e| ("seal vCPU", e))?;
        checker.open(&mut state[..n]).map_err(|e| ("import vCPU", e))?;
    }
    let digest = |mem: &[[u8; PAGE_SIZE]; PAGES]| -> Result<[u8; 32], (&'static str, Error)> {
        let mut d = MemoryDigest::new();
        for (i, p) in mem.iter().enumerate() {
            d.add_page((i * PAGE_SIZE) as u64, p).map_err(|e| ("digest", e))?;
        }
        Ok(d.finish())
    };
    let ours = digest(memory)?;
    let mut fin = [0u8; FINAL_RECORD_LEN];
    source
        .seal_final(Some(&ours), &mut fin)
        .map_err(|e| ("seal final", e))?;
    checker.open(&mut fin).map_err(|e| ("import final", e))?;
    let theirs = digest(imported)?;
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    checker.commit(Some(&theirs), &mut commit).map_err(|e| ("commit", e))?;
    source.read_commit(&mut commit).map_err(|e| ("read commit", e))?;
    if source.may_resume() || imported != memory {
        return Err(("final state", Error::Incomplete));
    }
    Ok(())
}

fn main() -> i32 {
    let mut bufs = Buffers {
        a: [0; MAX_HANDSHAKE_MSG_LEN],
        b: [0; MAX_HANDSHAKE_MSG_LEN],
        memory: [[0; PAGE_SIZE]; PAGES],
        imported: [[0; PAGE_SIZE]; PAGES],
        record: [0; PAGE_RECORD_LEN],
    };
    let depth = rt::measure_stack(|| match migrate(&mut bufs) {
        Ok(()) => 0,
        Err((step, e)) => {
            rt::print(format_args!("FAIL {step}: {e}\n"));
            1
        }
    });
    match depth {
        (0, used) => {
            rt::print(format_args!(
                "ok: full migration bare metal (no std, no libc, no allocator); peak stack {used} bytes besides the caller's buffers\n"
            ));
            0
        }
        (code, _) => code,
    }
}
