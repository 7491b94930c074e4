//! The source's side of the handshake.

use super::messages::{self, kind, DstHello, Offers, SrcHello};
use super::NONCE_LEN;
use crate::error::{Error, Result};
use crate::evidence::{Evidence, EvidenceVerifier};
use crate::keys::{check_finished, finished_mac, Ephemeral, KeySchedule};
use crate::policy::{check_peer, EncodedPolicy, PeerIdentity, Policy};
use crate::source::SourceSession;
use crate::suite::{Suite, MAX_OFFERS, SUPPORTED_SUITES, SUPPORTED_VERSIONS};
use crate::transcript::{report_data, Role, Transcript, DST_EVIDENCE_LABEL, SRC_EVIDENCE_LABEL};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    HelloSent,
    DstHelloRead,
    DstEvidenceRead,
    EvidenceSent,
    FinishedSent,
    Done,
    Failed,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Start => "start",
            Step::HelloSent => "SrcHello sent",
            Step::DstHelloRead => "DstHello read",
            Step::DstEvidenceRead => "DstEvidence read",
            Step::EvidenceSent => "SrcEvidence sent",
            Step::FinishedSent => "SrcFinished sent",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }
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
    policy: Policy,
    step: Step,
    transcript: Transcript,
    ephemeral: Ephemeral,
    nonce: [u8; NONCE_LEN],
    suite: Suite,
    version: u16,
    peer_public: [u8; 32],
    peer_policy: Option<EncodedPolicy>,
    peer: Option<PeerIdentity>,
    keys: Option<KeySchedule>,
}

impl SourceHandshake {
    /// A handshake under `policy`. Draws from `rng`: first the 32-byte
    /// nonce, then the 32-byte X25519 secret.
    pub fn new(policy: &Policy, rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ephemeral = Ephemeral::generate(rng);
        SourceHandshake {
            policy: policy.clone(),
            step: Step::Start,
            transcript: Transcript::new(),
            ephemeral,
            nonce,
            suite: SUPPORTED_SUITES[0],
            version: 0,
            peer_public: [0; 32],
            peer_policy: None,
            peer: None,
            keys: None,
        }
    }

