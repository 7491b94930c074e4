//! `emulated_cvm`: covm's emulated confidential platform.
//!
//! A normal KVM VM in which the built-in firmware plays the trust boundary.
//! covm measures what it loads exactly as SEV-SNP would
//! ([`super::measure::image_digest`]), binds the guest owner's migration policy through
//! HOST_DATA, and signs SNP-layout attestation reports with an emulated
//! root key. **It provides no hardware protection**: covm, the host, holds
//! the root key and can read and change every byte of the guest. It exists
//! to run the confidential migration protocol end to end where no SNP or
//! TDX hardware is.

use super::policy::MigrationPolicy;
use super::root_key::RootKey;
use super::{hex, EmulatedCvmConfig, Platform, PlatformError};
use covm_agent_protocol::{AttestationReport, Evidence, Platform as ProtocolPlatform, TcbVersion};
use covm_measure::snp::Measurement;
use serde_json::{json, Value};

/// What `vm.info`, `covm measure` and the docs say about this platform.
pub const NOTE: &str = "emulated confidential platform: no hardware protection. covm (the host) holds the \
attestation root key and can read and change all guest memory; the measurement, policy binding and \
evidence follow SEV-SNP so the confidential migration protocol runs end to end, but nothing is protected";

/// Report format version of emulated reports (SNP firmware 1.51's).
pub const REPORT_VERSION: u32 = 2;
/// The TCB every emulated report carries (current, reported, committed
/// and launch TCB alike): version 1 of each emulated component.
pub const TCB: TcbVersion = TcbVersion(u64::from_le_bytes([1, 1, 0, 0, 0, 0, 1, 1]));
/// The guest SVN every emulated report carries.
pub const GUEST_SVN: u32 = 1;
/// The guest policy every emulated report carries: SMT allowed (bit 16),
/// the must-be-one bit 17, migration agent allowed (bit 18, MIGRATE_MA);
/// DEBUG (bit 19) clear, ABI version 0.0.
pub const GUEST_POLICY: u64 = (1 << 16) | (1 << 17) | (1 << 18);

/// A launched VM on the emulated platform.
#[derive(Debug)]
pub struct EmulatedCvm {
    key: RootKey,
    policy: MigrationPolicy,
    measurement: Measurement,
    config: EmulatedCvmConfig,
}

impl EmulatedCvm {
    /// The platform of a VM whose launch measured `measurement`.
    pub fn new(config: &EmulatedCvmConfig, key: RootKey, measurement: Measurement) -> Self {
        EmulatedCvm {
            key,
            policy: config.policy.clone(),
            measurement,
            config: config.clone(),
        }
    }

    /// The root's SEC1 compressed public key.
    #[cfg(test)]
    pub fn root_public_key(&self) -> [u8; 49] {
        self.key.public_key
    }

    /// Signed evidence binding `report_data` (for the migration protocol,
    /// the transcript binding of docs/confidential-protocol.md §4): an
    /// SNP-layout report with this VM's measurement and HOST_DATA and the
    /// fixed values above, signed by the emulated root.
    pub fn evidence(&self, report_data: [u8; 64]) -> Evidence {
        let mut report = AttestationReport::zeroed();
        report.version = REPORT_VERSION;
        report.guest_svn = GUEST_SVN;
        report.policy = GUEST_POLICY;
        report.vmpl = 0;
        report.current_tcb = TCB;
        report.reported_tcb = TCB;
        report.committed_tcb = TCB;
        report.launch_tcb = TCB;
        report.report_data = report_data;
        report.measurement = self.measurement.digest;
        report.host_data = self.policy.host_data();
        self.key.root.sign(&mut report);
        Evidence::new(ProtocolPlatform::EmulatedCvm, &report)
    }
}

fn tcb_json(tcb: TcbVersion) -> Value {
    json!({
        "bootloader": tcb.boot_loader(),
        "tee": tcb.tee(),
        "snp": tcb.snp(),
        "microcode": tcb.microcode(),
    })
}

/// `vm.info`'s platform block; `launched` adds what only a launch knows.
pub(super) fn info(config: &EmulatedCvmConfig, launched: Option<&EmulatedCvm>) -> Value {
    json!({
        "kind": "emulated_cvm",
        "hardware_protection": false,
        "note": NOTE,
        "measurement": launched.map(|l| hex(&l.measurement.digest)),
        "host_data": hex(&config.policy.host_data()),
        "policy_version": config.policy.version(),
        "root_public_key": launched.map(|l| hex(&l.key.public_key)),
        "root_key": config.root_key.as_ref().map(|p| p.display().to_string()),
        "tcb": tcb_json(TCB),
        "guest_svn": GUEST_SVN,
        "guest_policy": format!("{GUEST_POLICY:#x}"),
    })
}

