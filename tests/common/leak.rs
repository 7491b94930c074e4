//! Looking for a guest's private data on a migration's wire: 64-byte
//! windows of the `dirty` workload's pages, searched for all at once.

use covm_guest_abi::pattern::{fill_page, WORDS};

/// 64-byte windows of the pages of a `dirty` region of `mib` MiB with
/// `seed`: data words 3..11 of every 97th page at every generation up to 400.
pub fn page_windows(seed: u64, mib: u64) -> Vec<Vec<u8>> {
    let pages = mib * 256;
    let mut needles = Vec::new();
    let mut words = [0u64; WORDS];
    for page in (0..pages).step_by(97) {
        for generation in 1..=400 {
            fill_page(&mut words, seed, page, generation);
            let bytes: Vec<u8> = words[3..11].iter().flat_map(|w| w.to_le_bytes()).collect();
            needles.push(bytes);
        }
    }
    needles
}

/// How many of `needles` occur in `haystack`.
pub fn found(haystack: &[u8], needles: &[Vec<u8>]) -> usize {
    let ac = aho_corasick::AhoCorasick::new(needles).unwrap();
    let mut seen = std::collections::HashSet::new();
    for m in ac.find_overlapping_iter(haystack) {
        seen.insert(m.pattern());
    }
    seen.len()
}
