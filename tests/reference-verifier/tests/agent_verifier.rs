//! The in-guest agent's SEV-SNP verifier (`covm-snp-verify`, no_std)
//! against this crate's, which stands on the `sev` crate: on the real
//! samples both accept and read the same product, key and TCB, and on
//! every one-byte corruption of a report or a certificate they give the
//! same answer.

mod common;

use common::{Parts, SAMPLES};
use covm_agent_protocol::evidence::REPORT_LEN;
use covm_agent_protocol::{check_peer, Error, Evidence, EvidenceVerifier, Platform, Policy};
use covm_snp_verify::{verify_snp as agent_verify, CertKind, CertTable, Product, SigningKey, SnpChainVerifier};
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;
use sev::Generation;

/// The sample's certificates as a host hands them to the guest, in the
/// `sev` crate's encoding of the table.
fn sev_table(parts: &Parts) -> Vec<u8> {
    CertTableEntry::cert_table_to_vec_bytes(&[
        CertTableEntry::new(CertType::VCEK, parts.vek.clone()),
        CertTableEntry::new(CertType::ASK, parts.ask.clone()),
        CertTableEntry::new(CertType::ARK, parts.ark.clone()),
    ])
    .unwrap()
}

fn report(parts: &Parts) -> [u8; REPORT_LEN] {
    parts.report.as_slice().try_into().unwrap()
}

fn agent(parts: &Parts) -> Result<covm_snp_verify::Endorsed, Error> {
    agent_verify(&report(parts), &sev_table(parts))
}

#[test]
fn both_accept_every_sample_and_read_the_same_product_key_and_tcb() {
    for sample in &SAMPLES {
        let parts = Parts::of(sample);
        let reference = parts.verify().unwrap_or_else(|e| panic!("{}: {e}", sample.dir));
        let ours = agent(&parts).unwrap_or_else(|e| panic!("{}: {e}", sample.dir));
        assert_eq!(Some(ours.product), reference.product(), "{}", sample.dir);
        assert_eq!(ours.signing_key, SigningKey::Vcek);
        assert_eq!(reference.signing_key(), covm_reference_verifier::SigningKey::Vcek);
        let tcb = reference.reported_tcb();
        assert_eq!(
            (
                ours.reported_tcb.fmc,
                ours.reported_tcb.boot_loader,
                ours.reported_tcb.tee
            ),
            (tcb.fmc, tcb.boot_loader, tcb.tee),
            "{}",
            sample.dir
        );
        assert_eq!(
            (ours.reported_tcb.snp, ours.reported_tcb.microcode),
            (tcb.snp, tcb.microcode)
        );
    }
}

#[test]
fn the_table_is_encoded_as_the_sev_crate_encodes_it() {
    let parts = Parts::of(&SAMPLES[0]);
    let mut ours = vec![0u8; 8192];
    let n = CertTable::encode(
        &[
            (CertKind::Vcek, &parts.vek),
            (CertKind::Ask, &parts.ask),
            (CertKind::Ark, &parts.ark),
        ],
        &mut ours,
    )
    .unwrap();
    assert_eq!(ours[..n], sev_table(&parts)[..]);
}

/// Flips bit 0 of every byte of each certificate and of every 8th byte of
/// the report, one at a time, and asks both verifiers. They must agree
/// every time; every report byte is covered by the signature or is the
/// signature, so each report corruption must be refused. (Each report
/// corruption costs two P-384 verifications, which take milliseconds in a
/// debug build: every byte would take over a minute. `fixtures.rs` flips
/// each report field on its own.)
fn the_verifiers_agree_on_every_one_byte_corruption_of(sample: &common::Sample) {
    {
        let clean = Parts::of(sample);
        for part in ["report", "vek", "ask", "ark"] {
            let len = match part {
                "report" => clean.report.len(),
                "vek" => clean.vek.len(),
                "ask" => clean.ask.len(),
                _ => clean.ark.len(),
            };
            let (mut refused, mut tried) = (0, 0);
            for at in (0..len).step_by(if part == "report" { 8 } else { 1 }) {
                tried += 1;
                let mut parts = clean.clone();
                let bytes = match part {
                    "report" => &mut parts.report,
                    "vek" => &mut parts.vek,
                    "ask" => &mut parts.ask,
                    _ => &mut parts.ark,
                };
                bytes[at] ^= 1;
                let reference = parts.verify();
                let ours = agent(&parts);
                assert_eq!(
                    reference.is_ok(),
                    ours.is_ok(),
                    "{} {part} byte {at}: reference {:?}, agent {:?}",
                    sample.dir,
                    reference.err().map(|e| e.to_string()),
                    ours.err().map(|e| e.to_string())
                );
                refused += usize::from(ours.is_err());
            }
            if part == "report" {
                assert_eq!(refused, tried, "{}: a report corruption went through", sample.dir);
            }
            // Bytes outside what is signed (a certificate's outer
            // signature algorithm parameters) may pass both; the rest not.
            assert!(
                refused * 10 >= tried * 9,
                "{} {part}: only {refused} of {tried} refused",
                sample.dir
            );
            eprintln!(
                "{} {part}: {refused} of {tried} one-byte corruptions refused by both",
                sample.dir
            );
        }
    }
}

// One test a sample, so that the harness runs them side by side.
#[test]
fn the_verifiers_agree_on_every_one_byte_corruption_of_the_milan_sample() {
    the_verifiers_agree_on_every_one_byte_corruption_of(&SAMPLES[0]);
}

#[test]
fn the_verifiers_agree_on_every_one_byte_corruption_of_the_genoa_sample() {
    the_verifiers_agree_on_every_one_byte_corruption_of(&SAMPLES[1]);
}

