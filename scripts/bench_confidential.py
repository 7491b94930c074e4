#!/usr/bin/env python3
"""Confidential beside plain live migration, same guest, same workload, same run.

For each guest (256 MiB and 1 GiB) and load (idle, dirtying at 64 MiB/s),
the built-in firmware's `dirty` workload runs on 2 vCPUs and migrates over
loopback TCP (300 ms downtime target) once as a plain VM and once as an
emulated confidential VM (--platform emulated_cvm=on, the firmware agents'
sealed session), alternating, --runs times each; medians are reported.
Downtime is the source's (pause to Commit) plus the destination's resume.
"agent rate" is the page bytes the source's agent sealed divided by the
time covm spent waiting on the agent (crypto_ms: sealing, zero checks and
mailbox round trips); the raw AES-256-GCM rate on the host comes from the
protocol crate's seal_rate example in the same run.

Usage: python3 scripts/bench_confidential.py [--runs 3]   (after cargo build --release)
"""
import argparse, json, os, statistics, subprocess, tempfile

from covmkit.build import ROOT, release
from covmkit.confidential import policy_for
from covmkit.migrate import covm_migrate

GUESTS = [(256, 128), (1024, 512)]
LOADS = [("idle", 1), ("64 MiB/s", 64)]


def run(mem, region, rate, tmp, confidential):
    vm = ["--cpus", "boot=2", "--memory", f"size={mem}M", "--cmdline", f"workload=dirty mib={region} rate={rate}"]
    extra = policy_for(tmp, vm) if confidential else []
    report, received, exit_ms = covm_migrate(extra + vm, tmp)
    total = report["total_ms"]
    return {
        "total": total,
        "downtime": report["downtime_ms"] + received["resume_ms"],
        "throughput": report["bytes_sent"] / (total / 1e3),
        "page_rate": report["pages_sent"] * 4096 / (total / 1e3),
        "agent_rate": report["pages_sent"] * 4096 / (report["crypto_ms"] / 1e3) if report.get("crypto_ms") else 0,
        "crypto": report.get("crypto_ms", 0),
        "exit": exit_ms,
    }


def raw_aes_rate():
    out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "covm-agent-protocol", "--example", "seal_rate"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if "raw AES-256-GCM" in l)
    return float(line.split()[-2]) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    raw = raw_aes_rate()
    print(f"raw AES-256-GCM on the host (seal_rate example): {raw / 1e9:.2f} GB/s")
    print(f"{'guest':>6} {'load':>9} {'mode':>13} {'total ms':>9} {'downtime ms':>12} {'page MB/s':>10} "
          f"{'wire MB/s':>10} {'agent MB/s':>11} {'crypto ms':>10} {'send->exit ms':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for mem, region in GUESTS:
            for load, rate in LOADS:
                results = {False: [], True: []}
                for _ in range(args.runs):
                    for confidential in (False, True):
                        results[confidential].append(run(mem, region, rate, tmp, confidential))
                med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in results.items()}
                for c in (False, True):
                    m = med[c]
                    print(f"{mem:>5}M {load:>9} {'confidential' if c else 'plain':>13} {m['total']:9.1f} "
                          f"{m['downtime']:12.1f} {m['page_rate'] / 1e6:10.0f} {m['throughput'] / 1e6:10.0f} "
                          f"{m['agent_rate'] / 1e6 if c else 0:11.0f} {m['crypto'] if c else 0:10.0f} {m['exit']:14.1f}")
                p, c = med[False], med[True]
                print(f"{'':>6} {'':>9} {'ratio':>13} {c['total'] / p['total']:9.2f}x "
                      f"{c['downtime'] / p['downtime']:11.2f}x {c['page_rate'] / p['page_rate']:9.2f}x")


if __name__ == "__main__":
    main()