impl Platform for EmulatedCvm {
    fn kind(&self) -> &'static str {
        "emulated_cvm"
    }

    fn hardware_protection(&self) -> bool {
        false
    }

    fn confidential(&self) -> bool {
        true
    }

    fn measurement(&self) -> Option<[u8; 48]> {
        Some(self.measurement.digest)
    }

    fn host_data(&self) -> Option<[u8; 32]> {
        Some(self.policy.host_data())
    }

    fn migration_policy(&self) -> Option<&MigrationPolicy> {
        Some(&self.policy)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        Ok(EmulatedCvm::evidence(self, *report_data))
    }

    fn info(&self) -> Value {
        info(&self.config, Some(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::policy::tests::valid_json;
    use crate::platform::root_key::KeySource;
    use covm_agent_protocol::evidence::report::GUEST_POLICY_DEBUG;
    use covm_agent_protocol::{check_peer, EmulatedRoot, EmulatedRootVerifier, Error, EvidenceVerifier, Policy};
    use sha2::{Digest, Sha512};

    const MEASUREMENT: [u8; 48] = [0x5a; 48];

    /// A platform with root secret 0x01 × 48 (trusted by `valid_json`)
    /// and a policy that allows its own measurement.
    fn platform() -> EmulatedCvm {
        let mut json = MigrationPolicy::from_json_bytes(valid_json().as_bytes())
            .unwrap()
            .to_json();
        json.allowed_measurements.push(hex(&MEASUREMENT));
        json.min_tcb = Default::default();
        json.min_guest_svn = 1;
        let policy = MigrationPolicy::from_parsed(&json).unwrap();
        let root = EmulatedRoot::from_secret(&[1; 48]).unwrap();
        let key = RootKey {
            public_key: root.public_key(),
            root,
            source: KeySource::Ephemeral,
        };
        let measurement = Measurement {
            digest: MEASUREMENT,
            pages: vec![],
        };
        EmulatedCvm::new(&EmulatedCvmConfig { root_key: None, policy }, key, measurement)
    }

    /// report_data bound to a transcript hash the way the protocol binds
    /// it (docs/confidential-protocol.md §4).
    fn bound(th: &[u8; 32]) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(b"covm-cm v1 destination evidence");
        h.update(th);
        h.finalize().into()
    }

    #[test]
    fn evidence_carries_the_launch_and_verifies_under_the_policy_roots() {
        let p = platform();
        let rd = bound(&[7; 32]);
        let evidence = p.evidence(rd);
        assert_eq!(evidence.platform(), ProtocolPlatform::EmulatedCvm);
        let report = evidence.report();
        assert_eq!(report.measurement, MEASUREMENT);
        assert_eq!(report.host_data, p.policy.host_data());
        assert_eq!(report.report_data, rd);
        assert_eq!(report.reported_tcb, TCB);
        assert_eq!(report.guest_svn, GUEST_SVN);
        assert_eq!(report.policy & GUEST_POLICY_DEBUG, 0);
        assert_eq!(report.version, REPORT_VERSION);
        let own = p.policy.policy();
        EmulatedRootVerifier.verify(&evidence, own).unwrap();
        // A policy trusting another root refuses it.
        let mut other = Policy::new(own.version());
        other.allow_platform(ProtocolPlatform::EmulatedCvm);
        other
            .trust_root(&EmulatedRoot::from_secret(&[2; 48]).unwrap().public_key())
            .unwrap();
        assert_eq!(EmulatedRootVerifier.verify(&evidence, &other), Err(Error::BadSignature));
    }

    #[test]
    fn check_peer_accepts_transcript_bound_evidence_and_nothing_else() {
        let p = platform();
        let own = p.policy.policy();
        let policy_bytes = p.policy.encoded();
        let rd = bound(&[9; 32]);
        let evidence = p.evidence(rd);
        let peer = check_peer(own, &EmulatedRootVerifier, &evidence, &policy_bytes, &rd).unwrap();
        assert_eq!(peer.measurement, MEASUREMENT);
        assert_eq!(peer.platform, ProtocolPlatform::EmulatedCvm);
        assert_eq!(peer.policy_version, own.version());
        // Another transcript: relayed evidence.
        let other = bound(&[8; 32]);
        assert_eq!(
            check_peer(own, &EmulatedRootVerifier, &evidence, &policy_bytes, &other),
            Err(Error::ReportDataMismatch)
        );
        // A policy other than the one HOST_DATA binds.
        let mut swapped = policy_bytes.clone();
        swapped[24] ^= 1;
        assert_eq!(
            check_peer(own, &EmulatedRootVerifier, &evidence, &swapped, &rd),
            Err(Error::HostDataMismatch)
        );
        // A guest SVN above ours.
        let mut json = p.policy.to_json();
        json.min_guest_svn = GUEST_SVN + 1;
        let strict = MigrationPolicy::from_parsed(&json).unwrap();
        let strict_evidence = EmulatedCvm::new(
            &EmulatedCvmConfig {
                root_key: None,
                policy: strict.clone(),
            },
            platform().key,
            p.measurement.clone(),
        )
        .evidence(rd);
        assert!(matches!(
            check_peer(
                strict.policy(),
                &EmulatedRootVerifier,
                &strict_evidence,
                &strict.encoded(),
                &rd
            ),
            Err(Error::GuestSvnTooLow { .. })
        ));
    }

    #[test]
    fn info_says_no_hardware_protection() {
        let p = platform();
        let info = Platform::info(&p);
        assert_eq!(info["kind"], "emulated_cvm");
        assert_eq!(info["hardware_protection"], false);
        assert!(info["note"].as_str().unwrap().contains("no hardware protection"));
        assert_eq!(info["measurement"], hex(&MEASUREMENT));
        assert_eq!(info["host_data"], hex(&p.policy.host_data()));
        assert_eq!(info["policy_version"], 3);
        assert_eq!(info["root_public_key"], hex(&p.root_public_key()));
    }
}
