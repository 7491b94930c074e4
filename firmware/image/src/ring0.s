# covm firmware, ring 0. AT&T syntax, included by main.rs with global_asm!.
#
# On the project's KVM every CPL0 instruction goes through KVM's instruction
# emulator (microseconds each, and it lacks most SSE instructions), while
# CPL3 runs natively. So ring 0 is only what must be privileged, in plain
# integer instructions, and every table it needs (page tables, GDT, IDT,
# TSSs) is prebuilt in the image instead of being computed at boot.
#
# Ring 3 cannot use `syscall` here (KVM's emulator does not switch to CPL0
# on it) nor a software-interrupt gate other than int3 (`int $n` gives #UD),
# so the syscall gate is int3: vector 3, a DPL3 interrupt gate, number in
# rax, arguments in rdi and rsi, result in rax; rcx and rdx are clobbered
# (syscall 2, CPUID, also returns rbx, rcx and rdx). A CPUID executed in
# ring 3 is not intercepted on this KVM and describes the host, hence that
# syscall.
# The emulator also drops IOPL on iretq, so ring 3 reaches its few ports
# through each TSS's I/O permission bitmap.
#
# Constants shared with Rust (keep in sync with src/hw.rs):
.set MAX_CPUS, 32
.set WRITE_TRACKED_START, 0x400000 # covm_guest_abi::layout::WRITE_TRACKED_START
.set KSTACK_SIZE, 4096          # ring-0 stack per CPU (exceptions, syscalls)
.set USTACK_SIZE, 65536         # ring-3 stack per CPU
.set TIMER_VECTOR, 0x30
.set VIRTIO_VECTOR, 0x41        # the blk request queue's MSI-X vector (virtio.rs)
.set SPURIOUS_VECTOR, 0xff
.set SYS_SLEEP_UNTIL, 0
.set SYS_SEND_IPI, 1
.set SYS_CPUID, 2
.set SYS_SET_FS_BASE, 3

# Fixed layout of .boot, linked at FIRMWARE_BASE (link.ld asserts it), so
# the IDT and the TSS descriptors can be assemble-time constants.
.set BASE, 0x100000
.set TIMER_ABS, BASE + 0x200
.set SPURIOUS_ABS, BASE + 0x240
.set VIRTIO_IRQ_ABS, BASE + 0x260
.set SYSCALL_ABS, BASE + 0x280
.set TSS_ABS, BASE + 0x400
.set TSS_SLOT, 0x140            # one TSS + I/O bitmap per CPU
.set IOMAP_BYTES, 0xd5          # ports 0..0x69f, then the 0xff terminator
.set TSS_LIMIT, 0x68 + IOMAP_BYTES - 1

.set SEL_KCODE, 0x08
.set SEL_KDATA, 0x10
.set SEL_UDATA, 0x18 | 3
.set SEL_UCODE, 0x20 | 3
.set SEL_TSS0, 0x28

.set LAPIC, 0xfee00000          # above 2 GiB: always through a register
.set PCI_MMIO32_BASE, 0xc0000000 # covm_guest_abi::layout::PCI_MMIO32_BASE
.set COM1, 0x3f8
.set POWER_PORT, 0x600
.set FAIL_EXCEPTION, 0x04
.set FAIL_CPU, 0x09             # covm_guest_abi::ports::power::FAIL_CPU
.set MARK_ENTRY, 0x01
.set MARK_LONG_MODE, 0x02

# ---------------------------------------------------------------------------
    .section .boot, "awx"
    .code64

# Exception stubs 0..31, 16 bytes each at BASE + 16 * vector. They push a
# zero error code when the CPU does not, then the vector.
.set v, 0
.rept 32
    .balign 16
    .if v == 3
    jmp syscall_entry               # never used: the IDT points vector 3 at SYSCALL_ABS
    .else
    .if (v == 8) || (v == 10) || (v == 11) || (v == 12) || (v == 13) || (v == 14) || (v == 17) || (v == 21) || (v == 29) || (v == 30)
    pushq $v
    .else
    pushq $0
    pushq $v
    .endif
    jmp exc_common
    .endif
.set v, v + 1
.endr

# Timer (TSC deadline) interrupt. IF is only ever 1 inside the sleep
# syscall, which treats rcx as scratch, so rcx needs no saving here.
    .org 0x200
timer_entry:
    movl $LAPIC, %ecx
    movl $0, 0xb0(%rcx)             # EOI
    iretq

    .org 0x240
