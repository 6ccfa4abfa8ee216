//! What the prebuilt `core` expects from the platform: the C memory
//! functions (normally libc's) and the unwinding personality symbol (this
//! guest aborts on panic, but `core` for the host target was built with
//! unwinding and still names it).
//!
//! The copies use `rep movsb`/`rep stosb` rather than loops: a loop here
//! could be recognised by the optimiser as a memcpy idiom and compiled into
//! a call to itself.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest` (which must not overlap).
///
/// # Safety
///
/// As C's `memcpy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`, which may overlap.
///
/// # Safety
///
/// As C's `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dest;
    }
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dest is below src or past it.
        return unsafe { memcpy(dest, src, n) };
    }
    // Overlapping with dest above src: copy backwards.
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes;
    // the direction flag is restored before returning.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dest
}

/// Sets `n` bytes at `dest` to `c`.
///
/// # Safety
///
/// As C's `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// Compares `n` bytes at `a` and `b`.
///
/// # Safety
///
/// As C's `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes at `a` and `b` for equality only.
///
/// # Safety
///
/// As C's `bcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// Named by the prebuilt `core`; never called, since this guest aborts
/// on panic instead of unwinding.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
