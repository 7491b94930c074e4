//! covm's virtio-net over a TAP, driven by the built-in firmware's `net`
//! workload (virtio-drivers' net driver under smoltcp, in ring 3), in a
//! network namespace each test creates for itself: no frame leaves it.
//! The host side is a Python client inside the namespace: ICMP echo
//! (raw socket), a TCP echo stream of random data verified byte for byte,
//! UDP echo. Skips, saying why, without `ip` (iproute2), python3 or the
//! right to create namespaces.

mod common;
#[path = "common/proxy.rs"]
#[allow(dead_code)]
mod proxy;
use common::api::Api;
use common::netns::{progress, python_usable, run_client, Netns, STREAM};
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// covm in `ns` with its API on `dir/api.sock`, serial in `dir/serial.txt`.
fn covm_in(ns: &Netns, dir: &Scratch, args: &[&str]) -> (Process, Api, std::path::PathBuf) {
    let serial = dir.path("serial.txt");
    let (process, api) = common::netns::covm_in(ns, &dir.path("api.sock"), &serial, args);
    (process, api, serial)
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
    let guest_serial = || std::fs::read_to_string(&serial).unwrap_or_default();
    run_client(&ns, "10.0.9.2", 1 << 20, guest_serial);
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
    // A migration that fails (nothing listens at the destination) leaves
    // the guest running here with its network.
    let (status, body) = api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#));
    assert_eq!(status, 204, "{body}");
    api.wait_migration_error();
    run_client(&ns, "10.0.9.2", 65536, guest_serial);
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
    run_client(&ns, "10.0.9.2", 65536, || {
        std::fs::read_to_string(&serial).unwrap_or_default()
    });
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(20)), Some(0));
}

/// Opens TAP `argv[1]` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) as descriptor 3
/// and runs the rest of the arguments with it: a client passing its TAP.
const WITH_TAP_FD: &str = r#"
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000 | 0x4000))
if fd != 3:
    os.dup2(fd, 3)
os.set_inheritable(3, True)
os.execv(sys.argv[2], sys.argv[2:])
"#;

