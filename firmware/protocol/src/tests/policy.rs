//! The policy encoding and every reason to refuse a peer.

use super::support::*;
use crate::evidence::{AttestationReport, EVIDENCE_LEN};
use crate::policy::{MAX_MEASUREMENTS, MAX_ROOTS};
use crate::transcript::{report_data, DST_EVIDENCE_LABEL};
use crate::{check_peer, EmulatedRoot, EmulatedRootVerifier, Error, Evidence, Platform, Policy, Result, TcbVersion};

const RD: [u8; 64] = [0x77; 64];

/// Checks a peer running `peer` whose report was edited by `edit`,
/// against our `own` policy.
fn check(own: &Policy, peer: &Policy, edit: &dyn Fn(&mut AttestationReport)) -> Result<crate::PeerIdentity> {
    check_evidence(own, peer, &evidence(peer, RD, edit))
}

/// Checks `ev`, presented by a peer running `peer`, against our `own`
/// policy; the report_data it must carry is [`RD`].
fn check_evidence(own: &Policy, peer: &Policy, ev: &Evidence) -> Result<crate::PeerIdentity> {
    check_peer(own, &EmulatedRootVerifier, ev, peer.to_encoded().as_bytes(), &RD)
}

#[test]
fn a_good_peer_passes_and_is_described() {
    let id = check(&policy(1), &policy(1), &as_is).unwrap();
    assert_eq!(id.platform, Platform::EmulatedCvm);
    assert_eq!(id.measurement, MEASUREMENT);
    assert_eq!(id.policy_version, 1);
    let shown = id.to_string();
    assert!(shown.starts_with("emulated_cvm, measurement 4d4d"), "{shown}");
    assert!(
        shown.ends_with("TCB boot_loader 2 tee 0 snp 9 microcode 120, guest SVN 2, policy version 1"),
        "{shown}"
    );
    // A newer peer policy is fine.
    assert_eq!(check(&policy(1), &policy(5), &as_is).unwrap().policy_version, 5);
}

#[test]
fn refused_measurement() {
    assert_eq!(
        check(&policy(1), &policy(1), &|r| r.measurement[0] ^= 1),
        Err(Error::MeasurementNotAllowed)
    );
    // An empty list allows nothing.
    let mut own = Policy::new(1);
    own.allow_platform(Platform::EmulatedCvm)
        .trust_root(&root().public_key())
        .unwrap();
    assert_eq!(check(&own, &own, &as_is), Err(Error::MeasurementNotAllowed));
}

#[test]
fn refused_platform() {
    let mut own = policy(1);
    let mut snp_only = Policy::new(1);
    snp_only
        .allow_platform(Platform::SevSnp)
        .allow_measurement(&MEASUREMENT)
        .unwrap()
        .trust_root(&root().public_key())
        .unwrap();
    assert_eq!(
        check(&snp_only, &policy(1), &as_is),
        Err(Error::PlatformNotAllowed(Platform::EmulatedCvm))
    );
    // Emulated evidence that claims to be SEV-SNP: the emulated verifier
    // refuses to vouch for it, whatever the policy allows.
    let mut r = report(&policy(1), RD);
    root().sign(&mut r);
    let ev = Evidence::new(Platform::SevSnp, &r);
    own.allow_platform(Platform::SevSnp);
    assert_eq!(
        check_evidence(&own, &policy(1), &ev),
        Err(Error::UnsupportedPlatform(Platform::SevSnp))
    );
}

#[test]
fn tcb_too_low() {
    // The policy wants at least 1/0/8/100; one component below is enough.
    for (reported, component, have, min) in [
        (TcbVersion::new(2, 0, 7, 200), "snp", 7, 8),
        (TcbVersion::new(2, 0, 9, 99), "microcode", 99, 100),
    ] {
        assert_eq!(
            check(&policy(1), &policy(1), &|r| r.reported_tcb = reported),
            Err(Error::TcbTooLow { component, have, min }),
            "reported TCB {reported:?}"
        );
    }
    assert_eq!(
        check(&policy(1), &policy(1), &|r| r.guest_svn = 0),
        Err(Error::GuestSvnTooLow { have: 0, min: 1 })
    );
}

