//! The engine end to end against the fake VM, over real sockets.

mod fake;

use covm_migration::engine::{
    self, MigrationError, MigrationReport, Phase, Progress, ReceiveOptions, ReceiveReport, SendOptions, ThrottlePolicy,
    TimeoutStrategy,
};
use covm_migration::protocol::{read_frame, write_frame, Message, ProtocolError, Wire, PAGE_BYTES};
use covm_migration::transport::{self, Listener, Stream};
use fake::{assert_same_memory, factory, options, pair, FakeSource, Guest, Received};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

type Outcome = (Result<ReceiveReport, MigrationError>, Arc<Mutex<Received>>);

fn receiver(stream: Box<dyn Stream>) -> JoinHandle<Outcome> {
    thread::spawn(move || {
        let received = Arc::new(Mutex::new(Received::default()));
        let options = ReceiveOptions {
            io_timeout: Duration::from_secs(5),
        };
        let result = engine::receive(stream, factory(received.clone()), &options, &Progress::new());
        (result.map(|incoming| incoming.report), received)
    })
}

/// A scripted peer: `script` drives a raw [`Wire`].
fn peer(stream: Box<dyn Stream>, script: impl FnOnce(&mut Wire<Box<dyn Stream>>) + Send + 'static) -> JoinHandle<()> {
    thread::spawn(move || script(&mut Wire::new(stream)))
}

/// Sends a guest dirtying `rate` pages per page sent to a destination
/// played by `script`; the source's error (once the script ended) and the
/// source.
fn fail_against(
    rate: f64,
    script: impl FnOnce(&mut Wire<Box<dyn Stream>>) + Send + 'static,
) -> (MigrationError, FakeSource) {
    let (a, b) = pair();
    let dst = peer(b, script);
    let mut vm = FakeSource::new(rate);
    let e = engine::send(a, &mut vm, &fake::config(), &options(0), &Progress::new()).unwrap_err();
    dst.join().unwrap();
    (e, vm)
}

/// The guest is back in the source's hands: running, unthrottled, untracked.
fn assert_handed_back(g: &Guest) {
    assert!(!g.paused, "the guest must run again");
    assert_eq!(g.throttle, 0);
    assert_eq!(g.throttle_calls.last(), Some(&0), "throttle reset to 0");
    assert!(!g.tracking, "dirty tracking stopped");
}

/// The destination committed: the source stays paused, never resumed.
fn assert_released(g: &Guest) {
    assert!(g.paused);
    assert_eq!((g.pauses, g.resumes), (1, 0), "the source never resumes after Commit");
}

fn migrate(vm: &mut FakeSource, options: &SendOptions) -> (MigrationReport, ReceiveReport, Arc<Mutex<Received>>) {
    let (a, b) = pair();
    let destination = receiver(b);
    let progress = Progress::new();
    let report = engine::send(a, vm, &fake::config(), options, &progress).expect("the source succeeds");
    assert_eq!(progress.snapshot().phase, Phase::Completed);
    let (received, memory) = destination.join().unwrap();
    (report, received.expect("the destination succeeds"), memory)
}

#[test]
fn idle_guest_moves_identically_with_zero_page_markers() {
    let mut vm = FakeSource::new(0.0);
    let (report, received, memory) = migrate(&mut vm, &options(0));
    let g = vm.guest();
    assert_same_memory(&g, &memory.lock().unwrap());
    assert_released(&g);
    assert_eq!(report.rounds, 2, "full pass and an empty final round");
    assert_eq!(report.pages_sent + report.zero_pages, 768);
    let zero = g
        .mem
        .iter()
        .flat_map(|m| m.chunks(PAGE_BYTES))
        .filter(|p| p.iter().all(|b| *b == 0))
        .count() as u64;
    assert!(zero >= 384, "at least every other page is zero");
    assert_eq!(report.zero_pages, zero, "zero pages travel as markers");
    assert_eq!(
        (received.pages, received.zero_pages, received.rounds),
        (768 - zero, zero, 2)
    );
    assert!(report.converged);
    assert_eq!(report.max_throttle_percent, 0);
    // The report serialises for logs and vm.info.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(json["downtime"]["state_save_ms"].is_number());
}

