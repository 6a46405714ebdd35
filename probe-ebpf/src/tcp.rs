//! TCP per port and per process (see probe_common::tcp for the roles and keys).
//!
//! Payload bytes come from sock:sock_send_length / sock_recv_length, which run in the context of
//! the process that calls send/recv (exact per process, 6.3+); the fallback counts packets at
//! cgroup_skb on the cgroup2 root, per port only. Connection events and retransmits run in
//! softirq context: they are keyed by port, and retransmits by the socket's owner where
//! [`TCP_SOCK_OWNERS`] knows it (learnt when the owner sent, received or connected).
//!
//! The owner lives in socket-local storage: one helper call that follows a pointer from the
//! socket, no hashing and no LRU bookkeeping on every send and receive, and it goes with the
//! socket (no entry outlives it, none is evicted). Socket-local storage needs BTF-typed programs
//! (`tp_btf`, 5.11+), which also read the socket's fields by direct loads.
//!
//! Over 500 lines: every TCP program shares the socket-owner cache and the key rules; split, the
//! verifier-sensitive helpers they inline would be spread over files.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
    },
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_sk_fullsock, bpf_sk_storage_get,
        bpf_tcp_sock,
    },
    macros::{btf_map, btf_tracepoint, cgroup_skb, map, raw_tracepoint, sock_ops},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, SkBuffContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    ports::{AF_INET, AF_INET6, IPPROTO_TCP},
    tcp::{
        accepts, closes_established, tcp_header_len, Owner, RttTotals, SockEntry, TcpKey,
        TcpTotals, LISTEN_MAP_ENTRIES, MSG_PEEK, OWNER_KEYED, OWNER_PASSIVE, REMOTE_PORTS_MAX,
        ROLE_CLIENT, ROLE_SERVER, STAT_LOST, STAT_SLOTS, TCP_LISTEN, TCP_SYN_SENT,
        TRAFFIC_MAP_ENTRIES,
    },
};

use crate::kernel::{
    atomic_add, atomic_take, bump, current_task, off, process_of, read, self_tgid, sweep_mark,
    Bucket, Direct, Mem,
};

#[map]
static TCP_TRAFFIC: HashMap<TcpKey, TcpTotals> = HashMap::with_max_entries(TRAFFIC_MAP_ENTRIES, 0);

#[map]
static TCP_LISTEN_PORTS: HashMap<u16, u64> = HashMap::with_max_entries(LISTEN_MAP_ENTRIES, 0);

#[map]
static TCP_REMOTE_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(REMOTE_PORTS_MAX, 0);

#[btf_map]
static TCP_SOCK_OWNERS: SkStorage<SockEntry> = SkStorage::new();

/// The entry of `sk` (a BTF-typed socket pointer), or null; with `create`, a missing entry is
/// created holding `*create` (the helper returns null for sockets that are not full sockets,
/// and when memory runs out).
#[inline(always)]
fn entry(sk: *const u8, create: Option<&mut SockEntry>) -> *mut SockEntry {
    let (init, flags) = match create {
        Some(v) => (
            core::ptr::from_mut(v).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        ),
        None => (core::ptr::null_mut(), 0),
    };
    // SAFETY: the map is this object's socket-storage map; the verifier checks that `sk` is a
    // BTF-typed socket pointer and `init` a value-sized stack slot (or null without the flag).
    unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&TCP_SOCK_OWNERS).cast_mut().cast(),
            sk.cast_mut().cast(),
            init,
            flags,
        )
    }
    .cast()
}

/// The owner in entry `e` (null: none), copied; all zero (`!is_whole()`) without one, or when
/// the copy is not whole (read while another CPU rewrote it: the caller then learns the owner
/// again).
///
/// A plain `Owner`, not an `Option`: copies of an `Option<Owner>` carry undefined padding bytes,
/// which LLVM may store from a register the last helper call clobbered, and the verifier
/// refuses that ("R5 !read_ok").
#[inline(always)]
fn owner_in(e: *const SockEntry) -> Owner {
    if e.is_null() {
        return Owner::default();
    }
    // SAFETY: a storage value the helper returned: non-null, of this type, valid while the
    // program runs. Another CPU may write it at the same time (two processes using one socket at
    // once): the check word tells a torn copy.
    let o = unsafe { core::ptr::read_volatile(&raw const (*e).owner) };
    if o.is_whole() {
        o
    } else {
        Owner::default()
    }
}

