//! The SEV kernel hashes table: how an SEV-SNP launch measures a kernel,
//! initrd and command line it does not load itself.
//!
//! QEMU (`target/i386/sev.c`, `kernel-hashes=on`) puts a GUID-tagged table
//! of their SHA-256 hashes in a page of the guest's firmware, and that page
//! is part of the launch digest; the firmware checks what it is given
//! against the table before booting it. The layout is QEMU's
//! (`SevHashTable`, `PaddedSevHashTable`), which `sev-snp-measure`
//! (`sev_hashes.py`) reproduces to predict the digest; little-endian, GUIDs
//! in their mixed-endian in-memory form:
//!
//! ```text
//!   0  16  GUID 9438d606-4f22-4cc9-b479-a793d411fd21 (the table)
//!  16   2  length of the table without padding: 168
//!  18  50  cmdline entry: GUID 97d02dd8-bd20-4c94-aa78-e7714d36ab2a,
//!          length 50, SHA-256 of the command line and its NUL
//!  68  50  initrd entry:  GUID 44baf731-3a2f-4bd7-9af1-41e29169781d,
//!          length 50, SHA-256 of the initrd (of nothing without one)
//! 118  50  kernel entry:  GUID 4de79437-abd2-427f-b835-d5b172d2045b,
//!          length 50, SHA-256 of the kernel file
//! 168   8  zero padding to a multiple of 16: 176 bytes in all
//! ```
//!
//! Where covm puts it: covm has no OVMF whose metadata names a hashes page,
//! so it chooses one in its own layout: the page at [`SEV_HASHES_GPA`]
//! (0x5000), the table at offset 0, the rest of the page zero. That page
//! is free in every layout covm loads (`boot::layout`: page 0 holds the
//! boot GDT and IDT, 0x6000 the migration policy, 0x7000 the PVH start info
//! or Linux zero page, 0x8000 the firmware's AP trampoline, 0x9000-0xb000
//! the Linux entry's page tables, 0x20000 the command line, payloads load
//! from 1 MiB). With `--kernel-hashes` the SEV-SNP launch measures it as
//! one NORMAL page after the image's own pages and before the VMSAs
//! ([`crate::snp::SnpLaunch::apply`]), or in the payload's KERNEL_HASHES
//! metadata section where it has one.

use alloc::boxed::Box;
use sha2::{Digest, Sha256};

/// Where covm's SEV-SNP launch places the hashes table (page aligned).
pub const SEV_HASHES_GPA: u64 = 0x5000;
/// Offset of the table in its page.
pub const TABLE_OFFSET: usize = 0;
/// Bytes of the table without its padding (its own `length` field).
pub const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// Bytes of the table padded to 16, as QEMU writes it.
pub const PADDED_TABLE_LEN: usize = TABLE_LEN.div_ceil(16) * 16;
/// Bytes of one entry: GUID, length, SHA-256.
pub const ENTRY_LEN: usize = 16 + 2 + 32;

/// A GUID in its in-memory (mixed-endian) form: the first three fields
/// little-endian, the last eight bytes as written (`d4` holds them as the
/// GUID's text does, most significant first).
const fn guid(d1: u32, d2: u16, d3: u16, d4: u64) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    let d = d4.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
    ]
}

/// `SEV_HASH_TABLE_HEADER_GUID`.
pub const TABLE_GUID: [u8; 16] = guid(0x9438_d606, 0x4f22, 0x4cc9, 0xb479_a793_d411_fd21);
/// `SEV_CMDLINE_ENTRY_GUID`.
pub const CMDLINE_GUID: [u8; 16] = guid(0x97d0_2dd8, 0xbd20, 0x4c94, 0xaa78_e771_4d36_ab2a);
/// `SEV_INITRD_ENTRY_GUID`.
pub const INITRD_GUID: [u8; 16] = guid(0x44ba_f731, 0x3a2f, 0x4bd7, 0x9af1_41e2_9169_781d);
/// `SEV_KERNEL_ENTRY_GUID`.
pub const KERNEL_GUID: [u8; 16] = guid(0x4de7_9437, 0xabd2, 0x427f, 0xb835_d5b1_72d2_045b);

