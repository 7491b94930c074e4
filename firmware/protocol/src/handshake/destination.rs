//! The destination's side of the handshake.

use super::exchange::Exchange;
use super::messages::{DstHello, SrcHello};
use super::side::Side;
use super::step::{self, steps, StepMachine};
use super::NONCE_LEN;
use crate::error::Result;
use crate::evidence::{Evidence, EvidenceVerifier};
use crate::keys::KeySchedule;
use crate::policy::{PeerIdentity, Policy};
use crate::suite::{choose_suite, choose_version, Suite};

steps! {
    /// Where the destination's handshake stands: the last message it sent or read.
    DestinationHandshake:
    Start => "start",
    SrcHelloRead => "SrcHello read",
    HelloSent => "DstHello sent",
    EvidenceSent => "DstEvidence sent",
    SrcEvidenceRead => "SrcEvidence read",
    SrcFinishedRead => "SrcFinished read",
    Done => "done",
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
    step: Step,
    exchange: Exchange,
    /// The source's nonce, from SrcHello: checked when we answer it.
    peer_nonce: [u8; NONCE_LEN],
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
        DestinationHandshake {
            step: Step::Start,
            exchange: Exchange::new(Side::Destination, policy, rng),
            peer_nonce: [0; NONCE_LEN],
        }
    }

    /// Reads SrcHello and chooses the version and suite.
    pub fn read_src_hello(&mut self, msg: &[u8]) -> Result<()> {
        self.advance(Step::Start, Step::SrcHelloRead, "read SrcHello", |s| {
            let hello = SrcHello::decode(msg)?;
            s.exchange.version = choose_version(hello.versions.as_slice())?;
            s.exchange.suite = choose_suite(hello.suites.as_slice())?;
            s.peer_nonce = hello.nonce;
            s.exchange.accept_hello(hello.public, hello.policy, msg)
        })
    }

    /// Writes DstHello; returns its length.
    pub fn write_hello(&mut self, out: &mut [u8]) -> Result<usize> {
        self.advance(Step::SrcHelloRead, Step::HelloSent, "write DstHello", |s| {
            let x = &mut s.exchange;
            x.refuse_reflection(
                &x.peer_public,
                &s.peer_nonce,
                "SrcHello (our own nonce or key share reflected)",
            )?;
            let policy = x.policy.to_encoded();
            let hello = DstHello {
                version: x.version,
                suite: x.suite.code(),
                nonce: x.nonce,
                public: *x.ephemeral.public(),
                policy: policy.as_bytes(),
            };
            let n = hello.encode(out)?;
            x.sent(&out[..n]);
            Ok(n)
        })
    }

    /// The report_data our own evidence must carry (after DstHello).
    pub fn report_data(&self) -> Result<[u8; 64]> {
        step::Step::expect(self.step, Step::HelloSent, "compute the destination's report_data")?;
        Ok(self.exchange.own_report_data())
    }

    /// Writes DstEvidence with our platform's `evidence` (whose
    /// report_data must be [`report_data`](Self::report_data)).
    pub fn write_evidence(&mut self, evidence: &Evidence, out: &mut [u8]) -> Result<usize> {
        self.advance(Step::HelloSent, Step::EvidenceSent, "write DstEvidence", |s| {
            s.exchange.write_evidence(evidence, out)
        })
    }

    /// Reads SrcEvidence, checks the source against our policy (see
    /// [`crate::check_peer`]) and derives the session keys.
    pub fn read_src_evidence(&mut self, msg: &[u8], verifier: &dyn EvidenceVerifier) -> Result<PeerIdentity> {
        self.advance(Step::EvidenceSent, Step::SrcEvidenceRead, "read SrcEvidence", |s| {
            let peer = s.exchange.read_evidence(msg, verifier)?;
            s.exchange.derive_keys()?;
            Ok(peer)
        })
    }

    /// Reads SrcFinished: the source holds the same keys.
    pub fn read_src_finished(&mut self, msg: &[u8]) -> Result<()> {
        self.advance(Step::SrcEvidenceRead, Step::SrcFinishedRead, "read SrcFinished", |s| {
            let x = &mut s.exchange;
            let keys = x.keys.as_ref().expect("derived with SrcEvidence");
            x.check_finished(keys, msg)?;
            // DstFinished covers SrcFinished too.
            x.received(msg);
            Ok(())
        })
    }

    /// Writes DstFinished and returns the confirmed session. `out` must
    /// hold [`FINISHED_MSG_LEN`](super::messages::FINISHED_MSG_LEN) bytes.
    pub fn write_finished(&mut self, out: &mut [u8]) -> Result<(usize, DestinationSession)> {
        self.advance(Step::SrcFinishedRead, Step::Done, "write DstFinished", |s| {
            let x = &mut s.exchange;
            let n = x.write_finished(out)?;
            Ok((
                n,
                DestinationSession {
                    keys: x.keys.take().expect("derived with SrcEvidence"),
                    peer: x.peer.expect("checked with SrcEvidence"),
                    version: x.version,
                    suite: x.suite,
                },
            ))
        })
    }

    #[cfg(test)]
    pub(crate) fn keys_for_test(&self) -> Option<&KeySchedule> {
        self.exchange.keys.as_ref()
    }
}
