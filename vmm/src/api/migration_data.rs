//! Cloud Hypervisor's migration request bodies (`SendMigrationData`,
//! `ReceiveMigrationData`) as its `ch-remote` writes them: every field CH
//! defines is read; those covm cannot honour are accepted at CH's default
//! and refused by name otherwise. Fields CH does not define are refused,
//! apart from covm's extensions, `verified` and `max_bandwidth`.

use covm_migration::engine::{SendOptions, TimeoutStrategy};
use covm_migration::paced::MIN_BANDWIDTH;
use covm_migration::transport::Endpoint;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// CH's `MigrationMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MigrationMode {
    /// Copy memory before the destination resumes (covm's only mode).
    #[default]
    Precopy,
    /// Resume first, fault pages in later (not supported).
    Postcopy,
}

/// Most parallel connections CH accepts (its `MAX_MIGRATION_CONNECTIONS`).
const MAX_CONNECTIONS: u64 = 128;

/// CH's `SendMigrationData`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMigrationData {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub destination_url: String,
    /// Same-host migration by sharing memory (not supported).
    #[serde(default)]
    pub local: bool,
    /// Keep the source paused after the switch (not supported: the switch
    /// is one-way).
    #[serde(default)]
    pub preserve_source: bool,
    /// Downtime target in ms (default 300, at least 1).
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Longest pre-copy in s (default 3600, at least 1).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// `Cancel` (default) or `Ignore`.
    #[serde(default)]
    pub timeout_strategy: Option<TimeoutStrategy>,
    /// Parallel connections (1 to 128; covm uses one).
    #[serde(default)]
    pub connections: Option<u64>,
    /// mTLS certificates (not supported).
    #[serde(default)]
    pub tls_dir: Option<String>,
    /// `Precopy` (default) or `Postcopy` (not supported).
    #[serde(default)]
    pub memory_mode: MigrationMode,
    /// covm extension, confidential VMs only: verified mode. The source's
    /// agent digests the paused guest's memory into its Final record and
    /// the destination's agent commits only if its memory has the same
    /// digest (the host's dirty log is then only a hint).
    #[serde(default)]
    pub verified: bool,
    /// covm extension: a cap on the migration's bandwidth, in bytes per
    /// second (at least 1 MiB/s); unset: as fast as the link goes.
    #[serde(default)]
    pub max_bandwidth: Option<u64>,
}

/// What a `vm.send-migration` asks for.
#[derive(Debug)]
pub struct SendRequest {
    /// Where to.
    pub endpoint: Endpoint,
    /// The engine's options.
    pub options: SendOptions,
    /// Confidential verified mode.
    pub verified: bool,
}

fn refused(field: &str, why: &str) -> String {
    format!("{field}: {why}")
}

fn at_least_one(field: &str, value: Option<u64>) -> Result<Option<u64>, String> {
    match value {
        Some(0) => Err(refused(field, "must be at least 1")),
        other => Ok(other),
    }
}

fn no_tls(tls_dir: &Option<String>) -> Result<(), String> {
    match tls_dir {
        Some(_) => Err(refused(
            "tls_dir",
            "covm's migration transport has no TLS (a confidential VM's pages and state travel sealed by its \
             agents whatever the transport); leave tls_dir unset",
        )),
        None => Ok(()),
    }
}

fn precopy(mode: MigrationMode) -> Result<(), String> {
    match mode {
        MigrationMode::Precopy => Ok(()),
        MigrationMode::Postcopy => Err(refused(
            "memory_mode",
            "covm migrates with pre-copy only (Postcopy is not supported)",
        )),
    }
}