#[test]
fn ch_remote_adds_an_interface_whose_tap_descriptor_it_passes() {
    if !kvm_available() || !python_usable() {
        return;
    }
    let Some(ch_remote) = common::ch_remote::binary() else {
        return;
    };
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::new("net-fd") else { return };
    let dir = Scratch::new("net-fd");
    let (mut covm, api, _) = covm_in(&ns, &dir, &[]);
    let serial = dir.path("guest.txt");
    let config = serde_json::json!({
        "payload": {"cmdline": "workload=net ip=10.0.9.2/24"},
        "serial": {"mode": "File", "file": serial},
    });
    assert_eq!(api.put("/vm.create", Some(&config.to_string())).0, 204);
    // ch-remote passes descriptor 3 (the TAP the wrapper opened) with
    // SCM_RIGHTS, as Kata's driver passes its TAP.
    let socket = dir.path("api.sock");
    let add = |args: &[&str]| {
        let mut all = vec![
            "python3",
            "-c",
            WITH_TAP_FD,
            "covmtap9",
            ch_remote.to_str().unwrap(),
            "--api-socket",
            socket.to_str().unwrap(),
            "add-net",
        ];
        all.extend_from_slice(args);
        ns.command(&all).output().unwrap()
    };
    // Refused (the id is taken): the passed descriptor is closed, so the
    // TAP, not persistent, goes away with the wrapper.
    let taken = add(&["fd=[3],mac=52:54:00:00:09:09,id=_disk0,num_queues=4"]);
    assert!(!taken.status.success(), "{}", String::from_utf8_lossy(&taken.stdout));
    let links = ns.run(&["ip", "-br", "link"]);
    assert!(!links.contains("covmtap9"), "{links}");
    let out = add(&["fd=[3],mac=52:54:00:00:09:09,id=eth9"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // covm holds the TAP now (the wrapper exited): the host side is the
    // test's to address.
    ns.run(&["ip", "addr", "add", "10.0.9.1/24", "dev", "covmtap9"]);
    ns.run(&["ip", "link", "set", "covmtap9", "up"]);
    let info = api.info();
    assert_eq!(info["config"]["net"][0]["id"], "eth9", "{info}");
    assert_eq!(api.put("/vm.boot", None).0, 204);
    let text = wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("heartbeat 1 "));
    assert!(text.contains("mac 52:54:00:00:09:09 ip 10.0.9.2/24"), "serial:\n{text}");
    run_client(&ns, "10.0.9.2", 65536, || {
        std::fs::read_to_string(&serial).unwrap_or_default()
    });
    assert_eq!(api.put("/vmm.shutdown", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(20)), Some(0));
}

#[test]
fn a_tcp_stream_survives_a_live_migration() {
    if !kvm_available() || !python_usable() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::new("net-mig") else { return };
    let dir = Scratch::new("net-mig");
    let src_dir = Scratch::new("net-mig-src");
    let (mut src, src_api, src_serial) = covm_in(
        &ns,
        &src_dir,
        &[
            "--cpus",
            "boot=2",
            "--net",
            "tap=covmtap2,ip=10.0.9.1,mask=255.255.255.0,mac=52:54:00:00:09:05",
            "--cmdline",
            "workload=net ip=10.0.9.2/24",
        ],
    );
    let (mut dst, dst_api, dst_serial) = covm_in(&ns, &dir, &[]);
    wait_for_serial(&src_serial, Duration::from_secs(30), |t| t.contains("heartbeat 3 "));
    let progress_file = dir.path("progress");
    let total = 8u64 << 20;
    let client = ns
        .command(&[
            "python3",
            "-c",
            STREAM,
            "10.0.9.2",
            "7",
            &total.to_string(),
            progress_file.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-stream: at least 1 MiB echoed, most of it still to come.
    let start = std::time::Instant::now();
    while progress(&progress_file) < 1 << 20 {
        assert!(start.elapsed() < Duration::from_secs(60), "the stream did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("unix:{}", dir.path("migration.sock").display());
    let receive = format!(r#"{{"receiver_url": "{url}"}}"#);
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let at_migration = progress(&progress_file);
    let send = format!(r#"{{"destination_url": "{url}", "downtime_ms": 300}}"#);
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    assert_eq!(
        wait_exit(&mut src, Duration::from_secs(120)),
        Some(0),
        "the source must exit 0"
    );
    assert!(
        at_migration < total / 2,
        "the stream was nearly done before the migration ({at_migration} bytes)"
    );
    let out = wait_with_deadline(client, Duration::from_secs(120));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains(&format!("stream {total} bytes ok")),
        "{report}\n{}\nsource:\n{}\ndestination:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&src_serial).unwrap_or_default(),
        std::fs::read_to_string(&dst_serial).unwrap_or_default()
    );
    assert_eq!(dst_api.state(), "Running");
    let last = *heartbeat_numbers(&src_serial).last().unwrap();
    let text = wait_for_serial(&dst_serial, Duration::from_secs(30), |_| {
        heartbeat_numbers(&dst_serial).iter().any(|&n| n > last + 3)
    });
    assert!(!text.contains("FAIL"), "destination:\n{text}");
    // The destination holds the TAP now, and lets it go with itself.
    assert_eq!(dst_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut dst, Duration::from_secs(30)), Some(0));
    let links = ns.run(&["ip", "-br", "link"]);
    assert!(!links.contains("covmtap2"), "{links}");
}

#[test]
fn a_migration_cut_after_the_pause_gives_the_tap_back() {
    if !kvm_available() || !python_usable() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::new("net-cut") else { return };
    let dir = Scratch::new("net-cut");
    let src_dir = Scratch::new("net-cut-src");
    let (mut src, src_api, src_serial) = covm_in(
        &ns,
        &src_dir,
        &[
            "--net",
            "tap=covmtap3,ip=10.0.9.1,mask=255.255.255.0",
            "--cmdline",
            "workload=net ip=10.0.9.2/24",
        ],
    );
    let (_dst, dst_api, _) = covm_in(&ns, &dir, &[]);
    wait_for_serial(&src_serial, Duration::from_secs(30), |t| t.contains("heartbeat 2 "));
    let receiver = dir.path("migration.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, receiver.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    // The connection dies with the VM's state on the wire: the source is
    // paused by then and has let its TAP go.
    const KIND_STATE: u16 = 7;
    let proxy = proxy::Proxy::start(
        &dir.path("proxy.sock"),
        &receiver,
        Box::new(|f| {
            if f.kind == KIND_STATE {
                proxy::Verdict::Cut
            } else {
                proxy::Verdict::Send(vec![f])
            }
        }),
        proxy::pass(),
    );
    let send = format!(r#"{{"destination_url": "unix:{}"}}"#, proxy.path.display());
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    let error = src_api.wait_migration_error();
    let sent = proxy.to_destination.clone();
    proxy.join();
    // It did get that far: the state was on its way (so the source had
    // paused and let the TAP go) when the connection was cut.
    let sent = sent.lock().unwrap().clone();
    assert!(
        proxy::frames(&sent).iter().any(|(kind, _)| *kind == KIND_STATE),
        "the migration failed before the pause: {error}"
    );
    // The source has its TAP back and answers on it.
    let link = ns.run(&["ip", "link", "show", "covmtap3"]);
    assert!(link.contains(",UP"), "{link}");
    run_client(&ns, "10.0.9.2", 65536, || {
        std::fs::read_to_string(&src_serial).unwrap_or_default()
    });
    assert_eq!(src_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut src, Duration::from_secs(30)), Some(0));
    // It was the source's again: gone with it, not left persistent.
    let links = ns.run(&["ip", "-br", "link"]);
    assert!(!links.contains("covmtap3"), "{links}");
}
