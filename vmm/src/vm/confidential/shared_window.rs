//! The memory a confidential VM (emulated platform) shares with the host:
//! pages of the fixed window `layout::SHARED_WINDOW`, converted by the
//! guest's page-state requests (`ports::PAGE_STATE_*`, the emulated
//! equivalent of SEV-SNP's page-state change). covm's devices see only the
//! window ([`window_view`]) and start only while all of it is shared
//! ([`MemoryGate`]); while any runs, no page of it can become private. So
//! no device touches a page the guest has not shared.

use covm_devices::virtio::MemoryGate;
use covm_devices::PioDevice;
use covm_guest_abi::layout::{PAGE_SIZE, SHARED_WINDOW, SHARED_WINDOW_SIZE};
use covm_guest_abi::ports::page_state;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vm::memory::GuestMemory;

/// Pages in the window.
const WINDOW_PAGES: u64 = SHARED_WINDOW_SIZE / PAGE_SIZE;

/// Which pages of the window are shared, and the devices using it.
#[derive(Debug)]
struct State {
    shared: Vec<bool>,
    running_devices: u32,
    /// The request being written: first page, page count; and the last result.
    first: u32,
    pages: u32,
    result: u32,
    warned: bool,
    /// SEV-SNP or TDX: conversions are the hardware's (KVM_HC_MAP_GPA_RANGE
    /// through [`SharedWindow::hardware_convert`]); the ports only answer
    /// queries.
    hardware: bool,
}

/// The window's migration state: which of its pages the guest shared
/// (checked by [`SharedWindow::restore`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedWindowState {
    /// Shared ranges as (guest-physical address, bytes), ascending.
    pub shared: Vec<(u64, u64)>,
}

/// The window's state, shared by its ports and its devices' gate.
#[derive(Debug)]
pub struct SharedWindow(Mutex<State>);

impl Default for SharedWindow {
    fn default() -> Self {
        SharedWindow(Mutex::new(State {
            shared: vec![false; WINDOW_PAGES as usize],
            running_devices: 0,
            first: 0,
            pages: 0,
            result: page_state::NONE,
            warned: false,
            hardware: false,
        }))
    }
}

