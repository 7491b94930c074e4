use super::*;
use std::path::Path;

/// A scratch directory, removed when the test drops it.
fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("covm-mig-").tempdir().unwrap()
}

fn echo_once(listener: Listener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut s = listener.accept(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    })
}

fn ping(endpoint: &Endpoint) {
    let mut s = connect(endpoint, Duration::from_secs(5)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

#[test]
fn urls_parse_like_cloud_hypervisor() {
    assert_eq!(
        "tcp:127.0.0.1:6000".parse::<Endpoint>().unwrap(),
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 6000
        }
    );
    assert_eq!(
        "tcp:[::1]:7".parse::<Endpoint>().unwrap(),
        Endpoint::Tcp {
            host: "[::1]".into(),
            port: 7
        }
    );
    assert_eq!(
        "unix:/tmp/m.sock".parse::<Endpoint>().unwrap(),
        Endpoint::Unix("/tmp/m.sock".into())
    );
    assert_eq!("tcp:h:1".parse::<Endpoint>().unwrap().to_string(), "tcp:h:1");
    for (bad, says) in [
        ("tcp:127.0.0.1", "tcp:HOST:PORT"),
        ("tcp::6000", "host is empty"),
        ("tcp:h:99999", "port"),
        ("unix:", "path is empty"),
        ("http://h:1", "tcp:HOST:PORT or unix:PATH"),
        ("", "tcp:HOST:PORT or unix:PATH"),
    ] {
        let e = bad.parse::<Endpoint>().unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn tcp_loopback_round_trip() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let endpoint = l.endpoint().clone();
    assert!(matches!(endpoint, Endpoint::Tcp { port, .. } if port != 0));
    let t = echo_once(l);
    ping(&endpoint);
    t.join().unwrap();
}

#[test]
fn unix_round_trip_and_socket_file_removed() {
    let dir = temp_dir();
    let path = dir.path().join("m.sock");
    let endpoint = Endpoint::Unix(path.clone());
    let l = Listener::bind(&endpoint).unwrap();
    let t = echo_once(l);
    ping(&endpoint);
    t.join().unwrap();
    assert!(!path.exists(), "the listener removes its socket file");
}

#[test]
fn stale_unix_socket_is_replaced_but_other_files_are_not() {
    let dir = temp_dir();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves the file behind
    assert!(path.exists());
    let endpoint = Endpoint::Unix(path.clone());
    let l = Listener::bind(&endpoint).unwrap();
    // While it listens, nobody else may take the path.
    assert!(matches!(Listener::bind(&endpoint), Err(TransportError::Listen { .. })));
    drop(l);
    let plain = dir.path().join("file");
    std::fs::write(&plain, b"x").unwrap();
    let e = Listener::bind(&Endpoint::Unix(plain.clone())).err().unwrap();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(Path::new(&plain).exists());
}

#[test]
fn connect_to_nobody_fails_clearly() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let endpoint = l.endpoint().clone();
    drop(l);
    let e = connect(&endpoint, Duration::from_secs(1)).err().unwrap();
    assert!(
        e.to_string().starts_with(&format!("cannot connect to {endpoint}")),
        "{e}"
    );
    let e = connect(&Endpoint::Unix("/nonexistent/covm.sock".into()), Duration::from_secs(1))
        .err()
        .unwrap();
    assert!(matches!(e, TransportError::Connect { .. }));
}

#[test]
fn accept_times_out() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let e = l.accept(Some(Duration::from_millis(30))).err().unwrap();
    assert!(matches!(e, TransportError::Accept { ref source, .. } if source.kind() == io::ErrorKind::TimedOut));
}

#[test]
fn a_silent_peer_times_out_reads() {
    let l = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = connect(l.endpoint(), Duration::from_secs(5)).unwrap();
    let _server = l.accept(Some(Duration::from_secs(5))).unwrap();
    c.set_io_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut b = [0u8; 1];
    let e = c.read(&mut b).unwrap_err();
    assert!(
        matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        "{e}"
    );
}
