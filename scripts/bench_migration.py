#!/usr/bin/env python3
"""Live-migration benchmark: covm against QEMU on the same guest, same run.

For each guest (256 MiB and 1 GiB) and load (idle, dirtying at 64 and at
256 MiB/s) the built-in firmware's `dirty` workload runs on 2 vCPUs and is
migrated over loopback TCP with a 300 ms downtime target, by covm
(vm.send-migration) and by QEMU (-incoming, QMP migrate with auto-converge,
no bandwidth cap). covm runs once per dirty-tracking mode (log, ring).
The loopback TCP bandwidth of one stream is measured in the same run with
covm's own transport (migration/examples/loopback_bandwidth.rs). covm's
downtime is the source's (pause to Commit) plus the destination's resume
(Commit to vCPUs running). Medians of --runs runs.

First, idle guests of 1, 4 and 16 GiB (covm only, `--idle-only` for just
those): their downtime should not grow with the guest.

Usage: python3 scripts/bench_migration.py [--runs 3] [--no-qemu] [--modes log,ring] [--idle-only]
       (after cargo build --release; QEMU from Debian's qemu-system-x86)
"""
import argparse, json, os, shutil, socket, statistics, subprocess, tempfile, time

from covmkit.api import call as api
from covmkit.migrate import covm_migrate, free_port
from covmkit.build import release
GUESTS = [(256, 128), (1024, 512)]  # (memory MiB, dirty region MiB)
LOADS = [("idle", 1), ("64 MiB/s", 64), ("256 MiB/s", 256)]
# Idle guests of growing size (a 64 MiB region at 1 MiB/s): downtime
# should not grow with the guest (issue 18).
IDLE_GUESTS = [1024, 4096, 16384]


def loopback_bandwidth():
    """One TCP stream over loopback with covm's transport, bytes/s (median of 5)."""
    out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "covm-migration", "--example",
                          "loopback_bandwidth", "--", "2", "5"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["median_bytes_per_s"]


def covm_run(mem, region, rate, tmp, mode="log"):
    report, received, exit_ms = covm_migrate(["--cpus", "boot=2", "--memory", f"size={mem}M", "--cmdline",
                                              f"workload=dirty mib={region} rate={rate}",
                                              "--dirty-tracking", f"mode={mode}"], tmp)
    downtime = report["downtime_ms"] + received["resume_ms"]
    return (report["total_ms"], downtime, report["bytes_sent"] / (report["total_ms"] / 1e3), report["rounds"],
            exit_ms)




def qmp(sock_path):
    s = socket.socket(socket.AF_UNIX)
    for _ in range(500):
        try:
            s.connect(sock_path)
            break
        except OSError:
            time.sleep(0.01)
    f = s.makefile("rw")
    json.loads(f.readline())

    def cmd(name, args=None):
        f.write(json.dumps({"execute": name, "arguments": args or {}}) + "\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                return msg
    cmd("qmp_capabilities")
    return cmd


def qemu_run(mem, region, rate, tmp):
    qemu = shutil.which("qemu-system-x86_64")
    fw = release().firmware_elf
    port = free_port()
    base = [qemu, "-accel", "kvm", "-machine", "microvm", "-cpu", "host,-arch-capabilities", "-smp", "2",
            "-m", f"{mem}M", "-nographic", "-nodefaults", "-serial", "null", "-kernel", fw,
            "-append", f"workload=dirty mib={region} rate={rate}"]
    src_q, dst_q = os.path.join(tmp, "qs.sock"), os.path.join(tmp, "qd.sock")
    dst = subprocess.Popen(base + ["-qmp", f"unix:{dst_q},server=on,wait=off", "-incoming", f"tcp:127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    src = subprocess.Popen(base + ["-qmp", f"unix:{src_q},server=on,wait=off"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cmd = qmp(src_q)
        time.sleep(3)
        cmd("migrate-set-capabilities", {"capabilities": [{"capability": "auto-converge", "state": True}]})
        cmd("migrate-set-parameters", {"downtime-limit": 300, "max-bandwidth": 100 << 30})
        cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        while True:
            r = cmd("query-migrate")["return"]
            if r.get("status") == "completed":
                ram = r["ram"]
                total = r["total-time"]
                return (total, r.get("downtime", 0), ram["transferred"] / (total / 1e3),
                        ram.get("dirty-sync-count", 0), float("nan"))
            if r.get("status") == "failed":
                raise RuntimeError(f"QEMU migration failed: {r}")
            time.sleep(0.05)
    finally:
        src.kill()
        dst.kill()
        src.wait()
        dst.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--modes", default="log,ring", help="covm dirty-tracking modes to run")
    ap.add_argument("--idle-only", action="store_true", help="only the 1/4/16 GiB idle rows")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    bw = loopback_bandwidth()
    print(f"loopback TCP, one stream: {bw / 1e9:.2f} GB/s")
    print(f"{'guest':>6} {'load':>10} {'vmm':>9} {'total ms':>9} {'downtime ms':>12} {'throughput GB/s':>16} "
          f"{'% of loopback':>14} {'rounds':>7} {'send->exit ms':>14}")
    for mem in IDLE_GUESTS:
        for m in args.modes.split(","):
            results = [covm_run(mem, 64, 1, tmp, mode=m) for _ in range(args.runs)]
            total, down, thr, rounds, exit_ms = (statistics.median(x) for x in zip(*results))
            worst = max(r[1] for r in results)
            print(f"{mem:>5}M {'idle':>10} {'covm-' + m:>9} {total:9.1f} {down:12.2f} {thr / 1e9:16.2f} "
                  f"{100 * thr / bw:13.0f}% {rounds:7.0f} {exit_ms:14.1f}  (downtime max {worst:.2f}, "
                  f"total {total / (mem / 1024):.1f} ms/GiB)")
    if args.idle_only:
        return
    for mem, region in GUESTS:
        for label, rate in LOADS:
            runners = [(f"covm-{m}", lambda *a, m=m: covm_run(*a, mode=m)) for m in args.modes.split(",")]
            if not args.no_qemu and shutil.which("qemu-system-x86_64"):
                runners.append(("qemu", qemu_run))
            for name, run in runners:
                results = [run(mem, region, rate, tmp) for _ in range(args.runs)]
                total, down, thr, rounds, exit_ms = (statistics.median(x) for x in zip(*results))
                # QEMU's source does not exit after a migration: no figure.
                exit_text = "n/a" if exit_ms != exit_ms else f"{exit_ms:.1f}"
                print(f"{mem:>5}M {label:>10} {name:>9} {total:9.1f} {down:12.1f} {thr / 1e9:16.2f} "
                      f"{100 * thr / bw:13.0f}% {rounds:7.0f} {exit_text:>14}")


if __name__ == "__main__":
    main()
