//! TCP per port and per process (see probe_common::tcp for the roles and keys).
//!
//! Payload bytes are not counted per send or receive: the kernel already counts each
//! connection's sequence space (tcp_sock.bytes_acked, bytes_received). When the daemon
//! collects, [`probe_tcp_walk`] visits every open file of every process (iter/task_file), reads
//! those counters of each TCP socket, and moves what grew since the last read
//! ([`TCP_SOCKETS`]) to the holding process's key in [`TCP_TRAFFIC`]. Nothing runs per packet
//! or per system call; per connection, the state program notes its start (so that bytes before
//! the first collection count), its FIN, and moves the final counters when it closes. The
//! fallback before Linux 5.12 counts packets at cgroup_skb on the cgroup2 root, per port only.
//!
//! Connection events and retransmits run in softirq context: they are keyed by port, and
//! retransmits by the socket's process where [`TCP_SOCKETS`] knows it.
//!
//! RTT is not sampled per packet either: whenever a server socket's counters move (the walk at
//! a collection in which it carried data, its FIN, its close), its smoothed RTT is one sample
//! in [`TCP_RTT`]. The sock_ops program, at every RTT measurement, is the fallback.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
    },
    helpers::generated::{bpf_ktime_get_ns, bpf_sk_fullsock, bpf_sock_from_file, bpf_tcp_sock},
    macros::{btf_tracepoint, cgroup_skb, map, raw_tracepoint, sock_ops},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, SkBuffContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    ports::{AF_INET, AF_INET6, IPPROTO_TCP},
    tcp::{
        accepts, closes_established, payload, queues_fin, tcp_header_len, walk_starts, RttTotals,
        SockBase, SockCounters, TcpKey, TcpTotals, LISTEN_MAP_ENTRIES, REMOTE_PORTS_MAX,
        ROLE_CLIENT, ROLE_SERVER, SOCKETS_MAP_ENTRIES, SOCK_ACTIVE, SOCK_CLOSED, SOCK_FIN_QUEUED,
        SOCK_PASSIVE, STAT_LOST, STAT_SLOTS, TCP_CLOSE, TCP_LISTEN, TCP_SYN_SENT,
        TRAFFIC_MAP_ENTRIES,
    },
};

use crate::{
    kernel::{
        atomic_add, bump, current_task, off, process_of, read, read_ptr, self_netns, self_port,
        self_tgid, Bucket, Direct, Mem, Probe,
    },
    ports::TaskFileIterCtx,
};

#[map]
static TCP_TRAFFIC: HashMap<TcpKey, TcpTotals> = HashMap::with_max_entries(TRAFFIC_MAP_ENTRIES, 0);

#[map]
static TCP_LISTEN_PORTS: HashMap<u16, u64> = HashMap::with_max_entries(LISTEN_MAP_ENTRIES, 0);

#[map]
static TCP_REMOTE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(REMOTE_PORTS_MAX, 0);

/// Keyed by the socket's address. Allocated on insert: entries come and go with connections, in
/// softirq and iterator context (never under the scheduler's locks), and an idle host keeps few.
#[map]
static TCP_SOCKETS: HashMap<u64, SockBase> =
    HashMap::with_max_entries(SOCKETS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static TCP_WALKING: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the daemon attached the walk (see `probe_common::tcp::WALKING_MAP`).
#[inline(always)]
fn walking() -> bool {
    TCP_WALKING.get(0).is_some_and(|w| *w != 0)
}

#[map]
static TCP_RTT: HashMap<u16, RttTotals> = HashMap::with_max_entries(LISTEN_MAP_ENTRIES, 0);

/// 1 when the walk takes RTT samples (see `probe_common::tcp::RTT_IN_WALK_GLOBAL`).
#[unsafe(no_mangle)]
static TCP_RTT_IN_WALK: u32 = 1;

#[map]
static TCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

const RX: u8 = 0;
const TX: u8 = 1;
const RETRANSMIT: u8 = 2;
const ACCEPTED: u8 = 3;
const CLOSED: u8 = 4;

/// SOCK_STREAM, sock.sk_type of TCP sockets.
const SOCK_STREAM: u16 = 1;

/// How a socket's counters are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// From the walk, without the socket's lock: the receive path may be half done.
    Lockless,
    /// From a state change or the socket's destruction: receive processing is not under way.
    Settled,
}

