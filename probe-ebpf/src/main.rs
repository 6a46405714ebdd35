//! probe's kernel programs. One module per collector; the daemon (probe-user) loads this object,
//! sets the read-only globals below from the running kernel's BTF, and attaches what it can.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Map lookups and inserts take `impl Borrow<K>`: keys and values are passed by reference so that
// no copy of a large value lands on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod block;
mod cpu;
mod kernel;
mod ports;
mod runq;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The programs use GPL-only helpers (bpf_probe_read_kernel, bpf_seq_write); the code is
/// dual-licensed MIT/GPL.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
