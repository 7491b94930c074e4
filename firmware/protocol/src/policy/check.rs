//! Judging a peer: its evidence against our policy.
//!
//! One function, [`check_peer`], makes every decision, in an order that
//! authenticates before it trusts: first the verifier says the report is
//! genuine, then the report must bind this very handshake, then its
//! HOST_DATA must be the hash of the policy the peer presented, and only
//! then are that policy and the report's contents judged.

use super::{Policy, MEASUREMENT_LEN};
use crate::error::{Error, Result};
use crate::evidence::report::GUEST_POLICY_DEBUG;
use crate::evidence::{Evidence, EvidenceVerifier, Platform, TcbVersion};
use core::fmt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who the peer is, once every check passed (for logs and displays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's platform.
    pub platform: Platform,
    /// The peer's launch measurement.
    pub measurement: [u8; MEASUREMENT_LEN],
    /// The TCB its report was signed at (Milan/Genoa layout, moved from
    /// Turin's when the report names a Turin CPU).
    pub reported_tcb: TcbVersion,
    /// The peer's guest SVN.
    pub guest_svn: u32,
    /// The version of the policy the peer runs with.
    pub policy_version: u32,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, measurement ", self.platform)?;
        for b in self.measurement {
            write!(f, "{b:02x}")?;
        }
        write!(
            f,
            ", TCB {}, guest SVN {}, policy version {}",
            self.reported_tcb, self.guest_svn, self.policy_version
        )
    }
}

/// Checks a peer's `evidence` and presented `peer_policy` bytes against
/// our `own` policy. `expected_report_data` is the transcript binding the
/// handshake computed; the report must carry exactly it.
///
/// Refused: evidence the verifier rejects; a platform, measurement, TCB or
/// guest SVN the policy does not allow; a guest policy that allows a
/// debugger; report_data bound to another transcript; a policy that does
/// not hash to the report's HOST_DATA; a peer policy older than ours, or
/// of our version but not identical to ours.
pub fn check_peer(
    own: &Policy,
    verifier: &dyn EvidenceVerifier,
    evidence: &Evidence,
    peer_policy: &[u8],
    expected_report_data: &[u8; 64],
) -> Result<PeerIdentity> {
    verifier.verify(evidence, own)?;
    let report = evidence.report();
    if !bool::from(report.report_data.ct_eq(expected_report_data)) {
        return Err(Error::ReportDataMismatch);
    }
    let policy_hash: [u8; 32] = Sha256::digest(peer_policy).into();
    if !bool::from(report.host_data.ct_eq(&policy_hash)) {
        return Err(Error::HostDataMismatch);
    }
    if !own.allows_platform(evidence.platform()) {
        return Err(Error::PlatformNotAllowed(evidence.platform()));
    }
    let peer = Policy::decode(peer_policy)?;
    if peer.version() < own.version() {
        return Err(Error::PeerPolicyOlder {
            peer: peer.version(),
            own: own.version(),
        });
    }
    // The host chooses HOST_DATA at launch, so it can launch a genuine
    // agent with a policy of its own writing. A policy of our version must
    // therefore be ours, byte for byte (encodings are canonical). A newer
    // one passes here, but the peer applies this same check to us and
    // refuses our older policy: in version 1 both ends run one policy.
    if peer.version() == own.version() && peer_policy != own.to_encoded().as_bytes() {
        return Err(Error::PolicyMismatch { version: own.version() });
    }
    if !own.allows_measurement(&report.measurement) {
        return Err(Error::MeasurementNotAllowed);
    }
    let reported_tcb = report.reported_tcb_for_policy();
    reported_tcb.check_at_least(own.min_tcb())?;
    if report.guest_svn < own.min_guest_svn() {
        return Err(Error::GuestSvnTooLow {
            have: report.guest_svn,
            min: own.min_guest_svn(),
        });
    }
    if report.policy & GUEST_POLICY_DEBUG != 0 {
        return Err(Error::DebugAllowed);
    }
    Ok(PeerIdentity {
        platform: evidence.platform(),
        measurement: report.measurement,
        reported_tcb,
        guest_svn: report.guest_svn,
        policy_version: peer.version(),
    })
}
