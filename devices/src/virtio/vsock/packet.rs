//! The virtio-vsock packet header (virtio 1.2 §5.10.6), little-endian on
//! the wire, and the operations covm's device understands.

/// The header's size.
pub const HEADER_LEN: usize = 44;
/// The host's context id: the only destination a guest may address.
pub const HOST_CID: u64 = 2;
/// `type`: a stream socket (the only type offered).
pub const TYPE_STREAM: u16 = 1;

/// `op` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection reset (or refused).
    Rst,
    /// The sender will not receive and/or send any more (`flags`).
    Shutdown,
    /// Data.
    Rw,
    /// The sender's `buf_alloc` and `fwd_cnt` changed.
    CreditUpdate,
    /// The sender asks for a credit update.
    CreditRequest,
}

impl Op {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }

    /// The operation of wire value `code`, if it is one.
    pub fn from_code(code: u16) -> Option<Op> {
        Some(match code {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// `flags` of a shutdown: the sender will receive nothing more.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of a shutdown: the sender will send nothing more.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length (data of an RW packet).
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation (wire value; [`Op::from_code`]).
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// The sender's receive buffer for this connection, in bytes.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from this connection so far.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the first [`HEADER_LEN`] bytes of `b`.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_at_the_spec_offsets() {
        let h = Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: 0x1122_3344,
            dst_port: 1234,
            len: 5,
            kind: TYPE_STREAM,
            op: Op::Rw.code(),
            flags: SHUTDOWN_SEND,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let b = h.encode();
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(b[30], 5, "op at offset 30");
        assert_eq!(Header::decode(&b), h);
        for code in 0..10 {
            assert_eq!(Op::from_code(code).map(Op::code).unwrap_or(code), code);
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(8), None);
    }
}
