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

Each confidential row is followed by where a sealed page's time went,
in microseconds per page carried, on each side: the agent's own clock
(copy in, seal or open, copy out, zero checks; the COSTS mailbox
command) and covm's (waiting on the agent beyond its busy time: exits,
doorbell, scheduling; copying the mailbox; the wire). "bound" names the
stage that limits the row: the side whose agent waits least on its peer.

--agent-vcpus 1,2 runs the confidential VM once per count given (its
migration agent's vCPUs, so the stream's lanes: --platform agent_vcpus=N),
each beside the same plain runs; the default is 1. With several lanes the
agent's per-stage clock covers only the commands it runs alone, so those
rows show covm's side of the breakdown.

Usage: python3 scripts/bench_confidential.py [--runs 3] [--agent-vcpus 1,2]   (after cargo build --release)
"""
import argparse, json, os, statistics, subprocess, tempfile

from covmkit.build import ROOT, release
from covmkit.confidential import policy_for
from covmkit.migrate import covm_migrate

GUESTS = [(256, 128), (1024, 512)]
LOADS = [("idle", 1), ("64 MiB/s", 64)]


STAGES = ["copy_in_ms", "crypto_ms", "copy_out_ms", "zero_ms"]


def per_page(agent, pages):
    """A side's agent costs in microseconds per page carried."""
    us = {k: agent[k] * 1e3 / pages for k in STAGES}
    us["exits"] = max(agent["wait_ms"] - agent["busy_ms"], 0) * 1e3 / pages
    us["mailbox"] = agent["mailbox_copy_ms"] * 1e3 / pages
    return us


def run(mem, region, rate, tmp, agents):
    """One migration: plain (`agents` 0) or confidential with `agents`
    agent vCPUs."""
    confidential = agents > 0
    vm = ["--cpus", "boot=2", "--memory", f"size={mem}M", "--cmdline", f"workload=dirty mib={region} rate={rate}"]
    extra = policy_for(tmp, vm, agents) if confidential else []
    report, received, exit_ms = covm_migrate(extra + vm, tmp)
    total = report["total_ms"]
    pages = max(report["pages_sent"], 1)
    costs = {}
    if confidential and report.get("agent") and received.get("agent"):
        for side, r in (("src", report), ("dst", received)):
            for k, v in per_page(r["agent"], pages).items():
                costs[f"{side}_{k}"] = v
            costs[f"{side}_wire"] = r.get("wire_ms", 0) * 1e3 / pages
    return {**costs,
        "total": total,
        "downtime": report["downtime_ms"] + received["resume_ms"],
        "throughput": report["bytes_sent"] / (total / 1e3),
        "page_rate": report["pages_sent"] * 4096 / (total / 1e3),
        "agent_rate": report["pages_sent"] * 4096 / (report["crypto_ms"] / 1e3) if report.get("crypto_ms") else 0,
        "crypto": report.get("crypto_ms", 0),
        "exit": exit_ms,
    }


def p90_of(values):
    """The 90th percentile (nearest rank): the tail a median hides."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * 9 // 10) - 1))]


def raw_aes_rate():
    out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "covm-agent-protocol", "--example", "seal_rate"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rate = lambda key: float(next(l for l in out.splitlines() if key in l).split()[-2]) * 1e6
    return rate("raw AES-256-GCM"), rate("copy 4 KiB into the record")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--agent-vcpus", default="1", help="agent vCPU counts to run, comma-separated (default 1)")
    args = ap.parse_args()
    counts = [int(n) for n in args.agent_vcpus.split(",")]
    modes = [0] + counts
    name = lambda a: "plain" if a == 0 else ("confidential" if counts == [1] else f"conf {a} vCPU")
    raw, copy = raw_aes_rate()
    print(f"on the host (seal_rate example): raw AES-256-GCM {raw / 1e9:.2f} GB/s "
          f"({4096e6 / raw:.2f} us/page), 4 KiB copy {copy / 1e9:.2f} GB/s ({4096e6 / copy:.2f} us/page)")
    print(f"{'guest':>6} {'load':>9} {'mode':>13} {'total ms':>9} {'downtime ms':>12} {'page MB/s':>10} "
          f"{'wire MB/s':>10} {'agent MB/s':>11} {'crypto ms':>10} {'send->exit ms':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for mem, region in GUESTS:
            for load, rate in LOADS:
                results = {a: [] for a in modes}
                for _ in range(args.runs):
                    for a in modes:
                        results[a].append(run(mem, region, rate, tmp, a))
                med = {a: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for a, rs in results.items()}
                p90 = {a: {k: p90_of([r[k] for r in rs]) for k in ("total", "downtime")} for a, rs in results.items()}
                for a in modes:
                    m = med[a]
                    print(f"{mem:>5}M {load:>9} {name(a):>13} {m['total']:9.1f} "
                          f"{m['downtime']:12.1f} {m['page_rate'] / 1e6:10.0f} {m['throughput'] / 1e6:10.0f} "
                          f"{m['agent_rate'] / 1e6 if a else 0:11.0f} {m['crypto'] if a else 0:10.0f} {m['exit']:14.1f}"
                          f"   p90 total {p90[a]['total']:.1f} downtime {p90[a]['downtime']:.1f}")
                for a in counts:
                    breakdown(name(a), med[0], med[a], p90[0], p90[a])


def breakdown(mode, p, c, p90_plain, p90_conf):
    """The ratios of a confidential mode `c` against plain `p` (medians,
    and p90 downtime), then where its pages' time went."""
    print(f"{'':>6} {'':>9} {'ratio':>13} {c['total'] / p['total']:9.2f}x "
          f"{c['downtime'] / p['downtime']:11.2f}x {c['page_rate'] / p['page_rate']:9.2f}x"
          f"   p90 downtime ratio {p90_conf['downtime'] / p90_plain['downtime']:.2f}x   ({mode})")
    if "src_crypto_ms" not in c:
        return
    for side in ("src", "dst"):
        parts = " ".join(f"{k}={c[f'{side}_{k}']:.2f}" for k in
                         ["copy_in_ms", "crypto_ms", "copy_out_ms", "zero_ms", "exits", "mailbox", "wire"])
        print(f"{'':>17} {side} us/page: {parts.replace('_ms', '')}")
    # The side whose covm waits least on the wire is the one everyone
    # else waits for.
    bound = "destination agent" if c["src_wire"] > c["dst_wire"] else "source agent"
    print(f"{'':>17} bound: {bound} (src wire {c['src_wire']:.2f}, dst wire {c['dst_wire']:.2f} us/page)")


if __name__ == "__main__":
    main()
