"""covm's build outputs, found by asking cargo rather than guessing paths.

`release()` runs `cargo build --release` for the covm binary (showing its
progress: the first build on a fresh clone takes minutes) and reads, from
cargo's JSON messages, where the covm and covm-remote executables are and
where covm's build script put the built-in firmware (the
`COVM_FIRMWARE_ELF` it exports).

`COVM_BIN=/path/to/covm` makes every script run that covm instead of this
checkout's (the rest still comes from this checkout's build): how the
benchmarks compare two builds in the same run, e.g. a worktree of an older
commit built with `cargo build --release`."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Outputs:
    covm: str
    covm_remote: str
    firmware_elf: str


def _build(quiet):
    command = ["cargo", "build", "--release", "--bin", "covm", "--bin", "covm-remote",
               "--message-format", "json-render-diagnostics"]
    if quiet:
        command.append("-q")
    # JSON messages on stdout; cargo's progress and diagnostics go to stderr
    # as usual, so a person sees the build happen.
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit("cargo build --release failed (its output is above)")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@lru_cache(maxsize=None)
def release(quiet=False):
    """Builds (if needed) and returns the release build's outputs."""
    executables, firmware = {}, None
    for message in _build(quiet):
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            executables[message["target"]["name"]] = message["executable"]
        if message.get("reason") == "build-script-executed":
            for key, value in message.get("env", []):
                if key == "COVM_FIRMWARE_ELF":
                    firmware = value
    missing = [name for name in ("covm", "covm-remote") if name not in executables]
    if missing or not firmware:
        sys.exit(f"cargo did not report {missing or 'the firmware ELF'}: is this covm's checkout?")
    covm = os.environ.get("COVM_BIN") or executables["covm"]
    if not os.access(covm, os.X_OK):
        sys.exit(f"COVM_BIN={covm} is not an executable")
    return Outputs(covm, executables["covm-remote"], firmware)
