//! Payload encoding and strict decoding, per message kind.

use super::frame::read_full;
use super::{
    Message, MessageKind, ProtocolError, MAX_CONFIG_BYTES, MAX_CONTROL_BYTES, MAX_HANDSHAKE_BYTES, MAX_PAGES_PER_FRAME,
    MAX_REASON_BYTES, MAX_SEALED_BYTES, MAX_STATE_BYTES, PAGE_BYTES,
};
use std::io::Read;

/// Payload bytes of `m` on the wire.
pub(super) fn payload_len(m: &Message) -> usize {
    match m {
        Message::Hello { config, .. } => 2 + config.len(),
        Message::HelloAck | Message::Commit => 0,
        Message::Refuse { reason } | Message::Abort { reason } => reason.len(),
        Message::Pages { gpas, data, .. } => 8 + gpas.len() * 8 + data.len(),
        Message::ZeroPages { .. } => 20,
        Message::RoundEnd { .. } => 28,
        Message::State { state } => state.len(),
        Message::Complete { .. } => 12,
        Message::Handshake { message } => message.len(),
        Message::Sealed { records, .. } => 4 + records.len(),
        Message::Control { record } => record.len(),
        Message::Sync { .. } | Message::Synced { .. } => 4,
    }
}

/// Refuses to send what the receiver would refuse: better a clear local
/// error than a peer's "malformed".
pub(super) fn check_sendable(m: &Message, version: u16) -> Result<(), ProtocolError> {
    let bad = |what: String| Err(ProtocolError::Unsendable { kind: m.kind(), what });
    if !m.kind().in_version(version) {
        return bad(format!("not part of migration protocol version {version}"));
    }
    let opaque = |what: &str, bytes: &[u8], cap: usize| {
        if bytes.is_empty() {
            bad(format!("an empty {what}"))
        } else if bytes.len() > cap {
            bad(format!("a {what} of {} bytes is over {cap}", bytes.len()))
        } else {
            Ok(())
        }
    };
    match m {
        Message::Hello { config, .. } if config.len() > MAX_CONFIG_BYTES => bad(format!(
            "a VM configuration of {} bytes is over {MAX_CONFIG_BYTES}",
            config.len()
        )),
        Message::Refuse { reason } | Message::Abort { reason } if reason.len() > MAX_REASON_BYTES => {
            bad(format!("a reason of {} bytes is over {MAX_REASON_BYTES}", reason.len()))
        }
        Message::Pages { gpas, data, .. } if gpas.is_empty() || gpas.len() > MAX_PAGES_PER_FRAME => bad(format!(
            "{} pages in one frame (1 to {MAX_PAGES_PER_FRAME})",
            gpas.len()
        )),
        Message::Pages { gpas, data, .. } if data.len() != gpas.len() * PAGE_BYTES => {
            bad(format!("{} data bytes for {} pages", data.len(), gpas.len()))
        }
        Message::ZeroPages { count: 0, .. } => bad("a run of zero pages".into()),
        Message::State { state } if state.len() > MAX_STATE_BYTES => {
            bad(format!("{} bytes of state is over {MAX_STATE_BYTES}", state.len()))
        }
        Message::Handshake { message } => opaque("handshake message", message, MAX_HANDSHAKE_BYTES),
        Message::Sealed { records, .. } => opaque("batch of sealed records", records, MAX_SEALED_BYTES),
        Message::Control { record } => opaque("control record", record, MAX_CONTROL_BYTES),
        _ => Ok(()),
    }
}

/// Appends the payload's small fields to `head` and returns the large
/// trailing buffer (config, page data, state) to be written as is.
pub(super) fn encode_payload<'m>(m: &'m Message, head: &mut Vec<u8>) -> &'m [u8] {
    match m {
        Message::Hello { version, config } => {
            head.extend_from_slice(&version.to_le_bytes());
            config
        }
        Message::HelloAck | Message::Commit => &[],
        Message::Refuse { reason } | Message::Abort { reason } => reason.as_bytes(),
        Message::Pages { round, gpas, data } => {
            head.extend_from_slice(&round.to_le_bytes());
            head.extend_from_slice(&(gpas.len() as u32).to_le_bytes());
            for gpa in gpas {
                head.extend_from_slice(&gpa.to_le_bytes());
            }
            data
        }
        Message::ZeroPages { round, gpa, count } => {
            head.extend_from_slice(&round.to_le_bytes());
            head.extend_from_slice(&gpa.to_le_bytes());
            head.extend_from_slice(&count.to_le_bytes());
            &[]
        }
        Message::RoundEnd {
            round,
            pages,
            zero_pages,
            bytes,
        } => {
            head.extend_from_slice(&round.to_le_bytes());
            head.extend_from_slice(&pages.to_le_bytes());
            head.extend_from_slice(&zero_pages.to_le_bytes());
            head.extend_from_slice(&bytes.to_le_bytes());
            &[]
        }
        Message::State { state } => state,
        Message::Complete { pages, rounds } => {
            head.extend_from_slice(&pages.to_le_bytes());
            head.extend_from_slice(&rounds.to_le_bytes());
            &[]
        }
        Message::Handshake { message } => message,
        Message::Sealed { round, records } => {
            head.extend_from_slice(&round.to_le_bytes());
            records
        }
        Message::Control { record } => record,
        Message::Sync { round } | Message::Synced { round } => {
            head.extend_from_slice(&round.to_le_bytes());
            &[]
        }
    }
}

/// Reads a payload of `len` bytes (already checked against the kind's
/// cap), counting for truncation reports.
struct Payload<'r, R> {
    r: &'r mut R,
    kind: MessageKind,
    len: usize,
    done: usize,
}

