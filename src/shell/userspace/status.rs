//! What `dhtun status` adds in userspace mode: each forward, expose and the SOCKS5 proxy with
//! its connections and bytes, and the stack's socket count against its cap.

use crate::config::{Expose, Forward, UserspaceConfig};
use crate::shell::status::human_bytes;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Counters of one entry. For UDP, a "connection" is a flow: one local client of a forward, or
/// one overlay client of an expose.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Connections (flows) open now.
    pub connections: u64,
    /// Connections (flows) carried since the start.
    pub total_connections: u64,
    /// Connections refused: the cap was reached, or the far end could not be reached.
    pub refused: u64,
    /// Bytes carried into the overlay (`tx_bytes`) and out of it (`rx_bytes`).
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// UDP datagrams dropped because a queue was full.
    #[serde(default)]
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub listen: String,
    pub to: String,
    pub protocol: String,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExposeStatus {
    pub port: u16,
    pub to: String,
    pub protocol: String,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Socks5Status {
    pub listen: String,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserspaceStatus {
    /// TCP sockets of the in-daemon stack now (connections and listeners), and the cap.
    pub tcp_sockets: usize,
    pub max_tcp_sockets: usize,
    pub socks5: Option<Socks5Status>,
    pub forwards: Vec<ForwardStatus>,
    pub exposes: Vec<ExposeStatus>,
}

impl UserspaceStatus {
    pub(crate) fn new(
        config: &UserspaceConfig,
        forwards: &[Counters],
        exposes: &[Counters],
        socks5: Counters,
        tcp_sockets: usize,
        max_tcp_sockets: usize,
    ) -> Self {
        let forward = |(f, c): (&Forward, &Counters)| ForwardStatus {
            listen: f.listen.to_string(),
            to: f.to.to_string(),
            protocol: f.protocol.as_str().to_string(),
            counters: *c,
        };
        let expose = |(e, c): (&Expose, &Counters)| ExposeStatus {
            port: e.port,
            to: e.to.to_string(),
            protocol: e.protocol.as_str().to_string(),
            counters: *c,
        };
        Self {
            tcp_sockets,
            max_tcp_sockets,
            socks5: config.socks5_listen.map(|listen| Socks5Status {
                listen: listen.to_string(),
                counters: socks5,
            }),
            forwards: config.forwards.iter().zip(forwards).map(forward).collect(),
            exposes: config.exposes.iter().zip(exposes).map(expose).collect(),
        }
    }

    /// The lines `dhtun status` prints for userspace mode.
    pub fn write_text(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  mode: userspace ({} of {} TCP sockets in use)",
            self.tcp_sockets, self.max_tcp_sockets
        );
        if let Some(socks) = &self.socks5 {
            let _ = writeln!(
                out,
                "  socks5 {}: {}",
                socks.listen,
                counters_text(&socks.counters)
            );
        }
        for f in &self.forwards {
            let _ = writeln!(
                out,
                "  forward {} {} -> {}: {}",
                f.protocol,
                f.listen,
                f.to,
                counters_text(&f.counters)
            );
        }
        for e in &self.exposes {
            let _ = writeln!(
                out,
                "  expose {} port {} -> {}: {}",
                e.protocol,
                e.port,
                e.to,
                counters_text(&e.counters)
            );
        }
    }
}

fn counters_text(c: &Counters) -> String {
    let mut text = format!(
        "{} open, {} in all, {} refused, {} sent, {} received",
        c.connections,
        c.total_connections,
        c.refused,
        human_bytes(c.tx_bytes),
        human_bytes(c.rx_bytes)
    );
    if c.dropped > 0 {
        let _ = write!(text, ", {} datagrams dropped", c.dropped);
    }
    text
}
