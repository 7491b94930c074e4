//! A confidential VM (emulated platform) with devices: its firmware shares
//! the window `layout::SHARED_WINDOW` with a page-state request, puts its
//! virtqueues there and bounces every other buffer through it
//! (virtio-drivers' `Hal::share`); covm's devices see only that window.

mod common;
#[path = "common/proxy.rs"]
#[allow(dead_code)]
mod proxy;
use common::api::covm_named;
use common::blk::{check_disk_matches_summary, fresh_seed};
use common::owner::Owner;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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

/// Connects to the guest's port `port` through covm's socket at `path`.
fn vsock_connect(path: &std::path::Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "{}", String::from_utf8_lossy(&line));
    s
}

fn echo_through(s: &mut UnixStream, len: u32) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 977) as u8).collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data).unwrap())
    };
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "the echo differs");
}

/// The `rounds=` of the last heartbeat in `serial`.
fn rounds(serial: &std::path::Path) -> u64 {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("rounds=")?.parse().ok())
        })
        .unwrap_or(0)
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
    let listener = std::os::unix::net::UnixListener::bind(owner.dir.path("v.sock_5000")).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let vsock = format!("cid=5,socket={}", socket.display());
    let mut args = confidential_args(&owner, &policy, cmdline);
    args.extend(["--vsock", &vsock]);
    let (mut src, src_api, src_serial) = covm_named(&owner.dir, "src", &args);
    let (mut dst, dst_api, dst_serial) = owner.destination("dst", &[]);
    let text = wait_for_serial(&src_serial, Duration::from_secs(60), |_| rounds(&src_serial) >= 2);
    assert!(rounds(&src_serial) >= 2, "source:\n{text}");
    let mut s = vsock_connect(&socket, 1234);
    echo_through(&mut s, 200_000);
    // While it migrates, a host client streams a recognisable 64-byte
    // pattern through the guest's echo, beside the guest client's own
    // stream: both sit in the guest's bounce buffers, shared memory, which
    // moves in the clear.
    let pattern: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streaming = {
        let mut s = vsock_connect(&socket, 1234);
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
    let listen = owner.dir.path("mig.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = proxy::Proxy::start(&owner.dir.path("mig.proxy"), &listen, proxy::pass(), proxy::pass());
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        proxy.path.display()
    );
    let (status, body) = src_api.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
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
    let at_switch = rounds(&dst_serial);
    let text = wait_for_serial(&dst_serial, Duration::from_secs(60), |_| {
        rounds(&dst_serial) >= at_switch + 2
    });
    assert!(rounds(&dst_serial) >= at_switch + 2, "destination:\n{text}");
    let mut fresh = vsock_connect(&socket, 1234);
    echo_through(&mut fresh, 200_000);
    assert_eq!(dst_api.state(), "Running");
    // On to a third covm: listener and client go on there too.
    let (mut third, third_api, third_serial) = owner.destination("third", &[]);
    let listen = owner.dir.path("mig2.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(third_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        listen.display()
    );
    let (status, body) = dst_api.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
    assert_eq!(wait_exit(&mut dst, Duration::from_secs(120)), Some(0));
    let at_switch = rounds(&third_serial);
    let text = wait_for_serial(&third_serial, Duration::from_secs(60), |_| {
        rounds(&third_serial) >= at_switch + 2
    });
    assert!(rounds(&third_serial) >= at_switch + 2, "third:\n{text}");
    let mut again = vsock_connect(&socket, 1234);
    echo_through(&mut again, 100_000);
    assert_eq!(third_api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut third, Duration::from_secs(30)), Some(0));
    no_fail(&third_serial);
    no_fail(&dst_serial);
    no_fail(&src_serial);
}

