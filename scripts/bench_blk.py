#!/usr/bin/env python3
"""Block I/O benchmark: the built-in firmware's `workload=blkbench` on
covm's virtio-blk and on QEMU's virtio-blk-pci (Debian's qemu-system-x86,
microvm with PCIe, the same firmware ELF), and fio on the host against the
same image file, in one run, rounds interleaved.

Every side bypasses the host's page cache: covm `--disk ...,direct=on`,
QEMU `cache=none` (O_DIRECT, its default thread-pool AIO), fio
`direct=1 ioengine=libaio`. The rows are blkbench's: sequential write and
read in 128 KiB requests at queue depth 16 over the span, 4 KiB random
write and read at depth 1 and 32 for `--ms` each. The guest's driver
(virtio-drivers) keeps at most 16 requests in flight, so its "QD32" rows
run at 16 (blkbench prints qd=reached/asked); fio runs them at 32.

Reported: median and min..max over `--rounds` rounds, and the ratios the
issue sets goals for (covm/host fio, covm/QEMU). Then the VMM's memory
overhead with one disk attached, with the guest writing it slowly and
under blkbench (the device's buffers grown by its sequential tests).

With `--cache --dir /dev/shm` every side goes through the page cache of an
image in memory: the host's I/O then costs next to nothing, and what is
left is each path's own cost per request (guest, VMM, host kernel).

Usage: python3 scripts/bench_blk.py [--rounds 5] [--mib 128] [--ms 1000]
                                    [--dir DIR] [--cache]
       (builds covm in release mode first)
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile

from covmkit.build import ROOT, release
from covmkit.memory import describe, vmm_overhead_kib

ROWS = [("seq-write", 131072, 16), ("seq-read", 131072, 16), ("rand-write", 4096, 1),
        ("rand-read", 4096, 1), ("rand-write", 4096, 32), ("rand-read", 4096, 32)]
LINE = re.compile(r"^blkbench: (\S+) bs=(\d+) qd=(\d+)/(\d+) ops=(\d+) time=([0-9.]+) s ([0-9.]+) MB/s (\d+) IOPS$")


def parse_blkbench(text, who):
    rows = []
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            rows.append({"mbps": float(m.group(7)), "iops": int(m.group(8)), "qd": int(m.group(3))})
    if len(rows) != len(ROWS) or "blkbench: done" not in text:
        sys.exit(f"{who}: blkbench did not finish:\n{text[-2000:]}")
    return rows


def covm_round(image, mib, ms, cache):
    direct = "" if cache else ",direct=on"
    out = subprocess.run([release().covm, "--cpus", "boot=1", "--memory", "size=512M", "--serial", "tty",
                          "--cmdline", f"workload=blkbench mib={mib} ms={ms}",
                          "--disk", f"path={image}{direct}"],
                         capture_output=True, text=True, timeout=600)
    return parse_blkbench(out.stdout, "covm")


def qemu_round(qemu, image, mib, ms, cache):
    out = subprocess.run([qemu, "-accel", "kvm", "-machine", "microvm,pcie=on", "-cpu", "host,-arch-capabilities",
                          "-smp", "1", "-m", "512M", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                          "-kernel", release().firmware_elf, "-append", f"workload=blkbench mib={mib} ms={ms}",
                          "-device", "isa-debug-exit,iobase=0x600,iosize=1",
                          "-drive", f"file={image},format=raw,if=none,id=d0,cache={'writeback' if cache else 'none'}",
                          "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"],
                         capture_output=True, text=True, timeout=600)
    return parse_blkbench(out.stdout, "qemu")


def fio_round(fio, image, mib, ms, cache):
    rows = []
    for name, bs, qd in ROWS:
        rw = {"seq-write": "write", "seq-read": "read", "rand-write": "randwrite", "rand-read": "randread"}[name]
        args = [fio, "--name=b", f"--filename={image}", f"--direct={0 if cache else 1}", "--ioengine=libaio",
                f"--rw={rw}",
                f"--bs={bs}", f"--iodepth={qd}", f"--size={mib}M", "--output-format=json"]
        if name.startswith("rand"):
            args += ["--time_based", f"--runtime={ms}ms"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
        job = json.loads(out.stdout)["jobs"][0]
        side = job["write"] if "write" in name else job["read"]
        rows.append({"mbps": side["bw_bytes"] / 1e6, "iops": int(side["iops"]), "qd": qd})
    return rows


def summary(samples, key):
    xs = [s[key] for s in samples]
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--ms", type=int, default=1000)
    ap.add_argument("--dir", default=os.path.join(ROOT, "target"), help="where the image goes")
    ap.add_argument("--cache", action="store_true", help="through the host's page cache, no O_DIRECT")
    args = ap.parse_args()
    release()
    work = tempfile.mkdtemp(prefix="covm-bench-blk-", dir=args.dir)
    image = os.path.join(work, "disk.raw")
    # Written through once, so reads meet real blocks rather than holes.
    with open(image, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.mib * 2):
            f.write(chunk)
    qemu, fio = shutil.which("qemu-system-x86_64"), shutil.which("fio")
    sides = {"covm": [], "qemu": [], "fio": []}
    for r in range(args.rounds):
        sides["covm"].append(covm_round(image, args.mib, args.ms, args.cache))
        if qemu:
            sides["qemu"].append(qemu_round(qemu, image, args.mib, args.ms, args.cache))
        if fio:
            sides["fio"].append(fio_round(fio, image, args.mib, args.ms, args.cache))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    if not qemu:
        print("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): no QEMU column")
    if not fio:
        print("fio not installed (apt-get install fio): no host column")
    how = "through the page cache" if args.cache else "O_DIRECT"
    print(f"{args.rounds} rounds, span {args.mib} MiB, {args.ms} ms per random test, image in {args.dir}, "
          f"{how}; median (min..max)")
    print("| test | covm | QEMU | host fio | covm/fio | covm/QEMU |")
    print("|---|---|---|---|---|---|")
    for i, (name, bs, qd) in enumerate(ROWS):
        key = "mbps" if name.startswith("seq") else "iops"
        unit = "MB/s" if key == "mbps" else "IOPS"
        cells, medians = [], {}
        for side in ("covm", "qemu", "fio"):
            rows = [round_[i] for round_ in sides[side]]
            if not rows:
                cells.append("-")
                continue
            med, lo, hi = summary(rows, key)
            medians[side] = med
            reached = f" qd {rows[0]['qd']}" if side != "fio" and rows[0]["qd"] != qd else ""
            cells.append(f"{med:.0f} ({lo:.0f}..{hi:.0f}) {unit}{reached}")
        vs_fio = f"{medians['covm'] / medians['fio'] * 100:.0f} %" if "fio" in medians else "-"
        vs_qemu = f"{medians['covm'] / medians['qemu']:.2f}x" if "qemu" in medians else "-"
        print(f"| {name} {bs // 1024}k qd{qd} | " + " | ".join(cells) + f" | {vs_fio} | {vs_qemu} |")
    disk = ["--disk", f"path={image}" + ("" if args.cache else ",direct=on")]
    print("with one disk, the guest writing 1 MiB/s of 4 KiB blocks (blk):")
    print("  " + describe(*vmm_overhead_kib(disk, cmdline="workload=blk mib=8 rate=1")))
    # blkbench's sequential tests are done within the first second; RSS is
    # read in its random tests, after the device's buffers have grown.
    print("with one disk under blkbench, after its sequential tests:")
    print("  " + describe(*vmm_overhead_kib(disk, cmdline=f"workload=blkbench mib={args.mib} ms=5000", settle_s=3.0)))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
