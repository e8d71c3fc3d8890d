//! Discovery in the daemon: runs the DHT node, keeps our record published, and carries out
//! the lookups the core asks for, handing each verified record back to it.
//!
//! Publishing runs in its own task: it lists the host's addresses over netlink, and publishes
//! when they change (checked every ADDRESS_CHECK_INTERVAL, as is the DHT's public address), at
//! once when the tunnel socket's reflexive address changes (the daemon learns it, see
//! `core::reflexive`), every DHT_REPUBLISH_INTERVAL, and, with private records, when the set of
//! periods it publishes under changes (see `core::privacy`). Lookups run in tasks of their own, at most
//! DHT_RESOLVES_IN_FLIGHT at a time, and report back over a bounded channel.

use crate::config::DhtConfig;
use crate::core::device::Device;
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::limits::{
    ADDRESS_CHECK_INTERVAL, DHT_REPUBLISH_INTERVAL, DHT_RESOLVES_IN_FLIGHT, FIRST_PUBLISH_RETRY,
    MAX_RECORD_CANDIDATES,
};
use crate::core::privacy::Privacy;
use crate::core::record::{is_usable_address, Record};
use crate::core::reflexive::{confirmed_public_ip, Reflector};
use crate::shell::dht::{Dht, DhtOptions, DhtStatus};
use crate::shell::netlink::Netlink;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The answer to one lookup: the first record it found, as soon as it came (`done` false), then
/// its result, the newest it found (`done` true).
pub struct Lookup {
    pub peer: PublicKey,
    pub found: Option<(i64, Record)>,
    pub done: bool,
}

pub struct Discovery {
    dht: Dht,
    privacy: Privacy,
    in_flight: usize,
    results_tx: mpsc::Sender<Lookup>,
    results: mpsc::Receiver<Lookup>,
    /// The tunnel socket's reflexive address, for the publisher.
    reflexive: watch::Sender<Option<SocketAddr>>,
    /// Marked by the publisher when the host's addresses changed.
    moved: watch::Receiver<()>,
    publisher: JoinHandle<()>,
}

