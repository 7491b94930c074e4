//! What the protocol's benchmarks share: a deterministic RNG and a
//! confirmed session pair over the emulated platform.

use covm_agent_protocol::handshake::messages::MAX_HANDSHAKE_MSG_LEN;
use covm_agent_protocol::{
    AttestationReport, DestinationHandshake, DestinationSession, EmulatedRoot, EmulatedRootVerifier, Evidence,
    Platform, Policy, SourceHandshake, SourceSession, TcbVersion,
};
use rand_core::{CryptoRng, RngCore};

/// splitmix64: deterministic stand-in for the platform's RNG. Fine for a
/// benchmark, never for keys that protect anything.
pub struct BenchRng(pub u64);

impl RngCore for BenchRng {
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
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for BenchRng {}

const MEASUREMENT: [u8; 48] = [0x4D; 48];

fn evidence(root: &EmulatedRoot, policy: &Policy, report_data: [u8; 64]) -> Evidence {
    let mut r = AttestationReport::zeroed();
    r.guest_svn = 1;
    r.measurement = MEASUREMENT;
    r.host_data = policy.host_data();
    r.report_data = report_data;
    r.reported_tcb = TcbVersion::new(1, 0, 8, 100);
    root.sign(&mut r);
    Evidence::new(Platform::EmulatedCvm, &r)
}

/// A confirmed session pair.
pub fn sessions(seed: u64) -> (SourceSession, DestinationSession) {
    let mut rng = BenchRng(seed);
    let root = EmulatedRoot::from_secret(&[0x11; 48]).unwrap();
    let mut policy = Policy::new(1);
    policy
        .allow_platform(Platform::EmulatedCvm)
        .allow_measurement(&MEASUREMENT)
        .unwrap()
        .trust_root(&root.public_key())
        .unwrap();
    let v = EmulatedRootVerifier;
    let mut src = SourceHandshake::new(&policy, &mut rng);
    let mut dst = DestinationHandshake::new(&policy, &mut rng);
    let (mut a, mut b) = ([0u8; MAX_HANDSHAKE_MSG_LEN], [0u8; MAX_HANDSHAKE_MSG_LEN]);
    let n = src.write_hello(&mut a).unwrap();
    dst.read_src_hello(&a[..n]).unwrap();
    let n = dst.write_hello(&mut a).unwrap();
    src.read_dst_hello(&a[..n]).unwrap();
    let ev = evidence(&root, &policy, dst.report_data().unwrap());
    let n = dst.write_evidence(&ev, &mut a).unwrap();
    src.read_dst_evidence(&a[..n], &v).unwrap();
    let ev = evidence(&root, &policy, src.report_data().unwrap());
    let n = src.write_evidence(&ev, &mut a).unwrap();
    let m = src.write_finished(&mut b).unwrap();
    dst.read_src_evidence(&a[..n], &v).unwrap();
    dst.read_src_finished(&b[..m]).unwrap();
    let (n, dst_session) = dst.write_finished(&mut a).unwrap();
    (src.read_dst_finished(&a[..n]).unwrap(), dst_session)
}

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// MB/s (10^6 bytes) of `bytes` in `secs`.
pub fn rate(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}
