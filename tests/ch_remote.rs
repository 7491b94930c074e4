//! Cloud Hypervisor's own `ch-remote` (v54.0.0, prebuilt) drives the real
//! covm binary unchanged: the whole lifecycle from a VmConfig as CH writes
//! it, live migrations plain and confidential driven on both sides by
//! ch-remote alone, refusals and unsupported subcommands; the event
//! monitor's file follows each. Skips, saying why, where ch-remote is
//! missing.

mod common;
use common::api::*;
use common::ch_remote::{self, events, sequence, wait_event, ChRemote};
use common::owner::Owner;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One test at a time: each runs guests of two vCPUs on this machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// ch-remote and the turn of the calling test, where both KVM and
/// ch-remote are here.
fn setup() -> Option<(std::path::PathBuf, MutexGuard<'static, ()>)> {
    let binary = ch_remote::binary()?;
    kvm_available().then(|| (binary, SERIAL.lock().unwrap_or_else(|p| p.into_inner())))
}

const DIRTY: &str = "workload=dirty mib=16 rate=32";

/// A VmConfig exactly as Cloud Hypervisor v54 wrote it in `vm.info` (see
/// tests/fixtures/ch-vm-config/), with the payload swapped for covm's
/// built-in firmware running `cmdline` and the serial port into `serial`.
fn ch_written_config(cmdline: &str, serial: &Path) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/ch-vm-config/vm-info-created.json"
    );
    let info: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut config = info["config"].clone();
    config["payload"] = serde_json::json!({ "cmdline": cmdline });
    config["serial"] = serde_json::json!({ "mode": "File", "file": serial });
    config["cpus"]["boot_vcpus"] = 2.into();
    config["cpus"]["max_vcpus"] = 2.into();
    config["memory"]["size"] = (256u64 << 20).into();
    config.to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn the_whole_lifecycle_from_a_config_ch_wrote() {
    let Some((binary, _turn)) = setup() else { return };
    let dir = Scratch::new("ch-lifecycle");
    let (serial, events_file) = (dir.path("serial.txt"), dir.path("events.jsonl"));
    let monitor = format!("path={}", events_file.display());
    let (mut covm, api) = start(&dir, &["--event-monitor", &monitor]);
    let ch = ChRemote {
        binary,
        socket: api.socket.clone(),
    };

    let ping = json(&ch.ok(&["ping"]));
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ping["pid"], covm.id());
    let config = dir.path("vm.json");
    std::fs::write(&config, ch_written_config(DIRTY, &serial)).unwrap();
    assert_eq!(ch.ok(&["create", config.to_str().unwrap()]), "");
    let info = json(&ch.ok(&["info"]));
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["config"]["payload"]["cmdline"], DIRTY);
    assert_eq!(ch.ok(&["boot"]), "");
    assert_eq!(json(&ch.ok(&["info"]))["state"], "Running");
    wait_heartbeats_within(&serial, 3, Duration::from_secs(30));

    assert_eq!(ch.ok(&["pause"]), "");
    assert_eq!(json(&ch.ok(&["info"]))["state"], "Paused");
    let paused_at = heartbeats(&serial);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(heartbeats(&serial), paused_at, "the guest ran while paused");
    assert_eq!(ch.ok(&["resume"]), "");
    wait_heartbeats_within(&serial, paused_at + 2, Duration::from_secs(30));
    let counters = json(&ch.ok(&["counters"]));
    assert!(counters["serial"]["tx_bytes"].as_u64().unwrap() > 0, "{counters}");

    assert_eq!(ch.ok(&["reboot"]), "");
    assert_eq!(json(&ch.ok(&["info"]))["state"], "Running");
    assert_eq!(ch.ok(&["shutdown"]), "");
    assert_eq!(json(&ch.ok(&["info"]))["state"], "Shutdown");
    assert_eq!(ch.ok(&["delete"]), "");
    ch.refused(&["info"], "NotFound", "no VM is created");
    // `create -` reads the configuration from standard input.
    let ran = ch.run_with_stdin(&["create", "-"], ch_written_config(DIRTY, &serial).as_bytes());
    assert_eq!(ran.status, Some(0), "{ran:?}");
    assert_eq!(json(&ch.ok(&["info"]))["state"], "Created");
    assert_eq!(ch.ok(&["delete"]), "");
    assert_eq!(ch.ok(&["shutdown-vmm"]), "");
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(20)), Some(0));

    assert_eq!(
        sequence(&events(&events_file)),
        [
            "vmm/starting",
            "vm/booting",
            "vm/booted",
            "vm/pausing",
            "vm/paused",
            "vm/resuming",
            "vm/resumed",
            "vm/rebooting",
            "vm/rebooted",
            "vm/shutdown",
            "vm/deleted",
            "vm/deleted",
            "vmm/shutdown",
        ]
    );
}