/// The socket's owner (see [`owner_in`]).
#[inline(always)]
fn owner_get(sk: *const u8) -> Owner {
    owner_in(entry(sk, None))
}

/// Makes `owner` the socket's owner (its entry created if missing; the bytes waiting in it are
/// left alone).
#[inline(always)]
fn owner_set(sk: *const u8, owner: Owner) {
    let owner = owner.sealed();
    let mut init = SockEntry {
        owner,
        ..SockEntry::default()
    };
    let e = entry(sk, Some(&mut init));
    if !e.is_null() {
        // SAFETY: as in owner_in (a write racing another leaves an owner that is not whole).
        unsafe { core::ptr::write_volatile(&raw mut (*e).owner, owner) };
    }
}

/// Moves the bytes waiting in entry `e` of socket `sk` to the owner's key in [`TCP_TRAFFIC`]
/// (to the socket's port key if the owner is not known whole: bytes wait only under a keyed
/// owner, so that is a race with a rewrite). Each counter is taken with an exchange: two moves
/// at once never count a byte twice. With `sweep`, marks the socket as visited by a collection.
#[inline(always)]
fn flush<C: EbpfContext>(ctx: &C, sk: *const u8, e: *mut SockEntry, sweep: bool) {
    if e.is_null() {
        return;
    }
    // SAFETY: a storage value the helper returned (non-null): the counters are 8-byte aligned
    // u64 in it; other CPUs add to them atomically.
    let (rx, tx) = unsafe {
        if sweep {
            core::ptr::write_volatile(&raw mut (*e).swept, sweep_mark());
        }
        (
            atomic_take(&raw mut (*e).rx_pending),
            atomic_take(&raw mut (*e).tx_pending),
        )
    };
    if rx == 0 && tx == 0 {
        return;
    }
    let o = owner_in(e);
    let key = if o.flags & OWNER_KEYED != 0 {
        TcpKey {
            tgid: o.tgid,
            port: o.port,
            role: o.role,
            _pad: 0,
            start_ns: o.start_ns,
        }
    } else {
        let (port, role) = role_of(sk, o).unwrap_or((0, ROLE_CLIENT));
        warn!(
            ctx,
            "TCP bytes waiting under no known owner (rx {} tx {}): charged to port {}",
            rx,
            tx,
            port
        );
        port_key(port, role)
    };
    if rx != 0 {
        account(ctx, &key, RX, rx);
    }
    if tx != 0 {
        account(ctx, &key, TX, tx);
    }
}

#[map]
static TCP_RTT: HashMap<u16, RttTotals> = HashMap::with_max_entries(LISTEN_MAP_ENTRIES, 0);

#[map]
static TCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

const RX: u8 = 0;
const TX: u8 = 1;
const RETRANSMIT: u8 = 2;
const ACCEPTED: u8 = 3;
const CLOSED: u8 = 4;

/// sock_send_length(struct sock *sk, int ret, int flags): after sock_sendmsg, in the sender's
/// context; `ret` is the number of bytes queued (or an error).
#[btf_tracepoint(function = "sock_send_length")]
pub fn probe_tcp_send(ctx: BtfTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    on_length(&ctx, TX);
    0
}

/// sock_recv_length(struct sock *sk, int ret, int flags): after sock_recvmsg, in the
/// receiver's context.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn probe_tcp_recv(ctx: BtfTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    on_length(&ctx, RX);
    0
}

