//! The guest owner's migration policy as JSON (`--migration-policy`,
//! `platform.migration_policy`), turned into the protocol crate's
//! [`Policy`] and its canonical bytes.
//!
//! The JSON mirrors [`Policy`] field for field (schema:
//! resources/policies/migration-policy.schema.json):
//!
//! ```json
//! {
//!   "version": 1,
//!   "allowed_platforms": ["emulated_cvm"],
//!   "allowed_measurements": ["<96 hex digits>"],
//!   "min_tcb": {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0},
//!   "min_guest_svn": 0,
//!   "trusted_roots": ["<98 hex digits: SEC1 compressed P-384 key>"]
//! }
//! ```
//!
//! `version`, `allowed_platforms` and `allowed_measurements` are required;
//! `min_tcb` (and each of its components), `min_guest_svn` and
//! `trusted_roots` default to 0 / empty. Unknown fields, duplicates, bad
//! hex and invalid keys are refused with the field's path. List order does
//! not matter: the encoding sorts them, so one policy has one encoding and
//! one HOST_DATA.

use super::{hex, parse_hex};
use covm_agent_protocol::policy::{MAX_MEASUREMENTS, MAX_ROOTS, MEASUREMENT_LEN, ROOT_KEY_LEN};
use covm_agent_protocol::{Platform, Policy, TcbVersion};
use serde::{Deserialize, Serialize};

/// The policy file's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyJson {
    /// The policy's own version (an SVN: a peer with an older one is refused).
    pub version: u32,
    /// Platforms a peer may run on: `emulated_cvm`, `sev_snp`, `tdx`.
    pub allowed_platforms: Vec<String>,
    /// Launch measurements a peer may have, 48 bytes in hex.
    pub allowed_measurements: Vec<String>,
    /// Lowest TCB a peer's report may carry.
    #[serde(default)]
    pub min_tcb: TcbJson,
    /// Lowest guest SVN a peer's report may carry.
    #[serde(default)]
    pub min_guest_svn: u32,
    /// Emulated roots whose evidence is trusted: SEC1 compressed P-384
    /// public keys in hex (49 bytes).
    #[serde(default)]
    pub trusted_roots: Vec<String>,
}

/// A TCB_VERSION by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbJson {
    /// PSP boot loader SVN.
    #[serde(default)]
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    #[serde(default)]
    pub tee: u8,
    /// SNP firmware SVN.
    #[serde(default)]
    pub snp: u8,
    /// Microcode patch level.
    #[serde(default)]
    pub microcode: u8,
}

/// A checked migration policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationPolicy {
    // Boxed: a Policy holds its lists in fixed arrays (about 1 KiB).
    policy: Box<Policy>,
}

