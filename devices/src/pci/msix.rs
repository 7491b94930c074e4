//! MSI-X: the capability, the vector table and the pending-bit array of
//! one function, and delivery through the VMM's [`MsiRoutes`].
//!
//! A vector is routed to its message only while MSI-X is enabled and the
//! vector unmasked; an interrupt raised while it is masked (by its entry or
//! by the function mask) sets its pending bit instead and is delivered when
//! it is unmasked, as the PCI specification asks.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes of one table entry.
pub const ENTRY_LEN: u64 = 16;
/// Message control: enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;
/// The most vectors a function may have (the table size field's 11 bits).
pub const MAX_VECTORS: u16 = 2048;

/// Where an MSI goes: the address and data a vector's entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsiMessage {
    /// The message address (0xFEEx_xxxx on x86: destination APIC).
    pub address: u64,
    /// The message data (vector and delivery mode).
    pub data: u32,
}

/// Why an interrupt could not be routed or raised (the VMM's reason).
#[derive(Debug, thiserror::Error)]
#[error("MSI vector {vector}: {reason}")]
pub struct InterruptError {
    /// The function's vector.
    pub vector: u16,
    /// What failed.
    pub reason: String,
}

/// How a function's vectors reach the guest: the VMM's side (on KVM, a GSI
/// route and an irqfd per vector). Shared with the device's worker threads.
pub trait MsiRoutes: Send + Sync {
    /// Points `vector` at `message`, or unroutes it (`None`).
    fn route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError>;
    /// Raises `vector`, routed beforehand.
    fn trigger(&self, vector: u16) -> Result<(), InterruptError>;
}

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Entry = Entry {
        address_lo: 0,
        address_hi: 0,
        data: 0,
        control: VECTOR_MASKED,
    };

    fn words(&self) -> [u32; 4] {
        [self.address_lo, self.address_hi, self.data, self.control]
    }

    fn set_word(&mut self, word: usize, value: u32) {
        match word {
            0 => self.address_lo = value & !3,
            1 => self.address_hi = value,
            2 => self.data = value,
            _ => self.control = value & VECTOR_MASKED,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.address_hi) << 32 | u64::from(self.address_lo),
            data: self.data,
        }
    }
}

/// What of MSI-X migrates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// Each vector's entry: address low, address high, data, control.
    pub entries: Vec<[u32; 4]>,
    /// Each vector's pending bit.
    pub pending: Vec<bool>,
    /// Message control's enable bit.
    pub enabled: bool,
    /// Message control's function mask.
    pub function_masked: bool,
}

