//! covm's virtio-pci devices driven by the built-in firmware's drivers
//! (rcore-os' `virtio-drivers`, the same ELF tests/qemu_virtio.rs runs on
//! QEMU's devices), on real KVM with the real covm binary: `blk` on 1, 2
//! and 4 vCPUs checked from the host, read-only disks, entropy, the
//! console, bad disk options, and live migrations with disk writes in
//! flight (A → B → C over TCP, and a destination killed midway).

mod common;
use common::api::*;
use common::blk::{blk_heartbeats, check_disk_matches_summary, disk_generations, fresh_seed};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

/// One guest at a time: a 4-vCPU guest or two migrating VMs already fill
/// this machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// A sparse raw image of `mib` MiB in `dir`.
fn image(dir: &Scratch, name: &str, mib: u64) -> PathBuf {
    let path = dir.path(name);
    std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
    path
}

fn disk_option(image: &Path, extra: &str) -> String {
    format!("path={}{extra}", image.display())
}

/// Runs `blk` on `vcpus` vCPUs until it stops after `stop_after`
/// heartbeats, then checks the image against the guest's table.
fn blk_stops_matching_its_table(vcpus: u32, extra: &str, stop_after: u64) -> String {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new(&format!("blk{vcpus}"));
    let disk = image(&dir, "disk.raw", 32);
    let seed = fresh_seed();
    let cmdline = format!("workload=blk mib=8 seed={seed} stop_after={stop_after} {extra}");
    let cpus = format!("boot={vcpus}");
    let disk_arg = disk_option(&disk, "");
    let serial = dir.path("serial.txt");
    let (out, text) = run_to_end(
        &["--cpus", &cpus, "--cmdline", &cmdline, "--disk", &disk_arg],
        &serial,
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}\nserial:\n{text}", stderr(&out));
    assert!(!text.contains("FAIL"), "serial:\n{text}");
    let beats = blk_heartbeats(&text);
    assert_eq!(beats.len() as u64, stop_after, "serial:\n{text}");
    assert!(
        text.contains("virtio Block bar0 0xc0000000+0x8000 (64-bit)"),
        "the BAR is not where covm's bus put it:\n{text}"
    );
    let (_, _, _, irqs) = common::blk::blk_summary(&text).unwrap_or_else(|| panic!("serial:\n{text}"));
    // Completions were waited for halted: the MSI-X vector (routed through
    // a KVM GSI route and irqfd) fired.
    assert!(irqs > 0, "no MSI-X interrupt reached the guest:\n{text}");
    check_disk_matches_summary(&disk, seed, 8, &text);
    text
}

#[test]
fn blk_on_one_vcpu_leaves_the_disk_matching_its_table() {
    if !kvm_available() {
        return;
    }
    let text = blk_stops_matching_its_table(1, "", 10);
    assert!(
        text.contains("blk: 8 MiB of the 32 MiB disk 00:01.0, 2048 blocks"),
        "{text}"
    );
}

#[test]
fn blk_beside_dirty_on_two_vcpus_leaves_the_disk_matching_its_table() {
    if !kvm_available() {
        return;
    }
    let text = blk_stops_matching_its_table(2, "dirty=16", 10);
    let pages = blk_heartbeats(&text).last().unwrap().pages;
    assert!(pages.unwrap_or(0) > 0, "dirty wrote nothing beside blk:\n{text}");
}

#[test]
fn blk_throttled_beside_dirty_on_four_vcpus_leaves_the_disk_matching_its_table() {
    if !kvm_available() {
        return;
    }
    let text = blk_stops_matching_its_table(4, "rate=1 dirty=16 dirty_rate=20", 10);
    assert!(text.contains(", 3 vCPUs,"), "dirty runs on vCPUs 1-3:\n{text}");
}

