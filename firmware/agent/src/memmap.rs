//! The agent's private memory map: which guest pages are guest-private
//! (exported and imported, sealed) — decided by the agent from the boot
//! memory map, never by the host at migration time.
//!
//! A page is private when it lies wholly inside an E820 RAM entry
//! (type 1), outside every other entry, outside the agent window
//! `[AGENT_WINDOW_START, AGENT_WINDOW_END)` and below 4 GiB (all the
//! firmware maps, and all the epoch table covers). So the 640K-1M hole,
//! the MMIO hole and the window are never sealed nor accepted.

use core::fmt;
use covm_agent_protocol::PAGE_SIZE;
use covm_guest_abi::mailbox::{AGENT_WINDOW_END, AGENT_WINDOW_START};

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Most disjoint private ranges the map holds.
pub const MAX_RANGES: usize = 32;
/// Private memory ends here at the latest.
pub const PRIVATE_END: u64 = 1 << 32;

const PAGE: u64 = PAGE_SIZE as u64;

/// Why no map could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The boot memory map was missing.
    NoMap,
    /// More disjoint RAM ranges than [`MAX_RANGES`].
    TooManyRanges,
    /// No private page at all.
    Empty,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::NoMap => f.write_str("the loader gave no memory map"),
            MapError::TooManyRanges => write!(f, "the memory map has more than {MAX_RANGES} RAM ranges"),
            MapError::Empty => f.write_str("the memory map has no private RAM"),
        }
    }
}

/// One entry of the boot memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
    /// Type ([`E820_RAM`] is RAM).
    pub kind: u32,
}

/// Private guest memory: disjoint, non-adjacent page ranges `[start, end)`
/// in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: [(u64, u64); MAX_RANGES],
    n: usize,
}

impl MemoryMap {
    /// The private map of a boot memory map.
    pub fn from_e820(entries: impl IntoIterator<Item = E820Entry> + Clone) -> Result<Self, MapError> {
        let mut map = MemoryMap {
            ranges: [(0, 0); MAX_RANGES],
            n: 0,
        };
        for e in entries.clone() {
            if e.kind != E820_RAM {
                continue;
            }
            let end = e.addr.saturating_add(e.size).min(PRIVATE_END);
            let (start, end) = (e.addr.next_multiple_of(PAGE), end - end % PAGE);
            if start < end {
                map.add(start, end)?;
            }
        }
        for e in entries {
            if e.kind != E820_RAM {
                // Anything another entry claims is not RAM, page by page.
                let end = e.addr.saturating_add(e.size).min(PRIVATE_END);
                map.remove(e.addr - e.addr % PAGE, end.next_multiple_of(PAGE))?;
            }
        }
        map.remove(AGENT_WINDOW_START, AGENT_WINDOW_END)?;
        if map.n == 0 {
            return Err(MapError::Empty);
        }
        Ok(map)
    }

    /// Takes `[start, end)`, rounded out to whole pages, out of the map:
    /// memory the agent's own (measured) layout keeps for itself, like
    /// the firmware's page of CPU-feature caches.
    pub fn exclude(&mut self, start: u64, end: u64) -> Result<(), MapError> {
        if start < end {
            self.remove(start - start % PAGE, end.next_multiple_of(PAGE))?;
        }
        Ok(())
    }

    /// Adds `[start, end)` (page aligned), merging with what it touches.
    fn add(&mut self, mut start: u64, mut end: u64) -> Result<(), MapError> {
        let mut kept = [(0, 0); MAX_RANGES];
        let mut k = 0;
        for &(s, e) in self.ranges() {
            if e < start || s > end {
                kept[k] = (s, e);
                k += 1;
            } else {
                start = start.min(s);
                end = end.max(e);
            }
        }
        if k == MAX_RANGES {
            return Err(MapError::TooManyRanges);
        }
        let at = kept[..k].iter().position(|&(s, _)| s > start).unwrap_or(k);
        kept.copy_within(at..k, at + 1);
        kept[at] = (start, end);
        self.ranges = kept;
        self.n = k + 1;
        Ok(())
    }

    /// Takes `[start, end)` (page aligned) out of the map.
    fn remove(&mut self, start: u64, end: u64) -> Result<(), MapError> {
        let mut kept = [(0, 0); MAX_RANGES];
        let mut k = 0;
        for &(s, e) in self.ranges() {
            for piece in [(s, e.min(start)), (s.max(end), e)] {
                if piece.0 < piece.1 {
                    if k == MAX_RANGES {
                        return Err(MapError::TooManyRanges);
                    }
                    kept[k] = piece;
                    k += 1;
                }
            }
        }
        self.ranges = kept;
        self.n = k;
        Ok(())
    }

