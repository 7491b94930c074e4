//! The VM's virtio devices as Cloud Hypervisor's options give them:
//! `--disk`, `--console`, `--rng` (`--net` and `--vsock` in their own
//! modules) (and the same fields of the API's
//! VmConfig), checked before anything is created.

use super::options::{parse_toggle, OptionError, OptionMap};
use std::path::PathBuf;

/// A disk (CH's `DiskConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// The guest may not write it.
    pub readonly: bool,
    /// Open it with O_DIRECT (no host page cache).
    pub direct: bool,
    /// Its id (`_diskN` when not given, as CH names them).
    pub id: Option<String>,
    /// Request queues.
    pub num_queues: u16,
    /// Entries per queue.
    pub queue_size: u16,
    /// What `VIRTIO_BLK_T_GET_ID` answers (CH's `serial`), at most 20 bytes.
    pub serial: Option<String>,
}

/// CH's default queue count and size.
pub const DEFAULT_NUM_QUEUES: u16 = 1;
/// CH's default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 128;
/// Most request queues a disk gets.
pub const MAX_NUM_QUEUES: u16 = 16;
/// Largest queue a disk gets.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Where the virtio console's output goes (`--console`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleMode {
    /// No virtio console (covm's default: `--serial` is the console).
    #[default]
    Off,
    /// A console whose output is discarded.
    Null,
    /// covm's standard output (and standard input as the guest's input).
    Tty,
    /// A file, created or truncated.
    File(PathBuf),
}

/// The entropy device (CH's `RngConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngConfig {
    /// The host source read for the guest.
    pub src: PathBuf,
}

/// CH's default entropy source.
pub const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";

/// CH's `--disk` keys; those covm cannot honour are refused by name.
const DISK_KEYS: &[&str] = &[
    "path",
    "readonly",
    "direct",
    "iommu",
    "queue_size",
    "num_queues",
    "vhost_user",
    "socket",
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
    "id",
    "_disable_io_uring",
    "_disable_aio",
    "pci_segment",
    "serial",
    "rate_limit_group",
    "queue_affinity",
    "image_type",
    "sparse",
    "backing_files",
];

/// `--disk path=FILE[,readonly=on][,direct=on][,id=ID][,num_queues=N][,queue_size=N][,serial=S]`.
pub fn parse_disk(text: &str) -> Result<DiskConfig, OptionError> {
    let m = OptionMap::parse("disk", text, DISK_KEYS)?;
    let path = match m.get("path") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        Some(p) => return Err(m.invalid("path", p, "needs a file")),
        None => {
            return Err(OptionError::Missing {
                option: "disk",
                key: "path",
            })
        }
    };
    for (key, why) in [
        ("vhost_user", "covm has no vhost-user backend"),
        ("socket", "covm has no vhost-user backend"),
        ("iommu", "covm has no virtual IOMMU"),
        ("rate_limit_group", "covm has no I/O rate limiter"),
        ("queue_affinity", "covm serves a disk's queues on one thread"),
    ] {
        if let Some(v) = m.get(key).filter(|v| !matches!(*v, "off" | "false" | "")) {
            return Err(m.invalid(key, v, why));
        }
    }
    refuse_rate_limiter(&m)?;
    if let Some(v) = m.get("pci_segment").filter(|v| *v != "0") {
        return Err(m.invalid("pci_segment", v, "covm has one PCI segment, 0"));
    }
    if let Some(v) = m.get("image_type").filter(|v| !v.eq_ignore_ascii_case("raw")) {
        return Err(m.invalid("image_type", v, "covm reads raw images only"));
    }
    if let Some(v) = m.get("backing_files").filter(|v| !matches!(*v, "off" | "false")) {
        return Err(m.invalid("backing_files", v, "a raw image has no backing files"));
    }
    let toggle = |key| m.get_with(key, parse_toggle).map(|v| v.unwrap_or(false));
    let (readonly, direct) = (toggle("readonly")?, toggle("direct")?);
    m.get_with("sparse", parse_toggle)?;
    m.get_with("_disable_io_uring", parse_toggle)?;
    m.get_with("_disable_aio", parse_toggle)?;
    let num_queues = m
        .get_with("num_queues", |v| match v.parse::<u16>() {
            Ok(n) if (1..=MAX_NUM_QUEUES).contains(&n) => Ok(n),
            _ => Err(format!("must be 1 to {MAX_NUM_QUEUES}")),
        })?
        .unwrap_or(DEFAULT_NUM_QUEUES);
    let queue_size = m
        .get_with("queue_size", |v| match v.parse::<u16>() {
            Ok(n) if n.is_power_of_two() && (2..=MAX_QUEUE_SIZE).contains(&n) => Ok(n),
            _ => Err(format!("must be a power of two from 2 to {MAX_QUEUE_SIZE}")),
        })?
        .unwrap_or(DEFAULT_QUEUE_SIZE);
    let id = m.get_with("id", check_id)?;
    let serial = m.get_with("serial", |v| {
        if v.len() > 20 {
            Err("at most 20 bytes (virtio-blk's device ID)".into())
        } else {
            Ok(v.to_string())
        }
    })?;
    Ok(DiskConfig {
        path,
        readonly,
        direct,
        id,
        num_queues,
        queue_size,
        serial,
    })
}