/// A function's MSI-X.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    /// What each vector is routed to now (to route only on change).
    routed: Vec<Option<MsiMessage>>,
    routes: Arc<dyn MsiRoutes>,
    /// Interrupts raised while MSI-X was disabled (nowhere to go).
    lost: u64,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl Msix {
    /// `vectors` vectors (1 to [`MAX_VECTORS`]), all masked, MSI-X disabled.
    pub fn new(vectors: u16, routes: Arc<dyn MsiRoutes>) -> Self {
        assert!((1..=MAX_VECTORS).contains(&vectors), "{vectors} MSI-X vectors");
        let n = usize::from(vectors);
        Msix {
            entries: vec![Entry::RESET; n],
            pending: vec![false; n],
            enabled: false,
            function_masked: false,
            routed: vec![None; n],
            routes,
            lost: 0,
        }
    }

    /// The number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability's body (after its ID and next pointer) and its
    /// writable bits: message control, then the table's and the PBA's
    /// offset within BAR `bar`.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> ([u8; 10], [u8; 10]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let mut writable = [0u8; 10];
        writable[1] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, writable)
    }

    /// Bytes of the table for `vectors`, and of the pending-bit array.
    pub fn table_len(vectors: u16) -> u64 {
        u64::from(vectors) * ENTRY_LEN
    }

    /// Bytes of the pending-bit array (whole qwords).
    pub fn pba_len(vectors: u16) -> u64 {
        u64::from(vectors).div_ceil(64) * 8
    }

    /// Message control as the guest left it in the capability.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.sync_all();
    }

    /// Message control's two writable bits as they stand.
    pub fn control_bits(&self) -> u16 {
        (if self.enabled { CONTROL_ENABLE } else { 0 }) | (if self.function_masked { CONTROL_FUNCTION_MASK } else { 0 })
    }

    /// Reads the table at `offset`; outside it reads 0.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let (vector, word, shift) = ((at / ENTRY_LEN) as usize, (at % ENTRY_LEN / 4) as usize, at % 4 * 8);
            *byte = self.entries.get(vector).map_or(0, |e| (e.words()[word] >> shift) as u8);
        }
    }

    /// Writes the table at `offset`; outside it is ignored.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            let (vector, word, shift) = ((at / ENTRY_LEN) as usize, (at % ENTRY_LEN / 4) as usize, at % 4 * 8);
            let Some(entry) = self.entries.get_mut(vector) else {
                continue;
            };
            let old = entry.words()[word];
            entry.set_word(word, (old & !(0xff << shift)) | (u32::from(byte) << shift));
            if !touched.contains(&vector) {
                touched.push(vector);
            }
        }
        for vector in touched {
            self.sync(vector);
        }
    }

    /// Reads the pending-bit array at `offset` (writes to it are ignored:
    /// it is read-only to software).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let first = ((offset + i as u64) * 8) as usize;
            *byte = (0..8).fold(0u8, |b, bit| {
                b | (u8::from(self.pending.get(first + bit).copied().unwrap_or(false)) << bit)
            });
        }
    }

    fn masked(&self, vector: usize) -> bool {
        self.function_masked || self.entries[vector].control & VECTOR_MASKED != 0
    }

    /// Routes `vector` as its entry, the enable bit and the masks say, and
    /// delivers what was pending once it is unmasked.
    fn sync(&mut self, vector: usize) {
        let wanted = (self.enabled && !self.masked(vector)).then(|| self.entries[vector].message());
        if wanted != self.routed[vector] {
            if let Err(e) = self.routes.route(vector as u16, wanted) {
                tracing::warn!("{e}");
            }
            self.routed[vector] = wanted;
        }
        if wanted.is_some() && self.pending[vector] {
            self.pending[vector] = false;
            self.deliver(vector);
        }
    }

    fn sync_all(&mut self) {
        for vector in 0..self.entries.len() {
            self.sync(vector);
        }
    }

    fn deliver(&self, vector: usize) {
        if let Err(e) = self.routes.trigger(vector as u16) {
            tracing::warn!("{e}");
        }
    }

    /// Raises `vector`: delivered, or pending while masked. A vector past
    /// the table, or raised while MSI-X is disabled, goes nowhere (counted).
    pub fn notify(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() || !self.enabled {
            self.lost += 1;
        } else if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.deliver(v);
        }
    }

    /// Interrupts that had nowhere to go.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// What migrates.
    pub fn save(&self) -> MsixState {
        MsixState {
            entries: self.entries.iter().map(Entry::words).collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Takes `state` (from a function with as many vectors) and routes
    /// every vector accordingly.
    pub fn restore(&mut self, state: &MsixState) -> Result<(), String> {
        let n = self.entries.len();
        if state.entries.len() != n || state.pending.len() != n {
            return Err(format!(
                "MSI-X state of {} vectors ({} pending bits) for a function with {n}",
                state.entries.len(),
                state.pending.len()
            ));
        }
        for (entry, words) in self.entries.iter_mut().zip(&state.entries) {
            for (word, &value) in words.iter().enumerate() {
                entry.set_word(word, value);
            }
        }
        self.pending.clone_from(&state.pending);
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        self.sync_all();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every route and trigger.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub routes: Mutex<Vec<(u16, Option<MsiMessage>)>>,
        pub triggers: Mutex<Vec<u16>>,
    }

    impl MsiRoutes for Recorder {
        fn route(&self, vector: u16, message: Option<MsiMessage>) -> Result<(), InterruptError> {
            self.routes.lock().unwrap().push((vector, message));
            Ok(())
        }
        fn trigger(&self, vector: u16) -> Result<(), InterruptError> {
            self.triggers.lock().unwrap().push(vector);
            Ok(())
        }
    }

    fn entry(msix: &mut Msix, vector: u64, address: u32, data: u32, masked: bool) {
        let base = vector * ENTRY_LEN;
        msix.table_write(base, &address.to_le_bytes());
        msix.table_write(base + 4, &0u32.to_le_bytes());
        msix.table_write(base + 8, &data.to_le_bytes());
        msix.table_write(base + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn capability_describes_the_table() {
        let msix = Msix::new(3, Arc::new(Recorder::default()));
        let (body, writable) = msix.capability(0, 0x4000, 0x5000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2, "table size is N - 1");
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x5000);
        assert_eq!(writable, [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Msix::table_len(3), 48);
        assert_eq!(Msix::pba_len(3), 8);
        assert_eq!(Msix::pba_len(65), 16);
    }

    #[test]
    fn a_vector_is_delivered_only_when_enabled_and_unmasked() {
        let rec = Arc::new(Recorder::default());
        let mut msix = Msix::new(2, rec.clone());
        msix.notify(0);
        assert_eq!(msix.lost(), 1, "disabled: nowhere to go");
        msix.set_control(CONTROL_ENABLE);
        entry(&mut msix, 0, 0xfee0_0000, 0x41, true);
        msix.notify(0);
        assert!(rec.triggers.lock().unwrap().is_empty());
        let mut pba = [0u8; 8];
        msix.pba_read(0, &mut pba);
        assert_eq!(pba[0], 1, "pending while masked");
        // Unmasking routes and delivers what was pending.
        msix.table_write(12, &0u32.to_le_bytes());
        assert_eq!(
            rec.routes.lock().unwrap().last(),
            Some(&(
                0,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                })
            ))
        );
        assert_eq!(*rec.triggers.lock().unwrap(), vec![0]);
        msix.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        msix.notify(0);
        assert_eq!(*rec.triggers.lock().unwrap(), vec![0, 0]);
        // The function mask holds everything back, and releases it.
        msix.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        msix.notify(0);
        assert_eq!(rec.triggers.lock().unwrap().len(), 2);
        assert_eq!(rec.routes.lock().unwrap().last(), Some(&(0, None)));
        msix.set_control(CONTROL_ENABLE);
        assert_eq!(rec.triggers.lock().unwrap().len(), 3);
        // Out of range: ignored, counted.
        msix.notify(7);
        assert_eq!(msix.lost(), 2);
    }

    #[test]
    fn table_reads_back_and_out_of_range_accesses_are_harmless() {
        let rec = Arc::new(Recorder::default());
        let mut msix = Msix::new(1, rec.clone());
        entry(&mut msix, 0, 0xfee0_1003, 0x4041, false);
        let mut word = [0u8; 4];
        msix.table_read(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0xfee0_1000, "address bits 1:0 are reserved");
        msix.table_read(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0);
        msix.table_write(12, &0xffff_fffeu32.to_le_bytes());
        msix.table_read(12, &mut word);
        assert_eq!(u32::from_le_bytes(word), 0, "only the mask bit is kept");
        msix.table_write(16, &[0xff; 16]);
        msix.table_write(u64::MAX - 3, &[0xff; 4]);
        let mut far = [0xaau8; 8];
        msix.table_read(4096, &mut far);
        assert_eq!(far, [0; 8]);
        msix.pba_read(4096, &mut far);
        assert_eq!(far, [0; 8]);
        assert!(rec.routes.lock().unwrap().is_empty(), "disabled: nothing routed");
    }

    #[test]
    fn state_round_trips_and_reroutes() {
        let rec = Arc::new(Recorder::default());
        let mut a = Msix::new(2, rec.clone());
        a.set_control(CONTROL_ENABLE);
        entry(&mut a, 1, 0xfee0_0000, 0x42, false);
        entry(&mut a, 0, 0xfee0_0000, 0x41, true);
        a.notify(0);
        let state = a.save();
        let rec_b = Arc::new(Recorder::default());
        let mut b = Msix::new(2, rec_b.clone());
        b.restore(&state).unwrap();
        assert_eq!(b.save(), state);
        assert_eq!(
            *rec_b.routes.lock().unwrap(),
            vec![(
                1,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x42
                })
            )]
        );
        let mut small = Msix::new(1, rec_b);
        assert!(small.restore(&state).unwrap_err().contains("2 vectors"));
    }
}