#[test]
fn refusals_name_the_field_and_unsupported_subcommands_name_the_endpoint() {
    let Some((binary, _turn)) = setup() else { return };
    let dir = Scratch::new("ch-refusals");
    let serial = dir.path("serial.txt");
    let (_covm, api) = start(&dir, &[]);
    let ch = ChRemote {
        binary,
        socket: api.socket.clone(),
    };
    // Cold plugs covm implements need a created VM first.
    ch.refused(
        &["add-vsock", "cid=3,socket=/tmp/covm-vsock"],
        "NotFound",
        "no VM is created",
    );
    ch.refused(&["add-net", "tap=covmtest0"], "NotFound", "no VM is created");
    // Subcommands covm does not implement: 404 naming the endpoint.
    for (args, endpoint) in [
        (&["add-pmem", "file=/tmp/covm-pmem"][..], "vm.add-pmem"),
        (&["add-fs", "tag=t,socket=/tmp/covm-fs"], "vm.add-fs"),
        (&["remove-device", "disk0"], "vm.remove-device"),
        (&["snapshot", "file:///tmp/covm-snapshot"], "vm.snapshot"),
        (&["restore", "source_url=file:///tmp/covm-snapshot"], "vm.restore"),
        (&["resize", "--cpus", "2"], "vm.resize"),
        (&["nmi"], "vm.nmi"),
    ] {
        ch.refused(
            args,
            "NotFound",
            &format!("{endpoint}: covm does not implement this endpoint"),
        );
    }
    // A configuration asking for what covm cannot honour, field by field.
    let base: Value = json(&ch_written_config(DIRTY, &serial));
    for (pointer, value, needle) in [
        (
            "/rng/src",
            Value::from("/nonexistent/entropy"),
            "--rng src=/nonexistent/entropy: cannot read it",
        ),
        (
            "/rng",
            serde_json::json!({"src": "/dev/urandom", "iommu": true}),
            "field 'rng.iommu' cannot be honoured",
        ),
        ("/watchdog", Value::from(true), "field 'watchdog' cannot be honoured"),
        (
            "/memory/hugepages",
            Value::from(true),
            "field 'memory.hugepages' cannot be honoured",
        ),
        (
            "/cpus/max_phys_bits",
            Value::from(40),
            "field 'cpus.max_phys_bits' cannot be honoured",
        ),
    ] {
        let mut config = base.clone();
        *config.pointer_mut(pointer).unwrap() = value;
        let file = dir.path("refused.json");
        std::fs::write(&file, config.to_string()).unwrap();
        ch.refused(&["create", file.to_str().unwrap()], "BadRequest", needle);
    }
    // A running VM and ch-remote's migration options covm cannot honour
    // (ch-remote itself refuses preserve_source without local).
    let config = dir.path("vm.json");
    std::fs::write(&config, base.to_string()).unwrap();
    ch.ok(&["create", config.to_str().unwrap()]);
    ch.ok(&["boot"]);
    // ch-remote checks some combinations itself (local needs unix:,
    // connections needs tcp:); nothing listens at either URL, and nothing
    // is sent: covm refuses the body first.
    let unix = format!("unix:{}", dir.path("nowhere.sock").display());
    let tcp = "tcp:127.0.0.1:9".to_string();
    // ch-remote checks that a TLS directory holds the three files.
    let tls = dir.path("tls");
    std::fs::create_dir(&tls).unwrap();
    for file in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
        std::fs::write(tls.join(file), "").unwrap();
    }
    let tls_dir = format!(",tls_dir={}", tls.display());
    for (url, extra, needle) in [
        (&unix, ",local=on", "local: local migration"),
        (
            &tcp,
            ",connections=4",
            "connections: covm migrates over one connection, not 4",
        ),
        (&tcp, tls_dir.as_str(), "tls_dir: "),
        (&unix, ",memory_mode=postcopy", "memory_mode: "),
    ] {
        let option = format!("destination_url={url}{extra}");
        ch.refused(&["send-migration", &option], "BadRequest", needle);
    }
    let url = format!("unix:{}", dir.path("nowhere.sock").display());
    ch.refused(
        &["receive-migration", &format!("receiver_url={url}")],
        "Unknown",
        "a VM already exists here",
    );
    // Still serving, the guest untouched.
    wait_heartbeats_within(&serial, 2, Duration::from_secs(30));
    assert_eq!(json(&ch.ok(&["info"]))["state"], "Running");
    ch.ok(&["shutdown-vmm"]);
}