    /// The private ranges, ascending.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.n]
    }

    /// The end of the highest private range (0 for an empty map).
    pub fn end(&self) -> u64 {
        self.ranges().last().map_or(0, |&(_, e)| e)
    }

    /// Whether the page at `gpa` (4 KiB aligned) is private.
    pub fn is_private(&self, gpa: u64) -> bool {
        gpa % PAGE == 0 && self.ranges().iter().any(|&(s, e)| s <= gpa && gpa < e)
    }

    /// Whether the `pages` pages from `gpa` (4 KiB aligned) are all
    /// private (a run of private pages lies in one range: ranges that
    /// touch are merged).
    pub fn contains(&self, gpa: u64, pages: u64) -> bool {
        let Some(end) = pages.checked_mul(PAGE).and_then(|n| gpa.checked_add(n)) else {
            return false;
        };
        gpa % PAGE == 0 && pages > 0 && self.ranges().iter().any(|&(s, e)| s <= gpa && end <= e)
    }

    /// The first private page at or above `gpa` (4 KiB aligned).
    pub fn next_private(&self, gpa: u64) -> Option<u64> {
        self.ranges().iter().find(|&&(_, e)| gpa < e).map(|&(s, _)| s.max(gpa))
    }

    /// The first private page.
    pub fn first(&self) -> Option<u64> {
        self.ranges().first().map(|&(s, _)| s)
    }

    /// Number of private pages.
    pub fn pages(&self) -> u64 {
        self.ranges().iter().map(|&(s, e)| (e - s) / PAGE).sum()
    }

    /// Every private page, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges().iter().flat_map(|&(s, e)| (s..e).step_by(PAGE_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820_RAM,
        }
    }

    fn reserved(addr: u64, size: u64) -> E820Entry {
        E820Entry { addr, size, kind: 2 }
    }

    /// covm's map for 6 GiB: low RAM, the legacy hole, RAM to 3 GiB, RAM
    /// above 4 GiB.
    fn covm(size: u64) -> [E820Entry; 4] {
        let low = size.min(0xc000_0000);
        [
            ram(0, 0x9fc00),
            reserved(0x9fc00, 0x100000 - 0x9fc00),
            ram(0x100000, low - 0x100000),
            ram(1 << 32, size - low),
        ]
    }

    #[test]
    fn covm_layout() {
        let map = MemoryMap::from_e820(covm(6 << 30)).unwrap();
        assert_eq!(
            map.ranges(),
            &[
                (0, 0x9f000),
                (0x100000, AGENT_WINDOW_START),
                (AGENT_WINDOW_END, 0xc000_0000)
            ]
        );
        assert!(map.is_private(0));
        assert!(!map.is_private(0x9f000), "partial page below the EBDA");
        assert!(!map.is_private(0xa0000));
        assert!(!map.is_private(AGENT_WINDOW_START));
        assert!(!map.is_private(AGENT_WINDOW_END - PAGE));
        assert!(map.is_private(AGENT_WINDOW_END));
        assert!(!map.is_private(1 << 32), "above 4 GiB");
        assert!(!map.is_private(0x1001), "unaligned");
        assert_eq!(map.next_private(0x9f000), Some(0x100000));
        assert_eq!(map.next_private(AGENT_WINDOW_START + PAGE), Some(AGENT_WINDOW_END));
        assert_eq!(map.next_private(0xc000_0000), None);
        assert_eq!(map.first(), Some(0));
        assert!(map.contains(0x100000, (AGENT_WINDOW_START - 0x100000) / PAGE));
        assert!(!map.contains(0x100000, (AGENT_WINDOW_START - 0x100000) / PAGE + 1));
        assert!(!map.contains(0x9e000, 2));
        assert!(!map.contains(0, 0));
        assert!(!map.contains(0x1000, u64::MAX));
        assert_eq!(map.pages(), map.iter().count() as u64);
    }

    #[test]
    fn merges_sorts_and_subtracts() {
        let map = MemoryMap::from_e820([
            ram(0x300000, 0x100000),
            ram(0x100000, 0x200000),
            ram(0x80_0000 + 12, 0x2000),
            reserved(0x200800, 0x10),
        ])
        .unwrap();
        assert_eq!(
            map.ranges(),
            &[(0x100000, 0x200000), (0x201000, 0x400000), (0x801000, 0x802000)]
        );
    }

    #[test]
    fn exclude_rounds_out_to_pages() {
        let mut map = MemoryMap::from_e820(covm(64 << 20)).unwrap();
        map.exclude(0x164004, 0x16400a).unwrap();
        map.exclude(0x200000, 0x200000).unwrap();
        assert!(!map.is_private(0x164000));
        assert!(map.is_private(0x163000) && map.is_private(0x165000));
        assert_eq!(map.ranges().len(), 4);
    }

    #[test]
    fn empty_or_too_many() {
        assert_eq!(MemoryMap::from_e820([reserved(0, 1 << 20)]), Err(MapError::Empty));
        let many: [E820Entry; 40] = core::array::from_fn(|i| ram(i as u64 * 0x2000, 0x1000));
        assert_eq!(MemoryMap::from_e820(many), Err(MapError::TooManyRanges));
    }
}
