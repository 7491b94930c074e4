//! The real SEV-SNP samples in resources/attestation/snp/: each verifies,
//! and one flipped byte in the report body, the report signature, the
//! VCEK, the ASK or the ARK is refused with the error naming it.

mod common;

use common::{der, path, read, Parts, Sample, SAMPLES};
use covm_reference_verifier::{verify, AttestationError, ChainCert, Root, SigningKey, SnpChain, Tcb};
use sev::certs::snp::Certificate;
use std::path::PathBuf;

fn flip(bytes: &mut [u8], at: usize) {
    bytes[at] ^= 0x01;
}

/// Flips a byte of a DER certificate's signature, which ends it.
fn flip_in_signature(cert: &mut [u8]) {
    let at = cert.len() - 8;
    flip(cert, at);
}

/// The chain of the sample's files, loaded as a verifier loads it.
fn chain_of(sample: &Sample) -> SnpChain {
    SnpChain::load(
        path(sample, "ark.pem"),
        path(sample, "ask.pem"),
        path(sample, sample.vek_file),
    )
    .unwrap()
}

/// Asserts that the sample's report, with the byte at `at` flipped, fails
/// its signature check.
fn assert_report_signature_fails(sample: &Sample, at: usize) {
    let mut parts = Parts::of(sample);
    flip(&mut parts.report, at);
    assert!(
        matches!(
            parts.verify(),
            Err(AttestationError::ReportSignature { key: SigningKey::Vcek })
        ),
        "{} byte {at:#x}: {:?}",
        sample.dir,
        parts.verify()
    );
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn every_sample_verifies_from_its_files() {
    for sample in &SAMPLES {
        let verified = verify(&read(sample, "report.bin"), &Root::Amd(chain_of(sample)))
            .unwrap_or_else(|e| panic!("{}: {e}", sample.dir));
        let (boot_loader, tee, snp, microcode) = sample.tcb;
        assert_eq!(verified.signing_key(), SigningKey::Vcek, "{}", sample.dir);
        assert_eq!(verified.product(), Some(sample.product), "{}", sample.dir);
        assert_eq!(verified.version(), sample.version, "{}", sample.dir);
        assert_eq!(verified.policy(), sample.policy, "{}", sample.dir);
        assert_eq!(
            verified.reported_tcb(),
            Tcb {
                fmc: None,
                boot_loader,
                tee,
                snp,
                microcode,
                raw: u64::from_le_bytes([boot_loader, tee, 0, 0, 0, 0, snp, microcode]),
            },
            "{}",
            sample.dir
        );
        assert_eq!(verified.chip_id()[..4], sample.chip_id_start, "{}", sample.dir);
        assert_eq!(verified.measurement()[..4], sample.measurement_start, "{}", sample.dir);
        // The accessors read the report's own bytes.
        let report = read(sample, "report.bin");
        assert_eq!(verified.report_data()[..], report[0x50..0x90]);
        assert_eq!(verified.host_data()[..], report[0xC0..0xE0]);
    }
}

#[test]
fn a_flipped_byte_in_the_signed_body_is_refused() {
    for sample in &SAMPLES {
        // MEASUREMENT, REPORT_DATA, POLICY, GUEST_SVN: all under the signature.
        for at in [0x90, 0x50, 0x08, 0x04] {
            assert_report_signature_fails(sample, at);
        }
    }
}

#[test]
fn a_flipped_byte_in_the_report_signature_is_refused() {
    for sample in &SAMPLES {
        // A byte of r, a byte of s.
        for at in [0x2A0 + 10, 0x2E8 + 20] {
            assert_report_signature_fails(sample, at);
        }
        // Above the 48-byte scalar: not what ECDSA checks, refused anyway.
        let mut parts = Parts::of(sample);
        flip(&mut parts.report, 0x2A0 + 60);
        assert!(matches!(
            parts.verify(),
            Err(AttestationError::SignatureEncoding { component: "R" })
        ));
        // The unsigned reserved tail.
        let mut parts = Parts::of(sample);
        flip(&mut parts.report, 0x49F);
        assert!(matches!(parts.verify(), Err(AttestationError::ReportFormat(_))));
    }
}

/// Asserts that `edit` on the certificates fails at the link from
/// `signer` to `subject`.
fn assert_link_fails(sample: &Sample, edit: impl Fn(&mut Parts), subject: ChainCert, signer: ChainCert) {
    let mut parts = Parts::of(sample);
    edit(&mut parts);
    match parts.verify() {
        Err(AttestationError::CertificateSignature {
            subject: s, signer: g, ..
        }) if s == subject && g == signer => {}
        other => panic!(
            "{}: expected {subject} signed by {signer} to fail, got {other:?}",
            sample.dir
        ),
    }
}

/// Asserts, for every sample, that a flipped byte in the signature of
/// `subject` (the last bytes of its DER) fails the link from `signer`.
fn assert_signature_flip_fails(subject: ChainCert, signer: ChainCert) {
    for sample in &SAMPLES {
        assert_link_fails(sample, |p| flip_in_signature(p.cert_mut(subject)), subject, signer);
    }
}

#[test]
fn a_flipped_byte_in_the_vcek_is_refused() {
    // In its signature ...
    assert_signature_flip_fails(ChainCert::Vek, ChainCert::Ask);
    for sample in &SAMPLES {
        // ... and in its public key, the key that signs reports.
        assert_link_fails(
            sample,
            |p| {
                let key = Certificate::from_der(&p.vek).unwrap().public_key_sec1().to_vec();
                let at = find(&p.vek, &key) + 30;
                flip(&mut p.vek, at)
            },
            ChainCert::Vek,
            ChainCert::Ask,
        );
    }
}

#[test]
fn a_flipped_byte_in_the_ask_is_refused() {
    assert_signature_flip_fails(ChainCert::Ask, ChainCert::Ark);
}

#[test]
fn a_flipped_byte_in_the_ark_is_refused() {
    assert_signature_flip_fails(ChainCert::Ark, ChainCert::Ark);
}

#[test]
fn another_products_ark_does_not_sign_the_ask() {
    let [milan, genoa] = &SAMPLES;
    let genoa_ark = der(genoa, "ark.pem");
    assert_link_fails(milan, |p| p.ark = genoa_ark.clone(), ChainCert::Ask, ChainCert::Ark);
}

#[test]
fn a_self_signed_root_that_is_not_amds_is_refused() {
    let untrusted =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/untrusted-ark.pem")).unwrap();
    let mut parts = Parts::of(&SAMPLES[0]);
    parts.ark = untrusted;
    assert!(
        matches!(parts.verify(), Err(AttestationError::UntrustedArk)),
        "{:?}",
        parts.verify()
    );
}

#[test]
fn another_chips_vcek_is_refused() {
    let [milan, genoa] = &SAMPLES;
    let mut parts = Parts::of(milan);
    parts.vek = der(genoa, genoa.vek_file);
    // Genoa's VCEK is not signed by Milan's ASK.
    assert!(matches!(
        parts.verify(),
        Err(AttestationError::CertificateSignature {
            subject: ChainCert::Vek,
            signer: ChainCert::Ask,
            ..
        })
    ));
}

#[test]
fn the_report_must_name_the_key_the_chain_ends_in() {
    for sample in &SAMPLES {
        let mut parts = Parts::of(sample);
        parts.report[0x48] |= 1 << 2; // KEY_INFO.SIGNING_KEY = 1 (VLEK)
        assert!(matches!(
            parts.verify(),
            Err(AttestationError::SigningKeyMismatch {
                report: SigningKey::Vlek,
                certificate: SigningKey::Vcek
            })
        ));
        parts.report[0x48] |= 7 << 2; // 7: no key (unsigned report)
        assert!(matches!(parts.verify(), Err(AttestationError::UnknownSigningKey(7))));
    }
}

#[test]
fn malformed_inputs_name_what_is_wrong() {
    let sample = &SAMPLES[0];
    let mut parts = Parts::of(sample);
    parts.report.pop();
    assert!(matches!(
        parts.verify(),
        Err(AttestationError::ReportLength {
            expected: 1184,
            got: 1183
        })
    ));

    let mut parts = Parts::of(sample);
    parts.ask.truncate(100);
    assert!(matches!(
        parts.verify(),
        Err(AttestationError::CertificateFormat {
            cert: ChainCert::Ask,
            ..
        })
    ));

    let missing = SnpChain::load(
        path(sample, "ark.pem"),
        path(sample, "nope.pem"),
        path(sample, "vcek.der"),
    );
    assert!(matches!(
        missing,
        Err(AttestationError::Read {
            cert: ChainCert::Ask,
            ..
        })
    ));

    let mut parts = Parts::of(sample);
    parts.report[0x34] = 2; // SIGNATURE_ALGO
    assert!(matches!(parts.verify(), Err(AttestationError::SignatureAlgorithm(2))));
}

#[test]
fn errors_read_as_sentences() {
    let mut parts = Parts::of(&SAMPLES[1]);
    flip_in_signature(&mut parts.ask);
    let message = parts.verify().unwrap_err().to_string();
    assert!(
        message.starts_with("ASK/ASVK certificate: its signature by the ARK does not verify"),
        "{message}"
    );
    let mut parts = Parts::of(&SAMPLES[1]);
    flip(&mut parts.report, 0x90);
    assert_eq!(
        parts.verify().unwrap_err().to_string(),
        "attestation report: SIGNATURE is not the VCEK's ECDSA P-384 signature over bytes 0..0x2A0"
    );
}

/// The migration protocol's policy check on real SNP evidence: with the
/// verifier holding both samples' chains, each sample's evidence passes
/// the verifier (check_peer then stops at the first policy question,
/// its report data, which binds another transcript than ours); a flipped
/// byte, or a verifier without that chip's chain, stops it there.
#[test]
fn real_snp_evidence_passes_the_protocols_verifier_stage() {
    use covm_agent_protocol::{check_peer, Error, Evidence, EvidenceVerifier, Platform, Policy};
    let verifier = covm_reference_verifier::SnpVerifier::new(SAMPLES.iter().map(chain_of).collect());
    let mut policy = Policy::new(1);
    policy.allow_platform(Platform::SevSnp);
    for sample in &SAMPLES {
        let report = read(sample, "report.bin");
        let evidence = Evidence::from_raw(Platform::SevSnp, &report).unwrap();
        verifier
            .verify(&evidence, &policy)
            .unwrap_or_else(|e| panic!("{}: {e}", sample.dir));
        let e = check_peer(&policy, &verifier, &evidence, &[], &[0x55; 64]).unwrap_err();
        assert_eq!(e, Error::ReportDataMismatch, "{}", sample.dir);

        let mut flipped = report.clone();
        flipped[0x90] ^= 1; // measurement
        let bad = Evidence::from_raw(Platform::SevSnp, &flipped).unwrap();
        assert_eq!(
            verifier.verify(&bad, &policy),
            Err(Error::BadSignature),
            "{}",
            sample.dir
        );

        let others: Vec<SnpChain> = SAMPLES.iter().filter(|s| s.dir != sample.dir).map(chain_of).collect();
        let without = covm_reference_verifier::SnpVerifier::new(others);
        assert_eq!(
            without.verify(&evidence, &policy),
            Err(Error::BadSignature),
            "{}",
            sample.dir
        );
        let emulated = Evidence::from_raw(Platform::EmulatedCvm, &report).unwrap();
        assert_eq!(
            verifier.verify(&emulated, &policy),
            Err(Error::UnsupportedPlatform(Platform::EmulatedCvm))
        );
    }
}