/// A Turin report stores FMC, boot loader, TEE, SNP, 3 reserved,
/// microcode: the policy's minimum is compared component by component
/// after moving them, and only from report version 3 (which names the CPU).
#[test]
fn a_turin_reports_tcb_is_read_with_the_turin_layout() {
    let turin = |version: u32, raw: [u8; 8]| {
        move |r: &mut AttestationReport| {
            r.version = version;
            r.cpuid_fam_id = crate::evidence::report::CPUID_FAMILY_TURIN;
            r.cpuid_mod_id = 0x02;
            r.reported_tcb = TcbVersion(u64::from_le_bytes(raw));
        }
    };
    // Policy minimum 1/0/8/100 (boot loader, TEE, SNP, microcode).
    let id = check(&policy(1), &policy(1), &turin(3, [7, 2, 0, 9, 0, 0, 0, 120])).unwrap();
    assert_eq!(id.reported_tcb, TcbVersion::new(2, 0, 9, 120));
    assert_eq!(
        check(&policy(1), &policy(1), &turin(3, [7, 2, 0, 7, 0, 0, 0, 120])),
        Err(Error::TcbTooLow {
            component: "snp",
            have: 7,
            min: 8
        })
    );
    // Read with the Milan layout, these bytes would say SNP 0.
    assert_eq!(
        check(&policy(1), &policy(1), &turin(2, [7, 2, 0, 9, 0, 0, 0, 120])),
        Err(Error::TcbTooLow {
            component: "snp",
            have: 0,
            min: 8
        })
    );
}

#[test]
fn older_peer_policy_version() {
    assert_eq!(
        check(&policy(3), &policy(2), &as_is),
        Err(Error::PeerPolicyOlder { peer: 2, own: 3 })
    );
}

#[test]
fn same_version_other_content() {
    // A host launches the peer with its own policy of our version, e.g.
    // trusting its own root for the next hop.
    let mut theirs = policy(1);
    theirs
        .trust_root(&EmulatedRoot::from_secret(&[0x33; 48]).unwrap().public_key())
        .unwrap();
    assert_eq!(
        check(&policy(1), &theirs, &as_is),
        Err(Error::PolicyMismatch { version: 1 })
    );
}

#[test]
fn host_data_mismatch() {
    // The report vouches for policy v1, the peer presents v2.
    let ev = evidence(&policy(1), RD, &as_is);
    assert_eq!(
        check_evidence(&policy(1), &policy(2), &ev),
        Err(Error::HostDataMismatch)
    );
}

#[test]
fn bad_signature() {
    // Signed by a root the policy does not trust.
    let other = EmulatedRoot::from_secret(&[0x22; 48]).unwrap();
    let mut r = report(&policy(1), RD);
    other.sign(&mut r);
    let ev = Evidence::new(Platform::EmulatedCvm, &r);
    assert_eq!(check_evidence(&policy(1), &policy(1), &ev), Err(Error::BadSignature));
    // With that root trusted too (by both sides' policy) it passes.
    let mut both = policy(1);
    both.trust_root(&other.public_key()).unwrap();
    let mut r = report(&both, RD);
    other.sign(&mut r);
    let ev = Evidence::new(Platform::EmulatedCvm, &r);
    assert!(check_evidence(&both, &both, &ev).is_ok());
    // No root at all.
    let mut none = Policy::new(1);
    none.allow_platform(Platform::EmulatedCvm)
        .allow_measurement(&MEASUREMENT)
        .unwrap();
    assert_eq!(check_evidence(&none, &policy(1), &ev), Err(Error::NoTrustedRoot));
    // Unsigned, and another signature algorithm.
    let unsigned = Evidence::new(Platform::EmulatedCvm, &report(&policy(1), RD));
    assert_eq!(
        check_evidence(&policy(1), &policy(1), &unsigned),
        Err(Error::SignatureAlgorithm(0))
    );
}

#[test]
fn report_data_bound_to_another_transcript() {
    let other = report_data(DST_EVIDENCE_LABEL, &[9; 32]);
    let ev = evidence(&policy(1), other, &as_is);
    assert_eq!(
        check_evidence(&policy(1), &policy(1), &ev),
        Err(Error::ReportDataMismatch)
    );
}

#[test]
fn debug_allowed_guest_is_refused() {
    assert_eq!(
        check(&policy(1), &policy(1), &|r| r.policy |= 1 << 19),
        Err(Error::DebugAllowed)
    );
}

#[test]
fn flipped_byte_anywhere_in_the_evidence() {
    let own = policy(1);
    let peer = policy(1).to_encoded();
    let ev = evidence(&policy(1), RD, &as_is);
    let mut bytes = [0u8; EVIDENCE_LEN];
    ev.encode(&mut bytes).unwrap();
    assert!(check_peer(&own, &EmulatedRootVerifier, &ev, peer.as_bytes(), &RD).is_ok());
    for at in 0..EVIDENCE_LEN {
        let mut b = bytes;
        b[at] ^= 0x10;
        let verdict =
            Evidence::decode(&b).and_then(|ev| check_peer(&own, &EmulatedRootVerifier, &ev, peer.as_bytes(), &RD));
        assert!(verdict.is_err(), "flipping byte {at} went unnoticed");
    }
}

