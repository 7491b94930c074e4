//! The AMD SEV-SNP `ATTESTATION_REPORT` structure, byte for byte.
//!
//! Every platform's evidence uses this layout in protocol version 1: on
//! SEV-SNP it is what the PSP firmware returns for `MSG_REPORT_REQ`; the
//! emulated platform fills the same fields and signs them with its
//! emulated root, so one parser and one policy check serve both. Offsets
//! follow the SEV-SNP ABI specification (Table "ATTESTATION_REPORT
//! Structure"); all integers are little-endian. The signature covers bytes
//! `0..0x2A0`; its r and s are 72-byte little-endian numbers of which
//! P-384 uses the low 48 bytes.
//!
//! TCB_VERSION is read with the Milan/Genoa layout (boot loader, TEE,
//! 4 reserved bytes, SNP, microcode). Turin moved the components:
//! [`AttestationReport::reported_tcb_for_policy`] picks the layout from the
//! report's CPUID fields.

use crate::error::{Error, Result};
use core::fmt;

/// Bytes of a report.
pub const REPORT_LEN: usize = 0x4A0;
/// Bytes covered by the signature (everything before it).
pub const SIGNED_LEN: usize = 0x2A0;
/// Bytes of each of r and s in the report (little-endian, zero-extended).
pub const SIGNATURE_COMPONENT_LEN: usize = 72;
/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384.
pub const SIGNATURE_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Bit of the guest `POLICY` that allows a debugger (the host can read the guest).
pub const GUEST_POLICY_DEBUG: u64 = 1 << 19;

/// Offsets of the fields, as in the ABI specification.
pub mod offset {
    #![allow(missing_docs)]
    pub const VERSION: usize = 0x000;
    pub const GUEST_SVN: usize = 0x004;
    pub const POLICY: usize = 0x008;
    pub const FAMILY_ID: usize = 0x010;
    pub const IMAGE_ID: usize = 0x020;
    pub const VMPL: usize = 0x030;
    pub const SIGNATURE_ALGO: usize = 0x034;
    pub const CURRENT_TCB: usize = 0x038;
    pub const PLATFORM_INFO: usize = 0x040;
    /// AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (bits 4:2).
    pub const KEY_INFO: usize = 0x048;
    pub const REPORT_DATA: usize = 0x050;
    pub const MEASUREMENT: usize = 0x090;
    pub const HOST_DATA: usize = 0x0C0;
    pub const ID_KEY_DIGEST: usize = 0x0E0;
    pub const AUTHOR_KEY_DIGEST: usize = 0x110;
    pub const REPORT_ID: usize = 0x140;
    pub const REPORT_ID_MA: usize = 0x160;
    pub const REPORTED_TCB: usize = 0x180;
    pub const CPUID_FAM_ID: usize = 0x188;
    pub const CPUID_MOD_ID: usize = 0x189;
    pub const CPUID_STEP: usize = 0x18A;
    pub const CHIP_ID: usize = 0x1A0;
    pub const COMMITTED_TCB: usize = 0x1E0;
    pub const CURRENT_BUILD: usize = 0x1E8;
    pub const CURRENT_MINOR: usize = 0x1E9;
    pub const CURRENT_MAJOR: usize = 0x1EA;
    pub const COMMITTED_BUILD: usize = 0x1EC;
    pub const COMMITTED_MINOR: usize = 0x1ED;
    pub const COMMITTED_MAJOR: usize = 0x1EE;
    pub const LAUNCH_TCB: usize = 0x1F0;
    pub const SIGNATURE: usize = 0x2A0;
    pub const SIGNATURE_R: usize = 0x2A0;
    pub const SIGNATURE_S: usize = 0x2E8;
    /// Start of the unused tail of the signature field (must be zero).
    pub const SIGNATURE_RESERVED: usize = 0x330;
}

/// An SNP TCB_VERSION: the security version of each firmware component,
/// kept raw so a parsed report re-encodes to the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcbVersion(pub u64);

impl TcbVersion {
    /// Builds a TCB version from its four components (reserved bytes zero).
    pub fn new(boot_loader: u8, tee: u8, snp: u8, microcode: u8) -> Self {
        TcbVersion(u64::from_le_bytes([boot_loader, tee, 0, 0, 0, 0, snp, microcode]))
    }

    fn byte(self, i: usize) -> u8 {
        self.0.to_le_bytes()[i]
    }

    /// SVN of the PSP boot loader.
    pub fn boot_loader(self) -> u8 {
        self.byte(0)
    }

    /// SVN of the PSP operating system.
    pub fn tee(self) -> u8 {
        self.byte(1)
    }

    /// SVN of the SNP firmware.
    pub fn snp(self) -> u8 {
        self.byte(6)
    }