#[test]
fn dirtying_guest_converges_over_tcp_with_default_target() {
    let listener = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let endpoint = listener.endpoint().clone();
    let destination = thread::spawn(move || receiver(listener.accept(Some(Duration::from_secs(5))).unwrap()));
    let mut vm = FakeSource::new(0.25);
    let stream = transport::connect(&endpoint, Duration::from_secs(5)).unwrap();
    let report = engine::send(stream, &mut vm, &fake::config(), &options(300), &Progress::new()).unwrap();
    let (received, memory) = destination.join().unwrap().join().unwrap();
    received.unwrap();
    let g = vm.guest();
    assert_same_memory(&g, &memory.lock().unwrap());
    assert_released(&g);
    assert!(report.rounds >= 2);
}

#[test]
fn moderate_dirty_rate_converges_without_throttling() {
    let mut vm = FakeSource::new(0.25);
    let (report, _, memory) = migrate(&mut vm, &options(0));
    let g = vm.guest();
    assert_same_memory(&g, &memory.lock().unwrap());
    assert!(report.rounds > 3, "pre-copy rounds shrank the dirty set: {report:?}");
    assert_eq!(report.max_throttle_percent, 0);
    assert!(g.throttle_calls.is_empty());
}

#[test]
fn rounds_go_on_past_the_target_while_they_shrink_the_dirty_set() {
    // A generous target is met right after the full pass, but each round
    // dirties only a quarter of what it sent: going on costs little and
    // leaves almost nothing for the pause.
    let mut vm = FakeSource::new(0.25);
    let options = SendOptions {
        downtime_floor: Duration::ZERO,
        ..options(10_000)
    };
    let (report, _, memory) = migrate(&mut vm, &options);
    assert_same_memory(&vm.guest(), &memory.lock().unwrap());
    assert!(report.rounds > 3, "stopped at the first round that fit: {report:?}");
    assert!(report.final_round_pages < 10, "{report:?}");
    assert_eq!(report.max_throttle_percent, 0, "polishing rounds never throttle");
}

#[test]
fn rounds_past_the_target_stop_when_they_stop_paying() {
    // Each round writes nine tenths as many pages as it sent (some twice):
    // the dirty set soon stops shrinking by a quarter, and the source
    // pauses with plenty left rather than running its extra rounds out.
    let mut vm = FakeSource::new(0.9);
    let options = SendOptions {
        downtime_floor: Duration::ZERO,
        ..options(10_000)
    };
    let (report, _, _) = migrate(&mut vm, &options);
    let cap = 2 + covm_migration::engine::MAX_EXTRA_ROUNDS;
    assert!(report.rounds < cap, "ran to the cap of {cap} rounds: {report:?}");
    assert!(report.final_round_pages > 100, "{report:?}");
    assert_eq!(report.max_throttle_percent, 0);
}

#[test]
fn dirty_rate_above_bandwidth_converges_only_by_throttling() {
    // The guest writes two pages for every page sent: only slowing it
    // below half speed lets pre-copy catch up.
    let mut vm = FakeSource::new(2.0);
    let (report, _, memory) = migrate(&mut vm, &options(0));
    let g = vm.guest();
    assert_same_memory(&g, &memory.lock().unwrap());
    assert!(report.max_throttle_percent > 50, "{report:?}");
    assert_eq!(&g.throttle_calls[..3], &[20, 30, 40], "steps from 20% by 10%");
    assert!(report.converged);
}