#[test]
fn a_read_only_disk_fails_the_guests_write_and_keeps_its_content() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("blk-ro");
    let disk = image(&dir, "disk.raw", 8);
    std::fs::write(&disk, vec![0xa5u8; 8 << 20]).unwrap();
    let (mut covm, api, serial) = covm_named(
        &dir,
        "ro",
        &[
            "--cmdline",
            "workload=blk mib=1",
            "--disk",
            &disk_option(&disk, ",readonly=on,id=ro"),
        ],
    );
    // The guest writes anyway, is told VIRTIO_BLK_S_IOERR and powers off
    // naming the disk; covm serves the API until then and exits cleanly.
    let text = wait_for_serial(&serial, Duration::from_secs(60), |t| t.contains("read-only"));
    assert!(
        text.contains("error: blk: the virtio-blk disk 00:01.0 is read-only (a write anyway: VIRTIO_BLK_S_IOERR)"),
        "serial:\n{text}"
    );
    let _ = api;
    let code = wait_exit(&mut covm, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(covm.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("guest powered off reporting failure code 0x08"),
        "{code:?}: {err}"
    );
    assert!(err.contains("a write (T_OUT) to a read-only disk"), "{err}");
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0xa5),
        "the read-only image changed"
    );
}

#[test]
fn counters_and_device_tree_follow_the_disk() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("blk-api");
    let disk = image(&dir, "disk.raw", 8);
    let seed = fresh_seed();
    let (mut covm, api, serial) = covm_named(
        &dir,
        "vm",
        &[
            "--cmdline",
            &format!("workload=blk mib=1 seed={seed}"),
            "--disk",
            &disk_option(&disk, ",id=data"),
            "--rng",
        ],
    );
    let text = wait_for_serial(&serial, Duration::from_secs(60), |t| blk_heartbeats(t).len() >= 3);
    assert!(blk_heartbeats(&text).len() >= 3, "serial:\n{text}");
    let info: serde_json::Value = serde_json::from_str(&api.get("/vm.info").1).unwrap();
    let tree = &info["device_tree"];
    // Cloud Hypervisor's tree: the device under its PCI function.
    assert_eq!(tree["data"]["parent"], "_virtio-pci-data", "{tree}");
    assert_eq!(tree["_virtio-pci-data"]["pci_bdf"], "0000:00:01.0", "{tree}");
    assert_eq!(tree["_virtio-pci-__rng"]["pci_bdf"], "0000:00:02.0", "{tree}");
    let counters: serde_json::Value = serde_json::from_str(&api.get("/vm.counters").1).unwrap();
    let data = &counters["data"];
    assert!(data["write_bytes"].as_u64().unwrap() >= 4096, "{counters}");
    assert!(data["read_ops"].as_u64().unwrap() > 0, "{counters}");
    assert_eq!(data["write_bytes"].as_u64().unwrap() % 4096, 0, "{counters}");
    // The power button stops `blk` cleanly, with the table the disk must hold.
    assert_eq!(api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(30)), Some(0));
    let text = std::fs::read_to_string(&serial).unwrap();
    check_disk_matches_summary(&disk, seed, 1, &text);
}

#[test]
fn rng_and_console_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("rng-console");
    let serial = dir.path("serial.txt");
    let (out, text) = run_to_end(
        &["--cmdline", "workload=rng", "--rng"],
        &serial,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.lines().any(|l| l == "rng: 8192 bytes ok from 00:01.0"), "{text}");
    // A source that gives the same byte forever is caught by the guest.
    let constant = dir.path("constant");
    std::fs::write(&constant, vec![7u8; 1 << 20]).unwrap();
    let src = format!("src={}", constant.display());
    let (out, text) = run_to_end(
        &["--cmdline", "workload=rng", "--rng", &src],
        &serial,
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "a constant source passed:\n{text}");
    assert!(
        text.contains("FAIL rng 00:01.0: the first 4096 bytes are all 0x07"),
        "{text}"
    );

    let console = dir.path("console.txt");
    let console_arg = format!("file={}", console.display());
    let (out, text) = run_to_end(
        &[
            "--cpus",
            "boot=2",
            "--cmdline",
            "workload=hello",
            "--console",
            &console_arg,
        ],
        &serial,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    let line = "hello from covm firmware (2 vCPUs)";
    assert!(text.lines().any(|l| l == line), "the UART line stays:\n{text}");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), format!("{line}\n"));
}

