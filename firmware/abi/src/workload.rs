//! The firmware's command line: which workload to run and its arguments.
//!
//! Grammar: whitespace-separated `key=value` words. `workload=` picks the
//! workload (default `hello`); the `dirty` workload takes `mib=N` (region
//! size, default 64), `rate=R` (MiB/s over all vCPUs, 0 = unthrottled,
//! default 0) and `seed=S` (decimal or 0x-hex, default 0).

use core::fmt;

/// A workload and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Print a greeting and power off.
    Hello,
    /// Write and verify pages continuously.
    Dirty(DirtyArgs),
}

/// Arguments of the `dirty` workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyArgs {
    /// Size of the region in MiB.
    pub mib: u64,
    /// Total write rate in MiB/s over all vCPUs; 0 means as fast as possible.
    pub rate_mib_s: u64,
    /// Seed of the page content function.
    pub seed: u64,
}

impl Default for DirtyArgs {
    fn default() -> Self {
        Self {
            mib: 64,
            rate_mib_s: 0,
            seed: 0,
        }
    }
}

/// Why a command line was refused. Borrowed from the command line itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgError<'a> {
    /// A word without `=`.
    NotKeyValue(&'a str),
    /// `workload=` names no known workload.
    UnknownWorkload(&'a str),
    /// A key the chosen workload does not take.
    UnknownKey {
        /// The workload chosen.
        workload: &'a str,
        /// The key it does not take.
        key: &'a str,
    },
    /// A value that is not a number.
    BadNumber {
        /// The key.
        key: &'a str,
        /// Its value as written.
        value: &'a str,
    },
    /// A number outside what the key allows.
    OutOfRange {
        /// The key.
        key: &'a str,
        /// Its value.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
}

impl fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotKeyValue(w) => write!(f, "argument '{w}' is not key=value"),
            Self::UnknownWorkload(w) => write!(f, "unknown workload '{w}' (known: hello, dirty)"),
            Self::UnknownKey { workload, key } => write!(f, "workload '{workload}' takes no argument '{key}'"),
            Self::BadNumber { key, value } => write!(f, "{key}={value} is not a number"),
            Self::OutOfRange { key, value, min, max } => {
                write!(f, "{key}={value} is out of range ({min} to {max})")
            }
        }
    }
}

/// Parses the firmware command line.
pub fn parse(cmdline: &str) -> Result<Workload, ArgError<'_>> {
    let mut name = "hello";
    for word in cmdline.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').ok_or(ArgError::NotKeyValue(word))?;
        if key == "workload" {
            name = value;
        }
    }
    match name {
        "hello" => {
            reject_keys(cmdline, name, &[])?;
            Ok(Workload::Hello)
        }
        "dirty" => {
            reject_keys(cmdline, name, &["mib", "rate", "seed"])?;
            let mut args = DirtyArgs::default();
            for (key, value) in pairs(cmdline) {
                match key {
                    "mib" => args.mib = number(key, value, 1, crate::layout::DIRTY_MAX_PAGES / 256)?,
                    "rate" => args.rate_mib_s = number(key, value, 0, 1 << 20)?,
                    "seed" => args.seed = number(key, value, 0, u64::MAX)?,
                    _ => {}
                }
            }
            Ok(Workload::Dirty(args))
        }
        other => Err(ArgError::UnknownWorkload(other)),
    }
}

fn pairs(cmdline: &str) -> impl Iterator<Item = (&str, &str)> {
    cmdline.split_ascii_whitespace().filter_map(|w| w.split_once('='))
}

fn reject_keys<'a>(cmdline: &'a str, workload: &'a str, allowed: &[&str]) -> Result<(), ArgError<'a>> {
    for (key, _) in pairs(cmdline) {
        if key != "workload" && !allowed.contains(&key) {
            return Err(ArgError::UnknownKey { workload, key });
        }
    }
    Ok(())
}

fn number<'a>(key: &'a str, value: &'a str, min: u64, max: u64) -> Result<u64, ArgError<'a>> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    let n = parsed.map_err(|_| ArgError::BadNumber { key, value })?;
    if n < min || n > max {
        return Err(ArgError::OutOfRange {
            key,
            value: n,
            min,
            max,
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_hello() {
        assert_eq!(parse(""), Ok(Workload::Hello));
        assert_eq!(parse("  workload=hello "), Ok(Workload::Hello));
    }

    #[test]
    fn dirty_with_args() {
        assert_eq!(
            parse("workload=dirty mib=256 rate=100 seed=0x2a"),
            Ok(Workload::Dirty(DirtyArgs {
                mib: 256,
                rate_mib_s: 100,
                seed: 42
            }))
        );
        assert_eq!(parse("workload=dirty"), Ok(Workload::Dirty(DirtyArgs::default())));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse("workload=nope"), Err(ArgError::UnknownWorkload("nope")));
        assert_eq!(
            parse("workload=dirty mib=x"),
            Err(ArgError::BadNumber { key: "mib", value: "x" })
        );
        assert_eq!(
            parse("workload=hello mib=3"),
            Err(ArgError::UnknownKey {
                workload: "hello",
                key: "mib"
            })
        );
        assert_eq!(parse("loud"), Err(ArgError::NotKeyValue("loud")));
        assert!(matches!(
            parse("workload=dirty mib=0"),
            Err(ArgError::OutOfRange { key: "mib", .. })
        ));
        extern crate std;
        use std::string::ToString;
        assert_eq!(
            parse("workload=nope").unwrap_err().to_string(),
            "unknown workload 'nope' (known: hello, dirty)"
        );
    }
}
