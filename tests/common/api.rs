//! The test side of covm's API: covm-remote's HTTP client over the socket.

use super::*;
use axum::http::Method;
use covm_remote::client::{self, ApiRequest, ClientError};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct Api {
    pub socket: PathBuf,
}

impl Api {
    /// (status, body or error message)
    pub fn call(&self, method: Method, endpoint: &'static str, body: Option<&str>) -> (u16, String) {
        let request = ApiRequest {
            method,
            endpoint,
            body: body.map(|b| b.as_bytes().to_vec()),
        };
        match client::send(&self.socket, &request) {
            Ok(r) => (r.status.as_u16(), String::from_utf8_lossy(&r.body).into_owned()),
            Err(ClientError::Server { status, message }) => (status.as_u16(), message),
            Err(e) => panic!("{endpoint}: {e}"),
        }
    }

    pub fn get(&self, endpoint: &'static str) -> (u16, String) {
        self.call(Method::GET, endpoint, None)
    }

    pub fn put(&self, endpoint: &'static str, body: Option<&str>) -> (u16, String) {
        self.call(Method::PUT, endpoint, body)
    }

    pub fn state(&self) -> String {
        let (status, body) = self.get("/vm.info");
        assert_eq!(status, 200, "{body}");
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        info["state"].as_str().unwrap().to_string()
    }

    /// `vm.info` as JSON.
    pub fn info(&self) -> serde_json::Value {
        let (status, body) = self.get("/vm.info");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the outgoing migration has sent more than `bytes`.
    pub fn wait_transferred(&self, bytes: u64) {
        let start = Instant::now();
        loop {
            let info = self.info();
            if info["migration"]["progress"]["bytes_transferred"].as_u64().unwrap_or(0) > bytes {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no pages flowed: {info}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the migration failed; its error, the VM still running.
    pub fn wait_migration_error(&self) -> String {
        let start = Instant::now();
        loop {
            let info = self.info();
            if let Some(error) = info["migration"]["error"].as_str() {
                assert_eq!(info["state"], "Running", "{info}");
                return error.to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the migration never failed: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&self) {
        let start = Instant::now();
        while client::send(
            &self.socket,
            &ApiRequest {
                method: Method::GET,
                endpoint: "/vmm.ping",
                body: None,
            },
        )
        .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "covm never answered on {}",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts covm with `--api-socket` (api.sock in `dir`) and `extra` arguments.
pub fn start(dir: &Scratch, extra: &[&str]) -> (Process, Api) {
    start_at(dir.path("api.sock"), extra)
}

/// Starts covm with its API on `socket` and `extra` arguments.
pub fn start_at(socket: PathBuf, extra: &[&str]) -> (Process, Api) {
    let child = covm()
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = Process(child);
    let api = Api { socket };
    api.wait_ready();
    (child, api)
}

/// covm with its API on `{name}.sock` and its serial output in
/// `{name}.txt` in `dir`, and `args`: with VM options, a source running
/// its VM; without, a destination waiting (for a migration or vm.create).
pub fn covm_named(dir: &Scratch, name: &str, args: &[&str]) -> (Process, Api, PathBuf) {
    let serial = dir.path(&format!("{name}.txt"));
    let serial_option = format!("file={}", serial.display());
    let mut all = vec!["--serial", &serial_option];
    all.extend_from_slice(args);
    let (child, api) = start_at(dir.path(&format!("{name}.sock")), &all);
    (child, api, serial)
}

/// A covm waiting for a migration, named `name` in `dir`, with `extra`
/// options.
pub fn destination(dir: &Scratch, name: &str, extra: &[&str]) -> (Process, Api, PathBuf) {
    covm_named(dir, name, extra)
}
