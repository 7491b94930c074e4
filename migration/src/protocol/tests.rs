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
    frame_v(PROTOCOL_VERSION, kind, sequence, payload)
}

fn frame_v(version: u16, kind: u16, sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
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

/// Two wires over the ends of one socket pair.
fn wire_pair() -> (
    Wire<std::os::unix::net::UnixStream>,
    Wire<std::os::unix::net::UnixStream>,
) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (Wire::new(a), Wire::new(b))
}

#[test]
fn wire_counts_sequences_both_ways() {
    let (mut a, mut b) = wire_pair();
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

/// Version 2's messages: every version-1 kind but Commit, and the three
/// confidential ones.
fn samples_v2() -> Vec<Message> {
    let mut v: Vec<Message> = samples()
        .into_iter()
        .filter(|m| m.kind() != MessageKind::Commit)
        .map(|m| match m {
            Message::Hello { config, .. } => Message::Hello {
                version: PROTOCOL_VERSION_CONFIDENTIAL,
                config,
            },
            m => m,
        })
        .collect();
    v.extend([
        Message::Handshake {
            message: vec![1, 2, 3, 4],
        },
        Message::Handshake {
            message: vec![0x5a; MAX_HANDSHAKE_BYTES],
        },
        Message::Sealed {
            round: 7,
            records: (0..=255).collect(),
        },
        Message::Sealed {
            round: u32::MAX,
            records: vec![9; MAX_SEALED_BYTES],
        },
        Message::Control { record: vec![6; 104] },
        Message::Control {
            record: vec![7; MAX_CONTROL_BYTES],
        },
        Message::Sync { round: 3 },
        Message::Synced { round: u32::MAX },
    ]);
    v
}

fn decode_in(version: Option<u16>, bytes: &[u8]) -> Result<Message, ProtocolError> {
    read_frame_in(&mut Cursor::new(bytes), version, 0).map(|(_, m)| m)
}

#[test]
fn version_2_messages_round_trip() {
    let messages = samples_v2();
    let mut bytes = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        write_frame_in(&mut bytes, PROTOCOL_VERSION_CONFIDENTIAL, i as u64, m).unwrap();
    }
    let mut r = Cursor::new(&bytes);
    for (i, m) in messages.iter().enumerate() {
        // The first frame read with the version unknown, then in version 2.
        let version = (i > 0).then_some(PROTOCOL_VERSION_CONFIDENTIAL);
        let (header, back) = read_frame_in(&mut r, version, i as u64).unwrap();
        assert_eq!(&back, m);
        assert_eq!(header.version, PROTOCOL_VERSION_CONFIDENTIAL);
        assert_eq!(header.len as usize, m.payload_len());
    }
    // The payload layouts: Sealed is round u32 then the records as is.
    let mut one = Vec::new();
    let sealed = Message::Sealed {
        round: 0x0102_0304,
        records: vec![0xee, 0xff],
    };
    write_frame_in(&mut one, 2, 0, &sealed).unwrap();
    assert_eq!(&one[4..6], &[2, 0], "version 2 in the header");
    assert_eq!(&one[6..8], &[12, 0]);
    assert_eq!(&one[12..16], &[6, 0, 0, 0]);
    assert_eq!(&one[HEADER_LEN..], &[4, 3, 2, 1, 0xee, 0xff]);
}

#[test]
fn version_2_caps_are_checked_before_reading() {
    for (kind, cap) in [
        (MessageKind::Handshake, MAX_HANDSHAKE_BYTES),
        (MessageKind::Sealed, 4 + MAX_SEALED_BYTES),
        (MessageKind::Control, MAX_CONTROL_BYTES),
        (MessageKind::Sync, 4),
        (MessageKind::Synced, 4),
    ] {
        assert_eq!(kind.cap(), cap);
        // A header announcing one byte over the cap, no payload behind it.
        let mut b = frame_v(2, kind as u16, 0, &[]);
        b[12..16].copy_from_slice(&(cap as u32 + 1).to_le_bytes());
        let e = decode_in(Some(2), &b).unwrap_err();
        assert!(matches!(e, ProtocolError::TooLong { kind: k, .. } if k == kind), "{e}");
    }
    // The sender refuses the same, and empty opaque payloads.
    let refused = [
        Message::Handshake {
            message: vec![0; MAX_HANDSHAKE_BYTES + 1],
        },
        Message::Handshake { message: vec![] },
        Message::Sealed {
            round: 0,
            records: vec![0; MAX_SEALED_BYTES + 1],
        },
        Message::Sealed {
            round: 0,
            records: vec![],
        },
        Message::Control {
            record: vec![0; MAX_CONTROL_BYTES + 1],
        },
        Message::Control { record: vec![] },
    ];
    for m in refused {
        let mut out = Vec::new();
        let e = write_frame_in(&mut out, 2, 0, &m).unwrap_err();
        assert!(matches!(e, ProtocolError::Unsendable { .. }), "{e}");
        assert!(out.is_empty());
    }
}

