//! The destination's side of the handshake.

use super::messages::{self, kind, DstHello, SrcHello};
use super::NONCE_LEN;
use crate::error::{Error, Result};
use crate::evidence::{Evidence, EvidenceVerifier};
use crate::keys::{check_finished, finished_mac, Ephemeral, KeySchedule};
use crate::policy::{check_peer, EncodedPolicy, PeerIdentity, Policy};
use crate::suite::{choose_suite, choose_version, Suite};
use crate::transcript::{report_data, Role, Transcript, DST_EVIDENCE_LABEL, SRC_EVIDENCE_LABEL};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    SrcHelloRead,
    HelloSent,
    EvidenceSent,
    SrcEvidenceRead,
    SrcFinishedRead,
    Done,
    Failed,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Start => "start",
            Step::SrcHelloRead => "SrcHello read",
            Step::HelloSent => "DstHello sent",
            Step::EvidenceSent => "DstEvidence sent",
            Step::SrcEvidenceRead => "SrcEvidence read",
            Step::SrcFinishedRead => "SrcFinished read",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }
}

/// The destination (responder) of a handshake.
///
/// Call, in order: [`read_src_hello`](Self::read_src_hello),
/// [`write_hello`](Self::write_hello), get the platform's evidence for
/// [`report_data`](Self::report_data) and pass it to
/// [`write_evidence`](Self::write_evidence), then
/// [`read_src_evidence`](Self::read_src_evidence),
/// [`read_src_finished`](Self::read_src_finished) and
/// [`write_finished`](Self::write_finished), which returns the
/// [`DestinationSession`] to build an [`crate::ImportChecker`] from.
pub struct DestinationHandshake {
    policy: Policy,
    step: Step,
    transcript: Transcript,
    ephemeral: Ephemeral,
    nonce: [u8; NONCE_LEN],
    version: u16,
    suite: Suite,
    peer_public: [u8; 32],
    peer_nonce: [u8; NONCE_LEN],
    peer_policy: Option<EncodedPolicy>,
    peer: Option<PeerIdentity>,
    keys: Option<KeySchedule>,
}

/// A confirmed destination session: its keys and who the source is.
/// Consumed by [`crate::ImportChecker::new`].
pub struct DestinationSession {
    pub(crate) keys: KeySchedule,
    pub(crate) peer: PeerIdentity,
    pub(crate) version: u16,
    pub(crate) suite: Suite,
}

impl DestinationSession {
    /// The verified source.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The session id bound into every record.
    pub fn session_id(&self) -> &[u8; 16] {
        &self.keys.session_id
    }

    /// The negotiated protocol version and suite.
    pub fn negotiated(&self) -> (u16, Suite) {
        (self.version, self.suite)
    }
}

