//! Network interfaces as Cloud Hypervisor's `--net` gives them (and the
//! API's VmConfig `net`): a TAP by name (created if missing, as CH does) or
//! an inherited descriptor, the guest's MAC, and the host side's address.

use super::options::{OptionError, OptionMap};
use std::net::Ipv4Addr;

/// One network interface (CH's `NetConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Where the frames go.
    pub backend: NetBackend,
    /// The host side's address and netmask, set on a TAP covm opens by
    /// name (CH's defaults 192.168.249.1/255.255.255.0).
    pub ip: Ipv4Addr,
    /// The netmask for `ip`.
    pub mask: Ipv4Addr,
    /// The guest's MAC address (random, locally administered, when not given).
    pub mac: [u8; 6],
    /// Its id (`_net<N>` when not given, as CH names them).
    pub id: Option<String>,
    /// Queues: one receive/transmit pair, so 2.
    pub num_queues: u16,
    /// Entries per queue.
    pub queue_size: u16,
}

/// The host end of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A TAP interface by name, created if missing; empty: the kernel names it.
    Tap(String),
    /// An open TAP descriptor covm inherited.
    Fd(i32),
}

/// CH's default host address of a TAP.
pub const DEFAULT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 249, 1);
/// CH's default netmask.
pub const DEFAULT_MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// CH's default queue count (one pair) and size.
pub const DEFAULT_NUM_QUEUES: u16 = 2;
/// CH's default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// CH's `--net` keys; those covm cannot honour are refused by name.
const NET_KEYS: &[&str] = &[
    "tap",
    "ip",
    "mask",
    "mac",
    "host_mac",
    "mtu",
    "iommu",
    "num_queues",
    "queue_size",
    "id",
    "vhost_user",
    "socket",
    "vhost_mode",
    "fd",
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
    "pci_segment",
    "offload_tso",
    "offload_ufo",
    "offload_csum",
];

/// A MAC address `aa:bb:cc:dd:ee:ff`: a unicast one.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err("a MAC address is six hex bytes separated by ':'".into());
    }
    for (byte, part) in mac.iter_mut().zip(&parts) {
        *byte = u8::from_str_radix(part, 16)
            .ok()
            .filter(|_| part.len() == 2)
            .ok_or("a MAC address is six hex bytes separated by ':'")?;
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast address cannot be a guest's MAC".into());
    }
    Ok(mac)
}

/// A random, locally administered, unicast MAC (as CH makes one).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // Without randomness a fixed locally administered address still works.
    let _ = getrandom::getrandom(&mut mac);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// `--net tap=NAME|fd=N[,mac=MAC][,ip=IP,mask=MASK][,id=ID][,num_queues=2][,queue_size=N]`.
pub fn parse_net(text: &str) -> Result<NetConfig, OptionError> {
    let m = OptionMap::parse("net", text, NET_KEYS)?;
    for (key, why) in [
        ("vhost_user", "covm has no vhost-user backend"),
        ("iommu", "covm has no virtual IOMMU"),
        ("offload_tso", "covm's virtio-net offers no offloads"),
        ("offload_ufo", "covm's virtio-net offers no offloads"),
        ("offload_csum", "covm's virtio-net offers no offloads"),
    ] {
        if let Some(v) = m.get(key).filter(|v| !matches!(*v, "off" | "false")) {
            return Err(m.invalid(key, v, why));
        }
    }
    for key in ["socket", "vhost_mode", "host_mac", "mtu"] {
        if let Some(v) = m.get(key) {
            return Err(m.invalid(key, v, "covm does not support it yet"));
        }
    }
    super::devices::refuse_rate_limiter(&m)?;
    if let Some(v) = m.get("pci_segment").filter(|v| *v != "0") {
        return Err(m.invalid("pci_segment", v, "covm has one PCI segment, 0"));
    }
    let backend = match (
        m.get("tap"),
        m.get_with("fd", |v| v.parse::<i32>().map_err(|_| "not a descriptor".to_string()))?,
    ) {
        (Some(_), Some(fd)) => return Err(m.invalid("fd", &fd.to_string(), "give tap= or fd=, not both")),
        (Some(name), None) => NetBackend::Tap(name.to_string()),
        (None, Some(fd)) if fd >= 0 => NetBackend::Fd(fd),
        (None, Some(fd)) => return Err(m.invalid("fd", &fd.to_string(), "not a descriptor")),
        (None, None) => NetBackend::Tap(String::new()),
    };
    let addr = |key: &str, default: Ipv4Addr| {
        m.get_with(key, |v| {
            v.parse::<Ipv4Addr>().map_err(|_| "not an IPv4 address".to_string())
        })
        .map(|v| v.unwrap_or(default))
    };
    let (ip, mask) = (addr("ip", DEFAULT_IP)?, addr("mask", DEFAULT_MASK)?);
    let mac = m.get_with("mac", parse_mac)?.unwrap_or_else(random_mac);
    let num_queues = m
        .get_with("num_queues", |v| match v.parse::<u16>() {
            Ok(2) => Ok(2),
            _ => Err("covm's virtio-net has one queue pair: 2".to_string()),
        })?
        .unwrap_or(DEFAULT_NUM_QUEUES);
    let queue_size = m
        .get_with("queue_size", |v| match v.parse::<u16>() {
            Ok(n) if n.is_power_of_two() && (2..=covm_devices::virtio::net::QUEUE_SIZE).contains(&n) => Ok(n),
            _ => Err(format!(
                "must be a power of two from 2 to {}",
                covm_devices::virtio::net::QUEUE_SIZE
            )),
        })?
        .unwrap_or(DEFAULT_QUEUE_SIZE);
    let id = m.get_with("id", super::devices::check_id)?;
    Ok(NetConfig {
        backend,
        ip,
        mask,
        mac,
        id,
        num_queues,
        queue_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_options() {
        let n = parse_net("tap=covm0,mac=52:54:00:12:34:56,ip=10.0.0.1,mask=255.255.255.0,id=eth0").unwrap();
        assert_eq!(n.backend, NetBackend::Tap("covm0".into()));
        assert_eq!(n.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(n.ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(n.id.as_deref(), Some("eth0"));
        let d = parse_net("fd=5").unwrap();
        assert_eq!(d.backend, NetBackend::Fd(5));
        assert_eq!(
            (d.ip, d.mask, d.num_queues, d.queue_size),
            (DEFAULT_IP, DEFAULT_MASK, 2, 256)
        );
        assert_eq!(d.mac[0] & 3, 2, "random MACs are local unicast");
        for (bad, needle) in [
            ("tap=a,fd=3", "not both"),
            ("mac=01:00:00:00:00:01", "multicast"),
            ("mac=52:54:00:12:34", "six hex bytes"),
            ("ip=300.1.1.1", "not an IPv4 address"),
            ("num_queues=4", "one queue pair"),
            ("queue_size=100", "power of two"),
            ("vhost_user=on", "vhost-user"),
            ("offload_tso=on", "no offloads"),
            ("bogus=1", "unknown key 'bogus'"),
        ] {
            let e = parse_net(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
