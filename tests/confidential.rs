//! Confidential live migration between real covm processes on real KVM
//! (`--platform emulated_cvm=on`), through a recording, tampering proxy
//! standing where an attacker on the host stands.
//!
//! - The `dirty` workload moves with its heartbeat continuing and no FAIL,
//!   A → B → C (B → C in verified mode).
//! - No 64-byte window of the workload's pages (recognised from its
//!   documented pattern) and no register value it exposes crosses the
//!   wire; the same check on a plain migration finds them.
//! - Each attack makes the destination refuse and the source resume with
//!   its guest intact; after a commit no forged or replayed abort token
//!   makes the source run.

mod common;
#[path = "common/proxy.rs"]
mod proxy;
use common::api::*;
use common::leak::found;
use common::owner::*;
use common::*;
use proxy::{Frame, Proxy, Tamper, Verdict};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One migration at a time: two guests already fill this machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The seed and size of `owner::WORKLOAD`, whose pages the stream is
/// searched for.
const SEED: u64 = 7;
const MIB: u64 = 24;

/// Where KVM is usable, the turn of the calling test (held until it
/// ends); `None` and the test skips elsewhere.
fn kvm_turn() -> Option<MutexGuard<'static, ()>> {
    kvm_available().then(|| SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

fn info(api: &Api) -> Value {
    let (status, body) = api.get("/vm.info");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Starts a source `{prefix}a` and a destination `{prefix}b` (with
/// `extra` options) and, once the source's guest beat three times,
/// migrates through a proxy with `forward` (S→D) and `backward` (D→S)
/// tampering until the source reports the migration failed.
fn failed_migration(owner: &Owner, prefix: &str, extra: &[&str], forward: Tamper, backward: Tamper) -> Failed {
    let (a, a_api, a_serial) = owner.source(&format!("{prefix}a"));
    let (b, b_api, b_serial) = owner.destination(&format!("{prefix}b"), extra);
    wait_heartbeats_within(&a_serial, 3, Duration::from_secs(60));
    let proxy = migrate_through(owner, &a_api, &b_api, &format!("{prefix}ab"), forward, backward, "");
    let error = wait_failed(&a_api);
    Failed {
        a_api,
        a_serial,
        b_api,
        b_serial,
        proxy,
        error,
        _vms: (a, b),
    }
}

/// A migration the source reported as failed, and its two VMs (killed on
/// drop).
struct Failed {
    a_api: Api,
    a_serial: PathBuf,
    b_api: Api,
    b_serial: PathBuf,
    proxy: Proxy,
    /// The source's migration error.
    error: String,
    _vms: (Process, Process),
}

/// Starts receiving on `dst` and sending from `src` through a proxy with
/// `forward` (S→D) and `backward` (D→S) tampering.
fn migrate_through(
    owner: &Owner,
    src: &Api,
    dst: &Api,
    tag: &str,
    forward: Tamper,
    backward: Tamper,
    extra: &str,
) -> Proxy {
    let listen = owner.dir.path(&format!("{tag}.mig"));
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = Proxy::start(&owner.dir.path(&format!("{tag}.proxy")), &listen, forward, backward);
    let send = format!(
        r#"{{"destination_url": "unix:{}", "downtime_ms": 100, "timeout_s": 120{extra}}}"#,
        proxy.path.display()
    );
    let (status, body) = src.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
    proxy
}

/// Waits until the source's migration has ended with an error (the guest
/// handed back); returns the error.
fn wait_failed(src: &Api) -> String {
    let start = Instant::now();
    loop {
        let i = info(src);
        if let Some(e) = i["migration"]["error"].as_str() {
            return e.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the migration did not end: {i}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 64-byte windows of the workload's pages.
fn page_windows() -> Vec<Vec<u8>> {
    common::leak::page_windows(SEED, MIB)
}

/// The vCPU register values the workload exposes: each vCPU's FS base
/// (`canary + index`, printed at boot), as the 8 little-endian bytes a
/// register image holds and as the varint covm's plain state encoding
/// (postcard) gives a u64.
fn register_needles(serial: &Path, vcpus: u64) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(serial).expect("the source's serial log");
    let hex = text
        .lines()
        .find_map(|l| l.split("register canary fs_base=0x").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the workload printed no register canary:\n{text}"));
    let canary = u64::from_str_radix(hex, 16).expect("a hex canary");
    (0..vcpus)
        .flat_map(|i| {
            let value = canary + i;
            [
                value.to_le_bytes().to_vec(),
                postcard::to_allocvec(&value).expect("a u64 encodes"),
            ]
        })
        .collect()
}

/// Starts a source `a` and a destination `b` and, once the source's guest
/// beat five times, migrates it through a passing proxy; returns once the
/// source exited after the commit and the guest goes on at `b`: `b`, its
/// API, both serial logs and the proxy.
fn migrate_a_to_b(owner: &Owner) -> (Process, Api, PathBuf, PathBuf, Proxy) {
    let (mut a, a_api, a_serial) = owner.source("a");
    let (b, b_api, b_serial) = owner.destination("b", &[]);
    wait_heartbeats_within(&a_serial, 5, Duration::from_secs(60));
    let proxy = migrate_through(owner, &a_api, &b_api, "ab", proxy::pass(), proxy::pass(), "");
    assert_eq!(
        wait_exit(&mut a, Duration::from_secs(180)),
        Some(0),
        "the source exits after the commit"
    );
    destination_continues(&a_serial, &b_serial);
    (b, b_api, a_serial, b_serial, proxy)
}

#[test]
fn confidential_migration_moves_the_workload_and_only_ciphertext_crosses() {
    let Some(_one) = kvm_turn() else {
        return;
    };
    let owner = Owner::new("cm-basic", None);
    let (mut b, b_api, a_serial, b_serial, proxy) = migrate_a_to_b(&owner);
    let b_info = info(&b_api);
    let session = &b_info["migration"]["session"];
    assert_eq!(session["state"], "committed", "{b_info}");
    assert_eq!(
        session["attested_peer"]["measurement"],
        owner.measurement.as_str(),
        "{b_info}"
    );
    assert_eq!(session["attested_peer"]["policy_version"], 2);
    let report = &b_info["migration"]["report"];
    assert!(report["crypto_ms"].as_f64().unwrap() > 0.0, "{report}");
    let wire = proxy.to_destination.lock().unwrap().clone();
    proxy.join();
    assert!(
        wire.len() > (MIB << 20) as usize,
        "the stream carried the region: {} bytes",
        wire.len()
    );
    let leaked = found(&wire, &page_windows());
    assert_eq!(
        leaked, 0,
        "{leaked} windows of the workload's pages crossed in the clear"
    );
    let registers = found(&wire, &register_needles(&a_serial, 2));
    assert_eq!(
        registers, 0,
        "{registers} encodings of the vCPUs' FS base crossed in the clear"
    );

    // B → C in verified mode: a migrated VM migrates on, and C commits only
    // once its memory digest equals the paused source's.
    let (_c, c_api, c_serial) = owner.destination("c", &[]);
    let _proxy = migrate_through(
        &owner,
        &b_api,
        &c_api,
        "bc",
        proxy::pass(),
        proxy::pass(),
        r#", "verified": true"#,
    );
    assert_eq!(
        wait_exit(&mut b, Duration::from_secs(180)),
        Some(0),
        "B exits after the commit"
    );
    destination_continues(&b_serial, &c_serial);
    assert_eq!(info(&c_api)["migration"]["session"]["state"], "committed");
}

/// The lane of the record at `start` of a `Sealed` payload.
fn lane_at(payload: &[u8], start: usize) -> u16 {
    covm_agent_protocol::RecordHeader::decode(&payload[start..])
        .unwrap()
        .lane
}

/// With two agent vCPUs a side the stream has two lanes, each sealed and
/// opened by its own vCPU: the workload moves, only ciphertext crosses,
/// and both lanes carry pages. A bit flipped in a record of lane 1 is
/// refused, and the source resumes.
#[test]
fn two_agent_vcpus_migrate_on_two_lanes() {
    let Some(_one) = kvm_turn() else {
        return;
    };
    let owner = Owner::with_agent_vcpus("cm-lanes", None, 2);
    let (_b, b_api, _, _, proxy) = migrate_a_to_b(&owner);
    let b_info = info(&b_api);
    assert_eq!(b_info["migration"]["session"]["state"], "committed", "{b_info}");
    assert_eq!(b_info["config"]["platform"]["agent_vcpus"], 2, "{b_info}");
    let wire = proxy.to_destination.lock().unwrap().clone();
    proxy.join();
    let lanes: std::collections::BTreeSet<u16> = proxy::frames(&wire)
        .into_iter()
        .filter(|&(kind, _)| kind == proxy::KIND_SEALED)
        .flat_map(|(_, payload)| {
            let spans = proxy::sealed_records(payload);
            spans.into_iter().map(move |(start, _)| lane_at(payload, start))
        })
        .collect();
    assert_eq!(lanes, [0, 1].into(), "both lanes carried records");
    assert_eq!(found(&wire, &page_windows()), 0, "workload pages crossed in the clear");

    let lane1_pages = |payload: &[u8]| -> Vec<(usize, usize)> {
        page_records(payload)
            .into_iter()
            .filter(|&(start, _)| lane_at(payload, start) == 1)
            .collect()
    };
    let flip = sealed_frames(
        move |f: &Frame| !lane1_pages(&f.payload).is_empty(),
        move |seen, mut f| {
            if seen == 3 {
                let (start, end) = lane1_pages(&f.payload)[0];
                f.payload[(start + end) / 2] ^= 0x10;
            }
            Verdict::Send(vec![f])
        },
    );
    let f = failed_migration(&owner, "x", &[], flip, proxy::pass());
    assert!(f.error.contains("authentication"), "{}", f.error);
    assert_eq!(f.a_api.state(), "Running", "{}", info(&f.a_api));
    source_keeps_running(&f.a_serial);
}

#[test]
fn the_same_check_finds_the_pages_in_a_plain_migration() {
    let Some(_one) = kvm_turn() else {
        return;
    };
    let dir = Scratch::new("cm-plain-check");
    let serial = dir.path("a.txt");
    let (mut a, a_api, _) = covm_named(&dir, "a", &["--cpus", CPUS, "--memory", MEMORY, "--cmdline", WORKLOAD]);
    let (_b, b_api, _) = destination(&dir, "b", &[]);
    wait_heartbeats_within(&serial, 5, Duration::from_secs(60));
    let listen = dir.path("ab.mig");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(b_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = Proxy::start(&dir.path("ab.proxy"), &listen, proxy::pass(), proxy::pass());
    let send = format!(r#"{{"destination_url": "unix:{}"}}"#, proxy.path.display());
    assert_eq!(a_api.put("/vm.send-migration", Some(&send)).0, 204);
    assert_eq!(wait_exit(&mut a, Duration::from_secs(180)), Some(0));
    let wire = proxy.to_destination.lock().unwrap().clone();
    proxy.join();
    let needles = page_windows();
    let seen = found(&wire, &needles);
    // Every sampled page is in the stream at some generation.
    assert!(
        seen as u64 >= (MIB * 256).div_ceil(97),
        "only {seen} windows found in a plain stream: the check could not fail"
    );
    // Both vCPUs' FS base, in one encoding or the other.
    let registers = register_needles(&serial, 2);
    for (vcpu, pair) in registers.chunks(2).enumerate() {
        assert!(
            found(&wire, pair) > 0,
            "vCPU {vcpu}'s FS base is not in a plain stream: the register check could not fail"
        );
    }
}

/// A source and destination with a tampering proxy; checks the source got
/// its guest back and the destination holds no VM. The source's error, or
/// `None` where KVM is not usable.
fn refused_and_source_resumes(name: &str, forward: Tamper, expect: &str) -> Option<String> {
    let _one = kvm_turn()?;
    let owner = Owner::new(name, None);
    let f = failed_migration(&owner, "", &[], forward, proxy::pass());
    let error = &f.error;
    assert!(
        error.contains(expect),
        "expected {expect:?} in the source's error: {error}"
    );
    assert_eq!(f.a_api.state(), "Running", "{}", info(&f.a_api));
    source_keeps_running(&f.a_serial);
    let b = info_or_none(&f.b_api);
    assert!(
        b.is_none() || b.unwrap()["state"] != "Running",
        "the destination runs a refused VM"
    );
    Some(f.error.clone())
}

/// The destination's agent refused a record by its sequence number: the
/// number the record carried and the one expected.
fn sequence_refusal(error: &str) -> (u64, u64) {
    let tail = error
        .split("record sequence ")
        .nth(1)
        .unwrap_or_else(|| panic!("not a sequence refusal: {error}"));
    assert!(tail.contains("(dropped, replayed or reordered record)"), "{error}");
    let (got, rest) = tail.split_once(", expected ").unwrap();
    let expected = rest.split_whitespace().next().unwrap();
    (got.parse().unwrap(), expected.parse().unwrap())
}

fn info_or_none(api: &Api) -> Option<Value> {
    let (status, body) = api.get("/vm.info");
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Page records (4 KiB of sealed data) in a `Sealed` payload.
fn page_records(payload: &[u8]) -> Vec<(usize, usize)> {
    proxy::sealed_records(payload)
        .into_iter()
        .filter(|&(start, end)| end - start == covm_agent_protocol::record::PAGE_RECORD_LEN)
        .collect()
}

/// Passes every frame on but the `Sealed` ones `pick` accepts: those go to
/// `act` with their number among them (from 1).
fn sealed_frames(
    pick: impl Fn(&Frame) -> bool + Send + 'static,
    mut act: impl FnMut(usize, Frame) -> Verdict + Send + 'static,
) -> Tamper {
    let mut seen = 0;
    Box::new(move |f: Frame| {
        if f.kind != proxy::KIND_SEALED || !pick(&f) {
            return Verdict::Send(vec![f]);
        }
        seen += 1;
        act(seen, f)
    })
}

/// Applies `act` once, to the `n`th `Sealed` frame carrying at least two
/// page records.
fn nth_sealed(n: usize, mut act: impl FnMut(Frame) -> Verdict + Send + 'static) -> Tamper {
    let pages = |f: &Frame| page_records(&f.payload).len() >= 2;
    sealed_frames(
        pages,
        move |seen, f| if seen == n { act(f) } else { Verdict::Send(vec![f]) },
    )
}

#[test]
fn a_flipped_bit_in_a_page_record_is_refused() {
    let flip = nth_sealed(5, |mut f| {
        let spans = page_records(&f.payload);
        let (start, end) = spans[spans.len() / 2];
        f.payload[(start + end) / 2] ^= 0x10;
        Verdict::Send(vec![f])
    });
    refused_and_source_resumes("cm-flip", flip, "authentication");
}

#[test]
fn a_record_replayed_in_a_later_round_is_refused() {
    // Keep a page record batch of round 0 and send it again later,
    // relabelled with the open round: covm's own frame check (in the clear,
    // the host's to forge) passes, so only the agent's can refuse it.
    let mut kept: Option<Frame> = None;
    let replay = sealed_frames(
        |_| true,
        move |sealed, f| {
            let round = u32::from_le_bytes(f.payload[..4].try_into().unwrap());
            if sealed == 3 {
                kept = Some(f.clone());
            }
            if round >= 1 {
                if let Some(mut old) = kept.take() {
                    old.payload[..4].copy_from_slice(&round.to_le_bytes());
                    return Verdict::Send(vec![old, f]);
                }
            }
            Verdict::Send(vec![f])
        },
    );
    let Some(error) = refused_and_source_resumes("cm-replay", replay, "record sequence ") else {
        return;
    };
    // An old record: its number is below the next one.
    let (got, expected) = sequence_refusal(&error);
    assert!(got < expected, "{error}");
}

#[test]
fn two_records_swapped_are_refused() {
    let mut held: Option<Frame> = None;
    let swap = sealed_frames(
        |_| true,
        move |sealed, f| match sealed {
            4 => {
                held = Some(f);
                Verdict::Send(vec![])
            }
            5 => Verdict::Send(vec![f, held.take().unwrap()]),
            _ => Verdict::Send(vec![f]),
        },
    );
    let Some(error) = refused_and_source_resumes("cm-swap", swap, "record sequence ") else {
        return;
    };
    // The later batch first: its first record is a whole batch ahead.
    let (got, expected) = sequence_refusal(&error);
    assert!(got > expected + 1, "{error}");
}

#[test]
fn a_dropped_record_is_refused() {
    // Drop one page record from inside a batch: the frame stays
    // well-formed; the destination's agent finds the next record's
    // sequence number (bound into its nonce) one too far.
    let drop_one = nth_sealed(6, |mut f| {
        let spans = page_records(&f.payload);
        let (start, end) = spans[0];
        f.payload.drain(start..end);
        Verdict::Send(vec![f])
    });
    let Some(error) = refused_and_source_resumes("cm-drop", drop_one, "record sequence ") else {
        return;
    };
    // One record missing: the next is exactly one ahead.
    let (got, expected) = sequence_refusal(&error);
    assert_eq!(got, expected + 1, "{error}");
}

#[test]
fn a_truncated_stream_is_refused() {
    // The destination sees its stream end, gives up and hands the source
    // a valid abort token, which alone lets the source resume.
    refused_and_source_resumes(
        "cm-cut",
        nth_sealed(8, |_| Verdict::Cut),
        "the peer aborted the migration: the destination's agent gave a valid abort token",
    );
}

#[test]
fn a_destination_measurement_the_policy_does_not_allow_is_refused_before_any_page() {
    let Some(_one) = kvm_turn() else {
        return;
    };
    // The guest owner allows only another build's measurement.
    let owner = Owner::new("cm-measurement", Some(&"ab".repeat(48)));
    let f = failed_migration(&owner, "", &[], proxy::pass(), proxy::pass());
    assert!(f.error.contains("measurement"), "{}", f.error);
    let wire = f.proxy.to_destination.lock().unwrap().clone();
    for (kind, _) in proxy::frames(&wire) {
        assert_ne!(
            kind,
            proxy::KIND_SEALED,
            "a sealed record left before the destination was accepted"
        );
    }
    source_keeps_running(&f.a_serial);
}

#[test]
fn a_destination_with_an_older_policy_version_is_refused() {
    let Some(_one) = kvm_turn() else {
        return;
    };
    let owner = Owner::new("cm-older-policy", None);
    let older = owner.write_policy("older.json", 1, &owner.measurement);
    let older = older.display().to_string();
    // This destination host launches incoming VMs with policy version 1.
    let extra = ["--platform", &owner.platform, "--migration-policy", &older];
    let f = failed_migration(&owner, "", &extra, proxy::pass(), proxy::pass());
    assert!(f.error.contains("older"), "{}", f.error);
    source_keeps_running(&f.a_serial);
}

/// A DstEvidence message carrying the Milan sample of
/// resources/attestation/snp/: AMD's real report with its real VCEK, ASK
/// and ARK in the certificate table, the VCEK's signature byte flipped
/// when `corrupt`.
fn real_snp_dst_evidence(corrupt: bool) -> Vec<u8> {
    use covm_agent_protocol::{Evidence, Platform};
    use covm_snp_verify::{CertKind, CertTable};
    use x509_cert::der::{DecodePem, Encode};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/attestation/snp/milan-virtee-sev");
    let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
    let der = |file: &str| x509_cert::Certificate::from_pem(read(file)).unwrap().to_der().unwrap();
    let mut vcek = read("vcek.der");
    if corrupt {
        let at = vcek.len() - 8; // in the ASK's signature, which ends the certificate
        vcek[at] ^= 1;
    }
    let mut table = vec![0u8; 8192];
    let certs = [
        (CertKind::Vcek, &vcek[..]),
        (CertKind::Ask, &der("ask.pem")[..]),
        (CertKind::Ark, &der("ark.pem")[..]),
    ];
    let n = CertTable::encode(&certs, &mut table).unwrap();
    let evidence = Evidence::with_certs(Platform::SevSnp, &read("report.bin"), &table[..n]).unwrap();
    // Type DstEvidence (3), 7 reserved bytes, then the evidence.
    let mut message = vec![3, 0, 0, 0, 0, 0, 0, 0];
    message.resize(8 + evidence.encoded_len(), 0);
    evidence.encode(&mut message[8..]).unwrap();
    message
}

/// The source's agent checks SEV-SNP evidence against AMD's chain inside
/// the guest (covm-snp-verify: X.509 and RSA on the agent's heap). The
/// proxy, standing where the host stands, swaps the destination's evidence
/// for a real AMD report with its real chain: the chain check passes and
/// the agent refuses at the next question, since the report binds another
/// handshake. With one flipped byte in the VCEK's signature the chain
/// check itself refuses. Either way no sealed record leaves and the source
/// keeps running.
#[test]
fn real_amd_evidence_is_judged_by_the_chain_check_in_the_source_guest() {
    let cases = [
        ("cm-snp-genuine", false, "report_data does not bind this handshake"),
        (
            "cm-snp-vcek",
            true,
            "SEV-SNP endorsement refused: the VCEK/VLEK's signature by the ASK does not verify",
        ),
    ];
    for (name, corrupt, expect) in cases {
        let Some(_one) = kvm_turn() else {
            return;
        };
        let owner = Owner::new(name, None);
        let evidence = real_snp_dst_evidence(corrupt);
        let swap: Tamper = Box::new(move |mut f: Frame| {
            if f.kind == proxy::KIND_HANDSHAKE && f.payload.first() == Some(&3) {
                f.payload = evidence.clone();
            }
            Verdict::Send(vec![f])
        });
        let f = failed_migration(&owner, "", &[], proxy::pass(), swap);
        eprintln!("{name}: the source reports: {}", f.error);
        assert!(f.error.contains(expect), "{name}: expected {expect:?} in {}", f.error);
        let wire = f.proxy.to_destination.lock().unwrap().clone();
        assert!(
            proxy::frames(&wire).iter().all(|(kind, _)| *kind != proxy::KIND_SEALED),
            "{name}: a sealed record left before the destination was accepted"
        );
        assert_eq!(f.a_api.state(), "Running", "{}", info(&f.a_api));
        source_keeps_running(&f.a_serial);
    }
}

/// After the destination committed, the proxy replaces its Commit with
/// `control`: the source must not run its guest again.
fn after_commit_the_source_never_runs(name: &str, control: impl FnOnce(&Owner) -> Vec<u8> + Send + 'static) {
    let Some(_one) = kvm_turn() else {
        return;
    };
    let owner = Owner::new(name, None);
    let mut replacement = Some(control(&owner));
    let backward: Tamper = Box::new(move |mut f: Frame| {
        if f.kind == proxy::KIND_CONTROL {
            if let Some(r) = replacement.take() {
                f.payload = r;
            }
        }
        Verdict::Send(vec![f])
    });
    let Failed {
        a_api,
        a_serial,
        b_serial,
        error,
        ..
    } = &failed_migration(&owner, "", &[], proxy::pass(), backward);
    assert!(error.contains("paused"), "{error}");
    // The destination committed and runs the guest.
    let last = *heartbeat_numbers(a_serial).last().unwrap();
    heartbeats_after(b_serial, last, 3);
    assert!(heartbeat_numbers(b_serial).iter().any(|&n| n > last + 2));
    // The source stays paused and refuses to resume.
    let a = info(a_api);
    assert_eq!(a["state"], "Paused", "{a}");
    assert_eq!(a["migration"]["session"]["state"], "undecided", "{a}");
    let (status, body) = a_api.put("/vm.resume", None);
    assert_ne!(status, 204, "{body}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        *heartbeat_numbers(a_serial).last().unwrap(),
        last,
        "the source ran again"
    );
}

#[test]
fn after_commit_a_forged_abort_token_does_not_resume_the_source() {
    after_commit_the_source_never_runs("cm-forged-abort", |_| {
        // An abort token's shape (header type 7, 8-byte reason, tag) with
        // made-up bytes: no key, no valid tag.
        let mut token = vec![0u8; covm_agent_protocol::record::ABORT_RECORD_LEN];
        let header = covm_agent_protocol::RecordHeader {
            record_type: covm_agent_protocol::RecordType::AbortToken,
            lane: 0,
            epoch: 0,
            sequence: 0,
            address: 0,
            length: 8,
        };
        token[..32].copy_from_slice(&header.encode());
        for (i, b) in token[32..].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        token
    });
}

#[test]
fn after_commit_a_replayed_abort_token_does_not_resume_the_source() {
    after_commit_the_source_never_runs("cm-replayed-abort", |owner| {
        // A genuine abort token from an earlier, refused session of the
        // same owner (a flipped bit made its destination abort).
        let flip = nth_sealed(3, |mut f| {
            let (start, end) = page_records(&f.payload)[0];
            f.payload[(start + end) / 2] ^= 1;
            Verdict::Send(vec![f])
        });
        let old = failed_migration(owner, "old-", &[], flip, proxy::pass());
        let back = old.proxy.to_source.lock().unwrap().clone();
        let token = proxy::frames(&back)
            .into_iter()
            .rfind(|&(kind, _)| kind == proxy::KIND_CONTROL);
        token
            .expect("the refused session's destination sent an abort token")
            .1
            .to_vec()
    });
}
