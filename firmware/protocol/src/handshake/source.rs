//! The source's side of the handshake.

use super::exchange::Exchange;
use super::messages::{DstHello, Offers, SrcHello};
use super::side::Side;
use super::step::{self, steps, StepMachine};
use crate::error::{Error, Result};
use crate::evidence::{Evidence, EvidenceVerifier};
use crate::policy::{PeerIdentity, Policy};
use crate::source::SourceSession;
use crate::suite::{Suite, MAX_OFFERS, SUPPORTED_SUITES, SUPPORTED_VERSIONS};

steps! {
    /// Where the source's handshake stands: the last message it sent or read.
    SourceHandshake:
    Start => "start",
    HelloSent => "SrcHello sent",
    DstHelloRead => "DstHello read",
    DstEvidenceRead => "DstEvidence read",
    EvidenceSent => "SrcEvidence sent",
    FinishedSent => "SrcFinished sent",
    Done => "done",
}

/// The source (initiator) of a handshake.
///
/// Call, in order: [`write_hello`](Self::write_hello),
/// [`read_dst_hello`](Self::read_dst_hello),
/// [`read_dst_evidence`](Self::read_dst_evidence), get the platform's
/// evidence for [`report_data`](Self::report_data) and pass it to
/// [`write_evidence`](Self::write_evidence), then
/// [`write_finished`](Self::write_finished) and
/// [`read_dst_finished`](Self::read_dst_finished), which returns the
/// confirmed [`SourceSession`]. Until then the session never confirmed
/// and the guest may simply go on running here.
pub struct SourceHandshake {
    step: Step,
    exchange: Exchange,
}

impl SourceHandshake {
    /// A handshake under `policy`. Draws from `rng`: first the 32-byte
    /// nonce, then the 32-byte X25519 secret.
    pub fn new(policy: &Policy, rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        SourceHandshake {
            step: Step::Start,
            exchange: Exchange::new(Side::Source, policy, rng),
        }
    }

    /// Writes SrcHello into `out`; returns its length.
    pub fn write_hello(&mut self, out: &mut [u8]) -> Result<usize> {
        self.advance(Step::Start, Step::HelloSent, "write SrcHello", |s| {
            let x = &mut s.exchange;
            let policy = x.policy.to_encoded();
            let mut offered_suites = [0u16; MAX_OFFERS];
            for (code, suite) in offered_suites.iter_mut().zip(SUPPORTED_SUITES) {
                *code = suite.code();
            }
            let hello = SrcHello {
                versions: Offers::from_slice(SUPPORTED_VERSIONS),
                suites: Offers::from_slice(&offered_suites[..SUPPORTED_SUITES.len()]),
                nonce: x.nonce,
                public: *x.ephemeral.public(),
                policy: policy.as_bytes(),
            };
            let n = hello.encode(out)?;
            x.sent(&out[..n]);
            Ok(n)
        })
    }

    /// Reads DstHello: the destination's choices, key share and policy.
    pub fn read_dst_hello(&mut self, msg: &[u8]) -> Result<()> {
        self.advance(Step::HelloSent, Step::DstHelloRead, "read DstHello", |s| {
            let x = &mut s.exchange;
            let hello = DstHello::decode(msg)?;
            if !SUPPORTED_VERSIONS.contains(&hello.version) {
                return Err(Error::NotOffered {
                    what: "version",
                    value: hello.version,
                });
            }
            x.suite = Suite::from_code(hello.suite).ok_or(Error::NotOffered {
                what: "suite",
                value: hello.suite,
            })?;
            x.refuse_reflection(
                &hello.public,
                &hello.nonce,
                "DstHello (our own nonce or key share reflected)",
            )?;
            x.version = hello.version;
            x.accept_hello(hello.public, hello.policy, msg)
        })
    }

    /// Reads DstEvidence and checks the destination against our policy
    /// (see [`crate::check_peer`]). No secret has left the source before
    /// this succeeds.
    pub fn read_dst_evidence(&mut self, msg: &[u8], verifier: &dyn EvidenceVerifier) -> Result<PeerIdentity> {
        self.advance(Step::DstHelloRead, Step::DstEvidenceRead, "read DstEvidence", |s| {
            s.exchange.read_evidence(msg, verifier)
        })
    }

    /// The report_data our own evidence must carry (after DstEvidence).
    pub fn report_data(&self) -> Result<[u8; 64]> {
        step::Step::expect(self.step, Step::DstEvidenceRead, "compute the source's report_data")?;
        Ok(self.exchange.own_report_data())
    }

    /// Writes SrcEvidence with our platform's `evidence` (whose
    /// report_data must be [`report_data`](Self::report_data)) and
    /// derives the session keys.
    pub fn write_evidence(&mut self, evidence: &Evidence, out: &mut [u8]) -> Result<usize> {
        self.advance(Step::DstEvidenceRead, Step::EvidenceSent, "write SrcEvidence", |s| {
            let n = s.exchange.write_evidence(evidence, out)?;
            s.exchange.derive_keys()?;
            Ok(n)
        })
    }

    /// Writes SrcFinished: proves we hold the keys of this transcript.
    pub fn write_finished(&mut self, out: &mut [u8]) -> Result<usize> {
        self.advance(Step::EvidenceSent, Step::FinishedSent, "write SrcFinished", |s| {
            s.exchange.write_finished(out)
        })
    }

    /// Reads DstFinished. On success the session is confirmed: the
    /// destination holds the same keys and accepted our evidence.
    pub fn read_dst_finished(&mut self, msg: &[u8]) -> Result<SourceSession> {
        self.advance(Step::FinishedSent, Step::Done, "read DstFinished", |s| {
            let x = &mut s.exchange;
            // Taken first: a failed confirmation leaves no keys behind.
            let keys = x.keys.take().expect("derived with SrcEvidence");
            x.check_finished(&keys, msg)?;
            Ok(SourceSession::new(
                keys,
                x.peer.expect("checked with DstEvidence"),
                x.version,
                x.suite,
            ))
        })
    }
}
