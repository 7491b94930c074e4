//! The memory digest of verified mode.
//!
//! The host's dirty log is a hint, not a truth: a host that hides a dirty
//! page would leave a stale copy at the destination. In verified mode the
//! source agent digests its paused guest's private memory and puts the
//! digest in the Final record; the destination agent digests what it
//! imported and commits only if both agree. Both sides compute exactly
//!
//! ```text
//! SHA-256( "covm-cm v1 memory digest"
//!          ‖ for each private page, ascending gpa: gpa (u64 LE) ‖ 4096 bytes
//!          ‖ number of pages (u64 LE) )
//! ```
//!
//! incrementally, one page at a time, with no allocation.

use crate::error::{Error, Result};
use crate::record::PAGE_SIZE;
use sha2::{Digest, Sha256};

/// The digest's leading label.
pub const MEMORY_DIGEST_LABEL: &[u8] = b"covm-cm v1 memory digest";

/// An incremental digest of guest memory, page by page in ascending order.
#[derive(Clone)]
pub struct MemoryDigest {
    hash: Sha256,
    last: Option<u64>,
    pages: u64,
}

impl Default for MemoryDigest {
    fn default() -> Self {
        MemoryDigest::new()
    }
}

impl MemoryDigest {
    /// An empty digest.
    pub fn new() -> Self {
        let mut hash = Sha256::new();
        hash.update(MEMORY_DIGEST_LABEL);
        MemoryDigest {
            hash,
            last: None,
            pages: 0,
        }
    }

    /// Adds the page at `gpa`; addresses must be 4 KiB aligned and strictly
    /// ascending, so that both sides hash the same sequence.
    pub fn add_page(&mut self, gpa: u64, page: &[u8; PAGE_SIZE]) -> Result<()> {
        if gpa % PAGE_SIZE as u64 != 0 {
            return Err(Error::Unaligned(gpa));
        }
        if let Some(previous) = self.last {
            if gpa <= previous {
                return Err(Error::DigestOrder { previous, gpa });
            }
        }
        self.hash.update(gpa.to_le_bytes());
        self.hash.update(page);
        self.last = Some(gpa);
        self.pages += 1;
        Ok(())
    }

    /// Pages added so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let mut hash = self.hash;
        hash.update(self.pages.to_le_bytes());
        hash.finalize().into()
    }
}