#[inline(always)]
fn on_length(ctx: &BtfTracePointContext, what: u8) {
    let sk: *const u8 = ctx.arg(0);
    let ret = ctx.arg::<u64>(1) as u32 as i32;
    let flags = ctx.arg::<u64>(2) as u32;
    if ret <= 0 || (what == RX && flags & MSG_PEEK != 0) {
        return;
    }
    // One read turns away the many sends on UNIX and netlink sockets.
    match Direct::get::<u16>(sk, off!(sk_family)) {
        Some(AF_INET | AF_INET6) => {}
        _ => return,
    }
    // SAFETY: a BPF helper without arguments; it reads the clock or the current task.
    let tgid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    if tgid == self_tgid() {
        return;
    }
    // Fast path: this process used this socket before; its key is cached in the owner entry.
    // (Without a whole entry, `known` is all zero and matches no process.)
    let e = entry(sk, None);
    let known = owner_in(e);
    if known.tgid == tgid && known.flags & OWNER_KEYED != 0 {
        // A socket the collections sweep: the bytes wait in its own entry (no map lookup),
        // closed or not: the iterator walks the entries, and the destroy programs move what is
        // left when the socket is freed.
        // SAFETY: `e` is a storage value the helper returned, checked non-null.
        let swept = !e.is_null()
            && unsafe { core::ptr::read_volatile(&raw const (*e).swept) } == sweep_mark();
        if swept {
            // SAFETY: as above; the counters are 8-byte aligned u64 in it, which other CPUs
            // take atomically.
            unsafe {
                let field = if what == RX {
                    &raw mut (*e).rx_pending
                } else {
                    &raw mut (*e).tx_pending
                };
                atomic_add(field, ret as u64);
            }
            return;
        }
        let key = TcpKey {
            tgid,
            port: known.port,
            role: known.role,
            _pad: 0,
            start_ns: known.start_ns,
        };
        account(ctx, &key, what, ret as u64);
        return;
    }
    if Direct::get::<u16>(sk, off!(sk_protocol)) != Some(IPPROTO_TCP) {
        return;
    }
    let Some(p) = process_of(current_task()) else {
        return;
    };
    // Another process takes the socket over (or its entry was torn): what waits in the entry
    // is the previous owner's.
    flush(ctx, sk, e, false);
    let Some((port, role)) = learn_owner(sk, known, p.tgid, p.start_ns) else {
        return;
    };
    let key = TcpKey {
        tgid: p.tgid,
        port,
        role,
        _pad: 0,
        start_ns: p.start_ns,
    };
    account(ctx, &key, what, ret as u64);
}

/// Records the process as the socket's owner, with the socket's key port and role (keeping
/// what `known`, the socket's current entry, says about its role), and returns the port and role.
#[inline(always)]
fn learn_owner(sk: *const u8, known: Owner, tgid: u32, start_ns: u64) -> Option<(u16, u8)> {
    let (port, role) = role_of(sk, known)?;
    let owner = Owner {
        tgid,
        flags: known.flags | OWNER_KEYED,
        start_ns,
        port,
        role,
        _pad: 0,
        check: 0,
    };
    owner_set(sk, owner);
    Some((port, role))
}

/// The key port and role of a socket: a socket accepted from a listener (known from its owner
/// entry), or whose local port is listened on, is a server; anything else is a client, keyed
/// by its remote port when the user named that port, else by 0. `sk` is a tp_btf argument
/// (read by direct loads), as in every caller.
#[inline(always)]
fn role_of(sk: *const u8, known: Owner) -> Option<(u16, u8)> {
    let lport: u16 = Direct::get(sk, off!(sk_num))?;
    let passive = known.flags & OWNER_PASSIVE != 0;
    // SAFETY: only whether the key is present is used, never the value (which another CPU may
    // change).
    if passive || unsafe { TCP_LISTEN_PORTS.get(&lport) }.is_some() {
        return Some((lport, ROLE_SERVER));
    }
    let rport = u16::from_be(Direct::get::<u16>(sk, off!(sk_dport)).unwrap_or(0));
    // SAFETY: only whether the key is present is used, never the value (which another CPU may
    // change).
    let port = if unsafe { TCP_REMOTE_PORTS.get(&rport) }.is_some() {
        rport
    } else {
        0
    };
    Some((port, ROLE_CLIENT))
}

/// Whether `sk` (a tp_btf argument, read by direct loads) is an IPv4 or IPv6 TCP socket.
#[inline(always)]
fn is_tcp(sk: *const u8) -> bool {
    let Some(family) = Direct::get::<u16>(sk, off!(sk_family)) else {
        return false;
    };
    (family == AF_INET || family == AF_INET6)
        && Direct::get::<u16>(sk, off!(sk_protocol)) == Some(IPPROTO_TCP)
}

