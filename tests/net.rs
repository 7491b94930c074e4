//! covm's virtio-net over a TAP, driven by the built-in firmware's `net`
//! workload (virtio-drivers' net driver under smoltcp, in ring 3), in a
//! network namespace each test creates for itself: no frame leaves it.
//! The host side is a Python client inside the namespace: ICMP echo
//! (raw socket), a TCP echo stream of random data verified byte for byte,
//! UDP echo. Skips, saying why, without `ip` (iproute2), python3 or the
//! right to create namespaces.

mod common;
use common::api::Api;
use common::netns::{python_usable, Netns, CLIENT};
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// covm in `ns` with its API on `dir/api.sock`, serial in `dir/serial.txt`.
fn covm_in(ns: &Netns, dir: &Scratch, args: &[&str]) -> (Process, Api, std::path::PathBuf) {
    let socket = dir.path("api.sock");
    let serial = dir.path("serial.txt");
    let child = ns
        .command(&[env!("CARGO_BIN_EXE_covm")])
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let api = Api { socket };
    api.wait_ready();
    (Process(child), api, serial)
}

fn net_heartbeats(serial: &Path) -> usize {
    heartbeats(serial)
}

#[test]
fn the_guest_answers_ping_tcp_and_udp_over_a_tap() {
    if !kvm_available() || !python_usable() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::new("net") else { return };
    let dir = Scratch::new("net");
    let (mut covm, api, serial) = covm_in(
        &ns,
        &dir,
        &[
            "--net",
            "tap=covmtap0,ip=10.0.9.1,mask=255.255.255.0,mac=52:54:00:00:09:02,id=eth0",
            "--cmdline",
            "workload=net ip=10.0.9.2/24 port=7",
        ],
    );
    let text = wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 1 "));
    assert!(
        text.contains("net: 00:01.0 mac 52:54:00:00:09:02 ip 10.0.9.2/24 port 7"),
        "serial:\n{text}"
    );
    // covm created the TAP in the namespace, addressed and up.
    let addr = ns.run(&["ip", "-br", "addr", "show", "covmtap0"]);
    assert!(addr.contains("10.0.9.1/24"), "{addr}");
    let link = ns.run(&["ip", "link", "show", "covmtap0"]);
    assert!(link.contains(",UP"), "{link}");
    let out = ns
        .command(&["python3", "-c", CLIENT, "10.0.9.2", "7", "1048576"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}\nserial:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    for line in ["ping 0 ok", "ping 2 ok", "tcp echo 1048576 bytes ok", "udp echo ok"] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }
    let info: serde_json::Value = serde_json::from_str(&api.get("/vm.info").1).unwrap();
    assert_eq!(
        info["device_tree"]["_virtio-pci-eth0"]["pci_bdf"], "0000:00:01.0",
        "{info}"
    );
    let counters: serde_json::Value = serde_json::from_str(&api.get("/vm.counters").1).unwrap();
    let eth0 = &counters["eth0"];
    assert!(eth0["rx_bytes"].as_u64().unwrap() >= 1 << 20, "{counters}");
    assert!(eth0["tx_bytes"].as_u64().unwrap() >= 1 << 20, "{counters}");
    assert_eq!(eth0["tx_dropped"], 0, "{counters}");
    // Not migratable yet: refused by name, the VM untouched.
    let (status, body) = api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("network interfaces (--net)"), "{body}");
    assert_eq!(api.state(), "Running");
    let before = net_heartbeats(&serial);
    assert!(before > 0);
    assert_eq!(api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(30)), Some(0));
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(!text.contains("FAIL"), "serial:\n{text}");
    // The TAP went with covm.
    let links = ns.run(&["ip", "-br", "link"]);
    assert!(!links.contains("covmtap0"), "{links}");
}

#[test]
fn bad_net_options_are_refused_by_name() {
    for (args, needle) in [
        (vec!["--net", "tap=a,fd=3"], "give tap= or fd=, not both"),
        (vec!["--net", "mac=01:00:5e:00:00:01"], "multicast"),
        (
            vec!["--net", "tap=this-name-is-far-too-long"],
            "an interface name is 1 to 15 bytes",
        ),
        (vec!["--net", "fd=1000"], "fd=1000: not an open descriptor"),
        (vec!["--net", "tap=x,vhost_user=on"], "vhost-user"),
        (
            vec!["--net", "tap=a,id=n", "--net", "tap=b,id=n"],
            "two devices have the id 'n'",
        ),
    ] {
        let out = covm().args(&args).args(["--serial", "null"]).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
}

#[test]
fn an_interface_from_ch_s_vm_config_carries_traffic() {
    if !kvm_available() || !python_usable() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::new("net-api") else { return };
    let dir = Scratch::new("net-api");
    let (mut covm, api, _) = covm_in(&ns, &dir, &[]);
    let serial = dir.path("guest.txt");
    // `net` as CH's own vm.info writes it (its defaults included).
    let config = serde_json::json!({
        "payload": {"cmdline": "workload=net ip=10.0.9.2/24"},
        "serial": {"mode": "File", "file": serial},
        "console": {"mode": "Off"},
        "net": [{"tap": "covmtap1", "ip": "10.0.9.1", "mask": "255.255.255.0",
                 "mac": "52:54:00:00:09:04", "iommu": false, "num_queues": 2, "queue_size": 256,
                 "vhost_user": false, "vhost_mode": "Client", "id": "net1", "pci_segment": 0,
                 "offload_tso": true, "offload_ufo": true, "offload_csum": true}]
    });
    let (status, body) = api.put("/vm.create", Some(&config.to_string()));
    assert_eq!(status, 204, "{body}");
    let info: serde_json::Value = serde_json::from_str(&api.get("/vm.info").1).unwrap();
    assert_eq!(info["config"]["net"][0]["mac"], "52:54:00:00:09:04", "{info}");
    assert_eq!(info["config"]["net"][0]["tap"], "covmtap1", "{info}");
    assert_eq!(api.put("/vm.boot", None).0, 204);
    let text = wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 1 "));
    assert!(text.contains("mac 52:54:00:00:09:04 ip 10.0.9.2/24"), "serial:\n{text}");
    let out = ns
        .command(&["python3", "-c", CLIENT, "10.0.9.2", "7", "65536"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("tcp echo 65536 bytes ok") && report.contains("udp echo ok"),
        "{report}"
    );
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(20)), Some(0));
}
