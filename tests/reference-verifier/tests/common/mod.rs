//! What the attestation tests share: the real SEV-SNP samples in
//! resources/attestation/snp/, as their SOURCE.md describes them, and
//! their files as DER.

#![allow(dead_code)] // each test binary uses its own part

use covm_reference_verifier::{verify_snp, AttestationError, ChainCert, Product, SnpChain};
use sev::certs::snp::Certificate;
use std::path::PathBuf;

/// What the tests know of a sample, read off its SOURCE.md.
pub struct Sample {
    pub dir: &'static str,
    pub vek_file: &'static str,
    pub product: Product,
    pub version: u32,
    pub policy: u64,
    pub tcb: (u8, u8, u8, u8),
    pub chip_id_start: [u8; 4],
    pub measurement_start: [u8; 4],
}

pub const SAMPLES: [Sample; 2] = [
    Sample {
        dir: "milan-virtee-sev",
        vek_file: "vcek.der",
        product: Product::Milan,
        version: 2,
        policy: 0x3_0000,
        tcb: (3, 0, 8, 0x73),
        chip_id_start: [0xd4, 0x95, 0x54, 0xec],
        measurement_start: [0x7a, 0x1e, 0x5c, 0x26],
    },
    Sample {
        dir: "genoa-azure-trustee",
        vek_file: "vcek.pem",
        product: Product::Genoa,
        version: 3,
        policy: 0x3_001f,
        tcb: (10, 0, 23, 84),
        chip_id_start: [0x05, 0x06, 0xff, 0xba],
        measurement_start: [0xf5, 0x7d, 0xc0, 0x9a],
    },
];

pub fn path(sample: &Sample, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../resources/attestation/snp")
        .join(sample.dir)
        .join(file)
}

pub fn read(sample: &Sample, file: &str) -> Vec<u8> {
    std::fs::read(path(sample, file)).unwrap()
}

/// A certificate file as DER, whichever way it is stored.
pub fn der(sample: &Sample, file: &str) -> Vec<u8> {
    let bytes = read(sample, file);
    let cert = if bytes.starts_with(b"-----BEGIN") {
        Certificate::from_pem(&bytes)
    } else {
        Certificate::from_der(&bytes)
    };
    cert.unwrap().to_der().unwrap()
}

/// The sample's report and certificates (ARK, ASK, VEK) as DER.
#[derive(Clone)]
pub struct Parts {
    pub report: Vec<u8>,
    pub ark: Vec<u8>,
    pub ask: Vec<u8>,
    pub vek: Vec<u8>,
}

impl Parts {
    pub fn of(sample: &Sample) -> Parts {
        Parts {
            report: read(sample, "report.bin"),
            ark: der(sample, "ark.pem"),
            ask: der(sample, "ask.pem"),
            vek: der(sample, sample.vek_file),
        }
    }

    /// The DER of `cert`.
    pub fn cert_mut(&mut self, cert: ChainCert) -> &mut Vec<u8> {
        match cert {
            ChainCert::Ark => &mut self.ark,
            ChainCert::Ask => &mut self.ask,
            ChainCert::Vek => &mut self.vek,
        }
    }

    pub fn verify(&self) -> Result<covm_reference_verifier::VerifiedReport, AttestationError> {
        let chain = SnpChain::from_bytes(&self.ark, &self.ask, &self.vek)?;
        verify_snp(&self.report, &chain)
    }
}
