//! The few things the Rust standard library would otherwise provide: the
//! entry point, two Linux system calls, the memory functions the compiler
//! calls, and a panic handler. All the unsafe code of the check is here.

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

// The kernel enters _start with a 16-byte aligned stack and no return
// address; call Rust from there with the alignment the ABI expects.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

// The precompiled libcore refers to the unwinding personality routine;
// with panic=abort it is never called.
global_asm!(".globl rust_eh_personality", "rust_eh_personality:", "ud2");

extern "C" fn entry() -> ! {
    exit(super::main())
}

fn exit(code: i32) -> ! {
    // SAFETY: exit_group never returns.
    unsafe { asm!("syscall", in("rax") 231, in("rdi") code, options(noreturn, nostack)) }
}

fn write(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n: isize;
        // SAFETY: write(1, ptr, len) only reads the buffer.
        unsafe {
            asm!("syscall", inlateout("rax") 1isize => n, in("rdi") 1, in("rsi") rest.as_ptr(),
                 in("rdx") rest.len(), lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

struct Out;

impl Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}

/// Prints to standard output.
pub fn print(args: fmt::Arguments<'_>) {
    let _ = Out.write_fmt(args);
}

const PAINTED: usize = 1 << 20;
const PAINT: u8 = 0xA5;

/// Runs `f` and returns its result and the deepest stack it used, found
/// by painting the megabyte below the current stack pointer first.
#[inline(never)]
pub fn measure_stack(f: impl FnOnce() -> i32) -> (i32, usize) {
    let sp: usize;
    // SAFETY: reads the stack pointer.
    unsafe { asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    // Leave a margin for this frame and the red zone.
    let top = sp - 256;
    let bottom = top - PAINTED;
    for addr in bottom..top {
        // SAFETY: the main thread's stack grows on demand well past 1 MiB
        // (8 MiB by default); nothing lives below the stack pointer.
        unsafe { (addr as *mut u8).write_volatile(PAINT) };
    }
    let code = f();
    let mut deepest = top;
    for addr in bottom..top {
        // SAFETY: painted above.
        if unsafe { (addr as *const u8).read_volatile() } != PAINT {
            deepest = addr;
            break;
        }
    }
    (code, top - deepest)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    print(format_args!("FAIL panic: {info}\n"));
    exit(101)
}

// The memory functions the compiler calls; there is no libc. rep movsb /
// rep stosb cannot be turned back into calls to themselves.

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    };
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: no harmful overlap: copying forwards is right.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: dst overlaps src's tail: copy backwards, restore DF.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dst.add(n).wrapping_sub(1) => _,
             inout("rsi") src.add(n).wrapping_sub(1) => _, options(nostack))
    };
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") value as u8,
             options(nostack, preserves_flags))
    };
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