/// Parses a `vm.send-migration` body.
pub fn send_request(body: &[u8]) -> Result<SendRequest, String> {
    let data: SendMigrationData =
        serde_json::from_slice(body).map_err(|e| format!("invalid SendMigrationData: {e}"))?;
    if data.local {
        return Err(refused(
            "local",
            "local migration (same host, memory shared) is not supported: covm copies memory; set local to false",
        ));
    }
    if data.preserve_source {
        return Err(refused(
            "preserve_source",
            "covm does not keep the source VM once the destination commits (the switch is one-way); set \
             preserve_source to false",
        ));
    }
    match data.connections {
        None | Some(1) => {}
        Some(0) => return Err(refused("connections", "must be between 1 and 128")),
        Some(n) if n > MAX_CONNECTIONS => return Err(refused("connections", "must be between 1 and 128")),
        Some(n) => {
            return Err(refused(
                "connections",
                &format!("covm migrates over one connection, not {n}; set connections to 1"),
            ))
        }
    }
    no_tls(&data.tls_dir)?;
    precopy(data.memory_mode)?;
    let endpoint: Endpoint = data
        .destination_url
        .parse()
        .map_err(|e| format!("destination_url: {e}"))?;
    let mut options = SendOptions::default();
    if let Some(ms) = at_least_one("downtime_ms", data.downtime_ms)? {
        options.downtime = Duration::from_millis(ms);
    }
    if let Some(s) = at_least_one("timeout_s", data.timeout_s)? {
        options.timeout = Duration::from_secs(s);
    }
    if let Some(strategy) = data.timeout_strategy {
        options.timeout_strategy = strategy;
    }
    if let Some(cap) = data.max_bandwidth {
        if cap < MIN_BANDWIDTH {
            return Err(refused(
                "max_bandwidth",
                &format!("{cap} bytes per second is below the lowest cap, {MIN_BANDWIDTH} (1 MiB/s)"),
            ));
        }
        options.max_bandwidth = Some(cap);
    }
    Ok(SendRequest {
        endpoint,
        options,
        verified: data.verified,
    })
}

/// CH's `ReceiveMigrationData`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMigrationData {
    /// `tcp:HOST:PORT` or `unix:PATH`.
    pub receiver_url: String,
    /// mTLS certificates (not supported).
    #[serde(default)]
    pub tls_dir: Option<String>,
    /// `Precopy` (default) or `Postcopy` (not supported).
    #[serde(default)]
    pub memory_mode: MigrationMode,
    /// VFIO replacement descriptors (covm has no VFIO devices).
    #[serde(default)]
    pub vfio_fds: Option<Vec<Value>>,
    /// The iommufd descriptor (covm has no VFIO devices).
    #[serde(default)]
    pub iommufd_fd: Option<Value>,
    /// Host NUMA placement of memory zones (covm has no zones).
    #[serde(default)]
    pub zone_updates: Vec<Value>,
}

