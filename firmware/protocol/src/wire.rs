//! Bounds-checked little-endian reading and writing over byte slices.
//!
//! Every encoding in the protocol is little-endian with fixed-width
//! fields. Decoders read through a [`Reader`] that never panics on short
//! input and insists, at the end, that no byte is left over; encoders
//! write through a [`Writer`] that fails instead of overrunning.

use crate::error::{Error, Result};

/// Reads fields in order from a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, naming it `what` in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Error::Length {
                what: self.what,
                expected: self.pos.saturating_add(n),
                got: self.buf.len(),
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads `n` bytes that must all be zero.
    pub(crate) fn reserved(&mut self, n: usize, what: &'static str) -> Result<()> {
        if self.bytes(n)?.iter().any(|&b| b != 0) {
            return Err(Error::Reserved { what });
        }
        Ok(())
    }

    /// Fails unless every byte was read: trailing bytes are never ignored.
    pub(crate) fn finish(self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(Error::Length {
                what: self.what,
                expected: self.pos,
                got: self.buf.len(),
            });
        }
        Ok(())
    }
}

/// Writes fields in order into a byte slice.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) -> Result<()> {
        let end = self
            .pos
            .checked_add(data.len())
            .filter(|&e| e <= self.buf.len())
            .ok_or(Error::BufferTooSmall {
                need: self.pos.saturating_add(data.len()),
                have: self.buf.len(),
            })?;
        self.buf[self.pos..end].copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<()> {
        self.bytes(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn zeros(&mut self, n: usize) -> Result<()> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Error::BufferTooSmall {
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            })?;
        self.buf[self.pos..end].fill(0);
        self.pos = end;
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.pos
    }
}

/// Fails unless `out` holds at least `need` bytes; encoders call it first
/// so that they never leave a half-written message behind.
pub(crate) fn check_room(out: &[u8], need: usize) -> Result<()> {
    if out.len() < need {
        return Err(Error::BufferTooSmall { need, have: out.len() });
    }
    Ok(())
}
