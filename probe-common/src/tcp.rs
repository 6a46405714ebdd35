//! TCP per port and per process: payload bytes, connections, retransmits and RTT.
//!
//! A socket plays one of two roles. A *server* socket's local port is one some process listens
//! on ([`LISTEN_MAP`]): its traffic is keyed by that port. Any other socket is a *client*
//! (outgoing connection, ephemeral local port): its traffic is keyed by the remote port if the
//! user named it as well known ([`REMOTE_PORTS_MAP`]), else by port 0 (folded). So the kernel
//! map grows with processes x listening ports, never with connections.

/// Payload bytes per socket, read from its TCP counters when the daemon collects
/// (iter/task_file over every process's open files; run before the daemon reads
/// [`TRAFFIC_MAP`]): the increase since the last read goes to the process holding the socket.
pub const WALK_PROGRAM: &str = "probe_tcp_walk";
/// Fallback: payload bytes per port only, from packets (cgroup_skb on the cgroup2 root).
pub const SKB_INGRESS_PROGRAM: &str = "probe_tcp_skb_ingress";
pub const SKB_EGRESS_PROGRAM: &str = "probe_tcp_skb_egress";
/// Connections accepted and closed, listeners appearing, and each connection's birth, FIN and
/// final counters (sock:inet_sock_set_state).
pub const STATE_PROGRAM: &str = "probe_tcp_state";
/// Deletes a destroyed socket's [`SOCKETS_MAP`] entry (tcp:tcp_destroy_sock), after moving its
/// final counters if the state program's run at TCP_CLOSE was skipped (a run nested in its own
/// on one CPU is not run).
pub const FORGET_PROGRAM: &str = "probe_tcp_forget";
/// SYN-ACKs sent again by listeners (tcp:tcp_retransmit_synack).
pub const RETRANSMIT_SYNACK_PROGRAM: &str = "probe_tcp_retransmit_synack";
/// Retransmitted segments (tcp:tcp_retransmit_skb).
pub const RETRANSMIT_PROGRAM: &str = "probe_tcp_retransmit";
/// RTT samples of server sockets at every RTT measurement (sock_ops on the cgroup2 root): the
/// fallback where the walk does not run, since the walk takes one sample per connection per
/// collection in which it carried data, at no cost per packet.
pub const SOCKOPS_PROGRAM: &str = "probe_tcp_sockops";
/// Read-only global of [`WALK_PROGRAM`] and [`STATE_PROGRAM`]: 1 when they take RTT samples
/// (set by the daemon before load; 0 when the RTT part of the walk is skipped, and RTT falls
/// back to sock_ops).
pub const RTT_IN_WALK_GLOBAL: &str = "TCP_RTT_IN_WALK";

/// Per-(process, port, role) totals ([`TcpKey`] -> [`TcpTotals`]).
pub const TRAFFIC_MAP: &str = "TCP_TRAFFIC";
pub const TRAFFIC_MAP_ENTRIES: u32 = 8192;
/// Listening ports (port -> ktime ns when it was added).
pub const LISTEN_MAP: &str = "TCP_LISTEN_PORTS";
pub const LISTEN_MAP_ENTRIES: u32 = 4096;
/// Remote ports the user wants as `remote_port` label values (port -> 1).
pub const REMOTE_PORTS_MAP: &str = "TCP_REMOTE_PORTS";
pub const REMOTE_PORTS_MAX: u32 = 64;
/// One entry: 1 once the daemon attached [`WALK_PROGRAM`] (not pinned: each load has its own).
/// Until then the state and destroy programs note no connection starts and move no counters,
/// so that the per-port fallback's bytes are not also counted per connection when they close;
/// and a daemon that starts without the walk empties [`SOCKETS_MAP`].
pub const WALKING_MAP: &str = "TCP_WALKING";

/// What was counted of each TCP socket, and for whom (socket address -> [`SockBase`]): made
/// when a connection starts (connect, accept) or when a collection first sees an older one,
/// deleted when the socket is destroyed.
pub const SOCKETS_MAP: &str = "TCP_SOCKETS";
pub const SOCKETS_MAP_ENTRIES: u32 = 65_536;
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
pub const TCP_FIN_WAIT1: u32 = 4;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LAST_ACK: u32 = 9;
pub const TCP_LISTEN: u32 = 10;
pub const TCP_NEW_SYN_RECV: u32 = 12;

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

/// Whether a transition queues this side's FIN (close or shutdown of an open connection):
/// from then on the FIN's sequence number is in the socket's send counters.
#[inline(always)]
pub fn queues_fin(newstate: u32) -> bool {
    newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK
}

