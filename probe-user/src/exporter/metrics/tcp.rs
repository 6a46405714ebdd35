//! TCP families: bytes, connections, retransmits and RTT per instance and port, and the bytes
//! of the top-K processes.

use prometheus_client::{
    encoding::DescriptorEncoder, metrics::counter::ConstCounter, registry::Unit,
};

use super::{
    clamp, family, gauge,
    labels::{ListenPort, Pid, Port, ProcessTcp, Tcp},
    ConstHistogram, Desc,
};
use crate::{
    daemon::Snapshot,
    model::{
        accounts::TcpProcessRow,
        tcp::{Role, TcpCounters, TcpDim},
    },
};

const TCP_BYTES: Desc = ("probe_tcp", Some(Unit::Bytes), "TCP payload bytes the instance's processes received (direction=rx) and sent (tx), per listening port (port=\"ephemeral\": outgoing connections, with remote_port when --tcp.remote-ports names it).");
const TCP_CONNECTIONS: Desc = (
    "probe_tcp_connections",
    None,
    "TCP connections accepted on the instance's listening port (handshake completed).",
);
const TCP_CLOSED: Desc = (
    "probe_tcp_connections_closed",
    None,
    "Accepted TCP connections on the instance's listening port that closed.",
);
const TCP_ESTABLISHED: Desc = ("probe_tcp_established", None, "TCP connections established on the instance's listening port now (the daemon's network namespace).");
const TCP_RETRANSMITS: Desc = ("probe_tcp_retransmits", None, "TCP segments retransmitted by the instance's sockets (what TcpRetransSegs counts), per port as for probe_tcp_bytes_total.");
const TCP_RTT: Desc = ("probe_tcp_rtt", Some(Unit::Seconds), "Smoothed RTT of connections accepted on the instance's listening port: one sample per connection at each collection in which it carried data and at its close (on the sock_ops fallback, at every RTT measurement).");
const PROC_TCP_BYTES: Desc = (
    "probe_process_tcp",
    Some(Unit::Bytes),
    "TCP payload bytes of the top processes by recent TCP traffic (--process.top-k).",
);

pub(super) fn encode(s: &Snapshot, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    family(
        e,
        TCP_BYTES,
        s.tcp.iter().flat_map(|((i, d), c)| {
            directions(c).map(move |(dir, n)| (Tcp::of(i, d, Some(dir)), ConstCounter::new(n)))
        }),
    )?;
    let server = || {
        s.tcp
            .iter()
            .filter(|((_, d), _)| d.role == Role::Server)
            .map(|((i, d), c)| (Tcp::of(i, d, None), c))
    };
    family(
        e,
        TCP_CONNECTIONS,
        server().map(|(l, c)| (l, ConstCounter::new(c.accepted))),
    )?;
    family(
        e,
        TCP_CLOSED,
        server().map(|(l, c)| (l, ConstCounter::new(c.closed))),
    )?;
    family(
        e,
        TCP_ESTABLISHED,
        s.established
            .iter()
            .map(|((i, p), n)| (listen_port(i, *p), gauge(clamp(*n)))),
    )?;
    family(
        e,
        TCP_RETRANSMITS,
        s.tcp
            .iter()
            .map(|((i, d), c)| (Tcp::of(i, d, None), ConstCounter::new(c.retransmits))),
    )?;
    family(
        e,
        TCP_RTT,
        s.rtt
            .iter()
            .map(|((i, p), c)| (listen_port(i, *p), ConstHistogram::latency(c))),
    )?;
    let listed = s.top_tcp.iter().flat_map(|p: &TcpProcessRow| {
        p.counters
            .iter()
            .flat_map(move |(d, c)| process_rows(&p.instance, Pid::Of(p.pid), &p.comm, d, c))
    });
    let other = s
        .other_tcp
        .iter()
        .flat_map(|((i, d), c)| process_rows(i, Pid::Other, "other", d, c));
    family(e, PROC_TCP_BYTES, listed.chain(other))
}

/// Received and sent bytes, as `direction` label values.
fn directions(c: &TcpCounters) -> impl Iterator<Item = (&'static str, u64)> {
    [("rx", c.rx_bytes), ("tx", c.tx_bytes)].into_iter()
}

fn process_rows<'a>(
    service_instance: &'a str,
    pid: Pid,
    comm: &'a str,
    dim: &'a TcpDim,
    c: &TcpCounters,
) -> impl Iterator<Item = (ProcessTcp<'a>, ConstCounter<u64>)> {
    directions(c).map(move |(direction, n)| {
        let labels = ProcessTcp {
            service_instance,
            pid,
            comm,
            port: Port(dim),
            remote_port: dim.remote_port(),
            direction,
        };
        (labels, ConstCounter::new(n))
    })
}

fn listen_port(service_instance: &str, port: u16) -> ListenPort<'_> {
    ListenPort {
        service_instance,
        port,
    }
}
