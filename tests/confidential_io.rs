//! A confidential VM (emulated platform) with devices: its firmware shares
//! the window `layout::SHARED_WINDOW` with a page-state request, puts its
//! virtqueues there and bounces every other buffer through it
//! (virtio-drivers' `Hal::share`); covm's devices see only that window.

mod common;
#[path = "common/proxy.rs"]
#[allow(dead_code)]
mod proxy;
use common::api::{covm_named, Api};
use common::blk::{check_disk_matches_summary, fresh_seed};
use common::owner::Owner;
use common::vsock::{connect, echo_server, echo_through, rounds, wait_rounds};
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn confidential_args<'a>(owner: &'a Owner, policy: &'a str, cmdline: &'a str) -> Vec<&'a str> {
    vec![
        "--platform",
        &owner.platform,
        "--migration-policy",
        policy,
        "--cpus",
        "boot=2",
        "--memory",
        "size=128M",
        "--cmdline",
        cmdline,
    ]
}

#[test]
fn a_confidential_vm_uses_its_disk_through_the_shared_window() {
    if !kvm_available() {
        return;
    }
    let owner = Owner::new("cio-blk", None);
    let disk = owner.dir.path("disk.raw");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let seed = fresh_seed();
    let cmdline = format!("workload=blk mib=4 seed={seed} stop_after=8");
    let policy = owner.policy.display().to_string();
    let disk_arg = format!("path={}", disk.display());
    let mut args = confidential_args(&owner, &policy, &cmdline);
    args.extend(["--disk", &disk_arg]);
    let serial = owner.dir.path("serial.txt");
    let (out, text) = run_to_end(&args, &serial, Duration::from_secs(120));
    assert!(out.status.success(), "{}\nserial:\n{text}", stderr(&out));
    assert!(!text.contains("FAIL"), "serial:\n{text}");
    check_disk_matches_summary(&disk, seed, 4, &text);
}