spurious_entry:
    iretq

# The virtio-blk request queue's MSI-X interrupt: counted, and that is
# all; ring 3 looks at the used ring itself when the sleep syscall
# returns. Like the timer it only arrives inside the sleep syscall, so rcx
# is scratch. `lock`: the count is read from ring 3 on the same CPU only,
# but a VMM that delivered it elsewhere must not lose increments.
    .org 0x260
virtio_irq_entry:
    lock incq virtio_irqs(%rip)
    movl $LAPIC, %ecx
    movl $0, 0xb0(%rcx)             # EOI
    iretq

# The syscall gate (int3 from ring 3, see the top of this file).
    .org 0x280
syscall_entry:
    testq %rax, %rax
    jz sys_sleep_until
    cmpq $SYS_SEND_IPI, %rax
    je sys_send_ipi
    cmpq $SYS_CPUID, %rax
    je sys_cpuid
    cmpq $SYS_SET_FS_BASE, %rax
    je sys_set_fs_base
    movq $-1, %rax
    iretq

# rdi = canonical address for IA32_FS_BASE (ring 3 cannot write it: no
# FSGSBASE). Nothing in the firmware uses FS; the `dirty` workload parks
# a per-boot value there that tests look for in migration streams.
sys_set_fs_base:
    movl $0xc0000100, %ecx
    movq %rdi, %rax
    movq %rdi, %rdx
    shrq $32, %rdx
    wrmsr
    xorl %eax, %eax
    iretq

# rdi = TSC deadline. Arms IA32_TSC_DEADLINE and halts until an interrupt;
# returns 1. Ring 3 loops until rdtsc >= deadline (an old pending timer
# interrupt may wake us early). Returns 0 at once without TSC-deadline
# support: ring 3 then spins.
sys_sleep_until:
    cmpb $0, tsc_deadline_ok(%rip)
    je 1f
    movq %rdi, %rax
    movq %rdi, %rdx
    shrq $32, %rdx
    movl $0x6e0, %ecx
    wrmsr
    sti
    hlt
    cli
    movl $1, %eax
    iretq
1:  xorl %eax, %eax
    iretq

# edi = leaf, esi = subleaf: CPUID as the VMM configured it. On this
# machine's KVM a CPUID executed in ring 3 is not intercepted and reports
# the host CPU; in ring 0 it goes through the emulator and KVM's table.
sys_cpuid:
    movl %edi, %eax
    movl %esi, %ecx
    cpuid
    iretq

# edi = value for the local APIC's ICR low word (INIT/SIPI with a
# destination shorthand: ICR high is not used).
sys_send_ipi:
    movl $LAPIC, %ecx
    movl %edi, 0x300(%rcx)
    xorl %eax, %eax
    iretq

# Per-CPU TSS + I/O bitmap at TSS_ABS + i * TSS_SLOT. Ring 3 may use only
# the ports the firmware needs: PIT 0x40-0x43, port 0x61 (PIT gate and
# output), POST 0x80, COM1 0x3f8-0x3ff, covm's power port 0x600 and the
# confidential platform's 0x610-0x69f (ports accessed 32 bits wide, so all
# four bytes of each are allowed: the agent's, its team's and the
# page-state request's; ports::LAST_CONFIDENTIAL_PORT).
    .org 0x400
.set i, 0
.rept MAX_CPUS
    .long 0
    .quad kstacks + (i + 1) * KSTACK_SIZE   # RSP0
    .quad 0, 0, 0                           # RSP1, RSP2, reserved
    .quad 0, 0, 0, 0, 0, 0, 0               # IST1-7
    .quad 0
    .word 0
    .word 0x68                              # I/O bitmap right after the TSS
    .fill 8, 1, 0xff                        # ports 0x000-0x03f
    .byte 0xf0                              # 0x040-0x043 allowed
    .fill 3, 1, 0xff
    .byte 0xfd                              # 0x061 allowed
    .fill 3, 1, 0xff
    .byte 0xfe                              # 0x080 allowed
    .fill 0x7f - 0x11, 1, 0xff
    .byte 0x00                              # 0x3f8-0x3ff allowed
    .fill 0xc0 - 0x80, 1, 0xff
    .byte 0xfe                              # 0x600 allowed
    .byte 0xff                              # 0x608-0x60f
    .fill 18, 1, 0x00                       # 0x610-0x69f allowed
    .byte 0xff                              # terminator
    .fill TSS_SLOT - 0x68 - IOMAP_BYTES, 1, 0
