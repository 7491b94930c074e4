"""Paths of covm's release build, shared by the benchmark scripts."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COVM = os.path.join(ROOT, "target/release/covm")


def firmware_elf():
    """The built-in firmware ELF that the release build of covm embeds."""
    out = os.path.join(ROOT, "target/release/build")
    for d in sorted(os.listdir(out)):
        p = os.path.join(out, d, "out/firmware-target/x86_64-unknown-linux-gnu/release/covm-firmware")
        if os.path.exists(p):
            return p
    raise SystemExit("firmware ELF not found: run cargo build --release first")