impl SharedWindow {
    /// A window on SEV-SNP or TDX, whose pages change state only through
    /// the hardware's conversions.
    pub fn for_hardware() -> Self {
        let w = SharedWindow::default();
        w.lock().hardware = true;
        w
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Converts `pages` pages from page number `first` with `op`; the
    /// result the guest reads (refusals are logged, the first one at warn).
    pub fn request(&self, first: u64, pages: u64, op: u32) -> u32 {
        let mut s = self.lock();
        if op == page_state::QUERY {
            return s.query(first, pages).unwrap_or(page_state::REFUSED);
        }
        match s.convert(first, pages, op) {
            Ok(()) => page_state::OK,
            Err(why) => {
                let gpa = first.saturating_mul(PAGE_SIZE);
                if !std::mem::replace(&mut s.warned, true) {
                    tracing::warn!("page-state request for {pages} pages at {gpa:#x} refused: {why}");
                } else {
                    tracing::debug!("page-state request for {pages} pages at {gpa:#x} refused: {why}");
                }
                page_state::REFUSED
            }
        }
    }

    /// A hardware platform's conversion (SEV-SNP's page-state change or
    /// TDX's MapGPA, arriving as `KVM_HC_MAP_GPA_RANGE`) of `pages` pages
    /// from `gpa`: `convert` makes it (KVM's attributes; it returns the
    /// guest's result, 0 for done). Under the window's lock, so no device
    /// starts in between: a conversion to private of window pages while a
    /// device runs is refused (`-EINVAL`) before KVM sees it, and what
    /// was done is recorded for the window's part of the range.
    pub fn hardware_convert(
        &self,
        gpa: u64,
        pages: u64,
        to_private: bool,
        convert: impl FnOnce() -> Result<u64, String>,
    ) -> Result<u64, String> {
        let mut s = self.lock();
        let window_first = SHARED_WINDOW / PAGE_SIZE;
        let hit = gpa
            .checked_div(PAGE_SIZE)
            .zip(pages.checked_add(gpa / PAGE_SIZE))
            .map(|(first, end)| (first.max(window_first), end.min(window_first + WINDOW_PAGES)))
            .filter(|(first, end)| first < end && gpa.is_multiple_of(PAGE_SIZE));
        if hit.is_some() && to_private && s.running_devices > 0 {
            tracing::warn!(
                "a conversion of {pages} pages at {gpa:#x} to private refused: {} devices use the shared window",
                s.running_devices
            );
            return Ok(crate::platform::hardware::map_gpa::KVM_EINVAL.wrapping_neg());
        }
        let result = convert()?;
        if let (0, Some((first, end))) = (result, hit) {
            s.shared[(first - window_first) as usize..(end - window_first) as usize].fill(!to_private);
        }
        Ok(result)
    }

    /// The window's state, for migration: its shared pages.
    pub fn save(&self) -> SharedWindowState {
        SharedWindowState {
            shared: self.shared_ranges(),
        }
    }

    /// Takes a migrated state, before any device starts: each range must be
    /// whole pages inside the window, in order, apart.
    pub fn restore(&self, state: &SharedWindowState) -> Result<(), String> {
        let mut s = self.lock();
        if s.running_devices > 0 {
            return Err("the shared window's state arrived after its devices started".into());
        }
        let mut shared = vec![false; WINDOW_PAGES as usize];
        let mut last_end = SHARED_WINDOW;
        for &(gpa, len) in &state.shared {
            let end = gpa.checked_add(len).ok_or("a shared range wraps around")?;
            if gpa % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
                return Err(format!("shared range {gpa:#x}+{len:#x} is not whole pages"));
            }
            if gpa < last_end || end > SHARED_WINDOW + SHARED_WINDOW_SIZE {
                return Err(format!(
                    "shared range {gpa:#x}+{len:#x} is out of order or outside the window [{SHARED_WINDOW:#x}, {:#x})",
                    SHARED_WINDOW + SHARED_WINDOW_SIZE
                ));
            }
            shared[((gpa - SHARED_WINDOW) / PAGE_SIZE) as usize..((end - SHARED_WINDOW) / PAGE_SIZE) as usize]
                .fill(true);
            last_end = end;
        }
        s.shared = shared;
        Ok(())
    }

    /// The shared pages' guest-physical ranges, as (address, length).
    pub fn shared_ranges(&self) -> Vec<(u64, u64)> {
        let s = self.lock();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, _) in s.shared.iter().enumerate().filter(|(_, &shared)| shared) {
            let gpa = SHARED_WINDOW + i as u64 * PAGE_SIZE;
            match out.last_mut() {
                Some((start, len)) if *start + *len == gpa => *len += PAGE_SIZE,
                _ => out.push((gpa, PAGE_SIZE)),
            }
        }
        out
    }
}

/// The window's page indices of `pages` pages from page number `first`,
/// if they all lie in it (and are some).
fn window_pages(first: u64, pages: u64) -> Option<std::ops::Range<usize>> {
    let window_first = SHARED_WINDOW / PAGE_SIZE;
    let end = first.checked_add(pages)?;
    (pages > 0 && first >= window_first && end <= window_first + WINDOW_PAGES)
        .then(|| (first - window_first) as usize..(end - window_first) as usize)
}

impl State {
    /// What the pages are: all shared, all private or mixed; `None`
    /// outside the window.
    fn query(&self, first: u64, pages: u64) -> Option<u32> {
        let range = &self.shared[window_pages(first, pages)?];
        Some(match (range.iter().all(|&p| p), range.iter().any(|&p| p)) {
            (true, _) => page_state::SHARED,
            (false, true) => page_state::MIXED,
            (false, false) => page_state::PRIVATE,
        })
    }