    /// Runs one step: refuses if poisoned or not at `at`, poisons on failure.
    fn run<T>(&mut self, at: Step, op: &'static str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.step == Step::Failed {
            return Err(Error::Poisoned);
        }
        let result = if self.step != at {
            Err(Error::State {
                op,
                state: self.step.name(),
            })
        } else {
            f(self)
        };
        if result.is_err() {
            self.step = Step::Failed;
        }
        result
    }

    /// Writes SrcHello into `out`; returns its length.
    pub fn write_hello(&mut self, out: &mut [u8]) -> Result<usize> {
        self.run(Step::Start, "write SrcHello", |s| {
            let policy = s.policy.to_encoded();
            let mut offered_suites = [0u16; MAX_OFFERS];
            for (code, suite) in offered_suites.iter_mut().zip(SUPPORTED_SUITES) {
                *code = suite.code();
            }
            let hello = SrcHello {
                versions: Offers::from_slice(SUPPORTED_VERSIONS),
                suites: Offers::from_slice(&offered_suites[..SUPPORTED_SUITES.len()]),
                nonce: s.nonce,
                public: *s.ephemeral.public(),
                policy: policy.as_bytes(),
            };
            let n = hello.encode(out)?;
            s.transcript.add(Role::Source, &out[..n]);
            s.step = Step::HelloSent;
            Ok(n)
        })
    }

    /// Reads DstHello: the destination's choices, key share and policy.
    pub fn read_dst_hello(&mut self, msg: &[u8]) -> Result<()> {
        self.run(Step::HelloSent, "read DstHello", |s| {
            let hello = DstHello::decode(msg)?;
            if !SUPPORTED_VERSIONS.contains(&hello.version) {
                return Err(Error::NotOffered {
                    what: "version",
                    value: hello.version,
                });
            }
            s.suite = Suite::from_code(hello.suite).ok_or(Error::NotOffered {
                what: "suite",
                value: hello.suite,
            })?;
            if hello.public == *s.ephemeral.public() || hello.nonce == s.nonce {
                return Err(Error::Invalid {
                    what: "DstHello (our own nonce or key share reflected)",
                });
            }
            s.version = hello.version;
            s.peer_public = hello.public;
            s.peer_policy = Some(EncodedPolicy::copy_of(hello.policy)?);
            s.transcript.add(Role::Destination, msg);
            s.step = Step::DstHelloRead;
            Ok(())
        })
    }

    /// Reads DstEvidence and checks the destination against our policy
    /// (see [`check_peer`]). No secret has left the source before this
    /// succeeds.
    pub fn read_dst_evidence(&mut self, msg: &[u8], verifier: &dyn EvidenceVerifier) -> Result<PeerIdentity> {
        self.run(Step::DstHelloRead, "read DstEvidence", |s| {
            let evidence = messages::decode_evidence(kind::DST_EVIDENCE, msg)?;
            let expected = report_data(DST_EVIDENCE_LABEL, &s.transcript.hash());
            let peer_policy = s.peer_policy.as_ref().expect("set with DstHello");
            let peer = check_peer(&s.policy, verifier, &evidence, peer_policy.as_bytes(), &expected)?;
            s.transcript.add(Role::Destination, msg);
            s.peer = Some(peer);
            s.step = Step::DstEvidenceRead;
            Ok(peer)
        })
    }

    /// The report_data our own evidence must carry (after DstEvidence).
    pub fn report_data(&self) -> Result<[u8; 64]> {
        if self.step != Step::DstEvidenceRead {
            return Err(Error::State {
                op: "compute the source's report_data",
                state: self.step.name(),
            });
        }
        Ok(report_data(SRC_EVIDENCE_LABEL, &self.transcript.hash()))
    }

    /// Writes SrcEvidence with our platform's `evidence` (whose
    /// report_data must be [`report_data`](Self::report_data)) and
    /// derives the session keys.
    pub fn write_evidence(&mut self, evidence: &Evidence, out: &mut [u8]) -> Result<usize> {
        self.run(Step::DstEvidenceRead, "write SrcEvidence", |s| {
            let expected = report_data(SRC_EVIDENCE_LABEL, &s.transcript.hash());
            if evidence.report().report_data != expected {
                return Err(Error::OwnEvidenceNotBound);
            }
            let n = messages::encode_evidence(kind::SRC_EVIDENCE, evidence, out)?;
            s.transcript.add(Role::Source, &out[..n]);
            let shared = s.ephemeral.agree(&s.peer_public)?;
            s.keys = Some(KeySchedule::derive(shared.as_bytes(), &s.transcript.hash()));
            s.step = Step::EvidenceSent;
            Ok(n)
        })
    }

    /// Writes SrcFinished: proves we hold the keys of this transcript.
    pub fn write_finished(&mut self, out: &mut [u8]) -> Result<usize> {
        self.run(Step::EvidenceSent, "write SrcFinished", |s| {
            let keys = s.keys.as_ref().expect("derived with SrcEvidence");
            let mac = finished_mac(&keys.s2d_finished, &s.transcript.hash());
            let n = messages::encode_finished(kind::SRC_FINISHED, &mac, out)?;
            s.transcript.add(Role::Source, &out[..n]);
            s.step = Step::FinishedSent;
            Ok(n)
        })
    }

    /// Reads DstFinished. On success the session is confirmed: the
    /// destination holds the same keys and accepted our evidence.
    pub fn read_dst_finished(&mut self, msg: &[u8]) -> Result<SourceSession> {
        self.run(Step::FinishedSent, "read DstFinished", |s| {
            let mac = messages::decode_finished(kind::DST_FINISHED, msg)?;
            let keys = s.keys.take().expect("derived with SrcEvidence");
            check_finished(&keys.d2s_finished, &s.transcript.hash(), mac)?;
            s.step = Step::Done;
            Ok(SourceSession::new(
                keys,
                s.peer.expect("checked with DstEvidence"),
                s.version,
                s.suite,
            ))
        })
    }
}
