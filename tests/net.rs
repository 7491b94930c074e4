//! covm's virtio-net over a TAP, driven by the built-in firmware's `net`
//! workload (virtio-drivers' net driver under smoltcp, in ring 3), in a
//! network namespace each test creates for itself: no frame leaves it.
//! The host side is a Python client inside the namespace: ICMP echo
//! (raw socket), a TCP echo stream of random data verified byte for byte,
//! UDP echo. Skips, saying why, without `ip` (iproute2), python3 or the
//! right to create namespaces.

mod common;
use common::api::Api;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("covm-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                covm_test_support::skip(format!(
                    "cannot create a network namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                return None;
            }
            Err(e) => {
                covm_test_support::skip(format!("ip (iproute2) cannot be run: {e}"));
                return None;
            }
        }
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        // Only the test's frames on the TAP.
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        Some(ns)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The host side, in the namespace: ping, then `tcp_bytes` of random data
/// echoed over TCP in chunks and compared, then one UDP datagram. Prints
/// one line per check.
const CLIENT: &str = r#"
import os, socket, struct, sys, time
guest, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def checksum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff

icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
icmp.settimeout(5)
for seq in range(3):
    body = struct.pack("!HH", 0x4321, seq) + b"covm ping %d" % seq
    packet = struct.pack("!BBH", 8, 0, 0) + body
    packet = struct.pack("!BBH", 8, 0, checksum(packet)) + body
    t = time.time()
    icmp.sendto(packet, (guest, 0))
    while True:
        reply, addr = icmp.recvfrom(2048)
        ihl = (reply[0] & 15) * 4
        if addr[0] == guest and reply[ihl] == 0 and reply[ihl + 4:] == body:
            break
    print("ping %d ok %.3f ms" % (seq, (time.time() - t) * 1e3))

data = os.urandom(total)
s = socket.create_connection((guest, port), timeout=10)
got = bytearray()
for at in range(0, total, 8192):
    s.sendall(data[at:at + 8192])
    while len(got) < min(at + 8192, total):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the guest closed the connection")
        got += chunk
print("tcp echo %d bytes %s" % (total, "ok" if bytes(got) == data else "DIFFER"))
s.close()

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"covm udp echo", (guest, port))
reply, _ = u.recvfrom(2048)
print("udp echo %s" % ("ok" if reply == b"covm udp echo" else "DIFFER"))
"#;

fn python_usable() -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            covm_test_support::skip("python3 cannot be run here".to_string());
            false
        }
    }
}

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
