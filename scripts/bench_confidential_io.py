#!/usr/bin/env python3
"""Confidential I/O beside plain: the built-in firmware's I/O workloads on
a plain VM and on an emulated confidential VM, in one run, rounds
interleaved. The confidential guest's devices reach only its shared
window, so its drivers copy every buffer into and out of bounce buffers
there (ring 3, `firmware/image/src/shared.rs`); the plain guest's devices
use the buffers in place. Both run their workload on one vCPU (the
confidential VM has a second, for its migration agent, which idles).

Rows:
  - blkbench on a raw image in /dev/shm through the page cache (the
    host's I/O costs next to nothing, so what is left is each path's own
    per-request cost, the bounce included): 128 KiB sequential at QD16,
    4 KiB random at QD1 and QD32;
  - vsock: 1000 round trips of 64 bytes through the guest's echo
    listener (median and p99), and 8 MiB echoed through it;
  - a live migration (loopback TCP) of each VM while its `blk` workload
    writes its disk at 16 MiB/s: total time and downtime (the source's
    pause to the destination's resume), as bench_confidential.py counts
    them.

Usage: python3 scripts/bench_confidential_io.py [--rounds 3]
       (builds covm in release mode first)
"""
import argparse, os, re, socket, statistics, subprocess, sys, tempfile, threading, time

from covmkit.build import release
from covmkit.confidential import policy_for
from covmkit.migrate import covm_migrate

BLK = re.compile(r"^blkbench: (\S+) bs=(\d+) qd=(\d+)/(\d+) ops=\d+ time=[0-9.]+ s ([0-9.]+) MB/s (\d+) IOPS$")


def vm_options(tmp, confidential, cmdline):
    vm = ["--cpus", f"boot={2 if confidential else 1}", "--memory", "size=512M", "--cmdline", cmdline]
    return (policy_for(tmp, vm) if confidential else []) + vm


def blk_round(tmp, image, confidential):
    cmdline = "workload=blkbench mib=64 ms=1000"
    out = subprocess.run([release().covm, "--serial", "tty", "--disk", f"path={image}"]
                         + vm_options(tmp, confidential, cmdline), capture_output=True, text=True, timeout=600)
    rows = {}
    for line in out.stdout.splitlines():
        m = BLK.match(line.strip())
        if m:
            key = f"{m.group(1)} bs={m.group(2)} qd={m.group(4)}"
            rows[key] = float(m.group(5)) if m.group(1).startswith("seq") else float(m.group(6))
    if "blkbench: done" not in out.stdout:
        sys.exit(f"blkbench did not finish:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return rows


def vsock_round(tmp, confidential):
    sock, serial = os.path.join(tmp, "v.sock"), os.path.join(tmp, "serial.txt")
    for path in (sock, serial):
        if os.path.exists(path):
            os.unlink(path)
    covm = subprocess.Popen([release().covm, "--serial", f"file={serial}", "--vsock", f"cid=3,socket={sock}"]
                            + vm_options(tmp, confidential, "workload=vsock port=1234"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while "heartbeat 1 " not in (open(serial).read() if os.path.exists(serial) else ""):
            if time.time() > deadline:
                sys.exit("the vsock guest did not start")
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.settimeout(20)
        s.sendall(b"CONNECT 1234\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        assert line.startswith(b"OK "), line
        rtts = []
        for _ in range(1000):
            t = time.perf_counter()
            s.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            rtts.append(time.perf_counter() - t)
        rtts.sort()
        data = os.urandom(8 << 20)
        writer = threading.Thread(target=s.sendall, args=(data,))
        t = time.perf_counter()
        writer.start()
        got = bytearray()
        while len(got) < len(data):
            got += s.recv(1 << 20)
        elapsed = time.perf_counter() - t
        writer.join()
        assert got == data, "the echo differs"
        return {"rtt_p50_us": rtts[500] * 1e6, "rtt_p99_us": rtts[990] * 1e6, "echo_mbps": len(data) / elapsed / 1e6}
    finally:
        covm.terminate()
        covm.wait(30)


def migration_round(tmp, image, confidential):
    cmdline = "workload=blk mib=16 rate=16"
    report, received, _ = covm_migrate(["--disk", f"path={image}"] + vm_options(tmp, confidential, cmdline), tmp,
                                       settle_s=2.0)
    return {"migration_total_ms": report["total_ms"],
            "migration_downtime_ms": report["downtime_ms"] + received["resume_ms"]}


def cell(xs):
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}..{max(xs):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    release()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="covm-bench-cio-") as tmp, \
            tempfile.TemporaryDirectory(prefix="covm-bench-cio-", dir=shm) as images:
        image = os.path.join(images, "disk.raw")
        with open(image, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(128):
                f.write(chunk)
        for r in range(args.rounds):
            for confidential in (False, True):
                row = blk_round(tmp, image, confidential)
                row.update(vsock_round(tmp, confidential))
                row.update(migration_round(tmp, image, confidential))
                results[confidential].append(row)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.rounds} rounds; median (min..max); blk in MB/s (sequential) or IOPS (random)")
    print("| test | plain | confidential (emulated) | confidential/plain |")
    print("|---|---|---|---|")
    for key in results[False][0]:
        plain = [row[key] for row in results[False]]
        conf = [row[key] for row in results[True]]
        print(f"| {key} | {cell(plain)} | {cell(conf)} | {statistics.median(conf) / statistics.median(plain):.2f}x |")


if __name__ == "__main__":
    main()
