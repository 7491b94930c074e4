//! The emulated platform's reports through the same entry point: signed
//! by covm-agent-protocol's EmulatedRoot, checked by the same signature
//! code as SEV-SNP under Root::Emulated.

use covm_agent_protocol::{AttestationReport, EmulatedRoot, TcbVersion};
use covm_reference_verifier::{verify, AttestationError, EmulatedRootKey, Root, SigningKey, SnpChain, Tcb};
use std::path::PathBuf;

fn root() -> EmulatedRoot {
    EmulatedRoot::from_secret(&[0x11; 48]).unwrap()
}

fn trusted(root: &EmulatedRoot) -> Root {
    Root::Emulated(EmulatedRootKey::from_sec1(&root.public_key()).unwrap())
}

/// A report filled as `EmulatedCvm::evidence` fills one
/// (docs/platforms.md), signed by `root`.
fn signed_report(root: &EmulatedRoot) -> Vec<u8> {
    let mut r = AttestationReport::zeroed();
    r.version = 2;
    r.guest_svn = 1;
    r.policy = 0x7_0000;
    r.current_tcb = TcbVersion::new(1, 1, 1, 1);
    r.reported_tcb = r.current_tcb;
    r.committed_tcb = r.current_tcb;
    r.launch_tcb = r.current_tcb;
    r.report_data = [0x5A; 64];
    r.measurement = [0x4D; 48];
    r.host_data = [0xC3; 32];
    root.sign(&mut r);
    r.to_bytes().to_vec()
}

#[test]
fn an_emulated_report_verifies_under_its_root() {
    let root = root();
    let verified = verify(&signed_report(&root), &trusted(&root)).unwrap();
    assert_eq!(verified.signing_key(), SigningKey::EmulatedRoot);
    assert_eq!(verified.product(), None);
    assert_eq!(verified.version(), 2);
    assert_eq!(verified.guest_svn(), 1);
    assert_eq!(verified.policy(), 0x7_0000);
    assert_eq!(verified.measurement(), &[0x4D; 48]);
    assert_eq!(verified.host_data(), &[0xC3; 32]);
    assert_eq!(verified.report_data(), &[0x5A; 64]);
    assert_eq!(verified.chip_id(), &[0; 64]);
    assert_eq!(
        verified.reported_tcb(),
        Tcb {
            fmc: None,
            boot_loader: 1,
            tee: 1,
            snp: 1,
            microcode: 1,
            raw: TcbVersion::new(1, 1, 1, 1).0
        }
    );
}

#[test]
fn one_flipped_byte_is_refused() {
    let root = root();
    let report = signed_report(&root);
    // MEASUREMENT, HOST_DATA, REPORT_DATA, REPORTED_TCB, r, s.
    for at in [0x90, 0xC0, 0x50, 0x180, 0x2A0 + 5, 0x2E8 + 40] {
        let mut flipped = report.clone();
        flipped[at] ^= 0x80;
        assert!(
            matches!(
                verify(&flipped, &trusted(&root)),
                Err(AttestationError::ReportSignature {
                    key: SigningKey::EmulatedRoot
                })
            ),
            "byte {at:#x}"
        );
    }
}

#[test]
fn another_root_is_refused() {
    let other = EmulatedRoot::from_secret(&[0x22; 48]).unwrap();
    assert!(matches!(
        verify(&signed_report(&root()), &trusted(&other)),
        Err(AttestationError::ReportSignature { .. })
    ));
}

#[test]
fn an_emulated_root_cannot_pass_for_amd_and_back() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../resources/attestation/snp/milan-virtee-sev");
    let chain = SnpChain::load(dir.join("ark.pem"), dir.join("ask.pem"), dir.join("vcek.der")).unwrap();
    // An emulated report under AMD's chain: the VCEK did not sign it.
    assert!(matches!(
        verify(&signed_report(&root()), &Root::Amd(chain)),
        Err(AttestationError::ReportSignature { key: SigningKey::Vcek })
    ));
    // A real SNP report under an emulated root: the root did not sign it.
    let snp = std::fs::read(dir.join("report.bin")).unwrap();
    assert!(matches!(
        verify(&snp, &trusted(&root())),
        Err(AttestationError::ReportSignature {
            key: SigningKey::EmulatedRoot
        })
    ));
}

#[test]
fn root_keys_are_compressed_p384_points() {
    let mut key = root().public_key();
    key[0] = 0x04; // the uncompressed prefix
    assert!(matches!(
        EmulatedRootKey::from_sec1(&key),
        Err(AttestationError::EmulatedRootKey)
    ));
    let mut key = root().public_key();
    key[1..].fill(0xFF); // x beyond the field
    assert!(matches!(
        EmulatedRootKey::from_sec1(&key),
        Err(AttestationError::EmulatedRootKey)
    ));
}
