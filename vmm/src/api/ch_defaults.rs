//! Cloud Hypervisor's default values, for the `VmConfig` fields covm cannot
//! honour yet: such a field is accepted when it holds CH's default, so a
//! configuration CH itself writes (`vm.info`, Kata's generated client) is
//! taken unchanged, and refused by name when it asks for more.
//!
//! A value is at its default when it is absent-like (`null`, `false`, `0`,
//! `""`, `[]`, or an object whose every member is at its default) or equal
//! to the default CH gives that field where CH's default is not zero-like
//! (the table below, read off CH v54: its OpenAPI document and the
//! `vm.info` of a VM created with nothing but a payload; see
//! `tests/fixtures/ch-vm-config/`).

use serde_json::{json, Value};

/// Where CH's default is not absent-like: the field's path and its default.
fn nonzero_default(path: &str) -> Option<Value> {
    Some(match path {
        "cpus.nested" => json!(true),
        "cpus.max_phys_bits" => json!(46),
        "cpus.core_scheduling" => json!("Vm"),
        "cpus.profile" => json!("Host"),
        "memory.hotplug_method" => json!("Acpi"),
        "memory.thp" => json!(true),
        "rng.src" => json!("/dev/urandom"),
        "console.mode" => json!("Tty"),
        "debug_console.mode" => json!("Off"),
        // 0xe9, the port of Bochs' debug console.
        "debug_console.iobase" => json!(233),
        "platform.num_pci_segments" => json!(1),
        "platform.vfio_p2p_dma" => json!(true),
        _ => return None,
    })
}

/// Refuses `value` at `path` unless it is CH's default there (see the
/// module documentation), naming the first member that is not and `reason`.
pub fn refuse_unless_default(path: &str, value: &Value, reason: &str) -> Result<(), String> {
    if let Some(default) = nonzero_default(path) {
        return if value.is_null() || *value == default {
            Ok(())
        } else {
            Err(format!(
                "field '{path}' cannot be honoured: {reason} (only CH's default {default} is accepted)"
            ))
        };
    }
    match value {
        Value::Null | Value::Bool(false) => Ok(()),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(()),
        Value::String(s) if s.is_empty() => Ok(()),
        Value::Array(a) if a.is_empty() => Ok(()),
        Value::Object(members) => members
            .iter()
            .try_for_each(|(key, member)| refuse_unless_default(&format!("{path}.{key}"), member, reason)),
        _ => Err(format!("field '{path}' cannot be honoured: {reason}")),
    }
}

/// Checks `other`, the fields of CH's section `at` that covm does not
/// read: each must be one of `known` (with why covm refuses anything but
/// its default), else it is refused as `invalid {what}: unknown field`;
/// one `honoured` accepts as it is passes; any other must be at CH's
/// default.
pub fn refuse_other_fields(
    other: &serde_json::Map<String, Value>,
    known: &[(&str, &str)],
    (at, what): (&str, &str),
    honoured: impl Fn(&str, &Value) -> bool,
) -> Result<(), String> {
    for (key, value) in other {
        let Some((_, why)) = known.iter().find(|(k, _)| k == key) else {
            return Err(format!("invalid {what}: unknown field `{at}.{key}`"));
        };
        if !honoured(key, value) {
            refuse_unless_default(&format!("{at}.{key}"), value, why)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_like_values_and_chs_own_defaults_pass() {
        for value in [
            json!(null),
            json!(false),
            json!(0),
            json!(""),
            json!([]),
            json!({"a": null, "b": 0}),
        ] {
            refuse_unless_default("watchdog", &value, "r").unwrap();
        }
        refuse_unless_default(
            "rng",
            &json!({"src": "/dev/urandom", "pci_segment": 0, "iommu": false}),
            "r",
        )
        .unwrap();
        refuse_unless_default("debug_console", &json!({"mode": "Off", "iobase": 233}), "r").unwrap();
        refuse_unless_default("cpus.nested", &json!(true), "r").unwrap();
    }

    #[test]
    fn anything_else_is_refused_by_its_path() {
        let cases = [
            ("watchdog", json!(true), "field 'watchdog' cannot be honoured: r"),
            ("disks", json!([{"path": "/a"}]), "field 'disks' cannot be honoured: r"),
            (
                "rng",
                json!({"src": "/dev/random"}),
                "field 'rng.src' cannot be honoured: r",
            ),
            (
                "debug_console",
                json!({"mode": "Tty"}),
                "field 'debug_console.mode' cannot be honoured: r",
            ),
            (
                "cpus.max_phys_bits",
                json!(40),
                "field 'cpus.max_phys_bits' cannot be honoured: r",
            ),
        ];
        for (path, value, expected) in cases {
            let error = refuse_unless_default(path, &value, "r").unwrap_err();
            assert!(error.starts_with(expected), "{path}={value}: {error}");
        }
        let error = refuse_unless_default("rng", &json!({"src": "/dev/random"}), "r").unwrap_err();
        assert!(
            error.ends_with("(only CH's default \"/dev/urandom\" is accepted)"),
            "{error}"
        );
    }
}
