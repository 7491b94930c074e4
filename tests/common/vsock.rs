//! The host side of a guest's `vsock` workload: covm's hybrid socket
//! (`CONNECT <port>` / `OK <host port>`), echoes checked byte for byte, an
//! echo server for the guest's client, and its verified rounds.

use super::wait_for_serial;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Echoes every connection to a listener at `path` on its own thread.
pub fn echo_server(path: PathBuf) {
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Connects to the guest's `port` through covm's socket at `path`: the
/// stream after `OK <host port>`, or what covm did instead.
pub fn connect(path: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8(line).unwrap();
    let host_port: u32 = line
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("answered {line:?}"))?;
    assert!(host_port >= 1 << 30, "{line}");
    Ok(s)
}

/// Sends `len` bytes of varied data through `s` and checks the echo.
pub fn echo_through(s: &mut UnixStream, len: usize, seed: u64) {
    let data: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8)
        .collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data).unwrap())
    };
    let mut back = vec![0u8; len];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "the echo differs from what was sent");
}

/// The `rounds=` of the last heartbeat in `serial`.
pub fn rounds(serial: &Path) -> u64 {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("rounds=")?.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits up to a minute for `at_least` verified rounds, and no FAIL.
pub fn wait_rounds(serial: &Path, at_least: u64) {
    let text = wait_for_serial(serial, Duration::from_secs(60), |_| rounds(serial) >= at_least);
    assert!(rounds(serial) >= at_least, "{}:\n{text}", serial.display());
    assert!(!text.contains("FAIL"), "{}:\n{text}", serial.display());
}