/// covm in `ns` with its API on `api` and serial output in `serial`.
fn covm_in_ns(
    ns: &common::netns::Netns,
    api: &std::path::Path,
    serial: &std::path::Path,
    extra: &[&str],
) -> (Process, common::api::Api) {
    let api_arg = format!("path={}", api.display());
    let serial_arg = format!("file={}", serial.display());
    let mut args = vec![
        env!("CARGO_BIN_EXE_covm"),
        "--api-socket",
        &api_arg,
        "--serial",
        &serial_arg,
    ];
    args.extend_from_slice(extra);
    let child = ns
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let api = common::api::Api { socket: api.into() };
    api.wait_ready();
    (Process(child), api)
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
    let (mut src, src_api) = covm_in_ns(&ns, &owner.dir.path("src.sock"), &src_serial, &args);
    let dst_serial = owner.dir.path("dst.txt");
    let (mut dst, dst_api) = covm_in_ns(&ns, &owner.dir.path("dst.sock"), &dst_serial, &[]);
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
    let listen = owner.dir.path("mig.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        listen.display()
    );
    let (status, body) = src_api.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
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
    let (mut third, third_api) = covm_in_ns(&ns, &owner.dir.path("third.sock"), &third_serial, &[]);
    let listen = owner.dir.path("mig2.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(third_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        listen.display()
    );
    let (status, body) = dst_api.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
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
    let listen = owner.dir.path("mig.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = proxy::Proxy::start(&owner.dir.path("mig.proxy"), &listen, proxy::pass(), proxy::pass());
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        proxy.path.display()
    );
    let (status, body) = src_api.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        wait_exit(&mut src, Duration::from_secs(120)),
        Some(0),
        "source:\n{}",
        std::fs::read_to_string(&src_serial).unwrap_or_default()
    );
    let last = *heartbeat_numbers(&src_serial).last().unwrap();
    let text = wait_for_serial(&dst_serial, Duration::from_secs(60), |_| {
        heartbeat_numbers(&dst_serial).iter().any(|&n| n > last + 3)
    });
    assert!(
        heartbeat_numbers(&dst_serial).iter().any(|&n| n > last + 3),
        "destination:\n{text}"
    );
    no_fail(&dst_serial);
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
    let listen = owner.dir.path("mig2.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(third_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        listen.display()
    );
    let (status, body) = dst_api.put("/vm.send-migration", Some(&send));
    assert_eq!(status, 204, "{body}");
    assert_eq!(wait_exit(&mut dst, Duration::from_secs(120)), Some(0));
    let last = *heartbeat_numbers(&dst_serial).last().unwrap();
    let text = wait_for_serial(&third_serial, Duration::from_secs(60), |_| {
        heartbeat_numbers(&third_serial).iter().any(|&n| n > last + 3)
    });
    assert!(
        heartbeat_numbers(&third_serial).iter().any(|&n| n > last + 3),
        "third:\n{text}"
    );
    no_fail(&third_serial);
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
    let listen = dir.path("mig.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = proxy::Proxy::start(&dir.path("mig.proxy"), &listen, proxy::pass(), proxy::pass());
    let send = format!(r#"{{"destination_url": "unix:{}"}}"#, proxy.path.display());
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
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
    let listen = owner.dir.path("mig.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = proxy::Proxy::start(&owner.dir.path("mig.proxy"), &listen, flip, proxy::pass());
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        proxy.path.display()
    );
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    let start = std::time::Instant::now();
    let error = loop {
        let i = src_api.info();
        if let Some(e) = i["migration"]["error"].as_str() {
            break e.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the migration did not end: {i}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(error.contains("sealed map"), "{error}");
    assert_eq!(src_api.state(), "Running");
    let before = heartbeat_numbers(&src_serial).last().copied().unwrap_or(0);
    let text = wait_for_serial(&src_serial, Duration::from_secs(60), |_| {
        heartbeat_numbers(&src_serial).iter().filter(|&&n| n > before).count() >= 3
    });
    assert!(
        heartbeat_numbers(&src_serial).iter().filter(|&&n| n > before).count() >= 3,
        "the source did not resume:\n{text}"
    );
    no_fail(&src_serial);
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
    let listen = owner.dir.path("mig.sock");
    let receive = format!(r#"{{"receiver_url": "unix:{}"}}"#, listen.display());
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let proxy = proxy::Proxy::start(&owner.dir.path("mig.proxy"), &listen, move_page, proxy::pass());
    let send = format!(
        r#"{{"destination_url": "unix:{}", "timeout_s": 120}}"#,
        proxy.path.display()
    );
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    let start = std::time::Instant::now();
    let error = loop {
        let i = src_api.info();
        if let Some(e) = i["migration"]["error"].as_str() {
            break e.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the migration did not end: {i}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(error.contains("only sealed"), "{error}");
    assert_eq!(src_api.state(), "Running");
    let before = heartbeat_numbers(&src_serial).last().copied().unwrap_or(0);
    let text = wait_for_serial(&src_serial, Duration::from_secs(60), |_| {
        heartbeat_numbers(&src_serial).iter().filter(|&&n| n > before).count() >= 3
    });
    assert!(
        heartbeat_numbers(&src_serial).iter().filter(|&&n| n > before).count() >= 3,
        "the source did not resume:\n{text}"
    );
    // Its devices work again: the echo answers at the source.
    let mut s = vsock_connect(&owner.dir.path("v.sock"), 1234);
    echo_through(&mut s, 10_000);
    no_fail(&src_serial);
}