/// Parses a `vm.receive-migration` body.
pub fn receive_endpoint(body: &[u8]) -> Result<Endpoint, String> {
    let data: ReceiveMigrationData =
        serde_json::from_slice(body).map_err(|e| format!("invalid ReceiveMigrationData: {e}"))?;
    no_tls(&data.tls_dir)?;
    precopy(data.memory_mode)?;
    if data.vfio_fds.as_ref().is_some_and(|fds| !fds.is_empty()) {
        return Err(refused("vfio_fds", "covm has no VFIO devices to hand descriptors to"));
    }
    if data.iommufd_fd.as_ref().is_some_and(|fd| !fd.is_null()) {
        return Err(refused("iommufd_fd", "covm has no VFIO devices to hand descriptors to"));
    }
    if !data.zone_updates.is_empty() {
        return Err(refused("zone_updates", "covm has no memory zones to place"));
    }
    data.receiver_url.parse().map_err(|e| format!("receiver_url: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ch-remote v54 sends for `send-migration destination_url=unix:/tmp/x`.
    const CH_SEND: &str = r#"{"destination_url":"unix:/tmp/x","local":false,"preserve_source":false,
        "downtime_ms":300,"timeout_s":3600,"timeout_strategy":"Cancel","connections":1,"tls_dir":null,
        "memory_mode":"Precopy"}"#;
    /// What ch-remote v54 sends for `receive-migration receiver_url=unix:/tmp/y`.
    const CH_RECEIVE: &str = r#"{"receiver_url":"unix:/tmp/y","tls_dir":null,"memory_mode":"Precopy",
        "vfio_fds":null,"iommufd_fd":null,"zone_updates":[]}"#;

    fn with(base: &str, field: &str, value: Value) -> Vec<u8> {
        let mut json: Value = serde_json::from_str(base).unwrap();
        json[field] = value;
        serde_json::to_vec(&json).unwrap()
    }

    #[test]
    fn ch_remote_bodies_at_their_defaults_are_accepted() {
        let send = send_request(CH_SEND.as_bytes()).unwrap();
        assert_eq!(send.endpoint.to_string(), "unix:/tmp/x");
        assert_eq!(send.options.downtime, Duration::from_millis(300));
        assert_eq!(send.options.timeout, Duration::from_secs(3600));
        assert!(!send.verified);
        assert_eq!(
            receive_endpoint(CH_RECEIVE.as_bytes()).unwrap().to_string(),
            "unix:/tmp/y"
        );
        let tuned = with(CH_SEND, "timeout_strategy", "Ignore".into());
        assert_eq!(
            send_request(&tuned).unwrap().options.timeout_strategy,
            TimeoutStrategy::Ignore
        );
        assert_eq!(send.options.max_bandwidth, None);
        let capped = with(CH_SEND, "max_bandwidth", (64u64 << 20).into());
        assert_eq!(send_request(&capped).unwrap().options.max_bandwidth, Some(64 << 20));
    }

    #[test]
    fn values_covm_cannot_honour_are_refused_by_name() {
        let cases = [
            ("local", Value::Bool(true), "local: "),
            ("preserve_source", Value::Bool(true), "preserve_source: "),
            (
                "connections",
                4.into(),
                "connections: covm migrates over one connection, not 4",
            ),
            ("connections", 0.into(), "connections: must be between 1 and 128"),
            ("connections", 129.into(), "connections: must be between 1 and 128"),
            ("tls_dir", "/etc/certs".into(), "tls_dir: "),
            ("memory_mode", "Postcopy".into(), "memory_mode: "),
            ("downtime_ms", 0.into(), "downtime_ms: must be at least 1"),
            ("timeout_s", 0.into(), "timeout_s: must be at least 1"),
            (
                "max_bandwidth",
                1000.into(),
                "max_bandwidth: 1000 bytes per second is below the lowest cap, 1048576 (1 MiB/s)",
            ),
        ];
        for (field, value, expected) in cases {
            let error = send_request(&with(CH_SEND, field, value.clone())).unwrap_err();
            assert!(error.starts_with(expected), "{field}={value}: {error}");
        }
        let cases = [
            ("tls_dir", "/etc/certs".into(), "tls_dir: "),
            ("memory_mode", "Postcopy".into(), "memory_mode: "),
            ("vfio_fds", serde_json::json!([{"id": "vfio0", "fd": 3}]), "vfio_fds: "),
            ("iommufd_fd", 3.into(), "iommufd_fd: "),
            (
                "zone_updates",
                serde_json::json!([{"id": "z", "host_numa_node": 0}]),
                "zone_updates: ",
            ),
        ];
        for (field, value, expected) in cases {
            let error = receive_endpoint(&with(CH_RECEIVE, field, value.clone())).unwrap_err();
            assert!(error.starts_with(expected), "{field}={value}: {error}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_urls_are_named() {
        let error = send_request(&with(CH_SEND, "bogus", 1.into())).unwrap_err();
        assert!(error.contains("unknown field `bogus`"), "{error}");
        let error = send_request(&with(CH_SEND, "destination_url", "ftp:x".into())).unwrap_err();
        assert!(error.starts_with("destination_url: "), "{error}");
        let error = receive_endpoint(&with(CH_RECEIVE, "receiver_url", "x".into())).unwrap_err();
        assert!(error.starts_with("receiver_url: "), "{error}");
    }
}