#[test]
fn timeout_cancel_keeps_the_guest_running_here() {
    let mut vm = FakeSource::new(2.0);
    let mut opts = options(0);
    opts.throttle = ThrottlePolicy {
        max_percent: 0,
        ..Default::default()
    }; // cannot converge
    opts.timeout = Duration::from_millis(150);
    let (a, b) = pair();
    let destination = receiver(b);
    let progress = Progress::new();
    let e = engine::send(a, &mut vm, &fake::config(), &opts, &progress).unwrap_err();
    assert!(matches!(e, MigrationError::TimedOut(_)), "{e}");
    assert_handed_back(&vm.guest());
    assert_eq!(vm.guest().pauses, 0);
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.phase, Phase::Failed);
    assert!(snapshot.error.unwrap().contains("timeout"));
    let (received, _) = destination.join().unwrap();
    assert!(
        matches!(received, Err(MigrationError::PeerAborted { .. })),
        "{:?}",
        received.err()
    );
}

#[test]
fn timeout_ignore_forces_the_pause() {
    let mut vm = FakeSource::new(2.0);
    let mut opts = options(0);
    opts.throttle = ThrottlePolicy {
        max_percent: 0,
        ..Default::default()
    };
    opts.timeout = Duration::from_millis(100);
    opts.timeout_strategy = TimeoutStrategy::Ignore;
    let (report, _, memory) = migrate(&mut vm, &opts);
    let g = vm.guest();
    assert_same_memory(&g, &memory.lock().unwrap());
    assert_released(&g);
    assert!(!report.converged);
    assert!(report.final_round_pages > 0);
}

#[test]
fn refused_hello_leaves_the_source_untouched() {
    let (a, b) = pair();
    let destination = thread::spawn(move || {
        let build = |_: &[u8]| -> Result<Box<dyn covm_migration::vm::DestinationVm>, _> {
            Err(covm_migration::vm::VmOpError::Refused(
                "not enough memory for 3 MiB".into(),
            ))
        };
        engine::receive(b, build, &ReceiveOptions::default(), &Progress::new())
            .err()
            .unwrap()
    });
    let mut vm = FakeSource::new(1.0);
    let e = engine::send(a, &mut vm, &fake::config(), &options(0), &Progress::new()).unwrap_err();
    assert!(
        matches!(&e, MigrationError::Refused { reason } if reason.contains("not enough memory")),
        "{e}"
    );
    let g = vm.guest();
    assert_eq!(g.throttle_calls, vec![0]);
    assert_eq!((g.pauses, g.tracking_stopped), (0, 0), "tracking never started");
    let de = destination.join().unwrap();
    assert!(
        matches!(
            de,
            MigrationError::Vm {
                op: "build the incoming VM",
                ..
            }
        ),
        "{de}"
    );
}

#[test]
fn destination_dropping_mid_precopy_hands_the_guest_back() {
    let (e, vm) = fail_against(2.0, |w| {
        assert!(matches!(w.receive().unwrap(), Message::Hello { .. }));
        w.send_now(&Message::HelloAck).unwrap();
        for _ in 0..3 {
            w.receive().unwrap();
        }
        // Dropped here: the connection closes mid-stream.
    });
    assert!(matches!(e, MigrationError::Protocol(_)), "{e}");
    assert_handed_back(&vm.guest());
    assert_eq!(vm.guest().tracking_stopped, 1);
}

#[test]
fn destination_dropping_after_the_pause_resumes_the_guest() {
    let (e, vm) = fail_against(0.5, |w| {
        w.receive().unwrap();
        w.send_now(&Message::HelloAck).unwrap();
        while !matches!(w.receive().unwrap(), Message::Complete { .. }) {}
        // Everything arrived, but no Commit: the destination died.
    });
    assert!(matches!(e, MigrationError::Protocol(ProtocolError::Closed)), "{e}");
    let g = vm.guest();
    assert_handed_back(&g);
    assert_eq!((g.pauses, g.resumes), (1, 1));
}