    fn convert(&mut self, first: u64, pages: u64, op: u32) -> Result<(), String> {
        if self.hardware {
            return Err(
                "on SEV-SNP and TDX pages change state through the platform's own conversion \
                        (KVM_HC_MAP_GPA_RANGE); these ports only answer queries"
                    .into(),
            );
        }
        let range = window_pages(first, pages).ok_or_else(|| {
            format!(
                "only pages of the shared window [{SHARED_WINDOW:#x}, {:#x}) can change state on the emulated \
                 platform",
                SHARED_WINDOW + SHARED_WINDOW_SIZE
            )
        })?;
        let to_shared = match op {
            page_state::TO_SHARED => true,
            page_state::TO_PRIVATE if self.running_devices > 0 => {
                return Err(format!(
                    "{} devices use the window: its pages stay shared until they are reset",
                    self.running_devices
                ))
            }
            page_state::TO_PRIVATE => false,
            other => return Err(format!("unknown operation {other}")),
        };
        self.shared[range].fill(to_shared);
        Ok(())
    }
}

impl MemoryGate for SharedWindow {
    fn start(&self) -> Result<(), String> {
        let mut s = self.lock();
        let private = s.shared.iter().filter(|&&shared| !shared).count();
        if private != 0 {
            return Err(format!(
                "{private} of the {WINDOW_PAGES} pages of the shared window [{SHARED_WINDOW:#x}, {:#x}) are private: \
                 a confidential guest's devices start only once it has shared the window (page-state request)",
                SHARED_WINDOW + SHARED_WINDOW_SIZE
            ));
        }
        s.running_devices += 1;
        Ok(())
    }

    fn stopped(&self) {
        let mut s = self.lock();
        s.running_devices = s.running_devices.saturating_sub(1);
    }
}

/// The page-state ports (`ports::PAGE_STATE_FIRST` and the two after it).
pub struct PageStatePorts(pub Arc<SharedWindow>);

impl PioDevice for PageStatePorts {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            8 => self.0.lock().result,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (b, d) in bytes.iter_mut().zip(data) {
            *b = *d;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            0 => self.0.lock().first = value,
            4 => self.0.lock().pages = value,
            8 => {
                let (first, pages) = {
                    let s = self.0.lock();
                    (u64::from(s.first), u64::from(s.pages))
                };
                let result = self.0.request(first, pages, value);
                self.0.lock().result = result;
            }
            _ => {}
        }
    }
}

/// Guest memory as a confidential VM's devices see it: the window alone,
/// over the same host mapping as `memory` (so what a device writes is the
/// guest's). `None` if the window is not inside one RAM region.
pub fn window_view(memory: &GuestMemory) -> Option<GuestMemory> {
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestRegionMmap, MmapRegion};
    let host = memory
        .get_slice(GuestAddress(SHARED_WINDOW), SHARED_WINDOW_SIZE as usize)
        .ok()?
        .ptr_guard_mut()
        .as_ptr();
    // SAFETY: `host` and the window's size lie inside `memory`'s anonymous
    // private mapping (get_slice checked the range is in one region),
    // which the VM keeps mapped for as long as its devices run; the view
    // does not unmap it (a raw region owns nothing).
    let region = unsafe {
        MmapRegion::build_raw(
            host,
            SHARED_WINDOW_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
    }
    .ok()?;
    let region = GuestRegionMmap::new(region, GuestAddress(SHARED_WINDOW))?;
    GuestMemory::from_regions(vec![region]).ok()
}

