//! Cloud Hypervisor's option strings: `key=value,key=value`.
//!
//! The grammar is CH's own (no crate implements it): items separated by
//! commas, each `key=value` or a bare `key`; a value may be wrapped in double
//! quotes to hold commas (`file="/tmp/a,b"`). Every key must be known to the
//! option and may appear once, so a typo is refused with its name instead of
//! being silently ignored.

use std::collections::BTreeMap;

/// Why an option string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    /// A key the option does not take.
    #[error("--{option}: unknown key '{key}' (known: {known}){hint}")]
    UnknownKey {
        /// The option, without dashes.
        option: &'static str,
        /// The key as written.
        key: String,
        /// The keys it takes.
        known: String,
        /// What was probably meant, when the "key" looks like a value
        /// (`--cpus 2`: `; did you mean boot=2?`), else empty.
        hint: String,
    },
    /// The same key twice.
    #[error("--{option}: key '{key}' given twice")]
    Duplicate {
        /// The option, without dashes.
        option: &'static str,
        /// The key.
        key: String,
    },
    /// A quote that is never closed.
    #[error("--{option}: unterminated quote in '{input}'")]
    Unterminated {
        /// The option, without dashes.
        option: &'static str,
        /// The whole option string.
        input: String,
    },
    /// A key whose value could not be used.
    #[error("--{option}: invalid {key}={value}: {reason}")]
    Invalid {
        /// The option, without dashes.
        option: &'static str,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key that must be given.
    #[error("--{option}: missing {key}=")]
    Missing {
        /// The option, without dashes.
        option: &'static str,
        /// The key.
        key: &'static str,
    },
}

/// A parsed option string: known keys and their values (a bare key has an
/// empty value).
#[derive(Debug)]
pub struct OptionMap {
    option: &'static str,
    values: BTreeMap<String, String>,
}

impl OptionMap {
    /// Parses `input` for `--option`, allowing only `known` keys.
    pub fn parse(option: &'static str, input: &str, known: &[&str]) -> Result<Self, OptionError> {
        let mut values = BTreeMap::new();
        for item in split_items(option, input)? {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), v),
                None => (item.trim(), ""),
            };
            if key.is_empty() {
                continue;
            }
            if !known.contains(&key) {
                // A bare number or path is a value given without its key.
                let looks_like_a_value =
                    !item.contains('=') && key.starts_with(|c: char| c.is_ascii_digit() || c == '/' || c == '.');
                let hint = match known.first() {
                    Some(first) if looks_like_a_value => format!("; did you mean {first}={key}?"),
                    _ => String::new(),
                };
                return Err(OptionError::UnknownKey {
                    option,
                    key: key.into(),
                    known: known.join(", "),
                    hint,
                });
            }
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if values.insert(key.to_string(), value.to_string()).is_some() {
                return Err(OptionError::Duplicate {
                    option,
                    key: key.into(),
                });
            }
        }
        Ok(Self { option, values })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether the bare or valued key was given.
    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The value of `key` converted by `convert`, whose error names the reason.
    pub fn get_with<T>(
        &self,
        key: &str,
        convert: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|v| convert(v).map_err(|reason| self.invalid(key, v, reason)))
            .transpose()
    }

    /// An [`OptionError::Invalid`] for `key=value` of this option.
    pub fn invalid(&self, key: &str, value: &str, reason: impl Into<String>) -> OptionError {
        OptionError::Invalid {
            option: self.option,
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Splits at commas outside double quotes.
fn split_items<'a>(option: &'static str, input: &'a str) -> Result<Vec<&'a str>, OptionError> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in input.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(OptionError::Unterminated {
            option,
            input: input.into(),
        });
    }
    items.push(&input[start..]);
    Ok(items)
}

/// Parses an on/off switch as CH does (`on`, `off`, `true`, `false`, or a
/// bare key meaning on).
pub fn parse_toggle(value: &str) -> Result<bool, String> {
    match value {
        "" | "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("'{other}' is not on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_values_and_quotes() {
        let m = OptionMap::parse("serial", r#"file="/tmp/a,b",x"#, &["file", "x"]).unwrap();
        assert_eq!(m.get("file"), Some("/tmp/a,b"));
        assert!(m.has("x"));
        assert_eq!(m.get("x"), Some(""));
        assert_eq!(m.get("y"), None);
    }

    #[test]
    fn a_value_given_without_its_key_gets_a_hint() {
        let hint = |option, input, known: &[&str]| OptionMap::parse(option, input, known).unwrap_err().to_string();
        assert_eq!(
            hint("cpus", "2", &["boot", "max"]),
            "--cpus: unknown key '2' (known: boot, max); did you mean boot=2?"
        );
        assert_eq!(
            hint("memory", "1G", &["size"]),
            "--memory: unknown key '1G' (known: size); did you mean size=1G?"
        );
        // A word is a key, not a value: no guess.
        assert_eq!(
            hint("cpus", "bogus", &["boot"]),
            "--cpus: unknown key 'bogus' (known: boot)"
        );
    }

    #[test]
    fn refuses_unknown_duplicate_and_unterminated() {
        assert_eq!(
            OptionMap::parse("cpus", "boot=2,bogus=1", &["boot"])
                .unwrap_err()
                .to_string(),
            "--cpus: unknown key 'bogus' (known: boot)"
        );
        assert_eq!(
            OptionMap::parse("cpus", "boot=2,boot=3", &["boot"]).unwrap_err(),
            OptionError::Duplicate {
                option: "cpus",
                key: "boot".into()
            }
        );
        assert!(matches!(
            OptionMap::parse("serial", "file=\"/tmp/x", &["file"]),
            Err(OptionError::Unterminated { .. })
        ));
    }

    #[test]
    fn empty_items_are_skipped() {
        let m = OptionMap::parse("cpus", "boot=2,", &["boot"]).unwrap();
        assert_eq!(m.get("boot"), Some("2"));
    }

    #[test]
    fn toggles() {
        assert_eq!(parse_toggle("on"), Ok(true));
        assert_eq!(parse_toggle(""), Ok(true));
        assert_eq!(parse_toggle("off"), Ok(false));
        assert!(parse_toggle("maybe").is_err());
    }
}