impl Discovery {
    /// Starts the DHT node and the publisher. `tun_index` is our own interface, whose overlay
    /// addresses are never published as ways to reach us.
    pub async fn start(
        config: &DhtConfig,
        secret: SecretKey,
        listen_port: u16,
        netlink: Netlink,
        tun_index: u32,
    ) -> anyhow::Result<Self> {
        let options = DhtOptions {
            bootstrap: config.bootstrap.clone(),
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port),
            server_mode: config.server_mode,
            request_timeout: config.request_timeout,
        };
        let dht = Dht::start(options).await?;
        let (reflexive, reflexive_rx) = watch::channel(None);
        let (moved_tx, moved) = watch::channel(());
        let publisher = tokio::spawn(publish_forever(
            dht.clone(),
            Signer {
                secret,
                privacy: config.privacy.clone(),
            },
            listen_port,
            netlink,
            tun_index,
            reflexive_rx,
            moved_tx,
        ));
        // Two answers per lookup at most: the first record early, then the result.
        let (results_tx, results) = mpsc::channel(2 * DHT_RESOLVES_IN_FLIGHT);
        Ok(Self {
            dht,
            privacy: config.privacy.clone(),
            in_flight: 0,
            results_tx,
            results,
            reflexive,
            moved,
            publisher,
        })
    }

    /// The DHT nodes to ask for the tunnel socket's reflexive address: the bootstrap nodes.
    pub fn reflectors(&self) -> Vec<SocketAddr> {
        self.dht
            .bootstrap_nodes()
            .iter()
            .map(|&node| SocketAddr::V4(node))
            .collect()
    }

    /// Whether the host's addresses changed since the last call: the host may have moved to
    /// another network, so its reflexive address is worth asking for again.
    pub fn take_moved(&mut self) -> bool {
        let moved = self.moved.has_changed().unwrap_or(false);
        self.moved.mark_unchanged();
        moved
    }

    /// The DHT socket's port, which a full tunnel's rules exempt from the tunnel.
    pub fn dht_port(&self) -> u16 {
        self.dht.local_addr().port()
    }

    /// The public IP the DHT socket's node reports (see `core::reflexive` for how it is used).
    pub fn dht_public_ip(&self) -> Option<IpAddr> {
        self.dht.public_ip()
    }

    /// Tells the publisher the tunnel socket's reflexive address changed; it republishes at once.
    pub fn set_reflexive(&self, address: Option<SocketAddr>) {
        self.reflexive.send_replace(address);
    }

    /// Starts the lookups the core wants now, up to the in-flight limit.
    pub fn start_lookups(&mut self, device: &mut Device, now: Duration) {
        while self.in_flight < DHT_RESOLVES_IN_FLIGHT {
            let Some((peer, seen)) = device.next_lookup(now) else {
                return;
            };
            self.in_flight += 1;
            let dht = self.dht.clone();
            let privacy = self.privacy.clone();
            let results = self.results_tx.clone();
            tokio::spawn(async move {
                // The first record goes to the core at once: the lookup listens on for a newer
                // one (see `core::lookup`), and handshakes should not wait for that.
                let (first_tx, first_rx) = oneshot::channel();
                let early = async {
                    if let Ok(first) = first_rx.await {
                        let _ = results.try_send(Lookup {
                            peer,
                            found: Some(first),
                            done: false,
                        });
                    }
                };
                let (found, ()) = tokio::join!(
                    dht.resolve_with(&peer, seen, Some(first_tx), &privacy),
                    early
                );
                let found = match found {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::debug!(%peer, "DHT lookup failed: {e:#}");
                        None
                    }
                };
                // The channel holds two answers for every lookup that may run, so this never
                // drops.
                let _ = results.try_send(Lookup {
                    peer,
                    found,
                    done: true,
                });
            });
        }
    }

    /// The next finished lookup.
    pub async fn next_result(&mut self) -> Option<Lookup> {
        self.results.recv().await
    }

    /// Hands a lookup's answer to the core; a newer record after the early one replaces it, the
    /// same one again changes nothing.
    pub fn apply(&mut self, device: &mut Device, lookup: Lookup, now: Duration) {
        if lookup.done {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match lookup.found {
            Some((sequence, record)) => {
                let candidates: Vec<SocketAddr> = record.candidates().collect();
                tracing::debug!(peer = %lookup.peer, sequence, ?candidates, "DHT record found");
                device.record_found(&lookup.peer, sequence, &candidates, now);
            }
            None => device.record_missing(&lookup.peer),
        }
    }

    pub fn status(&self) -> DhtStatus {
        self.dht.status()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

/// Who publishes and how: our identity, and whether records are private.
struct Signer {
    secret: SecretKey,
    privacy: Privacy,
}

/// Keeps our record on the DHT: publishes when what we would publish changes, and every
/// DHT_REPUBLISH_INTERVAL otherwise.
async fn publish_forever(
    dht: Dht,
    signer: Signer,
    listen_port: u16,
    netlink: Netlink,
    tun_index: u32,
    mut reflexive: watch::Receiver<Option<SocketAddr>>,
    moved: watch::Sender<()>,
) {
    let Signer { secret, privacy } = signer;
    let mut published: Option<(Record, tokio::time::Instant, Vec<Option<u64>>)> = None;
    let mut checked_earlier_runs = false;
    let mut addresses: Option<Vec<IpAddr>> = None;
    loop {
        let outside = *reflexive.borrow_and_update();
        let record = match current_record(&dht, &netlink, listen_port, tun_index, outside).await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("cannot build our DHT record: {e:#}");
                tokio::time::sleep(ADDRESS_CHECK_INTERVAL).await;
                continue;
            }
        };
        if addresses
            .replace(record.addresses().to_vec())
            .is_some_and(|before| before != record.addresses())
        {
            moved.send_replace(());
        }
        // Private records: entering a boundary's overlap adds a period, leaving it drops one.
        let periods: Vec<Option<u64>> = privacy
            .slots(&secret, unix_now())
            .iter()
            .map(|slot| slot.period())
            .collect();
        let due = match &published {
            None => true,
            Some((last, at, last_periods)) => {
                last != &record
                    || at.elapsed() >= DHT_REPUBLISH_INTERVAL
                    || last_periods != &periods
            }
        };
        if due {
            match dht.publish_with(&secret, &record, &privacy).await {
                Ok(sequence) => {
                    tracing::info!(
                        sequence,
                        addresses = ?record.candidates().collect::<Vec<_>>(),
                        "published our DHT record"
                    );
                    if !checked_earlier_runs {
                        checked_earlier_runs = true;
                        match dht
                            .publish_above_earlier_runs_with(&secret, &record, &privacy)
                            .await
                        {
                            Ok(Some(sequence)) => tracing::info!(
                                sequence,
                                "the DHT held a record of ours from an earlier run with a \
                                 higher sequence (our clock is behind it); published above it"
                            ),
                            Ok(None) => {}
                            Err(e) => tracing::warn!("publishing above an earlier run: {e:#}"),
                        }
                    }
                    published = Some((record, tokio::time::Instant::now(), periods));
                }
                Err(e) => tracing::warn!("publishing our DHT record failed: {e:#}"),
            }
        }
        let pause = if published.is_some() {
            ADDRESS_CHECK_INTERVAL
        } else {
            FIRST_PUBLISH_RETRY
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = reflexive.changed() => {
                if changed.is_err() {
                    // The daemon is gone; keep the old pace until it aborts this task.
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Our record as of now: the host's usable addresses (not loopback, not our own tunnel), our
/// tunnel port, the public address DHT nodes report unless the reflexive address contradicts it,
/// and the tunnel socket's reflexive address unless it is a loopback one (a DHT node on this
/// host).
async fn current_record(
    dht: &Dht,
    netlink: &Netlink,
    listen_port: u16,
    tun_index: u32,
    reflexive: Option<SocketAddr>,
) -> anyhow::Result<Record> {
    let mut addresses: Vec<IpAddr> = netlink
        .all_addresses()
        .await?
        .into_iter()
        .filter(|(index, ip)| *index != tun_index && !ip.is_loopback() && is_usable_address(*ip))
        .map(|(_, ip)| ip)
        .collect();
    addresses.sort();
    addresses.dedup();
    // A peer keeps at most MAX_RECORD_CANDIDATES candidates of our record, interface addresses
    // first: leave room for the public and the reflexive one, the two that cross a NAT.
    addresses.truncate(MAX_RECORD_CANDIDATES - 2);
    let reflexive = reflexive.filter(|r| !r.ip().is_loopback() && is_usable_address(r.ip()));
    let public =
        confirmed_public_ip(dht.public_ip(), reflexive).filter(|ip| !addresses.contains(ip));
    Ok(Record::new(listen_port, &addresses, public)?.with_reflexive(reflexive)?)
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The timer tick's part of discovery, the same in both modes: the device's timers, then a
/// host that moved refreshes its reflexive address and re-handshakes, lookups that are due
/// start, and the reflector hears the DHT's idea of our public IP.
pub(crate) fn on_tick(
    device: &mut Device,
    mut reflector: Option<&mut Reflector>,
    discovery: Option<&mut Discovery>,
    now: Duration,
) {
    device.handle_timers(now);
    let Some(discovery) = discovery else {
        return;
    };
    if discovery.take_moved() {
        if let Some(reflector) = reflector.as_mut() {
            reflector.refresh(now);
        }
        device.underlay_changed(now);
    }
    discovery.start_lookups(device, now);
    if let Some(reflector) = reflector {
        reflector.set_dht_public_ip(discovery.dht_public_ip());
    }
}