/// `dst` starts receiving on `dir/<tag>.sock` and `src` sends there
/// (within 120 s), through a proxy with `forward` tampering when given:
/// the proxy, if any.
fn migrate(dir: &Scratch, tag: &str, src: &Api, dst: &Api, forward: Option<proxy::Tamper>) -> Option<proxy::Proxy> {
    let listen = dir.path(&format!("{tag}.sock"));
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = forward.map(|f| proxy::Proxy::start(&dir.path(&format!("{tag}.proxy")), &listen, f, proxy::pass()));
    let to = proxy.as_ref().map_or(&listen, |p| &p.path);
    let send = format!(r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#, to.display());
    let (status, body) = src.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
    proxy
}

/// The launch measurement of the test's confidential VM with `cmdline`.
fn measure(owner: &Owner, cmdline: &str) -> String {
    let out = covm()
        .args([
            "measure",
            "--platform",
            &owner.platform,
            "--cpus",
            "boot=2",
            "--memory",
            "size=128M",
        ])
        .args(["--cmdline", cmdline])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["measurement"].as_str().unwrap().to_string()
}

#[test]
fn a_confidential_vm_with_vsock_migrates_a_to_b_to_c_and_its_guest_keeps_both_ends() {
    if !kvm_available() {
        return;
    }
    let owner = Owner::new("cio-vsock", None);
    let cmdline = "workload=vsock port=1234 peer=5000 kib=256";
    let policy = owner.write_policy("vsock-policy.json", 2, &measure(&owner, cmdline));
    let policy = policy.display().to_string();
    let socket = owner.dir.path("v.sock");
    // The host's echo for the guest's client.
    echo_server(owner.dir.path("v.sock_5000"));
    let vsock = format!("cid=5,socket={}", socket.display());
    let mut args = confidential_args(&owner, &policy, cmdline);
    args.extend(["--vsock", &vsock]);
    let (mut src, src_api, src_serial) = covm_named(&owner.dir, "src", &args);
    let (mut dst, dst_api, dst_serial) = owner.destination("dst", &[]);
    wait_rounds(&src_serial, 2);
    let mut s = connect(&socket, 1234).unwrap();
    echo_through(&mut s, 200_000, 1);
    // While it migrates, a host client streams a recognisable 64-byte
    // pattern through the guest's echo, beside the guest client's own
    // stream: both sit in the guest's bounce buffers, shared memory, which
    // moves in the clear.
    let pattern: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streaming = {
        let mut s = connect(&socket, 1234).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk: Vec<u8> = pattern.iter().copied().cycle().take(16 * 1024).collect();
        let echoed = echoed.clone();
        std::thread::spawn(move || {
            let mut back = vec![0u8; 16 * 1024];
            // Until the source's end of the connection goes.
            while s.write_all(&chunk).is_ok() {
                match s.read(&mut back) {
                    Ok(n) if n > 0 => echoed.fetch_add(n, std::sync::atomic::Ordering::Relaxed),
                    _ => break,
                };
            }
        })
    };
    // The guest's buffers have held the pattern before the migration starts.
    let start = std::time::Instant::now();
    while echoed.load(std::sync::atomic::Ordering::Relaxed) < 256 << 10 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the echo stream did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let proxy = migrate(&owner.dir, "mig", &src_api, &dst_api, Some(proxy::pass())).expect("a proxy");
    assert_eq!(
        wait_exit(&mut src, Duration::from_secs(120)),
        Some(0),
        "source:\n{}",
        std::fs::read_to_string(&src_serial).unwrap_or_default()
    );
    streaming.join().unwrap();
    let wire = proxy.to_destination.lock().unwrap().clone();
    proxy.join();
    // The echo data of both streams (the host's pattern through the
    // guest's listener, the guest client's documented pattern through the
    // host's echo) sits in the shared bounce buffers: some of it must be
    // on the wire in the clear.
    let mut needles = vec![pattern];
    needles.extend((0..64 << 10).map(|o: u64| (o..o + 64).map(covm_guest_abi::workload::vsock_pattern).collect()));
    assert!(
        common::leak::found(&wire, &needles) > 0,
        "the shared bounce buffers did not cross in the clear"
    );
    // The guest's listener and client continue at the destination, its
    // virtqueues and bounce buffers having moved in the clear, the rest
    // of its memory sealed.
    wait_rounds(&dst_serial, rounds(&dst_serial) + 2);
    let mut fresh = connect(&socket, 1234).unwrap();
    echo_through(&mut fresh, 200_000, 2);
    assert_eq!(dst_api.state(), "Running");
    // On to a third covm: listener and client go on there too.
    let (mut third, third_api, third_serial) = owner.destination("third", &[]);
    migrate(&owner.dir, "mig2", &dst_api, &third_api, None);
    assert_eq!(wait_exit(&mut dst, Duration::from_secs(120)), Some(0));
    wait_rounds(&third_serial, rounds(&third_serial) + 2);
    let mut again = connect(&socket, 1234).unwrap();
    echo_through(&mut again, 100_000, 3);
    assert_eq!(third_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut third, Duration::from_secs(30)), Some(0));
    no_fail(&third_serial);
    no_fail(&dst_serial);
    no_fail(&src_serial);
}

