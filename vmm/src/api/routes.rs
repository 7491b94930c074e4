//! The route table: the one list the router is built from and the OpenAPI
//! document is checked against.

use super::{migration_data, vm_config};
use crate::control::messages::Request;
use axum::http::Method;

/// What a route's request is built with besides its body.
pub struct RequestContext {
    /// The host's RAM (for checking `vm.create`).
    pub host_ram: u64,
    /// Descriptors the client passed with the request (SCM_RIGHTS); those
    /// the route does not take are closed.
    pub fds: Vec<std::os::fd::OwnedFd>,
}

/// Builds the control loop's request from a route's body and its context;
/// `Err` is the 400 message.
pub type MakeRequest = fn(&[u8], &mut RequestContext) -> Result<Request, String>;

/// The prefix of every path.
pub const API_PREFIX: &str = "/api/v1";

/// Every route: path below [`API_PREFIX`], method, and the request it makes.
pub const ROUTES: &[(&str, Method, MakeRequest)] = &[
    ("/vmm.ping", Method::GET, |_, _| Ok(Request::Ping)),
    ("/vmm.shutdown", Method::PUT, |_, _| Ok(Request::ShutdownVmm)),
    ("/vm.create", Method::PUT, |body, cx| {
        vm_config::parse(body, cx.host_ram).map(|c| Request::Create(Box::new(c)))
    }),
    ("/vm.boot", Method::PUT, |_, _| Ok(Request::Boot)),
    ("/vm.info", Method::GET, |_, _| Ok(Request::Info)),
    ("/vm.counters", Method::GET, |_, _| Ok(Request::Counters)),
    ("/vm.pause", Method::PUT, |_, _| Ok(Request::Pause)),
    ("/vm.resume", Method::PUT, |_, _| Ok(Request::Resume)),
    ("/vm.shutdown", Method::PUT, |_, _| Ok(Request::ShutdownVm)),
    ("/vm.reboot", Method::PUT, |_, _| Ok(Request::Reboot)),
    ("/vm.power-button", Method::PUT, |_, _| Ok(Request::PowerButton)),
    ("/vm.delete", Method::PUT, |_, _| Ok(Request::Delete)),
    ("/vm.send-migration", Method::PUT, |body, _| {
        migration_data::send_request(body).map(|send| Request::SendMigration {
            endpoint: send.endpoint,
            options: Box::new(send.options),
            verified: send.verified,
        })
    }),
    ("/vm.receive-migration", Method::PUT, |body, _| {
        migration_data::receive_endpoint(body).map(|endpoint| Request::ReceiveMigration { endpoint })
    }),
    ("/vm.add-disk", Method::PUT, |body, _| {
        let json = serde_json::from_slice(body).map_err(|e| format!("invalid DiskConfig: {e}"))?;
        vm_config::devices::disk_from_json(json, "DiskConfig").map(|d| Request::AddDisk(Box::new(d)))
    }),
    ("/vm.add-net", Method::PUT, |body, cx| {
        let json = serde_json::from_slice(body).map_err(|e| format!("invalid NetConfig: {e}"))?;
        vm_config::net::add_net_from_json(json, std::mem::take(&mut cx.fds))
            .map(|(net, passed)| Request::AddNet(Box::new(net), passed))
    }),
    ("/vm.add-vsock", Method::PUT, |body, _| {
        let json = serde_json::from_slice(body).map_err(|e| format!("invalid VsockConfig: {e}"))?;
        vm_config::vsock::vsock_from_json(json, "VsockConfig").map(|v| Request::AddVsock(Box::new(v)))
    }),
];

/// Cloud Hypervisor's endpoints covm does not implement, with why: each is
/// answered 404 with its name and the reason, as CH answers an endpoint its
/// build lacks (`vm.coredump` without `guest_debug`), never left to hang.
pub const UNIMPLEMENTED: &[(&str, &str)] = &[
    ("/vm.add-device", "covm has no device passthrough (VFIO)"),
    ("/vm.add-user-device", "covm has no vfio-user devices"),
    ("/vm.add-fs", "covm has no virtio-fs devices"),
    ("/vm.add-generic-vhost-user", "covm has no vhost-user devices"),
    ("/vm.add-pmem", "covm has no persistent memory devices"),
    ("/vm.add-vdpa", "covm has no vDPA devices"),
    ("/vm.remove-device", "covm has no hot-pluggable devices"),
    ("/vm.resize", "covm does not hot-plug vCPUs or memory"),
    ("/vm.resize-disk", "covm does not resize disks of a running VM"),
    ("/vm.resize-zone", "covm has no memory zones"),
    (
        "/vm.snapshot",
        "covm has no snapshots yet (live migration moves a running VM)",
    ),
    (
        "/vm.restore",
        "covm has no snapshots yet (live migration moves a running VM)",
    ),
    ("/vm.coredump", "covm does not write guest core dumps"),
    ("/vm.nmi", "covm does not inject NMIs"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use yaml_rust2::YamlLoader;

    /// (path, method) pairs of resources/openapi/covm.yaml.
    fn documented() -> BTreeSet<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/openapi/covm.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let doc = &YamlLoader::load_from_str(&text).unwrap()[0];
        assert_eq!(doc["servers"][0]["url"].as_str(), Some("http://localhost/api/v1"));
        let paths = doc["paths"].as_hash().expect("a paths map");
        let mut all = BTreeSet::new();
        for (path, methods) in paths {
            for method in methods.as_hash().expect("methods under each path").keys() {
                all.insert((path.as_str().unwrap().to_string(), method.as_str().unwrap().to_string()));
            }
        }
        all
    }

    #[test]
    fn router_and_openapi_document_agree() {
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(path, method, _)| (path.to_string(), method.as_str().to_lowercase()))
            .collect();
        let documented = documented();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(undocumented.is_empty(), "served but not documented: {undocumented:?}");
        assert!(unserved.is_empty(), "documented but not served: {unserved:?}");
    }
}