    /// Lowest current patch level of all cores.
    pub fn microcode(self) -> u8 {
        self.byte(7)
    }

    /// The components by name, in the order policies list them.
    pub fn components(self) -> [(&'static str, u8); 4] {
        [
            ("boot_loader", self.boot_loader()),
            ("tee", self.tee()),
            ("snp", self.snp()),
            ("microcode", self.microcode()),
        ]
    }

    /// Fails with the first component below `min`'s. TCB versions are
    /// only partially ordered: each component must reach its minimum.
    pub fn check_at_least(self, min: TcbVersion) -> Result<()> {
        for ((component, have), (_, min)) in self.components().into_iter().zip(min.components()) {
            if have < min {
                return Err(Error::TcbTooLow { component, have, min });
            }
        }
        Ok(())
    }
}

impl fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boot_loader {} tee {} snp {} microcode {}",
            self.boot_loader(),
            self.tee(),
            self.snp(),
            self.microcode()
        )
    }
}

/// The report's signature: r and s, little-endian, 72 bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSignature {
    /// r, little-endian, zero above its 48 low bytes.
    pub r: [u8; SIGNATURE_COMPONENT_LEN],
    /// s, little-endian, zero above its 48 low bytes.
    pub s: [u8; SIGNATURE_COMPONENT_LEN],
}

/// One attestation report, every named field of the ABI.
///
/// Reserved ranges are not kept: [`to_bytes`](Self::to_bytes) writes them
/// as zero. Signatures are always checked over the *received* bytes, never
/// over a re-encoding, so a report with fields this version does not name
/// still verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestationReport {
    /// Report format version (2, 3 or 5 on real hardware).
    pub version: u32,
    /// The guest's security version number (from its ID block).
    pub guest_svn: u32,
    /// The guest policy the VM was launched with.
    pub policy: u64,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL of the requester.
    pub vmpl: u32,
    /// Signature algorithm; [`SIGNATURE_ALGO_ECDSA_P384_SHA384`].
    pub signature_algo: u32,
    /// The platform's current TCB.
    pub current_tcb: TcbVersion,
    /// Platform information (SMT enabled, TSME enabled, ...).
    pub platform_info: u64,
    /// AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (bits 4:2).
    pub key_info: u32,
    /// 64 bytes the requester chose: here, the transcript binding.
    pub report_data: [u8; 64],
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// 32 bytes the host supplied at launch: here, the SHA-256 of the
    /// guest owner's migration policy.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key that signed the ID block.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key that certified the ID key.
    pub author_key_digest: [u8; 48],
    /// The guest's report ID.
    pub report_id: [u8; 32],
    /// The report ID of the guest's migration agent.
    pub report_id_ma: [u8; 32],
    /// The TCB the signing key (VCEK) was derived from.
    pub reported_tcb: TcbVersion,
    /// CPUID family (report version 3 and later).
    pub cpuid_fam_id: u8,
    /// CPUID model (report version 3 and later).
    pub cpuid_mod_id: u8,
    /// CPUID stepping (report version 3 and later).
    pub cpuid_step: u8,
    /// The chip's identifier (zero if masked).
    pub chip_id: [u8; 64],
    /// The committed TCB.
    pub committed_tcb: TcbVersion,
    /// Build number of the current firmware.
    pub current_build: u8,
    /// Minor version of the current firmware.
    pub current_minor: u8,
    /// Major version of the current firmware.
    pub current_major: u8,
    /// Build number of the committed firmware.
    pub committed_build: u8,
    /// Minor version of the committed firmware.
    pub committed_minor: u8,
    /// Major version of the committed firmware.
    pub committed_major: u8,
    /// The current TCB when the guest was launched or imported.
    pub launch_tcb: TcbVersion,
    /// The signature over bytes `0..0x2A0`.
    pub signature: ReportSignature,
}

fn get<const N: usize>(raw: &[u8; REPORT_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[at..at + N]);
    out
}

fn get_u32(raw: &[u8; REPORT_LEN], at: usize) -> u32 {
    u32::from_le_bytes(get(raw, at))
}

fn get_u64(raw: &[u8; REPORT_LEN], at: usize) -> u64 {
    u64::from_le_bytes(get(raw, at))
}

fn put(raw: &mut [u8; REPORT_LEN], at: usize, data: &[u8]) {
    raw[at..at + data.len()].copy_from_slice(data);
}

/// CPUID family of AMD's EPYC 9005 (Turin) and later, whose TCB_VERSION
/// layout differs from Milan's and Genoa's.
pub const CPUID_FAMILY_TURIN: u8 = 0x1A;

