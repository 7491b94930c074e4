//! The migration benchmark's baseline: how fast one TCP stream carries
//! bytes over loopback on this host, with covm's own transport (the same
//! `tcp:` connect and accept, the same socket options) and writes of the
//! size the engine issues.
//!
//! `cargo run --release -p covm-migration --example loopback_bandwidth -- [GiB] [runs]`
//! prints one JSON object: the median and each run's bytes/s.

use covm_migration::transport::{self, Endpoint, Listener};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Bytes per write: a chunk of 256 pages with their headers is about this.
const WRITE: usize = 1 << 20;

fn one_run(gib: u64) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let endpoint: Endpoint = format!("tcp:127.0.0.1:{port}").parse().expect("a tcp: URL");
    let listener = Listener::bind(&endpoint).expect("listen on loopback");
    let total = gib << 30;
    let reader = std::thread::spawn(move || {
        let mut stream = listener.accept(None).expect("accept");
        let mut buf = vec![0u8; WRITE];
        let mut got = 0u64;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    });
    let mut stream = transport::connect(&endpoint, Duration::from_secs(5)).expect("connect");
    // Non-zero, like page data.
    let buf = vec![0x5au8; WRITE];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        stream.write_all(&buf).expect("write");
        sent += WRITE as u64;
    }
    drop(stream);
    let got = reader.join().expect("reader thread");
    assert_eq!(got, sent, "the reader lost bytes");
    got as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().map_or(2, |a| a.parse().expect("GiB: a whole number"));
    let runs: usize = args.next().map_or(5, |a| a.parse().expect("runs: a whole number"));
    let mut rates: Vec<f64> = (0..runs).map(|_| one_run(gib)).collect();
    let each = format!("{rates:?}");
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!("{{\"median_bytes_per_s\": {median:.0}, \"runs\": {each}}}");
}