#[test]
fn the_power_button_powers_the_guest_off() {
    let Some((binary, _turn)) = setup() else { return };
    let dir = Scratch::new("ch-power");
    let (serial, events_file) = (dir.path("serial.txt"), dir.path("events.jsonl"));
    let monitor = format!("path={}", events_file.display());
    let (mut covm, api) = start(&dir, &["--event-monitor", &monitor]);
    let ch = ChRemote {
        binary,
        socket: api.socket.clone(),
    };
    let config = dir.path("vm.json");
    std::fs::write(&config, ch_written_config(DIRTY, &serial)).unwrap();
    ch.refused(&["power-button"], "NotFound", "no VM is created");
    ch.ok(&["create", config.to_str().unwrap()]);
    ch.refused(
        &["power-button"],
        "Unknown",
        "cannot press the power button of the VM: it is Created",
    );
    ch.ok(&["boot"]);
    wait_heartbeats_within(&serial, 2, Duration::from_secs(30));
    assert_eq!(ch.ok(&["power-button"]), "");
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.contains("power button pressed: powering off"), "{text}");
    let all = events(&events_file);
    let last: Vec<String> = sequence(&all).into_iter().rev().take(3).collect();
    assert_eq!(last, ["vmm/shutdown", "vm/deleted", "vm/shutdown"]);
    assert_eq!(all[all.len() - 3].properties["reason"], "guest-power-off");
}

/// Migrates a running guest from `src` to `dst` with ch-remote alone,
/// and checks it beats on at the destination and both event files.
/// `attested`: the migration is confidential, so each side reports the
/// peer its agent attested.
fn migrate_with_ch_remote(
    dir: &Scratch,
    (src, src_events): (&mut Process, &ChRemote),
    (dst, dst_serial): (&ChRemote, &Path),
    events_files: (&Path, &Path),
    attested: bool,
) {
    let url = format!("unix:{}", dir.path("migration.sock").display());
    assert_eq!(dst.ok(&["receive-migration", &format!("receiver_url={url}")]), "");
    wait_event(events_files.1, "vm/migration-receive-ready", Duration::from_secs(10));
    let option = format!("destination_url={url},downtime_ms=300,timeout_s=120,timeout_strategy=cancel");
    assert_eq!(src_events.ok(&["send-migration", &option]), "");
    assert_eq!(
        wait_exit(src, Duration::from_secs(120)),
        Some(0),
        "the source exits once committed"
    );
    let beats = heartbeats(dst_serial);
    wait_heartbeats_within(dst_serial, beats + 3, Duration::from_secs(30));
    assert_eq!(json(&dst.ok(&["info"]))["state"], "Running");
    dst.ok(&["shutdown-vmm"]);

    let with_attestation = |names: &[&str], after: &str, attested_event: &str| -> Vec<String> {
        let mut out: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        if attested {
            let at = out.iter().position(|n| n == after).unwrap() + 1;
            out.insert(at, attested_event.to_string());
        }
        out
    };
    let source = sequence(&events(events_files.0));
    assert_eq!(
        source,
        with_attestation(
            &[
                "vmm/starting",
                "vm/booting",
                "vm/booted",
                "vm/migration-started",
                "vm/migration-handshake",
                "vm/migration-precopy",
                "vm/migration-memory-iteration*",
                "vm/migration-stop-and-copy",
                "vm/migration-completing",
                "vm/migration-finished",
                "vm/shutdown",
                "vm/deleted",
                "vmm/shutdown",
            ],
            "vm/migration-handshake",
            "vm/migration-peer-attested",
        )
    );
    let destination = wait_event(events_files.1, "vmm/shutdown", Duration::from_secs(20));
    assert_eq!(
        sequence(&destination),
        with_attestation(
            &[
                "vmm/starting",
                "vm/migration-receive-ready",
                "vm/migration-receive-started",
                "vm/migration-receive-precopy",
                "vm/migration-receive-memory-iteration*",
                "vm/migration-receive-stop-and-copy",
                "vm/migration-receive-completing",
                "vm/resuming",
                "vm/resumed",
                "vm/migration-receive-finished",
                "vm/shutdown",
                "vm/deleted",
                "vmm/shutdown",
            ],
            "vm/migration-receive-started",
            "vm/migration-receive-peer-attested",
        )
    );
}