#[test]
fn bad_disk_options_are_refused_by_name() {
    let dir = Scratch::new("blk-bad");
    let disk = image(&dir, "disk.raw", 8);
    let missing = dir.path("missing.raw");
    let d = |extra: &str| disk_option(&disk, extra);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--disk".into(), disk_option(&missing, "")],
            format!("--disk {}: cannot open it", missing.display()),
        ),
        (vec!["--disk".into(), disk_option(&dir.0, "")], "Is a directory".into()),
        (
            vec!["--disk".into(), d(",bogus=1")],
            "--disk: unknown key 'bogus'".into(),
        ),
        (
            vec!["--disk".into(), d(",id=a"), disk_option(&missing, ",id=a")],
            "two devices have the id 'a'".into(),
        ),
        (
            vec!["--disk".into(), "readonly=on".into()],
            "--disk: missing path=".into(),
        ),
        (vec!["--disk".into(), d(",queue_size=100")], "queue_size".into()),
        (vec!["--disk".into(), d(",vhost_user=on")], "vhost_user".into()),
        (vec!["--console".into(), "pty".into()], "--console".into()),
        (
            vec!["--rng".into(), format!("src={}", missing.display())],
            format!("--rng src={}: cannot read it", missing.display()),
        ),
    ];
    for (args, needle) in cases {
        let out = covm().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&needle), "{args:?}: {needle:?} not in {err}");
    }
}

