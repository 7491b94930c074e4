#!/usr/bin/env python3
"""Network benchmark: the built-in firmware's `net` workload (virtio-drivers'
net driver under smoltcp, in ring 3) on covm's virtio-net and on QEMU's
virtio-net-pci, each over a TAP in a network namespace of its own, and a
Python echo server on the namespace's loopback as the host's own ceiling,
in one run, rounds interleaved.

Measured from a Python client inside the namespace:
  - UDP round trip: 2000 echoes of 64 bytes one at a time (median and p99);
  - TCP echo throughput: 8 MiB in 64 KiB writes, read back concurrently.

Usage: python3 scripts/bench_net.py [--rounds 3]   (root; builds covm first)
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time

from covmkit.build import release

CLIENT = r'''
import os, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.5)
# Warm-up: the guest's stack drops the first reply while it resolves our
# address (smoltcp's ARP), so retry until one comes back.
for attempt in range(20):
    u.sendto(b"warm-up", (host, port))
    try:
        u.recvfrom(2048); break
    except socket.timeout:
        pass
u.settimeout(2)
rtts = []
for i in range(2000):
    t = time.perf_counter(); u.sendto(b"x" * 64, (host, port)); u.recvfrom(2048)
    rtts.append(time.perf_counter() - t)
rtts.sort()
total = 8 << 20
data = os.urandom(total)
s = socket.create_connection((host, port), timeout=20)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
got = bytearray()
def reader():
    while len(got) < total:
        chunk = s.recv(1 << 20)
        if not chunk: break
        got.extend(chunk)
t = time.perf_counter()
r = threading.Thread(target=reader); r.start()
for at in range(0, total, 65536): s.sendall(data[at:at + 65536])
r.join(); secs = time.perf_counter() - t
assert bytes(got) == data, "echo differs"
print("%.1f %.1f %.2f" % (rtts[len(rtts) // 2] * 1e6, rtts[int(len(rtts) * 0.99)] * 1e6, total / secs / 1e6))
'''

SERVER = r'''
import socket, threading, sys
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
def udp():
    while True:
        d, a = u.recvfrom(65536); u.sendto(d, a)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", port)); t.listen(1)
while True:
    c, _ = t.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
'''


def ns_run(ns, *args, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    done = subprocess.run(["ip", "netns", "exec", ns, *args], **kw)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:3])}... failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def measure(ns, host):
    out = ns_run(ns, "python3", "-c", CLIENT, host, "7", timeout=300).stdout
    p50, p99, mbps = (float(x) for x in out.split())
    return {"p50": p50, "p99": p99, "mbps": mbps}


def fresh(path):
    """`path`, removed: a round must not read the last one's output."""
    if os.path.exists(path):
        os.unlink(path)
    return path


def wait_serial(path, needle, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and needle in open(path).read():
            return
        time.sleep(0.05)
    sys.exit(f"{path}: no {needle!r}")


def covm_round(ns, work):
    serial = fresh(os.path.join(work, "covm.txt"))
    p = subprocess.Popen(["ip", "netns", "exec", ns, release().covm, "--serial", f"file={serial}",
                          "--net", "tap=bench0,ip=10.0.9.1,mask=255.255.255.0",
                          "--cmdline", "workload=net ip=10.0.9.2/24"], stderr=subprocess.DEVNULL)
    try:
        wait_serial(serial, "heartbeat 2 ")
        return measure(ns, "10.0.9.2")
    finally:
        p.kill(); p.wait()


def qemu_round(ns, work, qemu):
    serial = fresh(os.path.join(work, "qemu.txt"))
    p = subprocess.Popen(["ip", "netns", "exec", ns, qemu, "-accel", "kvm", "-machine", "microvm,pcie=on",
                          "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", "512M", "-nographic",
                          "-no-reboot", "-nodefaults", "-serial", f"file:{serial}",
                          "-kernel", release().firmware_elf, "-append", "workload=net ip=10.0.11.2/24",
                          "-device", "isa-debug-exit,iobase=0x600,iosize=1",
                          "-netdev", "tap,id=n0,ifname=qbench0,script=no,downscript=no",
                          "-device", "virtio-net-pci,netdev=n0,disable-legacy=on"], stderr=subprocess.DEVNULL)
    try:
        wait_serial(serial, "heartbeat 2 ")
        ns_run(ns, "ip", "addr", "add", "10.0.11.1/24", "dev", "qbench0")
        ns_run(ns, "ip", "link", "set", "qbench0", "up")
        return measure(ns, "10.0.11.2")
    finally:
        p.kill(); p.wait()


def host_round(ns):
    p = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER, "7"])
    try:
        time.sleep(0.5)
        return measure(ns, "127.0.0.1")
    finally:
        p.kill(); p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    release()
    ns = f"covm-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    work = tempfile.mkdtemp(prefix="covm-bench-net-")
    try:
        ns_run(ns, "ip", "link", "set", "lo", "up")
        ns_run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        ns_run(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        qemu = shutil.which("qemu-system-x86_64")
        sides = {"covm": [], "qemu": [], "host loopback": []}
        for r in range(args.rounds):
            sides["covm"].append(covm_round(ns, work))
            if qemu:
                sides["qemu"].append(qemu_round(ns, work, qemu))
            sides["host loopback"].append(host_round(ns))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        print(f"{args.rounds} rounds; median (min..max)")
        print("| path | UDP RTT p50 µs | UDP RTT p99 µs | TCP echo MB/s |")
        print("|---|---|---|---|")
        for side, rows in sides.items():
            if not rows:
                continue
            cell = lambda k: "%.0f (%.0f..%.0f)" % (statistics.median(r[k] for r in rows),
                                                    min(r[k] for r in rows), max(r[k] for r in rows))
            mb = "%.1f (%.1f..%.1f)" % (statistics.median(r["mbps"] for r in rows),
                                        min(r["mbps"] for r in rows), max(r["mbps"] for r in rows))
            print(f"| {side} | {cell('p50')} | {cell('p99')} | {mb} |")
    finally:
        subprocess.run(["ip", "netns", "del", ns])
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