.set i, i + 1
.endr

# ---------------------------------------------------------------------------
# AP start-up trampoline. Ring 3 copies it to TRAMP (0x8000) right before
# the SIPIs: a BIOS that ran before us (QEMU's SeaBIOS) may have used that
# memory, so it is not a load segment of its own. SIPI vector 0x08 starts it
# in real mode with CS base 0x8000; addresses are computed for that place.
# It only reaches 32-bit protected mode with its own tiny GDT and then
# joins the BSP's path at common32.
.set TRAMP, 0x8000
    .code16
    .globl ap_trampoline
ap_trampoline:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl TRAMP + (tramp_gdt_ptr - ap_trampoline)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(TRAMP + (tramp32 - ap_trampoline))
    .code32
tramp32:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $1, %edi                   # edi = 1: an AP
    movl $common32, %eax
    jmp *%eax
    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff        # 0x08: flat 32-bit code
    .quad 0x00cf93000000ffff        # 0x10: flat data
tramp_gdt_ptr:
    .word 23
    .long TRAMP + (tramp_gdt - ap_trampoline)
    .globl ap_trampoline_end
ap_trampoline_end:

# ---------------------------------------------------------------------------
# PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off,
# flat segments, ebx = physical address of struct hvm_start_info.
    .code32
    .globl pvh_start
pvh_start:
    movb $MARK_ENTRY, %al
    outb %al, $0x80
    movl %ebx, start_info_paddr
    movb $0xff, %al                 # mask the 8259s: a BIOS (QEMU q35) may
    outb %al, $0x21                 # have left IRQ0 on vector 8, which would
    outb %al, $0xa1                 # arrive while the sleep syscall has IF=1
    xorl %edi, %edi                 # edi = 0: the BSP

# BSP and APs: 32-bit protected mode -> long mode with the prebuilt tables.
common32:
    lgdt gdt_ptr
    movl $0x620, %eax               # PAE | OSFXSR | OSXMMEXCPT
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          # EFER.LME
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl $0x80000033, %eax          # PG | NE | ET | MP | PE; EM and TS clear
    movl %eax, %cr0
    ljmp $SEL_KCODE, $long64

    .code64
long64:
    movl $SEL_KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %ebp, %ebp                 # ebp = CPU index: 0 for the BSP
    testl %edi, %edi
    jz 1f
    movl $1, %ebp                   # APs number themselves 1, 2, ...
    lock xaddl %ebp, next_cpu_index(%rip)
    cmpl $MAX_CPUS, %ebp
    jae park
1:  leal 1(%rbp), %eax
    shll $12, %eax                  # * KSTACK_SIZE
    leaq kstacks(%rax), %rsp
    lidt idt_ptr(%rip)
    movl %ebp, %eax
    shll $4, %eax
    addl $SEL_TSS0, %eax
    ltr %ax
    testl %ebp, %ebp
    jnz 2f
    movb $MARK_LONG_MODE, %al
    outb %al, $0x80

# Ring 3 is compiled for AVX2 (.cargo/config.toml: the agent's AES-GCM
# glue in VEX encoding runs at about twice the speed of SSE encoding next
# to VAES): without XSAVE, AVX and AVX2 the firmware says so and stops.
2:  movl $7, %eax
    xorl %ecx, %ecx
    cpuid
    btl $5, %ebx                    # AVX2
    jnc no_avx2
    movl $1, %eax
    cpuid
    movl %ecx, %r8d
    btl $26, %r8d                   # XSAVE
    jnc no_avx2
    btl $28, %r8d                   # AVX
    jnc no_avx2
    movq %cr4, %rax
    orl $0x40000, %eax              # OSXSAVE
    movq %rax, %cr4
    movl $0xd, %eax                 # the XCR0 bits this CPU supports
    xorl %ecx, %ecx
    cpuid
    andl $0xe0, %eax                # AVX-512 (VAES, VPCLMULQDQ at 512 bits)
    cmpl $0xe0, %eax                # needs opmask, ZMM_Hi256 and Hi16_ZMM
    je 6f
    xorl %eax, %eax
