//! Following an outgoing migration through `vm.info` until it ends, with a
//! progress bar on a terminal.

use crate::client::{self, ApiRequest};
use hyper::Method;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How often `vm.info` is read.
const POLL: Duration = Duration::from_millis(200);

/// How a followed migration ended badly.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// covm reported the failure; the guest kept running at the source.
    #[error("migration failed, the VM keeps running at the source: {0}")]
    Failed(String),
    /// covm went away before the destination committed.
    #[error("covm exited during the migration (last phase {0})")]
    Vanished(String),
    /// `vm.info` could not be read or understood.
    #[error("cannot follow the migration: {0}")]
    Info(String),
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Polls `vm.info` until the migration ends: returns the report (or, if
/// covm exits right after the commit, the last progress seen).
pub fn follow_migration(socket: &Path) -> Result<Value, FollowError> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}").expect("a valid template"),
    );
    let mut last_phase = String::from("Connecting");
    let mut last_progress = Value::Null;
    loop {
        let request = ApiRequest {
            method: Method::GET,
            endpoint: "/vm.info",
            body: None,
        };
        let info: Value = match client::send(socket, &request) {
            Ok(response) => serde_json::from_slice(&response.body).map_err(|e| FollowError::Info(e.to_string()))?,
            Err(_) if matches!(last_phase.as_str(), "Completing" | "Completed") => {
                // The source exits once the destination committed.
                bar.finish_and_clear();
                return Ok(serde_json::json!({ "completed": true, "last_progress": last_progress }));
            }
            Err(e) => {
                bar.finish_and_clear();
                return match e {
                    client::ClientError::Server { .. } => Err(FollowError::Info(e.to_string())),
                    _ => Err(FollowError::Vanished(last_phase)),
                };
            }
        };
        let migration = &info["migration"];
        if let Some(error) = migration["error"].as_str() {
            bar.finish_and_clear();
            return Err(FollowError::Failed(error.to_string()));
        }
        if migration["report"].is_object() {
            bar.finish_and_clear();
            return Ok(migration["report"].clone());
        }
        let p = &migration["progress"];
        last_phase = p["phase"].as_str().unwrap_or("Connecting").to_string();
        let sent = p["bytes_transferred"].as_u64().unwrap_or(0);
        let remaining = p["bytes_remaining"].as_u64().unwrap_or(0);
        bar.set_length(sent + remaining);
        bar.set_position(sent);
        bar.set_message(format!(
            "{last_phase} round {} | {} MiB sent, {} MiB dirty | {} MiB/s link, {} MiB/s dirtying | throttle {}% | downtime ~{} ms",
            p["round"].as_u64().unwrap_or(0),
            mib(sent),
            mib(remaining),
            mib(p["bandwidth_bytes_per_s"].as_u64().unwrap_or(0)),
            mib(p["dirty_rate_bytes_per_s"].as_u64().unwrap_or(0)),
            p["throttle_percent"].as_u64().unwrap_or(0),
            p["expected_downtime_ms"].as_u64().unwrap_or(0),
        ));
        last_progress = p.clone();
        std::thread::sleep(POLL);
    }
}