impl<R: Read> Payload<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> Result<(), ProtocolError> {
        let got = read_full(self.r, buf)?;
        self.done += got;
        if got < buf.len() {
            return Err(ProtocolError::Truncated {
                what: format!("{} payload", self.kind),
                got: self.done,
                want: self.len,
            });
        }
        Ok(())
    }

    /// Reads `n` bytes, growing the buffer as they arrive so a header
    /// announcing a large payload cannot make us allocate it up front.
    fn vec(&mut self, n: usize) -> Result<Vec<u8>, ProtocolError> {
        const STEP: usize = 1 << 20;
        let mut v = Vec::with_capacity(n.min(STEP));
        while v.len() < n {
            let start = v.len();
            v.resize(start + (n - start).min(STEP), 0);
            self.read(&mut v[start..])?;
        }
        Ok(v)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut b = [0u8; N];
        self.read(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.array().map(u64::from_le_bytes)
    }

    fn exact(&self, want: usize) -> Result<(), ProtocolError> {
        if self.len != want {
            return Err(ProtocolError::malformed(
                self.kind,
                format!("{} bytes, expected {want}", self.len),
            ));
        }
        Ok(())
    }

    /// The whole payload, opaque agent data: never empty.
    fn opaque(&mut self) -> Result<Vec<u8>, ProtocolError> {
        if self.len == 0 {
            return Err(ProtocolError::malformed(self.kind, "empty"));
        }
        self.vec(self.len)
    }

    fn text(&mut self) -> Result<String, ProtocolError> {
        let bytes = self.vec(self.len)?;
        String::from_utf8(bytes).map_err(|_| ProtocolError::malformed(self.kind, "reason is not UTF-8"))
    }
}

/// Decodes a `kind` payload of `len` bytes from `r`, strictly.
pub(super) fn decode_payload<R: Read>(r: &mut R, kind: MessageKind, len: usize) -> Result<Message, ProtocolError> {
    let mut p = Payload { r, kind, len, done: 0 };
    Ok(match kind {
        MessageKind::Invalid => return Err(ProtocolError::UnknownKind(0)),
        MessageKind::HelloAck => Message::HelloAck,
        MessageKind::Commit => Message::Commit,
        MessageKind::Hello => {
            if len < 2 {
                return Err(ProtocolError::malformed(
                    kind,
                    format!("{len} bytes, at least 2 expected"),
                ));
            }
            let version = u16::from_le_bytes(p.array()?);
            Message::Hello {
                version,
                config: p.vec(len - 2)?,
            }
        }
        MessageKind::Refuse => Message::Refuse { reason: p.text()? },
        MessageKind::Abort => Message::Abort { reason: p.text()? },
        MessageKind::Pages => decode_pages(&mut p)?,
        MessageKind::ZeroPages => {
            p.exact(20)?;
            let (round, gpa, count) = (p.u32()?, p.u64()?, p.u64()?);
            if count == 0 {
                return Err(ProtocolError::malformed(kind, "a run of zero pages"));
            }
            if count
                .checked_mul(PAGE_BYTES as u64)
                .and_then(|b| gpa.checked_add(b))
                .is_none()
            {
                return Err(ProtocolError::malformed(
                    kind,
                    format!("{count} pages from {gpa:#x} overflow"),
                ));
            }
            Message::ZeroPages { round, gpa, count }
        }
        MessageKind::RoundEnd => {
            p.exact(28)?;
            Message::RoundEnd {
                round: p.u32()?,
                pages: p.u64()?,
                zero_pages: p.u64()?,
                bytes: p.u64()?,
            }
        }
        MessageKind::State => Message::State { state: p.vec(len)? },
        MessageKind::Complete => {
            p.exact(12)?;
            Message::Complete {
                pages: p.u64()?,
                rounds: p.u32()?,
            }
        }
        MessageKind::Handshake => Message::Handshake { message: p.opaque()? },
        MessageKind::Sealed => {
            if len < 5 {
                return Err(ProtocolError::malformed(
                    kind,
                    format!("{len} bytes, at least 5 expected (round and records)"),
                ));
            }
            let round = p.u32()?;
            Message::Sealed {
                round,
                records: p.vec(len - 4)?,
            }
        }
        MessageKind::Control => Message::Control { record: p.opaque()? },
        MessageKind::Sync => {
            p.exact(4)?;
            Message::Sync { round: p.u32()? }
        }
        MessageKind::Synced => {
            p.exact(4)?;
            Message::Synced { round: p.u32()? }
        }
    })
}

fn decode_pages<R: Read>(p: &mut Payload<'_, R>) -> Result<Message, ProtocolError> {
    let kind = MessageKind::Pages;
    if p.len < 8 {
        return Err(ProtocolError::malformed(
            kind,
            format!("{} bytes, at least 8 expected", p.len),
        ));
    }
    let round = p.u32()?;
    let n = p.u32()? as usize;
    if n == 0 || n > MAX_PAGES_PER_FRAME {
        return Err(ProtocolError::malformed(
            kind,
            format!("{n} pages (1 to {MAX_PAGES_PER_FRAME})"),
        ));
    }
    let want = 8 + n * (8 + PAGE_BYTES);
    if p.len != want {
        return Err(ProtocolError::malformed(
            kind,
            format!("{} bytes for {n} pages, expected {want}", p.len),
        ));
    }
    let raw = p.vec(n * 8)?;
    let gpas = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let mut data = vec![0u8; n * PAGE_BYTES];
    p.read(&mut data)?;
    Ok(Message::Pages { round, gpas, data })
}
