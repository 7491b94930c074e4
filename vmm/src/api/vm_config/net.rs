//! CH's `NetConfig` in VmConfig's `net`, read into covm's [`NetConfig`]
//! with the command line's checks, each refusal naming the JSON field.

use crate::api::ch_defaults;
use crate::config::net::{parse_mac, random_mac, DEFAULT_IP, DEFAULT_MASK, DEFAULT_NUM_QUEUES, DEFAULT_QUEUE_SIZE};
use crate::config::{NetBackend, NetConfig};
use covm_devices::virtio::net::QUEUE_SIZE as MAX_QUEUE_SIZE;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::Ipv4Addr;

/// CH's `NetConfig` (unknown fields land in `other` and are refused there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetJson {
    /// The TAP's name (CH creates it when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The host side's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Its netmask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Ipv4Addr>,
    /// The guest's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Queues (one pair: 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u64>,
    /// Entries per queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u64>,
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Open TAP descriptors covm holds (one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    /// CH's fields covm meets only at their defaults, kept to name them.
    #[serde(flatten, skip_serializing)]
    pub other: serde_json::Map<String, Value>,
}

/// CH's `NetConfig` fields beyond those covm reads, and why covm refuses
/// any but their default.
const NET_OTHER: &[(&str, &str)] = &[
    ("host_mac", "covm does not set the TAP's MAC"),
    ("mtu", "covm's virtio-net has the TAP's default MTU"),
    ("iommu", "covm has no virtual IOMMU"),
    ("vhost_user", "covm has no vhost-user backend"),
    ("vhost_socket", "covm has no vhost-user backend"),
    ("vhost_mode", "covm has no vhost-user backend"),
    ("rate_limiter_config", "covm has no I/O rate limiter"),
    ("pci_segment", "covm has one PCI segment, 0"),
    // CH's defaults are true: they allow the offloads, which covm's
    // device does not offer, so the guest never uses them either way.
    ("offload_tso", ""),
    ("offload_ufo", ""),
    ("offload_csum", ""),
];

/// One interface from its JSON; `at` names it in errors (`net[0]`).
pub fn net_from_json(json: NetJson, at: &str) -> Result<NetConfig, String> {
    ch_defaults::refuse_other_fields(&json.other, NET_OTHER, (at, "VmConfig"), |key, value| {
        match (key, value) {
            ("offload_tso" | "offload_ufo" | "offload_csum", Value::Bool(_)) => true,
            // CH's default mode, meaningless without vhost_user.
            ("vhost_mode", Value::String(m)) => m == "Client",
            _ => false,
        }
    })?;
    let fds = json.fds.unwrap_or_default();
    let backend = match (json.tap, fds.as_slice()) {
        (Some(_), [_, ..]) => return Err(format!("{at}: give tap or fds, not both")),
        (tap, []) => NetBackend::Tap(tap.unwrap_or_default()),
        (None, [fd]) if *fd >= 0 => NetBackend::Fd(*fd),
        (None, fds) => {
            return Err(format!(
                "{at}.fds={fds:?}: covm takes one open TAP descriptor (one queue pair)"
            ))
        }
    };
    let mac = match json.mac.as_deref() {
        Some(m) => parse_mac(m).map_err(|e| format!("{at}.mac={m}: {e}"))?,
        None => random_mac(),
    };
    let num_queues = json.num_queues.unwrap_or(u64::from(DEFAULT_NUM_QUEUES));
    if num_queues != 2 {
        return Err(format!(
            "{at}.num_queues={num_queues}: covm's virtio-net has one queue pair: 2"
        ));
    }
    let queue_size = json.queue_size.unwrap_or(u64::from(DEFAULT_QUEUE_SIZE));
    if !queue_size.is_power_of_two() || !(2..=u64::from(MAX_QUEUE_SIZE)).contains(&queue_size) {
        return Err(format!(
            "{at}.queue_size={queue_size} must be a power of two from 2 to {MAX_QUEUE_SIZE}"
        ));
    }
    let id = json
        .id
        .map(|id| crate::config::devices::check_config_id(&id, "_net").map_err(|e| format!("{at}.id={id}: {e}")))
        .transpose()?;
    Ok(NetConfig {
        backend,
        ip: json.ip.unwrap_or(DEFAULT_IP),
        mask: json.mask.unwrap_or(DEFAULT_MASK),
        mac,
        id,
        num_queues: num_queues as u16,
        queue_size: queue_size as u16,
    })
}

