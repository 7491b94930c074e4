#!/usr/bin/env python3
"""covm's API against its OpenAPI document, checked by schemathesis.

schemathesis (PyPI) generates requests from resources/openapi/covm.yaml and
checks every answer of a live covm against it: no 5xx the document does not
list, only documented status codes, content types, headers and response
schemas. covm must still answer (and exit 0 on vmm.shutdown) afterwards.

Generated requests name arbitrary files and addresses, and covm runs as root
here, so covm and schemathesis run in a sandbox the script builds first: new
mount and network namespaces (unshare), every existing mount remounted
read-only, a tmpfs for the API socket, and only a loopback interface, so no
request can write a host file or reach another host. schemathesis speaks TCP,
covm a UNIX socket: a byte pipe in this script joins them.

Two operations are left out because they end covm by design, which the run
must not: vmm.shutdown (the script calls it last) and vm.power-button (the
built-in firmware powers off, and covm with it). A hook gives vm.create
bodies a long-running guest (the `dirty` workload on 1 MiB) so booting a
generated configuration does not end covm either; every other field is left
as generated.

Most generated configurations ask for something covm cannot honour, so a
run rarely creates a VM itself: schemathesis runs once with no VM, and once
after the script put a VM in each of its states (Created, Running, Paused,
Shutdown), so every operation is answered from every state.

    python3 scripts/api_contract.py --schemathesis PATH [--covm PATH] [--examples N]
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSIDE = "COVM_API_CONTRACT_SANDBOX"
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])


def skip(reason, kvm=False):
    """Says why the check cannot run here (and in COVM_SKIP_LOG, which
    .ci/run lists); fails instead for want of KVM where COVM_REQUIRE_KVM=1."""
    line = f"SKIP: scripts/api_contract.py: {reason}"
    print(line)
    if kvm and os.environ.get("COVM_REQUIRE_KVM") == "1":
        sys.exit(f"COVM_REQUIRE_KVM=1, yet {reason}")
    if os.environ.get("COVM_SKIP_LOG"):
        with open(os.environ["COVM_SKIP_LOG"], "a") as log:
            log.write(line + "\n")
    sys.exit(0)


def enter_sandbox(args):
    """Re-runs this script inside new mount and network namespaces."""
    if os.geteuid() != 0:
        skip("needs root for its sandbox (unshare --mount --net)")
    scratch = ROOT / "target" / "api-contract"
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **{INSIDE: str(scratch)})
    command = ["unshare", "--mount", "--net", "--fork", "--", sys.executable, __file__, *sys.argv[1:]]
    try:
        return subprocess.run(command, env=env).returncode
    except FileNotFoundError:
        skip("unshare (util-linux) is not installed")


def lock_down(scratch):
    """Inside the namespaces: loopback up, every mount read-only, a tmpfs
    at `scratch` for what covm may write."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    mounts = sorted({line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()})
    for mount in mounts:
        # Some pseudo file systems refuse; what matters is that no writable
        # file system is left where a generated path could point.
        subprocess.run(["mount", "-o", "remount,bind,ro", mount], stderr=subprocess.DEVNULL)
    probe = ROOT / "target" / ".api-contract-probe"
    try:
        probe.write_text("")
        probe.unlink()
        raise SystemExit("the sandbox failed: the project's file system is still writable")
    except OSError:
        pass
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(scratch)], check=True)


def bridge(unix_path):
    """A TCP listener on 127.0.0.1 that pipes each connection to `unix_path`;
    returns its port (the loop runs on a daemon thread)."""
    ready = threading.Event()
    port = []

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(client_reader, client_writer):
        try:
            reader, writer = await asyncio.open_unix_connection(unix_path)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    ready.wait(10)
    return port[0]


#: The VM the script puts in each state: the examples' configuration.
VM_CONFIG = ('{"payload": {"cmdline": "workload=dirty mib=1 rate=1"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1},'
             ' "memory": {"size": 268435456}, "serial": {"mode": "Null"}, "console": {"mode": "Off"}}')
#: The requests that take a VM from none to each state.
STATES = {
    "no VM": [],
    "Created": [("PUT", "/vm.create", VM_CONFIG)],
    "Running": [("PUT", "/vm.create", VM_CONFIG), ("PUT", "/vm.boot", None)],
    "Paused": [("PUT", "/vm.create", VM_CONFIG), ("PUT", "/vm.boot", None), ("PUT", "/vm.pause", None)],
    "Shutdown": [("PUT", "/vm.create", VM_CONFIG), ("PUT", "/vm.boot", None), ("PUT", "/vm.shutdown", None)],
}