/// Whether a collection that first sees a socket in `state` starts counting it from its
/// counters then: an open connection. (Handshakes and closed sockets are not: one that started
/// after probe has an entry from its start, and what closed sockets carry was counted.)
#[inline(always)]
pub fn walk_starts(state: u32) -> bool {
    !matches!(
        state,
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

/// Value of [`SOCKETS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockBase {
    /// Whom the socket's bytes go to: the process that held it at the last collection, else
    /// the one that connected it, else (accepted, not yet seen by a collection) its port.
    pub key: TcpKey,
    /// The socket's [`payload`] totals already counted (moved forward atomically, never back).
    pub tx: u64,
    pub rx: u64,
    /// [`SOCK_ACTIVE`], [`SOCK_PASSIVE`], [`SOCK_FIN_QUEUED`]
    pub flags: u32,
    pub _pad: u32,
}

/// [`SockBase::flags`]: connected by this host (its SYN is in `bytes_acked`).
pub const SOCK_ACTIVE: u32 = 1;
/// [`SockBase::flags`]: accepted from a listener (server role, whatever its port does later).
pub const SOCK_PASSIVE: u32 = 2;
/// [`SockBase::flags`]: this side's FIN is queued ([`queues_fin`]).
pub const SOCK_FIN_QUEUED: u32 = 4;
/// [`SockBase::flags`]: its final counters moved when it reached TCP_CLOSE; nothing more to
/// count until it connects again (a socket that disconnects resets its counters).
pub const SOCK_CLOSED: u32 = 8;

/// `SOCK_DONE` in sock.sk_flags: set when the peer's FIN arrives (tcp_fin).
pub const SK_FLAG_DONE: u64 = 1 << 1;

/// A TCP socket's counters, as the kernel keeps them (tcp_sock). The walk reads them without
/// the socket's lock, in an order that makes a read racing the kernel err low (the next read
/// corrects it), not high (given x86's ordering of stores and of loads):
/// - bytes_acked, then at once snd_una, which tcp_ack moves just after it (a read can only be
///   high if the kernel stalls between those two adjacent stores for as long as the two reads);
/// - write_seq before the entry's flags, which the state program sets before tcp_send_fin
///   moves it;
/// - bytes_received, then [`SockCounters::fin_unflagged`], then sk_flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCounters {
    /// tcp_sock.bytes_acked: sequence space the peer acknowledged (data, the SYN of an
    /// active open, the FIN); write_seq - snd_una is the rest of what was queued.
    pub bytes_acked: u64,
    /// tcp_sock.bytes_received: sequence space received in order (data and the peer's FIN).
    pub bytes_received: u64,
    pub snd_una: u32,
    pub write_seq: u32,
    /// bytes_received may include the peer's FIN that sk_flags does not show yet. The FIN
    /// enters bytes_received (with rcv_nxt) before tcp_fin sets SOCK_DONE. Its skb is queued
    /// just after rcv_nxt moves (or its flag merged into the last skb just before), and stays
    /// the last until the process reads it, after SOCK_DONE. So this is set when the last skb
    /// carries the FIN or, read without the lock, when the queue does not reach rcv_nxt (the
    /// last skb's end_seq, or copied_seq when it is empty): the skb that moved rcv_nxt is not
    /// queued yet. Either can hold for data too: then one byte low until the next read (or, on
    /// a socket whose data a sockmap verdict program takes off the queue before it is read,
    /// until it is read or closed).
    pub fin_unflagged: bool,
    /// sock.sk_flags
    pub sk_flags: u64,
}

/// Payload bytes of a socket with these counters and [`SockBase::flags`]: sent (written by
/// its process: acknowledged or still queued; on a connection this host opened, once its SYN
/// is acknowledged) and received (arrived in order, read or not).
/// The sequence space a connection used less its SYN and FINs. Both only grow while the
/// connection is open (a socket that reconnects starts again from zero).
#[inline(always)]
pub fn payload(c: &SockCounters, flags: u32) -> (u64, u64) {
    // Acknowledged, then queued but not acknowledged (at most the send buffer).
    let mut tx = c
        .bytes_acked
        .saturating_add(u64::from(c.write_seq.wrapping_sub(c.snd_una)));
    if flags & SOCK_ACTIVE != 0 {
        // Until the peer acknowledges our SYN nothing was sent, and snd_una means nothing yet:
        // connect(2) enters SYN_SENT, then picks write_seq (the initial sequence number), and
        // only then sets snd_una to it (tcp_connect_init), all under the socket lock a walk does
        // not take. A read in between would count the whole sequence number as sent.
        tx = if c.bytes_acked == 0 { 0 } else { tx - 1 };
    }
    if flags & SOCK_FIN_QUEUED != 0 {
        tx = tx.saturating_sub(1);
    }
    let mut rx = c.bytes_received;
    if c.fin_unflagged || c.sk_flags & SK_FLAG_DONE != 0 {
        rx = rx.saturating_sub(1);
    }
    (tx, rx)
}

