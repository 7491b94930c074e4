#!/usr/bin/env python3
"""What a guest's first write to a page costs on this host, against a write
to a page it already touched.

The built-in firmware's `dirty` workload (1 vCPU, 512 MiB region, no rate
limit) writes its region page after page, in ring 3 at native speed; its
heartbeat (every 100 ms) counts the pages written so far. Its first sweep
writes every page for the first time (each write a fault the host's KVM
takes), the later sweeps rewrite touched pages. The difference per page is
the cost of a guest's first touch: what a confidential migration's
destination agent pays for every page it imports into fresh memory, while
plain migration writes those pages from covm's process.

Usage: python3 scripts/bench_first_touch.py [--runs 3]   (after cargo build --release)
"""
import argparse, os, re, statistics, subprocess, tempfile

from covmkit.build import release

REGION_PAGES = 512 * 256


def run(tmp, i):
    serial = os.path.join(tmp, f"serial-{i}.txt")
    proc = subprocess.Popen([release().covm, "--cpus", "boot=1", "--memory", "size=1G", "--serial", f"file={serial}",
                             "--cmdline", "workload=dirty mib=512 rate=0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = open(serial).read()
    if "FAIL" in text:
        raise SystemExit(f"the workload failed:\n{text}")
    counts = [int(n) for n in re.findall(r"heartbeat \d+ pages=(\d+)", text)]
    steps = list(zip(counts, counts[1:]))
    first = [b - a for a, b in steps if b < REGION_PAGES]
    later = [b - a for a, b in steps if a > REGION_PAGES]
    if not first or not later:
        raise SystemExit(f"too few heartbeats to tell the sweeps apart:\n{text}")
    return 1e5 / statistics.median(first), 1e5 / statistics.median(later)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="covm-first-touch-") as tmp:
        results = [run(tmp, i) for i in range(args.runs)]
    first = statistics.median(r[0] for r in results)
    later = statistics.median(r[1] for r in results)
    print(f"guest write, first touch:   {first:.2f} us/page (median of {args.runs} runs' medians)")
    print(f"guest write, touched page:  {later:.2f} us/page")
    print(f"first touch costs:          {first - later:.2f} us/page more")


if __name__ == "__main__":
    main()