def api(socket_path, method, endpoint, body=None):
    """One request on covm's socket; the status code, or None."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(socket_path))
            data = (body or "").encode()
            s.sendall(f"{method} /api/v1{endpoint} HTTP/1.1\r\nHost: localhost\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
            line = s.recv(64).split(b"\r\n")[0].split()
            return int(line[1]) if len(line) > 1 else None
    except OSError:
        return None


def run_inside(args, scratch):
    lock_down(scratch)
    socket_path = scratch / "api.sock"
    log = open(scratch / "covm.log", "wb")
    covm = subprocess.Popen([args.covm, "--api-socket", f"path={socket_path}", "-v"],
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 20
    while api(socket_path, "GET", "/vmm.ping") != 200:
        if time.time() > deadline or covm.poll() is not None:
            raise SystemExit("covm did not start")
        time.sleep(0.05)
    port = bridge(str(socket_path))
    env = dict(os.environ, SCHEMATHESIS_HOOKS="api_contract_hooks",
               PYTHONPATH=str(ROOT / "scripts"))
    command = [
        args.schemathesis, "run", str(ROOT / "resources" / "openapi" / "covm.yaml"),
        "--url", f"http://127.0.0.1:{port}/api/v1",
        "--checks", CHECKS,
        "--max-examples", str(args.examples),
        "--phases", "examples,coverage,fuzzing,stateful",
        "--exclude-path", "/vmm.shutdown",
        "--exclude-path", "/vm.power-button",
        "--workers", "1",
        "--request-timeout", "30",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--no-color",
    ]
    started = time.time()
    failed = []
    for index, (state, requests) in enumerate(STATES.items()):
        # From no VM (delete answers 204 either way) to `state`.
        setup = [("PUT", "/vm.delete", None), *requests]
        got = [api(socket_path, method, endpoint, body) for method, endpoint, body in setup]
        if any(status != 204 for status in got):
            failed.append(f"could not put a VM in state {state}: {got}")
            break
        print(f"--- schemathesis, starting with {state} ---", flush=True)
        run = subprocess.run(command + ["--seed", str(args.seed + index)], cwd=scratch, env=env)
        if run.returncode != 0:
            failed.append(f"schemathesis failed starting with {state} (exit {run.returncode})")
        if covm.poll() is not None:
            break
    took = time.time() - started
    alive = covm.poll() is None and api(socket_path, "GET", "/vmm.ping") == 200
    stopped = api(socket_path, "PUT", "/vmm.shutdown") == 204 if alive else False
    try:
        status = covm.wait(20)
    except subprocess.TimeoutExpired:
        covm.kill()
        status = None
    ok = not failed and alive and stopped and status == 0
    if not ok:
        log.close()
        tail = (scratch / "covm.log").read_text(errors="replace").splitlines()[-40:]
        print("covm's log (last lines):\n" + "\n".join(tail))
    for failure in failed:
        print(f"api contract: {failure}")
    print(f"api contract: {len(STATES)} schemathesis runs in {took:.0f} s; covm "
          f"{'still answered' if alive else 'DID NOT ANSWER'} and exited {status} on vmm.shutdown: "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemathesis", required=True, help="the schemathesis executable")
    parser.add_argument("--covm", default=str(ROOT / "target" / "debug" / "covm"))
    parser.add_argument("--examples", type=int, default=20, help="examples per operation")
    parser.add_argument("--seed", type=int, default=1, help="schemathesis' seed (a fixed run)")
    args = parser.parse_args()
    # Absolute: schemathesis runs with the sandbox's tmpfs as its directory.
    args.schemathesis = os.path.abspath(args.schemathesis)
    args.covm = os.path.abspath(args.covm)
    scratch = os.environ.get(INSIDE)
    if scratch:
        return run_inside(args, Path(scratch))
    if not Path(args.schemathesis).exists():
        skip(f"schemathesis is not at {args.schemathesis}")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        skip("/dev/kvm is not usable here", kvm=True)
    return enter_sandbox(args)


if __name__ == "__main__":
    sys.exit(main())
