//! The HTTP API over the real UNIX socket, against the real covm binary and
//! real KVM guests, with covm-remote's HTTP client.

mod common;
use axum::http::Method;
use common::api::*;
use common::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn dirty_config(serial: &Path) -> String {
    format!(
        r#"{{"cpus": {{"boot_vcpus": 2, "max_vcpus": 2}}, "memory": {{"size": 268435456}},
            "payload": {{"cmdline": "workload=dirty mib=16 rate=16"}},
            "serial": {{"mode": "File", "file": "{}"}}, "console": {{"mode": "Off"}}}}"#,
        serial.display()
    )
}

fn exit_status(mut child: Process) -> Option<i32> {
    wait_with_deadline_status(&mut child)
}

fn wait_with_deadline_status(child: &mut Child) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "covm did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn whole_lifecycle() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("api-lifecycle");
    let serial = dir.path("serial.txt");
    let (child, api) = start(&dir, &[]);
    let (status, body) = api.get("/vmm.ping");
    assert_eq!(status, 200);
    let ping: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ping["pid"], child.id());
    assert_eq!(api.put("/vm.create", Some(&dirty_config(&serial))).0, 204);
    assert_eq!(api.state(), "Created");
    assert_eq!(api.put("/vm.boot", None).0, 204);
    assert_eq!(api.state(), "Running");
    let (_, info) = api.get("/vm.info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["memory_actual_size"], 268435456);
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["config"]["payload"]["cmdline"], "workload=dirty mib=16 rate=16");
    wait_heartbeats(&serial, 3);
    assert_eq!(api.put("/vm.pause", None).0, 204);
    assert_eq!(api.state(), "Paused");
    assert_eq!(api.put("/vm.resume", None).0, 204);
    assert_eq!(api.state(), "Running");
    let (status, counters) = api.get("/vm.counters");
    assert_eq!(status, 200);
    let counters: serde_json::Value = serde_json::from_str(&counters).unwrap();
    assert!(counters["serial"]["tx_bytes"].as_u64().unwrap() > 0, "{counters}");
    assert!(counters["vcpu0"]["io_exits"].as_u64().unwrap() > 0, "{counters}");
    assert_eq!(api.put("/vm.reboot", None).0, 204);
    assert_eq!(api.state(), "Running");
    assert_eq!(api.put("/vm.shutdown", None).0, 204);
    assert_eq!(api.state(), "Shutdown");
    assert_eq!(api.put("/vm.delete", None).0, 204);
    assert_eq!(api.get("/vm.info").0, 404);
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
    assert!(!api.socket.exists(), "covm left its socket behind");
}

#[test]
fn heartbeat_stops_while_paused_and_continues_after_resume() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("api-pause");
    let serial = dir.path("serial.txt");
    let (child, api) = start(&dir, &[]);
    assert_eq!(api.put("/vm.create", Some(&dirty_config(&serial))).0, 204);
    assert_eq!(api.put("/vm.boot", None).0, 204);
    wait_heartbeats(&serial, 5);
    assert_eq!(api.put("/vm.pause", None).0, 204);
    let paused_at = heartbeats(&serial);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(heartbeats(&serial), paused_at, "the guest ran while paused");
    assert_eq!(api.put("/vm.resume", None).0, 204);
    wait_heartbeats(&serial, paused_at + 5);
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
}