#[test]
fn a_plain_live_migration_driven_by_ch_remote_alone() {
    let Some((binary, _turn)) = setup() else { return };
    let dir = Scratch::new("ch-migrate");
    let (a_events, b_events) = (dir.path("a.events"), dir.path("b.events"));
    let a_monitor = format!("path={}", a_events.display());
    let (mut a, a_api, a_serial) = covm_named(
        &dir,
        "a",
        &[
            "--cpus",
            "boot=2",
            "--memory",
            "size=256M",
            "--cmdline",
            DIRTY,
            "--event-monitor",
            &a_monitor,
        ],
    );
    let b_monitor = format!("path={}", b_events.display());
    let (_b, b_api, b_serial) = destination(&dir, "b", &["--event-monitor", &b_monitor]);
    wait_heartbeats_within(&a_serial, 3, Duration::from_secs(30));
    let src = ChRemote {
        binary: binary.clone(),
        socket: a_api.socket.clone(),
    };
    let dst = ChRemote {
        binary,
        socket: b_api.socket.clone(),
    };
    migrate_with_ch_remote(&dir, (&mut a, &src), (&dst, &b_serial), (&a_events, &b_events), false);
    no_fail(&b_serial);
}

#[test]
fn a_confidential_live_migration_driven_by_ch_remote_alone() {
    let Some((binary, _turn)) = setup() else { return };
    let owner = Owner::new("ch-confidential", None);
    let dir = &owner.dir;
    let (a_events, b_events) = (dir.path("a.events"), dir.path("b.events"));
    let (mut a, a_api, a_serial) =
        owner.source_with("a", &["--event-monitor", &format!("path={}", a_events.display())]);
    let (_b, b_api, b_serial) = owner.destination("b", &["--event-monitor", &format!("path={}", b_events.display())]);
    wait_heartbeats_within(&a_serial, 3, Duration::from_secs(60));
    let src = ChRemote {
        binary: binary.clone(),
        socket: a_api.socket.clone(),
    };
    let dst = ChRemote {
        binary,
        socket: b_api.socket.clone(),
    };
    migrate_with_ch_remote(dir, (&mut a, &src), (&dst, &b_serial), (&a_events, &b_events), true);
    let attested = events(&a_events)
        .into_iter()
        .find(|e| e.event == "migration-peer-attested")
        .unwrap();
    assert_eq!(attested.properties["platform"], "emulated_cvm");
    assert_eq!(attested.properties["measurement"], owner.measurement.as_str());
    no_fail(&b_serial);
}