#[test]
fn destination_abort_after_the_pause_resumes_the_guest() {
    let (e, vm) = fail_against(0.0, |w| {
        w.receive().unwrap();
        w.send_now(&Message::HelloAck).unwrap();
        while !matches!(w.receive().unwrap(), Message::State { .. }) {}
        w.send_now(&Message::Abort {
            reason: "restore failed".into(),
        })
        .unwrap();
    });
    assert!(
        matches!(&e, MigrationError::PeerAborted { reason } if reason == "restore failed"),
        "{e}"
    );
    assert_eq!(vm.guest().resumes, 1);
    assert_handed_back(&vm.guest());
}

#[test]
fn garbage_from_the_destination_is_refused() {
    let (a, b) = pair();
    let dst = thread::spawn(move || {
        let mut b = b;
        let mut hello = [0u8; 64];
        let _ = std::io::Read::read(&mut b, &mut hello);
        b.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        thread::sleep(Duration::from_millis(100));
    });
    let mut vm = FakeSource::new(0.0);
    let e = engine::send(a, &mut vm, &fake::config(), &options(0), &Progress::new()).unwrap_err();
    dst.join().unwrap();
    assert!(
        matches!(e, MigrationError::Protocol(ProtocolError::BadMagic { .. })),
        "{e}"
    );
    assert_eq!(vm.guest().throttle_calls, vec![0]);
}

#[test]
fn stalled_destination_is_detected() {
    let (a, b) = pair();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let dst = peer(b, move |w| {
        w.receive().unwrap();
        w.send_now(&Message::HelloAck).unwrap();
        let _ = done_rx.recv(); // reads nothing more, holds the connection open
    });
    let mut vm = FakeSource::new(0.0);
    let mut opts = options(0);
    opts.io_timeout = Duration::from_millis(200);
    let e = engine::send(a, &mut vm, &fake::config(), &opts, &Progress::new()).unwrap_err();
    done_tx.send(()).unwrap();
    dst.join().unwrap();
    assert!(
        matches!(e, MigrationError::Protocol(ProtocolError::Stalled { .. })),
        "{e}"
    );
    assert_handed_back(&vm.guest());
}

#[test]
fn cancel_from_outside_hands_the_guest_back() {
    let (a, b) = pair();
    let destination = receiver(b);
    let progress = Progress::new();
    progress.cancel();
    let mut vm = FakeSource::new(1.0);
    let e = engine::send(a, &mut vm, &fake::config(), &options(0), &progress).unwrap_err();
    assert!(matches!(e, MigrationError::Cancelled), "{e}");
    assert_handed_back(&vm.guest());
    assert!(destination.join().unwrap().0.is_err());
}

/// Sends `frames` as a source would (Hello first), returns the
/// destination's error.
fn destination_error(frames: Vec<Message>) -> MigrationError {
    let (a, b) = pair();
    let destination = receiver(b);
    let mut w = Wire::new(a);
    w.send_now(&Message::Hello {
        version: 1,
        config: fake::config(),
    })
    .unwrap();
    assert_eq!(w.receive().unwrap(), Message::HelloAck);
    for f in &frames {
        if w.send_now(f).is_err() {
            break;
        }
    }
    let (result, _) = destination.join().unwrap();
    result.expect_err("the destination refuses")
}

fn page(round: u32, gpa: u64) -> Message {
    Message::Pages {
        round,
        gpas: vec![gpa],
        data: vec![1; PAGE_BYTES],
    }
}

