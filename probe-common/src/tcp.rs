//! TCP per port and per process: payload bytes, connections, retransmits and RTT.
//!
//! A socket plays one of two roles. A *server* socket's local port is one some process listens
//! on ([`LISTEN_MAP`]): its traffic is keyed by that port. Any other socket is a *client*
//! (outgoing connection, ephemeral local port): its traffic is keyed by the remote port if the
//! user named it as well known ([`REMOTE_PORTS_MAP`]), else by port 0 (folded). So the kernel
//! map grows with processes x listening ports, never with connections.

/// Payload bytes in the process's context (sock:sock_send_length / sock_recv_length, 6.3+).
pub const SEND_PROGRAM: &str = "probe_tcp_send";
pub const RECV_PROGRAM: &str = "probe_tcp_recv";
/// Fallback: payload bytes per port only, from packets (cgroup_skb on the cgroup2 root).
pub const SKB_INGRESS_PROGRAM: &str = "probe_tcp_skb_ingress";
pub const SKB_EGRESS_PROGRAM: &str = "probe_tcp_skb_egress";
/// Connections accepted and closed, listeners appearing (sock:inet_sock_set_state).
pub const STATE_PROGRAM: &str = "probe_tcp_state";
/// SYN-ACKs sent again by listeners (tcp:tcp_retransmit_synack).
pub const RETRANSMIT_SYNACK_PROGRAM: &str = "probe_tcp_retransmit_synack";
/// Retransmitted segments (tcp:tcp_retransmit_skb).
pub const RETRANSMIT_PROGRAM: &str = "probe_tcp_retransmit";
/// RTT samples of server sockets (sock_ops on the cgroup2 root).
pub const SOCKOPS_PROGRAM: &str = "probe_tcp_sockops";
/// Moves the bytes waiting in each socket's [`SockEntry`] to [`TRAFFIC_MAP`] and marks the
/// socket [`SockEntry::swept`] (iter/bpf_sk_storage_map over [`OWNERS_MAP`], run by the daemon
/// before it reads the map).
pub const FLUSH_PROGRAM: &str = "probe_tcp_flush";
/// Move a closing socket's waiting bytes (tcp:tcp_destroy_sock). Two identical programs: the
/// kernel skips a tracing program's run nested in its own run on one CPU (counted in its missed
/// runs); two make a skipped run on one of them harmless, and the move is an exchange, so a
/// second move finds nothing.
pub const CLOSE_PROGRAMS: [&str; 2] = ["probe_tcp_close", "probe_tcp_close_again"];

/// Per-(process, port, role) totals ([`TcpKey`] -> [`TcpTotals`]).
pub const TRAFFIC_MAP: &str = "TCP_TRAFFIC";
pub const TRAFFIC_MAP_ENTRIES: u32 = 8192;
/// Listening ports (port -> ktime ns when it was added).
pub const LISTEN_MAP: &str = "TCP_LISTEN_PORTS";
pub const LISTEN_MAP_ENTRIES: u32 = 4096;
/// Remote ports the user wants as `remote_port` label values (port -> 1).
pub const REMOTE_PORTS_MAP: &str = "TCP_REMOTE_PORTS";
pub const REMOTE_PORTS_MAX: u32 = 64;
/// Which process owns a socket and its bytes not yet moved to [`TRAFFIC_MAP`] (socket-local
/// storage: socket -> [`SockEntry`], freed with the socket): the owner is learnt where it runs
/// (sending, receiving, connecting) and used where it does not (retransmits in softirq).
pub const OWNERS_MAP: &str = "TCP_SOCK_OWNERS";
/// RTT histograms per listening port (port -> [`RttTotals`]).
pub const RTT_MAP: &str = "TCP_RTT";

/// Per-CPU self-counters of the TCP programs; slots below.
pub const STATS_MAP: &str = "TCP_STATS";
/// An event not counted because [`TRAFFIC_MAP`] or [`RTT_MAP`] was full.
pub const STAT_LOST: u32 = 0;
pub const STAT_SLOTS: u32 = 1;

