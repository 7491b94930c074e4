use super::*;

/// `value`'s words are `expected` (the documented layout), and they read
/// back as `value`.
#[track_caller]
fn layout<T: Words + PartialEq + fmt::Debug>(value: T, expected: [u64; WORDS]) {
    assert_eq!(value.to_words(), expected, "{value:?}");
    assert_eq!(T::from_words(&expected), Ok(value));
}

/// `words` with word `index` set to `value`.
fn with(mut words: [u64; WORDS], index: usize, value: u64) -> [u64; WORDS] {
    words[index] = value;
    words
}

#[test]
fn every_command_has_its_types() {
    let codes: Vec<u32> = COMMANDS.iter().map(|&(code, _)| code).collect();
    assert_eq!(codes.len(), 12);
    for code in command::BEGIN..=command::COSTS {
        assert_eq!(codes.iter().filter(|&&c| c == code).count(), 1, "command {code}");
    }
    assert_eq!(<ExportPagesArgs as Args>::NAME, "EXPORT_PAGES");
    assert_eq!(<ImportArgs as Args>::COMMAND, <ImportReply as Reply>::COMMAND);
}

#[test]
fn arguments_round_trip_in_their_words() {
    layout(
        BeginArgs {
            role: Role::Source,
            lanes: 1,
        },
        [0, 1, 0, 0, 0, 0, 0, 0],
    );
    layout(
        BeginArgs {
            role: Role::Destination,
            lanes: 3,
        },
        [1, 3, 0, 0, 0, 0, 0, 0],
    );
    layout(HandshakeArgs { len: 1234 }, [1234, 0, 0, 0, 0, 0, 0, 0]);
    layout(
        ExportPagesArgs {
            round: 3,
            first: 0x20_0000,
            count: 512,
        },
        [3, 0x20_0000, 512, 0, 0, 0, 0, 0],
    );
    layout(EndRoundArgs, [0; WORDS]);
    layout(
        ExportFinalArgs {
            vcpus: 2,
            verified: true,
        },
        [2, 1, 0, 0, 0, 0, 0, 0],
    );
    layout(ReadControlArgs { len: 104 }, [104, 0, 0, 0, 0, 0, 0, 0]);
    layout(ImportArgs { len: 2 << 20 }, [2 << 20, 0, 0, 0, 0, 0, 0, 0]);
    layout(CommitArgs { verified: false }, [0; WORDS]);
    layout(CommitArgs { verified: true }, [1, 0, 0, 0, 0, 0, 0, 0]);
    layout(MintAbortArgs { reason: 7 }, [7, 0, 0, 0, 0, 0, 0, 0]);
    layout(StatusArgs, [0; WORDS]);
    layout(ExportListArgs { round: 1, entries: 9 }, [1, 9, 0, 0, 0, 0, 0, 0]);
    layout(CostsArgs, [0; WORDS]);
}

#[test]
fn replies_round_trip_in_their_words() {
    layout(BeginReply, [0; WORDS]);
    layout(HandshakeReply { complete: false }, [0; WORDS]);
    layout(HandshakeReply { complete: true }, [1, 0, 0, 0, 0, 0, 0, 0]);
    layout(
        ExportPagesReply {
            pages: 10,
            zero_pages: 4,
            walked_frames: 16,
        },
        [10, 4, 16, 0, 0, 0, 0, 0],
    );
    layout(EndRoundReply { pages: 99 }, [99, 0, 0, 0, 0, 0, 0, 0]);
    layout(ExportFinalReply, [0; WORDS]);
    layout(ReadControlReply::Committed, [1, 0, 0, 0, 0, 0, 0, 0]);
    layout(ReadControlReply::Aborted { reason: 3 }, [2, 3, 0, 0, 0, 0, 0, 0]);
    layout(ReadControlReply::Aborted { reason: 0 }, [2, 0, 0, 0, 0, 0, 0, 0]);
    layout(
        ImportReply {
            pages: 8,
            zero_pages: 5,
            complete: true,
            vcpu_states: 2,
            verified: true,
        },
        [8, 5, 1, 2, 1, 0, 0, 0],
    );
    layout(
        ImportReply {
            pages: 1,
            zero_pages: 0,
            complete: false,
            vcpu_states: 0,
            verified: false,
        },
        [1, 0, 0, 0, 0, 0, 0, 0],
    );
    layout(CommitReply, [0; WORDS]);
    layout(MintAbortReply, [0; WORDS]);
    layout(
        StatusReply {
            role: None,
            state: SessionState::Idle,
            may_resume: true,
            epoch: 0,
            records: 0,
            pages: 0,
        },
        [0, 0, 1, 0, 0, 0, 0, 0],
    );
    layout(
        StatusReply {
            role: Some(Role::Destination),
            state: SessionState::Complete,
            may_resume: false,
            epoch: 4,
            records: 77,
            pages: 1000,
        },
        [2, 4, 0, 4, 77, 1000, 0, 0],
    );
    layout(
        ExportListReply {
            pages: 4,
            zero_pages: 1,
            entries_done: 4,
            next_entry_frames: 0,
        },
        [4, 1, 4, 0, 0, 0, 0, 0],
    );
    layout(
        CostsReply {
            commands: 3,
            busy_ticks: 1000,
            copy_in_ticks: 100,
            crypto_ticks: 500,
            copy_out_ticks: 200,
            zero_ticks: 50,
        },
        [3, 1000, 100, 500, 200, 50, 0, 0],
    );
}

