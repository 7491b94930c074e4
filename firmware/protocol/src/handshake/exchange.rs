//! What both sides of a handshake hold, and the steps they take alike.
//!
//! The source and the destination keep the same state (own policy, nonce
//! and key share, the transcript, what was negotiated, what the peer sent
//! and the keys) and mirror each other's evidence and Finished steps.
//! [`Exchange`] holds that state once; its steps take their labels,
//! message types, transcript roles and keys from our [`Side`], so no side
//! can use the other's by mistake.

use super::messages;
use super::side::Side;
use super::NONCE_LEN;
use crate::error::{Error, Result};
use crate::evidence::{Evidence, EvidenceVerifier};
use crate::keys::{check_finished, finished_mac, Ephemeral, KeySchedule};
use crate::policy::{check_peer, EncodedPolicy, PeerIdentity, Policy};
use crate::suite::{Suite, SUPPORTED_SUITES};
use crate::transcript::{report_data, Transcript};

/// The state of one side of a handshake.
pub(super) struct Exchange {
    /// Which side we are.
    us: Side,
    pub(super) policy: Policy,
    pub(super) transcript: Transcript,
    pub(super) ephemeral: Ephemeral,
    pub(super) nonce: [u8; NONCE_LEN],
    /// The negotiated protocol version (0 until the hellos agree on one).
    pub(super) version: u16,
    /// The negotiated suite.
    pub(super) suite: Suite,
    /// The peer's X25519 key share, from its hello.
    pub(super) peer_public: [u8; 32],
    /// The peer's policy, from its hello; its evidence must match it.
    pub(super) peer_policy: Option<EncodedPolicy>,
    /// The peer, once its evidence passed our policy.
    pub(super) peer: Option<PeerIdentity>,
    /// The session keys, once both evidences are in the transcript.
    pub(super) keys: Option<KeySchedule>,
}

impl Exchange {
    /// `us` under `policy`. Draws from `rng`: first the 32-byte nonce,
    /// then the 32-byte X25519 secret.
    pub(super) fn new(us: Side, policy: &Policy, rng: &mut (impl rand_core::CryptoRngCore + ?Sized)) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ephemeral = Ephemeral::generate(rng);
        Exchange {
            us,
            policy: policy.clone(),
            transcript: Transcript::new(),
            ephemeral,
            nonce,
            version: 0,
            suite: SUPPORTED_SUITES[0],
            peer_public: [0; 32],
            peer_policy: None,
            peer: None,
            keys: None,
        }
    }

    /// Adds a message we sent to the transcript.
    pub(super) fn sent(&mut self, msg: &[u8]) {
        self.transcript.add(self.us.role(), msg);
    }

    /// Adds a message the peer sent to the transcript.
    pub(super) fn received(&mut self, msg: &[u8]) {
        self.transcript.add(self.us.peer().role(), msg);
    }

    /// Refuses the peer's hello (`what`) if it carries our own key share
    /// or nonce: a relay reflecting our hello back at us.
    pub(super) fn refuse_reflection(
        &self,
        public: &[u8; 32],
        nonce: &[u8; NONCE_LEN],
        what: &'static str,
    ) -> Result<()> {
        if public == self.ephemeral.public() || *nonce == self.nonce {
            return Err(Error::Invalid { what });
        }
        Ok(())
    }

    /// Keeps the key share and policy of the peer's hello `msg` and adds
    /// it to the transcript.
    pub(super) fn accept_hello(&mut self, public: [u8; 32], policy: &[u8], msg: &[u8]) -> Result<()> {
        self.peer_public = public;
        self.peer_policy = Some(EncodedPolicy::copy_of(policy)?);
        self.received(msg);
        Ok(())
    }

    /// The report_data our own evidence must carry: our label over the
    /// transcript so far.
    pub(super) fn own_report_data(&self) -> [u8; 64] {
        report_data(self.us.evidence_label(), &self.transcript.hash())
    }

    /// Writes our evidence message with `evidence`, which must carry
    /// [`own_report_data`](Self::own_report_data); returns its length.
    pub(super) fn write_evidence(&mut self, evidence: &Evidence, out: &mut [u8]) -> Result<usize> {
        if evidence.report().report_data != self.own_report_data() {
            return Err(Error::OwnEvidenceNotBound);
        }
        let n = messages::encode_evidence(self.us.evidence_kind(), evidence, out)?;
        self.sent(&out[..n]);
        Ok(n)
    }

    /// Reads the peer's evidence message and checks the peer against our
    /// policy (see [`check_peer`]): bound to the transcript under the
    /// peer's label, and matching the policy of its hello.
    pub(super) fn read_evidence(&mut self, msg: &[u8], verifier: &dyn EvidenceVerifier) -> Result<PeerIdentity> {
        let them = self.us.peer();
        let evidence = messages::decode_evidence(them.evidence_kind(), msg)?;
        let expected = report_data(them.evidence_label(), &self.transcript.hash());
        let peer_policy = self.peer_policy.as_ref().expect("set with the peer's hello");
        let peer = check_peer(&self.policy, verifier, &evidence, peer_policy.as_bytes(), &expected)?;
        self.received(msg);
        self.peer = Some(peer);
        Ok(peer)
    }

    /// Derives the session keys from the key shares and the transcript
    /// (once both evidences are in it).
    pub(super) fn derive_keys(&mut self) -> Result<()> {
        let shared = self.ephemeral.agree(&self.peer_public)?;
        self.keys = Some(KeySchedule::derive(shared.as_bytes(), &self.transcript.hash()));
        Ok(())
    }

    /// Writes our Finished: proves we hold the keys of this transcript.
    pub(super) fn write_finished(&mut self, out: &mut [u8]) -> Result<usize> {
        let keys = self.keys.as_ref().expect("derived with SrcEvidence");
        let mac = finished_mac(self.us.finished_key(keys), &self.transcript.hash());
        let n = messages::encode_finished(self.us.finished_kind(), &mac, out)?;
        self.sent(&out[..n]);
        Ok(n)
    }

    /// Checks the peer's Finished `msg` against `keys`: the peer holds the
    /// same keys. Does not add it to the transcript.
    pub(super) fn check_finished(&self, keys: &KeySchedule, msg: &[u8]) -> Result<()> {
        let them = self.us.peer();
        let mac = messages::decode_finished(them.finished_kind(), msg)?;
        check_finished(them.finished_key(keys), &self.transcript.hash(), mac)
    }
}
