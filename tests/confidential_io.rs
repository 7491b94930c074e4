//! A confidential VM (emulated platform) with devices: its firmware shares
//! the window `layout::SHARED_WINDOW` with a page-state request, puts its
//! virtqueues there and bounces every other buffer through it
//! (virtio-drivers' `Hal::share`); covm's devices see only that window.

mod common;
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

#[test]
fn a_confidential_vm_echoes_over_vsock_and_refuses_to_migrate_with_devices() {
    if !kvm_available() {
        return;
    }
    let owner = Owner::new("cio-vsock", None);
    let socket = owner.dir.path("v.sock");
    let policy = owner.policy.display().to_string();
    let vsock = format!("cid=5,socket={}", socket.display());
    let mut args = confidential_args(&owner, &policy, "workload=vsock port=1234");
    args.extend(["--vsock", &vsock]);
    let (mut covm, api, serial) = covm_named(&owner.dir, "vm", &args);
    wait_for_serial(&serial, Duration::from_secs(60), |t| t.contains("heartbeat 1 "));
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "{}", String::from_utf8_lossy(&line));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 977) as u8).collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data).unwrap())
    };
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "the echo differs");
    // Migration is refused, naming why; the VM keeps running.
    let (status, body) = api.put("/vm.send-migration", Some(r#"{"destination_url": "tcp:127.0.0.1:1"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("confidential VM with devices (--vsock)"), "{body}");
    assert_eq!(api.state(), "Running");
    let info = api.info();
    assert_eq!(info["platform"]["kind"], "emulated_cvm", "{info}");
    assert_eq!(api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(30)), Some(0));
    no_fail(&serial);
}

#[test]
fn devices_on_a_vm_with_private_memory_are_refused_by_name() {
    let out = covm()
        .args(["--platform", "sev_snp=on", "--rng", "--serial", "null"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    // Either the host lacks SEV-SNP (refused first), or the devices are.
    assert!(err.contains("SEV-SNP") || err.contains("private memory"), "{err}");
}

#[test]
fn a_confidential_vm_answers_ping_tcp_and_udp_through_the_shared_window() {
    use common::netns::{python_usable, run_client, Netns};
    if !kvm_available() || !python_usable() {
        return;
    }
    let Some(ns) = Netns::new("cio-net") else { return };
    let owner = Owner::new("cio-net", None);
    let policy = owner.policy.display().to_string();
    let serial = owner.dir.path("serial.txt");
    let serial_arg = format!("file={}", serial.display());
    let mut args = vec![env!("CARGO_BIN_EXE_covm"), "--serial", &serial_arg];
    args.extend(confidential_args(&owner, &policy, "workload=net ip=10.0.9.2/24"));
    args.extend([
        "--net",
        "tap=covmtap7,ip=10.0.9.1,mask=255.255.255.0,mac=52:54:00:00:09:07",
    ]);
    let child = ns
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut covm = Process(child);
    let text = wait_for_serial(&serial, Duration::from_secs(60), |t| t.contains("heartbeat 1 "));
    assert!(text.contains("mac 52:54:00:00:09:07 ip 10.0.9.2/24"), "serial:\n{text}");
    run_client(&ns, "10.0.9.2", 256 << 10, || {
        std::fs::read_to_string(&serial).unwrap_or_default()
    });
    let _ = covm.0.kill();
    let _ = covm.0.wait();
    no_fail(&serial);
}
