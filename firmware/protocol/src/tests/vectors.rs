//! The key schedule against fixed vectors.
//!
//! Three checks. First, `KeySchedule::derive` against a step-by-step
//! HKDF (extract, then one expand per label of
//! docs/confidential-protocol.md). Second, the same inputs against
//! hard-coded hex, computed once outside Rust with Python's `hmac` and
//! `hashlib` following RFC 5869 (`prk = HMAC(salt = th, shared)`,
//! `T(1) = HMAC(prk, info ‖ 0x01)`, truncated), so any change to labels,
//! lengths or order shows. Third, a
//! whole handshake with fixed ephemeral secrets and nonces, recomputed
//! independently from the specification: transcript hash over the
//! captured messages, report_data, X25519, HKDF, Finished MACs.

use super::support::*;
use crate::handshake::messages::{kind, MAX_HANDSHAKE_MSG_LEN};
use crate::keys::{label, KeySchedule};
use crate::transcript::{DST_EVIDENCE_LABEL, SRC_EVIDENCE_LABEL, TRANSCRIPT_LABEL};
use crate::{DestinationHandshake, EmulatedRootVerifier, SourceHandshake};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::{PublicKey, StaticSecret};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn expand(prk_salt: &[u8; 32], ikm: &[u8; 32], info: &[u8], len: usize) -> Vec<u8> {
    let hk = Hkdf::<Sha256>::new(Some(prk_salt), ikm);
    let mut out = vec![0u8; len];
    hk.expand(info, &mut out).unwrap();
    out
}

const SHARED: [u8; 32] = [0x01; 32];
const TH: [u8; 32] = [0x02; 32];

#[test]
fn schedule_matches_step_by_step_hkdf() {
    let ks = KeySchedule::derive(&SHARED, &TH);
    // HKDF-Extract(salt = TH, ikm = shared), then one Expand per label.
    let (prk, _) = Hkdf::<Sha256>::extract(Some(&TH), &SHARED);
    let by_hand = |info: &[u8], len: usize| {
        let hk = Hkdf::<Sha256>::from_prk(&prk).unwrap();
        let mut out = vec![0u8; len];
        hk.expand(info, &mut out).unwrap();
        out
    };
    assert_eq!(ks.s2d_records.to_vec(), by_hand(label::S2D_RECORDS, 32));
    assert_eq!(ks.d2s_control.to_vec(), by_hand(label::D2S_CONTROL, 32));
    assert_eq!(ks.d2s_abort.to_vec(), by_hand(label::D2S_ABORT, 32));
    assert_eq!(ks.s2d_finished.to_vec(), by_hand(label::S2D_FINISHED, 32));
    assert_eq!(ks.d2s_finished.to_vec(), by_hand(label::D2S_FINISHED, 32));
    assert_eq!(ks.session_id.to_vec(), by_hand(label::SESSION_ID, 16));
    // Every key differs from every other.
    let all = [
        ks.s2d_records,
        ks.d2s_control,
        ks.d2s_abort,
        ks.s2d_finished,
        ks.d2s_finished,
    ];
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(all[i], all[j]);
        }
    }
}

#[test]
fn schedule_pinned_vectors() {
    let ks = KeySchedule::derive(&SHARED, &TH);
    // shared = 01×32, transcript hash = 02×32; computed with Python's
    // hmac/hashlib per RFC 5869 (see the module doc).
    assert_eq!(hex(&ks.s2d_records), PIN_S2D_RECORDS);
    assert_eq!(hex(&ks.d2s_control), PIN_D2S_CONTROL);
    assert_eq!(hex(&ks.d2s_abort), PIN_D2S_ABORT);
    assert_eq!(hex(&ks.s2d_finished), PIN_S2D_FINISHED);
    assert_eq!(hex(&ks.d2s_finished), PIN_D2S_FINISHED);
    assert_eq!(hex(&ks.session_id), PIN_SESSION_ID);
}

const PIN_S2D_RECORDS: &str = "7bc216ed713cb119a07025abfa659244066992c3e4ecb381ae057ffe972df30c";
const PIN_D2S_CONTROL: &str = "f6a70443430edf96c1efe0fa00ba81051a57a64250e9c0d8eca7ceecded33cb3";
const PIN_D2S_ABORT: &str = "c9e21d2c6b1267130184c8c414395941d731ce2d0da547886bcbbbce7f902aef";
const PIN_S2D_FINISHED: &str = "7e1d49339867b2f0beadf4da06c7562e1fb7b11c72de3b1a5cf997af45a82cf9";
const PIN_D2S_FINISHED: &str = "bf758d6118a6704a2bffce529cb84157ec412f5e6ed4272e1c33a8ecf81446c5";
const PIN_SESSION_ID: &str = "3a8569f7d3daa038637258a56fbade04";

