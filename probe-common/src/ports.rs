//! Listening TCP sockets per process, from the task_file iterator.

/// Program name of the task_file iterator (section `iter/task_file`).
pub const LISTEN_ITER_PROGRAM: &str = "probe_listeners";

/// `TCP_LISTEN` in sock_common.skc_state.
pub const TCP_LISTEN: u8 = 10;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// One listening TCP socket held by a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenRecord {
    pub tgid: u32,
    pub fd: u32,
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

impl ListenRecord {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}
