//! The socket device as Cloud Hypervisor's `--vsock cid=N,socket=PATH`
//! gives it (and the API's VmConfig `vsock`): hybrid vsock over a UNIX
//! socket, one per VM.

use super::options::{OptionError, OptionMap};
use std::path::PathBuf;

/// The socket device (CH's `VsockConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 to 2^32 - 1).
    pub cid: u64,
    /// The host side: host processes connect here; a guest's connection
    /// to host port P goes to `<socket>_P`.
    pub socket: PathBuf,
    /// Its id (`_vsock0` when not given, as CH names it).
    pub id: Option<String>,
}

/// CH's `--vsock` keys.
const VSOCK_KEYS: &[&str] = &["cid", "socket", "iommu", "id", "pci_segment"];

/// Checks a context id: 0-2 are reserved, and the upper 32 bits are zero.
pub fn check_cid(cid: u64) -> Result<u64, String> {
    if !(covm_devices::virtio::vsock::MIN_GUEST_CID..=u64::from(u32::MAX)).contains(&cid) {
        return Err(format!(
            "a guest's context id is from {} to {} (0-2 are reserved)",
            covm_devices::virtio::vsock::MIN_GUEST_CID,
            u32::MAX
        ));
    }
    Ok(cid)
}

/// `--vsock cid=N,socket=PATH[,id=ID]`.
pub fn parse_vsock(text: &str) -> Result<VsockConfig, OptionError> {
    let m = OptionMap::parse("vsock", text, VSOCK_KEYS)?;
    if let Some(v) = m.get("iommu").filter(|v| !matches!(*v, "off" | "false")) {
        return Err(m.invalid("iommu", v, "covm has no virtual IOMMU"));
    }
    if let Some(v) = m.get("pci_segment").filter(|v| *v != "0") {
        return Err(m.invalid("pci_segment", v, "covm has one PCI segment, 0"));
    }
    let cid = m
        .get_with("cid", |v| {
            v.parse::<u64>()
                .map_err(|_| "not a number".to_string())
                .and_then(check_cid)
        })?
        .ok_or(OptionError::Missing {
            option: "vsock",
            key: "cid",
        })?;
    let socket = match m.get("socket") {
        Some("") => return Err(m.invalid("socket", "", "needs a path")),
        Some(p) => PathBuf::from(p),
        None => {
            return Err(OptionError::Missing {
                option: "vsock",
                key: "socket",
            })
        }
    };
    let id = m.get_with("id", super::devices::check_id)?;
    Ok(VsockConfig { cid, socket, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_options_are_read_and_bad_ones_named() {
        let v = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.socket.to_str(), v.id), (3, Some("/tmp/v.sock"), None));
        let v = parse_vsock("cid=4294967295,socket=/s,id=chan,iommu=off,pci_segment=0").unwrap();
        assert_eq!(v.id.as_deref(), Some("chan"));
        for (bad, named) in [
            ("socket=/s", "cid"),
            ("cid=3", "socket"),
            ("cid=2,socket=/s", "reserved"),
            ("cid=4294967296,socket=/s", "reserved"),
            ("cid=x,socket=/s", "not a number"),
            ("cid=3,socket=", "needs a path"),
            ("cid=3,socket=/s,iommu=on", "IOMMU"),
            ("cid=3,socket=/s,pci_segment=1", "segment"),
            ("cid=3,socket=/s,port=5", "port"),
        ] {
            let e = parse_vsock(bad).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }
}
