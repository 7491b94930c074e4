#!/usr/bin/env python3
"""covm's main job in one command: launch a confidential VM (the emulated
platform, no hardware protection) on the built-in firmware, running the
`dirty` workload, and live-migrate it to a second covm process through the
firmware migration agents' attested, sealed session. Prints the attested
peers, the migration reports and the guest's heartbeat continuing at the
destination.

Usage: python3 scripts/demo.py [--keep DIR]   (builds covm --release first)
"""
import argparse, json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from covm_paths import COVM, ROOT
from bench_migration import api, wait_socket

WORKLOAD = "workload=dirty mib=64 rate=64"
VM = ["--cpus", "boot=2", "--memory", "size=512M", "--cmdline", WORKLOAD]


def heartbeats(path):
    try:
        with open(path) as f:
            return [int(l.split()[1]) for l in f if l.startswith("heartbeat ")]
    except FileNotFoundError:
        return []


def wait(pred, what, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def info(sock):
    status, body = api(sock, "GET", "vm.info")
    return json.loads(body) if status == 200 else None


def show(title, value):
    print(f"\n== {title}")
    print(json.dumps(value, indent=2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "covm"], cwd=ROOT, check=True)
    tmp = args.keep or tempfile.mkdtemp(prefix="covm-demo-")
    os.makedirs(tmp, exist_ok=True)
    platform = f"emulated_cvm=on,root_key={os.path.join(tmp, 'root.key')}"

    # The guest owner measures the launch and writes a policy allowing it.
    measured = json.loads(subprocess.run([COVM, "measure", "--platform", platform] + VM, check=True,
                                         capture_output=True, text=True).stdout)
    policy = {"version": 1, "allowed_platforms": ["emulated_cvm"],
              "allowed_measurements": [measured["measurement"]],
              "min_tcb": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}, "min_guest_svn": 1,
              "trusted_roots": [measured["root_public_key"]]}
    policy_path = os.path.join(tmp, "policy.json")
    with open(policy_path, "w") as f:
        json.dump(policy, f, indent=2)
    show("guest owner's migration policy", policy)

    src_sock, dst_sock = os.path.join(tmp, "source.sock"), os.path.join(tmp, "destination.sock")
    src_serial, dst_serial = os.path.join(tmp, "source.txt"), os.path.join(tmp, "destination.txt")
    for p in (src_sock, dst_sock, src_serial, dst_serial):
        if os.path.exists(p):
            os.unlink(p)
    dst = subprocess.Popen([COVM, "--api-socket", dst_sock, "--serial", f"file={dst_serial}"],
                           stderr=subprocess.DEVNULL)
    src = subprocess.Popen([COVM, "--api-socket", src_sock, "--platform", platform, "--migration-policy",
                            policy_path, "--serial", f"file={src_serial}"] + VM,
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_socket(dst_sock)
        wait_socket(src_sock)
        wait(lambda: len(heartbeats(src_serial)) >= 5, "the source's heartbeat")
        show("source platform (vm.info)", info(src_sock)["platform"])
        url = f"unix:{os.path.join(tmp, 'migration.sock')}"
        assert api(dst_sock, "PUT", "vm.receive-migration", {"receiver_url": url})[0] == 204
        status, body = api(src_sock, "PUT", "vm.send-migration", {"destination_url": url, "downtime_ms": 100})
        if status != 204:
            raise SystemExit(f"demo: send-migration refused: {body.decode()}")
        last = {}

        def source_done():
            try:
                i = info(src_sock)
            except OSError:
                return None
            if i and i.get("migration", {}).get("report"):
                last["source"] = i
                return i
            if i and i.get("migration", {}).get("error"):
                raise SystemExit(f"demo: migration failed: {i['migration']['error']}")
            return None

        wait(source_done, "the source's migration report")
        src_info = last["source"]["migration"]
        show("source: attested destination", src_info["session"]["attested_peer"])
        show("source: migration report", src_info["report"])
        dst_info = wait(lambda: (info(dst_sock) or {}).get("migration", {}).get("report") and info(dst_sock),
                        "the destination's report")
        show("destination: attested source", dst_info["migration"]["session"]["attested_peer"])
        show("destination: migration report", dst_info["migration"]["report"])
        src.wait(timeout=30)
        before = heartbeats(src_serial)[-1]
        wait(lambda: any(n > before + 3 for n in heartbeats(dst_serial)), "the heartbeat at the destination")
        print(f"\nheartbeat: last at the source {before}, continuing at the destination "
              f"{[n for n in heartbeats(dst_serial) if n > before][:5]} ... (no FAIL: "
              f"{'FAIL' not in open(dst_serial).read()})")
        api(dst_sock, "PUT", "vmm.shutdown")
        dst.wait(timeout=30)
        print(f"\nfiles in {tmp}")
    finally:
        for p in (src, dst):
            if p.poll() is None:
                p.kill()


if __name__ == "__main__":
    main()
