//! Network namespaces a test creates for itself, and the host-side
//! client that checks a guest's `net` workload from inside one: ICMP echo
//! (raw socket), a TCP echo stream of random data compared byte for byte,
//! UDP echo. Nothing sent leaves the namespace.

use std::path::Path;
use std::process::{Command, Stdio};

/// A network namespace, deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Option<Netns> {
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

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> String {
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
pub const CLIENT: &str = r#"
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

pub fn python_usable() -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ => {
            covm_test_support::skip("python3 cannot be run here".to_string());
            false
        }
    }
}

/// Runs [`CLIENT`] in `ns` against `guest`'s echo port 7 with `tcp_bytes`
/// of TCP; its report, which it checks for every line. `context` says
/// what to show on failure (the guest's serial output).
pub fn run_client(ns: &Netns, guest: &str, tcp_bytes: u64, context: impl Fn() -> String) -> String {
    let out = ns
        .command(&["python3", "-c", CLIENT, guest, "7", &tcp_bytes.to_string()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = [
        "ping 0 ok".to_string(),
        "ping 2 ok".to_string(),
        format!("tcp echo {tcp_bytes} bytes ok"),
        "udp echo ok".to_string(),
    ];
    assert!(
        out.status.success() && expected.iter().all(|l| report.contains(l.as_str())),
        "{report}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    report
}

/// A TCP echo stream of `total` random bytes in 16 KiB chunks, each
/// compared as it comes back; the bytes verified so far go to `progress`.
pub const STREAM: &str = r#"
import os, socket, sys
guest, port, total, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.create_connection((guest, port), timeout=20)
done = 0
while done < total:
    chunk = os.urandom(16384)
    s.sendall(chunk)
    got = b""
    while len(got) < len(chunk):
        part = s.recv(len(chunk) - len(got))
        if not part:
            sys.exit("the guest closed the connection after %d bytes" % done)
        got += part
    if got != chunk:
        sys.exit("the echo differs after %d bytes" % done)
    done += len(chunk)
    with open(progress, "w") as f:
        f.write(str(done))
print("stream %d bytes ok" % done)
"#;

pub fn progress(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// covm in `ns` with its API on `api`, its serial output in `serial`, and
/// `args`; once its API answers.
pub fn covm_in(ns: &Netns, api: &Path, serial: &Path, args: &[&str]) -> (super::Process, super::api::Api) {
    let child = ns
        .command(&[env!("CARGO_BIN_EXE_covm")])
        .arg("--api-socket")
        .arg(format!("path={}", api.display()))
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let api = super::api::Api { socket: api.into() };
    api.wait_ready();
    (super::Process(child), api)
}