#[test]
fn destination_checks_rounds_counts_and_completeness() {
    let end = |round, pages| Message::RoundEnd {
        round,
        pages,
        zero_pages: 0,
        bytes: pages * 4112,
    };
    let cases: Vec<(Vec<Message>, &str)> = vec![
        (vec![page(0, 0), end(0, 2)], "claiming 2 pages, 1 arrived"),
        (
            vec![page(0, 0), end(0, 1), page(0, 4096)],
            "round 0 while round 1 is open",
        ),
        (vec![page(0, 0), end(1, 1)], "RoundEnd of round 1"),
        (vec![page(0, 123)], "not page-aligned"),
        (
            vec![page(0, 0), end(0, 1), Message::Complete { pages: 1, rounds: 1 }],
            "before the state",
        ),
        (vec![Message::State { state: vec![] }], "before the last round ended"),
        (
            vec![
                page(0, 0),
                end(0, 1),
                Message::State { state: vec![] },
                Message::Complete { pages: 2, rounds: 1 },
            ],
            "claims 2 pages",
        ),
        (vec![Message::HelloAck], "unexpected HelloAck"),
        (
            vec![Message::Abort { reason: "bye".into() }],
            "aborted the migration: bye",
        ),
        (
            vec![Message::ZeroPages {
                round: 0,
                gpa: 1 << 40,
                count: 1,
            }],
            "zero outside RAM",
        ),
    ];
    for (frames, says) in cases {
        let e = destination_error(frames).to_string();
        assert!(e.contains(says), "expected '{says}' in: {e}");
    }
}

#[test]
fn destination_refuses_garbage_truncated_and_out_of_order_frames() {
    // Garbage instead of a Hello.
    let (mut a, b) = pair();
    let destination = receiver(b);
    a.write_all(&[0x5a; 64]).unwrap();
    let e = destination.join().unwrap().0.err().unwrap();
    assert!(
        matches!(e, MigrationError::Protocol(ProtocolError::BadMagic { .. })),
        "{e}"
    );

    // A frame out of sequence after the handshake.
    let (mut a, destination) = raw_handshake();
    write_frame(&mut a, 5, &page(0, 0)).unwrap();
    let e = destination.join().unwrap().0.err().unwrap();
    assert!(
        matches!(
            e,
            MigrationError::Protocol(ProtocolError::OutOfOrder { expected: 1, found: 5 })
        ),
        "{e}"
    );

    // A truncated frame, then the source vanishes.
    let (mut a, destination) = raw_handshake();
    let mut bytes = Vec::new();
    write_frame(&mut bytes, 1, &page(0, 0)).unwrap();
    a.write_all(&bytes[..100]).unwrap();
    drop(a);
    let e = destination.join().unwrap().0.err().unwrap();
    assert!(
        matches!(e, MigrationError::Protocol(ProtocolError::Truncated { .. })),
        "{e}"
    );

    // A Hello of another version is refused with a reason.
    let (a, b) = pair();
    let destination = receiver(b);
    let mut w = Wire::new(a);
    w.send_now(&Message::Hello {
        version: 7,
        config: vec![],
    })
    .unwrap();
    assert!(matches!(w.receive().unwrap(), Message::Refuse { reason } if reason.contains("version 7")));
    assert!(matches!(
        destination.join().unwrap().0,
        Err(MigrationError::Version { found: 7, .. })
    ));
}

/// A destination past its handshake, and the raw source end.
fn raw_handshake() -> (UnixStream, JoinHandle<Outcome>) {
    let (mut a, b) = UnixStream::pair().unwrap();
    let destination = receiver(Box::new(b));
    write_frame(
        &mut a,
        0,
        &Message::Hello {
            version: 1,
            config: fake::config(),
        },
    )
    .unwrap();
    assert_eq!(read_frame(&mut a, 0).unwrap().0, Message::HelloAck);
    (a, destination)
}

#[test]
fn destination_abort_mid_precopy_is_reported_with_its_reason() {
    let (e, vm) = fail_against(1.0, |w| {
        w.receive().unwrap();
        w.send_now(&Message::HelloAck).unwrap();
        for _ in 0..3 {
            w.receive().unwrap();
        }
        w.send_now(&Message::Abort {
            reason: "guest memory write failed".into(),
        })
        .unwrap();
    });
    assert!(
        matches!(&e, MigrationError::PeerAborted { reason } if reason.contains("write failed")),
        "{e}"
    );
    assert_handed_back(&vm.guest());
}
