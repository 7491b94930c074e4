//! The route table: the one list the router is built from and the OpenAPI
//! document is checked against.

use axum::http::Method;

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `vmm.ping`
    Ping,
    /// `vmm.shutdown`
    ShutdownVmm,
    /// `vm.create`
    Create,
    /// `vm.boot`
    Boot,
    /// `vm.info`
    Info,
    /// `vm.counters`
    Counters,
    /// `vm.pause`
    Pause,
    /// `vm.resume`
    Resume,
    /// `vm.shutdown`
    ShutdownVm,
    /// `vm.reboot`
    Reboot,
    /// `vm.power-button`
    PowerButton,
    /// `vm.delete`
    Delete,
}

/// The prefix of every path.
pub const API_PREFIX: &str = "/api/v1";

/// Every route: path below [`API_PREFIX`], method, endpoint.
pub const ROUTES: &[(&str, Method, Endpoint)] = &[
    ("/vmm.ping", Method::GET, Endpoint::Ping),
    ("/vmm.shutdown", Method::PUT, Endpoint::ShutdownVmm),
    ("/vm.create", Method::PUT, Endpoint::Create),
    ("/vm.boot", Method::PUT, Endpoint::Boot),
    ("/vm.info", Method::GET, Endpoint::Info),
    ("/vm.counters", Method::GET, Endpoint::Counters),
    ("/vm.pause", Method::PUT, Endpoint::Pause),
    ("/vm.resume", Method::PUT, Endpoint::Resume),
    ("/vm.shutdown", Method::PUT, Endpoint::ShutdownVm),
    ("/vm.reboot", Method::PUT, Endpoint::Reboot),
    ("/vm.power-button", Method::PUT, Endpoint::PowerButton),
    ("/vm.delete", Method::PUT, Endpoint::Delete),
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
