//! `dhtun dht-node`: a standalone Mainline DHT node in server mode, e.g. the bootstrap node of a
//! private or isolated network. It stores and serves other nodes' items; it publishes nothing.

use crate::shell::dht::{resolve_bootstrap, Dht, DhtOptions};
use anyhow::Context as _;
use std::net::SocketAddr;
use tokio::signal::unix::{signal, SignalKind};

/// `dhtun dht-node`: a standalone server-mode node on `listen`, joined to `bootstrap` (or the
/// first node of a new network when there is none), until SIGINT or SIGTERM. The bootstrap
/// nodes are resolved as `[dht] bootstrap` of a config is (see [`Dht::start`]): a host name that
/// does not resolve is logged and left out, not fatal.
pub fn run_dht_node(listen: SocketAddr, bootstrap: &[String]) -> anyhow::Result<()> {
    let SocketAddr::V4(bind) = listen else {
        anyhow::bail!(
            "--listen {listen}: the Mainline DHT runs over IPv4 only; give an IPv4 address"
        );
    };
    for node in bootstrap {
        check_bootstrap(node).map_err(|e| anyhow::anyhow!("--bootstrap {node}: {e}"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Signals first, so a stop request during start-up is not lost.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // A node none of whose bootstrap nodes resolves (DNS not up yet at boot) would serve a
        // DHT of its own for good, cut off from the network it was meant to join: refuse, and
        // let a service manager start it again. Some resolving is enough, as for the daemon.
        let (resolved, failures) = resolve_bootstrap(bootstrap).await;
        match failures {
            Some(failures) if resolved.is_empty() => anyhow::bail!(
                "--bootstrap: {failures}; with none usable this node would run on its own \
                 (start it again once the names resolve)"
            ),
            Some(failures) => tracing::warn!("--bootstrap: {failures}; going on with the rest"),
            None => {}
        }
        let dht = Dht::start(DhtOptions {
            bootstrap: resolved.iter().map(ToString::to_string).collect(),
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

/// Checks the form of one bootstrap node given on the command line, `HOST:PORT` or
/// `IPV4:PORT` as `[dht] bootstrap` takes them, so a typo is refused at once instead of
/// leaving the node alone in a network of its own. Whether the host resolves is found at start.
/// The error does not repeat `node`: clap names the value already.
pub fn check_bootstrap(node: &str) -> Result<String, String> {
    let expected = "expected HOST:PORT or IPV4:PORT, e.g. router.bittorrent.com:6881";
    match node.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(_)) => return Ok(node.to_string()),
        Ok(SocketAddr::V6(_)) => {
            return Err(
                "the Mainline DHT runs over IPv4 only; give an IPv4 address or a host name"
                    .to_string(),
            )
        }
        Err(_) => {}
    }
    let Some((host, port)) = node.rsplit_once(':') else {
        return Err(format!("no port; {expected}"));
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !host_ok {
        return Err(format!("{host:?} is not a host name; {expected}"));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(node.to_string()),
        _ => Err(format!("{port:?} is not a port (1-65535); {expected}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_nodes_are_host_or_ipv4_and_a_port() {
        for good in [
            "198.18.0.254:6881",
            "router.bittorrent.com:6881",
            "localhost:1",
            "dht_node-2.example:65535",
        ] {
            assert_eq!(check_bootstrap(good).as_deref(), Ok(good));
        }
        for (bad, says) in [
            ("[::1]:6881", "IPv4 only"),
            ("router.bittorrent.com", "no port"),
            ("router.bittorrent.com:", "not a port"),
            ("router.bittorrent.com:0", "not a port"),
            ("router.bittorrent.com:70000", "not a port"),
            (":6881", "not a host name"),
            ("::1:6881", "not a host name"),
            ("bad host:6881", "not a host name"),
        ] {
            let error = check_bootstrap(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
