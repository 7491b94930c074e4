//! Handshake failures: tampering relays, downgrade, relayed evidence,
//! misuse of the state machines.

use super::support::*;
use crate::handshake::messages::{kind, MAX_HANDSHAKE_MSG_LEN};
use crate::keys::Ephemeral;
use crate::{DestinationHandshake, EmulatedRootVerifier, Error, SourceHandshake};

fn fails_with(setup: &Setup<'_>, relay: &mut dyn FnMut(u8, &mut Vec<u8>)) -> Error {
    match handshake_with(setup, relay) {
        Ok(_) => panic!("handshake succeeded"),
        Err(e) => e,
    }
}

#[test]
fn any_altered_message_fails_the_handshake() {
    // One flipped bit in each message, at a few places each.
    for k in 1..=6u8 {
        for at in [1usize, 5, 40, 70, 300, 1199] {
            let mut relay = |kind: u8, m: &mut Vec<u8>| {
                if kind == k && at < m.len() {
                    m[at] ^= 0x20;
                }
            };
            let mut touched = false;
            let mut probe = |kind: u8, m: &mut Vec<u8>| touched |= kind == k && at < m.len();
            let _ = handshake_with(&Setup::new(80), &mut probe);
            if touched {
                assert!(
                    handshake_with(&Setup::new(80), &mut relay).is_err(),
                    "flipping byte {at} of message {k} went unnoticed"
                );
            }
        }
    }
}

#[test]
fn downgrade_by_rewriting_offers_is_caught() {
    // The relay rewrites the source's version offer (as a downgrade would
    // strip a newer one). The destination still finds version 1, but its
    // evidence binds a SrcHello the source never sent.
    let mut rewrite = |k: u8, m: &mut Vec<u8>| {
        if k == kind::SRC_HELLO {
            m[1] = 2;
            m.splice(70..70, 7u16.to_le_bytes());
        }
    };
    assert_eq!(fails_with(&Setup::new(81), &mut rewrite), Error::ReportDataMismatch);
}

#[test]
fn destination_choosing_what_was_not_offered() {
    // DstHello's chosen version is at byte 2, its suite at byte 4.
    for (seed, at, what, value) in [(82, 2, "version", 2u8), (83, 4, "suite", 9)] {
        let mut relay = |k: u8, m: &mut Vec<u8>| {
            if k == kind::DST_HELLO {
                m[at] = value;
            }
        };
        assert_eq!(
            fails_with(&Setup::new(seed), &mut relay),
            Error::NotOffered {
                what,
                value: u16::from(value)
            }
        );
    }
}

#[test]
fn evidence_relayed_from_another_session() {
    // Record session A's DstEvidence, then play it in session B.
    let mut captured = Vec::new();
    let mut record = |k: u8, m: &mut Vec<u8>| {
        if k == kind::DST_EVIDENCE {
            captured = m.clone();
        }
    };
    handshake_with(&Setup::new(84), &mut record).unwrap();
    let mut replay = |k: u8, m: &mut Vec<u8>| {
        if k == kind::DST_EVIDENCE {
            *m = captured.clone();
        }
    };
    assert_eq!(fails_with(&Setup::new(85), &mut replay), Error::ReportDataMismatch);
}

#[test]
fn mutual_policy_checks() {
    // The destination refuses a source whose TCB is too low...
    let low = |r: &mut crate::AttestationReport| r.reported_tcb = crate::TcbVersion::new(0, 0, 0, 0);
    let mut setup = Setup::new(86);
    setup.src_edit = &low;
    assert!(matches!(fails_with(&setup, &mut pass), Error::TcbTooLow { .. }));
    // ...and the source a destination with an older policy.
    let mut setup = Setup::new(87);
    setup.src_policy = policy(2);
    setup.dst_policy = policy(1);
    assert_eq!(
        fails_with(&setup, &mut pass),
        Error::PeerPolicyOlder { peer: 1, own: 2 }
    );
    // Both sides apply the rule, so the destination with the newer
    // policy refuses the older source too: in version 1 both agents run
    // the same policy version (no policy upgrade through migration).
    let mut setup = Setup::new(88);
    setup.src_policy = policy(1);
    setup.dst_policy = policy(2);
    assert_eq!(
        fails_with(&setup, &mut pass),
        Error::PeerPolicyOlder { peer: 1, own: 2 }
    );
}