/// The socket's counters (see [`SockCounters`] for why in this order).
#[inline(always)]
fn counters(sk: *const u8, reader: Reader) -> Option<SockCounters> {
    let bytes_acked = read(sk, off!(tcp_bytes_acked))?;
    let snd_una = read(sk, off!(tcp_snd_una))?;
    let write_seq = read(sk, off!(tcp_write_seq))?;
    let bytes_received = read(sk, off!(tcp_bytes_received))?;
    let fin_unflagged = fin_unflagged(sk, reader);
    let sk_flags = read(sk, off!(sk_flags))?;
    Some(SockCounters {
        bytes_acked,
        bytes_received,
        snd_una,
        write_seq,
        fin_unflagged,
        sk_flags,
    })
}

/// Whether bytes_received, just read, may hold the peer's FIN before sk_flags says so (see
/// [`SockCounters::fin_unflagged`]): the receive queue's last skb carries the FIN, or (read
/// without the lock) the queue does not reach rcv_nxt yet. False where the kernel lacks a field.
#[inline(always)]
fn fin_unflagged(sk: *const u8, reader: Reader) -> bool {
    const TCPHDR_FIN: u8 = 0x01;
    let (queue, prev, cb) = (off!(sk_receive_queue), off!(skb_head_prev), off!(skb_cb));
    let (flags, end_seq) = (off!(tcp_cb_flags), off!(tcp_cb_end_seq));
    if queue == u32::MAX || prev == u32::MAX || cb == u32::MAX || flags == u32::MAX {
        return false;
    }
    // rcv_nxt before the queue: tcp_queue_rcv moves it before it queues the skb.
    let rcv_nxt = match reader {
        Reader::Lockless => read::<u32>(sk, off!(tcp_rcv_nxt)),
        Reader::Settled => None,
    };
    let Some(tail) = read_ptr(sk, queue + prev) else {
        return false;
    };
    // An empty queue's last skb is the queue itself (sk_buff_head starts as sk_buff does).
    let empty = tail == sk.wrapping_add(queue as usize);
    if !empty && read::<u8>(tail, cb + flags).is_some_and(|f| f & TCPHDR_FIN != 0) {
        return true;
    }
    let Some(rcv_nxt) = rcv_nxt else {
        return false;
    };
    // Where the queue reaches: its last skb's end, or, empty, what was read.
    let reached = if empty {
        read::<u32>(sk, off!(tcp_copied_seq))
    } else if end_seq == u32::MAX {
        None
    } else {
        read::<u32>(tail, cb + end_seq)
    };
    reached.is_some_and(|r| r != rcv_nxt)
}

/// Whether `sk`, accepted on local port `lport`, is a connection to the daemon's own HTTP
/// port in its network namespace (the port alone where the kernel lacks the fields).
#[inline(always)]
fn daemon_own(sk: *const u8, lport: u16) -> bool {
    if u32::from(lport) != self_port() {
        return false;
    }
    let want = self_netns();
    if want == 0 {
        return true;
    }
    read_ptr(sk, off!(sk_net))
        .and_then(|net| read::<u32>(net, off!(net_ns_inum)))
        .is_none_or(|inum| inum == want)
}

/// Moves the counter at `field` forward to `now` (never back: of two CPUs moving it at once,
/// each counts only what the other did not), and returns by how much it moved.
#[inline(always)]
fn advance(field: *mut u64, now: u64) -> u64 {
    // SAFETY: `field` is a u64 in a map value the caller looked up (8-byte aligned); other CPUs
    // move it too, only with this compare-and-exchange.
    let mut old = unsafe { core::ptr::read_volatile(field) };
    for _ in 0..4 {
        if now <= old {
            return 0;
        }
        // SAFETY: as above.
        let (seen, ok) = unsafe {
            core::intrinsics::atomic_cxchg::<
                u64,
                { core::intrinsics::AtomicOrdering::Relaxed },
                { core::intrinsics::AtomicOrdering::Relaxed },
            >(field, old, now)
        };
        if ok {
            return now - old;
        }
        old = seen;
    }
    0
}

