#!/usr/bin/env python3
"""Boot-time and memory benchmark for covm's built-in firmware.

Runs `hello` N times (default 20) and reports medians of:
  - covm start -> firmware's first instruction (debug-port marker 0x01,
    timed by covm from the start of its main());
  - covm start -> the guest's power-off request (also timed by covm);
  - spawn -> first serial byte, spawn -> exit (timed here, so they include
    exec, dynamic loading and the kernel's tear-down of the VM);
and, in the same run, QEMU (Debian's qemu-system-x86, -machine microvm,
-kernel on the same firmware ELF via its PVH entry) for first serial byte
and exit. Then the VMM's own memory: RSS of a running covm minus the RSS of
its guest-memory mapping.

Usage: python3 scripts/bench_boot.py [--runs N]   (after cargo build --release)
"""
import argparse, re, shutil, statistics, subprocess, sys, time

from covmkit.build import release
from covmkit.memory import describe, vmm_overhead_kib




def timed(cmd, first_byte_of=b"hello"):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    first = None
    buf = b""
    while True:
        chunk = p.stdout.read1(4096) if hasattr(p.stdout, "read1") else p.stdout.read(1)
        if not chunk:
            break
        if first is None:
            first = time.monotonic() - t0
        buf += chunk
    err = p.stderr.read()
    p.wait()
    total = time.monotonic() - t0
    if first_byte_of not in buf:
        sys.exit(f"{cmd[0]} did not print the greeting: {buf!r} {err[-500:]!r}")
    return first, total, err.decode(errors="replace")


def median_ms(xs):
    return statistics.median(xs) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    entry, ended, first, total = [], [], [], []
    for _ in range(args.runs):
        f, t, err = timed([release().covm, "-v", "--cpus", "boot=1", "--cmdline", "workload=hello"])
        m = re.search(r"debug port 0x01 at ([0-9.]+) ms", err)
        entry.append(float(m.group(1)) / 1e3)
        ended.append(float(re.search(r"guest ended at ([0-9.]+) ms", err).group(1)) / 1e3)
        first.append(f)
        total.append(t)
    print(f"covm  hello x{args.runs}: start->first instruction {median_ms(entry):.2f} ms, "
          f"start->guest power-off {median_ms(ended):.2f} ms, "
          f"spawn->first serial byte {median_ms(first):.2f} ms, spawn->exit {median_ms(total):.2f} ms")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        fw = release().firmware_elf
        qfirst, qtotal = [], []
        for _ in range(args.runs):
            f, t, _ = timed([qemu, "-accel", "kvm", "-machine", "microvm", "-cpu", "host,-arch-capabilities",
                             "-smp", "1", "-m", "512M", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                             "-kernel", fw, "-append", "workload=hello",
                             "-device", "isa-debug-exit,iobase=0x600,iosize=1"])
            qfirst.append(f)
            qtotal.append(t)
        print(f"qemu  hello x{args.runs}: spawn->first serial byte {median_ms(qfirst):.2f} ms, "
              f"spawn->exit {median_ms(qtotal):.2f} ms")
        print(f"ratio qemu/covm: first serial byte {statistics.median(qfirst) / statistics.median(first):.1f}x, "
              f"exit {statistics.median(qtotal) / statistics.median(total):.1f}x")
    else:
        print("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): no comparison")
    print(describe(*vmm_overhead_kib()))


if __name__ == "__main__":
    main()