#[test]
fn encoding_round_trips_and_is_canonical() {
    let mut p = policy(7);
    p.allow_platform(Platform::SevSnp)
        .allow_measurement(&[0x01; 48])
        .unwrap()
        .allow_measurement(&[0xFF; 48])
        .unwrap()
        .allow_measurement(&[0x01; 48])
        .unwrap();
    assert_eq!(
        p.measurements(),
        &[[0x01; 48], MEASUREMENT, [0xFF; 48]],
        "sorted, no duplicates"
    );
    let enc = p.to_encoded();
    assert_eq!(enc.as_bytes().len(), p.encoded_len());
    let back = Policy::decode(enc.as_bytes()).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.host_data(), p.host_data());
    assert_ne!(policy(1).host_data(), policy(2).host_data());
    assert_eq!(&enc.as_bytes()[..8], b"CVMP\x01\x00\x00\x00");
    assert_eq!(&enc.as_bytes()[8..12], &7u32.to_le_bytes());
    assert_eq!(&enc.as_bytes()[12..16], &0b110u32.to_le_bytes());
    assert_eq!(&enc.as_bytes()[16..24], &[1, 0, 0, 0, 0, 0, 8, 100]);
}

#[test]
fn decoding_errors_are_clear() {
    let good = policy(1).to_encoded();
    let g = good.as_bytes();
    let with = |at: usize, v: u8| {
        let mut b = g.to_vec();
        b[at] = v;
        Policy::decode(&b)
    };
    assert_eq!(with(0, b'X'), Err(Error::PolicyMagic));
    assert_eq!(with(4, 2), Err(Error::PolicyFormat(2)));
    assert!(matches!(with(6, 1), Err(Error::Reserved { .. })));
    assert!(
        matches!(with(12, 0xFF), Err(Error::Invalid { .. })),
        "unknown platform bits"
    );
    assert!(matches!(with(18, 1), Err(Error::Reserved { .. })), "TCB reserved byte");
    assert!(matches!(with(28, 17), Err(Error::PolicyTooMany { .. })));
    assert!(matches!(with(29, 5), Err(Error::PolicyTooMany { .. })));
    assert!(
        matches!(with(29, 2), Err(Error::Length { .. })),
        "list longer than the bytes"
    );
    assert!(
        matches!(with(32 + 48, 0x04), Err(Error::BadRootKey)),
        "uncompressed prefix"
    );
    let mut trailing = g.to_vec();
    trailing.push(0);
    assert!(matches!(Policy::decode(&trailing), Err(Error::Length { .. })));
    assert!(matches!(Policy::decode(&g[..20]), Err(Error::Length { .. })));

    // Unsorted measurements.
    let mut two = policy(1);
    two.allow_measurement(&[0xFF; 48]).unwrap();
    let mut b = two.to_encoded().as_bytes().to_vec();
    let (first, second) = b[32..32 + 96].split_at_mut(48);
    first.swap_with_slice(second);
    assert_eq!(
        Policy::decode(&b),
        Err(Error::PolicyNotCanonical { what: "measurements" })
    );

    // Bounds when building.
    let mut full = Policy::new(1);
    for i in 0..MAX_MEASUREMENTS {
        full.allow_measurement(&[i as u8; 48]).unwrap();
    }
    assert!(matches!(
        full.allow_measurement(&[0xEE; 48]),
        Err(Error::PolicyTooMany { .. })
    ));
    let mut keys = Policy::new(1);
    for i in 0..MAX_ROOTS {
        keys.trust_root(&EmulatedRoot::from_secret(&[i as u8 + 1; 48]).unwrap().public_key())
            .unwrap();
    }
    assert!(matches!(
        keys.trust_root(&root().public_key()),
        Err(Error::PolicyTooMany { .. })
    ));
    assert_eq!(keys.trust_root(&[0x02; 49]).err(), Some(Error::BadRootKey));
    assert_eq!(Policy::decode(full.to_encoded().as_bytes()).unwrap(), full);
}

#[test]
fn errors_read_well() {
    let msgs = [
        Error::PeerPolicyOlder { peer: 2, own: 3 }.to_string(),
        Error::TcbTooLow {
            component: "snp",
            have: 7,
            min: 8,
        }
        .to_string(),
        Error::PlatformNotAllowed(Platform::Tdx).to_string(),
    ];
    assert_eq!(msgs[0], "the peer's policy version 2 is older than ours (3)");
    assert_eq!(msgs[1], "the peer's reported TCB snp is 7, the policy wants at least 8");
    assert_eq!(msgs[2], "the policy does not allow platform tdx");
}
