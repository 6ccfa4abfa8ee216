//! PVH entry: from QEMU's 32-bit protected-mode start to Rust in long mode.
//!
//! QEMU's `-kernel` loader finds the entry point in the ELF note
//! `XEN_ELFNOTE_PHYS32_ENTRY` (type 18; QEMU reads its descriptor as 8
//! bytes), and starts there in 32-bit protected mode, paging off, with
//! `%ebx` pointing at the `hvm_start_info` that carries the `-append`
//! command line. The code below zeroes `.bss`, identity-maps the low 4 GiB
//! with 2 MiB pages (RAM, the virtio-mmio slots at 0xfeb00000, the q35 ECAM
//! at 0xb0000000 and the BARs SeaBIOS assigns below 4 GiB), enables SSE
//! (the prebuilt `core` uses it), enters long mode and calls
//! [`crate::rumk_main`] with the start-info address.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.pvh, "a"
    .balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 8                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                  /* hvm_start_info, for rumk_main */

    /* .bss holds the page tables and the stack: zero it first. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories. */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
1:
    mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 1b

    /* 2048 present, writable 2 MiB pages: 0 .. 4 GiB, identity. */
    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
2:
    mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax                 /* PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $0xC0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    and $0xfffffffb, %eax           /* no EM: SSE instructions run */
    or $0x80000003, %eax            /* PG | MP | PE */
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %esi, %edi                  /* rumk_main(start_info) */
    call rumk_main
3:
    hlt
    jmp 3b

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
boot_gdt_ptr:
    .word 23
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip 512 * 1024
boot_stack_top:
"#,
    options(att_syntax)
);

/// The magic number at the start of a valid `hvm_start_info`.
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Offset of `cmdline_paddr` in `hvm_start_info`.
const CMDLINE_PADDR_OFFSET: usize = 24;
/// The longest command line read (QEMU passes `-append` NUL-terminated).
const MAX_CMDLINE: usize = 4096;

/// The `-append` command line from QEMU's `hvm_start_info` at physical
/// address `start_info` (identity-mapped), or an empty string when there
/// is none or it is not UTF-8.
///
/// # Safety
///
/// `start_info` must be the address the PVH loader passed in `%ebx`.
pub unsafe fn command_line(start_info: u32) -> &'static str {
    let base = start_info as usize;
    if base == 0 {
        return "";
    }
    // SAFETY: the loader placed hvm_start_info at `base` in guest RAM,
    // identity-mapped; the fields read are within its fixed header.
    let (magic, cmdline) = unsafe {
        (
            core::ptr::read_volatile(base as *const u32),
            core::ptr::read_unaligned((base + CMDLINE_PADDR_OFFSET) as *const u64),
        )
    };
    if magic != START_INFO_MAGIC || cmdline == 0 || cmdline >= (1 << 32) {
        return "";
    }
    let start = cmdline as usize;
    let mut len = 0;
    // SAFETY: the command line is a NUL-terminated string in guest RAM
    // below 4 GiB (checked above); the scan stops at MAX_CMDLINE.
    while len < MAX_CMDLINE && unsafe { core::ptr::read((start + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes from `start` were just read as initialised RAM,
    // which nothing writes afterwards.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}
