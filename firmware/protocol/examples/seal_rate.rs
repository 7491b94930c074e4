//! How fast pages are sealed and opened, against raw AES-256-GCM on the
//! same buffers: the protocol's own overhead (header, AAD, counters,
//! checks, the copy into the record).
//!
//! ```sh
//! cargo run --release -p covm-agent-protocol --example seal_rate [MiB] [runs]
//! RUSTFLAGS="-C target-cpu=native" cargo run --release -p covm-agent-protocol --example seal_rate
//! ```
//!
//! Rates are guest-memory bytes per second (MB = 10^6 bytes), the median
//! of `runs` (default 7) passes over `MiB` (default 256) of pages.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use covm_agent_protocol::record::{HEADER_LEN, PAGE_RECORD_LEN};
use covm_agent_protocol::{ImportChecker, PAGE_SIZE};
use rand_core::RngCore;
use std::time::Instant;

mod bench_sessions;

use bench_sessions::{median, rate, sessions, BenchRng};

/// AES-256-GCM over a record's payload, nothing else (kept out of line,
/// as the library's seal is, so both are compiled alike).
#[inline(never)]
fn raw_seal(cipher: &Aes256Gcm, counter: u64, record: &mut [u8]) {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    let (payload, tag) = record[HEADER_LEN..].split_at_mut(PAGE_SIZE);
    let t = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), &[], payload.into())
        .unwrap();
    tag.copy_from_slice(&t);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(256, |a| a.parse().expect("MiB"));
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("runs"));
    let pages = mib * 256;
    let bytes = pages * PAGE_SIZE;

    let mut memory = vec![0u8; bytes];
    BenchRng(7).fill_bytes(&mut memory);
    let mut records = vec![0u8; pages * PAGE_RECORD_LEN];
    let key = [0x42u8; 32];
    let raw = Aes256Gcm::new(&key.into());

    let (mut seal, mut seal_in_place, mut open, mut raw_enc, mut copy) = (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let (mut src, dst) = sessions(run as u64);
        let mut table = vec![0u32; pages];
        let mut checker = ImportChecker::new(dst, &mut table);

        // Raw AES-256-GCM over the same 4096-byte payloads: no header, no
        // AAD, no checks.
        let t = Instant::now();
        for (i, rec) in records.chunks_exact_mut(PAGE_RECORD_LEN).enumerate() {
            raw_seal(&raw, i as u64, rec);
        }
        raw_enc.push(rate(bytes, t.elapsed().as_secs_f64()));

        // seal_page: copy the page into its record, seal in place.
        let t = Instant::now();
        for (i, (page, rec)) in memory
            .chunks_exact(PAGE_SIZE)
            .zip(records.chunks_exact_mut(PAGE_RECORD_LEN))
            .enumerate()
        {
            src.seal_page(
                (i * PAGE_SIZE) as u64,
                page.try_into().unwrap(),
                rec.try_into().unwrap(),
            )
            .unwrap();
        }
        seal.push(rate(bytes, t.elapsed().as_secs_f64()));

        // open at the destination: every check, decrypt in place.
        let t = Instant::now();
        for rec in records.chunks_exact_mut(PAGE_RECORD_LEN) {
            checker.open(rec).unwrap();
        }
        open.push(rate(bytes, t.elapsed().as_secs_f64()));

        // The copy alone (what seal_page adds to seal_page_in_place).
        let t = Instant::now();
        for (page, rec) in memory
            .chunks_exact(PAGE_SIZE)
            .zip(records.chunks_exact_mut(PAGE_RECORD_LEN))
        {
            rec[HEADER_LEN..HEADER_LEN + PAGE_SIZE].copy_from_slice(page);
        }
        copy.push(rate(bytes, t.elapsed().as_secs_f64()));

        // seal_page_in_place: the plaintext is already in the record.
        let (mut src, _) = sessions(1000 + run as u64);
        let t = Instant::now();
        for (i, rec) in records.chunks_exact_mut(PAGE_RECORD_LEN).enumerate() {
            src.seal_page_in_place((i * PAGE_SIZE) as u64, rec.try_into().unwrap())
                .unwrap();
        }
        seal_in_place.push(rate(bytes, t.elapsed().as_secs_f64()));
    }

    let (seal, seal_in_place, open, raw_enc, copy) = (
        median(seal),
        median(seal_in_place),
        median(open),
        median(raw_enc),
        median(copy),
    );
    println!("{mib} MiB of pages ({pages} records of {PAGE_RECORD_LEN} bytes), median of {runs} runs");
    println!("  raw AES-256-GCM, in place      {raw_enc:8.0} MB/s");
    println!(
        "  seal_page_in_place             {seal_in_place:8.0} MB/s  ({:+.1} % vs raw)",
        (seal_in_place / raw_enc - 1.0) * 100.0
    );
    println!(
        "  seal_page (copy + in place)    {seal:8.0} MB/s  ({:+.1} % vs raw)",
        (seal / raw_enc - 1.0) * 100.0
    );
    println!(
        "  open + import checks           {open:8.0} MB/s  ({:+.1} % vs raw)",
        (open / raw_enc - 1.0) * 100.0
    );
    println!("  copy 4 KiB into the record     {copy:8.0} MB/s");
    println!(
        "  wire overhead: {} bytes per 4096-byte page ({:.2} %)",
        PAGE_RECORD_LEN - PAGE_SIZE,
        (PAGE_RECORD_LEN - PAGE_SIZE) as f64 / PAGE_SIZE as f64 * 100.0
    );
}