/// An id in a VmConfig, where Cloud Hypervisor's own (`_disk0`, `_net1`,
/// as its `vm.info` writes them, and as a migration carries them) are
/// accepted besides [`check_id`]'s.
pub fn check_config_id(id: &str, auto_prefix: &str) -> Result<String, String> {
    match id.strip_prefix(auto_prefix) {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Ok(id.to_string()),
        _ => check_id(id),
    }
}

/// CH's rate-limiter keys of `--disk` and `--net`, refused by name.
pub fn refuse_rate_limiter(m: &OptionMap) -> Result<(), OptionError> {
    for key in [
        "bw_size",
        "bw_one_time_burst",
        "bw_refill_time",
        "ops_size",
        "ops_one_time_burst",
        "ops_refill_time",
    ] {
        if let Some(v) = m.get(key) {
            return Err(m.invalid(key, v, "covm has no I/O rate limiter"));
        }
    }
    Ok(())
}

/// A device id: non-empty, printable, not starting with `_` (CH keeps
/// `_` for the ids it makes up).
pub fn check_id(id: &str) -> Result<String, String> {
    if id.is_empty() || id.starts_with('_') || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err("an id is printable ASCII without spaces and does not start with '_'".into());
    }
    Ok(id.to_string())
}

/// `--console off|null|tty|file=PATH`.
pub fn parse_console(text: &str) -> Result<ConsoleMode, OptionError> {
    let m = OptionMap::parse(
        "console",
        text,
        &["off", "null", "tty", "file", "pty", "socket", "iommu"],
    )?;
    if let Some(v) = m.get("iommu").filter(|v| !matches!(*v, "off" | "false")) {
        return Err(m.invalid("iommu", v, "covm has no virtual IOMMU"));
    }
    let modes: Vec<&str> = ["off", "null", "tty", "file", "pty", "socket"]
        .into_iter()
        .filter(|k| m.has(k))
        .collect();
    match modes[..] {
        ["off"] => Ok(ConsoleMode::Off),
        ["null"] => Ok(ConsoleMode::Null),
        ["tty"] => Ok(ConsoleMode::Tty),
        ["file"] => match m.get("file").unwrap_or_default() {
            "" => Err(m.invalid("file", "", "needs a path")),
            path => Ok(ConsoleMode::File(path.into())),
        },
        ["pty" | "socket"] => Err(m.invalid(
            "mode",
            text,
            "covm's virtio console writes to off, null, tty or file=PATH",
        )),
        _ => Err(m.invalid("mode", text, "give exactly one of off, null, tty, file=PATH")),
    }
}

/// `--rng src=PATH`.
pub fn parse_rng(text: &str) -> Result<RngConfig, OptionError> {
    let m = OptionMap::parse("rng", text, &["src", "iommu"])?;
    if let Some(v) = m.get("iommu").filter(|v| !matches!(*v, "off" | "false")) {
        return Err(m.invalid("iommu", v, "covm has no virtual IOMMU"));
    }
    let src = match m.get("src") {
        Some("") => return Err(m.invalid("src", "", "needs a path")),
        Some(src) => src,
        None => DEFAULT_RNG_SOURCE,
    };
    Ok(RngConfig { src: src.into() })
}

