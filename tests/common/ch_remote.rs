//! Cloud Hypervisor's own client, `ch-remote` (prebuilt, beside the
//! project in `../shared/tools/ch-remote/`), run as an operator runs it, and
//! the event monitor's file read back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where ch-remote is: `COVM_CH_REMOTE`, else `../shared/tools/ch-remote/ch-remote`
/// beside the checkout; `None` (with the reason printed) where it is missing.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("COVM_CH_REMOTE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/ch-remote/ch-remote"));
    if path.is_file() {
        Some(path)
    } else {
        covm_test_support::skip(format!("Cloud Hypervisor's ch-remote is not at {}", path.display()));
        None
    }
}

/// What one ch-remote run printed and how it exited.
#[derive(Debug)]
pub struct Ran {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// ch-remote aimed at one API socket.
pub struct ChRemote {
    pub binary: PathBuf,
    pub socket: PathBuf,
}

impl ChRemote {
    /// Runs `ch-remote --api-socket SOCKET args...` with `stdin`, killing it
    /// (and failing the test) if it runs over 60 s: no call may hang.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let mut child = Command::new(&self.binary)
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("ch-remote {args:?} hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        Ran {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        self.run_with_stdin(args, b"")
    }

    /// Runs a command that must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert_eq!(ran.status, Some(0), "ch-remote {args:?}: {ran:?}");
        ran.stdout
    }

    /// Runs a command covm must refuse: exit 1, and CH's error chain on
    /// standard error with `status` (CH's name for it) and `needle`.
    pub fn refused(&self, args: &[&str], status: &str, needle: &str) -> Ran {
        let ran = self.run(args);
        assert_eq!(ran.status, Some(1), "ch-remote {args:?}: {ran:?}");
        assert!(
            ran.stderr.contains(&format!("Server responded with {status}")),
            "ch-remote {args:?}: no {status} in {}",
            ran.stderr
        );
        assert!(
            ran.stderr.contains(needle),
            "ch-remote {args:?}: {needle:?} not in {}",
            ran.stderr
        );
        assert!(
            !ran.stderr.contains("Can't get remote's error messages"),
            "the error body is not CH's message list: {}",
            ran.stderr
        );
        ran
    }
}

/// One line of the event monitor's file.
#[derive(Debug, Clone)]
pub struct Event {
    pub source: String,
    pub event: String,
    pub properties: serde_json::Value,
    pub at: Duration,
}

/// Reads the event monitor's file: every line one JSON object with CH's
/// four fields, timestamps never going back.
pub fn events(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap();
    // A line still being written (no newline yet) is read next time.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let mut out: Vec<Event> = Vec::new();
    for line in complete.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()));
        let object = value.as_object().unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{line}");
        let secs = value["timestamp"]["secs"].as_u64().unwrap_or_else(|| panic!("{line}"));
        let nanos = value["timestamp"]["nanos"].as_u64().unwrap_or_else(|| panic!("{line}"));
        let at = Duration::new(secs, nanos as u32);
        assert!(out.last().is_none_or(|e| e.at <= at), "time went back at {line}");
        let properties = value["properties"].clone();
        assert!(properties.is_null() || properties.is_object(), "{line}");
        out.push(Event {
            source: value["source"].as_str().unwrap().to_owned(),
            event: value["event"].as_str().unwrap().to_owned(),
            properties,
            at,
        });
    }
    out
}

/// The events as `source/event`, each run of `migration-*memory-iteration`
/// folded into one `source/event*` after checking its ids count 0, 1, 2...
pub fn sequence(events: &[Event]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut next_id = 0u64;
    for e in events {
        let name = format!("{}/{}", e.source, e.event);
        if e.event.ends_with("memory-iteration") {
            let id: u64 = e.properties["id"].as_str().unwrap().parse().unwrap();
            let folded = format!("{name}*");
            if out.last() != Some(&folded) {
                next_id = 0;
                out.push(folded);
            }
            assert_eq!(id, next_id, "iteration ids skip at {e:?}");
            next_id += 1;
        } else {
            out.push(name);
        }
    }
    out
}

/// Waits until the event file holds `name` (`source/event`), up to `within`.
pub fn wait_event(path: &Path, name: &str, within: Duration) -> Vec<Event> {
    let start = Instant::now();
    loop {
        if path.exists() {
            let all = events(path);
            if sequence(&all).iter().any(|n| n == name) {
                return all;
            }
        }
        assert!(
            start.elapsed() < within,
            "no {name} in {} within {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
