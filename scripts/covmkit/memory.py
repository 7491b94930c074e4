"""The VMM's own memory: RSS of a running covm minus its guest memory."""

import re
import subprocess
import time

from covmkit.build import release


def vmm_overhead_kib(extra_args=(), cmdline="workload=dirty mib=16 rate=1", settle_s=2.0):
    """RSS of a running covm (2 vCPUs, 512 MiB, `cmdline`, `extra_args`):
    in all, the guest memory's part, and of the rest how much is file-backed
    (its code and libraries, shared by every covm on the host); the
    remainder is anonymous, covm's own per VM. In KiB."""
    p = subprocess.Popen([release().covm, "--cpus", "boot=2", "--memory", "size=512M", "--serial", "null",
                          "--cmdline", cmdline, *extra_args])
    time.sleep(settle_s)
    if p.poll() is not None:
        raise SystemExit(f"covm exited early ({p.returncode}) with {list(extra_args)}")
    guest_kib = total_kib = file_kib = 0
    with open(f"/proc/{p.pid}/smaps") as f:
        size, name = None, ""
        for line in f:
            m = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
            if m:
                name = m.group(1)
                continue
            m = re.match(r"^Size:\s+(\d+) kB", line)
            if m:
                size = int(m.group(1))
            m = re.match(r"^Rss:\s+(\d+) kB", line)
            if m:
                total_kib += int(m.group(1))
                if size == 512 * 1024:
                    guest_kib += int(m.group(1))
                elif name.startswith("/"):
                    file_kib += int(m.group(1))
    p.kill()
    p.wait()
    return total_kib, guest_kib, file_kib


def describe(total_kib, guest_kib, file_kib):
    own = total_kib - guest_kib
    return (f"covm RSS {total_kib / 1024:.1f} MiB, of which guest memory {guest_kib / 1024:.1f} MiB: "
            f"VMM overhead {own / 1024:.2f} MiB ({(own - file_kib) / 1024:.2f} MiB anonymous, "
            f"{file_kib / 1024:.2f} MiB code and libraries, shared between covm processes)")