/// Counts what socket `sk` (entry `e`) carried since its counters were last moved, for `key`.
/// The counters must have been read before `e`'s flags (see [`SockCounters`]).
/// Returns whether it moved anything.
#[inline(always)]
fn take<C: EbpfContext>(ctx: &C, e: *mut SockBase, c: &SockCounters, key: &TcpKey) -> bool {
    // SAFETY: a map value the caller looked up (non-null); only the state program writes the
    // flags, once per transition.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*e).flags) };
    let (tx, rx) = payload(c, flags);
    // SAFETY: as above.
    let (dtx, drx) = unsafe { (advance(&raw mut (*e).tx, tx), advance(&raw mut (*e).rx, rx)) };
    if dtx != 0 {
        account(ctx, key, TX, dtx);
    }
    if drx != 0 {
        account(ctx, key, RX, drx);
    }
    dtx != 0 || drx != 0
}

/// iter/task_file, run by the daemon before each read of [`TCP_TRAFFIC`]: for every TCP
/// socket a process holds, moves what its counters grew since they were last moved to that
/// process's key, and makes it the socket's process. A socket it has not seen and that did not
/// start after probe loaded counts from now on. Sockets of every network namespace (the walk
/// is over processes), only read (the iterator may visit a file twice: the second move finds
/// nothing). Runs whether or not this generation is active: moving counters of another
/// generation's entries (pinned maps are shared) loses and doubles nothing.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn probe_tcp_walk(ctx: *const TaskFileIterCtx) -> i32 {
    let Some((task, file)) = crate::ports::task_and_file(ctx) else {
        return 0;
    };
    // SAFETY: file is the iterator's struct file, checked non-null; the helper returns null for a
    // file that is not a socket.
    let socket = unsafe { bpf_sock_from_file(file.cast_mut().cast()) } as *const u8;
    let Some(sk) = read_ptr(socket, off!(socket_sk)) else {
        return 0;
    };
    if !is_tcp::<Probe>(sk) || read::<u16>(sk, off!(sk_type)) != Some(SOCK_STREAM) {
        return 0;
    }
    let Some(state) = read::<u8>(sk, off!(sk_state)).map(u32::from) else {
        return 0;
    };
    // A closed socket's counters moved when it closed (and a socket that disconnects to
    // connect again resets them, so they mean nothing until it does).
    if state == TCP_LISTEN || state == TCP_CLOSE {
        return 0;
    }
    let Some(p) = process_of(task) else {
        return 0;
    };
    if p.tgid == self_tgid() {
        return 0;
    }
    let Some(c) = counters(sk, Reader::Lockless) else {
        return 0;
    };
    let id = sk as u64;
    // SAFETY: the value is only read and moved with atomics (see `take`).
    let e = TCP_SOCKETS.get_ptr_mut(&id);
    let flags = match e {
        // SAFETY: a map value the lookup just returned.
        Some(e) => unsafe { core::ptr::read_volatile(&raw const (*e).flags) },
        None => 0,
    };
    let Some((port, role)) = role_of::<Probe>(sk, flags) else {
        return 0;
    };
    let key = TcpKey {
        tgid: p.tgid,
        port,
        role,
        _pad: 0,
        start_ns: p.start_ns,
    };
    match e {
        Some(e) => {
            if take(&IterContext(ctx), e, &c, &key) {
                rtt_of(&IterContext(ctx), sk, &key);
            }
            // SAFETY: as above. (A walk and a close on another CPU writing the key at once can
            // leave fields of both: the bytes then go to no process, and the model charges them
            // to `other`. Rare: the walk reads the socket in the nanoseconds of its close.)
            unsafe { core::ptr::write_volatile(&raw mut (*e).key, key) };
        }
        None if walk_starts(state) => {
            let (tx, rx) = payload(&c, 0);
            let fresh = SockBase {
                key,
                tx,
                rx,
                flags: 0,
                _pad: 0,
            };
            if TCP_SOCKETS
                .insert(&id, &fresh, u64::from(BPF_NOEXIST))
                .is_err()
            {
                sockets_full(&IterContext(ctx));
            }
        }
        None => {}
    }
    0
}

