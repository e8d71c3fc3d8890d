//! `dhtun dht-node`: a standalone Mainline DHT node in server mode, e.g. the bootstrap node of a
//! private or isolated network. It stores and serves other nodes' items; it publishes nothing.

use crate::shell::dht::{Dht, DhtOptions};
use anyhow::Context as _;
use std::net::SocketAddr;
use tokio::signal::unix::{signal, SignalKind};

/// `dhtun dht-node`: a standalone server-mode node on `listen`, joined to `bootstrap` (or the
/// first node of a new network when there is none), until SIGINT or SIGTERM.
pub fn run_dht_node(listen: SocketAddr, bootstrap: &[SocketAddr]) -> anyhow::Result<()> {
    let SocketAddr::V4(bind) = listen else {
        anyhow::bail!(
            "--listen {listen}: the Mainline DHT runs over IPv4 only; give an IPv4 address"
        );
    };
    if let Some(v6) = bootstrap.iter().find(|a| a.is_ipv6()) {
        anyhow::bail!(
            "--bootstrap {v6}: the Mainline DHT runs over IPv4 only; give an IPv4 address"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Signals first, so a stop request during start-up is not lost.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let dht = Dht::start(DhtOptions {
            bootstrap: bootstrap.iter().map(SocketAddr::to_string).collect(),
            bind,
            server_mode: true,
            request_timeout: None,
        })
        .await?;
        tracing::info!(address = %dht.local_addr(), "DHT node running (server mode)");
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        tracing::info!("DHT node stopping");
        Ok(())
    })
}
