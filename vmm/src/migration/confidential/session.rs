//! What `vm.info` shows of a confidential migration session.

use super::mailbox::PeerInfo;
use crate::platform::hex;
use covm_agent_protocol::Platform as PlatformCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A session's public facts: nothing secret, everything the host saw.
#[derive(Debug, Default)]
struct Facts {
    role: &'static str,
    state: &'static str,
    peer: Option<PeerInfo>,
    epoch: u32,
    records: u64,
    pages: u64,
    crypto: Duration,
    error: Option<String>,
}

/// Shared between the session (writer) and `vm.info` (reader).
#[derive(Debug, Clone, Default)]
pub struct SessionInfo(Arc<Mutex<Facts>>);

impl SessionInfo {
    /// A new session in `role` ("source" or "destination").
    pub fn new(role: &'static str) -> Self {
        let info = SessionInfo::default();
        info.update(|f| {
            f.role = role;
            f.state = "handshake";
        });
        info
    }

    fn update(&self, change: impl FnOnce(&mut Facts)) {
        change(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The session moved to `state`.
    pub fn set_state(&self, state: &'static str) {
        self.update(|f| f.state = state);
    }

    /// The handshake attested `peer`; the event monitor hears it.
    pub fn set_peer(&self, peer: PeerInfo) {
        let mut role = "";
        self.update(|f| {
            f.peer = Some(peer);
            f.state = "streaming";
            role = f.role;
        });
        let event = match role {
            "destination" => "migration-receive-peer-attested",
            _ => "migration-peer-attested",
        };
        let facts = peer_json(peer);
        let properties: Vec<(&str, String)> = ["platform", "measurement", "policy_version", "reported_tcb"]
            .into_iter()
            .map(|key| {
                (
                    key,
                    facts[key]
                        .as_str()
                        .map_or_else(|| facts[key].to_string(), str::to_owned),
                )
            })
            .collect();
        crate::event_monitor::emit("vm", event, &properties);
    }

    /// Records and pages moved, the open epoch.
    pub fn add(&self, records: u64, pages: u64, epoch: u32) {
        self.update(|f| {
            f.records += records;
            f.pages += pages;
            f.epoch = epoch;
        });
    }

    /// Time spent in the agent.
    pub fn add_crypto(&self, spent: Duration) {
        self.update(|f| f.crypto += spent);
    }

    /// Time spent in the agent so far.
    pub fn crypto(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).crypto
    }

    /// The session failed.
    pub fn fail(&self, error: String) {
        self.update(|f| {
            f.error = Some(error);
            // The outcome states say more than "failed" does.
            if !matches!(f.state, "committed" | "undecided" | "aborted") {
                f.state = "failed";
            }
        });
    }

    /// The `session` block of `vm.info`.
    pub fn to_json(&self) -> Value {
        let f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "role": f.role,
            "state": f.state,
            "attested_peer": f.peer.map(peer_json),
            "epoch": f.epoch,
            "records": f.records,
            "pages": f.pages,
            "crypto_ms": f.crypto.as_secs_f64() * 1e3,
            "error": f.error,
        })
    }
}

/// The attested peer as JSON (also printed by the demo).
pub fn peer_json(peer: PeerInfo) -> Value {
    json!({
        "platform": PlatformCode::from_code(peer.platform).map(|p| p.name()).unwrap_or("unknown"),
        "measurement": hex(&peer.measurement),
        "policy_version": peer.policy_version,
        "reported_tcb": format!("{:#018x}", peer.tcb),
    })
}
