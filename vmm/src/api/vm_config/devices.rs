//! CH's device sections of `VmConfig` (`disks`, `net`, `console`, `rng`) and
//! `vm.add-disk`'s `DiskConfig`, read into covm's [`DevicesConfig`] with
//! the command line's checks, each refusal naming the JSON field.

use super::net::{net_from_json, NetJson};
use super::{ConsoleJson, ConsoleMode as ChConsoleMode};
use crate::api::ch_defaults;
use crate::config::devices::{
    check_config_id, ConsoleMode, DevicesConfig, DiskConfig, RngConfig, DEFAULT_NUM_QUEUES, DEFAULT_QUEUE_SIZE,
    MAX_NUM_QUEUES, MAX_QUEUE_SIZE,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// CH's `DiskConfig` (unknown fields land in `other` and are refused there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskJson {
    /// The raw image.
    pub path: PathBuf,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
    /// O_DIRECT.
    #[serde(default)]
    pub direct: bool,
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Request queues (CH's default 1).
    #[serde(default = "default_num_queues")]
    pub num_queues: u64,
    /// Entries per queue (CH's default 128).
    #[serde(default = "default_queue_size")]
    pub queue_size: u64,
    /// The device ID the guest reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// CH's fields covm meets only at their defaults, kept to name them.
    #[serde(flatten, skip_serializing)]
    pub other: serde_json::Map<String, Value>,
}

fn default_num_queues() -> u64 {
    u64::from(DEFAULT_NUM_QUEUES)
}

fn default_queue_size() -> u64 {
    u64::from(DEFAULT_QUEUE_SIZE)
}

/// CH's `DiskConfig` fields beyond those covm reads, and why covm refuses
/// any but their default.
const DISK_OTHER: &[(&str, &str)] = &[
    ("iommu", "covm has no virtual IOMMU"),
    ("vhost_user", "covm has no vhost-user backend"),
    ("vhost_socket", "covm has no vhost-user backend"),
    ("rate_limiter_config", "covm has no I/O rate limiter"),
    ("rate_limit_group", "covm has no I/O rate limiter"),
    ("pci_segment", "covm has one PCI segment, 0"),
    ("pci_device_id", "covm places devices itself"),
    ("queue_affinity", "covm serves a disk's queues on one thread"),
    ("backing_files", "a raw image has no backing files"),
    // CH's default is true; covm leaves holes as the file has them either way.
    ("sparse", ""),
    ("image_type", "covm reads raw images only"),
    // Both granularities give what covm's whole-file lock gives.
    ("lock_granularity", ""),
    // ch-remote sends both (CH's document omits them): covm uses neither
    // io_uring nor AIO (docs/devices.md), so either value is honoured.
    ("disable_io_uring", ""),
    ("disable_aio", ""),
];

/// CH's `RngConfig` (unknown fields land in `other` and are refused there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RngJson {
    /// The host source.
    pub src: PathBuf,
    /// Behind an IOMMU (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu: Option<bool>,
    /// CH's placement fields, kept to check them.
    #[serde(flatten, skip_serializing)]
    pub other: serde_json::Map<String, Value>,
}

