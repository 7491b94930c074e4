#!/usr/bin/env python3
"""covm's main job in one command: launch a confidential VM (the emulated
platform, no hardware protection) on the built-in firmware, running the
`dirty` workload, and live-migrate it to a second covm process through the
firmware migration agents' attested, sealed session. Prints the guest
owner's policy, what each side's agent attested, both migration reports,
the guest's heartbeat continuing at the destination, and a verdict.

Usage: python3 scripts/demo.py [--keep DIR]
(builds covm with `cargo build --release` first: minutes on a fresh clone)
"""
import argparse, json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from covmkit.api import call, error_text, get_json, wait_ready
from covmkit.build import release

WORKLOAD = "workload=dirty mib=64 rate=64"
VM = ["--cpus", "boot=2", "--memory", "size=512M", "--cmdline", WORKLOAD]
TCB_PARTS = ("bootloader", "tee", "snp", "microcode")


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


def rounded(value):
    """Numbers to three significant decimals, for reading."""
    if isinstance(value, float):
        return round(value, 3 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def show(title, value, note=None):
    print(f"\n== {title}")
    print(json.dumps(rounded(value), indent=2))
    if note:
        print(note)


def tcb_parts(reported_tcb):
    """SEV-SNP's TCB_VERSION (Milan/Genoa layout): boot loader in byte 0,
    TEE in byte 1, SNP in byte 6, microcode in byte 7."""
    value = int(reported_tcb, 16)
    return {"bootloader": value & 0xff, "tee": (value >> 8) & 0xff,
            "snp": (value >> 48) & 0xff, "microcode": (value >> 56) & 0xff}


def peer_note(peer, policy):
    tcb = tcb_parts(peer["reported_tcb"])
    parts = ", ".join(f"{k} {tcb[k]} >= {policy['min_tcb'][k]}" for k in TCB_PARTS)
    allowed = peer["measurement"] in policy["allowed_measurements"]
    return (f"   measurement {'is' if allowed else 'is NOT'} one the policy allows; reported_tcb "
            f"{peer['reported_tcb']} is the platform's firmware versions packed in one number, each at or "
            f"above the policy's min_tcb: {parts}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    print("demo: building covm (cargo build --release; the first run on a fresh clone takes a few minutes)")
    covm = release().covm
    tmp = args.keep or tempfile.mkdtemp(prefix="covm-demo-")
    os.makedirs(tmp, exist_ok=True)
    platform = f"emulated_cvm=on,root_key={os.path.join(tmp, 'root.key')}"

    # The guest owner measures the launch and writes a policy allowing it.
    measured = json.loads(subprocess.run([covm, "measure", "--platform", platform] + VM, check=True,
                                         capture_output=True, text=True).stdout)
    policy = {"version": 1, "allowed_platforms": ["emulated_cvm"],
              "allowed_measurements": [measured["measurement"]],
              "min_tcb": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}, "min_guest_svn": 1,
              "trusted_roots": [measured["root_public_key"]]}
    policy_path = os.path.join(tmp, "policy.json")
    with open(policy_path, "w") as f:
        json.dump(policy, f, indent=2)
    show("guest owner's migration policy", policy)

    files = {name: os.path.join(tmp, name) for name in
             ("source.sock", "destination.sock", "source.txt", "destination.txt", "source.log", "destination.log")}
    for p in files.values():
        if os.path.exists(p):
            os.unlink(p)
    dst = subprocess.Popen([covm, "-v", "--log-file", files["destination.log"], "--api-socket",
                            files["destination.sock"], "--serial", f"file={files['destination.txt']}"])
    src = subprocess.Popen([covm, "-v", "--log-file", files["source.log"], "--api-socket", files["source.sock"],
                            "--platform", platform, "--migration-policy", policy_path,
                            "--serial", f"file={files['source.txt']}"] + VM, stderr=subprocess.PIPE, text=True)
    try:
        src_sock, dst_sock = files["source.sock"], files["destination.sock"]
        wait_ready(dst_sock)
        wait_ready(src_sock)
        wait(lambda: len(heartbeats(files["source.txt"])) >= 5, "the source's heartbeat")
        show("source platform (vm.info)", get_json(src_sock, "vm.info")["platform"])
        url = f"unix:{os.path.join(tmp, 'migration.sock')}"
        status, body = call(dst_sock, "PUT", "vm.receive-migration", {"receiver_url": url})
        if status != 204:
            raise SystemExit(f"demo: receive-migration refused: {error_text(body)}")
        status, body = call(src_sock, "PUT", "vm.send-migration", {"destination_url": url, "downtime_ms": 100})
        if status != 204:
            raise SystemExit(f"demo: send-migration refused: {error_text(body)}")

        def source_done():
            try:
                i = get_json(src_sock, "vm.info")
            except OSError:
                return None
            migration = (i or {}).get("migration") or {}
            if migration.get("error"):
                raise SystemExit(f"demo: migration failed: {migration['error']}")
            return i if migration.get("report") else None

        src_info = wait(source_done, "the source's migration report")["migration"]
        dst_info = wait(lambda: ((get_json(dst_sock, "vm.info") or {}).get("migration") or {}).get("report")
                        and get_json(dst_sock, "vm.info"), "the destination's report")["migration"]
        src_peer, dst_peer = src_info["session"]["attested_peer"], dst_info["session"]["attested_peer"]
        show("source: the destination its agent attested", src_peer, peer_note(src_peer, policy))
        show("source: migration report", src_info["report"],
             f"   crypto_ms {src_info['session']['crypto_ms']:.1f}: time covm waited on the source's agent "
             "(reading, sealing and handing over pages and vCPU state)")
        show("destination: the source its agent attested", dst_peer, peer_note(dst_peer, policy))
        show("destination: migration report", dst_info["report"],
             f"   crypto_ms {dst_info['session']['crypto_ms']:.1f}: time covm waited on the destination's agent "
             "(checking, opening and writing pages and vCPU state)")
        src.wait(timeout=30)
        before = heartbeats(files["source.txt"])[-1]
        wait(lambda: any(n > before + 3 for n in heartbeats(files["destination.txt"])),
             "the heartbeat at the destination")
        after = [n for n in heartbeats(files["destination.txt"]) if n > before][:5]
        with open(files["destination.txt"]) as f:
            corrupted = "FAIL" in f.read()
        call(dst_sock, "PUT", "vmm.shutdown")
        dst.wait(timeout=30)
        downtime = src_info["report"]["downtime_ms"] + dst_info["report"].get("resume_ms", 0)
        attested = src_peer["measurement"] in policy["allowed_measurements"] and \
            dst_peer["measurement"] in policy["allowed_measurements"]
        print(f"\nheartbeat: last at the source {before}, then at the destination {after}")
        print("\n== verdict")
        print(f"   {'PASS' if attested else 'FAIL'}  each side's agent attested the other, and the policy allows it")
        print(f"   PASS  migrated: {src_info['report']['total_ms']:.0f} ms in all, the guest paused "
              f"{downtime:.1f} ms")
        print(f"   {'FAIL' if corrupted else 'PASS'}  the guest's heartbeat went on at the destination, "
              f"{'with' if corrupted else 'and every page it checked was intact (no'} corruption"
              f"{'' if corrupted else ')'}")
        print(f"\nfiles (policy, serial output, covm's logs) in {tmp}")
        if corrupted or not attested:
            sys.exit(1)
    finally:
        for p in (src, dst):
            if p.poll() is None:
                p.kill()


if __name__ == "__main__":
    main()