/// The iterator context as the logging macros take it.
struct IterContext(*const TaskFileIterCtx);

impl EbpfContext for IterContext {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.0.cast_mut().cast()
    }
}

/// Starts counting a connection from zero, for `key` (at connect or accept, before any byte);
/// only while the walk counts bytes.
#[inline(always)]
fn born<C: EbpfContext>(ctx: &C, sk: *const u8, key: TcpKey, flags: u32) {
    if !walking() {
        return;
    }
    let fresh = SockBase {
        key,
        tx: 0,
        rx: 0,
        flags,
        _pad: 0,
    };
    // Replaces the entry of a socket that reconnects, or of a freed one at the same address.
    if TCP_SOCKETS
        .insert(&(sk as u64), &fresh, u64::from(BPF_ANY))
        .is_err()
    {
        sockets_full(ctx);
    }
}

/// Counts a connection whose start a full [`TCP_SOCKETS`] could not note (logged at the 1st,
/// 2nd, 4th... on each CPU): its bytes before the next collection are not counted.
#[inline(always)]
fn sockets_full<C: EbpfContext>(ctx: &C) {
    let n = bump(&TCP_STATS, STAT_LOST);
    if n.is_power_of_two() {
        warn!(ctx, "TCP socket map full: {} events lost on this CPU", n);
    }
}

/// The key port and role of a socket: a socket accepted from a listener ([`SOCK_PASSIVE`]),
/// or whose local port is listened on, is a server; anything else is a client, keyed by its
/// remote port when the user named that port, else by 0.
#[inline(always)]
fn role_of<M: Mem>(sk: *const u8, flags: u32) -> Option<(u16, u8)> {
    let lport: u16 = M::get(sk, off!(sk_num))?;
    // SAFETY: only whether the key is present is used, never the value (which another CPU may
    // change).
    if flags & SOCK_PASSIVE != 0 || unsafe { TCP_LISTEN_PORTS.get(&lport) }.is_some() {
        return Some((lport, ROLE_SERVER));
    }
    let rport = u16::from_be(M::get::<u16>(sk, off!(sk_dport)).unwrap_or(0));
    // SAFETY: only whether the key is present is used, never the value (which another CPU may
    // change).
    let port = if unsafe { TCP_REMOTE_PORTS.get(&rport) }.is_some() {
        rport
    } else {
        0
    };
    Some((port, ROLE_CLIENT))
}

/// Whether `sk` is an IPv4 or IPv6 TCP socket.
#[inline(always)]
fn is_tcp<M: Mem>(sk: *const u8) -> bool {
    let Some(family) = M::get::<u16>(sk, off!(sk_family)) else {
        return false;
    };
    (family == AF_INET || family == AF_INET6)
        && M::get::<u16>(sk, off!(sk_protocol)) == Some(IPPROTO_TCP)
}

