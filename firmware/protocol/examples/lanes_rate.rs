//! Sealing and opening spread over lanes, one thread each: what parallel
//! agents gain where there are cores for them.
//!
//! ```sh
//! cargo run --release -p covm-agent-protocol --example lanes_rate [MiB] [runs] [max lanes]
//! ```
//!
//! Each lane's thread holds its own copy of the stream's cipher; the
//! session (source) or checker (destination) is shared under a mutex and
//! taken only to admit and settle each record, so the AES-GCM work runs
//! in parallel. Rates are guest-memory bytes per second (MB = 10^6
//! bytes), the median of `runs` (default 5) passes over `MiB` (default
//! 128) of pages, for 1 to `max lanes` (default 2) lanes.

mod bench_sessions;

use bench_sessions::{median, rate, sessions, BenchRng};
use covm_agent_protocol::record::{HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{ImportChecker, PAGE_SIZE};
use rand_core::RngCore;
use std::sync::Mutex;
use std::time::Instant;

/// Seals `memory`'s pages on `lanes` threads (page `i` on lane `i % lanes`)
/// into `records`, one buffer per lane; returns the seconds it took.
fn seal(
    lanes: u16,
    seed: u64,
    memory: &[u8],
    records: &mut [Vec<u8>],
) -> (f64, covm_agent_protocol::DestinationSession) {
    let (mut src, dst) = sessions(seed);
    src.set_lanes(lanes).unwrap();
    let session = Mutex::new(src);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (lane, out) in records.iter_mut().enumerate() {
            let session = &session;
            s.spawn(move || {
                let lane = lane as u16;
                let cipher = session.lock().unwrap().cipher();
                let pages = memory
                    .chunks_exact(PAGE_SIZE)
                    .enumerate()
                    .skip(lane.into())
                    .step_by(lanes.into());
                for ((i, page), rec) in pages.zip(out.chunks_exact_mut(PAGE_RECORD_LEN)) {
                    rec[HEADER_LEN..HEADER_LEN + PAGE_SIZE].copy_from_slice(page);
                    let ticket = session
                        .lock()
                        .unwrap()
                        .admit_page(lane, (i * PAGE_SIZE) as u64)
                        .unwrap();
                    ticket.seal(&cipher, rec).unwrap();
                }
            });
        }
    });
    (t.elapsed().as_secs_f64(), dst)
}

/// Opens every lane's records on its own thread; returns the seconds.
fn open(lanes: u16, dst: covm_agent_protocol::DestinationSession, table: &mut [u32], records: &mut [Vec<u8>]) -> f64 {
    let mut checker = ImportChecker::new(dst, table);
    checker.set_lanes(lanes).unwrap();
    let checker = Mutex::new(checker);
    let t = Instant::now();
    std::thread::scope(|s| {
        for out in records.iter_mut() {
            let checker = &checker;
            s.spawn(move || {
                let cipher = checker.lock().unwrap().cipher();
                for rec in out.chunks_exact_mut(PAGE_RECORD_LEN) {
                    let admitted = checker.lock().unwrap().admit(rec).unwrap();
                    let opened = admitted.open(&cipher, rec).map(|p| p.len());
                    // The page would be copied out here; settle needs no payload
                    // bytes for a Page record beyond its length.
                    let payload = [0u8; PAGE_SIZE];
                    checker
                        .lock()
                        .unwrap()
                        .settle(admitted, opened.map(|_| &payload[..]))
                        .unwrap();
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(128, |a| a.parse().expect("MiB"));
    let runs: usize = args.next().map_or(5, |a| a.parse().expect("runs"));
    let max_lanes: u16 = args.next().map_or(2, |a| a.parse().expect("max lanes"));
    let pages = mib * 256;
    let bytes = pages * PAGE_SIZE;
    let mut memory = vec![0u8; bytes];
    BenchRng(7).fill_bytes(&mut memory);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{mib} MiB of pages, median of {runs} runs, {cores} CPUs available");
    let mut base = None;
    for lanes in 1..=max_lanes {
        let (mut sealed, mut opened) = (vec![], vec![]);
        for run in 0..runs {
            // Lane l seals pages l, l + lanes, l + 2 lanes, ...
            let lane_pages = |l: usize| (pages + usize::from(lanes) - 1 - l) / usize::from(lanes);
            let mut records: Vec<Vec<u8>> = (0..usize::from(lanes))
                .map(|l| vec![0u8; lane_pages(l) * PAGE_RECORD_LEN])
                .collect();
            // Touched before the clock starts: first-touch faults are not sealing.
            records.iter_mut().for_each(|r| r.fill(1));
            let (secs, dst) = seal(lanes, run as u64, &memory, &mut records);
            sealed.push(rate(bytes, secs));
            let mut table = vec![0u32; pages];
            opened.push(rate(bytes, open(lanes, dst, &mut table, &mut records)));
        }
        let (s, o) = (median(sealed), median(opened));
        let (s1, o1) = *base.get_or_insert((s, o));
        println!(
            "  {lanes} lane(s): seal {s:6.0} MB/s ({:.2}x), open + checks {o:6.0} MB/s ({:.2}x)",
            s / s1,
            o / o1
        );
    }
}