/// Adds the pages devices wrote through `view` to `bitmaps` (KVM's log
/// and covm's own writes to the VM's memory never see them).
pub fn merge_view_writes(view: &GuestMemory, bitmaps: &mut [covm_migration::vm::DirtyBitmap]) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in view.iter() {
        let base = region.start_addr().0;
        for page in crate::vm::memory::vmm_writes(region).dirty_pages() {
            let gpa = base + page * PAGE_SIZE;
            if let Some(map) = bitmaps
                .iter_mut()
                .find(|m| (m.range.0..m.range.0 + m.range.1).contains(&gpa))
            {
                let bit = (gpa - map.range.0) / PAGE_SIZE;
                map.bits[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
    }
}

/// Forgets the devices' writes to `pages` pages from `gpa` (the engine is
/// about to send them).
pub fn forget_view_writes(view: &GuestMemory, gpa: u64, pages: u64) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let end = gpa + pages * PAGE_SIZE;
    for region in view.iter() {
        let (start, stop) = (region.start_addr().0, region.start_addr().0 + region.len());
        let (from, to) = (gpa.max(start), end.min(stop));
        if from < to {
            crate::vm::memory::vmm_writes(region).reset_addr_range((from - start) as usize, (to - from) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const FIRST: u64 = SHARED_WINDOW / PAGE_SIZE;

    #[test]
    fn devices_start_only_once_the_whole_window_is_shared() {
        let w = SharedWindow::default();
        let e = w.start().unwrap_err();
        assert!(e.contains("1024 of the 1024 pages"), "{e}");
        assert_eq!(w.request(FIRST, 512, page_state::TO_SHARED), page_state::OK);
        assert!(w.start().unwrap_err().contains("512 of the 1024"));
        assert_eq!(w.request(FIRST + 512, 512, page_state::TO_SHARED), page_state::OK);
        assert_eq!(w.shared_ranges(), vec![(SHARED_WINDOW, SHARED_WINDOW_SIZE)]);
        w.start().unwrap();
        // While a device runs, the window stays shared.
        assert_eq!(w.request(FIRST, 1, page_state::TO_PRIVATE), page_state::REFUSED);
        w.stopped();
        assert_eq!(w.request(FIRST, 1, page_state::TO_PRIVATE), page_state::OK);
        assert_eq!(
            w.shared_ranges(),
            vec![(SHARED_WINDOW + PAGE_SIZE, SHARED_WINDOW_SIZE - PAGE_SIZE)]
        );
    }

    #[test]
    fn hardware_conversions_update_the_window_and_spare_running_devices() {
        let w = SharedWindow::default();
        let einval = crate::platform::hardware::map_gpa::KVM_EINVAL.wrapping_neg();
        // A conversion spanning the window's start: only its part counts.
        let r = w.hardware_convert(SHARED_WINDOW - 2 * PAGE_SIZE, 4, false, || Ok(0));
        assert_eq!(r, Ok(0));
        assert_eq!(w.shared_ranges(), vec![(SHARED_WINDOW, 2 * PAGE_SIZE)]);
        // KVM (or the argument checks) refusing changes nothing.
        assert_eq!(
            w.hardware_convert(SHARED_WINDOW + 8 * PAGE_SIZE, 1, false, || Ok(einval)),
            Ok(einval)
        );
        assert_eq!(w.shared_ranges().len(), 1);
        // The whole window shared: a device starts; then a conversion of a
        // window page to private is refused before KVM sees it.
        w.hardware_convert(SHARED_WINDOW, WINDOW_PAGES, false, || Ok(0))
            .unwrap();
        w.start().unwrap();
        let r = w.hardware_convert(SHARED_WINDOW, 1, true, || panic!("KVM must not be asked"));
        assert_eq!(r, Ok(einval));
        // The ports of a hardware window only answer queries.
        let hw = SharedWindow::for_hardware();
        assert_eq!(hw.request(FIRST, 1, page_state::TO_SHARED), page_state::REFUSED);
        assert_eq!(hw.request(FIRST, 1, page_state::QUERY), page_state::PRIVATE);
        // Outside the window anything goes.
        assert_eq!(w.hardware_convert(0x1000_0000, 1, true, || Ok(0)), Ok(0));
        w.stopped();
        assert_eq!(w.hardware_convert(SHARED_WINDOW, 1, true, || Ok(0)), Ok(0));
        assert_eq!(
            w.shared_ranges(),
            vec![(SHARED_WINDOW + PAGE_SIZE, SHARED_WINDOW_SIZE - PAGE_SIZE)]
        );
        // A KVM failure passes on.
        assert!(w
            .hardware_convert(SHARED_WINDOW, 1, false, || Err("KVM failed".into()))
            .is_err());
    }

    #[test]
    fn the_state_migrates_and_bad_states_are_named() {
        let w = SharedWindow::default();
        assert_eq!(w.request(FIRST + 2, 10, page_state::TO_SHARED), page_state::OK);
        let state = w.save();
        let d = SharedWindow::default();
        d.restore(&state).unwrap();
        assert_eq!(d.shared_ranges(), w.shared_ranges());
        for (bad, named) in [
            (vec![(SHARED_WINDOW + 1, PAGE_SIZE)], "whole pages"),
            (vec![(0, PAGE_SIZE)], "outside the window"),
            (
                vec![(SHARED_WINDOW, SHARED_WINDOW_SIZE + PAGE_SIZE)],
                "outside the window",
            ),
            (
                vec![(SHARED_WINDOW + PAGE_SIZE, PAGE_SIZE), (SHARED_WINDOW, PAGE_SIZE)],
                "out of order",
            ),
            (vec![(u64::MAX - 4095, PAGE_SIZE * 2)], "wraps"),
        ] {
            let e = SharedWindow::default()
                .restore(&SharedWindowState { shared: bad })
                .unwrap_err();
            assert!(e.contains(named), "{e}");
        }
    }

    #[test]
    fn requests_outside_the_window_or_unknown_are_refused() {
        let w = SharedWindow::default();
        for (first, pages, op) in [
            (0, 1, page_state::TO_SHARED),
            (FIRST - 1, 2, page_state::TO_SHARED),
            (FIRST + WINDOW_PAGES - 1, 2, page_state::TO_SHARED),
            (FIRST, 0, page_state::TO_SHARED),
            (u64::MAX, 2, page_state::TO_SHARED),
            (FIRST, 1, 7),
        ] {
            assert_eq!(w.request(first, pages, op), page_state::REFUSED, "{first} {pages} {op}");
        }
        assert!(w.shared_ranges().is_empty());
        // Through the ports, as the firmware asks.
        let mut ports = PageStatePorts(Arc::new(SharedWindow::default()));
        let mut result = [0u8; 4];
        ports.read(8, &mut result);
        assert_eq!(u32::from_le_bytes(result), page_state::NONE);
        ports.write(0, &(FIRST as u32).to_le_bytes());
        ports.write(4, &(WINDOW_PAGES as u32).to_le_bytes());
        ports.write(8, &page_state::TO_SHARED.to_le_bytes());
        ports.read(8, &mut result);
        assert_eq!(u32::from_le_bytes(result), page_state::OK);
        ports.0.start().unwrap();
    }

    #[test]
    fn what_devices_write_through_the_view_counts_as_dirty() {
        let memory = crate::vm::memory::allocate(64 << 20).unwrap();
        let view = window_view(&memory).unwrap();
        let mut maps = vec![covm_migration::vm::DirtyBitmap {
            range: (0, 64 << 20),
            bits: vec![0; (64 << 20) / 4096 / 64],
        }];
        view.write_obj(1u8, GuestAddress(SHARED_WINDOW + 5 * PAGE_SIZE))
            .unwrap();
        merge_view_writes(&view, &mut maps);
        let bit = SHARED_WINDOW / PAGE_SIZE + 5;
        assert_ne!(maps[0].bits[(bit / 64) as usize] & (1 << (bit % 64)), 0);
        assert_eq!(maps[0].bits.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        forget_view_writes(&view, SHARED_WINDOW, 8);
        let mut again = vec![covm_migration::vm::DirtyBitmap {
            range: (0, 64 << 20),
            bits: vec![0; (64 << 20) / 4096 / 64],
        }];
        merge_view_writes(&view, &mut again);
        assert!(again[0].bits.iter().all(|&w| w == 0));
    }

    #[test]
    fn the_devices_view_is_the_window_over_the_same_memory() {
        let memory = crate::vm::memory::allocate(64 << 20).unwrap();
        let view = window_view(&memory).unwrap();
        view.write_obj(0xabcd_u32, GuestAddress(SHARED_WINDOW + 8)).unwrap();
        assert_eq!(memory.read_obj::<u32>(GuestAddress(SHARED_WINDOW + 8)).unwrap(), 0xabcd);
        // Private memory on either side is not in it.
        assert!(view.read_obj::<u8>(GuestAddress(SHARED_WINDOW - 1)).is_err());
        assert!(view
            .read_obj::<u8>(GuestAddress(SHARED_WINDOW + SHARED_WINDOW_SIZE))
            .is_err());
        assert!(view.read_obj::<u8>(GuestAddress(0x100_0000)).is_err());
    }
}
