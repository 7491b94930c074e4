#!/usr/bin/env python3
"""API round-trip latency of covm while a guest runs.

Starts covm (release build) with the built-in firmware's `dirty` workload
on 2 vCPUs (64 MiB at 100 MiB/s) and an API socket, then times N sequential
GET /vmm.ping and GET /vm.info requests, each on a new connection (as
ch-remote and covm-remote do) and on one kept-alive connection. Reports
median and p99, and checks the guest's heartbeat kept going.

Usage: python3 scripts/bench_api.py [--requests N]   (after cargo build --release)
"""
import argparse, os, statistics, subprocess, tempfile, time

from covmkit.api import UnixConnection
from covmkit.build import release


def timed(conn_factory, endpoint, n, reuse):
    samples = []
    conn = conn_factory() if reuse else None
    for _ in range(n):
        c = conn if reuse else conn_factory()
        t0 = time.perf_counter()
        c.request("GET", "/api/v1/" + endpoint)
        r = c.getresponse()
        r.read()
        samples.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
        if not reuse:
            c.close()
    return samples


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    sock, serial = os.path.join(tmp, "api.sock"), os.path.join(tmp, "serial.txt")
    covm = subprocess.Popen([release().covm, "--api-socket", f"path={sock}", "--cpus", "boot=2", "--memory", "size=512M",
                             "--serial", f"file={serial}", "--cmdline", "workload=dirty mib=64 rate=100"])
    try:
        while not os.path.exists(sock):
            time.sleep(0.01)
        time.sleep(1.0)
        beats_before = open(serial).read().count("heartbeat")
        factory = lambda: UnixConnection(sock)
        for endpoint in ["vmm.ping", "vm.info"]:
            for reuse, label in [(False, "new connection"), (True, "keep-alive")]:
                s = timed(factory, endpoint, args.requests, reuse)
                print(f"{endpoint:9} {label:14} n={len(s)} median {statistics.median(s) * 1e6:7.1f} us  "
                      f"p99 {pct(s, 0.99) * 1e6:7.1f} us")
        text = open(serial).read()
        print(f"guest heartbeats during the run: {text.count('heartbeat') - beats_before}, FAIL lines: {text.count('FAIL')}")
    finally:
        covm.kill()
        covm.wait()


if __name__ == "__main__":
    main()