/// The three hashes the table carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel file.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd file, or of nothing without one.
    pub initrd: [u8; 32],
    /// SHA-256 of the command line followed by its NUL.
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// The hashes of a kernel, an optional initrd and a command line.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> Self {
        let mut line = Sha256::new();
        line.update(cmdline.as_bytes());
        line.update([0]);
        KernelHashes {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or_default()).into(),
            cmdline: line.finalize().into(),
        }
    }

    /// The hashes of the files `kernel` and `initrd` and of `cmdline`.
    #[cfg(feature = "std")]
    pub fn from_files(
        kernel: &std::path::Path,
        initrd: Option<&std::path::Path>,
        cmdline: &str,
    ) -> std::io::Result<Self> {
        let kernel = std::fs::read(kernel)?;
        let initrd = initrd.map(std::fs::read).transpose()?;
        Ok(Self::new(&kernel, initrd.as_deref(), cmdline))
    }

    /// The padded table, byte for byte as QEMU writes it.
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(&TABLE_GUID);
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        for (i, (guid, hash)) in [
            (CMDLINE_GUID, &self.cmdline),
            (INITRD_GUID, &self.initrd),
            (KERNEL_GUID, &self.kernel),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 18 + i * ENTRY_LEN;
            t[at..at + 16].copy_from_slice(&guid);
            t[at + 16..at + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            t[at + 18..at + ENTRY_LEN].copy_from_slice(hash);
        }
        t
    }

    /// The page at [`SEV_HASHES_GPA`]: the table at [`TABLE_OFFSET`], zeros
    /// around it.
    pub fn page(&self) -> Box<[u8; 4096]> {
        let mut page = Box::new([0u8; 4096]);
        page[TABLE_OFFSET..TABLE_OFFSET + PADDED_TABLE_LEN].copy_from_slice(&self.table());
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use crate::testing::sev_snp_measure;
    use alloc::format;

    const KERNEL: &[u8] = b"covm fixture kernel\x00\x01\x02\xff";
    const INITRD: &[u8] = b"covm fixture initrd";
    const CMDLINE: &str = "console=ttyS0 covm=1";

    #[test]
    fn sizes_and_guids() {
        assert_eq!((ENTRY_LEN, TABLE_LEN, PADDED_TABLE_LEN), (50, 168, 176));
        // 9438d606-4f22-4cc9-b479-a793d411fd21 in memory.
        assert_eq!(hex(&TABLE_GUID), "06d63894224fc94cb479a793d411fd21");
        assert_eq!(SEV_HASHES_GPA % 4096, 0);
    }

    /// Fixed vectors computed independently with Python's hashlib and
    /// struct from QEMU's struct definitions (`struct.pack('<16sH', ...)`
    /// for the header and each entry, 8 zero bytes of padding), over the
    /// fixtures above; the second without an initrd and with an empty
    /// command line (whose hash is SHA-256 of one NUL).
    #[test]
    fn fixed_vectors() {
        let table = KernelHashes::new(KERNEL, Some(INITRD), CMDLINE).table();
        assert_eq!(
            hex(&Sha256::digest(table)),
            "4a3e6310eb27f42ec81030b032c138a5c6f39a9014a52ac2ecfd7866ae4941ab"
        );
        let bare = KernelHashes::new(KERNEL, None, "");
        assert_eq!(
            hex(&bare.cmdline),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hex(&bare.initrd),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let page = bare.page();
        assert_eq!(&page[..PADDED_TABLE_LEN], &bare.table());
        assert!(page[PADDED_TABLE_LEN..].iter().all(|&b| b == 0));
    }

    /// The table equals `SevHashes(...).construct_table()` of
    /// sev-snp-measure byte for byte, and the page its
    /// `construct_page(0)`: with and without an initrd and a command line.
    #[test]
    fn table_agrees_with_sev_snp_measure() {
        let dir = std::env::temp_dir().join(format!("covm-kernel-hashes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kernel, initrd) = (dir.join("kernel"), dir.join("initrd"));
        std::fs::write(&kernel, KERNEL).unwrap();
        std::fs::write(&initrd, INITRD).unwrap();
        for (with_initrd, cmdline) in [(true, CMDLINE), (false, ""), (true, ""), (false, "a b c")] {
            let initrd_arg = if with_initrd {
                format!("{:?}", initrd.display().to_string())
            } else {
                "None".into()
            };
            let script = format!(
                "from sevsnpmeasure.sev_hashes import SevHashes\n\
                 h = SevHashes({:?}, {initrd_arg}, {cmdline:?})\n\
                 print(h.construct_table().hex(), h.construct_page(0).hex())\n",
                kernel.display().to_string()
            );
            let Some(out) = sev_snp_measure(&script) else {
                break;
            };
            let (table, page) = out.split_once(' ').unwrap();
            let ours = KernelHashes::from_files(&kernel, with_initrd.then_some(initrd.as_path()), cmdline).unwrap();
            assert_eq!(hex(&ours.table()), table, "initrd {with_initrd}, cmdline {cmdline:?}");
            assert_eq!(hex(&ours.page()[..]), page);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