/// The stages happen inside the commands: more ticks in them than in the
/// commands is a malformed reply.
#[test]
fn costs_stages_fit_in_the_busy_time() {
    let words = [1, 100, 50, 50, 1, 0, 0, 0];
    let e = CostsReply::from_words(&words).unwrap_err();
    assert!(e.to_string().contains("exceeds busy_ticks 100"), "{e}");
}

#[test]
fn every_state_and_role_has_its_code() {
    for (state, code) in SessionState::CODES {
        let status = StatusReply {
            role: Some(Role::Source),
            state,
            may_resume: false,
            epoch: 1,
            records: 2,
            pages: 3,
        };
        layout(status, [1, code, 0, 1, 2, 3, 0, 0]);
    }
    assert_eq!(
        SessionState::CODES.map(|(_, code)| code),
        [0, 1, 2, 3, 4, 5, 6, 7],
        "the codes of `state`"
    );
}

#[test]
fn booleans_are_0_or_1() {
    let refused = WordsError::NotBool {
        field: "verified",
        value: 2,
    };
    assert_eq!(CommitArgs::from_words(&with([0; WORDS], 0, 2)), Err(refused));
    assert_eq!(ExportFinalArgs::from_words(&[2, 2, 0, 0, 0, 0, 0, 0]), Err(refused));
    assert_eq!(
        HandshakeReply::from_words(&with([0; WORDS], 0, u64::MAX)),
        Err(WordsError::NotBool {
            field: "complete",
            value: u64::MAX
        })
    );
    assert_eq!(
        ImportReply::from_words(&[1, 0, 3, 0, 0, 0, 0, 0]),
        Err(WordsError::NotBool {
            field: "complete",
            value: 3
        })
    );
    assert_eq!(
        StatusReply::from_words(&[1, 2, 5, 0, 0, 0, 0, 0]),
        Err(WordsError::NotBool {
            field: "may_resume",
            value: 5
        })
    );
}

#[test]
fn codes_must_be_known() {
    assert_eq!(
        BeginArgs::from_words(&with([0; WORDS], 0, 2)),
        Err(WordsError::Unknown {
            field: "role",
            value: 2,
            known: "0 source, 1 destination"
        })
    );
    assert_eq!(
        StatusReply::from_words(&[3, 0, 1, 0, 0, 0, 0, 0]),
        Err(WordsError::Unknown {
            field: "role",
            value: 3,
            known: "0 none, 1 source, 2 destination"
        })
    );
    assert_eq!(
        StatusReply::from_words(&[1, 8, 1, 0, 0, 0, 0, 0]),
        Err(WordsError::Unknown {
            field: "state",
            value: 8,
            known: "0 to 7"
        })
    );
    for outcome in [0, 3, u64::MAX] {
        assert_eq!(
            ReadControlReply::from_words(&with([0; WORDS], 0, outcome)),
            Err(WordsError::Unknown {
                field: "outcome",
                value: outcome,
                known: "1 committed, 2 aborted"
            })
        );
    }
}