pub const ROLE_SERVER: u8 = 0;
pub const ROLE_CLIENT: u8 = 1;

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_SYN_SENT: u32 = 2;
pub const TCP_SYN_RECV: u32 = 3;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;
pub const TCP_NEW_SYN_RECV: u32 = 12;

/// `MSG_PEEK`: a receive that leaves the data queued (not consumed, not counted).
pub const MSG_PEEK: u32 = 2;

/// Whether a transition to `newstate` from `oldstate` ends a connection that was established
/// (it was counted as accepted on a server socket when it left SYN_RECV).
#[inline(always)]
pub fn closes_established(oldstate: u32, newstate: u32) -> bool {
    newstate == TCP_CLOSE
        && !matches!(
            oldstate,
            TCP_SYN_SENT | TCP_SYN_RECV | TCP_CLOSE | TCP_LISTEN | TCP_NEW_SYN_RECV
        )
}

/// Whether a transition completes a passive open (the kernel's accept, before accept(2)).
#[inline(always)]
pub fn accepts(oldstate: u32, newstate: u32) -> bool {
    oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED
}

/// Key of [`TRAFFIC_MAP`]. `tgid` 0 (with `start_ns` 0) holds what has no process: connections,
/// and everything on the per-port fallback.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpKey {
    pub tgid: u32,
    /// Listening port (server role), or well-known remote port or 0 (client role).
    pub port: u16,
    pub role: u8,
    pub _pad: u8,
    /// Start time of the process's leader (ns since boot): tells a reused pid apart.
    pub start_ns: u64,
}

/// Value of [`TRAFFIC_MAP`]; updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpTotals {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Retransmitted segments (what TcpRetransSegs counts).
    pub retransmits: u64,
    /// Connections accepted and closed (server role, `tgid` 0 only).
    pub accepted: u64,
    pub closed: u64,
}

/// Value of [`OWNERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// 0 while only the role is known (accepted, not yet read or written by a process).
    pub tgid: u32,
    /// [`OWNER_PASSIVE`], [`OWNER_KEYED`]
    pub flags: u32,
    pub start_ns: u64,
    /// With [`OWNER_KEYED`]: the socket's key port and role, so later sends and receives of
    /// the same process skip the lookups that found them.
    pub port: u16,
    pub role: u8,
    pub _pad: u8,
    /// [`Owner::sealed`]: tells an entry read while another CPU rewrote it (two processes using
    /// one socket at once) from a whole one.
    pub check: u32,
}

impl Owner {
    /// This entry with its check word set; the programs write only sealed entries.
    pub const fn sealed(mut self) -> Self {
        self.check = self.fold();
        self
    }

    /// Whether the check word matches the other fields (a torn read almost never does).
    pub const fn is_whole(&self) -> bool {
        self.check == self.fold()
    }

    const fn fold(&self) -> u32 {
        // Every field in, each moved so that swapping two fields' halves changes the sum; the
        // constant makes an all-zero entry not whole.
        (self.tgid ^ self.flags.rotate_left(7) ^ (self.start_ns as u32).rotate_left(13))
            .wrapping_add(((self.start_ns >> 32) as u32).rotate_left(19))
            .wrapping_add((self.port as u32) | ((self.role as u32) << 16))
            ^ 0x5bd1_e995
    }
}

