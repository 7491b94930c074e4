//! The Linux 64-bit boot path, run on real KVM up to the guest's entry with
//! synthetic images: a minimal ELF without a PVH note and a minimal
//! bzImage. Their entry code checks the zero page covm handed over in RSI
//! ("HdrS" in the setup header), prints "ok" and the first byte of the
//! command line it points to, and powers off.

mod common;
use common::*;
use std::time::Duration;

/// 64-bit code: check boot_params.hdr.header, print "ok", the first
/// command-line byte and a newline, power off (or fail with code 9).
fn entry_code() -> Vec<u8> {
    let mut c = vec![
        0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi+0x202]  (hdr.header)
        0x3d, 0x48, 0x64, 0x72, 0x53, // cmp eax, "HdrS"
        0x75, 0x1e, // jne fail
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'o', 0xee, // mov al, 'o'; out dx, al
        0xb0, b'k', 0xee, // mov al, 'k'; out dx, al
        0x8b, 0x9e, 0x28, 0x02, 0x00, 0x00, // mov ebx, [rsi+0x228]  (hdr.cmd_line_ptr)
        0x8a, 0x03, 0xee, // mov al, [rbx]; out dx, al
        0xb0, b'\n', 0xee, // newline
        0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
        0x31, 0xc0, 0xee, // xor eax, eax; out dx, al  (power off)
        0xf4, // hlt
    ];
    // fail:
    c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x09, 0xee, 0xf4]);
    c
}

/// An ELF64 executable with one PT_LOAD at 2 MiB whose entry is `code`.
fn elf_image(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x20_0000;
    const HEADERS: u64 = 64 + 56;
    let total = HEADERS + code.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [0, BASE, BASE, total, total, 0x1000] {
        f.extend_from_slice(&v.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
    }
    f.extend_from_slice(code);
    f
}

/// A bzImage: one setup sector after the boot sector, then the
/// protected-mode kernel loaded at 1 MiB whose 64-bit entry is at +0x200.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    f[0x211] = 0x01; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    let mut kernel = vec![0xf4u8; 0x200]; // hlt padding before startup_64
    kernel.extend_from_slice(code);
    kernel.resize(0x1000, 0);
    f.extend_from_slice(&kernel);
    let syssize = (kernel.len() / 16) as u32;
    f[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    f
}

fn boot(name: &str, image: &[u8], extra: &[&str]) -> (Option<i32>, String, String) {
    let dir = Scratch::new(name);
    let path = dir.path("image");
    std::fs::write(&path, image).unwrap();
    let serial = dir.path("serial.txt");
    let path = path.display().to_string();
    let mut args = vec!["--kernel", path.as_str(), "--cmdline", "Zebra console=ttyS0"];
    args.extend_from_slice(extra);
    let (out, text) = run_to_end(&args, &serial, Duration::from_secs(60));
    (out.status.code(), text, stderr(&out))
}

#[test]
fn elf_without_pvh_note_enters_long_mode_with_a_zero_page() {
    if !kvm_available() {
        return;
    }
    let (status, serial, err) = boot("elf64", &elf_image(&entry_code()), &[]);
    assert_eq!(status, Some(0), "serial {serial:?} stderr {err}");
    assert_eq!(serial, "okZ\n");
}

#[test]
fn bzimage_enters_startup_64_with_a_zero_page() {
    if !kvm_available() {
        return;
    }
    let (status, serial, err) = boot("bzimage", &bzimage(&entry_code()), &[]);
    assert_eq!(status, Some(0), "serial {serial:?} stderr {err}");
    assert_eq!(serial, "okZ\n");
}

#[test]
fn bzimage_with_initramfs_boots() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("initrd");
    let initrd = dir.path("initrd.img");
    std::fs::write(&initrd, vec![0x5au8; 64 * 1024]).unwrap();
    let initrd = initrd.display().to_string();
    let (status, serial, err) = boot("bzinitrd", &bzimage(&entry_code()), &["--initramfs", &initrd]);
    assert_eq!(status, Some(0), "serial {serial:?} stderr {err}");
    assert_eq!(serial, "okZ\n");
}

#[test]
fn guest_triple_fault_is_reported_as_a_crash() {
    if !kvm_available() {
        return;
    }
    // ud2 with no IDT: #UD, then #DF, then a triple fault.
    let (status, _, err) = boot("crash", &elf_image(&[0x0f, 0x0b]), &[]);
    assert_eq!(status, Some(5), "stderr {err}");
    assert!(err.contains("guest crashed: vCPU 0: triple fault"), "{err}");
}

/// 64-bit code that writes `value` to `port` and halts.
fn out_byte(port: u16, value: u8) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0x66, 0xba, p[0], p[1], 0xb0, value, 0xee, 0xf4] // mov dx, port; mov al, value; out dx, al; hlt
}

#[test]
fn i8042_reset_ends_covm_with_the_reset_status() {
    if !kvm_available() {
        return;
    }
    let (status, _, err) = boot("kbdreset", &elf_image(&out_byte(0x64, 0xfe)), &[]);
    assert_eq!(status, Some(3), "stderr {err}");
}

#[test]
fn power_port_reset_and_failure_statuses() {
    if !kvm_available() {
        return;
    }
    let (status, _, err) = boot("pwrreset", &elf_image(&out_byte(0x600, 1)), &[]);
    assert_eq!(status, Some(3), "stderr {err}");
    let (status, _, err) = boot("pwrfail", &elf_image(&out_byte(0x600, 0x42)), &[]);
    assert_eq!(status, Some(4), "stderr {err}");
    assert_eq!(err, "covm: guest powered off reporting failure code 0x42\n");
}

#[test]
fn log_file_receives_the_log() {
    if !kvm_available() {
        return;
    }
    let dir = Scratch::new("logfile");
    let log = dir.path("covm.log");
    let log_arg = log.display().to_string();
    let (status, _, err) = boot(
        "logged",
        &elf_image(&out_byte(0x600, 0)),
        &["-v", "--log-file", &log_arg],
    );
    assert_eq!(status, Some(0), "stderr {err}");
    assert!(err.is_empty(), "the log went to stderr: {err}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("guest ended at"), "log: {text}");
}