#[test]
fn a_confidential_vm_answers_ping_tcp_and_udp_and_keeps_a_tcp_stream_across_migrations_a_to_b_to_c() {
    use common::netns::{progress, python_usable, run_client, Netns, STREAM};
    if !kvm_available() || !python_usable() {
        return;
    }
    let Some(ns) = Netns::new("cio-net") else { return };
    let owner = Owner::new("cio-net", None);
    let cmdline = "workload=net ip=10.0.9.2/24";
    let policy = owner.write_policy("net-policy.json", 2, &measure(&owner, cmdline));
    let policy = policy.display().to_string();
    let src_serial = owner.dir.path("src.txt");
    let mut args = confidential_args(&owner, &policy, cmdline);
    args.extend([
        "--net",
        "tap=covmtap7,ip=10.0.9.1,mask=255.255.255.0,mac=52:54:00:00:09:07",
    ]);
    let (mut src, src_api) = common::netns::covm_in(&ns, &owner.dir.path("src.sock"), &src_serial, &args);
    let dst_serial = owner.dir.path("dst.txt");
    let (mut dst, dst_api) = common::netns::covm_in(&ns, &owner.dir.path("dst.sock"), &dst_serial, &[]);
    let text = wait_for_serial(&src_serial, Duration::from_secs(60), |t| t.contains("heartbeat 1 "));
    assert!(text.contains("mac 52:54:00:00:09:07 ip 10.0.9.2/24"), "serial:\n{text}");
    run_client(&ns, "10.0.9.2", 256 << 10, || {
        std::fs::read_to_string(&src_serial).unwrap_or_default()
    });
    // A TCP stream through the migration: its state is in private memory,
    // its frames in the shared window.
    let progress_file = owner.dir.path("progress");
    let total = 4u64 << 20;
    let client = ns
        .command(&[
            "python3",
            "-c",
            STREAM,
            "10.0.9.2",
            "7",
            &total.to_string(),
            progress_file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while progress(&progress_file) < 512 << 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "the stream did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    migrate(&owner.dir, "mig", &src_api, &dst_api, None);
    assert_eq!(wait_exit(&mut src.0, Duration::from_secs(120)), Some(0));
    let out = wait_with_deadline(client, Duration::from_secs(120));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains(&format!("stream {total} bytes ok")),
        "{report}\n{}\ndestination:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&dst_serial).unwrap_or_default()
    );
    assert_eq!(dst_api.state(), "Running");
    // On to a third covm, which answers on the same TAP.
    let third_serial = owner.dir.path("third.txt");
    let (mut third, third_api) = common::netns::covm_in(&ns, &owner.dir.path("third.sock"), &third_serial, &[]);
    migrate(&owner.dir, "mig2", &dst_api, &third_api, None);
    assert_eq!(wait_exit(&mut dst.0, Duration::from_secs(120)), Some(0));
    run_client(&ns, "10.0.9.2", 64 << 10, || {
        std::fs::read_to_string(&third_serial).unwrap_or_default()
    });
    assert_eq!(third_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut third.0, Duration::from_secs(30)), Some(0));
    no_fail(&src_serial);
    no_fail(&dst_serial);
    no_fail(&third_serial);
}

