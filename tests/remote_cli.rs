//! covm-remote against a real covm, one subcommand at a time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn remote(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_covm-remote"))
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// The covm binary built beside covm-remote by the same workspace build.
fn covm_binary() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_covm-remote")).with_file_name("covm");
    if path.exists() {
        Some(path)
    } else {
        covm_test_support::skip(format!(
            "{} is not built (run the workspace's tests: cargo test --workspace)",
            path.display()
        ));
        None
    }
}

use covm_test_support::kvm_usable;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

fn refused(out: &Output, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn start_covm(covm: &Path, socket: &Path) -> Child {
    let child = Command::new(covm)
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !remote(socket, &["ping"]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(20), "covm did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn every_subcommand_against_covm() {
    let Some(covm) = covm_binary() else { return };
    if !kvm_usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("covm-remote-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let mut child = start_covm(&covm, &socket);

    let ping: serde_json::Value = serde_json::from_str(&ok(&remote(&socket, &["ping"]))).unwrap();
    assert_eq!(ping["pid"], child.id());
    refused(&remote(&socket, &["info"]), "404");

    let config = dir.join("vm.json");
    let serial = dir.join("serial.txt");
    std::fs::write(
        &config,
        format!(
            r#"{{"cpus": {{"boot_vcpus": 1, "max_vcpus": 1}}, "payload": {{"cmdline": "workload=dirty mib=8 rate=8"}},
                "serial": {{"mode": "File", "file": "{}"}}}}"#,
            serial.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    assert_eq!(ok(&remote(&socket, &["create", &config])), "");
    let state = |socket: &Path| -> String {
        let info: serde_json::Value = serde_json::from_str(&ok(&remote(socket, &["info"]))).unwrap();
        info["state"].as_str().unwrap().to_string()
    };
    assert_eq!(state(&socket), "Created");
    ok(&remote(&socket, &["boot"]));
    assert_eq!(state(&socket), "Running");
    let counters: serde_json::Value = serde_json::from_str(&ok(&remote(&socket, &["counters"]))).unwrap();
    assert!(counters["vcpu0"].is_object(), "{counters}");
    ok(&remote(&socket, &["pause"]));
    assert_eq!(state(&socket), "Paused");
    refused(&remote(&socket, &["pause"]), "it is Paused, not Running");
    ok(&remote(&socket, &["resume"]));
    ok(&remote(&socket, &["reboot"]));
    assert_eq!(state(&socket), "Running");
    ok(&remote(&socket, &["shutdown"]));
    assert_eq!(state(&socket), "Shutdown");
    refused(&remote(&socket, &["power-button"]), "it is Shutdown");
    ok(&remote(&socket, &["delete"]));
    refused(&remote(&socket, &["info"]), "no VM is created");
    refused(
        &remote(&socket, &["create", "/nonexistent/vm.json"]),
        "/nonexistent/vm.json",
    );
    ok(&remote(&socket, &["shutdown-vmm"]));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "covm did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    refused(&remote(&socket, &["ping"]), "does not exist");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn send_and_receive_migration_follow_to_the_end() {
    let Some(covm) = covm_binary() else { return };
    if !kvm_usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("covm-remote-mig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (src_sock, dst_sock) = (dir.join("src.sock"), dir.join("dst.sock"));
    let dst_serial = dir.join("dst.txt");
    let mut dst = Command::new(&covm)
        .arg("--api-socket")
        .arg(&dst_sock)
        .arg("--serial")
        .arg(format!("file={}", dst_serial.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut src = Command::new(&covm)
        .args([
            "--cpus",
            "boot=2",
            "--cmdline",
            "workload=dirty mib=32 rate=32",
            "--serial",
            "null",
        ])
        .arg("--api-socket")
        .arg(&src_sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for sock in [&src_sock, &dst_sock] {
        let start = Instant::now();
        while !remote(sock, &["ping"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(20), "covm did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let url = format!("unix:{}", dir.join("mig.sock").display());
    assert_eq!(ok(&remote(&dst_sock, &["receive-migration", &url])), "");
    refused(
        &remote(&src_sock, &["send-migration", "--local", &url]),
        "local migration",
    );
    let out = remote(&src_sock, &["send-migration", "--downtime-ms", "300", &url]);
    let report: serde_json::Value = serde_json::from_str(&ok(&out)).expect("the report as JSON");
    assert!(
        report["downtime_ms"].is_number() || report["completed"] == true,
        "{report}"
    );
    assert_eq!(src.wait().unwrap().code(), Some(0), "the source exits after the commit");
    let info: serde_json::Value = serde_json::from_str(&ok(&remote(&dst_sock, &["info"]))).unwrap();
    assert_eq!(info["state"], "Running");
    ok(&remote(&dst_sock, &["shutdown-vmm"]));
    let _ = dst.wait();
    assert!(!std::fs::read_to_string(&dst_serial)
        .unwrap_or_default()
        .contains("FAIL"));
    let _ = std::fs::remove_dir_all(&dir);
}