impl AttestationReport {
    /// REPORTED_TCB in the layout [`TcbVersion`] reads and policies use
    /// (Milan/Genoa: boot loader, TEE, 4 reserved, SNP, microcode). From
    /// version 3 a report names its CPU; on family 1Ah (Turin) the stored
    /// bytes are FMC, boot loader, TEE, SNP, 3 reserved, microcode, and are
    /// moved into place here (the FMC has no slot in a policy).
    pub fn reported_tcb_for_policy(&self) -> TcbVersion {
        if self.version >= 3 && self.cpuid_fam_id == CPUID_FAMILY_TURIN {
            let b = self.reported_tcb.0.to_le_bytes();
            TcbVersion::new(b[1], b[2], b[3], b[7])
        } else {
            self.reported_tcb
        }
    }

    /// A report with every field zero.
    pub fn zeroed() -> Self {
        AttestationReport {
            version: 0,
            guest_svn: 0,
            policy: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            vmpl: 0,
            signature_algo: 0,
            current_tcb: TcbVersion(0),
            platform_info: 0,
            key_info: 0,
            report_data: [0; 64],
            measurement: [0; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0; 32],
            report_id_ma: [0; 32],
            reported_tcb: TcbVersion(0),
            cpuid_fam_id: 0,
            cpuid_mod_id: 0,
            cpuid_step: 0,
            chip_id: [0; 64],
            committed_tcb: TcbVersion(0),
            current_build: 0,
            current_minor: 0,
            current_major: 0,
            committed_build: 0,
            committed_minor: 0,
            committed_major: 0,
            launch_tcb: TcbVersion(0),
            signature: ReportSignature {
                r: [0; SIGNATURE_COMPONENT_LEN],
                s: [0; SIGNATURE_COMPONENT_LEN],
            },
        }
    }

    /// Whether AUTHOR_KEY_EN is set.
    pub fn author_key_en(&self) -> bool {
        self.key_info & 1 != 0
    }

    /// Parses a report. The only check is that the unused tail of the
    /// signature field is zero: it is the one part of the report no
    /// signature covers, so a relay could otherwise vary it freely.
    pub fn from_bytes(raw: &[u8; REPORT_LEN]) -> Result<Self> {
        use offset::*;
        if raw[SIGNATURE_RESERVED..].iter().any(|&b| b != 0) {
            return Err(Error::Reserved {
                what: "attestation report signature tail",
            });
        }
        Ok(AttestationReport {
            version: get_u32(raw, VERSION),
            guest_svn: get_u32(raw, GUEST_SVN),
            policy: get_u64(raw, POLICY),
            family_id: get(raw, FAMILY_ID),
            image_id: get(raw, IMAGE_ID),
            vmpl: get_u32(raw, VMPL),
            signature_algo: get_u32(raw, SIGNATURE_ALGO),
            current_tcb: TcbVersion(get_u64(raw, CURRENT_TCB)),
            platform_info: get_u64(raw, PLATFORM_INFO),
            key_info: get_u32(raw, KEY_INFO),
            report_data: get(raw, REPORT_DATA),
            measurement: get(raw, MEASUREMENT),
            host_data: get(raw, HOST_DATA),
            id_key_digest: get(raw, ID_KEY_DIGEST),
            author_key_digest: get(raw, AUTHOR_KEY_DIGEST),
            report_id: get(raw, REPORT_ID),
            report_id_ma: get(raw, REPORT_ID_MA),
            reported_tcb: TcbVersion(get_u64(raw, REPORTED_TCB)),
            cpuid_fam_id: raw[CPUID_FAM_ID],
            cpuid_mod_id: raw[CPUID_MOD_ID],
            cpuid_step: raw[CPUID_STEP],
            chip_id: get(raw, CHIP_ID),
            committed_tcb: TcbVersion(get_u64(raw, COMMITTED_TCB)),
            current_build: raw[CURRENT_BUILD],
            current_minor: raw[CURRENT_MINOR],
            current_major: raw[CURRENT_MAJOR],
            committed_build: raw[COMMITTED_BUILD],
            committed_minor: raw[COMMITTED_MINOR],
            committed_major: raw[COMMITTED_MAJOR],
            launch_tcb: TcbVersion(get_u64(raw, LAUNCH_TCB)),
            signature: ReportSignature {
                r: get(raw, SIGNATURE_R),
                s: get(raw, SIGNATURE_S),
            },
        })
    }

