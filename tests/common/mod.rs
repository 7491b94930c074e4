//! Helpers shared by the end-to-end tests: run the real covm binary against
//! real KVM, with its serial output in a temporary file.
#![allow(dead_code)]

pub mod api;
pub mod blk;
pub mod ch_remote;
pub mod leak;
pub mod netns;
pub mod owner;
pub mod vsock;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The covm binary under test.
pub fn covm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_covm"))
}

/// Heartbeat lines the dirty workload has printed to `serial` so far.
pub fn heartbeats(serial: &Path) -> usize {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("heartbeat "))
        .count()
}

/// Waits up to `within` for `at_least` heartbeats in `serial`; fails on
/// too few or on a FAIL line from the workload.
pub fn wait_heartbeats_within(serial: &Path, at_least: usize, within: Duration) {
    let text = wait_for_serial(serial, within, |t| {
        t.lines().filter(|l| l.starts_with("heartbeat ")).count() >= at_least
    });
    assert!(!text.contains("FAIL"), "{}:\n{text}", serial.display());
    assert!(
        heartbeats(serial) >= at_least,
        "{}: only {} heartbeats:\n{text}",
        serial.display(),
        heartbeats(serial)
    );
}

/// Waits up to a minute for `at_least` heartbeats in `serial`; fails on
/// too few or a FAIL line.
pub fn wait_heartbeats(serial: &Path, at_least: usize) {
    wait_heartbeats_within(serial, at_least, Duration::from_secs(60));
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        // Unique per call: tests of one binary run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("covm-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this machine can run KVM guests; tests that need it skip (with
/// the reason printed) where it cannot.
pub fn kvm_available() -> bool {
    covm_test_support::kvm_usable()
}

/// Runs covm to completion with a deadline, returning its output and the
/// serial output written to `serial`.
pub fn run_to_end(args: &[&str], serial: &Path, deadline: Duration) -> (Output, String) {
    let mut cmd = covm();
    cmd.args(args).arg("--serial").arg(format!("file={}", serial.display()));
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let output = wait_with_deadline(child, deadline);
    let serial = std::fs::read_to_string(serial).unwrap_or_default();
    (output, serial)
}

/// Waits for `child`, killing it (and failing the test) past `deadline`.
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "covm did not finish within {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A covm process that is killed when dropped, so a failing test leaves
/// no VM running behind it.
pub struct Process(pub Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts covm in the background with serial output to `serial`.
pub fn spawn(args: &[&str], serial: &Path) -> Process {
    Process(
        covm()
            .args(args)
            .arg("--serial")
            .arg(format!("file={}", serial.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Polls `serial` until `pred` holds for its contents or `deadline` passes.
pub fn wait_for_serial(serial: &Path, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if pred(&text) || start.elapsed() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A 2-vCPU, 256 MiB VM running the built-in firmware with `cmdline`, its
/// serial output in `serial`: the in-process tests' guest.
pub fn firmware_vm_config(serial: &Path, cmdline: &str) -> covm::config::VmConfig {
    use covm::config::{CpusConfig, MemoryConfig, Payload, SerialMode, VmConfig};
    VmConfig {
        cpus: CpusConfig::boot(2),
        memory: MemoryConfig { size: 256 << 20 },
        payload: Payload::BuiltinFirmware,
        cmdline: cmdline.into(),
        serial: SerialMode::File(serial.into()),
        api_socket: None,
        dirty_tracking: Default::default(),
        devices: Default::default(),
        platform: Default::default(),
    }
}

/// The numbers of the `dirty` workload's heartbeat lines in `serial`.
pub fn heartbeat_numbers(serial: &Path) -> Vec<u64> {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("heartbeat ")?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Fails if the workload reported a FAIL line in `serial`.
pub fn no_fail(serial: &Path) {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    assert!(!text.contains("FAIL"), "{}:\n{text}", serial.display());
}

/// Waits up to `within` for `child` to exit; its status code. Kills it and
/// fails the test when it does not.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("covm did not exit within {within:?}");
}

/// A `tcp:` migration URL on a loopback port free at the time of asking.
pub fn free_tcp_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp:127.0.0.1:{port}")
}

/// Waits up to a minute for `at_least` heartbeats numbered above `after`
/// in `serial`; whether they came, and the serial output.
pub fn heartbeats_after(serial: &Path, after: u64, at_least: usize) -> (bool, String) {
    let enough = || heartbeat_numbers(serial).iter().filter(|&&n| n > after).count() >= at_least;
    let text = wait_for_serial(serial, Duration::from_secs(60), |_| enough());
    (enough(), text)
}

/// The guest keeps running at the source: new heartbeats, no FAIL.
pub fn source_keeps_running(serial: &Path) {
    let before = heartbeat_numbers(serial).last().copied().unwrap_or(0);
    let (resumed, text) = heartbeats_after(serial, before, 3);
    assert!(
        resumed,
        "the source's guest did not resume after the refused migration:\n{text}"
    );
    no_fail(serial);
}

/// The destination continues the heartbeat from where the source stopped.
pub fn destination_continues(src_serial: &Path, dst_serial: &Path) {
    let last = *heartbeat_numbers(src_serial).last().expect("heartbeats at the source");
    let (continued, text) = heartbeats_after(dst_serial, last, 5);
    assert!(
        continued,
        "the destination did not continue the heartbeat after {last}:\n{text}"
    );
    no_fail(src_serial);
    no_fail(dst_serial);
}