/// inet_sock_set_state(const struct sock *sk, int oldstate, int newstate).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn probe_tcp_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u32;
    let new = ctx.arg::<u64>(2) as u32;
    if !is_tcp::<Direct>(sk) {
        return 0;
    }
    // Not gated on the generation: the final counters must move whichever daemon counts (the
    // move is never counted twice); the rest is.
    if new == TCP_CLOSE {
        // The counters are final: what they grew since the last collection goes now, to the
        // socket's process, so that the collection that counts the close counts its bytes.
        if let Some(e) = TCP_SOCKETS.get_ptr_mut(&(sk as u64)) {
            take_final(&ctx, sk, e);
        }
    }
    if !crate::kernel::active() {
        return 0;
    }
    // skc_num is already 0 when a socket that released its port reaches TCP_CLOSE. (inet_sport
    // is a field of inet_sock, beyond the struct sock the verifier knows the pointer as: read
    // with the helper.)
    let Some(lport) = read::<u16>(sk, off!(inet_sport)).map(u16::from_be) else {
        return 0;
    };
    if new == TCP_LISTEN {
        // Counted as a server port from now on, before the daemon's next look at listeners.
        // (A socket that listens without bind(2) gets its port just after: 0 here, and the
        // daemon adds it.)
        if lport == 0 {
            return 0;
        }
        // SAFETY: a BPF helper without arguments; it reads the clock or the current task.
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = TCP_LISTEN_PORTS.insert(&lport, &now, u64::from(BPF_ANY));
    } else if new == TCP_SYN_SENT {
        // connect(2), in the connecting process's context: its bytes count from zero, for it.
        if let Some(p) = process_of(current_task()) {
            // (A kernel thread's connections, NFS say, hold no file: not counted.)
            if p.tgid != self_tgid() && !p.kthread {
                if let Some((port, role)) = role_of::<Direct>(sk, 0) {
                    let key = TcpKey {
                        tgid: p.tgid,
                        port,
                        role,
                        _pad: 0,
                        start_ns: p.start_ns,
                    };
                    born(&ctx, sk, key, SOCK_ACTIVE);
                }
            }
        }
    } else if accepts(old, new) {
        // No process yet (softirq): the port's until a collection sees who holds it. The
        // daemon's own connections (scrapes) get no entry: nothing of them is counted (the walk
        // skips its files).
        if !daemon_own(sk, lport) {
            born(&ctx, sk, port_key(lport, ROLE_SERVER), SOCK_PASSIVE);
        }
        account(&ctx, &port_key(lport, ROLE_SERVER), ACCEPTED, 1);
    } else if queues_fin(new) {
        // close(2) or shutdown(2), in the closing process's context (before tcp_send_fin queues
        // the FIN): everything it wrote is in the counters now, and goes to it at once (the
        // socket may linger in FIN_WAIT or LAST_ACK long after the process exits); from now on
        // what the socket carries goes to it too (an accepted connection no collection saw has
        // no process yet). (The daemon's own connections get no entry at accept; one accepted
        // while a previous generation's programs, with another SELF_PORT, were active has one,
        // dropped here.)
        let id = sk as u64;
        if let Some(e) = TCP_SOCKETS.get_ptr_mut(&id) {
            // SAFETY: a map value the lookup just returned; transitions of one socket are
            // serialised by its lock, and only they write the flags.
            let mut key = unsafe { core::ptr::read_volatile(&raw const (*e).key) };
            let closer = process_of(current_task());
            let by_daemon = closer.is_some_and(|p| p.tgid == self_tgid());
            match closer {
                _ if by_daemon && key.tgid == 0 && daemon_own(sk, key.port) => {
                    let _ = TCP_SOCKETS.remove(&id);
                }
                closer => {
                    // In the daemon's context, a socket of another process is closed by a walk
                    // (TCP or listeners; or the /proc/<pid>/fd fallback) that held its file when
                    // the process closed it (the last reference goes when the walk moves on): it
                    // stays with the holder a walk gave it, or its port.
                    if let Some(p) = closer.filter(|p| !p.kthread && !by_daemon) {
                        key.tgid = p.tgid;
                        key.start_ns = p.start_ns;
                    }
                    if walking() {
                        if let Some(c) = counters(sk, Reader::Settled) {
                            if take(&ctx, e, &c, &key) {
                                rtt_of(&ctx, sk, &key);
                            }
                        }
                    }
                    // SAFETY: as above.
                    unsafe {
                        core::ptr::write_volatile(&raw mut (*e).key, key);
                        let flags = core::ptr::read_volatile(&raw const (*e).flags);
                        core::ptr::write_volatile(&raw mut (*e).flags, flags | SOCK_FIN_QUEUED);
                    }
                }
            }
        }
    } else if closes_established(old, new) {
        let passive = TCP_SOCKETS
            .get_ptr(&(sk as u64))
            // SAFETY: a map value the lookup just returned.
            .map(|e| unsafe { core::ptr::read_volatile(&raw const (*e).flags) } & SOCK_PASSIVE);
        let server = match passive {
            Some(p) => p != 0,
            // Not seen start (accepted before probe started, or the map was full): the port
            // decides.
            // SAFETY: only whether the key is present is used, never the value (which another
            // CPU may change).
            None => unsafe { TCP_LISTEN_PORTS.get(&lport) }.is_some(),
        };
        if server {
            account(&ctx, &port_key(lport, ROLE_SERVER), CLOSED, 1);
        }
    }
    0
}

