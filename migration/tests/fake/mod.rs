//! A fake VM for the engine's tests: two RAM ranges in `Vec`s, a dirty
//! bitmap, and a "guest" that writes pages while the engine reads memory
//! (so its dirty rate is tied to the transfer, deterministically, and
//! slowed by the throttle as real vCPUs would be).
#![allow(dead_code)]

use covm_migration::engine::SendOptions;
use covm_migration::protocol::PAGE_BYTES;
use covm_migration::transport::Stream;
use covm_migration::vm::{DestinationVm, DirtyBitmap, MemoryRange, SourceVm, VmOpError, PAGE_SIZE};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAGE: usize = PAGE_SIZE as usize;

/// The fake's RAM layout: 2 MiB at 0 and 1 MiB above 4 GiB.
pub const RANGES: [MemoryRange; 2] = [(0, 2 << 20), (1 << 32, 1 << 20)];

/// The configuration the source sends; the destination builds from it.
pub fn config() -> Vec<u8> {
    serde_json::to_vec(&RANGES).unwrap()
}

fn locate(gpa: u64, len: usize) -> Option<(usize, usize)> {
    RANGES.iter().enumerate().find_map(|(i, (start, size))| {
        let end = gpa.checked_add(len as u64)?;
        (gpa >= *start && end <= start + size).then(|| (i, (gpa - start) as usize))
    })
}

/// Everything a test may want to check about the source after the fact.
#[derive(Default)]
pub struct Guest {
    pub mem: Vec<Vec<u8>>,
    pub dirty: Vec<Vec<u64>>,
    pub tracking: bool,
    pub tracking_stopped: u32,
    pub throttle: u8,
    pub throttle_calls: Vec<u8>,
    pub paused: bool,
    pub pauses: u32,
    pub resumes: u32,
    pub state_saves: u32,
    pub saved_state: Option<Vec<u8>>,
    /// Pages the guest writes per page the engine reads, at throttle 0.
    pub rate: f64,
    carry: f64,
    cursor: u64,
    generation: u64,
}

impl Guest {
    fn write_page(&mut self, range: usize, page: usize) {
        self.generation += 1;
        let g = self.generation;
        let bytes = &mut self.mem[range][page * PAGE..(page + 1) * PAGE];
        if g % 5 == 0 {
            bytes.fill(0); // some writes zero a page, to exercise ZeroPages
        } else {
            bytes.fill(g as u8 | 1);
            bytes[..8].copy_from_slice(&g.to_le_bytes());
        }
        if self.tracking {
            self.dirty[range][page / 64] |= 1 << (page % 64);
        }
    }

    /// The guest runs while `pages` pages are read: it writes pages of
    /// range 0 in a scattered order.
    fn run_guest(&mut self, pages: usize) {
        if self.paused {
            return;
        }
        self.carry += pages as f64 * self.rate * f64::from(100 - self.throttle) / 100.0;
        let working = (RANGES[0].1 / PAGE_SIZE) as usize;
        while self.carry >= 1.0 {
            self.carry -= 1.0;
            self.cursor = (self.cursor + 97) % working as u64; // 97 is co-prime with 512
            self.write_page(0, self.cursor as usize);
        }
    }
}

/// The source VM.
pub struct FakeSource(pub Mutex<Guest>);

impl FakeSource {
    /// A guest writing `rate` pages per page read, memory half patterned
    /// and half zero.
    pub fn new(rate: f64) -> Self {
        let mut g = Guest {
            rate,
            ..Default::default()
        };
        for (_, size) in RANGES {
            let pages = (size / PAGE_SIZE) as usize;
            g.mem.push(vec![0; size as usize]);
            g.dirty.push(vec![0; pages.div_ceil(64)]);
        }
        for (range, (_, size)) in RANGES.iter().enumerate() {
            for page in (0..(size / PAGE_SIZE) as usize).step_by(2) {
                g.write_page(range, page);
            }
        }
        FakeSource(Mutex::new(g))
    }

    pub fn guest(&self) -> std::sync::MutexGuard<'_, Guest> {
        self.0.lock().unwrap()
    }
}