/// Value of [`RTT_MAP`]: smoothed RTT samples of server sockets (one per connection each time
/// the walk or its close moves its counters; on the sock_ops fallback, one per RTT measurement).
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
    fn payload_leaves_out_the_syn_and_fins() {
        // An active open that sent 100 bytes, received 30, both FINs exchanged and acked.
        let closed = SockCounters {
            bytes_acked: 1 + 100 + 1,
            bytes_received: 30 + 1,
            snd_una: 5000,
            write_seq: 5000,
            fin_unflagged: false,
            sk_flags: SK_FLAG_DONE | 1, // SOCK_DEAD too
        };
        assert_eq!(payload(&closed, SOCK_ACTIVE | SOCK_FIN_QUEUED), (100, 30));
        // Accepted: no SYN of ours in bytes_acked.
        let accepted = SockCounters {
            bytes_acked: 100 + 1,
            ..closed
        };
        assert_eq!(
            payload(&accepted, SOCK_PASSIVE | SOCK_FIN_QUEUED),
            (100, 30)
        );
        // The last 40 bytes and the FIN queued, not yet acknowledged.
        let fin_in_flight = SockCounters {
            bytes_acked: 1 + 60,
            snd_una: 4959,
            ..closed
        };
        assert_eq!(
            payload(&fin_in_flight, SOCK_ACTIVE | SOCK_FIN_QUEUED),
            (100, 30)
        );
        // Open: 100 bytes written, 40 of them acknowledged; 30 received.
        let open = SockCounters {
            bytes_acked: 1 + 40,
            bytes_received: 30,
            snd_una: 4040,
            write_seq: 4100,
            fin_unflagged: false,
            sk_flags: 0,
        };
        assert_eq!(payload(&open, SOCK_ACTIVE), (100, 30));
        // Connecting: only the SYN queued; before it, nothing.
        let syn = SockCounters {
            snd_una: 7,
            write_seq: 8,
            ..SockCounters::default()
        };
        assert_eq!(payload(&syn, SOCK_ACTIVE), (0, 0));
        assert_eq!(payload(&SockCounters::default(), SOCK_ACTIVE), (0, 0));
        // Inside connect(2): the initial sequence number picked, snd_una not yet set to it (0 on
        // a new socket, its last connection's on one that reconnects).
        for snd_una in [0, 4100] {
            let connecting = SockCounters {
                snd_una,
                write_seq: 96_614_791,
                ..SockCounters::default()
            };
            assert_eq!(payload(&connecting, SOCK_ACTIVE), (0, 0));
        }
        // Sequence numbers wrap.
        let wrapped = SockCounters {
            bytes_acked: 5_000_000_000,
            snd_una: u32::MAX - 9,
            write_seq: 10,
            ..SockCounters::default()
        };
        assert_eq!(payload(&wrapped, SOCK_PASSIVE).0, 5_000_000_020);
    }

    #[test]
    fn a_read_that_races_the_peers_fin_errs_low() {
        // bytes_received read before the FIN arrived, SOCK_DONE after: one byte low, never high.
        let c = SockCounters {
            bytes_received: 30,
            sk_flags: SK_FLAG_DONE,
            ..SockCounters::default()
        };
        assert_eq!(payload(&c, 0).1, 29);
        // Read between the FIN entering bytes_received and tcp_fin setting SOCK_DONE: the FIN is
        // the receive queue's last skb, or not queued yet.
        let in_between = SockCounters {
            bytes_received: 30 + 1,
            fin_unflagged: true,
            ..SockCounters::default()
        };
        assert_eq!(payload(&in_between, 0).1, 30);
        // Queued but not yet in bytes_received (read before): low, never high.
        let before = SockCounters {
            bytes_received: 30,
            fin_unflagged: true,
            ..SockCounters::default()
        };
        assert_eq!(payload(&before, 0).1, 29);
        // Both seen: the FIN is one byte, taken off once.
        let both = SockCounters {
            sk_flags: SK_FLAG_DONE,
            ..in_between
        };
        assert_eq!(payload(&both, 0).1, 30);
    }

    #[test]
    fn which_states_a_collection_starts_counting_in() {
        assert!(walk_starts(TCP_ESTABLISHED));
        assert!(walk_starts(8), "close_wait");
        assert!(walk_starts(TCP_FIN_WAIT1));
        for s in [
            TCP_SYN_SENT,
            TCP_SYN_RECV,
            TCP_CLOSE,
            TCP_LISTEN,
            TCP_NEW_SYN_RECV,
        ] {
            assert!(!walk_starts(s), "{s}");
        }
        assert!(queues_fin(TCP_FIN_WAIT1) && queues_fin(TCP_LAST_ACK));
        assert!(!queues_fin(TCP_CLOSE) && !queues_fin(8));
    }

    #[test]
    fn header_length() {
        assert_eq!(tcp_header_len(0x50), 20);
        assert_eq!(tcp_header_len(0x80), 32);
        assert_eq!(tcp_header_len(0xf0), 60);
    }
}