#[test]
fn a_disk_in_use_by_another_covm_is_refused() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("blk-lock");
    let disk = image(&dir, "disk.raw", 8);
    let first_serial = dir.path("first.txt");
    let _first = spawn(
        &["--cmdline", "workload=blk mib=1", "--disk", &disk_option(&disk, "")],
        &first_serial,
    );
    wait_for_serial(&first_serial, Duration::from_secs(60), |t| {
        !blk_heartbeats(t).is_empty()
    });
    let out = covm()
        .args([
            "--cmdline",
            "workload=blk mib=1",
            "--disk",
            &disk_option(&disk, ""),
            "--serial",
            "null",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "a second writer started: {err}");
    assert!(
        err.contains(&format!("disk image {} is locked by another process", disk.display())),
        "{err}"
    );
    // Readers share: a read-only user is refused too while a writer holds it.
    let out = covm()
        .args(["--disk", &disk_option(&disk, ",readonly=on"), "--serial", "null"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("is locked by another process"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// Live migration with disk writes in flight.

/// A source running `blk` (throttled) beside `dirty` on 2 vCPUs; its disk
/// has CH's default id (`_disk0`), which the migration carries.
fn blk_source(dir: &Scratch, disk: &Path, seed: u64) -> (Process, Api, PathBuf) {
    let cmdline = format!("workload=blk mib=4 rate=2 seed={seed} dirty=16 dirty_rate=32");
    covm_named(
        dir,
        "a",
        &[
            "--cpus",
            "boot=2",
            "--memory",
            "size=512M",
            "--cmdline",
            &cmdline,
            "--disk",
            &disk_option(disk, ""),
        ],
    )
}

/// Block writes the guest reported in its last heartbeat in `serial`.
fn blocks_written(serial: &Path) -> u64 {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    blk_heartbeats(&text).last().map_or(0, |b| b.blocks)
}

/// Migrates `src` to `dst` over `url`; the destination continues the
/// heartbeat and the block writes.
fn migrate(src: (&mut Child, &Api, &Path), dst: (&Api, &Path), url: &str) {
    let (src_child, src_api, src_serial) = src;
    let (dst_api, dst_serial) = dst;
    let receive = format!(r#"{{"receiver_url": "{url}"}}"#);
    assert_eq!(dst_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    let send = format!(r#"{{"destination_url": "{url}", "timeout_s": 120, "downtime_ms": 300}}"#);
    assert_eq!(src_api.put("/vm.send-migration", Some(&send)).0, 204);
    assert_eq!(
        wait_exit(src_child, Duration::from_secs(180)),
        Some(0),
        "the source must exit 0"
    );
    let last = *heartbeat_numbers(src_serial).last().expect("heartbeats at the source");
    let written = blocks_written(src_serial);
    let text = wait_for_serial(dst_serial, Duration::from_secs(60), |t| {
        blk_heartbeats(t).iter().filter(|b| b.number > last).count() >= 5
    });
    let after: Vec<_> = blk_heartbeats(&text).into_iter().filter(|b| b.number > last).collect();
    assert!(after.len() >= 5, "the heartbeat stopped after {last}:\n{text}");
    assert!(
        after.last().unwrap().blocks > written,
        "no block was written at the destination:\n{text}"
    );
    no_fail(src_serial);
    no_fail(dst_serial);
}

/// Stops `blk` with the power button and checks the image.
fn power_off_and_check(mut child: Process, api: &Api, serial: &Path, disk: &Path, seed: u64) {
    assert_eq!(api.put("/vm.power-button", None).0, 204);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    let text = std::fs::read_to_string(serial).unwrap();
    check_disk_matches_summary(disk, seed, 4, &text);
}

#[test]
fn blk_beside_dirty_migrates_over_tcp_twice_and_the_disk_matches() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("blk-mig");
    let disk = image(&dir, "disk.raw", 16);
    let seed = fresh_seed();
    let (mut a, a_api, a_serial) = blk_source(&dir, &disk, seed);
    let (mut b, b_api, b_serial) = destination(&dir, "b", &[]);
    let (c, c_api, c_serial) = destination(&dir, "c", &[]);
    wait_heartbeats(&a_serial, 5);
    migrate((&mut a, &a_api, &a_serial), (&b_api, &b_serial), &free_tcp_url());
    let info: serde_json::Value = serde_json::from_str(&b_api.get("/vm.info").1).unwrap();
    assert_eq!(
        info["device_tree"]["_virtio-pci-_disk0"]["pci_bdf"], "0000:00:01.0",
        "{info}"
    );
    migrate((&mut b, &b_api, &b_serial), (&c_api, &c_serial), &free_tcp_url());
    power_off_and_check(c, &c_api, &c_serial, &disk, seed);
}

#[test]
fn killed_destination_leaves_the_source_writing_and_a_retry_succeeds() {
    if !kvm_available() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("blk-mig-kill");
    let disk = image(&dir, "disk.raw", 16);
    let seed = fresh_seed();
    let (mut a, a_api, a_serial) = blk_source(&dir, &disk, seed);
    let (mut doomed, doomed_api, _) = destination(&dir, "doomed", &[]);
    wait_heartbeats(&a_serial, 3);
    let url = free_tcp_url();
    let receive = format!(r#"{{"receiver_url": "{url}"}}"#);
    assert_eq!(doomed_api.put("/vm.receive-migration", Some(&receive)).0, 204);
    // Slowed to 8 MiB/s (covm's max_bandwidth), so that it is still under
    // way when the destination dies: most of the guest is zero pages.
    let send = format!(r#"{{"destination_url": "{url}", "max_bandwidth": {}}}"#, 8 << 20);
    assert_eq!(a_api.put("/vm.send-migration", Some(&send)).0, 204);
    // Kill the destination once pages are flowing.
    a_api.wait_transferred(4 << 20);
    doomed.kill().unwrap();
    let _ = doomed.wait();
    a_api.wait_migration_error();
    // The source still owns its disk and keeps writing it.
    let before = blocks_written(&a_serial);
    let beats = heartbeat_numbers(&a_serial).len();
    wait_heartbeats(&a_serial, beats + 5);
    assert!(
        blocks_written(&a_serial) > before,
        "the source stopped writing its disk"
    );
    no_fail(&a_serial);
    let (fresh, fresh_api, fresh_serial) = destination(&dir, "fresh", &[]);
    migrate(
        (&mut a, &a_api, &a_serial),
        (&fresh_api, &fresh_serial),
        &free_tcp_url(),
    );
    power_off_and_check(fresh, &fresh_api, &fresh_serial, &disk, seed);
    // Nothing torn anywhere on the disk, beyond the region too.
    disk_generations(&disk, seed, 4 * 256).unwrap();
}
