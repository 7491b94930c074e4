//! Live migration between real covm processes on real KVM, with the
//! built-in firmware's `dirty` workload verifying every page it wrote.

mod common;
use common::api::*;
use common::*;
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One migration at a time: two guests of two vCPUs each already fill this
/// machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// A covm running the dirty workload on 2 vCPUs and 512 MiB.
fn source(dir: &Scratch, name: &str, workload: &str) -> (Process, Api, std::path::PathBuf) {
    source_with(dir, name, workload, &[])
}

/// [`source`] with `extra` options.
fn source_with(dir: &Scratch, name: &str, workload: &str, extra: &[&str]) -> (Process, Api, std::path::PathBuf) {
    let mut args = vec!["--cpus", "boot=2", "--memory", "size=512M", "--cmdline", workload];
    args.extend_from_slice(extra);
    covm_named(dir, name, &args)
}

/// The report a source prints on standard error when it exits after a
/// migration.
fn source_report(child: &mut Child) -> serde_json::Value {
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr is piped"), &mut stderr).unwrap();
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("covm: migration completed: "))
        .unwrap_or_else(|| panic!("no report on the source's stderr:\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

/// Migrates from `src` to `dst` over `url` and checks the guest lives on.
fn migrate(src: (&mut Child, &Api, &Path), dst: (&Api, &Path), url: &str) {
    migrate_with(src, dst, url, r#""downtime_ms": 300"#);
}

/// [`migrate`] with `options`, more members of the send-migration body.
fn migrate_with(src: (&mut Child, &Api, &Path), dst: (&Api, &Path), url: &str, options: &str) {
    let (src_child, src_api, src_serial) = src;
    let (dst_api, dst_serial) = dst;
    let receive = format!(r#"{{"receiver_url": "{url}"}}"#);
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let send = format!(r#"{{"destination_url": "{url}", "timeout_s": 120, {options}}}"#);
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    assert_eq!(
        wait_exit(src_child, Duration::from_secs(180)),
        Some(0),
        "the source must exit 0 after the commit"
    );
    let last_at_source = *heartbeat_numbers(src_serial).last().expect("heartbeats at the source");
    assert_eq!(dst_api.state(), "Running");
    wait_for_serial(dst_serial, Duration::from_secs(60), |_| {
        heartbeat_numbers(dst_serial)
            .iter()
            .filter(|&&n| n > last_at_source)
            .count()
            >= 5
    });
    let continued = heartbeat_numbers(dst_serial);
    assert!(
        continued.iter().filter(|&&n| n > last_at_source).count() >= 5,
        "the destination did not continue the heartbeat after {last_at_source}: {continued:?}"
    );
    no_fail(src_serial);
    no_fail(dst_serial);
}

fn shutdown(mut child: Process, api: &Api) {
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

#[test]
fn dirtying_guest_migrates_over_a_unix_socket() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("mig-unix");
    let (dst_child, dst_api, dst_serial) = destination(&dir, "dst", &[]);
    // 256 MiB written continuously, as fast as the vCPUs can.
    let (mut src_child, src_api, src_serial) = source(&dir, "src", "workload=dirty mib=256");
    wait_heartbeats(&src_serial, 5);
    let url = format!("unix:{}", dir.path("migration.sock").display());
    migrate((&mut src_child, &src_api, &src_serial), (&dst_api, &dst_serial), &url);
    let (_, info) = dst_api.get("/vm.info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["migration"]["direction"], "receive");
    assert!(info["migration"]["report"].is_object(), "{info}");
    // The last part of the downtime, which only the destination sees.
    assert!(
        info["migration"]["report"]["resume_ms"].as_f64().unwrap() > 0.0,
        "{info}"
    );
    shutdown(dst_child, &dst_api);
}

#[test]
fn dirtying_guest_migrates_over_tcp_twice_in_a_row() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("mig-tcp");
    let (mut a_child, a_api, a_serial) = source(&dir, "a", "workload=dirty mib=256 rate=64");
    let (mut b_child, b_api, b_serial) = destination(&dir, "b", &[]);
    let (c_child, c_api, c_serial) = destination(&dir, "c", &[]);
    wait_heartbeats(&a_serial, 5);
    migrate((&mut a_child, &a_api, &a_serial), (&b_api, &b_serial), &free_tcp_url());
    // B now runs the guest and sends it on to C.
    migrate((&mut b_child, &b_api, &b_serial), (&c_api, &c_serial), &free_tcp_url());
    shutdown(c_child, &c_api);
}

#[test]
fn dirty_rate_above_the_bandwidth_converges_by_throttling_with_the_dirty_ring() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("mig-ring");
    let (dst_child, dst_api, dst_serial) = destination(&dir, "dst", &[]);
    // By construction the guest dirties memory faster than the link
    // carries it: two vCPUs rewrite 32 MiB at 128 MiB/s, and the migration
    // is capped at 32 MiB/s. Within a 20 ms downtime only throttling the
    // vCPUs lets pre-copy converge, whatever this machine's speed.
    let (mut src_child, src_api, src_serial) = source_with(
        &dir,
        "src",
        "workload=dirty mib=32 rate=128",
        &["--dirty-tracking", "mode=ring,ring_entries=4096"],
    );
    wait_heartbeats(&src_serial, 5);
    let url = format!("unix:{}", dir.path("migration.sock").display());
    migrate_with(
        (&mut src_child, &src_api, &src_serial),
        (&dst_api, &dst_serial),
        &url,
        &format!(r#""downtime_ms": 20, "max_bandwidth": {}"#, 32 << 20),
    );
    let report = source_report(&mut src_child);
    assert_eq!(report["converged"], true, "{report}");
    assert!(
        report["max_throttle_percent"].as_u64().unwrap() > 0,
        "converged without throttling, so the test proves nothing: {report}"
    );
    // The cap held (an upper bound: a slower machine only lowers it).
    assert!(
        report["throughput_bytes_per_s"].as_u64().unwrap() <= 33 << 20,
        "the migration went faster than its 32 MiB/s cap: {report}"
    );
    // The destination keeps the mode for its own next migration.
    let (_, info) = dst_api.get("/vm.info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["config"]["dirty_tracking"]["mode"], "ring", "{info}");
    shutdown(dst_child, &dst_api);
}

#[test]
fn killed_destination_leaves_the_source_running_and_a_retry_succeeds() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("mig-kill");
    let (mut src_child, src_api, src_serial) = source(&dir, "src", "workload=dirty mib=256");
    let (mut doomed, doomed_api, _) = destination(&dir, "doomed", &[]);
    wait_heartbeats(&src_serial, 3);
    let url = free_tcp_url();
    assert_eq!(
        doomed_api
            .put(
                "/vm.receive-migration",
                Some(&format!(r#"{{"receiver_url": "{url}"}}"#))
            )
            .0,
        204
    );
    assert_eq!(
        src_api
            .put(
                "/vm.send-migration",
                Some(&format!(r#"{{"destination_url": "{url}"}}"#))
            )
            .0,
        204
    );
    // Kill the destination once pages are flowing.
    src_api.wait_transferred(32 << 20);
    doomed.kill().unwrap();
    let _ = doomed.wait();
    // The source notices, keeps the guest and says why.
    let error = src_api.wait_migration_error();
    // The error names the lost connection (a write or a read finds it).
    assert!(
        ["Broken pipe", "Connection reset", "the peer closed the connection"]
            .iter()
            .any(|lost| error.contains(lost)),
        "the source's error does not say the destination went away: {error}"
    );
    assert!(src_child.try_wait().unwrap().is_none(), "the source exited");
    let before = heartbeat_numbers(&src_serial).len();
    wait_heartbeats(&src_serial, before + 5);
    no_fail(&src_serial);
    // A second attempt to a fresh destination succeeds.
    let (fresh_child, fresh_api, fresh_serial) = destination(&dir, "fresh", &[]);
    migrate(
        (&mut src_child, &src_api, &src_serial),
        (&fresh_api, &fresh_serial),
        &free_tcp_url(),
    );
    shutdown(fresh_child, &fresh_api);
}

#[test]
fn garbage_truncated_and_out_of_order_frames_are_refused() {
    if !kvm_available() {
        return;
    }
    use covm_migration::protocol::{write_frame, Message, PROTOCOL_VERSION};
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("mig-garbage");
    let (dst_child, dst_api, dst_serial) = destination(&dir, "dst", &[]);
    let sock = dir.path("migration.sock");
    let url = format!("unix:{}", sock.display());
    assert_eq!(
        dst_api
            .put(
                "/vm.receive-migration",
                Some(&format!(r#"{{"receiver_url": "{url}"}}"#))
            )
            .0,
        204
    );
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        config: br#"{"payload": {}}"#.to_vec(),
    };
    let mut valid = Vec::new();
    write_frame(&mut valid, 0, &hello).unwrap();
    let mut skipped = Vec::new();
    write_frame(&mut skipped, 5, &hello).unwrap();
    // A well-formed Hello for a confidential VM: plain memory must never
    // fill one (it would attest as its own launch holding host data).
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../resources/policies/emulated-cvm.json"
    ))
    .unwrap();
    let confidential = Message::Hello {
        version: PROTOCOL_VERSION,
        config: format!(r#"{{"payload": {{}}, "platform": {{"emulated_cvm": true, "migration_policy": {policy}}}}}"#)
            .into_bytes(),
    };
    let mut plain_into_confidential = Vec::new();
    write_frame(&mut plain_into_confidential, 0, &confidential).unwrap();
    let attacks: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: nope\r\n\r\n".repeat(10), None),
        ("truncated", valid[..valid.len() - 7].to_vec(), None),
        ("out of order", skipped, None),
        (
            "plain memory for a confidential VM",
            plain_into_confidential,
            Some("confidential VMs arrive only through"),
        ),
    ];
    for (what, bytes, reason) in attacks {
        let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        use std::io::Read;
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = stream.read_to_end(&mut answer);
        if let Some(reason) = reason {
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.contains(reason),
                "{what}: the refusal does not say why: {answer}"
            );
        }
        // Still alive, still empty, still listening.
        assert_eq!(dst_api.get("/vmm.ping").0, 200, "covm died on {what}");
        assert_eq!(dst_api.get("/vm.info").0, 404, "a VM appeared after {what}");
    }
    let (_, info) = dst_api.get("/vmm.ping");
    assert!(info.contains("version"));
    // And a real source still gets through afterwards.
    let (mut src_child, src_api, src_serial) = source(&dir, "src", "workload=dirty mib=64 rate=32");
    wait_heartbeats(&src_serial, 3);
    let send = format!(r#"{{"destination_url": "{url}"}}"#);
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    assert_eq!(wait_exit(&mut src_child, Duration::from_secs(120)), Some(0));
    wait_heartbeats(&dst_serial, 3);
    no_fail(&dst_serial);
    shutdown(dst_child, &dst_api);
}

#[test]
fn bad_migration_requests_are_refused() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("mig-bad");
    let (child, api) = start(&dir, &[]);
    let expect = |got: (u16, String), status: u16, needle: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert!(got.1.contains(needle), "expected {needle:?} in {:?}", got.1);
    };
    expect(
        api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#)),
        404,
        "no VM",
    );
    expect(
        api.put("/vm.send-migration", Some(r#"{"destination_url": "ftp:x"}"#)),
        400,
        "destination_url",
    );
    expect(
        api.put(
            "/vm.send-migration",
            Some(r#"{"destination_url": "unix:/x", "local": true}"#),
        ),
        400,
        "local migration",
    );
    expect(
        api.put("/vm.receive-migration", Some(r#"{"receiver_url": 5}"#)),
        400,
        "ReceiveMigrationData",
    );
    assert_eq!(
        api.put(
            "/vm.create",
            Some(r#"{"payload": {"cmdline": "workload=dirty mib=8 rate=8"}}"#)
        )
        .0,
        204
    );
    expect(
        api.put("/vm.receive-migration", Some(r#"{"receiver_url": "unix:/tmp/x.sock"}"#)),
        405,
        "already exists",
    );
    expect(
        api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#)),
        405,
        "it is Created",
    );
    assert_eq!(api.put("/vm.boot", None).0, 204);
    // Nobody listens there: the attempt fails and the guest keeps running.
    assert_eq!(
        api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#))
            .0,
        204
    );
    let start = Instant::now();
    loop {
        let (_, info) = api.get("/vm.info");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        if info["migration"]["error"].is_string() {
            assert_eq!(info["state"], "Running");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{info}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        api.put("/vm.pause", None).0,
        204,
        "the VM is back under the control loop"
    );
    shutdown(child, &api);
}