/// Value of [`OWNERS_MAP`]: the socket's owner, and once a collection has seen the socket
/// ([`swept`](Self::swept)), the payload bytes its owner sent and received since the last move
/// to [`TRAFFIC_MAP`]. A send or receive then adds to its own socket's entry, which no other
/// socket shares, instead of looking up and updating the process's map entry; the bytes move
/// (atomic exchange, so never twice) at every collection, when the socket closes, and when
/// another process takes it over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEntry {
    pub owner: Owner,
    pub rx_pending: u64,
    pub tx_pending: u64,
    /// The mark (generation plus one) of the daemon whose collections' iterator visited the
    /// socket: the bytes are then moved at every collection, so they may wait in the entry. A
    /// mark of an earlier daemon (pinned storage outlives it) does not count: the socket's bytes
    /// count directly until this daemon's iterator has seen it (always where the kernel refuses the
    /// iterator, or with `--hooks.skip iter/bpf_sk_storage_map`). Only TCP stream sockets are
    /// marked: a raw socket of protocol TCP has an entry but never reaches `tcp_destroy_sock`,
    /// which moves what is left.
    pub swept: u32,
    pub _pad: u32,
}

/// [`Owner::flags`]: the socket was accepted from a listener (server role).
pub const OWNER_PASSIVE: u32 = 1;
/// [`Owner::flags`]: `port` and `role` are set, for the process `tgid`.
pub const OWNER_KEYED: u32 = 2;

/// Value of [`RTT_MAP`]: smoothed RTT samples of server sockets, one per RTT measurement.
/// Buckets as every latency ([`crate::latency`]), from microseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttTotals {
    pub count: u64,
    pub sum_us: u64,
    pub buckets: [u64; crate::latency::BUCKETS],
}

impl Default for RttTotals {
    fn default() -> Self {
        Self {
            count: 0,
            sum_us: 0,
            buckets: [0; crate::latency::BUCKETS],
        }
    }
}

/// Length of a TCP header from its byte 12 (data offset in 32-bit words, high nibble).
#[inline(always)]
pub fn tcp_header_len(tcp_off12: u8) -> u32 {
    u32::from(tcp_off12 >> 4) * 4
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_owner_entry_mixed_from_two_writes_is_not_whole() {
        let a = super::Owner {
            tgid: 4242,
            flags: super::OWNER_KEYED,
            start_ns: 123_456_789_012,
            port: 3306,
            role: super::ROLE_SERVER,
            ..Default::default()
        }
        .sealed();
        let b = super::Owner {
            tgid: 777,
            flags: super::OWNER_KEYED | super::OWNER_PASSIVE,
            start_ns: 98_765_432_109,
            port: 0,
            role: super::ROLE_CLIENT,
            ..Default::default()
        }
        .sealed();
        assert!(a.is_whole() && b.is_whole());
        assert!(!super::Owner::default().is_whole());
        // Any field of one write with the rest (and the check) of the other.
        let mixes = [
            super::Owner { tgid: b.tgid, ..a },
            super::Owner {
                flags: b.flags,
                ..a
            },
            super::Owner {
                start_ns: b.start_ns,
                ..a
            },
            super::Owner { port: b.port, ..a },
            super::Owner { role: b.role, ..a },
            super::Owner {
                check: b.check,
                ..a
            },
        ];
        for m in mixes {
            assert!(!m.is_whole(), "{m:?}");
        }
    }

    use super::*;

    #[test]
    fn connection_lifecycle() {
        assert!(accepts(TCP_SYN_RECV, TCP_ESTABLISHED));
        assert!(!accepts(TCP_SYN_SENT, TCP_ESTABLISHED), "active open");
        assert!(closes_established(TCP_ESTABLISHED, TCP_CLOSE));
        assert!(closes_established(8, TCP_CLOSE), "close_wait");
        assert!(closes_established(5, TCP_CLOSE), "fin_wait2 to time_wait");
        assert!(
            !closes_established(TCP_SYN_RECV, TCP_CLOSE),
            "never accepted"
        );
        assert!(!closes_established(TCP_LISTEN, TCP_CLOSE), "listener");
        assert!(
            !closes_established(TCP_ESTABLISHED, 4),
            "fin_wait1 is not closed yet"
        );
    }

    #[test]
    fn header_length() {
        assert_eq!(tcp_header_len(0x50), 20);
        assert_eq!(tcp_header_len(0x80), 32);
        assert_eq!(tcp_header_len(0xf0), 60);
    }
}
