//! The `blk` workload seen from the host: its serial lines parsed, and the
//! disk image it wrote read back block by block (`covm_guest_abi::pattern`),
//! for the runs on QEMU's devices and on covm's.

use covm_guest_abi::layout::BLK_BLOCK_SIZE;
use covm_guest_abi::pattern::{block_generation, generation_digest, WORDS};
use std::path::Path;

/// A seed that differs between runs, so a stale image cannot pass.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
}

/// `key=<number>` in `line` (decimal or 0x-hex).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?;
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// One `blk` heartbeat line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub number: u64,
    /// Block writes completed so far.
    pub blocks: u64,
    /// MSI-X interrupts taken so far.
    pub irqs: u64,
    /// Pages `dirty` wrote so far, when it runs beside.
    pub pages: Option<u64>,
}

/// `blk` heartbeats in `text`.
pub fn blk_heartbeats(text: &str) -> Vec<Beat> {
    text.lines()
        .filter_map(|l| {
            let number = l.strip_prefix("heartbeat ")?.split_whitespace().next()?.parse().ok()?;
            l.ends_with(" ok").then_some(())?;
            Some(Beat {
                number,
                blocks: field(l, "blocks")?,
                irqs: field(l, "irqs")?,
                pages: field(l, "pages"),
            })
        })
        .collect()
}

/// Reads each of the first `blocks` blocks of the image: its generation
/// (0 for zeros), or the reason it is neither zeros nor an intact block.
pub fn disk_generations(image: &Path, seed: u64, blocks: u64) -> Result<Vec<u32>, String> {
    let bytes = std::fs::read(image).unwrap();
    let mut generations = Vec::with_capacity(blocks as usize);
    for block in 0..blocks {
        let at = (block * BLK_BLOCK_SIZE) as usize;
        let raw = &bytes[at..at + BLK_BLOCK_SIZE as usize];
        let mut words = [0u64; WORDS];
        for (w, chunk) in words.iter_mut().zip(raw.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        if words.iter().all(|&w| w == 0) {
            generations.push(0);
            continue;
        }
        match block_generation(&words, seed, block) {
            Some(g) => generations.push(g as u32),
            None => {
                return Err(format!(
                    "block {block} is neither zeros nor an intact block of seed {seed:#x} \
                     (words 0-2: {:#x} {:#x} {:#x})",
                    words[0], words[1], words[2]
                ))
            }
        }
    }
    Ok(generations)
}

/// The summary `blk` prints when it stops cleanly: (block writes, sum of
/// the generation table, its digest, interrupts taken).
pub fn blk_summary(text: &str) -> Option<(u64, u64, u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("blk: stopped ("))?;
    Some((
        field(line, "blocks")?,
        field(line, "generations")?,
        field(line, "digest")?,
        field(line, "irqs")?,
    ))
}

/// After a clean stop: the image holds exactly the generation table whose
/// digest the guest printed, and its generations add up to the writes.
pub fn check_disk_matches_summary(image: &Path, seed: u64, mib: u64, text: &str) {
    let (writes, sum, digest, _) = blk_summary(text).unwrap_or_else(|| panic!("no blk summary line:\n{text}"));
    assert!(writes > 0, "no block was written:\n{text}");
    // Every write raised one block's generation by one.
    assert_eq!(sum, writes, "the guest's table does not add up:\n{text}");
    let blocks = mib * (1 << 20) / BLK_BLOCK_SIZE;
    let on_disk = disk_generations(image, seed, blocks).unwrap_or_else(|e| panic!("{e}\nserial:\n{text}"));
    let disk_sum: u64 = on_disk.iter().map(|&g| g as u64).sum();
    assert_eq!(
        disk_sum, writes,
        "the disk holds {disk_sum} block writes, the guest made {writes}"
    );
    assert_eq!(
        generation_digest(on_disk.iter().copied()),
        digest,
        "the disk's generations differ from the guest's table (both add up to {writes})"
    );
}