/// tcp_destroy_sock(struct sock *sk): the socket goes; its entry goes with it (its counters
/// moved when it reached TCP_CLOSE). Not gated on the generation, as [`probe_tcp_walk`].
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn probe_tcp_forget(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let id = sk as u64;
    if let Some(e) = TCP_SOCKETS.get_ptr_mut(&id) {
        take_final(&ctx, sk, e);
    }
    let _ = TCP_SOCKETS.remove(&id);
    0
}

/// Moves a closed socket's final counters, once: the state program at TCP_CLOSE, or the
/// destroy program if that run was skipped. Only while the walk counts bytes (else the
/// per-port fallback does, and entries a previous daemon left must not count too).
#[inline(always)]
fn take_final<C: EbpfContext>(ctx: &C, sk: *const u8, e: *mut SockBase) {
    // SAFETY: a map value the caller looked up; transitions of one socket are serialised by its
    // lock (and destroy comes after them), and only they write the flags.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*e).flags) };
    if flags & SOCK_CLOSED != 0 || !walking() {
        return;
    }
    // (tcp_sock's fields are beyond the struct sock the verifier knows: read with the helper.)
    if let Some(c) = counters(sk, Reader::Settled) {
        // SAFETY: as above.
        let key = unsafe { core::ptr::read_volatile(&raw const (*e).key) };
        // A connection reset (or closed without its FIN path moving it) has its RTT sample here.
        if take(ctx, e, &c, &key) {
            rtt_of(ctx, sk, &key);
        }
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut (*e).flags, flags | SOCK_CLOSED) };
}

#[inline(always)]
fn port_key(port: u16, role: u8) -> TcpKey {
    TcpKey {
        tgid: 0,
        port,
        role,
        _pad: 0,
        start_ns: 0,
    }
}

/// tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err]): one call
/// per retransmitted skb, which carries tcp_skb_pcount() segments (what TcpRetransSegs adds).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn probe_tcp_retransmit(ctx: BtfTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if off!(retransmit_has_err) != 0 && ctx.arg::<u64>(2) as u32 != 0 {
        return 0;
    }
    if !is_tcp::<Direct>(sk) {
        return 0;
    }
    let segs = match (off!(skb_cb), off!(tcp_cb_gso_segs)) {
        (cb, segs) if cb != u32::MAX && segs != u32::MAX => {
            read::<u16>(skb, cb + segs).unwrap_or(1).max(1)
        }
        _ => 1,
    };
    // The socket's process (or port) as its entry says; the port's key without one.
    let key = match TCP_SOCKETS.get_ptr(&(sk as u64)) {
        // SAFETY: a map value the lookup just returned (a key torn by a walk is one of its
        // two holders').
        Some(e) => unsafe { core::ptr::read_volatile(&raw const (*e).key) },
        None => match role_of::<Direct>(sk, 0) {
            Some((port, role)) => port_key(port, role),
            None => return 0,
        },
    };
    account(&ctx, &key, RETRANSMIT, u64::from(segs));
    0
}

/// tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req): a SYN-ACK sent
/// again by a listener (one segment).
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn probe_tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    if let Some(port) = read::<u16>(sk, off!(sk_num)) {
        account(&ctx, &port_key(port, ROLE_SERVER), RETRANSMIT, 1);
    }
    0
}

