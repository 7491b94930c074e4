//! Cloud Hypervisor's event monitor: `--event-monitor path=FILE|fd=N`.
//!
//! Each event is a JSON object with CH's four fields, `timestamp` (time
//! since covm started, as CH writes a `Duration`: `{"secs": S, "nanos":
//! N}`), `source` (`vmm` or `vm`), `event` (CH's names, see docs/api.md) and
//! `properties` (`null`, or an object of strings). covm writes one object a
//! line (CH pretty-prints them with a blank line between); any reader of a
//! stream of JSON values reads both.
//!
//! Events go through a channel to a writer thread, so a slow reader of the
//! file (a pipe given as `fd=N`) never stalls the control loop or a
//! migration; [`flush`] waits for the writer before covm exits.

use crate::config::options::{OptionError, OptionMap};
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    /// A file covm creates (or truncates), as CH does.
    Path(PathBuf),
    /// A descriptor covm inherited, open for writing.
    Fd(i32),
}

/// Parses `--event-monitor`: `path=FILE` or `fd=N`, as CH takes it.
pub fn parse(text: &str) -> Result<EventSink, OptionError> {
    let m = OptionMap::parse("event-monitor", text, &["path", "fd"])?;
    match (
        m.get("path"),
        m.get_with("fd", |v| v.parse::<i32>().map_err(|_| "not a descriptor number".into()))?,
    ) {
        (Some(path), None) if !path.is_empty() => Ok(EventSink::Path(path.into())),
        (None, Some(fd)) if fd >= 0 => Ok(EventSink::Fd(fd)),
        (Some(_), Some(_)) => Err(m.invalid("fd", text, "give path=FILE or fd=N, not both")),
        _ => Err(m.invalid("path", text, "give path=FILE or fd=N")),
    }
}

/// Why the event monitor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EventMonitorError {
    /// The file cannot be created.
    #[error("--event-monitor: cannot create {}: {source}", path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The descriptor is not open for writing.
    #[error("--event-monitor: fd={fd} is not a descriptor open for writing: {reason}")]
    BadFd {
        /// The descriptor.
        fd: i32,
        /// What is wrong.
        reason: String,
    },
    /// The writer thread cannot start.
    #[error("--event-monitor: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

struct Monitor {
    start: Instant,
    lines: Mutex<Option<Sender<String>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

/// How long [`flush`] waits for a reader that stopped reading.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens `fd` as a file after checking it is open for writing.
fn adopt(fd: i32) -> Result<File, EventMonitorError> {
    let bad = |reason: String| EventMonitorError::BadFd { fd, reason };
    if fd < 0 {
        return Err(bad("a descriptor is not negative".into()));
    }
    // SAFETY: F_GETFL only reads the descriptor's flags; an invalid fd
    // yields -1 and EBADF, nothing else.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(bad("it is open read-only".into()));
    }
    // SAFETY: the descriptor is open (F_GETFL succeeded) and was handed to
    // covm for this purpose; the File becomes its only owner.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Starts the monitor; `start` is covm's start, the zero of timestamps.
/// Call once, before any event.
pub fn start(sink: &EventSink, start: Instant) -> Result<(), EventMonitorError> {
    let mut file = match sink {
        EventSink::Path(path) => File::create(path).map_err(|source| EventMonitorError::Create {
            path: path.clone(),
            source,
        })?,
        EventSink::Fd(fd) => adopt(*fd)?,
    };
    let (lines, received) = channel::<String>();
    let writer = std::thread::Builder::new()
        .name("event-monitor".into())
        .spawn(move || {
            for line in received {
                if let Err(e) = file.write_all(line.as_bytes()) {
                    tracing::warn!("event monitor: cannot write an event, stopping: {e}");
                    return;
                }
            }
        })
        .map_err(EventMonitorError::Thread)?;
    let monitor = Monitor {
        start,
        lines: Mutex::new(Some(lines)),
        writer: Mutex::new(Some(writer)),
    };
    if MONITOR.set(monitor).is_err() {
        tracing::warn!("event monitor started twice; keeping the first");
    }
    Ok(())
}

/// One event, its fields in CH's order.
#[derive(serde::Serialize)]
struct Event<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<std::collections::BTreeMap<&'a str, &'a str>>,
}

/// One event's line: compact JSON and a newline.
fn line(timestamp: Duration, source: &str, event: &str, properties: &[(&str, String)]) -> String {
    let properties = (!properties.is_empty()).then(|| properties.iter().map(|(k, v)| (*k, v.as_str())).collect());
    let event = Event {
        timestamp,
        source,
        event,
        properties,
    };
    let mut text = serde_json::to_string(&event).expect("an event serialises");
    text.push('\n');
    text
}

/// Reports `event` from `source` (`vmm` or `vm`) with `properties`: logged
/// at info, and written when the monitor runs.
pub fn emit(source: &str, event: &str, properties: &[(&str, String)]) {
    tracing::info!(source, event, ?properties, "event");
    let Some(monitor) = MONITOR.get() else { return };
    let text = line(monitor.start.elapsed(), source, event, properties);
    if let Some(lines) = monitor.lines.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        let _ = lines.send(text);
    }
}

/// Writes every event reported so far and stops the monitor (covm is about
/// to exit); gives up after `FLUSH_TIMEOUT` (2 s) on a reader that stopped
/// reading. Later events are only logged.
pub fn flush() {
    let Some(monitor) = MONITOR.get() else { return };
    drop(monitor.lines.lock().unwrap_or_else(PoisonError::into_inner).take());
    let Some(writer) = monitor.writer.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return;
    };
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while !writer.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if writer.is_finished() {
        let _ = writer.join();
    } else {
        tracing::warn!("event monitor: the reader stopped reading; exiting without the last events");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_takes_chs_syntax() {
        assert_eq!(
            parse("path=/tmp/events").unwrap(),
            EventSink::Path("/tmp/events".into())
        );
        assert_eq!(parse("fd=7").unwrap(), EventSink::Fd(7));
        for bad in ["", "path=", "fd=-1", "fd=x", "path=/a,fd=3", "file=/a"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse("file=/a").unwrap_err().to_string(),
            "--event-monitor: unknown key 'file' (known: path, fd)"
        );
    }

    #[test]
    fn a_line_is_chs_event_as_one_json_object() {
        let plain = line(Duration::new(1, 5), "vm", "booted", &[]);
        assert!(plain.ends_with('\n') && plain.matches('\n').count() == 1);
        assert!(plain.starts_with(r#"{"timestamp":{"secs":1,"nanos":5},"source":"vm","event":"booted""#));
        let value: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"timestamp": {"secs": 1, "nanos": 5}, "source": "vm", "event": "booted",
                               "properties": null})
        );
        let with = line(
            Duration::ZERO,
            "vm",
            "migration-memory-iteration",
            &[("id", "3".into())],
        );
        let value: serde_json::Value = serde_json::from_str(&with).unwrap();
        assert_eq!(value["properties"], serde_json::json!({"id": "3"}));
    }

    #[test]
    fn a_read_only_or_unopened_descriptor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let read_only = File::open(&path).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(read_only);
        let error = adopt(fd).unwrap_err().to_string();
        assert!(error.contains("read-only"), "{error}");
        // SAFETY: `fd` was taken from the File above and is closed once.
        unsafe { libc::close(fd) };
        // A number far above any open descriptor (tests run in parallel, so
        // the one just closed may be reused).
        let error = adopt(1 << 30).unwrap_err().to_string();
        assert!(
            error.contains("fd=1073741824") && error.contains("Bad file descriptor"),
            "{error}"
        );
        assert!(adopt(-1).is_err());
    }
}
