//! The certificate table an SEV-SNP guest receives with an extended
//! attestation report (GHCB specification, "SNP Extended Guest Request";
//! Linux's `snp_ext_report_req`).
//!
//! ```text
//! entry 0:  GUID [16] | offset u32 | length u32     (offsets from the table's start)
//! ...
//! entry n:  24 zero bytes                           (the terminator)
//! certificates, where the entries point
//! ```
//!
//! GUIDs are stored in RFC 4122 byte order, as the `sev` crate writes and
//! reads them; integers little-endian.

use crate::verify::SigningKey;
use covm_agent_protocol::Error;

const ENTRY_LEN: usize = 24;
/// Most entries read before the terminator must appear.
pub const MAX_ENTRIES: usize = 16;

/// What a table entry holds, by its GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (signs VCEKs), or the AMD SEV VLEK Key (ASVK, signs
    /// VLEKs): the GHCB table has one GUID for both.
    Ask,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl CertKind {
    /// Every kind the table may name.
    pub const ALL: [CertKind; 4] = [CertKind::Ark, CertKind::Ask, CertKind::Vcek, CertKind::Vlek];

    /// The entry's GUID (RFC 4122 byte order).
    pub const fn guid(self) -> [u8; 16] {
        match self {
            // c0b406a4-a803-4952-9743-3fb6014cd0ae
            CertKind::Ark => [
                0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
            ],
            // 4ab7b379-bbac-4fe4-a02f-05aef327c782
            CertKind::Ask => [
                0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
            ],
            // 63da758d-e664-4564-adc5-f4b93be8accd
            CertKind::Vcek => [
                0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
            ],
            // a8074bc2-a25a-483e-aae6-39c045a0b8a1
            CertKind::Vlek => [
                0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
            ],
        }
    }

    fn from_guid(guid: &[u8]) -> Option<CertKind> {
        CertKind::ALL.into_iter().find(|k| k.guid() == guid)
    }
}

/// The certificates a table holds, borrowed from it. Entries of other
/// GUIDs (a CRL, a vendor's own) are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct CertTable<'a> {
    /// The ARK.
    pub ark: Option<&'a [u8]>,
    /// The ASK or ASVK.
    pub ask: Option<&'a [u8]>,
    /// The VCEK.
    pub vcek: Option<&'a [u8]>,
    /// The VLEK.
    pub vlek: Option<&'a [u8]>,
}

/// The DER certificates of one chain, root first.
#[derive(Debug, Clone, Copy)]
pub struct ChainDer<'a> {
    /// The ARK.
    pub ark: &'a [u8],
    /// The ASK or ASVK.
    pub ask: &'a [u8],
    /// The VCEK or VLEK.
    pub vek: &'a [u8],
}

fn bad(what: &'static str) -> Error {
    Error::Endorsement { what }
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize
}

