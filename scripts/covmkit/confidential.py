"""An emulated confidential VM's options for the benchmarks: a root key
and a migration policy allowing exactly the measurement of `vm` (the VM
options covm measures) with `agent_vcpus` vCPUs for the migration agent."""
import json, os, subprocess

from covmkit.build import release


def policy_for(tmp, vm, agent_vcpus=1):
    platform = f"emulated_cvm=on,root_key={os.path.join(tmp, 'root.key')},agent_vcpus={agent_vcpus}"
    m = json.loads(subprocess.run([release().covm, "measure", "--platform", platform] + vm, check=True,
                                  capture_output=True, text=True).stdout)
    path = os.path.join(tmp, "policy.json")
    with open(path, "w") as f:
        json.dump({"version": 1, "allowed_platforms": ["emulated_cvm"], "allowed_measurements": [m["measurement"]],
                   "min_tcb": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}, "min_guest_svn": 1,
                   "trusted_roots": [m["root_public_key"]]}, f)
    return ["--platform", platform, "--migration-policy", path]