6:  orl $7, %eax                    # x87 | SSE | AVX
    xorl %edx, %edx
    xorl %ecx, %ecx
    xsetbv

    movl $LAPIC, %ebx               # enable the local APIC, spurious 0xff
    movl $0x100 | SPURIOUS_VECTOR, 0xf0(%rbx)
    movl $0x10000, 0x350(%rbx)      # mask LINT0 (ExtINT from the 8259)
    btl $24, %r8d                   # TSC-deadline timer
    jnc 5f
    movl $0x40000 | TIMER_VECTOR, 0x320(%rbx)
    movb $1, tsc_deadline_ok(%rip)

5:  pushq $SEL_UDATA                # iretq to ring 3, IF = 0
    leal 1(%rbp), %eax
    shll $16, %eax                  # * USTACK_SIZE
    leaq ustacks-8(%rax), %rax      # as if user_main had been called
    pushq %rax
    pushq $2
    pushq $SEL_UCODE
    pushq $user_main
    movl %ebp, %edi
    movl start_info_paddr(%rip), %esi
    iretq

no_avx2:                            # see the CPUID checks above
    leaq msg_no_avx2(%rip), %rsi
    call r0_puts
    movw $POWER_PORT, %dx
    movb $FAIL_CPU, %al
    outb %al, %dx
    jmp park

park:                               # more CPUs than MAX_CPUS
    cli
    hlt
    jmp park

# ---------------------------------------------------------------------------
# Exceptions: print "exception <vec> error <code> rip <rip> cpu <n>" (and
# "cr2 <addr>" for a page fault) on COM1 and power off with FAIL_EXCEPTION.
# Stack: vector, error code, then the CPU's frame. The CPU index is derived
# from the ring-0 stack we are on.
exc_common:
    leaq msg_exception(%rip), %rsi
    call r0_puts
    movq (%rsp), %rax
    call r0_dec
    leaq msg_error(%rip), %rsi
    call r0_puts
    movq 8(%rsp), %rax
    call r0_hex
    leaq msg_rip(%rip), %rsi
    call r0_puts
    movq 16(%rsp), %rax
    call r0_hex
    leaq msg_cpu(%rip), %rsi
    call r0_puts
    movq %rsp, %rax
    subq $kstacks, %rax
    shrq $12, %rax
    call r0_dec
    cmpq $14, (%rsp)
    jne 1f
    leaq msg_cr2(%rip), %rsi
    call r0_puts
    movq %cr2, %rax
    call r0_hex
1:  movw $COM1, %dx
    movb $10, %al
    outb %al, %dx
    movw $POWER_PORT, %dx
    movb $FAIL_EXCEPTION, %al
    outb %al, %dx
2:  cli
    hlt
    jmp 2b

# rsi = NUL-terminated string.
r0_puts:
    movw $COM1, %dx
1:  movb (%rsi), %al
    testb %al, %al
    jz 2f
    outb %al, %dx
    incq %rsi
    jmp 1b
2:  ret

# rax in hex with 0x and without leading zeros.
r0_hex:
    movq %rax, %r8
    movw $COM1, %dx
    movb $0x30, %al                 # '0'
    outb %al, %dx
    movb $0x78, %al                 # 'x'
    outb %al, %dx
    xorl %r9d, %r9d                 # a digit was printed
    movb $60, %cl
1:  movq %r8, %rax
    shrq %cl, %rax
    andl $0xf, %eax
    testb %cl, %cl
    jz 2f                           # always print the last digit
    testl %r9d, %r9d
    jnz 2f
    testl %eax, %eax
    jz 4f
2:  movl $1, %r9d
    cmpb $10, %al
    jb 3f
    addb $0x27, %al                 # 'a' - '0' - 10
3:  addb $0x30, %al
    outb %al, %dx
4:  subb $4, %cl
    jns 1b
    ret

# rax in decimal.
r0_dec:
    movl $10, %r8d
    xorl %ecx, %ecx
1:  xorl %edx, %edx
    divq %r8
    pushq %rdx
    incl %ecx
    testq %rax, %rax
    jnz 1b
    movw $COM1, %dx
2:  popq %rax
    addb $0x30, %al
    outb %al, %dx
    decl %ecx
    jnz 2b
    ret

msg_exception: .asciz "exception "
msg_error:     .asciz " error "
msg_rip:       .asciz " rip "
msg_cpu:       .asciz " cpu "
msg_cr2:       .asciz " cr2 "
msg_no_avx2:   .asciz "FAIL: the covm firmware needs a vCPU with XSAVE, AVX and AVX2\n"

# ---------------------------------------------------------------------------
    .section .data.ring0, "aw"

    .globl tsc_deadline_ok