/// The devices of a VM and their ids: the disks' (given or `_diskN`),
/// the network interfaces' (given or `_netN`), `__console`, `__rng`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicesConfig {
    /// Disks, in order.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces, in order.
    pub nets: Vec<super::net::NetConfig>,
    /// The virtio console.
    pub console: ConsoleMode,
    /// The entropy device.
    pub rng: Option<RngConfig>,
    /// The socket device (one at most, as in CH).
    pub vsock: Option<super::vsock::VsockConfig>,
}

/// Why a device set cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// An option string was refused.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// Two devices with one id.
    #[error("two devices have the id '{0}'")]
    DuplicateId(String),
    /// A disk image that cannot be opened as asked.
    #[error("--disk {}: {reason}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An entropy source that cannot be read.
    #[error("--rng src={}: cannot read it: {source}", path.display())]
    RngSource {
        /// The source.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DevicesConfig {
    /// The id of disk `index` (its own, or CH's `_disk<index>`).
    pub fn disk_id(&self, index: usize) -> String {
        self.disks[index].id.clone().unwrap_or_else(|| format!("_disk{index}"))
    }

    /// The id of network interface `index` (its own, or CH's `_net<index>`).
    pub fn net_id(&self, index: usize) -> String {
        self.nets[index].id.clone().unwrap_or_else(|| format!("_net{index}"))
    }

    /// The socket device's id (its own, or CH's `_vsock0`).
    pub fn vsock_id(&self) -> Option<String> {
        let v = self.vsock.as_ref()?;
        Some(v.id.clone().unwrap_or_else(|| "_vsock0".into()))
    }

    /// Whether there is any device.
    pub fn any(&self) -> bool {
        !self.disks.is_empty()
            || !self.nets.is_empty()
            || self.console != ConsoleMode::Off
            || self.rng.is_some()
            || self.vsock.is_some()
    }

    /// The device options given, for messages (`--disk, --rng`).
    pub fn named(&self) -> String {
        let mut names = Vec::new();
        if !self.disks.is_empty() {
            names.push("--disk");
        }
        if !self.nets.is_empty() {
            names.push("--net");
        }
        if self.console != ConsoleMode::Off {
            names.push("--console");
        }
        if self.rng.is_some() {
            names.push("--rng");
        }
        if self.vsock.is_some() {
            names.push("--vsock");
        }
        names.join(", ")
    }

    /// Checks the set as a whole and against the host: unique ids, images
    /// that exist and open as asked (read-write unless readonly), a
    /// readable entropy source; none on a confidential VM.
    pub fn check(&self) -> Result<(), DevicesError> {
        let mut ids: Vec<String> = (0..self.disks.len()).map(|i| self.disk_id(i)).collect();
        ids.extend((0..self.nets.len()).map(|i| self.net_id(i)));
        ids.extend(self.vsock_id());
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(DevicesError::DuplicateId(pair[0].clone()));
        }
        for disk in &self.disks {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(!disk.readonly)
                .open(&disk.path);
            let file = opened.map_err(|e| DevicesError::Image {
                path: disk.path.clone(),
                reason: format!(
                    "cannot open it {}: {e}",
                    if disk.readonly {
                        "for reading"
                    } else {
                        "for reading and writing (readonly=on opens it read-only)"
                    }
                ),
            })?;
            let meta = file.metadata().map_err(|e| DevicesError::Image {
                path: disk.path.clone(),
                reason: e.to_string(),
            })?;
            if meta.is_dir() {
                return Err(DevicesError::Image {
                    path: disk.path.clone(),
                    reason: "is a directory, not a raw disk image".into(),
                });
            }
        }
        if let Some(rng) = &self.rng {
            std::fs::File::open(&rng.src).map_err(|source| DevicesError::RngSource {
                path: rng.src.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse_as_ch_writes_them() {
        let d =
            parse_disk("path=/tmp/a.img,readonly=on,direct=on,id=root,num_queues=2,queue_size=256,serial=S1").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/tmp/a.img".into(),
                readonly: true,
                direct: true,
                id: Some("root".into()),
                num_queues: 2,
                queue_size: 256,
                serial: Some("S1".into()),
            }
        );
        let d = parse_disk("path=/tmp/b.img,iommu=off,image_type=raw,sparse=on,pci_segment=0").unwrap();
        assert_eq!((d.num_queues, d.queue_size, d.readonly), (1, 128, false));
    }

    #[test]
    fn disk_refusals_name_the_key() {
        for (text, expected) in [
            ("readonly=on", "--disk: missing path="),
            ("path=", "invalid path=: needs a file"),
            ("path=/a,num_queues=0", "invalid num_queues=0: must be 1 to 16"),
            (
                "path=/a,queue_size=100",
                "invalid queue_size=100: must be a power of two",
            ),
            (
                "path=/a,vhost_user=on",
                "invalid vhost_user=on: covm has no vhost-user backend",
            ),
            ("path=/a,iommu=on", "invalid iommu=on"),
            (
                "path=/a,bw_size=100",
                "invalid bw_size=100: covm has no I/O rate limiter",
            ),
            ("path=/a,pci_segment=1", "invalid pci_segment=1"),
            (
                "path=/a,image_type=qcow2",
                "invalid image_type=qcow2: covm reads raw images only",
            ),
            ("path=/a,id=_mine", "invalid id=_mine"),
            ("path=/a,serial=123456789012345678901", "invalid serial="),
            ("path=/a,bogus=1", "unknown key 'bogus'"),
            ("path=/a,readonly=maybe", "invalid readonly=maybe"),
        ] {
            let e = parse_disk(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn console_and_rng() {
        assert_eq!(parse_console("off").unwrap(), ConsoleMode::Off);
        assert_eq!(parse_console("null").unwrap(), ConsoleMode::Null);
        assert_eq!(parse_console("tty").unwrap(), ConsoleMode::Tty);
        assert_eq!(
            parse_console("file=/tmp/c").unwrap(),
            ConsoleMode::File("/tmp/c".into())
        );
        assert!(parse_console("pty")
            .unwrap_err()
            .to_string()
            .contains("off, null, tty or file=PATH"));
        assert!(parse_console("null,tty")
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        assert!(parse_console("file=").unwrap_err().to_string().contains("needs a path"));
        assert_eq!(parse_rng("src=/dev/random").unwrap().src, PathBuf::from("/dev/random"));
        assert_eq!(parse_rng("").unwrap().src, PathBuf::from("/dev/urandom"));
        assert!(parse_rng("src=/x,iommu=on").unwrap_err().to_string().contains("iommu"));
    }

    #[test]
    fn the_set_is_checked_against_the_host() {
        let dir = std::env::temp_dir().join(format!("covm-devcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("a.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let disk = |id: Option<&str>| DiskConfig {
            path: image.clone(),
            readonly: false,
            direct: false,
            id: id.map(String::from),
            num_queues: 1,
            queue_size: 128,
            serial: None,
        };
        let set = DevicesConfig {
            disks: vec![disk(None), disk(Some("data"))],
            ..Default::default()
        };
        set.check().unwrap();
        assert_eq!((set.disk_id(0), set.disk_id(1)), ("_disk0".into(), "data".into()));
        let twice = DevicesConfig {
            disks: vec![disk(Some("a")), disk(Some("a"))],
            ..Default::default()
        };
        assert_eq!(twice.check().unwrap_err().to_string(), "two devices have the id 'a'");
        let missing = DevicesConfig {
            disks: vec![DiskConfig {
                path: dir.join("nope.img"),
                ..disk(None)
            }],
            ..Default::default()
        };
        let e = missing.check().unwrap_err().to_string();
        assert!(
            e.contains("nope.img: cannot open it") && e.contains("No such file"),
            "{e}"
        );
        let dirdisk = DevicesConfig {
            disks: vec![DiskConfig {
                path: dir.clone(),
                readonly: true,
                ..disk(None)
            }],
            ..Default::default()
        };
        assert!(dirdisk.check().unwrap_err().to_string().contains("is a directory"));
        let rng = DevicesConfig {
            rng: Some(RngConfig { src: dir.join("none") }),
            ..Default::default()
        };
        assert!(rng.check().unwrap_err().to_string().contains("--rng src="));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