impl<'a> CertTable<'a> {
    /// Reads a table. Refused: no terminator within [`MAX_ENTRIES`]
    /// entries or the bytes, an entry pointing outside the bytes or into
    /// the entries, an empty certificate, and a GUID named twice.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut table = CertTable::default();
        let mut entries = 0;
        loop {
            let at = entries * ENTRY_LEN;
            let Some(entry) = bytes.get(at..at + ENTRY_LEN) else {
                return Err(bad("the certificate table has no terminating zero entry"));
            };
            if entry.iter().all(|&b| b == 0) {
                break;
            }
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(bad("the certificate table has more than 16 entries"));
            }
            let (offset, len) = (u32_at(entry, 16), u32_at(entry, 20));
            let Some(kind) = CertKind::from_guid(&entry[..16]) else {
                continue;
            };
            let end = offset.checked_add(len).filter(|&end| end <= bytes.len());
            let Some(end) = end else {
                return Err(bad("a certificate table entry points past the table's end"));
            };
            if len == 0 {
                return Err(bad("a certificate table entry is empty"));
            }
            let slot = match kind {
                CertKind::Ark => &mut table.ark,
                CertKind::Ask => &mut table.ask,
                CertKind::Vcek => &mut table.vcek,
                CertKind::Vlek => &mut table.vlek,
            };
            if slot.replace(&bytes[offset..end]).is_some() {
                return Err(bad("the certificate table names a certificate twice"));
            }
        }
        // Certificates sit after the terminator: an entry pointing into
        // the entries would let one byte be read as two things.
        let entries_end = (entries + 1) * ENTRY_LEN;
        for cert in [table.ark, table.ask, table.vcek, table.vlek].into_iter().flatten() {
            let offset = cert.as_ptr() as usize - bytes.as_ptr() as usize;
            if offset < entries_end {
                return Err(bad("a certificate table entry points into the table's entries"));
            }
        }
        Ok(table)
    }

    /// The chain ending in the key `leaf` names, or which certificate the
    /// table lacks.
    pub fn chain(&self, leaf: SigningKey) -> Result<ChainDer<'a>, Error> {
        Ok(ChainDer {
            ark: self.ark.ok_or(bad("the certificate table has no ARK"))?,
            ask: self.ask.ok_or(bad("the certificate table has no ASK"))?,
            vek: match leaf {
                SigningKey::Vcek => self
                    .vcek
                    .ok_or(bad("the certificate table has no VCEK, the key KEY_INFO names"))?,
                SigningKey::Vlek => self
                    .vlek
                    .ok_or(bad("the certificate table has no VLEK, the key KEY_INFO names"))?,
            },
        })
    }

    /// Writes a table of `certs` into `out`; returns its length.
    pub fn encode(certs: &[(CertKind, &[u8])], out: &mut [u8]) -> Result<usize, Error> {
        let mut offset = (certs.len() + 1) * ENTRY_LEN;
        let need = offset + certs.iter().map(|(_, c)| c.len()).sum::<usize>();
        if out.len() < need {
            return Err(Error::BufferTooSmall { need, have: out.len() });
        }
        out[..need].fill(0);
        for (i, (kind, cert)) in certs.iter().enumerate() {
            let entry = &mut out[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
            entry[..16].copy_from_slice(&kind.guid());
            entry[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
            entry[20..24].copy_from_slice(&(cert.len() as u32).to_le_bytes());
            out[offset..offset + cert.len()].copy_from_slice(cert);
            offset += cert.len();
        }
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn table(certs: &[(CertKind, &[u8])]) -> ([u8; 256], usize) {
        let mut out = [0u8; 256];
        let n = CertTable::encode(certs, &mut out).unwrap();
        (out, n)
    }

    #[test]
    fn encodes_and_parses_each_kind() {
        let (out, n) = table(&[
            (CertKind::Vcek, b"vcek"),
            (CertKind::Ask, b"ask"),
            (CertKind::Ark, b"ark!"),
        ]);
        assert_eq!(n, 4 * ENTRY_LEN + 11);
        let t = CertTable::parse(&out[..n]).unwrap();
        assert_eq!(
            (t.vcek, t.ask, t.ark, t.vlek),
            (Some(&b"vcek"[..]), Some(&b"ask"[..]), Some(&b"ark!"[..]), None)
        );
    }

    #[test]
    fn unknown_guids_are_skipped() {
        let (mut out, n) = table(&[(CertKind::Vlek, b"crl"), (CertKind::Vcek, b"vcek")]);
        out[0] ^= 0xff; // no longer the VLEK's GUID
        let t = CertTable::parse(&out[..n]).unwrap();
        assert_eq!((t.vlek, t.vcek), (None, Some(&b"vcek"[..])));
    }

    #[test]
    fn refuses_malformed_tables() {
        let (out, n) = table(&[(CertKind::Vcek, b"vcek")]);
        // Entries of an unknown GUID are skipped, so only the end stops the walk.
        let unterminated = [0xffu8; 2 * ENTRY_LEN + 4];
        let cases: [(&[u8], &str); 3] = [
            (&unterminated, "no terminating zero entry"),
            (&[0xff; (MAX_ENTRIES + 2) * ENTRY_LEN], "more than 16 entries"),
            (&out[..n - 1], "points past the table's end"),
        ];
        for (bytes, why) in cases {
            let err = CertTable::parse(bytes).unwrap_err();
            assert!(
                matches!(err, Error::Endorsement { what } if what.contains(why)),
                "{why}: {err}"
            );
        }
        let mut inside = out;
        inside[16..20].copy_from_slice(&0u32.to_le_bytes());
        let err = CertTable::parse(&inside[..n]).unwrap_err();
        assert!(err.to_string().contains("into the table's entries"), "{err}");
        let mut empty = out;
        empty[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert!(CertTable::parse(&empty[..n]).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn a_certificate_named_twice_is_refused() {
        let (out, n) = table(&[(CertKind::Ask, b"one"), (CertKind::Ask, b"two")]);
        let err = CertTable::parse(&out[..n]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