tsc_deadline_ok: .byte 0            # set by ring 0; read by the sleep syscall
    .balign 8
    .globl virtio_irqs
virtio_irqs:     .quad 0            # VIRTIO_VECTOR interrupts taken (hw.rs)
next_cpu_index:  .long 1
start_info_paddr: .long 0

# GDT: null, kernel code, kernel data, user data, user code (the order
# sysret would want, though sysret is unusable here), then one 16-byte TSS
# descriptor per CPU.
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff        # 0x08 kernel code, 64-bit
    .quad 0x00cf93000000ffff        # 0x10 kernel data
    .quad 0x00cff3000000ffff        # 0x18 user data
    .quad 0x00affb000000ffff        # 0x20 user code, 64-bit
.set i, 0
.rept MAX_CPUS
    .word TSS_LIMIT
    .word (TSS_ABS + i * TSS_SLOT) & 0xffff
    .byte ((TSS_ABS + i * TSS_SLOT) >> 16) & 0xff
    .byte 0x89                      # present, available 64-bit TSS
    .byte 0
    .byte ((TSS_ABS + i * TSS_SLOT) >> 24) & 0xff
    .long 0
    .long 0
.set i, i + 1
.endr
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

# IDT: exceptions to the stubs, vector 3 to the DPL3 syscall gate, the
# timer, the virtio interrupt and the spurious vector; everything else not
# present.
.macro gate handler, type
    .word (\handler) & 0xffff
    .word SEL_KCODE
    .byte 0
    .byte \type
    .word ((\handler) >> 16) & 0xffff
    .long 0
    .long 0
.endm
    .balign 16
idt:
.set v, 0
.rept 256
    .if v == 3
    gate SYSCALL_ABS, 0xee
    .elseif v < 32
    gate BASE + v * 16, 0x8e
    .elseif v == TIMER_VECTOR
    gate TIMER_ABS, 0x8e
    .elseif v == VIRTIO_VECTOR
    gate VIRTIO_IRQ_ABS, 0x8e
    .elseif v == SPURIOUS_VECTOR
    gate SPURIOUS_ABS, 0x8e
    .else
    .quad 0, 0
    .endif
.set v, v + 1
.endr
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

# Identity map of 0-4 GiB with 2 MiB pages, user-accessible (ring 3 does
# all the work, device drivers included); from PCI_MMIO32_BASE up (the
# MMIO hole: PCI BARs, ECAM, IOAPIC, LAPIC; covm and QEMU microvm put no
# RAM there) it is uncached, as device registers must be. Accessed is
# preset everywhere, dirty below WRITE_TRACKED_START (4 MiB: everything
# covm loads and the firmware writes before paging lives there) and in
# the top 32 MiB (LAPIC, IOAPIC: as it always was; covm's unit test
# the_page_directory_tracks_writes_exactly_above_the_image pins both). Above
# it the CPU sets a 2 MiB page's dirty bit on its first write, so a clear
# bit tells the migration agent the 2 MiB still hold what launch left
# there, zeros, without reading them (covm_guest_abi::layout).
    .balign 4096
pml4:
    .quad pdpt + 0x27
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x27
    .quad pd + 0x1000 + 0x27
    .quad pd + 0x2000 + 0x27
    .quad pd + 0x3000 + 0x27
    .fill 508, 8, 0
    .globl boot_pd
boot_pd:
pd:
.set i, 0
.rept 2048
    .if i >= 2048 - 16
    .quad (i << 21) | 0xff          # P RW US PWT PCD A D PS
    .elseif i >= PCI_MMIO32_BASE >> 21
    .quad (i << 21) | 0xbf          # P RW US PWT PCD A PS
    .elseif i < WRITE_TRACKED_START >> 21
    .quad (i << 21) | 0xe7          # P RW US A D PS
    .else
    .quad (i << 21) | 0xa7          # P RW US A PS (dirty on first write)
    .endif
.set i, i + 1
.endr

# ---------------------------------------------------------------------------
    .section .bss.stacks, "aw", @nobits
    .balign 4096
kstacks:
    .skip MAX_CPUS * KSTACK_SIZE
ustacks:
    .skip MAX_CPUS * USTACK_SIZE

# ---------------------------------------------------------------------------
# PVH entry point note for the loader (covm, QEMU).
    .section .note.Xen, "a"
    .balign 4
    .long 4                         # name size
    .long 8                         # desc size
    .long 18                        # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_start
    .balign 4

    .text
