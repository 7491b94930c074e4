//! The `rng` workload: two 4 KiB reads of entropy from the first
//! virtio-rng device, checked for being anything but constant, then a
//! clean power-off.

use crate::virtio::{self, Devices, Rng};
use crate::{hw, println};
use covm_guest_abi::ports::power;
use covm_guest_abi::workload::FAIL_DEVICE;
use virtio_drivers::transport::pci::bus::DeviceFunction;

const LEN: usize = 4096;
/// 4096 random bytes take about 255.9 distinct values (the chance of
/// fewer than 128 is far below 2^-1000); a device that repeats a short
/// pattern or a few values does not reach it.
const MIN_DISTINCT: usize = 128;

/// Fills `buf`; a device may hand over fewer bytes than asked per request.
fn fill(rng: &mut Rng, df: DeviceFunction, buf: &mut [u8]) {
    let mut at = 0;
    let mut empty = 0;
    while at < buf.len() {
        match rng.request_entropy(&mut buf[at..]) {
            Ok(0) => {
                empty += 1;
                if empty == 100 {
                    fail(
                        df,
                        format_args!("100 requests in a row returned no entropy"),
                        FAIL_DEVICE,
                    );
                }
            }
            Ok(n) => at += n.min(buf.len() - at),
            Err(e) => fail(df, format_args!("request failed: {e}"), FAIL_DEVICE),
        }
    }
}

fn fail(df: DeviceFunction, why: core::fmt::Arguments, code: u8) -> ! {
    println!("FAIL rng {df}: {why}");
    hw::power_off(code)
}

fn distinct(bytes: &[u8]) -> usize {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[b as usize] = true;
    }
    seen.iter().filter(|&&s| s).count()
}

pub fn run(mut devices: Devices) -> ! {
    let (mut rng, df) = devices
        .rng()
        .unwrap_or_else(|e| virtio::fail_device(format_args!("rng: {e}")));
    // On this CPU's stack: identity-mapped, so the device writes it in place.
    let (mut a, mut b) = ([0u8; LEN], [0u8; LEN]);
    fill(&mut rng, df, &mut a);
    fill(&mut rng, df, &mut b);
    for (name, bytes) in [("first", &a), ("second", &b)] {
        if bytes.iter().all(|&x| x == bytes[0]) {
            fail(
                df,
                format_args!("the {name} {LEN} bytes are all {:#04x}", bytes[0]),
                power::FAIL_VERIFY,
            );
        }
        let n = distinct(bytes);
        if n < MIN_DISTINCT {
            fail(
                df,
                format_args!("the {name} {LEN} bytes take only {n} distinct values (random ones take about 256)"),
                power::FAIL_VERIFY,
            );
        }
    }
    if a == b {
        fail(
            df,
            format_args!("two reads of {LEN} bytes are identical"),
            power::FAIL_VERIFY,
        );
    }
    println!("rng: {} bytes ok from {df}", 2 * LEN);
    hw::power_off(power::OFF)
}
