//! The built-in firmware's virtio-pci drivers and workloads against QEMU's
//! own devices (`microvm,pcie=on`: ECAM at 0xe0000000, BARs unassigned,
//! which the firmware places in the 32-bit window at 0xc0000000): the same
//! ELF that covm embeds, so covm's own PCI and virtio devices have a
//! reference to match. Each test skips, saying why, without
//! qemu-system-x86_64 or a usable KVM.
//!
//! `blk` is checked from the host: after it stops by itself
//! (`stop_after=`) the disk must hold exactly the generations it printed a
//! digest of; after QEMU is killed under it, every block must be zeros or
//! an intact block, and the blocks must add up to at least the writes its
//! last heartbeat reported.

mod common;
use common::blk::{blk_heartbeats, check_disk_matches_summary, disk_generations, field, fresh_seed};
use common::{wait_for_serial, Scratch};
use covm_guest_abi::layout::BLK_BLOCK_SIZE;
use covm_guest_abi::pattern::{generation_digest, WORDS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
const FIRMWARE: &str = env!("COVM_FIRMWARE_ELF");

/// One QEMU at a time: the machine has two cores, and a 4-vCPU guest beside
/// others would only measure the contention.
static QEMU_LOCK: Mutex<()> = Mutex::new(());

/// Whether QEMU and KVM are here; a skip with the reason otherwise.
fn qemu_usable() -> bool {
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            covm_test_support::skip(format!(
                "{QEMU} --version failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return false;
        }
        Err(e) => {
            covm_test_support::skip(format!("{QEMU} cannot be run here: {e}"));
            return false;
        }
    }
    covm_test_support::kvm_usable()
}

/// The host's CPU (less a feature this nested KVM cannot give a guest).
const HOST_CPU: &str = "host,-arch-capabilities";

/// QEMU exits with `code * 2 + 1` when the guest writes `code` to
/// isa-debug-exit at covm's power port.
fn exit_code(power_code: u8) -> i32 {
    power_code as i32 * 2 + 1
}

/// A QEMU running the firmware with `append`, serial output in `serial`,
/// killed when dropped.
struct Qemu {
    child: Child,
    serial: PathBuf,
    started: Instant,
}

impl Qemu {
    fn start(dir: &Scratch, append: &str, vcpus: u32, devices: &[String]) -> Qemu {
        Self::start_with(Command::new(QEMU), dir, append, vcpus, devices)
    }

    /// [`Qemu::start`] through `command` (QEMU inside a network namespace).
    fn start_with(command: Command, dir: &Scratch, append: &str, vcpus: u32, devices: &[String]) -> Qemu {
        Self::start_on(command, ("kvm", HOST_CPU), dir, append, vcpus, devices)
    }

    /// [`Qemu::start_with`] with QEMU's accelerator and CPU model.
    fn start_on(
        mut command: Command,
        (accel, cpu): (&str, &str),
        dir: &Scratch,
        append: &str,
        vcpus: u32,
        devices: &[String],
    ) -> Qemu {
        let serial = dir.path("serial.txt");
        let out = std::fs::File::create(&serial).unwrap();
        let child = command
            .args(["-accel", accel, "-machine", "microvm,pcie=on", "-cpu", cpu])
            .args(["-smp", &vcpus.to_string(), "-m", "512M", "-nographic", "-no-reboot"])
            .args(["-kernel", FIRMWARE, "-append", append])
            .args(["-device", "isa-debug-exit,iobase=0x600,iosize=1"])
            .args(devices)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Qemu {
            child,
            serial,
            started: Instant::now(),
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for QEMU to exit; its status and the serial output.
    fn wait(&mut self, within: Duration) -> (Option<i32>, String) {
        while self.started.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("QEMU did not exit within {within:?}; serial:\n{}", self.text());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn disk(dir: &Scratch, mib: u64) -> (PathBuf, Vec<String>) {
    let path = dir.path("disk.raw");
    std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
    let args = vec![
        "-drive".into(),
        format!("file={},format=raw,if=none,id=d0", path.display()),
        "-device".into(),
        "virtio-blk-pci,drive=d0,disable-legacy=on".into(),
    ];
    (path, args)
}

/// Runs `blk` until it stops by itself after `stop_after` heartbeats and
/// checks the disk against the digest of its generation table.
fn blk_stops_matching_its_table(vcpus: u32, extra: &str, stop_after: u64) -> (String, Duration) {
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new(&format!("qemu-blk{vcpus}"));
    let (image, devices) = disk(&dir, 32);
    let seed = fresh_seed();
    let append = format!("workload=blk mib=8 seed={seed} stop_after={stop_after} {extra}");
    let mut qemu = Qemu::start(&dir, &append, vcpus, &devices);
    let (code, text) = qemu.wait(Duration::from_secs(120));
    let elapsed = qemu.started.elapsed();
    assert_eq!(code, Some(exit_code(0)), "serial:\n{text}");
    assert!(!text.contains("FAIL"), "serial:\n{text}");
    let beats = blk_heartbeats(&text);
    assert_eq!(beats.len() as u64, stop_after, "serial:\n{text}");
    for (i, beat) in beats.iter().enumerate() {
        assert_eq!(beat.number, i as u64 + 1, "heartbeat numbers skip:\n{text}");
    }
    assert!(text.contains("blk: stopped (stop_after)"), "serial:\n{text}");
    let (_, _, _, irqs) = common::blk::blk_summary(&text).unwrap();
    // Completions were waited for halted: the MSI-X vector fired.
    assert!(irqs > 0, "no MSI-X interrupt was counted:\n{text}");
    assert!(beats.last().unwrap().irqs <= irqs, "serial:\n{text}");
    check_disk_matches_summary(&image, seed, 8, &text);
    (text, elapsed)
}

#[test]
fn blk_on_one_vcpu_leaves_the_disk_matching_its_table() {
    if !qemu_usable() {
        return;
    }
    let (text, _) = blk_stops_matching_its_table(1, "", 15);
    assert!(
        text.contains("blk: 8 MiB of the 32 MiB disk 00:01.0, 2048 blocks"),
        "serial:\n{text}"
    );
    assert!(
        text.contains("virtio Block bar1 0xc0000000+0x1000 (32-bit placed)"),
        "serial:\n{text}"
    );
}

#[test]
fn blk_throttled_beside_dirty_on_four_vcpus() {
    if !qemu_usable() {
        return;
    }
    let (text, elapsed) = blk_stops_matching_its_table(4, "rate=1 dirty=16 dirty_rate=20", 20);
    assert!(
        text.contains("dirty: 16 MiB at 0x4000000, 4096 pages, rate 20 MiB/s"),
        "serial:\n{text}"
    );
    assert!(text.contains(", 3 vCPUs,"), "dirty runs on vCPUs 1-3:\n{text}");
    let beats = blk_heartbeats(&text);
    let last = beats.last().unwrap();
    let pages = last.pages.unwrap_or_else(|| panic!("no pages= beside blk:\n{text}"));
    assert!(pages > 0, "dirty wrote nothing:\n{text}");
    // 1 MiB/s is 256 blocks a second, plus at most 100 ms of backlog; the
    // guest ran no longer than QEMU did.
    let bound = (256.0 * elapsed.as_secs_f64()) as u64 + 26;
    assert!(
        last.blocks <= bound,
        "{} block writes in {elapsed:?} at rate=1:\n{text}",
        last.blocks
    );
}

#[test]
fn blk_on_two_vcpus_killed_midway_leaves_only_whole_blocks() {
    if !qemu_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-blk-kill");
    let (image, devices) = disk(&dir, 32);
    let seed = fresh_seed();
    let append = format!("workload=blk mib=8 seed={seed} dirty=16");
    let mut qemu = Qemu::start(&dir, &append, 2, &devices);
    let text = wait_for_serial(&qemu.serial, Duration::from_secs(60), |t| {
        blk_heartbeats(t).len() >= 10 || t.contains("FAIL") || t.contains("error")
    });
    let running = qemu.child.try_wait().unwrap().is_none();
    qemu.kill();
    assert!(running, "QEMU stopped by itself; serial:\n{text}");
    assert!(!text.contains("FAIL"), "serial:\n{text}");
    let beats = blk_heartbeats(&text);
    assert!(beats.len() >= 10, "serial:\n{text}");
    for pair in beats.windows(2) {
        assert!(pair[1].blocks > pair[0].blocks, "block writes did not grow: {pair:?}");
        assert!(
            pair[1].pages > pair[0].pages,
            "dirty's page writes did not grow: {pair:?}"
        );
    }
    let reported = beats.last().unwrap().blocks;
    let on_disk = disk_generations(&image, seed, 8 * 256).unwrap_or_else(|e| panic!("{e}\nserial:\n{text}"));
    let disk_sum: u64 = on_disk.iter().map(|&g| g as u64).sum();
    // Generations only grow and a write is counted once completed.
    assert!(
        disk_sum >= reported,
        "the disk holds {disk_sum} block writes, the guest had reported {reported}"
    );
}

#[test]
fn blk_without_a_disk_names_what_is_missing() {
    if !qemu_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-nodisk");
    let mut qemu = Qemu::start(&dir, "workload=blk", 1, &[]);
    let (code, text) = qemu.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(exit_code(covm_guest_abi::workload::FAIL_DEVICE)),
        "serial:\n{text}"
    );
    assert!(
        text.contains("error: blk: no virtio Block device on PCI bus 0 (ECAM 0xe0000000)"),
        "serial:\n{text}"
    );
}

/// The firmware is compiled for AVX2 (firmware/image/.cargo/config.toml):
/// on a vCPU without it, its ring 0 says so before any Rust code runs.
/// QEMU's emulator (TCG), not KVM: this project's nested KVM (PVM) shows
/// the guest the host's CPUID leaf 7 whatever QEMU asks, AVX2 included.
#[test]
fn a_vcpu_without_avx2_is_named() {
    if !qemu_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-noavx2");
    let mut qemu = Qemu::start_on(Command::new(QEMU), ("tcg", "max,-avx2"), &dir, "workload=hello", 1, &[]);
    let (code, text) = qemu.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(exit_code(covm_guest_abi::ports::power::FAIL_CPU)),
        "serial:\n{text}"
    );
    assert!(
        text.contains("FAIL: the covm firmware needs a vCPU with XSAVE, AVX and AVX2"),
        "serial:\n{text}"
    );
    assert!(!text.contains("hello from covm firmware"), "serial:\n{text}");
    // The same emulated CPU with AVX2 runs the firmware.
    let dir = Scratch::new("qemu-avx2");
    let mut qemu = Qemu::start_on(Command::new(QEMU), ("tcg", "max"), &dir, "workload=hello", 1, &[]);
    let (code, text) = qemu.wait(Duration::from_secs(60));
    assert_eq!(code, Some(exit_code(0)), "serial:\n{text}");
    assert!(text.contains("hello from covm firmware (1 vCPU)"), "serial:\n{text}");
}

#[test]
fn rng_reads_entropy() {
    if !qemu_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-rng");
    let devices = ["-device".to_string(), "virtio-rng-pci,disable-legacy=on".to_string()];
    let mut qemu = Qemu::start(&dir, "workload=rng", 1, &devices);
    let (code, text) = qemu.wait(Duration::from_secs(60));
    assert_eq!(code, Some(exit_code(0)), "serial:\n{text}");
    assert!(
        text.lines().any(|l| l == "rng: 8192 bytes ok from 00:01.0"),
        "serial:\n{text}"
    );
}

#[test]
fn hello_reaches_the_virtio_console() {
    if !qemu_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-console");
    let console = dir.path("console.txt");
    let devices = [
        "-device".to_string(),
        "virtio-serial-pci,disable-legacy=on".to_string(),
        "-chardev".to_string(),
        format!("file,id=c0,path={}", console.display()),
        "-device".to_string(),
        "virtconsole,chardev=c0".to_string(),
    ];
    let mut qemu = Qemu::start(&dir, "workload=hello", 2, &devices);
    let (code, text) = qemu.wait(Duration::from_secs(60));
    assert_eq!(code, Some(exit_code(0)), "serial:\n{text}");
    let line = "hello from covm firmware (2 vCPUs)";
    assert!(text.lines().any(|l| l == line), "the UART line stays; serial:\n{text}");
    assert_eq!(std::fs::read_to_string(&console).unwrap(), format!("{line}\n"));
}

/// One `blkbench` result line.
struct BenchLine {
    name: String,
    bs: u64,
    /// Queue depth reached and asked for.
    qd: (u64, u64),
    ops: u64,
    secs: f64,
    mbps: f64,
    iops: u64,
}

fn bench_line(l: &str) -> Option<BenchLine> {
    let rest = l.strip_prefix("blkbench: ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    // name bs= qd=reached/asked ops= time=<s> s <MB/s> MB/s <IOPS> IOPS
    if words.len() != 10 || words[5] != "s" || words[7] != "MB/s" || words[9] != "IOPS" {
        return None;
    }
    let (reached, asked) = words[2].strip_prefix("qd=")?.split_once('/')?;
    Some(BenchLine {
        name: words[0].to_string(),
        bs: field(l, "bs")?,
        qd: (reached.parse().ok()?, asked.parse().ok()?),
        ops: field(l, "ops")?,
        secs: words[4].strip_prefix("time=")?.parse().ok()?,
        mbps: words[6].parse().ok()?,
        iops: words[8].parse().ok()?,
    })
}

#[test]
fn blkbench_completes_with_sane_numbers() {
    if !qemu_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-blkbench");
    let (_, devices) = disk(&dir, 32);
    let mut qemu = Qemu::start(&dir, "workload=blkbench mib=16 ms=300", 1, &devices);
    let (code, text) = qemu.wait(Duration::from_secs(120));
    assert_eq!(code, Some(exit_code(0)), "serial:\n{text}");
    assert!(text.lines().any(|l| l == "blkbench: done"), "serial:\n{text}");
    let lines: Vec<_> = text.lines().filter_map(bench_line).collect();
    let names: Vec<(&str, u64)> = lines.iter().map(|l| (l.name.as_str(), l.qd.1)).collect();
    assert_eq!(
        names,
        [
            ("seq-write", 16),
            ("seq-read", 16),
            ("rand-write", 1),
            ("rand-read", 1),
            ("rand-write", 32),
            ("rand-read", 32)
        ],
        "serial:\n{text}"
    );
    for l in &lines {
        let name = &l.name;
        assert!(
            l.ops > 0 && l.secs > 0.0 && l.mbps > 0.0 && l.iops > 0,
            "{name}: serial:\n{text}"
        );
        assert!(l.qd.0 >= 1 && l.qd.0 <= l.qd.1, "{name}: qd {:?}", l.qd);
        // The printed rates follow from the printed counts and time; the
        // time is printed cut to the millisecond (a sequential test may
        // take only about 16 ms, so that alone is up to 6 %).
        let (slow, fast) = (l.secs + 0.001, l.secs.max(1e-6));
        let iops = l.iops as f64;
        assert!(
            iops >= l.ops as f64 / slow * 0.99 - 1.0 && iops <= l.ops as f64 / fast * 1.01 + 1.0,
            "{name}: {} IOPS from {} ops in {} s",
            l.iops,
            l.ops,
            l.secs
        );
        let bytes = (l.ops * l.bs) as f64 / 1e6;
        assert!(
            l.mbps >= bytes / slow * 0.99 - 0.1 && l.mbps <= bytes / fast * 1.01 + 0.1,
            "{name}: {} MB/s from {} ops of {} bytes in {} s",
            l.mbps,
            l.ops,
            l.bs,
            l.secs
        );
    }
    // The sequential tests cover the 16 MiB span in 128 KiB requests.
    for l in &lines[..2] {
        assert_eq!((l.bs, l.ops), (128 << 10, 128), "{}: serial:\n{text}", l.name);
    }
    // QEMU offers indirect descriptors: more than one request in flight.
    assert!(lines[4].qd.0 > 1 && lines[5].qd.0 > 1, "serial:\n{text}");
    // Random tests run for their 300 ms.
    for l in &lines[2..] {
        assert!(l.secs >= 0.3 && l.secs < 5.0, "{}: {} s", l.name, l.secs);
    }
}

/// Overwrites the start of `image` with `content`.
fn overwrite(image: &Path, content: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(content).unwrap();
    f.sync_data().unwrap();
}

/// Runs `blk` on a 1 MiB region (each block rewritten several times a
/// second), lets `tamper` change the disk behind QEMU's back (through the
/// host's page cache, which QEMU reads through) and expects the guest to
/// catch it with a line containing `expect`.
fn blk_catches(name: &str, expect: &str, tamper: impl FnOnce(&Path, &[u8])) {
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new(name);
    let (image, devices) = disk(&dir, 8);
    let seed = fresh_seed();
    let mut qemu = Qemu::start(&dir, &format!("workload=blk mib=1 seed={seed}"), 1, &devices);
    let text = wait_for_serial(&qemu.serial, Duration::from_secs(60), |t| {
        blk_heartbeats(t).len() >= 3 || t.contains("FAIL")
    });
    assert!(
        blk_heartbeats(&text).len() >= 3 && !text.contains("FAIL"),
        "serial:\n{text}"
    );
    let before = std::fs::read(&image).unwrap()[..1 << 20].to_vec();
    // Let every block move on to a later generation first.
    let _ = wait_for_serial(&qemu.serial, Duration::from_secs(60), |t| blk_heartbeats(t).len() >= 8);
    tamper(&image, &before);
    let (code, text) = qemu.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(exit_code(covm_guest_abi::ports::power::FAIL_VERIFY)),
        "serial:\n{text}"
    );
    let fail = text.lines().find(|l| l.starts_with("FAIL ")).unwrap_or("");
    assert!(
        fail.starts_with("FAIL block ") && fail.contains(expect),
        "serial:\n{text}"
    );
}

#[test]
fn blk_catches_a_disk_rolled_back_under_it() {
    if !qemu_usable() {
        return;
    }
    // The region as it was five heartbeats ago: intact older generations.
    blk_catches("qemu-blk-rollback", "rolled back: holds generation", |image, before| {
        overwrite(image, before)
    });
}

#[test]
fn blk_catches_damaged_blocks() {
    if !qemu_usable() {
        return;
    }
    blk_catches("qemu-blk-damage", " word 100 is ", |image, _| {
        // One bit of data word 100 of every block of the region, flipped
        // in place a word at a time: whatever the guest writes meanwhile,
        // a block differs from what it wrote in word 100 alone.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
        for block in 0..(1 << 20) / BLK_BLOCK_SIZE {
            let at = block * BLK_BLOCK_SIZE + 100 * 8;
            let mut word = [0u8; 8];
            f.read_exact_at(&mut word, at).unwrap();
            word[0] ^= 0x10;
            f.write_all_at(&word, at).unwrap();
        }
        f.sync_data().unwrap();
    });
}

#[test]
fn the_host_check_rejects_torn_foreign_and_stale_blocks() {
    use covm_guest_abi::pattern::fill_block;
    let dir = Scratch::new("blk-checker");
    let image = dir.path("disk.raw");
    let (seed, generations) = (42u64, [3u32, 0, 1, 7]);
    let mut bytes = Vec::new();
    for (block, &g) in generations.iter().enumerate() {
        let mut words = [0u64; WORDS];
        if g != 0 {
            fill_block(&mut words, seed, block as u64, g as u64);
        }
        bytes.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    }
    std::fs::write(&image, &bytes).unwrap();
    assert_eq!(disk_generations(&image, seed, 4).unwrap(), generations);
    let digest = generation_digest(generations);
    assert!(disk_generations(&image, seed + 1, 4)
        .unwrap_err()
        .contains("block 0 is neither zeros"));
    // Half of block 2 from another generation: torn.
    let mut torn = bytes.clone();
    let mut older = [0u64; WORDS];
    fill_block(&mut older, seed, 2, 2);
    let half = BLK_BLOCK_SIZE as usize / 2;
    let older: Vec<u8> = older.iter().flat_map(|w| w.to_le_bytes()).collect();
    torn[2 * BLK_BLOCK_SIZE as usize + half..3 * BLK_BLOCK_SIZE as usize].copy_from_slice(&older[half..]);
    std::fs::write(&image, &torn).unwrap();
    assert!(disk_generations(&image, seed, 4)
        .unwrap_err()
        .contains("block 2 is neither"));
    // Block 3 whole but one generation behind: readable, and the digest
    // no longer matches the guest's.
    let mut stale = bytes.clone();
    let mut words = [0u64; WORDS];
    fill_block(&mut words, seed, 3, 6);
    let words: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    stale[3 * BLK_BLOCK_SIZE as usize..].copy_from_slice(&words);
    std::fs::write(&image, &stale).unwrap();
    let read = disk_generations(&image, seed, 4).unwrap();
    assert_eq!(read, [3, 0, 1, 6]);
    assert_ne!(generation_digest(read), digest);
}

#[test]
fn net_answers_ping_tcp_and_udp_over_a_tap() {
    use common::netns::{python_usable, run_client, Netns};
    if !qemu_usable() || !python_usable() {
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::new("qemu-net") else { return };
    let dir = Scratch::new("qemu-net");
    let devices = [
        "-netdev".to_string(),
        "tap,id=n0,ifname=qtap0,script=no,downscript=no".to_string(),
        "-device".to_string(),
        "virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:00:09:03".to_string(),
    ];
    let mut qemu = Qemu::start_with(
        ns.command(&[QEMU]),
        &dir,
        "workload=net ip=10.0.9.2/24 port=7",
        1,
        &devices,
    );
    let text = wait_for_serial(&qemu.serial, Duration::from_secs(30), |t| t.contains("heartbeat 1 "));
    assert!(
        text.contains("net: 00:01.0 mac 52:54:00:00:09:03 ip 10.0.9.2/24 port 7"),
        "serial:\n{text}"
    );
    // QEMU opens the TAP; the host side's address is the test's to set.
    ns.run(&["ip", "addr", "add", "10.0.9.1/24", "dev", "qtap0"]);
    ns.run(&["ip", "link", "set", "qtap0", "up"]);
    run_client(&ns, "10.0.9.2", 1 << 20, || qemu.text());
    qemu.kill();
    assert!(!qemu.text().contains("FAIL"), "serial:\n{}", qemu.text());
}

/// The host side of the vsock cross-check, over AF_VSOCK: an echo
/// listener on host port 5000 for the guest's client, and 64 KiB echoed
/// through the guest's listener on port 1234.
const VSOCK_HOST: &str = r#"
import os, socket, sys, threading, time
cid = int(sys.argv[1])
srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
srv.bind((socket.VMADDR_CID_ANY, 5000))
srv.listen(4)
def serve():
    while True:
        c, _ = srv.accept()
        def echo(c=c):
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)
        threading.Thread(target=echo, daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
for attempt in range(100):
    try:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.connect((cid, 1234))
        break
    except OSError:
        time.sleep(0.2)
data = os.urandom(65536)
threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
got = b""
while len(got) < len(data):
    d = s.recv(65536)
    if not d:
        break
    got += d
print("echo", "ok" if got == data else "differs")
time.sleep(3)
"#;

#[test]
fn vsock_echoes_and_streams_over_vhost_vsock() {
    if !qemu_usable() || !common::netns::python_usable() {
        return;
    }
    if !Path::new("/dev/vhost-vsock").exists() {
        covm_test_support::skip(
            "/dev/vhost-vsock is missing (the vhost_vsock module is not loaded), so QEMU has no vsock",
        );
        return;
    }
    let _one = QEMU_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Scratch::new("qemu-vsock");
    let devices = [
        "-device".to_string(),
        "vhost-vsock-pci,guest-cid=77,disable-legacy=on".to_string(),
    ];
    let mut qemu = Qemu::start(&dir, "workload=vsock port=1234 peer=5000 kib=64", 1, &devices);
    let host = std::process::Command::new("python3")
        .args(["-c", VSOCK_HOST, "77"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&host.stdout);
    assert!(
        report.contains("echo ok"),
        "{report}{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let text = wait_for_serial(&qemu.serial, Duration::from_secs(30), |t| {
        t.lines().any(|l| l.contains(" rounds=") && !l.contains(" rounds=0 "))
    });
    qemu.kill();
    assert!(text.contains("vsock: 00:01.0 cid 77 echo port 1234"), "serial:\n{text}");
    assert!(!text.contains("FAIL"), "serial:\n{text}");
}