#[test]
fn version_2_payloads_are_decoded_strictly() {
    for (kind, payload) in [(11u16, vec![]), (12, vec![0; 4]), (13, vec![])] {
        let e = decode_in(Some(2), &frame_v(2, kind, 0, &payload)).unwrap_err();
        assert!(matches!(e, ProtocolError::Malformed { .. }), "kind {kind}: {e}");
    }
    // Cut inside the records.
    let mut b = Vec::new();
    write_frame_in(
        &mut b,
        2,
        0,
        &Message::Sealed {
            round: 1,
            records: vec![1; 100],
        },
    )
    .unwrap();
    let e = decode_in(Some(2), &b[..b.len() - 1]).unwrap_err();
    assert!(matches!(e, ProtocolError::Truncated { .. }), "{e}");
}

#[test]
fn kinds_belong_to_their_version() {
    // The confidential kinds in a version-1 connection.
    for kind in [11u16, 12, 13, 14, 15] {
        let e = decode(&frame(kind, 0, &[1, 2, 3, 4])).unwrap_err();
        assert!(matches!(e, ProtocolError::NotInVersion { version: 1, .. }), "{e}");
        assert!(
            e.to_string().contains("not part of migration protocol version 1"),
            "{e}"
        );
    }
    // The plain Commit in a version-2 connection.
    let e = decode_in(Some(2), &frame_v(2, 9, 0, &[])).unwrap_err();
    assert!(
        matches!(
            e,
            ProtocolError::NotInVersion {
                kind: MessageKind::Commit,
                version: 2
            }
        ),
        "{e}"
    );
    // Also when the version is learnt from that very frame.
    let e = decode_in(None, &frame_v(2, 9, 0, &[])).unwrap_err();
    assert!(matches!(e, ProtocolError::NotInVersion { .. }), "{e}");
    // Kinds 16 and up exist in no version.
    let e = decode_in(Some(2), &frame_v(2, 16, 0, &[])).unwrap_err();
    assert!(matches!(e, ProtocolError::UnknownKind(16)), "{e}");
    // And nobody sends them.
    let mut out = Vec::new();
    let sealed = Message::Sealed {
        round: 0,
        records: vec![1],
    };
    assert!(matches!(
        write_frame(&mut out, 0, &sealed),
        Err(ProtocolError::Unsendable { .. })
    ));
    assert!(matches!(
        write_frame_in(&mut out, 2, 0, &Message::Commit),
        Err(ProtocolError::Unsendable { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn frames_carry_the_connections_version() {
    // A version-2 frame on a version-1 connection and the other way round.
    let e = decode(&frame_v(2, 2, 0, &[])).unwrap_err();
    assert!(
        matches!(e, ProtocolError::WrongVersion { found: 2, expected: 1 }),
        "{e}"
    );
    let e = decode_in(Some(2), &frame(2, 0, &[])).unwrap_err();
    assert!(
        matches!(e, ProtocolError::WrongVersion { found: 1, expected: 2 }),
        "{e}"
    );
    // Before the version is known: 1 and 2 are accepted, 3 is not.
    assert_eq!(decode_in(None, &frame(2, 0, &[])).unwrap(), Message::HelloAck);
    assert_eq!(decode_in(None, &frame_v(2, 2, 0, &[])).unwrap(), Message::HelloAck);
    let e = decode_in(None, &frame_v(3, 2, 0, &[])).unwrap_err();
    assert!(matches!(e, ProtocolError::UnknownVersion { found: 3 }), "{e}");
    assert!(e.to_string().contains("speaks versions 1 to 2"), "{e}");
}

#[test]
fn wire_learns_or_is_told_its_version() {
    // Told by the Hello it sends; the peer learns it from the first frame.
    let (mut a, mut b) = wire_pair();
    assert_eq!(a.version(), None);
    a.send_now(&Message::Hello {
        version: 2,
        config: vec![],
    })
    .unwrap();
    assert_eq!(a.version(), Some(2));
    assert!(matches!(b.receive().unwrap(), Message::Hello { version: 2, .. }));
    assert_eq!(b.version(), Some(2));
    b.send_now(&Message::Handshake { message: vec![1] }).unwrap();
    assert_eq!(a.receive().unwrap(), Message::Handshake { message: vec![1] });
    // Version 2 from then on, both ways: no plain Commit.
    assert!(matches!(
        b.send_now(&Message::Commit),
        Err(ProtocolError::Unsendable { .. })
    ));

    // A Hello of a version nobody speaks goes out in a version-1 frame, so
    // the destination can read it and refuse it by name.
    let (mut a, mut b) = wire_pair();
    a.send_now(&Message::Hello {
        version: 7,
        config: vec![],
    })
    .unwrap();
    assert_eq!(a.version(), Some(1));
    assert!(matches!(b.receive().unwrap(), Message::Hello { version: 7, .. }));
    assert_eq!(b.version(), Some(1));
    // A version-1 wire refuses a version-2 frame from its peer.
    let (mut c, mut d) = wire_pair();
    c.send_now(&Message::HelloAck).unwrap(); // c: version 1
    d.send_now(&Message::Hello {
        version: 2,
        config: vec![],
    })
    .unwrap(); // d: version 2
    assert!(matches!(
        c.receive(),
        Err(ProtocolError::WrongVersion { found: 2, expected: 1 })
    ));
}