/// One disk from its JSON; `at` names it in errors (`disks[0]`).
pub fn disk_from_json(json: DiskJson, at: &str) -> Result<DiskConfig, String> {
    ch_defaults::refuse_other_fields(&json.other, DISK_OTHER, (at, "DiskConfig"), |key, value| {
        match (key, value) {
            ("sparse" | "disable_io_uring" | "disable_aio", Value::Bool(_)) | ("lock_granularity", _) => true,
            // "Unknown" is CH's default: the format is probed (covm: raw).
            ("image_type", Value::String(t)) => t == "Raw" || t == "Unknown",
            _ => false,
        }
    })?;
    if !(1..=u64::from(MAX_NUM_QUEUES)).contains(&json.num_queues) {
        return Err(format!(
            "{at}.num_queues={} must be 1 to {MAX_NUM_QUEUES}",
            json.num_queues
        ));
    }
    let queue_size = json.queue_size;
    if !queue_size.is_power_of_two() || !(2..=u64::from(MAX_QUEUE_SIZE)).contains(&queue_size) {
        return Err(format!(
            "{at}.queue_size={queue_size} must be a power of two from 2 to {MAX_QUEUE_SIZE}"
        ));
    }
    if json.path.as_os_str().is_empty() {
        return Err(format!("{at}.path is empty"));
    }
    let id = json
        .id
        .map(|id| check_config_id(&id, "_disk").map_err(|e| format!("{at}.id={id}: {e}")))
        .transpose()?;
    if let Some(serial) = json.serial.as_ref().filter(|s| s.len() > 20) {
        return Err(format!(
            "{at}.serial={serial}: at most 20 bytes (virtio-blk's device ID)"
        ));
    }
    Ok(DiskConfig {
        path: json.path,
        readonly: json.readonly,
        direct: json.direct,
        id,
        num_queues: json.num_queues as u16,
        queue_size: queue_size as u16,
        serial: json.serial,
    })
}

/// A disk as CH's JSON (for `vm.info`).
pub fn disk_to_json(disk: &DiskConfig, id: String) -> DiskJson {
    DiskJson {
        path: disk.path.clone(),
        readonly: disk.readonly,
        direct: disk.direct,
        id: Some(id),
        num_queues: u64::from(disk.num_queues),
        queue_size: u64::from(disk.queue_size),
        serial: disk.serial.clone(),
        other: Default::default(),
    }
}

/// The entropy device from its JSON.
pub fn rng_from_json(json: RngJson) -> Result<RngConfig, String> {
    for (key, value) in &json.other {
        match key.as_str() {
            "id" | "pci_segment" | "pci_device_id" => {
                ch_defaults::refuse_unless_default(&format!("rng.{key}"), value, "covm names and places the device")?
            }
            _ => return Err(format!("invalid VmConfig: unknown field `rng.{key}`")),
        }
    }
    if json.iommu == Some(true) {
        return Err("field 'rng.iommu' cannot be honoured: covm has no virtual IOMMU".into());
    }
    if json.src.as_os_str().is_empty() {
        return Err("rng.src is empty".into());
    }
    Ok(RngConfig { src: json.src })
}

/// The virtio console from its JSON (CH's default, absent, is `Tty`).
pub fn console_from_json(json: Option<ConsoleJson>) -> Result<ConsoleMode, String> {
    let Some(c) = json else {
        return Ok(ConsoleMode::Off);
    };
    super::other_keys("console", &c.placement, super::CH_CONSOLE_KEYS, &[])?;
    if c.iommu == Some(true) {
        return Err("field 'console.iommu' cannot be honoured: covm has no virtual IOMMU".into());
    }
    Ok(match c.mode {
        ChConsoleMode::Off => ConsoleMode::Off,
        ChConsoleMode::Null => ConsoleMode::Null,
        ChConsoleMode::Tty => ConsoleMode::Tty,
        ChConsoleMode::File => ConsoleMode::File(c.file.ok_or("console.mode File needs console.file")?),
        other => {
            return Err(format!(
                "console.mode {other:?} is not supported (use Off, Null, Tty or File)"
            ))
        }
    })
}

/// The virtio console as CH's JSON.
pub fn console_to_json(mode: &ConsoleMode) -> ConsoleJson {
    let (mode, file) = match mode {
        ConsoleMode::Off => (ChConsoleMode::Off, None),
        ConsoleMode::Null => (ChConsoleMode::Null, None),
        ConsoleMode::Tty => (ChConsoleMode::Tty, None),
        ConsoleMode::File(f) => (ChConsoleMode::File, Some(f.clone())),
    };
    ConsoleJson {
        mode,
        file,
        socket: None,
        iommu: None,
        placement: Default::default(),
    }
}

/// The device fields of a `vm.create` body.
#[derive(Default)]
pub struct DevicesJson {
    /// `disks`.
    pub disks: Option<Vec<DiskJson>>,
    /// `net`.
    pub nets: Option<Vec<NetJson>>,
    /// `console`.
    pub console: Option<ConsoleJson>,
    /// `rng`.
    pub rng: Option<RngJson>,
    /// `vsock`.
    pub vsock: Option<super::vsock::VsockJson>,
}

