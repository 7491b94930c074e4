"""One covm-to-covm live migration over loopback TCP, for the benchmarks."""

import json
import os
import socket
import subprocess
import time

from .api import call, get_json, wait_ready
from .build import release


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def covm_migrate(source_args, tmp, settle_s=3.0):
    """Starts a destination covm and a source covm with `source_args` (VM
    options), lets the workload touch its region for `settle_s`, migrates
    over loopback TCP with a 300 ms downtime target. Returns the source's
    report, the destination's report, and the milliseconds from the
    send-migration request to the source process's exit (what a user's
    tooling waiting on the source sees)."""
    covm = release().covm
    src_sock, dst_sock = os.path.join(tmp, "s.sock"), os.path.join(tmp, "d.sock")
    for p in (src_sock, dst_sock):
        if os.path.exists(p):
            os.unlink(p)
    # COVM_BENCH_DST_LOG=FILE keeps the destination's -vv log (debugging).
    dst_log = os.environ.get("COVM_BENCH_DST_LOG")
    dst = subprocess.Popen([covm, "--api-socket", dst_sock, "--serial", "null"] + (["-vv"] if dst_log else []),
                           stderr=open(dst_log, "w") if dst_log else subprocess.DEVNULL)
    src = subprocess.Popen([covm, "--api-socket", src_sock, "--serial", "null"] + source_args,
                           stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_ready(src_sock)
            wait_ready(dst_sock)
        except RuntimeError as e:
            # Say why: the source's own last words, if it ended.
            if src.poll() is not None:
                raise RuntimeError(f"{e}; the source exited {src.returncode}: {src.stderr.read()[-2000:]}") from e
            raise
        time.sleep(settle_s)  # the workload touches its whole region
        url = f"tcp:127.0.0.1:{free_port()}"
        assert call(dst_sock, "PUT", "vm.receive-migration", {"receiver_url": url})[0] == 204
        sent = time.monotonic()
        status, body = call(src_sock, "PUT", "vm.send-migration", {"destination_url": url, "downtime_ms": 300})
        assert status == 204, body
        _, err = src.communicate(timeout=600)
        # COVM_BENCH_LOG=FILE keeps the source's stderr (with -vv among
        # the VM options: the per-command debug lines).
        if os.environ.get("COVM_BENCH_LOG"):
            open(os.environ["COVM_BENCH_LOG"], "w").write(err)
        exit_ms = (time.monotonic() - sent) * 1e3
        line = next(l for l in err.splitlines() if "migration completed:" in l)
        report = json.loads(line.split("migration completed:", 1)[1])
        received = get_json(dst_sock, "vm.info")["migration"]["report"]
        call(dst_sock, "PUT", "vmm.shutdown")
        dst.wait(timeout=30)
        return report, received, exit_ms
    finally:
        for p in (src, dst):
            if p.poll() is None:
                p.kill()
                p.wait()
