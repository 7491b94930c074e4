//! A guest owner of the end-to-end tests' confidential VMs: an emulated
//! root key, a migration policy allowing the test VM's measurement, and
//! covm processes started on the emulated confidential platform.

use super::api::*;
use super::*;
use serde_json::Value;
use std::path::PathBuf;

/// The confidential test VM's workload and shape.
pub const WORKLOAD: &str = "workload=dirty mib=24 rate=64 seed=7";
pub const CPUS: &str = "boot=2";
pub const MEMORY: &str = "size=128M";

/// The platform, root key and policy of one test's VMs.
pub struct Owner {
    pub dir: Scratch,
    pub platform: String,
    pub policy: PathBuf,
    pub measurement: String,
    pub root: String,
}

impl Owner {
    /// A root key and a policy (version 2) allowing exactly the launch
    /// measurement of the test VM (or `allow` instead).
    ///
    /// The VMs' migration agent has `COVM_TEST_AGENT_VCPUS` vCPUs (1 when
    /// unset): `.ci/run` runs the confidential tests a second time with 2,
    /// so every attack is also tried on a stream of two lanes.
    pub fn new(name: &str, allow: Option<&str>) -> Owner {
        let agents = std::env::var("COVM_TEST_AGENT_VCPUS").map_or(1, |n| {
            n.parse()
                .unwrap_or_else(|_| panic!("COVM_TEST_AGENT_VCPUS={n}: not a vCPU count"))
        });
        Owner::with_agent_vcpus(name, allow, agents)
    }

    /// [`Owner::new`] for VMs whose migration agent has `agents` vCPUs
    /// (`--platform agent_vcpus=N`, part of the measurement).
    pub fn with_agent_vcpus(name: &str, allow: Option<&str>, agents: u8) -> Owner {
        let dir = Scratch::new(name);
        let platform = format!(
            "emulated_cvm=on,root_key={},agent_vcpus={agents}",
            dir.path("root.key").display()
        );
        let out = covm()
            .args(["measure", "--platform", &platform, "--cpus", CPUS, "--memory", MEMORY])
            .args(["--cmdline", WORKLOAD])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "covm measure: {}", stderr(&out));
        let measured: Value = serde_json::from_slice(&out.stdout).unwrap();
        let measurement = measured["measurement"].as_str().unwrap().to_string();
        let root = measured["root_public_key"].as_str().unwrap().to_string();
        let mut owner = Owner {
            policy: dir.path("policy.json"),
            dir,
            platform,
            measurement,
            root,
        };
        let allowed = allow.map(str::to_string).unwrap_or(owner.measurement.clone());
        owner.policy = owner.write_policy("policy.json", 2, &allowed);
        owner
    }

    pub fn write_policy(&self, file: &str, version: u32, measurement: &str) -> PathBuf {
        let path = self.dir.path(file);
        let policy = serde_json::json!({
            "version": version,
            "allowed_platforms": ["emulated_cvm"],
            "allowed_measurements": [measurement],
            "min_tcb": {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1},
            "min_guest_svn": 1,
            "trusted_roots": [self.root],
        });
        std::fs::write(&path, policy.to_string()).unwrap();
        path
    }

    /// A confidential VM running the workload.
    pub fn source(&self, name: &str) -> (Process, Api, PathBuf) {
        self.source_with(name, &[])
    }

    /// A confidential VM running the workload, with `extra` options.
    pub fn source_with(&self, name: &str, extra: &[&str]) -> (Process, Api, PathBuf) {
        let policy = self.policy.display().to_string();
        let mut args = vec![
            "--platform",
            &self.platform,
            "--migration-policy",
            &policy,
            "--cpus",
            CPUS,
            "--memory",
            MEMORY,
            "--cmdline",
            WORKLOAD,
        ];
        args.extend_from_slice(extra);
        covm_named(&self.dir, name, &args)
    }

    /// A covm waiting for a migration, with `extra` options.
    pub fn destination(&self, name: &str, extra: &[&str]) -> (Process, Api, PathBuf) {
        destination(&self.dir, name, extra)
    }
}