/// Fixed handshake inputs: nonces and X25519 secrets.
const SRC_NONCE: [u8; 32] = [0xA1; 32];
const SRC_SECRET: [u8; 32] = [0xA2; 32];
const DST_NONCE: [u8; 32] = [0xB1; 32];
const DST_SECRET: [u8; 32] = [0xB2; 32];

fn entry(h: &mut Sha256, role: u8, msg: &[u8]) {
    h.update([role]);
    h.update((msg.len() as u32).to_le_bytes());
    h.update(msg);
}

#[test]
fn fixed_handshake_recomputed_from_the_spec() {
    let policy = policy(1);
    let mut src = SourceHandshake::new(&policy, &mut FixedRng([SRC_NONCE, SRC_SECRET].concat()));
    let mut dst = DestinationHandshake::new(&policy, &mut FixedRng([DST_NONCE, DST_SECRET].concat()));
    let v = EmulatedRootVerifier;
    let mut buf = [0u8; MAX_HANDSHAKE_MSG_LEN];

    let n = src.write_hello(&mut buf).unwrap();
    let m1 = buf[..n].to_vec();
    dst.read_src_hello(&m1).unwrap();
    let n = dst.write_hello(&mut buf).unwrap();
    let m2 = buf[..n].to_vec();
    let dst_rd = dst.report_data().unwrap();
    let n = dst
        .write_evidence(&evidence(&policy, dst_rd, &as_is), &mut buf)
        .unwrap();
    let m3 = buf[..n].to_vec();
    src.read_dst_hello(&m2).unwrap();
    src.read_dst_evidence(&m3, &v).unwrap();
    let src_rd = src.report_data().unwrap();
    let n = src
        .write_evidence(&evidence(&policy, src_rd, &as_is), &mut buf)
        .unwrap();
    let m4 = buf[..n].to_vec();
    let n = src.write_finished(&mut buf).unwrap();
    let m5 = buf[..n].to_vec();
    dst.read_src_evidence(&m4, &v).unwrap();
    dst.read_src_finished(&m5).unwrap();
    let dst_keys_d2s_finished = dst.keys_for_test().unwrap().d2s_finished;
    let (n, dst_session) = dst.write_finished(&mut buf).unwrap();
    let m6 = buf[..n].to_vec();
    let src_session = src.read_dst_finished(&m6).unwrap();

    // The public keys in the hellos are X25519(secret, 9).
    let src_pub = PublicKey::from(&StaticSecret::from(SRC_SECRET)).to_bytes();
    let dst_pub = PublicKey::from(&StaticSecret::from(DST_SECRET)).to_bytes();
    assert_eq!(&m1[0..4], &[kind::SRC_HELLO, 1, 1, 0]);
    assert_eq!(&m1[4..36], &SRC_NONCE);
    assert_eq!(&m1[36..68], &src_pub);
    assert_eq!(&m2[8..40], &DST_NONCE);
    assert_eq!(&m2[40..72], &dst_pub);

    // Transcript hashes at each point, from the spec.
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_LABEL);
    entry(&mut h, b'S', &m1);
    entry(&mut h, b'D', &m2);
    let th2: [u8; 32] = h.clone().finalize().into();
    entry(&mut h, b'D', &m3);
    let th3: [u8; 32] = h.clone().finalize().into();
    entry(&mut h, b'S', &m4);
    let th4: [u8; 32] = h.clone().finalize().into();
    entry(&mut h, b'S', &m5);
    let th5: [u8; 32] = h.clone().finalize().into();

    let rd = |label: &[u8], th: &[u8; 32]| -> [u8; 64] {
        Sha512::new().chain_update(label).chain_update(th).finalize().into()
    };
    assert_eq!(dst_rd, rd(DST_EVIDENCE_LABEL, &th2));
    assert_eq!(src_rd, rd(SRC_EVIDENCE_LABEL, &th3));
    assert_eq!(&m3[16 + 0x50..16 + 0x90], &dst_rd[..]);
    assert_eq!(&m4[16 + 0x50..16 + 0x90], &src_rd[..]);

    // Keys from X25519 and HKDF, independently.
    let shared = StaticSecret::from(SRC_SECRET)
        .diffie_hellman(&PublicKey::from(dst_pub))
        .to_bytes();
    assert_eq!(
        shared,
        StaticSecret::from(DST_SECRET)
            .diffie_hellman(&PublicKey::from(src_pub))
            .to_bytes()
    );
    let session_id = expand(&th4, &shared, label::SESSION_ID, 16);
    assert_eq!(src_session.session_id().to_vec(), session_id);
    assert_eq!(dst_session.session_id().to_vec(), session_id);
    let k_dfin = expand(&th4, &shared, label::D2S_FINISHED, 32);
    assert_eq!(dst_keys_d2s_finished.to_vec(), k_dfin);

    // Finished MACs.
    let mac = |key: &[u8], th: &[u8; 32]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        m.update(th);
        m.finalize().into_bytes().to_vec()
    };
    let k_sfin = expand(&th4, &shared, label::S2D_FINISHED, 32);
    assert_eq!(m5[0], kind::SRC_FINISHED);
    assert_eq!(m5[1..].to_vec(), mac(&k_sfin, &th4));
    assert_eq!(m6[0], kind::DST_FINISHED);
    assert_eq!(m6[1..].to_vec(), mac(&k_dfin, &th5));

    // Records: the first page record's tag under the independently
    // derived key and nonce.
    let k_rec = expand(&th4, &shared, label::S2D_RECORDS, 32);
    let mut src_session = src_session;
    let mut rec = [0u8; crate::record::PAGE_RECORD_LEN];
    src_session.seal_page(0x1000, &[0x5A; 4096], &mut rec).unwrap();
    use aes_gcm::aead::{AeadInOut, KeyInit};
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&k_rec).unwrap();
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&1u32.to_le_bytes());
    let aad = [&session_id[..], &rec[..32]].concat();
    let mut plain = rec[32..32 + 4096].to_vec();
    let tag: [u8; 16] = rec[32 + 4096..].try_into().unwrap();
    cipher
        .decrypt_inout_detached(&nonce.into(), &aad, plain.as_mut_slice().into(), &tag.into())
        .expect("record opens with the spec's key, nonce and AAD");
    assert_eq!(plain, vec![0x5A; 4096]);

    // The whole fixed handshake is deterministic (RFC 6979 signatures):
    // pin its session id, as first computed by the steps above.
    assert_eq!(hex(&session_id), PIN_FIXED_SESSION_ID);
}