impl DestinationHandshake {
    /// A handshake under `policy`. Draws from `rng`: first the 32-byte
    /// nonce, then the 32-byte X25519 secret.
    pub fn new(policy: &Policy, rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ephemeral = Ephemeral::generate(rng);
        DestinationHandshake {
            policy: policy.clone(),
            step: Step::Start,
            transcript: Transcript::new(),
            ephemeral,
            nonce,
            version: 0,
            suite: crate::suite::SUPPORTED_SUITES[0],
            peer_public: [0; 32],
            peer_nonce: [0; NONCE_LEN],
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

    /// Reads SrcHello and chooses the version and suite.
    pub fn read_src_hello(&mut self, msg: &[u8]) -> Result<()> {
        self.run(Step::Start, "read SrcHello", |s| {
            let hello = SrcHello::decode(msg)?;
            s.version = choose_version(hello.versions.as_slice())?;
            s.suite = choose_suite(hello.suites.as_slice())?;
            s.peer_public = hello.public;
            s.peer_nonce = hello.nonce;
            s.peer_policy = Some(EncodedPolicy::copy_of(hello.policy)?);
            s.transcript.add(Role::Source, msg);
            s.step = Step::SrcHelloRead;
            Ok(())
        })
    }

    /// Writes DstHello; returns its length.
    pub fn write_hello(&mut self, out: &mut [u8]) -> Result<usize> {
        self.run(Step::SrcHelloRead, "write DstHello", |s| {
            if s.peer_public == *s.ephemeral.public() || s.peer_nonce == s.nonce {
                return Err(Error::Invalid {
                    what: "SrcHello (our own nonce or key share reflected)",
                });
            }
            let policy = s.policy.to_encoded();
            let hello = DstHello {
                version: s.version,
                suite: s.suite.code(),
                nonce: s.nonce,
                public: *s.ephemeral.public(),
                policy: policy.as_bytes(),
            };
            let n = hello.encode(out)?;
            s.transcript.add(Role::Destination, &out[..n]);
            s.step = Step::HelloSent;
            Ok(n)
        })
    }

    /// The report_data our own evidence must carry (after DstHello).
    pub fn report_data(&self) -> Result<[u8; 64]> {
        if self.step != Step::HelloSent {
            return Err(Error::State {
                op: "compute the destination's report_data",
                state: self.step.name(),
            });
        }
        Ok(report_data(DST_EVIDENCE_LABEL, &self.transcript.hash()))
    }

    /// Writes DstEvidence with our platform's `evidence` (whose
    /// report_data must be [`report_data`](Self::report_data)).
    pub fn write_evidence(&mut self, evidence: &Evidence, out: &mut [u8]) -> Result<usize> {
        self.run(Step::HelloSent, "write DstEvidence", |s| {
            let expected = report_data(DST_EVIDENCE_LABEL, &s.transcript.hash());
            if evidence.report().report_data != expected {
                return Err(Error::OwnEvidenceNotBound);
            }
            let n = messages::encode_evidence(kind::DST_EVIDENCE, evidence, out)?;
            s.transcript.add(Role::Destination, &out[..n]);
            s.step = Step::EvidenceSent;
            Ok(n)
        })
    }

    /// Reads SrcEvidence, checks the source against our policy (see
    /// [`check_peer`]) and derives the session keys.
    pub fn read_src_evidence(&mut self, msg: &[u8], verifier: &dyn EvidenceVerifier) -> Result<PeerIdentity> {
        self.run(Step::EvidenceSent, "read SrcEvidence", |s| {
            let evidence = messages::decode_evidence(kind::SRC_EVIDENCE, msg)?;
            let expected = report_data(SRC_EVIDENCE_LABEL, &s.transcript.hash());
            let peer_policy = s.peer_policy.as_ref().expect("set with SrcHello");
            let peer = check_peer(&s.policy, verifier, &evidence, peer_policy.as_bytes(), &expected)?;
            s.transcript.add(Role::Source, msg);
            let shared = s.ephemeral.agree(&s.peer_public)?;
            s.keys = Some(KeySchedule::derive(shared.as_bytes(), &s.transcript.hash()));
            s.peer = Some(peer);
            s.step = Step::SrcEvidenceRead;
            Ok(peer)
        })
    }

    /// Reads SrcFinished: the source holds the same keys.
    pub fn read_src_finished(&mut self, msg: &[u8]) -> Result<()> {
        self.run(Step::SrcEvidenceRead, "read SrcFinished", |s| {
            let mac = messages::decode_finished(kind::SRC_FINISHED, msg)?;
            let keys = s.keys.as_ref().expect("derived with SrcEvidence");
            check_finished(&keys.s2d_finished, &s.transcript.hash(), mac)?;
            s.transcript.add(Role::Source, msg);
            s.step = Step::SrcFinishedRead;
            Ok(())
        })
    }

    /// Writes DstFinished and returns the confirmed session. `out` must
    /// hold [`messages::FINISHED_MSG_LEN`] bytes.
    pub fn write_finished(&mut self, out: &mut [u8]) -> Result<(usize, DestinationSession)> {
        self.run(Step::SrcFinishedRead, "write DstFinished", |s| {
            crate::wire::check_room(out, messages::FINISHED_MSG_LEN)?;
            let keys = s.keys.take().expect("derived with SrcEvidence");
            let mac = finished_mac(&keys.d2s_finished, &s.transcript.hash());
            let n = messages::encode_finished(kind::DST_FINISHED, &mac, out)?;
            s.transcript.add(Role::Destination, &out[..n]);
            s.step = Step::Done;
            Ok((
                n,
                DestinationSession {
                    keys,
                    peer: s.peer.expect("checked with SrcEvidence"),
                    version: s.version,
                    suite: s.suite,
                },
            ))
        })
    }

    #[cfg(test)]
    pub(crate) fn keys_for_test(&self) -> Option<&KeySchedule> {
        self.keys.as_ref()
    }
}