#[test]
fn a_confidential_vm_migrates_a_to_b_to_c_with_its_disk_busy_and_no_private_page_crosses_in_the_clear() {
    if !kvm_available() {
        return;
    }
    let owner = Owner::new("cio-blk-mig", None);
    let disk = owner.dir.path("disk.raw");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    // blk on vCPU 0, dirty (8 MiB, seed 11) on vCPU 1, the agent on vCPU 2.
    let (seed, dirty_mib) = (11u64, 8u64);
    let cmdline = format!("workload=blk mib=4 seed={seed} dirty={dirty_mib} dirty_rate=32");
    let measurement = {
        let out = covm()
            .args([
                "measure",
                "--platform",
                &owner.platform,
                "--cpus",
                "boot=3",
                "--memory",
                "size=128M",
            ])
            .args(["--cmdline", &cmdline])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["measurement"].as_str().unwrap().to_string()
    };
    let policy = owner.write_policy("blk-policy.json", 2, &measurement);
    let policy = policy.display().to_string();
    let disk_arg = format!("path={}", disk.display());
    let mut args = confidential_args(&owner, &policy, &cmdline);
    args[5] = "boot=3";
    args.extend(["--disk", &disk_arg]);
    let (mut src, src_api, src_serial) = covm_named(&owner.dir, "src", &args);
    let (mut dst, dst_api, dst_serial) = owner.destination("dst", &[]);
    wait_heartbeats_within(&src_serial, 5, Duration::from_secs(60));
    let proxy = migrate(&owner.dir, "mig", &src_api, &dst_api, Some(proxy::pass())).expect("a proxy");
    assert_eq!(
        wait_exit(&mut src, Duration::from_secs(120)),
        Some(0),
        "source:\n{}",
        std::fs::read_to_string(&src_serial).unwrap_or_default()
    );
    destination_continues(&src_serial, &dst_serial);
    let wire = proxy.to_destination.lock().unwrap().clone();
    proxy.join();
    let leaked = common::leak::found(&wire, &common::leak::page_windows(seed, dirty_mib));
    assert_eq!(
        leaked, 0,
        "{leaked} windows of the workload's private pages crossed in the clear"
    );
    // And structurally: every page in the clear (Pages, ZeroPages) lies in
    // the shared window; nothing else, the agent's memory included, left
    // but sealed.
    let (window, end) = (
        covm_guest_abi::layout::SHARED_WINDOW,
        covm_guest_abi::layout::SHARED_WINDOW + covm_guest_abi::layout::SHARED_WINDOW_SIZE,
    );
    let mut clear = 0;
    for (kind, payload) in proxy::frames(&wire) {
        let runs: Vec<(u64, u64)> = match kind {
            4 => {
                let n = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
                (0..n)
                    .map(|i| {
                        (
                            u64::from_le_bytes(payload[8 + 8 * i..16 + 8 * i].try_into().unwrap()),
                            1,
                        )
                    })
                    .collect()
            }
            5 => vec![(
                u64::from_le_bytes(payload[4..12].try_into().unwrap()),
                u64::from_le_bytes(payload[12..20].try_into().unwrap()),
            )],
            _ => continue,
        };
        for (gpa, pages) in runs {
            assert!(
                gpa >= window && gpa + pages * 4096 <= end,
                "{pages} pages at {gpa:#x} crossed in the clear outside the shared window"
            );
            clear += pages;
        }
    }
    assert!(clear > 0, "the shared window did not cross in the clear");
    // On to a third covm: a migrated VM with devices migrates on.
    let (mut third, third_api, third_serial) = owner.destination("third", &[]);
    migrate(&owner.dir, "mig2", &dst_api, &third_api, None);
    assert_eq!(wait_exit(&mut dst, Duration::from_secs(120)), Some(0));
    destination_continues(&dst_serial, &third_serial);
    assert_eq!(third_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut third, Duration::from_secs(30)), Some(0));
}

#[test]
fn the_same_check_finds_the_pages_when_a_plain_vm_migrates() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("cio-plain");
    let disk = dir.path("disk.raw");
    std::fs::write(&disk, vec![0u8; 16 << 20]).unwrap();
    let (seed, dirty_mib) = (11u64, 8u64);
    let cmdline = format!("workload=blk mib=4 seed={seed} dirty={dirty_mib} dirty_rate=32");
    let disk_arg = format!("path={}", disk.display());
    let (mut src, src_api, src_serial) = covm_named(
        &dir,
        "src",
        &[
            "--cpus",
            "boot=2",
            "--memory",
            "size=128M",
            "--cmdline",
            &cmdline,
            "--disk",
            &disk_arg,
        ],
    );
    let (_dst, dst_api, _) = common::api::destination(&dir, "dst", &[]);
    wait_heartbeats_within(&src_serial, 5, Duration::from_secs(60));
    let proxy = migrate(&dir, "mig", &src_api, &dst_api, Some(proxy::pass())).expect("a proxy");
    assert_eq!(wait_exit(&mut src, Duration::from_secs(120)), Some(0));
    let wire = proxy.to_destination.lock().unwrap().clone();
    proxy.join();
    let seen = common::leak::found(&wire, &common::leak::page_windows(seed, dirty_mib));
    assert!(seen > 0, "the check found none of the plain VM's pages on its wire");
}