impl MigrationPolicy {
    /// Parses a policy file's bytes; the error names the field.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_value(&value)
    }

    /// Parses a policy held inline in other JSON; the error names the
    /// field below the policy.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, String> {
        // Serde would also take a struct from an array of its fields.
        if !value.is_object() {
            return Err(format!("a policy is a JSON object, not {}", kind(value)));
        }
        if let Some(tcb) = value.get("min_tcb").filter(|t| !t.is_object()) {
            return Err(format!(
                "min_tcb: an object with bootloader, tee, snp, microcode, not {}",
                kind(tcb)
            ));
        }
        let json: PolicyJson = serde_path_to_error::deserialize(value).map_err(path_error)?;
        Self::from_parsed(&json)
    }

    /// A version-0 policy that allows nothing (stands in for a missing one
    /// where only the layout matters, as in `covm measure`).
    pub fn empty() -> Self {
        MigrationPolicy {
            policy: Box::new(Policy::new(0)),
        }
    }

    /// Checks and converts parsed JSON.
    pub fn from_parsed(json: &PolicyJson) -> Result<Self, String> {
        let mut policy = Policy::new(json.version);
        let names: Vec<&str> = Platform::ALL.iter().map(|p| p.name()).collect();
        for (i, name) in json.allowed_platforms.iter().enumerate() {
            let field = format!("allowed_platforms[{i}]");
            let platform = Platform::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| format!("{field}: unknown platform '{name}' (known: {})", names.join(", ")))?;
            duplicate(&json.allowed_platforms, i, &field)?;
            policy.allow_platform(platform);
        }
        if json.allowed_measurements.len() > MAX_MEASUREMENTS {
            return Err(format!(
                "allowed_measurements: {} given, at most {MAX_MEASUREMENTS}",
                json.allowed_measurements.len()
            ));
        }
        for (i, text) in json.allowed_measurements.iter().enumerate() {
            let field = format!("allowed_measurements[{i}]");
            let m: [u8; MEASUREMENT_LEN] = parse_hex(text).map_err(|e| format!("{field}: {e}"))?;
            duplicate(&json.allowed_measurements, i, &field)?;
            policy.allow_measurement(&m).map_err(|e| format!("{field}: {e}"))?;
        }
        if json.trusted_roots.len() > MAX_ROOTS {
            return Err(format!(
                "trusted_roots: {} given, at most {MAX_ROOTS}",
                json.trusted_roots.len()
            ));
        }
        for (i, text) in json.trusted_roots.iter().enumerate() {
            let field = format!("trusted_roots[{i}]");
            let key: [u8; ROOT_KEY_LEN] = parse_hex(text).map_err(|e| format!("{field}: {e}"))?;
            duplicate(&json.trusted_roots, i, &field)?;
            policy
                .trust_root(&key)
                .map_err(|_| format!("{field}: not a P-384 public key in SEC1 compressed form (02 or 03, then x)"))?;
        }
        if policy.allows_platform(Platform::EmulatedCvm) && json.trusted_roots.is_empty() {
            return Err(
                "trusted_roots: empty, but allowed_platforms has emulated_cvm: no emulated peer's evidence could be verified"
                    .into(),
            );
        }
        let t = json.min_tcb;
        policy.set_min_tcb(TcbVersion::new(t.bootloader, t.tee, t.snp, t.microcode));
        policy.set_min_guest_svn(json.min_guest_svn);
        Ok(MigrationPolicy {
            policy: Box::new(policy),
        })
    }

    /// The policy as JSON (lists in encoding order).
    pub fn to_json(&self) -> PolicyJson {
        let p = &self.policy;
        let tcb = p.min_tcb();
        PolicyJson {
            version: p.version(),
            allowed_platforms: Platform::ALL
                .iter()
                .filter(|&&pl| p.allows_platform(pl))
                .map(|pl| pl.name().to_string())
                .collect(),
            allowed_measurements: p.measurements().iter().map(|m| hex(m)).collect(),
            min_tcb: TcbJson {
                bootloader: tcb.boot_loader(),
                tee: tcb.tee(),
                snp: tcb.snp(),
                microcode: tcb.microcode(),
            },
            min_guest_svn: p.min_guest_svn(),
            trusted_roots: p.trusted_roots().iter().map(|k| hex(k)).collect(),
        }
    }

    /// The protocol crate's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The canonical encoding: what covm places in guest memory.
    pub fn encoded(&self) -> Vec<u8> {
        self.policy.to_encoded().as_bytes().to_vec()
    }

    /// SHA-256 of the encoding: the HOST_DATA that binds the policy.
    pub fn host_data(&self) -> [u8; 32] {
        self.policy.host_data()
    }

    /// The policy's version.
    pub fn version(&self) -> u32 {
        self.policy.version()
    }
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `field: reason` from a serde error with its path; an unknown field is
/// named by the object holding it (the message names the field itself).
fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let mut path = e.path().to_string();
    let inner = e.into_inner().to_string();
    if inner.starts_with("unknown field") {
        path = match path.rsplit_once('.') {
            Some((parent, _)) => parent.to_string(),
            None => ".".into(),
        };
    }
    if path == "." || path.is_empty() {
        inner
    } else {
        format!("{path}: {inner}")
    }
}