#[test]
fn every_error_case_answers_and_covm_keeps_serving() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("api-errors");
    let serial = dir.path("serial.txt");
    let (child, api) = start(&dir, &[]);
    let expect = |got: (u16, String), status: u16, needle: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert!(got.1.contains(needle), "expected {needle:?} in {:?}", got.1);
    };
    // Not created yet.
    expect(api.get("/vm.info"), 404, "no VM is created");
    expect(api.put("/vm.boot", None), 404, "no VM is created");
    expect(api.put("/vm.pause", None), 404, "no VM is created");
    // Wrong method, unknown path.
    expect(api.call(Method::POST, "/vm.boot", None), 405, "method not allowed");
    expect(api.call(Method::GET, "/vm.pause", None), 405, "method not allowed");
    expect(api.get("/vm.nonexistent"), 404, "no endpoint /api/v1/vm.nonexistent");
    expect(api.get("/api/v2/vmm.ping"), 404, "no endpoint");
    // Bad bodies.
    expect(api.put("/vm.create", Some("{not json")), 400, "invalid VmConfig");
    expect(
        api.put(
            "/vm.create",
            Some(r#"{"payload": {}, "disks": [{"path": "/nonexistent.img"}]}"#),
        ),
        400,
        "--disk /nonexistent.img: cannot open it",
    );
    expect(
        api.put("/vm.create", Some(r#"{"payload": {}, "cpus": {"boot_vcpus": 64}}"#)),
        400,
        "1 to 32",
    );
    let huge = format!(r#"{{"payload": {{"cmdline": "{}"}}}}"#, "x".repeat(3 << 19));
    expect(api.put("/vm.create", Some(&huge)), 400, "larger than 1048576 bytes");
    // Invalid in the current state.
    assert_eq!(api.put("/vm.create", Some(&dirty_config(&serial))).0, 204);
    expect(
        api.put("/vm.create", Some(&dirty_config(&serial))),
        405,
        "already created",
    );
    expect(api.put("/vm.resume", None), 405, "it is Created, not Paused");
    expect(api.put("/vm.shutdown", None), 405, "it is Created");
    expect(api.put("/vm.power-button", None), 405, "it is Created");
    assert_eq!(api.put("/vm.boot", None).0, 204);
    expect(api.put("/vm.boot", None), 405, "already booted");
    expect(api.put("/vm.resume", None), 405, "it is Running, not Paused");
    assert_eq!(api.put("/vm.pause", None).0, 204);
    expect(api.put("/vm.pause", None), 405, "it is Paused, not Running");
    assert_eq!(api.put("/vm.resume", None).0, 204);
    // Still serving, guest still fine.
    assert_eq!(api.get("/vmm.ping").0, 200);
    wait_heartbeats(&serial, 3);
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
}

#[test]
fn fifty_concurrent_clients_while_the_guest_runs() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("api-storm");
    let serial = dir.path("serial.txt");
    let (child, api) = start(&dir, &[]);
    assert_eq!(api.put("/vm.create", Some(&dirty_config(&serial))).0, 204);
    assert_eq!(api.put("/vm.boot", None).0, 204);
    wait_heartbeats(&serial, 3);
    let before = heartbeats(&serial);
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let socket = api.socket.clone();
            std::thread::spawn(move || {
                let api = Api { socket };
                for _ in 0..20 {
                    assert_eq!(api.get("/vmm.ping").0, 200);
                    assert_eq!(api.get("/vm.info").0, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    // The guest kept running through 2000 requests: more heartbeats, no FAIL.
    wait_heartbeats(&serial, before + 3);
    assert_eq!(api.state(), "Running");
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
}

#[test]
fn socket_is_private_exclusive_and_stale_files_are_replaced() {
    if !kvm_available() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("api-socket");
    // A stale socket (its server gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(dir.path("api.sock")).unwrap());
    assert!(dir.path("api.sock").exists());
    let (child, api) = start(&dir, &[]);
    let mode = std::fs::metadata(&api.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A socket in use by a live covm is refused.
    let out = covm().arg("--api-socket").arg(&api.socket).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is in use by a running covm"), "{}", stderr(&out));
    assert_eq!(api.get("/vmm.ping").0, 200, "the first covm was disturbed");
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
}

#[test]
fn command_line_vm_boots_at_once_and_serves_the_api() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("api-cli");
    let serial = dir.path("serial.txt");
    let serial_arg = format!("file={}", serial.display());
    let (child, api) = start(
        &dir,
        &[
            "--cpus",
            "boot=2",
            "--cmdline",
            "workload=dirty mib=16 rate=16",
            "--serial",
            &serial_arg,
        ],
    );
    assert_eq!(api.state(), "Running");
    wait_heartbeats(&serial, 3);
    assert_eq!(api.put("/vm.pause", None).0, 204);
    assert_eq!(api.put("/vm.resume", None).0, 204);
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
}

#[test]
fn guest_power_off_ends_covm_with_the_api_too() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("api-poweroff");
    let (child, api) = start(&dir, &[]);
    assert_eq!(
        api.put("/vm.create", Some(r#"{"payload": {"cmdline": "workload=hello"}}"#))
            .0,
        204
    );
    assert_eq!(api.put("/vm.boot", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
}

#[test]
fn inherited_socket_descriptor_is_served() {
    if !kvm_available() {
        return;
    }
    use std::os::fd::AsRawFd;
    let dir = Scratch::new("api-fd");
    let path = dir.path("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // Let the child inherit it, as a supervisor (systemd, Kata) would pass it.
    // SAFETY: clearing FD_CLOEXEC on a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let child = Process(
        covm()
            .arg("--api-socket")
            .arg(format!("fd={fd}"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(listener);
    let api = Api { socket: path.clone() };
    api.wait_ready();
    assert_eq!(
        api.put("/vm.create", Some(r#"{"payload": {"cmdline": "workload=hello"}}"#))
            .0,
        204
    );
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(exit_status(child), Some(0));
    // covm did not create this socket, so it leaves the file alone.
    assert!(path.exists());
}