/// Adds `n` to one counter of a key, creating the entry if needed.
#[inline(always)]
fn account<C: EbpfContext>(ctx: &C, key: &TcpKey, what: u8, n: u64) {
    if let Some(t) = TCP_TRAFFIC.get_ptr_mut(key) {
        add(t, what, n);
        return;
    }
    let mut fresh = TcpTotals::default();
    match what {
        RX => fresh.rx_bytes = n,
        TX => fresh.tx_bytes = n,
        RETRANSMIT => fresh.retransmits = n,
        ACCEPTED => fresh.accepted = n,
        _ => fresh.closed = n,
    }
    if TCP_TRAFFIC
        .insert(key, &fresh, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    // Another CPU created it between our lookup and insert.
    if let Some(t) = TCP_TRAFFIC.get_ptr_mut(key) {
        add(t, what, n);
        return;
    }
    let lost = bump(&TCP_STATS, STAT_LOST);
    if lost.is_power_of_two() {
        warn!(
            ctx,
            "TCP map full: {} events lost on this CPU (latest: tgid {} port {})",
            lost,
            key.tgid,
            key.port
        );
    }
}

#[inline(always)]
fn add(t: *mut TcpTotals, what: u8, n: u64) {
    // SAFETY: `t` is a map value (callers pass what the lookup returned); other CPUs update it too,
    // so every field is added to atomically.
    unsafe {
        let field = match what {
            RX => &raw mut (*t).rx_bytes,
            TX => &raw mut (*t).tx_bytes,
            RETRANSMIT => &raw mut (*t).retransmits,
            ACCEPTED => &raw mut (*t).accepted,
            _ => &raw mut (*t).closed,
        };
        atomic_add(field, n);
    }
}

/// sock_ops on the cgroup2 root: asks for RTT callbacks on every accepted connection, then
/// records the smoothed RTT at each RTT measurement, per listening port. Must return 1.
#[sock_ops]
pub fn probe_tcp_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_RTT_CB if crate::kernel::active() => {
            let port = ctx.local_port() as u16;
            // tcp_sock.srtt_us holds 8 times the smoothed RTT in microseconds.
            // SAFETY: ops is the bpf_sock_ops the kernel passes for this callback (the verifier
            // checks the field access).
            let srtt_us = u64::from(unsafe { (*ctx.ops).srtt_us } >> 3);
            rtt_sample(&ctx, port, srtt_us);
        }
        _ => {}
    }
    1
}

/// RTT where the walk takes it: one sample of a server connection's smoothed RTT each time its
/// counters moved (at a collection in which it carried data, and when it queues its FIN or
/// closes, if it carried data since), so an idle connection's stale RTT is not sampled again
/// and again. A second visit of one file by the iterator moves nothing, so adds no sample.
#[inline(always)]
fn rtt_of<C: EbpfContext>(ctx: &C, sk: *const u8, key: &TcpKey) {
    // SAFETY: a global the loader sets before load and nothing writes afterwards.
    if key.role != ROLE_SERVER || unsafe { core::ptr::read_volatile(&TCP_RTT_IN_WALK) } == 0 {
        return;
    }
    // tcp_sock.srtt_us holds 8 times the smoothed RTT in microseconds (0: no measurement yet).
    if let Some(srtt) = read::<u32>(sk, off!(tcp_srtt_us)).filter(|&v| v != 0) {
        rtt_sample(ctx, key.port, u64::from(srtt >> 3));
    }
}