/// inet_sock_set_state(const struct sock *sk, int oldstate, int newstate).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn probe_tcp_state(ctx: BtfTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u32;
    let new = ctx.arg::<u64>(2) as u32;
    if !is_tcp(sk) {
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
        // connect(2), in the connecting process's context.
        if let Some(p) = process_of(current_task()) {
            if p.tgid != self_tgid() {
                // A closed socket connecting again: what its previous owner left goes first.
                flush(&ctx, sk, entry(sk, None), false);
                owner_set(
                    sk,
                    Owner {
                        tgid: p.tgid,
                        start_ns: p.start_ns,
                        ..Owner::default()
                    },
                );
            }
        }
    } else if accepts(old, new) {
        owner_set(
            sk,
            Owner {
                flags: OWNER_PASSIVE,
                ..Owner::default()
            },
        );
        account(&ctx, &port_key(lport, ROLE_SERVER), ACCEPTED, 1);
    } else if closes_established(old, new) {
        // Closed: what waits goes now, so that the connection's bytes are all counted by the
        // collection that counts its close (else at the next collection or when it is freed).
        let e = entry(sk, None);
        flush(&ctx, sk, e, false);
        let o = owner_in(e);
        let server = if o.is_whole() {
            o.flags & OWNER_PASSIVE != 0
        } else {
            // No owner entry (accepted before probe started, or no memory for one): the port
            // decides.
            // SAFETY: only whether the key is present is used, never the value (which another CPU
            // may change).
            unsafe { TCP_LISTEN_PORTS.get(&lport) }.is_some()
        };
        if server {
            account(&ctx, &port_key(lport, ROLE_SERVER), CLOSED, 1);
        }
    }
    // The owner entry stays until the socket is freed: data still queued can be read after
    // TCP_CLOSE, and a closed socket can connect again (SYN_SENT above moves its waiting bytes and
    // replaces the owner).
    0
}

/// SOCK_STREAM, sock.sk_type of TCP sockets.
const SOCK_STREAM: u16 = 1;

/// `struct bpf_iter__bpf_sk_storage_map`.
#[repr(C)]
pub struct StorageIterCtx {
    meta: *const crate::kernel::IterMeta,
    map: *const core::ffi::c_void,
    sk: *mut core::ffi::c_void,
    value: *mut core::ffi::c_void,
}

/// The iterator context as the logging macros take it.
struct IterContext(*const StorageIterCtx);

impl EbpfContext for IterContext {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.0.cast_mut().cast()
    }
}

/// iter/bpf_sk_storage_map over [`TCP_SOCK_OWNERS`], run by the daemon before each read of
/// [`TCP_TRAFFIC`]: moves the bytes waiting in every socket's entry and marks the socket swept,
/// so that its later bytes wait there too. It walks the entries, not a network namespace's
/// tables: the sockets of every namespace (containers' included), and closed sockets until they
/// are freed. (The kernel's own TCP iterator, which walked the tables before, took a reference
/// on a socket being freed on Linux 6.18: a refcount use-after-free warning under connection
/// churn.) The move is an exchange, so two moves at once (this and a socket's destroy
/// program) count nothing twice. Runs whether or not this generation is active: moving bytes of
/// another generation's programs (pinned maps are shared) loses and doubles nothing.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
pub fn probe_tcp_flush(ctx: *const StorageIterCtx) -> i32 {
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: ctx is the iterator context the kernel passes, checked non-null above.
    let sk = unsafe { (*ctx).sk } as *const u8;
    if sk.is_null() {
        return 0; // end of iteration
    }
    // Marked swept only if it is a stream socket: a raw socket of protocol TCP also gets an
    // entry (its sends and receives pass the programs' checks) but never reaches
    // tcp_destroy_sock, so bytes waiting in it when it closes would be lost.
    let stream = Direct::get::<u16>(sk, off!(sk_type)) == Some(SOCK_STREAM);
    flush(&IterContext(ctx), sk, entry(sk, None), stream);
    0
}

/// tcp_destroy_sock(struct sock *sk): the socket goes, and its entry with it; what waits in it
/// moves first. Not gated on the generation, as [`probe_tcp_flush`]; see
/// [`probe_common::tcp::CLOSE_PROGRAMS`] for why there are two.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn probe_tcp_close(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    flush(&ctx, sk, entry(sk, None), false);
    0
}

/// The same as [`probe_tcp_close`].
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn probe_tcp_close_again(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    flush(&ctx, sk, entry(sk, None), false);
    0
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
    if !is_tcp(sk) {
        return 0;
    }
    let segs = match (off!(skb_cb), off!(tcp_cb_gso_segs)) {
        (cb, segs) if cb != u32::MAX && segs != u32::MAX => {
            read::<u16>(skb, cb + segs).unwrap_or(1).max(1)
        }
        _ => 1,
    };
    let known = owner_get(sk);
    let Some((port, role)) = role_of(sk, known) else {
        return 0;
    };
    let mut key = port_key(port, role);
    // Without an entry, `known` is all zero: the port's key.
    key.tgid = known.tgid;
    key.start_ns = known.start_ns;
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

#[inline(always)]
fn rtt_sample(ctx: &SockOpsContext, port: u16, us: u64) {
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