impl SourceVm for FakeSource {
    fn memory_ranges(&self) -> Vec<MemoryRange> {
        RANGES.to_vec()
    }
    fn start_dirty_tracking(&mut self) -> Result<(), VmOpError> {
        self.guest().tracking = true;
        Ok(())
    }
    fn stop_dirty_tracking(&mut self) -> Result<(), VmOpError> {
        let mut g = self.guest();
        g.tracking = false;
        g.tracking_stopped += 1;
        Ok(())
    }
    fn dirty_pages(&mut self) -> Result<Vec<DirtyBitmap>, VmOpError> {
        let g = self.guest();
        Ok(RANGES
            .iter()
            .zip(&g.dirty)
            .map(|(range, bits)| DirtyBitmap {
                range: *range,
                bits: bits.clone(),
            })
            .collect())
    }
    fn clear_dirty(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        let (range, offset) = locate(gpa, (pages * PAGE_SIZE) as usize).ok_or(VmOpError::OutsideRam {
            what: "clear",
            gpa,
            len: pages * PAGE_SIZE,
        })?;
        let mut g = self.guest();
        for page in offset / PAGE..offset / PAGE + pages as usize {
            g.dirty[range][page / 64] &= !(1 << (page % 64));
        }
        Ok(())
    }
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmOpError> {
        let (range, offset) = locate(gpa, buf.len()).ok_or(VmOpError::OutsideRam {
            what: "read",
            gpa,
            len: buf.len() as u64,
        })?;
        let mut g = self.guest();
        buf.copy_from_slice(&g.mem[range][offset..offset + buf.len()]);
        g.run_guest(buf.len() / PAGE);
        Ok(())
    }
    fn unpopulated_pages(&self, _gpa: u64, pages: u64) -> Result<Vec<bool>, VmOpError> {
        // The fake keeps plain Vec memory: nothing is known without reading.
        Ok(vec![false; pages as usize])
    }
    fn set_throttle(&mut self, percent: u8) -> Result<(), VmOpError> {
        let mut g = self.guest();
        g.throttle = percent;
        g.throttle_calls.push(percent);
        Ok(())
    }
    fn pause(&mut self) -> Result<(), VmOpError> {
        let mut g = self.guest();
        g.paused = true;
        g.pauses += 1;
        Ok(())
    }
    fn resume(&mut self) -> Result<(), VmOpError> {
        let mut g = self.guest();
        assert!(g.paused, "resume of a running guest");
        g.paused = false;
        g.resumes += 1;
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, VmOpError> {
        let mut g = self.guest();
        assert!(g.paused, "state saved while running");
        g.state_saves += 1;
        let state = format!("state at generation {}", g.generation).into_bytes();
        g.saved_state = Some(state.clone());
        Ok(state)
    }
}

/// What the destination received, shared with the test.
#[derive(Default)]
pub struct Received {
    pub mem: Vec<Vec<u8>>,
    pub state: Option<Vec<u8>>,
}

/// The destination VM, writing into a [`Received`] the test keeps.
pub struct FakeDestination(Arc<Mutex<Received>>);

/// The factory given to `receive`: builds from the source's config.
pub fn factory(out: Arc<Mutex<Received>>) -> impl FnOnce(&[u8]) -> Result<Box<dyn DestinationVm>, VmOpError> {
    move |config| {
        let ranges: Vec<MemoryRange> = serde_json::from_slice(config).map_err(VmOpError::vmm)?;
        if ranges != RANGES {
            return Err(VmOpError::Refused("unexpected layout".into()));
        }
        // Fill with garbage: every page must be written by the migration.
        out.lock().unwrap().mem = ranges.iter().map(|(_, size)| vec![0xAA; *size as usize]).collect();
        Ok(Box::new(FakeDestination(out)))
    }
}

impl DestinationVm for FakeDestination {
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), VmOpError> {
        let (range, offset) = locate(gpa, data.len()).ok_or(VmOpError::OutsideRam {
            what: "write",
            gpa,
            len: data.len() as u64,
        })?;
        self.0.lock().unwrap().mem[range][offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn zero_memory(&mut self, gpa: u64, pages: u64) -> Result<(), VmOpError> {
        let len = (pages * PAGE_SIZE) as usize;
        let (range, offset) = locate(gpa, len).ok_or(VmOpError::OutsideRam {
            what: "zero",
            gpa,
            len: len as u64,
        })?;
        self.0.lock().unwrap().mem[range][offset..offset + len].fill(0);
        Ok(())
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), VmOpError> {
        self.0.lock().unwrap().state = Some(state.to_vec());
        Ok(())
    }
}

/// Both ends of a connected socket pair: the source's and the destination's.
pub fn pair() -> (Box<dyn Stream>, Box<dyn Stream>) {
    let (a, b) = UnixStream::pair().unwrap();
    (Box::new(a), Box::new(b))
}

/// Options for tests: a downtime of 0 ms converges only when nothing is
/// dirty, which makes round counts independent of the machine's speed.
pub fn options(downtime_ms: u64) -> SendOptions {
    SendOptions {
        downtime: Duration::from_millis(downtime_ms),
        io_timeout: Duration::from_secs(5),
        commit_timeout: Duration::from_secs(5),
        ..SendOptions::default()
    }
}

/// The destination holds the source's memory, page for page, and its
/// saved state.
pub fn assert_same_memory(source: &Guest, destination: &Received) {
    for (range, (a, b)) in source.mem.iter().zip(&destination.mem).enumerate() {
        if let Some(page) = a.chunks(PAGE_BYTES).zip(b.chunks(PAGE_BYTES)).position(|(x, y)| x != y) {
            panic!("range {range} page {page} differs");
        }
    }
    assert!(source.saved_state.is_some());
    assert_eq!(destination.state, source.saved_state);
}