/// The devices of a `vm.create` body, checked as the command line's are.
pub fn devices_from_json(json: DevicesJson) -> Result<DevicesConfig, String> {
    let DevicesJson {
        disks,
        nets,
        console,
        rng,
        vsock,
    } = json;
    let disks = disks
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, d)| disk_from_json(d, &format!("disks[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let nets = nets
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, n)| net_from_json(n, &format!("net[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let console = console_from_json(console)?;
    let rng = rng.map(rng_from_json).transpose()?;
    let vsock = vsock.map(|v| super::vsock::vsock_from_json(v, "vsock")).transpose()?;
    let devices = DevicesConfig {
        disks,
        nets,
        console,
        rng,
        vsock,
    };
    devices.check().map_err(|e| e.to_string())?;
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disk(v: Value) -> Result<DiskConfig, String> {
        disk_from_json(serde_json::from_value(v).map_err(|e| e.to_string())?, "disks[0]")
    }

    #[test]
    fn a_disk_as_ch_writes_it() {
        let d = disk(
            json!({"path": "/tmp/x.img", "readonly": false, "direct": false, "iommu": false,
            "num_queues": 1, "queue_size": 128, "vhost_user": false, "id": "_disk0x", "pci_segment": 0,
            "sparse": true, "image_type": "Raw", "backing_files": false}),
        );
        let e = d.unwrap_err();
        assert!(e.contains("disks[0].id=_disk0x"), "{e}");
        // CH's own ids, as its vm.info and a migration carry them.
        let d = disk(json!({"path": "/tmp/x.img", "id": "_disk3"})).unwrap();
        assert_eq!(d.id.as_deref(), Some("_disk3"));
        let d = disk(
            json!({"path": "/tmp/x.img", "num_queues": 2, "queue_size": 64, "sparse": false,
            "lock_granularity": "ByteRange", "serial": "abc"}),
        )
        .unwrap();
        assert_eq!((d.num_queues, d.queue_size, d.serial.as_deref()), (2, 64, Some("abc")));
    }

    #[test]
    fn refusals_name_the_field() {
        for (v, expected) in [
            (json!({"path": "/a", "vhost_user": true}), "disks[0].vhost_user"),
            (
                json!({"path": "/a", "num_queues": 0}),
                "disks[0].num_queues=0 must be 1 to 16",
            ),
            (
                json!({"path": "/a", "queue_size": 3}),
                "disks[0].queue_size=3 must be a power of two",
            ),
            (json!({"path": "/a", "image_type": "Qcow2"}), "disks[0].image_type"),
            (json!({"path": "/a", "pci_segment": 1}), "disks[0].pci_segment"),
            (json!({"path": "/a", "bogus": 1}), "unknown field `disks[0].bogus`"),
            (json!({"path": ""}), "disks[0].path is empty"),
        ] {
            let e = disk(v.clone()).unwrap_err();
            assert!(e.contains(expected), "{v}: {e}");
        }
        let rng: RngJson = serde_json::from_value(json!({"src": "/dev/urandom", "iommu": true})).unwrap();
        assert!(rng_from_json(rng).unwrap_err().contains("rng.iommu"));
        let rng: RngJson = serde_json::from_value(json!({"src": "/dev/urandom", "pci_segment": 2})).unwrap();
        assert!(rng_from_json(rng).unwrap_err().contains("rng.pci_segment"));
    }

    #[test]
    fn ch_defaults_give_a_console_and_an_rng() {
        let tty: ConsoleJson = serde_json::from_value(json!({"mode": "Tty"})).unwrap();
        let rng: RngJson = serde_json::from_value(json!({"src": "/dev/urandom"})).unwrap();
        let d = devices_from_json(DevicesJson {
            console: Some(tty),
            rng: Some(rng),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.console, ConsoleMode::Tty);
        assert_eq!(d.rng.unwrap().src, PathBuf::from("/dev/urandom"));
    }
}
