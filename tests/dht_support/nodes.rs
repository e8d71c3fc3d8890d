//! Starting and asking DHT nodes on loopback, for tests/dht.rs.

use dhtun::core::keys::{PublicKey, SecretKey};
use dhtun::core::record::Record;
use dhtun::shell::dht::{Dht, DhtOptions, DhtStatus};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// The longest any single step may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A server-mode node on loopback with no bootstrap nodes yet.
pub fn local_options() -> DhtOptions {
    DhtOptions {
        bootstrap: Vec::new(),
        bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        server_mode: true,
        request_timeout: None,
    }
}

/// The first node of a new network.
pub async fn seed() -> Dht {
    start(local_options()).await
}

pub async fn client(seed: &Dht) -> Dht {
    start(DhtOptions {
        bootstrap: vec![seed.local_addr().to_string()],
        ..local_options()
    })
    .await
}

pub async fn start(options: DhtOptions) -> Dht {
    bounded("starting a node", Dht::start(options))
        .await
        .expect("starting a DHT node")
}

/// A bare mainline node, to put what dhtun itself never would. In server mode like the others,
/// so no lookup waits on it.
pub fn raw_node(seed: &Dht) -> mainline::async_dht::AsyncDht {
    mainline::Dht::builder()
        .server_mode()
        .bootstrap(&[seed.local_addr()])
        .bind_address(Ipv4Addr::LOCALHOST)
        .port(0)
        .build()
        .expect("starting a raw mainline node")
        .as_async()
}

/// Looks `peer` up until a record newer than `seen` comes back.
pub async fn resolve_until(
    dht: &Dht,
    peer: &PublicKey,
    seen: Option<i64>,
    what: &str,
) -> (i64, Record) {
    bounded(what, async {
        loop {
            match dht.resolve(peer, seen).await {
                Ok(Some(found)) => return found,
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("looking up {what}: {e}"),
            }
        }
    })
    .await
}

pub async fn wait_for(dht: &Dht, what: &str, done: impl Fn(&DhtStatus) -> bool) {
    bounded(what, async {
        while !done(&dht.status()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Runs `work`, failing the test if it takes longer than `WAIT`; a result that is an error
/// fails it too, through the caller's `expect`.
pub async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, work).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

pub fn record(port: u16, addresses: &[&str]) -> Record {
    let addresses: Vec<IpAddr> = addresses.iter().map(|a| a.parse().unwrap()).collect();
    Record::new(port, &addresses, None).unwrap()
}
