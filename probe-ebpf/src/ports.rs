//! Listening TCP sockets per process: iter/task_file visits every open file of every process;
//! bpf_sock_from_file turns socket files into sockets, and listening TCP ones are reported.
//! Runs only when the daemon collects, and has no side effects (the kernel may re-run an
//! iterator program for the same element).

use aya_ebpf::helpers::generated::bpf_sock_from_file;
use probe_common::ports::{ListenRecord, AF_INET, AF_INET6, IPPROTO_TCP, TCP_LISTEN};

use crate::kernel::{off, read, self_tgid, seq_write, IterMeta};

/// `struct bpf_iter__task_file`.
#[repr(C)]
pub struct TaskFileIterCtx {
    meta: *const IterMeta,
    task: *const u8,
    fd: u32,
    _pad: u32,
    file: *mut u8,
}

/// The task and file of an iterator context; None at the end of the iteration.
#[inline(always)]
pub(crate) fn task_and_file(ctx: *const TaskFileIterCtx) -> Option<(*const u8, *const u8)> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: ctx is the iterator context the kernel passes, checked non-null above.
    let (task, file) = unsafe { ((*ctx).task, (*ctx).file) };
    if task.is_null() || file.is_null() {
        return None;
    }
    Some((task, file.cast_const()))
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn probe_listeners(ctx: *const TaskFileIterCtx) -> i32 {
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: ctx is the iterator context the kernel passes, checked non-null above.
    let (meta, task, fd, file) = unsafe { ((*ctx).meta, (*ctx).task, (*ctx).fd, (*ctx).file) };
    if task.is_null() || file.is_null() {
        return 0;
    }
    // SAFETY: file is the iterator's struct file, checked non-null; the helper returns null for a
    // file that is not a socket.
    let socket = unsafe { bpf_sock_from_file(file as *mut _) } as *const u8;
    if socket.is_null() {
        return 0;
    }
    let Some(tgid) = read::<u32>(task, off!(task_tgid)) else {
        return 0;
    };
    if tgid == self_tgid() {
        return 0;
    }
    let Some(sk) = crate::kernel::read_ptr(socket, off!(socket_sk)) else {
        return 0;
    };
    let Some(state) = read::<u8>(sk, off!(sk_state)) else {
        return 0;
    };
    if state != TCP_LISTEN {
        return 0;
    }
    let Some(family) = read::<u16>(sk, off!(sk_family)) else {
        return 0;
    };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    // sk_protocol is a bitfield before 5.6 (offset then unresolved): TCP_LISTEN alone decides.
    if matches!(read::<u16>(sk, off!(sk_protocol)), Some(protocol) if protocol != IPPROTO_TCP) {
        return 0;
    }
    let Some(port) = read::<u16>(sk, off!(sk_num)) else {
        return 0;
    };
    seq_write(
        meta,
        &ListenRecord {
            tgid,
            fd,
            port,
            family,
            _pad: 0,
        },
    );
    0
}