#[test]
fn responses_are_framed_as_chs_server_frames_them() {
    // What ch-remote's parser relies on, checked on the raw bytes: no
    // reason phrase, `Content-Length: ` spelled exactly, ASCII bodies, no
    // Content-Length on 204, errors as a list of messages.
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("ch-wire");
    let (_covm, api) = start(&dir, &[]);
    let exchange = |request: &str| -> String {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&api.socket).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert!(answer.is_ascii(), "{}", String::from_utf8_lossy(&answer));
        String::from_utf8(answer).unwrap()
    };
    let ping = exchange("GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    assert!(ping.starts_with("HTTP/1.1 200 \r\n"), "{ping}");
    assert!(ping.contains("\r\nContent-Length: ") && ping.contains("\r\nContent-Type: application/json\r\n"));
    // A body CH's client sends after the headers, for a configuration whose
    // error message holds non-ASCII text (the unknown field's name).
    let body = r#"{"payload": {}, "caf\u00e9": 1}"#.replace("\\u00e9", "é");
    let create = exchange(&format!(
        "PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(create.starts_with("HTTP/1.1 400 \r\n"), "{create}");
    let messages: Vec<String> = serde_json::from_str(create.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(messages[0].contains("unknown field `café`"), "{messages:?}");
    let delete = exchange("PUT /api/v1/vm.delete HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    assert!(delete.starts_with("HTTP/1.1 204 \r\n"), "{delete}");
    assert!(!delete.to_ascii_lowercase().contains("content-length"), "{delete}");
}

#[test]
fn disks_from_a_ch_config_and_add_disk_before_boot() {
    let Some((binary, _turn)) = setup() else { return };
    let dir = Scratch::new("ch-disks");
    let serial = dir.path("serial.txt");
    let (mut covm, api) = start(&dir, &[]);
    let ch = ChRemote {
        binary,
        socket: api.socket.clone(),
    };
    let (root, data) = (dir.path("root.raw"), dir.path("data.raw"));
    for image in [&root, &data] {
        std::fs::File::create(image).unwrap().set_len(8 << 20).unwrap();
    }
    let seed = common::blk::fresh_seed();
    let mut config: Value = json(&ch_written_config(&format!("workload=blk mib=1 seed={seed}"), &serial));
    // A disk as CH's own `--disk path=...,id=root` writes it in its VmConfig.
    config["disks"] = serde_json::json!([{
        "path": root, "readonly": false, "direct": false, "iommu": false,
        "num_queues": 1, "queue_size": 128, "vhost_user": false, "id": "root",
        "pci_segment": 0, "serial": null, "rate_limit_group": null, "queue_affinity": null,
        "backing_files": false, "sparse": true, "image_type": "Raw"
    }]);
    let file = dir.path("vm.json");
    std::fs::write(&file, config.to_string()).unwrap();
    assert_eq!(ch.ok(&["create", file.to_str().unwrap()]), "");
    // Cold plug: the disk joins the configuration (CH answers 204 before boot).
    let option = format!("path={},id=data", data.display());
    assert_eq!(ch.ok(&["add-disk", &option]), "");
    // 409 (CH answers 500); CH's client has no name for 409 but shows the
    // message.
    ch.refused(
        &["add-disk", &option],
        "Unknown",
        "a device with the id 'data' already exists",
    );
    let missing = format!("path={}", dir.path("missing.raw").display());
    ch.refused(&["add-disk", &missing], "BadRequest", "cannot open it");
    let info = json(&ch.ok(&["info"]));
    let ids: Vec<&str> = info["config"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["root", "data"], "{info}");
    assert_eq!(ch.ok(&["boot"]), "");
    let text = wait_for_serial(&serial, Duration::from_secs(30), |t| {
        common::blk::blk_heartbeats(t).len() >= 3
    });
    assert!(text.contains("blk: 1 MiB of the 8 MiB disk 00:01.0"), "{text}");
    let info = json(&ch.ok(&["info"]));
    assert_eq!(
        info["device_tree"]["_virtio-pci-root"]["pci_bdf"], "0000:00:01.0",
        "{info}"
    );
    assert_eq!(
        info["device_tree"]["_virtio-pci-data"]["pci_bdf"], "0000:00:02.0",
        "{info}"
    );
    let counters = json(&ch.ok(&["counters"]));
    assert!(counters["root"]["write_bytes"].as_u64().unwrap() > 0, "{counters}");
    assert_eq!(counters["data"]["write_bytes"], 0, "{counters}");
    // A booted VM: adding a disk would be a hot plug.
    let more = format!("path={},id=more", dir.path("data.raw").display());
    ch.refused(&["add-disk", &more], "Unknown", "would be a hot plug");
    assert_eq!(ch.ok(&["power-button"]), "");
    wait_for_serial(&serial, Duration::from_secs(30), |t| t.contains("blk: stopped"));
    // The guest's power-off ends covm (as CH ends on a guest shutdown).
    assert_eq!(wait_exit(&mut covm, Duration::from_secs(20)), Some(0));
    // Read again now that covm is gone: the stop line may have been caught
    // half written (the UART writes a byte at a time).
    let text = std::fs::read_to_string(&serial).unwrap();
    common::blk::check_disk_matches_summary(&root, seed, 1, &text);
}