#[test]
fn narrow_words_must_fit() {
    let big = u64::from(u32::MAX) + 1;
    assert_eq!(
        MintAbortArgs::from_words(&with([0; WORDS], 0, big)),
        Err(WordsError::NotU32 {
            field: "reason",
            value: big
        })
    );
    assert_eq!(
        ExportPagesArgs::from_words(&[big, 0, 1, 0, 0, 0, 0, 0]),
        Err(WordsError::NotU32 {
            field: "round",
            value: big
        })
    );
    assert_eq!(
        ReadControlReply::from_words(&[2, big, 0, 0, 0, 0, 0, 0]),
        Err(WordsError::NotU32 {
            field: "reason",
            value: big
        })
    );
    assert_eq!(
        StatusReply::from_words(&[1, 2, 1, big, 0, 0, 0, 0]),
        Err(WordsError::NotU32 {
            field: "epoch",
            value: big
        })
    );
}

#[test]
fn unused_words_must_be_0() {
    for index in 0..WORDS {
        let words = with([0; WORDS], index, 9);
        let refused = WordsError::Unused { index, value: 9 };
        assert_eq!(BeginReply::from_words(&words), Err(refused));
        assert_eq!(StatusArgs::from_words(&words), Err(refused));
        assert_eq!(CommitReply::from_words(&words), Err(refused));
        if index > 0 {
            assert_eq!(HandshakeReply::from_words(&words), Err(refused));
        }
        if index > 1 {
            assert_eq!(BeginArgs::from_words(&words), Err(refused));
        }
        if index > 5 {
            assert!(matches!(
                StatusReply::from_words(&with([1, 2, 1, 0, 0, 0, 0, 0], index, 9)),
                Err(WordsError::Unused { index: i, value: 9 }) if i == index
            ));
        }
    }
    // A Commit carries no reason.
    assert_eq!(
        ReadControlReply::from_words(&[1, 3, 0, 0, 0, 0, 0, 0]),
        Err(WordsError::Unused { index: 1, value: 3 })
    );
    assert_eq!(
        ReadControlReply::from_words(&[2, 3, 4, 0, 0, 0, 0, 0]),
        Err(WordsError::Unused { index: 2, value: 4 })
    );
}

#[test]
fn counts_must_agree() {
    assert_eq!(
        ExportPagesReply::from_words(&[3, 4, 8, 0, 0, 0, 0, 0]),
        Err(WordsError::Exceeds {
            field: "zero_pages",
            value: 4,
            whole: "pages",
            limit: 3
        })
    );
    assert_eq!(
        ExportPagesReply::from_words(&[9, 4, 8, 0, 0, 0, 0, 0]),
        Err(WordsError::Exceeds {
            field: "pages",
            value: 9,
            whole: "walked_frames",
            limit: 8
        })
    );
    assert_eq!(
        ExportListReply::from_words(&[0, 1, 0, 0, 0, 0, 0, 0]),
        Err(WordsError::Exceeds {
            field: "zero_pages",
            value: 1,
            whole: "pages",
            limit: 0
        })
    );
    assert_eq!(
        ImportReply::from_words(&[2, 3, 0, 0, 0, 0, 0, 0]),
        Err(WordsError::Exceeds {
            field: "zero_pages",
            value: 3,
            whole: "pages",
            limit: 2
        })
    );
    assert_eq!(
        ImportReply::from_words(&[0, 0, 0, 0, 1, 0, 0, 0]),
        Err(WordsError::Without {
            field: "verified",
            requires: "complete"
        })
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let texts = [
        (
            WordsError::Unknown {
                field: "role",
                value: 2,
                known: "0 source, 1 destination",
            },
            "role 2 (0 source, 1 destination)",
        ),
        (
            WordsError::NotBool {
                field: "verified",
                value: 2,
            },
            "verified is 0 or 1, not 2",
        ),
        (
            WordsError::NotU32 {
                field: "reason",
                value: 1 << 32,
            },
            "reason 4294967296 is not a u32",
        ),
        (
            WordsError::Unused { index: 6, value: 255 },
            "word 6 is unused and must be 0, not 0xff",
        ),
        (
            WordsError::Exceeds {
                field: "zero_pages",
                value: 4,
                whole: "pages",
                limit: 3,
            },
            "zero_pages 4 exceeds pages 3",
        ),
        (
            WordsError::Without {
                field: "verified",
                requires: "complete",
            },
            "verified is set without complete",
        ),
    ];
    for (error, text) in texts {
        assert_eq!(error.to_string(), text);
    }
}