/// Refuses `list[i]` when it repeats an earlier entry.
fn duplicate(list: &[String], i: usize, field: &str) -> Result<(), String> {
    let norm = |s: &str| s.to_ascii_lowercase();
    match list[..i].iter().position(|e| norm(e) == norm(&list[i])) {
        Some(first) => Err(format!("{field}: duplicate of entry {first}")),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid root public key (the emulated root with secret 0x01 × 48).
    pub(crate) fn test_root() -> String {
        let root = covm_agent_protocol::EmulatedRoot::from_secret(&[1; 48]).unwrap();
        hex(&root.public_key())
    }

    pub(crate) fn valid_json() -> String {
        format!(
            r#"{{"version": 3, "allowed_platforms": ["emulated_cvm", "sev_snp"],
                "allowed_measurements": ["{}", "{}"],
                "min_tcb": {{"bootloader": 1, "tee": 2, "snp": 3, "microcode": 4}},
                "min_guest_svn": 5, "trusted_roots": ["{}"]}}"#,
            "bb".repeat(48),
            "AA".repeat(48),
            test_root()
        )
    }

    fn parse(text: &str) -> Result<MigrationPolicy, String> {
        MigrationPolicy::from_json_bytes(text.as_bytes())
    }

    /// `valid_json` with `field` replaced by `value` (JSON text), or
    /// removed when `value` is None.
    fn with(field: &str, value: Option<&str>) -> String {
        let mut v: serde_json::Value = serde_json::from_str(&valid_json()).unwrap();
        let map = v.as_object_mut().unwrap();
        match value {
            Some(value) => {
                map.insert(field.into(), serde_json::from_str(value).unwrap());
            }
            None => {
                map.remove(field);
            }
        }
        v.to_string()
    }

    #[test]
    fn valid_policy_converts_field_for_field() {
        let p = parse(&valid_json()).unwrap();
        let policy = p.policy();
        assert_eq!(policy.version(), 3);
        assert!(policy.allows_platform(Platform::EmulatedCvm));
        assert!(policy.allows_platform(Platform::SevSnp));
        assert!(!policy.allows_platform(Platform::Tdx));
        // Sorted: 0xaa... before 0xbb...
        assert_eq!(policy.measurements(), &[[0xaa; 48], [0xbb; 48]]);
        assert_eq!(policy.min_tcb(), TcbVersion::new(1, 2, 3, 4));
        assert_eq!(policy.min_guest_svn(), 5);
        assert_eq!(policy.trusted_roots().len(), 1);
        assert_eq!(p.host_data(), policy.host_data());
        assert_eq!(Policy::decode(&p.encoded()).unwrap(), *policy);
    }

    #[test]
    fn json_round_trip_keeps_the_encoding() {
        let p = parse(&valid_json()).unwrap();
        let again = MigrationPolicy::from_parsed(&p.to_json()).unwrap();
        assert_eq!(again.encoded(), p.encoded());
        let value = serde_json::to_value(p.to_json()).unwrap();
        assert_eq!(MigrationPolicy::from_value(&value).unwrap(), p);
    }

    #[test]
    fn optional_fields_default_to_zero() {
        let text = r#"{"version": 1, "allowed_platforms": ["sev_snp"], "allowed_measurements": []}"#;
        let p = parse(text).unwrap();
        assert_eq!(p.policy().min_tcb(), TcbVersion(0));
        assert_eq!(p.policy().min_guest_svn(), 0);
        assert!(p.policy().trusted_roots().is_empty());
        let p = parse(&with("min_tcb", Some(r#"{"snp": 9}"#))).unwrap();
        assert_eq!(p.policy().min_tcb(), TcbVersion::new(0, 0, 9, 0));
    }

    /// Policies covm refuses, and the message naming what is wrong.
    fn refusals() -> Vec<(String, &'static str)> {
        let m = "cc".repeat(48);
        vec![
            ("{".into(), "not JSON: EOF"),
            ("[]".into(), "a policy is a JSON object, not an array"),
            (with("bogus", Some("1")), "unknown field `bogus`"),
            (with("version", None), "missing field `version`"),
            (with("version", Some("-1")), "version: invalid value: integer `-1`"),
            (with("version", Some(r#""1""#)), "version: invalid type: string"),
            (with("allowed_platforms", None), "missing field `allowed_platforms`"),
            (
                with("allowed_platforms", Some(r#""emulated_cvm""#)),
                "allowed_platforms: invalid type",
            ),
            (
                with("allowed_platforms", Some(r#"["sgx"]"#)),
                "allowed_platforms[0]: unknown platform 'sgx' (known: emulated_cvm, sev_snp, tdx)",
            ),
            (
                with("allowed_platforms", Some(r#"["tdx", "tdx"]"#)),
                "allowed_platforms[1]: duplicate of entry 0",
            ),
            (
                with("allowed_platforms", Some("[1]")),
                "allowed_platforms[0]: invalid type: integer",
            ),
            (
                with("allowed_measurements", None),
                "missing field `allowed_measurements`",
            ),
            (
                with("allowed_measurements", Some(r#"["abcd"]"#)),
                "allowed_measurements[0]: 4 hex digits, expected 96 (48 bytes)",
            ),
            (
                with("allowed_measurements", Some(&format!(r#"["{}zz"]"#, "cc".repeat(47)))),
                "allowed_measurements[0]: not hex",
            ),
            (
                with(
                    "allowed_measurements",
                    Some(&format!(r#"["{m}", "{}"]"#, m.to_uppercase())),
                ),
                "allowed_measurements[1]: duplicate of entry 0",
            ),
            (
                with(
                    "allowed_measurements",
                    Some(&format!("[{}]", vec![format!("\"{m}\""); 17].join(","))),
                ),
                "allowed_measurements: 17 given, at most 16",
            ),
            (
                with("min_tcb", Some(r#"{"snp": 256}"#)),
                "min_tcb.snp: invalid value: integer `256`",
            ),
            (with("min_tcb", Some(r#"{"fmc": 1}"#)), "min_tcb: unknown field `fmc`"),
            (
                with("min_tcb", Some("3")),
                "min_tcb: an object with bootloader, tee, snp, microcode, not a number",
            ),
            (with("min_tcb", Some("[1, 2, 3, 4]")), "min_tcb: an object"),
            (
                with("min_guest_svn", Some("true")),
                "min_guest_svn: invalid type: boolean",
            ),
            (
                with("trusted_roots", Some(r#"["02"]"#)),
                "trusted_roots[0]: 2 hex digits, expected 98 (49 bytes)",
            ),
            (
                with("trusted_roots", Some(&format!(r#"["04{}"]"#, "11".repeat(48)))),
                "trusted_roots[0]: not a P-384 public key",
            ),
            (
                with("trusted_roots", Some(&format!(r#"["02{}"]"#, "ff".repeat(48)))),
                "trusted_roots[0]: not a P-384 public key",
            ),
            (
                with("trusted_roots", Some(&format!(r#"["{0}", "{0}"]"#, test_root()))),
                "trusted_roots[1]: duplicate of entry 0",
            ),
            (
                with(
                    "trusted_roots",
                    Some(&format!("[{}]", vec![format!("\"{}\"", test_root()); 5].join(","))),
                ),
                "trusted_roots: 5 given, at most 4",
            ),
            (
                with("trusted_roots", Some("[]")),
                "trusted_roots: empty, but allowed_platforms has emulated_cvm",
            ),
            (
                with("trusted_roots", None),
                "trusted_roots: empty, but allowed_platforms has emulated_cvm",
            ),
            (format!("{} x", valid_json()), "not JSON: trailing characters"),
        ]
    }

    #[test]
    fn every_bad_field_is_named() {
        for (text, needle) in refusals() {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(needle), "expected {needle:?} in {e:?} for {text}");
        }
    }

    #[test]
    fn example_policies_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".json") && !name.ends_with(".schema.json") {
                let bytes = std::fs::read(&path).unwrap();
                MigrationPolicy::from_json_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 2, "two example policies");
    }

    /// A JSON Schema validator (the jsonschema crate) agrees with covm: the
    /// examples and the test policy are valid under the schema, and every
    /// policy covm refuses the schema refuses too, except what a schema
    /// cannot say (listed).
    #[test]
    fn the_schema_agrees_with_covm_under_a_real_validator() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../resources/policies/migration-policy.schema.json"
        );
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/policies");
        let mut valid = vec![valid_json()];
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".json") && !name.ends_with(".schema.json") {
                valid.push(std::fs::read_to_string(&path).unwrap());
            }
        }
        for text in &valid {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{text}: {errors:?}");
        }
        // Beyond a schema: JSON syntax, duplicates that differ only in
        // case, and keys that are not points on P-384.
        let beyond_a_schema = ["not JSON", "duplicate of entry 0", "not a P-384 public key"];
        for (text, needle) in refusals() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if validator.is_valid(&value) {
                assert!(
                    beyond_a_schema.iter().any(|b| needle.contains(b)),
                    "the schema accepts what covm refuses ({needle}): {text}"
                );
            }
        }
    }

    /// The schema names exactly the fields serde accepts, and refuses others.
    #[test]
    fn schema_matches_the_json_fields() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../resources/policies/migration-policy.schema.json"
        );
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v["properties"].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let mut ours: Vec<String> = serde_json::to_value(parse(&valid_json()).unwrap().to_json())
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        ours.sort();
        assert_eq!(keys(&schema), ours);
        assert_eq!(schema["additionalProperties"], false);
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.sort_unstable();
        assert_eq!(required, ["allowed_measurements", "allowed_platforms", "version"]);
        let tcb = &schema["properties"]["min_tcb"];
        assert_eq!(keys(tcb), ["bootloader", "microcode", "snp", "tee"]);
        assert_eq!(tcb["additionalProperties"], false);
    }
}