#[inline(always)]
fn rtt_sample<C: EbpfContext>(ctx: &C, port: u16, us: u64) {
    let b = Bucket::of(us * 1000);
    if let Some(t) = TCP_RTT.get_ptr_mut(&port) {
        rtt_add(t, us, b);
        return;
    }
    let mut fresh = RttTotals {
        count: 1,
        sum_us: us,
        ..RttTotals::default()
    };
    // SAFETY: a slot of `fresh`'s own histogram (Bucket::slot).
    unsafe { *b.slot(&raw mut fresh.buckets) = 1 };
    if TCP_RTT
        .insert(&port, &fresh, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    if let Some(t) = TCP_RTT.get_ptr_mut(&port) {
        rtt_add(t, us, b);
        return;
    }
    let lost = bump(&TCP_STATS, STAT_LOST);
    if lost.is_power_of_two() {
        warn!(ctx, "TCP RTT map full: {} samples lost on this CPU", lost);
    }
}

#[inline(always)]
fn rtt_add(t: *mut RttTotals, us: u64, b: Bucket) {
    // SAFETY: `t` is a map value (callers pass what the lookup returned); other CPUs update it too,
    // so every field is added to atomically.
    unsafe {
        atomic_add(&raw mut (*t).count, 1);
        atomic_add(&raw mut (*t).sum_us, us);
        atomic_add(b.slot(&raw mut (*t).buckets), 1);
    }
}

/// Fallback bytes: packets received by local sockets. Must return 1 (pass).
#[cgroup_skb(ingress)]
pub fn probe_tcp_skb_ingress(ctx: SkBuffContext) -> i32 {
    if !crate::kernel::active() {
        return 1;
    }
    on_packet(&ctx, RX);
    1
}

/// Fallback bytes: packets sent by local sockets. Must return 1 (pass).
#[cgroup_skb(egress)]
pub fn probe_tcp_skb_egress(ctx: SkBuffContext) -> i32 {
    if !crate::kernel::active() {
        return 1;
    }
    on_packet(&ctx, TX);
    1
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Payload bytes of one packet (its length minus the IP and TCP headers; a GSO/GRO packet
/// carries one set of headers), keyed by port and role, no process.
#[inline(always)]
fn on_packet(ctx: &SkBuffContext, what: u8) {
    let skb = &ctx.skb;
    let ip_len = match u16::from_be(skb.protocol() as u16) {
        ETH_P_IP => {
            let (Ok(vihl), Ok(proto)) = (ctx.load::<u8>(0), ctx.load::<u8>(9)) else {
                return;
            };
            if u16::from(proto) != IPPROTO_TCP {
                return;
            }
            u32::from(vihl & 0x0f) * 4
        }
        ETH_P_IPV6 => {
            // Extension headers before TCP are rare; such packets are not counted.
            match ctx.load::<u8>(6) {
                Ok(next) if u16::from(next) == IPPROTO_TCP => 40,
                _ => return,
            }
        }
        _ => return,
    };
    let Ok(off12) = ctx.load::<u8>(ip_len as usize + 12) else {
        return;
    };
    let headers = ip_len + tcp_header_len(off12);
    let len = skb.len();
    if len <= headers {
        return;
    }
    let payload = new_payload(ctx, ip_len, len - headers, what);
    if payload == 0 {
        return;
    }
    let lport = skb.local_port() as u16;
    // SAFETY: only whether the key is present is used, never the value (which another CPU may
    // change).
    let key = if unsafe { TCP_LISTEN_PORTS.get(&lport) }.is_some() {
        port_key(lport, ROLE_SERVER)
    } else {
        // remote_port holds the network-order port in its upper 16 bits.
        let rport = u16::from_be((skb.remote_port() >> 16) as u16);
        // SAFETY: only whether the key is present is used, never the value (which another CPU may
        // change).
        let port = if unsafe { TCP_REMOTE_PORTS.get(&rport) }.is_some() {
            rport
        } else {
            0
        };
        port_key(port, ROLE_CLIENT)
    };
    account(ctx, &key, what, u64::from(payload));
}

/// The part of a packet's payload not sent (or received) before: a retransmitted segment
/// repeats bytes below the socket's snd_nxt (egress runs before snd_nxt moves past new data),
/// a duplicate received segment bytes below rcv_nxt. All of it if the socket is not readable
/// or is the listener.
#[inline(always)]
fn new_payload(ctx: &SkBuffContext, ip_len: u32, payload: u32, what: u8) -> u32 {
    let Ok(seq) = ctx.load::<u32>(ip_len as usize + 4).map(u32::from_be) else {
        return payload;
    };
    // SAFETY: the __sk_buff the kernel passes to this program; its sk may be null (checked below).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return payload;
    }
    // SAFETY: sk is non-null (checked above); the helper returns null unless it is a full socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return payload;
    }
    // A segment that completes a handshake (its last ACK was lost, or carried data) is filtered
    // on the listener: the connection's socket does not exist yet. Its bytes are new; the
    // listener's rcv_nxt says nothing about them.
    // SAFETY: full is non-null (checked above): a full socket the verifier tracks.
    if unsafe { (*full).state } == TCP_LISTEN {
        return payload;
    }
    // SAFETY: full is a full socket; the helper returns null unless it is TCP.
    let tp = unsafe { bpf_tcp_sock(full) };
    if tp.is_null() {
        return payload;
    }
    // SAFETY: tp is non-null (checked above): a tcp_sock the verifier tracks.
    let next = unsafe {
        if what == TX {
            (*tp).snd_nxt
        } else {
            (*tp).rcv_nxt
        }
    };
    // Bytes of [seq, seq + payload) at or after `next`, in wrapping sequence space.
    let fresh = seq.wrapping_add(payload).wrapping_sub(next) as i32;
    if fresh <= 0 {
        0
    } else {
        (fresh as u32).min(payload)
    }
}
