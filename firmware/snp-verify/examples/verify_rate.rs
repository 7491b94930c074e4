//! How long the agent's SEV-SNP evidence check takes: `verify_snp` on the
//! real Milan and Genoa samples (resources/attestation/snp/), natively,
//! as the agent runs it in ring 3 (where the guest runs at native speed).
//!
//! ```text
//! cargo run --release -p covm-snp-verify --example verify_rate [-- RUNS]
//! ```
//!
//! Prints the median, minimum and maximum of RUNS checks (default 200) per
//! sample; docs/benchmarks.md has the numbers.

use covm_snp_verify::{verify_snp, CertKind, CertTable};
use std::path::Path;
use std::time::Instant;
use x509_cert::der::{DecodePem, Encode};

fn sample(dir: &str, vcek: &str) -> ([u8; 0x4A0], Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../resources/attestation/snp")
        .join(dir);
    let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
    let der = |file: &str| {
        let bytes = read(file);
        if bytes.starts_with(b"-----BEGIN") {
            x509_cert::Certificate::from_pem(&bytes).unwrap().to_der().unwrap()
        } else {
            bytes
        }
    };
    let (vcek, ask, ark) = (der(vcek), der("ask.pem"), der("ark.pem"));
    let mut table = vec![0u8; 8192];
    let certs = [
        (CertKind::Vcek, &vcek[..]),
        (CertKind::Ask, &ask[..]),
        (CertKind::Ark, &ark[..]),
    ];
    let n = CertTable::encode(&certs, &mut table).unwrap();
    table.truncate(n);
    (read("report.bin").try_into().unwrap(), table)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(200, |a| a.parse().expect("RUNS is a number"));
    for (dir, vcek) in [("milan-virtee-sev", "vcek.der"), ("genoa-azure-trustee", "vcek.pem")] {
        let (report, table) = sample(dir, vcek);
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                verify_snp(&report, &table).expect("the sample verifies");
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{dir}: verify_snp median {:.3} ms (min {:.3}, max {:.3}) over {runs} runs, table {} bytes",
            times[runs / 2],
            times[0],
            times[runs - 1],
            table.len()
        );
    }
}
