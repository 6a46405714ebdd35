//! Types shared by the kernel programs (`probe-ebpf`) and the daemon (`probe-user`).
//!
//! Every struct here crosses the kernel/user boundary byte for byte: `#[repr(C)]`, explicit padding,
//! integers instead of `bool`. Map and program names are constants so both sides agree on them.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod block;
pub mod config;
pub mod cpu;
pub mod latency;
pub mod ports;
pub mod runq;
pub mod tcp;

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// `unsafe impl aya::Pod` for types that are plain old data (no padding holes left uninitialised,
/// no pointers). Only compiled for userspace.
#[cfg(feature = "user")]
macro_rules! pod {
    ($($t:ty),* $(,)?) => { $( unsafe impl aya::Pod for $t {} )* };
}
#[cfg(feature = "user")]
pod!(
    block::IoKey,
    block::IoTotals,
    block::IoStart,
    block::Writer,
    config::Offsets,
    cpu::TaskRecord,
    cpu::DeadKey,
    cpu::DeadTotals,
    ports::ListenRecord,
    runq::ThreadRunq,
    tcp::TcpKey,
    tcp::TcpTotals,
    tcp::SockBase,
    tcp::RttTotals
);
