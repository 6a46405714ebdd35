//! TCP counters as the model handles them: per port and role.

use std::collections::HashMap;

use probe_common::tcp::{TcpTotals, ROLE_SERVER};
use serde::{Deserialize, Serialize};

use super::cumulative::Cumulative;

/// Which side of a connection the counted sockets are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Sockets on a local listening port (`port` is that port).
    Server,
    /// Outgoing connections from ephemeral ports (`port` is the remote port when the user named
    /// it with --tcp.remote-ports, else 0).
    Client,
}

/// A port and role. Exported as `port="3306"` (server), or `port="ephemeral"` with
/// `remote_port="3306"` when the remote port is kept (client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TcpDim {
    pub role: Role,
    pub port: u16,
}

impl TcpDim {
    pub fn from_kernel(port: u16, role: u8) -> Self {
        let role = if role == ROLE_SERVER {
            Role::Server
        } else {
            Role::Client
        };
        Self { role, port }
    }

    /// The `port` label value.
    pub fn port_label(&self) -> String {
        match self.role {
            Role::Server => self.port.to_string(),
            Role::Client => "ephemeral".to_string(),
        }
    }

    /// The `remote_port` label, if the series has one: outgoing connections to a port the user
    /// named.
    pub fn remote_port(&self) -> Option<u16> {
        (self.role == Role::Client && self.port != 0).then_some(self.port)
    }
}

/// Cumulative TCP counters of one (process or instance, port, role).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub retransmits: u64,
    pub accepted: u64,
    pub closed: u64,
}

impl From<&TcpTotals> for TcpCounters {
    fn from(t: &TcpTotals) -> Self {
        Self {
            rx_bytes: t.rx_bytes,
            tx_bytes: t.tx_bytes,
            retransmits: t.retransmits,
            accepted: t.accepted,
            closed: t.closed,
        }
    }
}

impl TcpCounters {
    fn fields(&self) -> [u64; 5] {
        [
            self.rx_bytes,
            self.tx_bytes,
            self.retransmits,
            self.accepted,
            self.closed,
        ]
    }
    fn from_fields(f: [u64; 5]) -> Self {
        Self {
            rx_bytes: f[0],
            tx_bytes: f[1],
            retransmits: f[2],
            accepted: f[3],
            closed: f[4],
        }
    }
    pub fn bytes(&self) -> u64 {
        self.rx_bytes.saturating_add(self.tx_bytes)
    }
}

impl Cumulative for TcpCounters {
    fn since(&self, prev: &Self) -> Self {
        let (now, before) = (self.fields(), prev.fields());
        if now.iter().zip(&before).any(|(a, b)| a < b) {
            return self.clone(); // the entry was deleted and created again
        }
        Self::from_fields(std::array::from_fn(|i| now[i] - before[i]))
    }
    fn add(&mut self, d: &Self) {
        let (a, b) = (self.fields(), d.fields());
        *self = Self::from_fields(std::array::from_fn(|i| a[i].saturating_add(b[i])));
    }
    fn is_zero(&self) -> bool {
        self.fields().iter().all(|&v| v == 0)
    }
}

/// One process's cumulative TCP counters as the kernel reports them.
pub type ProcessTcp = HashMap<TcpDim, TcpCounters>;

#[cfg(test)]
mod tests {
    use super::*;

    fn c(rx: u64, tx: u64) -> TcpCounters {
        TcpCounters {
            rx_bytes: rx,
            tx_bytes: tx,
            ..TcpCounters::default()
        }
    }

    #[test]
    fn increase_and_reset() {
        assert_eq!(c(300, 50).since(&c(100, 50)), c(200, 0));
        assert_eq!(c(10, 60).since(&c(100, 50)), c(10, 60), "re-created entry");
    }

    #[test]
    fn labels() {
        let server = TcpDim::from_kernel(3306, ROLE_SERVER);
        assert_eq!(
            (server.port_label(), server.remote_port()),
            ("3306".into(), None)
        );
        let client = TcpDim::from_kernel(443, probe_common::tcp::ROLE_CLIENT);
        assert_eq!(client.port_label(), "ephemeral");
        assert_eq!(client.remote_port(), Some(443));
        let folded = TcpDim::from_kernel(0, probe_common::tcp::ROLE_CLIENT);
        assert_eq!(folded.remote_port(), None);
    }
}