/// `vm.add-net`'s interface: descriptors passed with the request (Kata
/// passes its TAP's so) stand for the body's `fds`, as in CH. Returns the
/// interface and whether its descriptor is one passed (this process owns
/// it from here on: it is closed if the interface is refused).
pub fn add_net_from_json(mut json: NetJson, passed: Vec<std::os::fd::OwnedFd>) -> Result<(NetConfig, bool), String> {
    use std::os::fd::IntoRawFd;
    match passed.len() {
        0 => net_from_json(json, "NetConfig").map(|n| (n, false)),
        1 => {
            if json.tap.is_some() {
                return Err("NetConfig: a TAP descriptor was passed and tap is given: give one".into());
            }
            // Parsed first, so a refused body closes the descriptor (dropped).
            json.fds = Some(vec![0]);
            let mut net = net_from_json(json, "NetConfig")?;
            let fd = passed.into_iter().next().expect("one").into_raw_fd();
            net.backend = NetBackend::Fd(fd);
            Ok((net, true))
        }
        n => Err(format!(
            "NetConfig: {n} descriptors were passed; covm's virtio-net takes one TAP descriptor (one queue pair)"
        )),
    }
}

/// An interface as CH's JSON (for `vm.info` and a migration).
pub fn net_to_json(net: &NetConfig, id: String) -> NetJson {
    let (tap, fds) = match &net.backend {
        NetBackend::Tap(name) => (Some(name.clone()).filter(|n| !n.is_empty()), None),
        NetBackend::Fd(fd) => (None, Some(vec![*fd])),
    };
    let m = net.mac;
    NetJson {
        tap,
        ip: Some(net.ip),
        mask: Some(net.mask),
        mac: Some(format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )),
        num_queues: Some(u64::from(net.num_queues)),
        queue_size: Some(u64::from(net.queue_size)),
        id: Some(id),
        fds,
        other: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net(v: Value) -> Result<NetConfig, String> {
        net_from_json(serde_json::from_value(v).map_err(|e| e.to_string())?, "net[0]")
    }

    #[test]
    fn an_interface_as_ch_writes_it() {
        let n = net(json!({"tap": "vmtap0", "ip": "192.168.249.1", "mask": "255.255.255.0",
            "mac": "12:34:56:78:9a:bc", "iommu": false, "num_queues": 2, "queue_size": 256,
            "vhost_user": false, "vhost_mode": "Client", "id": "eth0", "pci_segment": 0,
            "offload_tso": true, "offload_ufo": true, "offload_csum": true}))
        .unwrap();
        assert_eq!(n.backend, NetBackend::Tap("vmtap0".into()));
        assert_eq!(n.mac, [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]);
        assert_eq!(n.id.as_deref(), Some("eth0"));
        let back = net_to_json(&n, "eth0".into());
        assert_eq!(net(serde_json::to_value(back).unwrap()).unwrap(), n);
        let fd = net(json!({"fds": [7]})).unwrap();
        assert_eq!(fd.backend, NetBackend::Fd(7));
    }

    #[test]
    fn passed_descriptors_stand_for_fds() {
        use std::os::fd::OwnedFd;
        let open = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let json = |v: Value| serde_json::from_value::<NetJson>(v).unwrap();
        let given = open();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&given);
        let (n, passed) = add_net_from_json(json(json!({"fds": [12345], "id": "a"})), vec![given]).unwrap();
        // The descriptor passed, not the body's number.
        assert_eq!((n.backend, passed), (NetBackend::Fd(raw), true));
        let fd = raw;
        // SAFETY: the descriptor the call took; closed here.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let (n, passed) = add_net_from_json(json(json!({"tap": "t0"})), vec![]).unwrap();
        assert_eq!((n.backend, passed), (NetBackend::Tap("t0".into()), false));
        let e = add_net_from_json(json(json!({})), vec![open(), open()]).unwrap_err();
        assert!(e.contains("2 descriptors were passed"), "{e}");
        let e = add_net_from_json(json(json!({"tap": "t0"})), vec![open()]).unwrap_err();
        assert!(e.contains("tap is given"), "{e}");
        let e = add_net_from_json(json(json!({"num_queues": 4})), vec![open()]).unwrap_err();
        assert!(e.contains("NetConfig.num_queues=4"), "{e}");
    }

    #[test]
    fn refusals_name_the_field() {
        for (v, expected) in [
            (json!({"tap": "a", "fds": [3]}), "net[0]: give tap or fds, not both"),
            (json!({"fds": [3, 4]}), "net[0].fds=[3, 4]"),
            (json!({"num_queues": 4}), "net[0].num_queues=4"),
            (json!({"queue_size": 100}), "net[0].queue_size=100"),
            (json!({"mac": "01:00:5e:00:00:01"}), "net[0].mac=01:00:5e:00:00:01"),
            (json!({"vhost_user": true}), "net[0].vhost_user"),
            (json!({"mtu": 9000}), "net[0].mtu"),
            (json!({"bogus": 1}), "unknown field `net[0].bogus`"),
        ] {
            let e = net(v.clone()).unwrap_err();
            assert!(e.contains(expected), "{v}: {e}");
        }
    }
}