/// LEB128, as postcard encodes a u64.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn a_host_that_flips_a_window_page_to_shared_is_refused_and_the_source_resumes() {
    if !kvm_available() {
        return;
    }
    // A confidential VM that shares nothing; the proxy makes the host-owned
    // state claim one page of the window shared (its last field, an empty
    // list of shared ranges, becomes `[(window, 4096)]`). covm restores it;
    // the destination's agent finds it differs from the guest's sealed map
    // and will not commit.
    let owner = Owner::new("cio-flip", None);
    let (_src, src_api, src_serial) = owner.source("src");
    let (_dst, dst_api, _) = owner.destination("dst", &[]);
    wait_heartbeats_within(&src_serial, 3, Duration::from_secs(60));
    let flip: proxy::Tamper = Box::new(|mut f: proxy::Frame| {
        const KIND_STATE: u16 = 7;
        if f.kind == KIND_STATE {
            // Some(SharedWindowState { shared: [] }): the tag, then the
            // list's length, 0, last.
            let n = f.payload.len();
            assert_eq!(
                &f.payload[n - 2..],
                &[1, 0],
                "the state ends with its empty shared window"
            );
            f.payload.pop();
            f.payload.push(1);
            varint(covm_guest_abi::layout::SHARED_WINDOW, &mut f.payload);
            varint(4096, &mut f.payload);
        }
        proxy::Verdict::Send(vec![f])
    });
    let _proxy = migrate(&owner.dir, "mig", &src_api, &dst_api, Some(flip)).expect("a proxy");
    let error = src_api.wait_migration_error();
    assert!(error.contains("sealed map"), "{error}");
    source_keeps_running(&src_serial);
    // The destination dropped the refused VM.
    assert_eq!(dst_api.get("/vm.info").0, 404);
}

#[test]
fn a_shared_page_moved_to_a_private_address_is_refused_and_the_source_resumes() {
    if !kvm_available() {
        return;
    }
    // The proxy rewrites the address of the first page sent in the clear
    // (the shared window's) to a private page: the destination writes no
    // clear page outside the window, refuses, and the source goes on.
    let owner = Owner::new("cio-move", None);
    let cmdline = "workload=vsock port=1234";
    let policy = owner.write_policy("vsock-policy.json", 2, &measure(&owner, cmdline));
    let policy = policy.display().to_string();
    let vsock = format!("cid=6,socket={}", owner.dir.path("v.sock").display());
    let mut args = confidential_args(&owner, &policy, cmdline);
    args.extend(["--vsock", &vsock]);
    let (_src, src_api, src_serial) = covm_named(&owner.dir, "src", &args);
    let (_dst, dst_api, _) = owner.destination("dst", &[]);
    wait_for_serial(&src_serial, Duration::from_secs(60), |t| t.contains("heartbeat 3 "));
    let mut moved = false;
    let move_page: proxy::Tamper = Box::new(move |mut f: proxy::Frame| {
        const KIND_PAGES: u16 = 4;
        if f.kind == KIND_PAGES && !moved {
            moved = true;
            // round u32, n u32, then the addresses.
            f.payload[8..16].copy_from_slice(&covm_guest_abi::layout::DIRTY_GEN_TABLE.to_le_bytes());
        }
        proxy::Verdict::Send(vec![f])
    });
    let _proxy = migrate(&owner.dir, "mig", &src_api, &dst_api, Some(move_page)).expect("a proxy");
    let error = src_api.wait_migration_error();
    assert!(error.contains("only sealed"), "{error}");
    source_keeps_running(&src_serial);
    // Its devices work again: the echo answers at the source.
    let mut s = connect(&owner.dir.path("v.sock"), 1234).unwrap();
    echo_through(&mut s, 10_000, 4);
    no_fail(&src_serial);
}
