//! CH's `VsockConfig` in VmConfig's `vsock` and `vm.add-vsock`'s body,
//! read into covm's [`VsockConfig`] with the command line's checks.

use crate::api::ch_defaults;
use crate::config::vsock::check_cid;
use crate::config::VsockConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// CH's `VsockConfig` (unknown fields land in `other` and are refused there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VsockJson {
    /// The guest's context id.
    pub cid: u64,
    /// The host side's UNIX socket.
    pub socket: PathBuf,
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// CH's fields covm meets only at their defaults, kept to name them.
    #[serde(flatten, skip_serializing)]
    pub other: serde_json::Map<String, Value>,
}

/// CH's fields beyond those covm reads, and why covm refuses any but
/// their default.
const VSOCK_OTHER: &[(&str, &str)] = &[
    ("iommu", "covm has no virtual IOMMU"),
    ("pci_segment", "covm has one PCI segment, 0"),
    ("pci_device_id", "covm places devices on its bus itself"),
];

/// The device from its JSON; `at` names it in errors (`vsock`).
pub fn vsock_from_json(json: VsockJson, at: &str) -> Result<VsockConfig, String> {
    ch_defaults::refuse_other_fields(&json.other, VSOCK_OTHER, (at, "VmConfig"), |_, _| false)?;
    let cid = check_cid(json.cid).map_err(|e| format!("{at}.cid={}: {e}", json.cid))?;
    if json.socket.as_os_str().is_empty() {
        return Err(format!("{at}.socket: needs a path"));
    }
    let id = json
        .id
        .map(|id| crate::config::devices::check_config_id(&id, "_vsock").map_err(|e| format!("{at}.id={id}: {e}")))
        .transpose()?;
    Ok(VsockConfig {
        cid,
        socket: json.socket,
        id,
    })
}

/// The device as CH's JSON (for `vm.info` and a migration).
pub fn vsock_to_json(vsock: &VsockConfig, id: String) -> VsockJson {
    VsockJson {
        cid: vsock.cid,
        socket: vsock.socket.clone(),
        id: Some(id),
        other: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vsock(v: Value) -> Result<VsockConfig, String> {
        vsock_from_json(serde_json::from_value(v).map_err(|e| e.to_string())?, "vsock")
    }

    #[test]
    fn ch_vsock_json_is_read_and_bad_fields_named() {
        let v = vsock(json!({"cid": 3, "socket": "/tmp/v.sock", "iommu": false, "id": "_vsock0"})).unwrap();
        assert_eq!((v.cid, v.id.as_deref()), (3, Some("_vsock0")));
        let back = serde_json::to_value(vsock_to_json(&v, "_vsock0".into())).unwrap();
        assert_eq!(back, json!({"cid": 3, "socket": "/tmp/v.sock", "id": "_vsock0"}));
        for (bad, named) in [
            (json!({"cid": 2, "socket": "/s"}), "vsock.cid=2"),
            (json!({"cid": 3, "socket": ""}), "vsock.socket"),
            (json!({"cid": 3, "socket": "/s", "iommu": true}), "vsock.iommu"),
            (json!({"cid": 3, "socket": "/s", "port": 1}), "vsock.port"),
            (json!({"cid": 3, "socket": "/s", "id": "_x"}), "vsock.id"),
        ] {
            let e = vsock(bad.clone()).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
        }
        assert!(vsock(json!({"socket": "/s"})).unwrap_err().contains("cid"));
    }
}
