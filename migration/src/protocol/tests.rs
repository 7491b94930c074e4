use super::*;
use std::io::Cursor;

fn samples() -> Vec<Message> {
    let mut data = vec![0u8; 2 * PAGE_BYTES];
    data[5] = 7;
    data[PAGE_BYTES + 9] = 3;
    vec![
        Message::Hello {
            version: PROTOCOL_VERSION,
            config: br#"{"cpus":2}"#.to_vec(),
        },
        Message::HelloAck,
        Message::Refuse {
            reason: "no room for 64 GiB".into(),
        },
        Message::Pages {
            round: 3,
            gpas: vec![0x1000, 0x9000],
            data,
        },
        Message::ZeroPages {
            round: 3,
            gpa: 0x20000,
            count: 17,
        },
        Message::RoundEnd {
            round: 3,
            pages: 19,
            zero_pages: 17,
            bytes: 12345,
        },
        Message::State {
            state: vec![1, 2, 3, 4],
        },
        Message::State { state: vec![] },
        Message::Complete {
            pages: 1 << 40,
            rounds: 9,
        },
        Message::Commit,
        Message::Abort {
            reason: "süßer Grund".into(),
        },
    ]
}

fn encode_all(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        write_frame(&mut out, i as u64, m).unwrap();
    }
    out
}

fn frame(kind: u16, sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&sequence.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
    read_frame(&mut Cursor::new(bytes), 0).map(|(m, _)| m)
}

#[test]
fn every_message_round_trips() {
    let messages = samples();
    let bytes = encode_all(&messages);
    let mut r = Cursor::new(&bytes);
    for (i, m) in messages.iter().enumerate() {
        let (back, len) = read_frame(&mut r, i as u64).unwrap();
        assert_eq!(&back, m);
        assert_eq!(len, m.payload_len());
    }
    assert!(matches!(
        read_frame(&mut r, messages.len() as u64),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn header_layout_is_fixed() {
    let bytes = encode_all(&[Message::Complete { pages: 2, rounds: 1 }]);
    assert_eq!(&bytes[0..4], b"CVMG");
    assert_eq!(&bytes[4..6], &[1, 0]);
    assert_eq!(&bytes[6..8], &[8, 0]);
    assert_eq!(&bytes[12..16], &[12, 0, 0, 0]);
    assert_eq!(bytes.len(), HEADER_LEN + 12);
}

#[test]
fn garbage_is_bad_magic() {
    let e = decode(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
    assert!(
        matches!(e, ProtocolError::BadMagic { found } if &found == b"GET "),
        "{e}"
    );
}

#[test]
fn wrong_version_is_named() {
    let mut b = frame(2, 0, &[]);
    b[4] = 9;
    let e = decode(&b).unwrap_err();
    assert!(
        matches!(e, ProtocolError::WrongVersion { found: 9, expected: 1 }),
        "{e}"
    );
    assert!(e.to_string().contains("version 9"));
}

#[test]
fn unknown_and_invalid_kinds_are_refused() {
    assert!(matches!(decode(&frame(0, 0, &[])), Err(ProtocolError::UnknownKind(0))));
    assert!(matches!(
        decode(&frame(77, 0, &[])),
        Err(ProtocolError::UnknownKind(77))
    ));
}

#[test]
fn flags_must_be_zero() {
    let mut b = frame(2, 0, &[]);
    b[8] = 1;
    assert!(matches!(decode(&b), Err(ProtocolError::UnknownFlags { flags: 1, .. })));
}

#[test]
fn oversized_length_is_refused_before_reading() {
    // A header announcing 4 GiB of Hello with no payload behind it: refused
    // from the header alone.
    let mut b = frame(1, 0, &[]);
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = decode(&b).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::TooLong {
                kind: MessageKind::Hello,
                ..
            }
        ),
        "{e}"
    );
    // HelloAck carries nothing at all.
    assert!(matches!(decode(&frame(2, 0, &[0])), Err(ProtocolError::TooLong { .. })));
}

#[test]
fn out_of_order_sequence_is_refused() {
    let b = frame(2, 1, &[]);
    let e = decode(&b).unwrap_err();
    assert!(matches!(e, ProtocolError::OutOfOrder { expected: 0, found: 1 }), "{e}");
    // A replayed frame (same sequence twice).
    let mut two = frame(2, 0, &[]);
    two.extend(frame(2, 0, &[]));
    let mut r = Cursor::new(&two);
    read_frame(&mut r, 0).unwrap();
    assert!(matches!(
        read_frame(&mut r, 1),
        Err(ProtocolError::OutOfOrder { expected: 1, found: 0 })
    ));
}

#[test]
fn truncated_header_and_payload_are_reported() {
    let e = decode(&frame(2, 0, &[])[..10]).unwrap_err();
    assert!(matches!(e, ProtocolError::Truncated { got: 10, want: 24, .. }), "{e}");
    let full = encode_all(&[Message::Pages {
        round: 0,
        gpas: vec![0],
        data: vec![1; PAGE_BYTES],
    }]);
    let e = decode(&full[..full.len() - 100]).unwrap_err();
    assert!(matches!(e, ProtocolError::Truncated { got, want, .. } if want == 8 + 8 + PAGE_BYTES && got == want - 100));
    assert!(e.to_string().contains("Pages payload"), "{e}");
}

#[test]
fn malformed_payloads_are_named() {
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (1, vec![1]),                                           // Hello without its version
        (3, vec![0xff, 0xfe]),                                  // Refuse not UTF-8
        (4, vec![0; 8]),                                        // Pages with zero pages
        (4, [0u32.to_le_bytes(), 2u32.to_le_bytes()].concat()), // 2 pages announced, none present
        (5, vec![0; 19]),                                       // ZeroPages short
        (5, vec![0; 20]),                                       // ZeroPages count 0
        (6, vec![0; 27]),                                       // RoundEnd short
        (8, vec![0; 11]),                                       // Complete short
    ];
    for (kind, payload) in cases {
        let e = decode(&frame(kind, 0, &payload)).unwrap_err();
        assert!(matches!(e, ProtocolError::Malformed { .. }), "kind {kind}: {e}");
    }
}

#[test]
fn unsendable_messages_are_refused_locally() {
    let mut out = Vec::new();
    let m = Message::Pages {
        round: 0,
        gpas: vec![0, 4096],
        data: vec![0; PAGE_BYTES],
    };
    assert!(matches!(
        write_frame(&mut out, 0, &m),
        Err(ProtocolError::Unsendable { .. })
    ));
    let m = Message::Pages {
        round: 0,
        gpas: vec![],
        data: vec![],
    };
    assert!(matches!(
        write_frame(&mut out, 0, &m),
        Err(ProtocolError::Unsendable { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn long_reasons_are_cut_on_a_char_boundary() {
    let long = "é".repeat(MAX_REASON_BYTES);
    let cut = fit_reason(&long);
    assert!(cut.len() <= MAX_REASON_BYTES);
    assert!(cut.chars().all(|c| c == 'é'));
}

#[test]
fn wire_counts_sequences_both_ways() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut a = Wire::new(a);
    let mut b = Wire::new(b);
    for m in samples() {
        a.send(&m).unwrap();
    }
    a.flush().unwrap();
    for m in samples() {
        assert_eq!(b.receive().unwrap(), m);
    }
    b.send_now(&Message::Commit).unwrap();
    assert_eq!(a.receive().unwrap(), Message::Commit);
    assert_eq!(a.bytes_sent(), b.bytes_received());
}