#[test]
fn the_agents_pinned_arks_are_the_sev_crates() {
    use sev::certs::snp::builtin;
    for (product, ark) in [
        (Product::Milan, builtin::milan::ark()),
        (Product::Genoa, builtin::genoa::ark()),
        (Product::Turin, builtin::turin::ark()),
    ] {
        assert_eq!(product.ark(), ark.unwrap().to_der().unwrap(), "{product:?}");
    }
}

#[test]
fn product_from_cpuid_agrees_with_the_sev_crate_everywhere() {
    for family in 0..=255u8 {
        for model in 0..=255u8 {
            let sev = match Generation::identify_cpu(family, model) {
                Ok(Generation::Milan) => Some(Product::Milan),
                Ok(Generation::Genoa) => Some(Product::Genoa),
                Ok(Generation::Turin) => Some(Product::Turin),
                _ => None,
            };
            assert_eq!(
                Product::from_cpuid(family, model),
                sev,
                "family {family:#x} model {model:#x}"
            );
        }
    }
}

#[test]
fn tcb_layouts_agree_with_the_sev_crate() {
    let generation = |p| match p {
        Product::Milan => Generation::Milan,
        Product::Genoa => Generation::Genoa,
        Product::Turin => Generation::Turin,
    };
    // Every byte position holding a distinct value, and a walking bit.
    let mut raws = vec![u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]), u64::MAX, 0];
    raws.extend((0..64).map(|bit| 1u64 << bit));
    for product in Product::ALL {
        for &raw in &raws {
            let sev =
                sev::firmware::host::TcbVersion::from_bytes_with(&raw.to_le_bytes(), generation(product)).unwrap();
            let ours = covm_snp_verify::SnpTcb::decode(raw, product);
            assert_eq!(
                (ours.fmc, ours.boot_loader, ours.tee, ours.snp, ours.microcode),
                (sev.fmc, sev.bootloader, sev.tee, sev.snp, sev.microcode),
                "{product:?} {raw:#x}"
            );
        }
    }
}

/// The evidence the agent receives: the report with its table. The
/// agent's verifier passes it, and check_peer stops at the first policy
/// question (the report binds another transcript than ours); the host's
/// verifier, given no chains of its own, reads the same table.
#[test]
fn snp_evidence_with_its_table_passes_both_verifiers() {
    let mut policy = Policy::new(1);
    policy.allow_platform(Platform::SevSnp);
    let host = covm_reference_verifier::SnpVerifier::new(Vec::new());
    for sample in &SAMPLES {
        let parts = Parts::of(sample);
        let evidence = Evidence::with_certs(Platform::SevSnp, &parts.report, &sev_table(&parts)).unwrap();
        SnpChainVerifier.verify(&evidence, &policy).unwrap();
        host.verify(&evidence, &policy).unwrap();
        let refused = check_peer(&policy, &SnpChainVerifier, &evidence, &[], &[0x55; 64]).unwrap_err();
        assert_eq!(refused, Error::ReportDataMismatch, "{}", sample.dir);

        // The table travels in the evidence encoding and back.
        let mut wire = vec![0u8; evidence.encoded_len()];
        evidence.encode(&mut wire).unwrap();
        assert_eq!(Evidence::decode(&wire).unwrap(), evidence);

        let without = Evidence::from_raw(Platform::SevSnp, &parts.report).unwrap();
        let e = SnpChainVerifier.verify(&without, &policy).unwrap_err();
        assert!(e.to_string().contains("no terminating zero entry"), "{e}");
        assert_eq!(host.verify(&without, &policy), Err(Error::NoTrustedRoot));
        let emulated = Evidence::from_raw(Platform::EmulatedCvm, &parts.report).unwrap();
        assert_eq!(
            SnpChainVerifier.verify(&emulated, &policy),
            Err(Error::UnsupportedPlatform(Platform::EmulatedCvm))
        );
    }
}

/// A change to a sample.
type Edit = Box<dyn Fn(&mut Parts)>;

#[test]
fn refusals_name_what_failed() {
    let parts = Parts::of(&SAMPLES[0]);
    // Genoa's certificates in Milan's chain: the ARK is pinned but does
    // not sign Milan's ASK, and so on down.
    let cases: [(&str, Edit, &str); 5] = [
        (
            "ARK",
            Box::new(|p| p.ark = common::der(&SAMPLES[1], "ark.pem")),
            "ASK's signature by the ARK",
        ),
        (
            "ASK",
            Box::new(|p| p.ask = common::der(&SAMPLES[1], "ask.pem")),
            "ASK's signature by the ARK",
        ),
        (
            "VCEK",
            Box::new(|p| p.vek = common::der(&SAMPLES[1], "vcek.pem")),
            "signature by the ASK",
        ),
        ("CHIP_ID", Box::new(|p| p.report[0x1A0] ^= 1), "report signature"),
        (
            "truncated VCEK",
            Box::new(|p| p.vek.truncate(100)),
            "not a DER X.509 certificate",
        ),
    ];
    for (what, edit, expected) in cases {
        let mut edited = Parts::of(&SAMPLES[0]);
        edit(&mut edited);
        let e = agent(&edited).unwrap_err().to_string();
        assert!(e.contains(expected), "{what}: {e}");
    }
    let mut untrusted = Parts::of(&SAMPLES[0]);
    untrusted.ark =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/untrusted-ark.pem"))
            .map(|pem| sev::certs::snp::Certificate::from_pem(&pem).unwrap().to_der().unwrap())
            .unwrap();
    let e = agent(&untrusted).unwrap_err().to_string();
    assert!(e.contains("not one of AMD's") || e.contains("self-signature"), "{e}");
    assert!(agent(&parts).is_ok());
}
