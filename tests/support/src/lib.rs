//! What every covm crate's tests share: a test that cannot run here says
//! so where people look, instead of passing silently.
//!
//! libtest hides the standard error of passing tests, so [`skip`] writes
//! past its capture, straight to the process's standard error, and appends
//! the line to the file `COVM_SKIP_LOG` names (`.ci/run` lists it at the
//! end). Where `COVM_REQUIRE_KVM=1` (`.ci/run` sets it when `/dev/kvm` works),
//! [`skip_without_kvm`] fails the test instead: a broken KVM path can never
//! pass silently.

use std::fmt::Display;
use std::io::Write;

/// The test running on this thread (libtest names the thread after it).
fn test_name() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

/// Reports that the calling test skips, and why.
pub fn skip(reason: impl Display) {
    let line = format!("SKIP: {}: {reason}\n", test_name());
    // Past libtest's capture: `std::io::stderr()` is not redirected.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("COVM_SKIP_LOG") {
        if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            // One write of one line: appends from parallel tests stay whole.
            let _ = log.write_all(line.as_bytes());
        }
    }
}

/// Reports a skip for want of a usable KVM; fails instead where the
/// environment says KVM must work (`COVM_REQUIRE_KVM=1`).
pub fn skip_without_kvm(reason: impl Display) {
    if std::env::var_os("COVM_REQUIRE_KVM").is_some_and(|v| v == "1") {
        panic!("COVM_REQUIRE_KVM=1, yet this test found no usable KVM: {reason}");
    }
    skip(reason);
}

/// Whether `/dev/kvm` (or `COVM_KVM_DEVICE`) opens for reading and
/// writing; [`skip_without_kvm`] when it does not.
pub fn kvm_usable() -> bool {
    let device = std::env::var_os("COVM_KVM_DEVICE").unwrap_or_else(|| "/dev/kvm".into());
    match std::fs::OpenOptions::new().read(true).write(true).open(&device) {
        Ok(_) => true,
        Err(e) => {
            skip_without_kvm(format!("{} is not usable here: {e}", device.to_string_lossy()));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_lands_in_the_log_with_the_test_name() {
        let dir = std::env::temp_dir().join(format!("covm-skip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips.log");
        // This crate's only test: no other thread reads the environment.
        std::env::set_var("COVM_SKIP_LOG", &log);
        skip("no such hardware here");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "SKIP: tests::a_skip_lands_in_the_log_with_the_test_name: no such hardware here\n"
        );
    }
}
