//! covm's virtio-vsock in its hybrid form, driven by the built-in
//! firmware's `vsock` workload (virtio-drivers' socket driver and
//! connection manager, in ring 3): host processes reach the guest's echo
//! listener with `CONNECT <port>` on covm's UNIX socket; the guest's
//! client streams a pattern to `<socket>_<port>`, where the test echoes
//! it, and checks what comes back.

mod common;
use common::api::{covm_named, destination, Api};
use common::vsock::{connect, echo_server, echo_through, rounds, wait_rounds};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn counter(api: &Api, device: &str, name: &str) -> u64 {
    let c: serde_json::Value = serde_json::from_str(&api.get("/vm.counters").1).unwrap();
    c[device][name]
        .as_u64()
        .unwrap_or_else(|| panic!("{device}.{name} in {c}"))
}

#[test]
fn host_and_guest_connect_both_ways_and_bad_requests_are_refused() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("vsock");
    let socket = dir.path("v.sock");
    echo_server(dir.path("v.sock_5000"));
    let vsock = format!("cid=3,socket={}", socket.display());
    let (mut covm, api, serial) = covm_named(
        &dir,
        "vm",
        &[
            "--vsock",
            &vsock,
            "--cmdline",
            "workload=vsock port=1234 peer=5000 kib=256",
        ],
    );
    let text = wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 1 "));
    assert!(
        text.contains("vsock: 00:01.0 cid 3 echo port 1234 client on"),
        "serial:\n{text}"
    );
    // The guest's client: streams verified through the host's echo.
    wait_rounds(&serial, 2);
    // Host → guest: the echo listener, several connections at once.
    let mut a = connect(&socket, 1234).unwrap();
    let mut b = connect(&socket, 1234).unwrap();
    echo_through(&mut a, 1 << 20, 1);
    echo_through(&mut b, 300_000, 2);
    echo_through(&mut a, 5, 3);
    // Refusals: a port nobody listens on, garbage, an overlong line.
    let e = connect(&socket, 9).unwrap_err();
    assert!(e.starts_with("closed"), "{e}");
    for garbage in ["HELLO\n", "CONNECT x\n", &"C".repeat(100)] {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(garbage.as_bytes());
        let mut buf = [0u8; 16];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "{garbage:?} got an answer");
    }
    assert!(counter(&api, "_vsock0", "refused") >= 4);
    assert!(counter(&api, "_vsock0", "connections") >= 4);
    let info = api.info();
    assert_eq!(info["config"]["vsock"]["cid"], 3, "{info}");
    assert_eq!(
        info["device_tree"]["_virtio-pci-_vsock0"]["pci_bdf"], "0000:00:01.0",
        "{info}"
    );
    // A migration that fails leaves the source with its connections.
    let (status, body) = api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#));
    assert_eq!(status, 204, "{body}");
    api.wait_migration_error();
    echo_through(&mut a, 100_000, 4);
    let mut c = connect(&socket, 1234).unwrap();
    echo_through(&mut c, 1000, 5);
    let before = rounds(&serial);
    wait_rounds(&serial, before + 1);
    assert_eq!(api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(30)), Some(0));
    no_fail(&serial);
    assert!(!socket.exists(), "covm left its socket behind");
}

#[test]
fn open_connections_are_reset_across_a_migration_and_listeners_survive() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("vsock-mig");
    let socket = dir.path("v.sock");
    echo_server(dir.path("v.sock_5000"));
    let vsock = format!("cid=7,socket={}", socket.display());
    let (mut src, src_api, src_serial) = covm_named(
        &dir,
        "src",
        &[
            "--cpus",
            "boot=2",
            "--vsock",
            &vsock,
            "--cmdline",
            "workload=vsock port=1234 peer=5000 kib=512",
        ],
    );
    let (mut dst, dst_api, dst_serial) = destination(&dir, "dst", &[]);
    wait_rounds(&src_serial, 1);
    let mut open = connect(&socket, 1234).unwrap();
    echo_through(&mut open, 10_000, 1);
    let url = format!("unix:{}", dir.path("migration.sock").display());
    assert_eq!(
        dst_api
            .put(
                "/vm.receive-migration",
                Some(&format!(r#"{{"receiver_url": "{url}"}}"#))
            )
            .0,
        204
    );
    let send = format!(r#"{{"destination_url": "{url}"}}"#);
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    assert_eq!(wait_exit(&mut src, Duration::from_secs(120)), Some(0));
    // The host end of the open connection went with the source.
    let mut buf = [0u8; 16];
    open.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(open.read(&mut buf), Ok(0) | Err(_)));
    // The guest's listener moved with it: a new connection reaches it at
    // the destination, through the same path.
    let start = Instant::now();
    let mut fresh = loop {
        match connect(&socket, 1234) {
            Ok(s) => break s,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(30), "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    echo_through(&mut fresh, 200_000, 2);
    // The client's stream round in flight was reset; it starts again and
    // verifies whole rounds at the destination.
    let at_switch = rounds(&dst_serial);
    wait_rounds(&dst_serial, at_switch + 2);
    let text = std::fs::read_to_string(&dst_serial).unwrap();
    assert!(!text.contains("FAIL"), "destination:\n{text}");
    assert_eq!(dst_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut dst, Duration::from_secs(30)), Some(0));
    assert!(!socket.exists());
}

#[test]
fn a_vsock_device_from_the_api_is_checked_and_works() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("vsock-api");
    let socket = dir.path("v.sock");
    let (mut covm, api, _) = covm_named(&dir, "vm", &[]);
    let serial = dir.path("guest.txt");
    let config = serde_json::json!({
        "payload": {"cmdline": "workload=vsock port=99"},
        "serial": {"mode": "File", "file": serial},
    });
    assert_eq!(api.put("/vm.create", Some(&config.to_string())).0, 204);
    let add = serde_json::json!({"cid": 4, "socket": socket}).to_string();
    let (status, body) = api.put("/vm.add-vsock", Some(&add));
    assert_eq!(status, 204, "{body}");
    let (status, body) = api.put("/vm.add-vsock", Some(&add));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("one at most"), "{body}");
    let (status, body) = api.put("/vm.add-vsock", Some(r#"{"cid": 1, "socket": "/x"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("VsockConfig.cid=1"), "{body}");
    assert_eq!(api.put("/vm.boot", None).0, 204);
    wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 1 "));
    let mut s = connect(&socket, 99).unwrap();
    echo_through(&mut s, 50_000, 9);
    let (status, body) = api.put("/vm.add-vsock", Some(&add));
    assert_eq!(status, 405, "{body}");
    assert_eq!(api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(30)), None.or(Some(0)));
    no_fail(&serial);
}

#[test]
fn bad_vsock_options_are_refused_by_name() {
    let dir = Scratch::new("vsock-bad");
    let plain = dir.path("plain");
    std::fs::write(&plain, b"x").unwrap();
    let not_socket = format!("cid=3,socket={}", plain.display());
    for (args, needle) in [
        (vec!["--vsock", "cid=2,socket=/tmp/x"], "0-2 are reserved"),
        (vec!["--vsock", "socket=/tmp/x"], "cid"),
        (vec!["--vsock", "cid=3"], "socket"),
        (vec!["--vsock", "cid=3,socket=/tmp/x,iommu=on"], "IOMMU"),
        (vec!["--vsock", &not_socket], "not a socket"),
    ] {
        let out = covm().args(&args).args(["--serial", "null"]).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
}