const PIN_FIXED_SESSION_ID: &str = "1086bba3a1fe23491e41edc7c279c69b";

/// A ZeroPages record (5 pages from 0x200000, round 3) as lane 2's
/// eighth record (sequence 7) under the pinned s2d key and session id,
/// computed once outside Rust with Python's `cryptography` (AESGCM):
/// header `<BBHIQQII` = (2, 1, 2, 8, 7, 0x200000, 3, 0), nonce `<IQ` =
/// (1 | 2 << 16, 7), AAD = session id ‖ header.
const PIN_LANE_RECORD: &str = "020102000800000007000000000000000000200000000000030000000000000\
09e1cbbeaf855b86ee1991a66ce5e3c23cc5b8c1193f3247d";

/// A Final's payload for 3 lanes (rounds 4, vCPUs 2, 1000 pages, not
/// verified): the extra-lanes field at offset 17 holds 2.
const PIN_LANES_SUMMARY: &str = "0400000002000000e8030000000000000002000000000000\
0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn a_lane_record_and_summary_match_the_pinned_bytes() {
    use crate::record::stream::{RecordSealer, StreamId};
    let key: [u8; 32] = hex_bytes(PIN_S2D_RECORDS).try_into().unwrap();
    let session_id: [u8; 16] = hex_bytes(PIN_SESSION_ID).try_into().unwrap();
    let mut sealer = RecordSealer::new(&key, StreamId::S2dRecords, &session_id);
    sealer.set_lanes(3).unwrap();
    for _ in 0..7 {
        let _ = sealer.reserve(2).unwrap();
    }
    let mut record = [0u8; crate::record::COUNT_RECORD_LEN];
    record[32..40].copy_from_slice(&5u64.to_le_bytes());
    let seq = sealer.reserve(2).unwrap();
    sealer
        .cipher()
        .seal(seq, crate::RecordType::ZeroPages, 3, 0x200000, &mut record)
        .unwrap();
    assert_eq!(hex(&record), PIN_LANE_RECORD);

    let summary = crate::Summary {
        rounds: 4,
        vcpus: 2,
        total_pages: 1000,
        lanes: 3,
        memory_digest: None,
    };
    assert_eq!(hex(&summary.encode()), PIN_LANES_SUMMARY);
    assert_eq!(crate::Summary::decode(&summary.encode()), Ok(summary));
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
