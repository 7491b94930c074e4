//! The one-way switch: commit and abort tokens.

use super::support::*;
use crate::record::{ABORT_RECORD_LEN, COMMIT_RECORD_LEN};
use crate::{Error, ImportChecker, ImportPhase, SourceSession, SourceState};

/// A session whose source sealed everything (Final included) and whose
/// destination checked it all: the moment of truth.
fn at_final(seed: u64) -> (SourceSession, crate::DestinationSession, Vec<Vec<u8>>) {
    let (mut src, dst) = sessions(seed);
    let records = small_stream(&mut src);
    assert_eq!(src.state(), SourceState::FinalSealed);
    assert!(!src.may_resume());
    (src, dst, records)
}

#[test]
fn a_valid_abort_token_lets_the_source_resume() {
    let (mut src, dst, records) = at_final(60);
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    feed(&mut checker, &records).unwrap();
    let mut token = abort_token(&mut checker, 42);
    assert_eq!(checker.phase(), ImportPhase::Aborted);
    // Minting again gives the same token (a lost one can be re-sent).
    let mut again = [0u8; ABORT_RECORD_LEN];
    checker.mint_abort(1, &mut again).unwrap();
    assert_eq!(again, token);
    // Having aborted, the destination can never commit.
    let mut commit = [0u8; COMMIT_RECORD_LEN];
    assert_eq!(checker.commit(None, &mut commit), Err(Error::Aborted));

    assert_eq!(src.read_abort(&mut token), Ok(42));
    assert_eq!(src.state(), SourceState::Aborted);
    assert!(src.may_resume());
    // An aborted source seals nothing more.
    assert!(matches!(
        src.seal_page(0, &page(0, 0), &mut [0; 4144]),
        Err(Error::State { .. })
    ));
}

#[test]
fn forged_or_foreign_tokens_do_not() {
    let (mut src, dst, _) = at_final(61);
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    let token = abort_token(&mut checker, 1);

    // Any flipped bit.
    for at in [0, 8, 20, 24, 33, 40, ABORT_RECORD_LEN - 1] {
        let mut forged = token;
        forged[at] ^= 0x04;
        assert!(src.read_abort(&mut forged).is_err(), "flip at {at}");
        assert!(!src.may_resume());
    }
    // Made up from scratch: a plausible header, random body.
    let mut made_up = token;
    made_up[32..].fill(0x5A);
    assert_eq!(src.read_abort(&mut made_up), Err(Error::RecordAuthentication));

    // A valid token of another session.
    let (_, other_dst, _) = at_final(62);
    let mut other_table = vec![0u32; 16];
    let mut other = ImportChecker::new(other_dst, &mut other_table);
    let mut foreign = abort_token(&mut other, 1);
    assert_eq!(src.read_abort(&mut foreign), Err(Error::RecordAuthentication));

    assert!(!src.may_resume());
    assert_eq!(src.state(), SourceState::FinalSealed);
}

#[test]
fn no_abort_after_commit() {
    let (mut src, dst, records) = at_final(63);
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    let mut commit = feed_and_commit(&mut checker, &records);

    // The destination cannot mint a token any more: the key is gone.
    let mut token = [0u8; ABORT_RECORD_LEN];
    assert_eq!(checker.mint_abort(1, &mut token), Err(Error::AlreadyCommitted));
    assert_eq!(token, [0; ABORT_RECORD_LEN]);
    assert_eq!(checker.phase(), ImportPhase::Committed);

    // Feeding the Commit as an abort token fails (other stream, other key).
    let mut as_token = commit;
    assert!(src.read_abort(&mut as_token[..]).is_err());

    src.read_commit(&mut commit).unwrap();
    assert_eq!(src.state(), SourceState::Committed);
    assert!(!src.may_resume());
}

#[test]
fn after_a_valid_commit_never_resume() {
    let (mut src, dst, records) = at_final(64);
    // A token minted by an earlier, aborted attempt of another session.
    let (_, old_dst, old_records) = at_final(65);
    let mut old_table = vec![0u32; 16];
    let mut old = ImportChecker::new(old_dst, &mut old_table);
    feed(&mut old, &old_records).unwrap();
    let old_token = abort_token(&mut old, 3);

    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    let mut commit = feed_and_commit(&mut checker, &records);
    src.read_commit(&mut commit).unwrap();

    // Whatever arrives afterwards, the source stays committed.
    for _ in 0..3 {
        let mut t = old_token;
        assert_eq!(src.read_abort(&mut t), Err(Error::AlreadyCommitted));
        let mut c = commit;
        assert!(src.read_commit(&mut c).is_err());
        assert!(src.seal_round_end(&mut [0; 56]).is_err());
        assert_eq!(src.state(), SourceState::Committed);
        assert!(!src.may_resume());
    }
}

#[test]
fn commit_is_checked_by_the_source() {
    // A Commit before the source sealed Final is refused (and the source
    // may still resume: no Final, no commit possible).
    let (mut src, _dst, _) = at_final(66);
    let (mut early, _) = sessions(67);
    assert!(early.may_resume());
    let mut fake = [0u8; COMMIT_RECORD_LEN];
    assert!(matches!(early.read_commit(&mut fake), Err(Error::State { .. })));
    assert!(early.may_resume());

    // A Commit of another session.
    let (mut other_src, other_dst, other_records) = at_final(68);
    let mut table = vec![0u32; 16];
    let mut other = ImportChecker::new(other_dst, &mut table);
    let mut other_commit = feed_and_commit(&mut other, &other_records);
    assert_eq!(
        src.read_commit(&mut other_commit.clone()),
        Err(Error::RecordAuthentication)
    );
    assert_eq!(src.state(), SourceState::FinalSealed);
    other_src.read_commit(&mut other_commit).unwrap();
}

#[test]
fn resume_rules_before_final() {
    let (mut src, _dst) = sessions(69);
    assert_eq!(src.state(), SourceState::Streaming);
    assert!(src.may_resume(), "no Final sealed: the destination cannot commit");
    seal_page(&mut src, 0, &page(0, 0));
    seal_round_end(&mut src);
    seal_vcpu(&mut src, 0, b"x");
    assert_eq!(src.state(), SourceState::SealingState);
    assert!(src.may_resume());
    // From the moment a Final is sealed, resuming needs an abort token.
    let mut fin = [0u8; crate::record::FINAL_RECORD_LEN];
    src.seal_final(None, &mut fin).unwrap();
    assert!(!src.may_resume());
}

#[test]
fn abort_after_a_failed_check() {
    let (_src, dst, mut records) = at_final(70);
    records[3][40] ^= 1;
    let mut table = vec![0u32; 16];
    let mut checker = ImportChecker::new(dst, &mut table);
    assert!(feed(&mut checker, &records).is_err());
    assert_eq!(checker.phase(), ImportPhase::Poisoned);
    abort_token(&mut checker, 9);
    assert_eq!(checker.phase(), ImportPhase::Aborted);
}