#[test]
fn wrong_finished_is_key_confirmation_failure() {
    for k in [kind::SRC_FINISHED, kind::DST_FINISHED] {
        let mut relay = |kind: u8, m: &mut Vec<u8>| {
            if kind == k {
                m[10] ^= 1;
            }
        };
        assert_eq!(fails_with(&Setup::new(89), &mut relay), Error::KeyConfirmation);
    }
}

#[test]
fn low_order_key_share_is_refused() {
    let mut rng = TestRng::new(90);
    let e = Ephemeral::generate(&mut rng);
    assert_eq!(e.agree(&[0u8; 32]).err(), Some(Error::WeakSharedSecret));
    let mut one = [0u8; 32];
    one[0] = 1;
    assert_eq!(e.agree(&one).err(), Some(Error::WeakSharedSecret));
}

#[test]
fn reflected_hello_is_refused() {
    // The relay sends the source's own nonce and key back as DstHello's.
    let mut src_hello = Vec::new();
    let mut relay = |k: u8, m: &mut Vec<u8>| {
        if k == kind::SRC_HELLO {
            src_hello = m.clone();
        }
        if k == kind::DST_HELLO {
            m[8..72].copy_from_slice(&src_hello[4..68]);
        }
    };
    assert!(matches!(fails_with(&Setup::new(91), &mut relay), Error::Invalid { .. }));
}

#[test]
fn own_evidence_must_bind_the_transcript() {
    let p = policy(1);
    let mut rng = TestRng::new(92);
    let mut src = SourceHandshake::new(&p, &mut rng);
    let mut dst = DestinationHandshake::new(&p, &mut rng);
    let mut buf = [0u8; MAX_HANDSHAKE_MSG_LEN];
    let n = src.write_hello(&mut buf).unwrap();
    dst.read_src_hello(&buf[..n]).unwrap();
    dst.write_hello(&mut buf).unwrap();
    let stale = evidence(&p, [0; 64], &as_is);
    assert_eq!(dst.write_evidence(&stale, &mut buf), Err(Error::OwnEvidenceNotBound));
    assert_eq!(dst.write_evidence(&stale, &mut buf), Err(Error::Poisoned));
}

#[test]
fn steps_out_of_order_poison_the_handshake() {
    let p = policy(1);
    let mut rng = TestRng::new(93);
    let mut src = SourceHandshake::new(&p, &mut rng);
    let mut buf = [0u8; MAX_HANDSHAKE_MSG_LEN];
    assert!(matches!(src.write_finished(&mut buf), Err(Error::State { .. })));
    assert_eq!(src.write_hello(&mut buf), Err(Error::Poisoned));
    assert!(matches!(src.report_data(), Err(Error::State { .. })));

    let mut dst = DestinationHandshake::new(&p, &mut rng);
    let v = EmulatedRootVerifier;
    assert!(matches!(dst.read_src_evidence(&buf, &v), Err(Error::State { .. })));
    assert_eq!(dst.read_src_hello(&buf), Err(Error::Poisoned));

    // A message of the wrong type.
    let mut src = SourceHandshake::new(&p, &mut rng);
    let mut dst = DestinationHandshake::new(&p, &mut rng);
    let n = src.write_hello(&mut buf).unwrap();
    let hello = buf[..n].to_vec();
    dst.read_src_hello(&hello).unwrap();
    assert_eq!(
        src.read_dst_hello(&hello),
        Err(Error::UnexpectedMessage {
            expected: kind::DST_HELLO,
            got: kind::SRC_HELLO
        })
    );
    // Too small an output buffer.
    let mut tiny = [0u8; 10];
    assert!(matches!(dst.write_hello(&mut tiny), Err(Error::BufferTooSmall { .. })));
}