    /// The report's bytes; reserved ranges are zero.
    pub fn to_bytes(&self) -> [u8; REPORT_LEN] {
        use offset::*;
        let mut raw = [0u8; REPORT_LEN];
        put(&mut raw, VERSION, &self.version.to_le_bytes());
        put(&mut raw, GUEST_SVN, &self.guest_svn.to_le_bytes());
        put(&mut raw, POLICY, &self.policy.to_le_bytes());
        put(&mut raw, FAMILY_ID, &self.family_id);
        put(&mut raw, IMAGE_ID, &self.image_id);
        put(&mut raw, VMPL, &self.vmpl.to_le_bytes());
        put(&mut raw, SIGNATURE_ALGO, &self.signature_algo.to_le_bytes());
        put(&mut raw, CURRENT_TCB, &self.current_tcb.0.to_le_bytes());
        put(&mut raw, PLATFORM_INFO, &self.platform_info.to_le_bytes());
        put(&mut raw, KEY_INFO, &self.key_info.to_le_bytes());
        put(&mut raw, REPORT_DATA, &self.report_data);
        put(&mut raw, MEASUREMENT, &self.measurement);
        put(&mut raw, HOST_DATA, &self.host_data);
        put(&mut raw, ID_KEY_DIGEST, &self.id_key_digest);
        put(&mut raw, AUTHOR_KEY_DIGEST, &self.author_key_digest);
        put(&mut raw, REPORT_ID, &self.report_id);
        put(&mut raw, REPORT_ID_MA, &self.report_id_ma);
        put(&mut raw, REPORTED_TCB, &self.reported_tcb.0.to_le_bytes());
        raw[CPUID_FAM_ID] = self.cpuid_fam_id;
        raw[CPUID_MOD_ID] = self.cpuid_mod_id;
        raw[CPUID_STEP] = self.cpuid_step;
        put(&mut raw, CHIP_ID, &self.chip_id);
        put(&mut raw, COMMITTED_TCB, &self.committed_tcb.0.to_le_bytes());
        raw[CURRENT_BUILD] = self.current_build;
        raw[CURRENT_MINOR] = self.current_minor;
        raw[CURRENT_MAJOR] = self.current_major;
        raw[COMMITTED_BUILD] = self.committed_build;
        raw[COMMITTED_MINOR] = self.committed_minor;
        raw[COMMITTED_MAJOR] = self.committed_major;
        put(&mut raw, LAUNCH_TCB, &self.launch_tcb.0.to_le_bytes());
        put(&mut raw, SIGNATURE_R, &self.signature.r);
        put(&mut raw, SIGNATURE_S, &self.signature.s);
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_lands_at_the_abi_offsets() {
        let mut r = AttestationReport::zeroed();
        r.version = 3;
        r.guest_svn = 0x0102_0304;
        r.report_data = [0xAA; 64];
        r.measurement = [0xBB; 48];
        r.host_data = [0xCC; 32];
        r.reported_tcb = TcbVersion::new(1, 2, 3, 4);
        r.chip_id = [0xDD; 64];
        r.launch_tcb = TcbVersion::new(5, 6, 7, 8);
        r.current_major = 1;
        r.current_minor = 55;
        r.signature.r[0] = 0x11;
        r.signature.s[47] = 0x22;
        let raw = r.to_bytes();
        assert_eq!(raw.len(), 0x4A0);
        assert_eq!(&raw[0x50..0x90], &[0xAA; 64]);
        assert_eq!(&raw[0x90..0xC0], &[0xBB; 48]);
        assert_eq!(&raw[0xC0..0xE0], &[0xCC; 32]);
        assert_eq!(&raw[0x180..0x188], &[1, 2, 0, 0, 0, 0, 3, 4]);
        assert_eq!(&raw[0x1A0..0x1E0], &[0xDD; 64]);
        assert_eq!(&raw[0x1F0..0x1F8], &[5, 6, 0, 0, 0, 0, 7, 8]);
        assert_eq!(raw[0x1EA], 1);
        assert_eq!(raw[0x1E9], 55);
        assert_eq!(raw[0x2A0], 0x11);
        assert_eq!(raw[0x2E8 + 47], 0x22);
        assert_eq!(AttestationReport::from_bytes(&raw), Ok(r));
    }

    #[test]
    fn signature_tail_must_be_zero() {
        let mut raw = AttestationReport::zeroed().to_bytes();
        raw[REPORT_LEN - 1] = 1;
        assert!(matches!(
            AttestationReport::from_bytes(&raw),
            Err(Error::Reserved { .. })
        ));
    }

    #[test]
    fn tcb_comparison_is_per_component() {
        let min = TcbVersion::new(3, 0, 8, 115);
        assert_eq!(TcbVersion::new(3, 0, 8, 115).check_at_least(min), Ok(()));
        assert_eq!(TcbVersion::new(9, 9, 9, 200).check_at_least(min), Ok(()));
        assert_eq!(
            TcbVersion::new(9, 9, 7, 200).check_at_least(min),
            Err(Error::TcbTooLow {
                component: "snp",
                have: 7,
                min: 8
            })
        );
    }
}
