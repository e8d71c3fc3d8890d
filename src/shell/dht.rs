//! The Mainline DHT: publishing our record and looking up peers' records, through the `mainline`
//! crate, plus the standalone `dhtun dht-node`.
//!
//! mainline runs its own actor thread with its own IPv4 UDP socket; its async API only queues a
//! message to that thread and awaits the answer on a channel, so nothing here blocks the
//! caller's thread beyond binding the socket at start. Every call into mainline runs in a spawned
//! task under a time limit: mainline panics when its actor thread has died, and in a task that
//! panic becomes an error the daemon reports instead of taking the tunnel down with it.
//!
//! What the DHT returns is bounded before it costs memory: one lookup examines at most
//! `MAX_RESOLVE_ITEMS` items, a record lists at most `MAX_RECORD_CANDIDATES` addresses, and
//! every item that is refused is counted in [`DhtStatus`], never logged one by one.
//!
//! mainline 8 in tiny private networks, as measured on loopback:
//! - The first node of a network (no bootstrap nodes) lists every node that asks it anything in
//!   its routing table, read-only clients included. A lookup that is told about a read-only
//!   client waits out the request timeout (2 s) on it. Lookups here stop `DHT_RESOLVE_SETTLE`
//!   after the first valid item instead of waiting for the end; a publish does wait. So nodes
//!   of a private network should run in server mode (publish and lookup then take well under
//!   100 ms), or at least with a shorter request timeout.
//! - A node given its own address as bootstrap node never fills its routing table and spins at
//!   full speed re-bootstrapping, logging an error each time; our own address is therefore
//!   dropped from the bootstrap list, which lets every bootstrap node of a network share one list.
//! - A lookup asked while another one for the same key is still running joins that one: it gets
//!   the answers collected so far, and nothing newer until that lookup ends.
//! - A put reuses the closest nodes, and their write tokens, of the last lookup of the same key
//!   for 5 minutes. Nodes issue a token to an address, so after our address changed (the host
//!   moved, or its NAT got another public IP) every node refuses those puts ("203 Bad token",
//!   which mainline then reports as a put timeout) until the 5 minutes are over. A lookup of our
//!   own key run to its end replaces that cache, so a failed publish does one and tries again.

use crate::core::keys::{PublicKey, SecretKey};
use crate::core::limits::{
    DHT_ACTOR_TIMEOUT, DHT_BOOTSTRAP_DNS_TIMEOUT, DHT_PUBLISH_TIMEOUT, DHT_RESOLVE_TIMEOUT,
    MAX_RESOLVE_ITEMS,
};
use crate::core::lookup::{Offered, RecordPicker};
use crate::core::privacy::{Privacy, Reader, Slot};
use crate::core::private_record::NONCE_BYTES;
use crate::core::record::{next_sequence, Record};
use anyhow::Context as _;
use futures::StreamExt as _;
use mainline::async_dht::{AsyncDht, GetMutableOutcomeReceiver};
use mainline::errors::{ConcurrencyError, PutMutableError, PutQueryError};
use mainline::MutableItem;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod refresh;
use refresh::refresh_status;

/// How to start a DHT node.
#[derive(Debug, Clone)]
pub struct DhtOptions {
    /// Nodes to join the DHT through, `HOST:PORT` or `IPV4:PORT`. Empty: this node is the first
    /// of a new network.
    pub bootstrap: Vec<String>,
    /// IPv4 address and UDP port of the DHT socket; port 0 picks any free port.
    pub bind: SocketAddrV4,
    /// Answer other nodes' requests from the start, as a node of a private network or a
    /// bootstrap node should. Otherwise mainline starts read-only and switches on its own once
    /// it has seen that it is reachable.
    pub server_mode: bool,
    /// How long to wait for one node's answer; `None` keeps mainline's 2 s. On a local network
    /// a few hundred milliseconds make lookups that hit a silent node much faster.
    pub request_timeout: Option<Duration>,
}

/// A running DHT node. Cheap to clone; the node stops when the last clone is dropped.
#[derive(Clone)]
pub struct Dht {
    inner: Arc<Inner>,
}

/// The node's state as `dhtun status` shows it. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhtStatus {
    /// Address of the DHT socket.
    pub local_address: String,
    pub server_mode: bool,
    /// Whether the routing table holds at least one node that answered us.
    pub bootstrapped: bool,
    pub routing_table_size: usize,
    /// The address DHT nodes report seeing our packets come from.
    pub public_address: Option<SocketAddrV4>,
    /// When our record was last stored, in seconds since the Unix epoch, and its sequence.
    pub last_publish_unix: Option<u64>,
    pub last_publish_seq: Option<i64>,
    /// The latest thing that went wrong, cleared by the next successful publish.
    pub last_error: Option<String>,
    pub publishes: u64,
    pub publish_failures: u64,
    pub resolves: u64,
    /// Whether records are private (`[dht] network_secret_file`): sealed, under per-period keys.
    pub private: bool,
    /// Items refused by lookups: the sum of the counters below.
    pub records_ignored: u64,
    /// Validly signed values that are not a dhtun record we can read.
    pub records_malformed: u64,
    /// Values older than one already seen (a replay, or a node that missed an update).
    pub records_older: u64,
    /// Values whose signature, key or target did not check out (counted by mainline).
    pub records_bad_signature: u64,
    /// Private mode: values that do not decrypt with the network's key (another network's).
    pub records_undecryptable: u64,
    /// Private mode: values not signed by the peer inside (someone writing in its name).
    pub records_forged: u64,
    /// Private mode: values the peer signed for another period (an old record replayed).
    pub records_wrong_period: u64,
    /// Private mode: values the peer signed for another sequence (an old record re-wrapped).
    pub records_replayed: u64,
}

impl DhtOptions {
    /// A client node on every local address and `port` (0: any free port).
    pub fn client(bootstrap: &[String], port: u16) -> Self {
        Self {
            bootstrap: bootstrap.to_vec(),
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            server_mode: false,
            request_timeout: None,
        }
    }
}

/// The public Mainline bootstrap nodes, the default of `[dht] bootstrap`.
pub fn default_bootstrap() -> Vec<String> {
    mainline::DEFAULT_BOOTSTRAP_NODES
        .iter()
        .map(|node| node.to_string())
        .collect()
}

impl Dht {
    /// Binds the DHT socket and starts the node. Fails with a clear message when the socket
    /// cannot be bound; bootstrap nodes that do not resolve are only reported in the status,
    /// since the tunnel's static peers work without the DHT.
    pub async fn start(options: DhtOptions) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("the DHT node must be started inside a tokio runtime")?;
        let local = reserve(options.bind)?;
        let (mut bootstrap, dns_error) = resolve_bootstrap(&options.bootstrap).await;
        bootstrap.retain(|node| !is_own_address(*node, local));
        if let Some(error) = &dns_error {
            tracing::warn!("DHT: {error}");
        }

        let mut builder = mainline::Dht::builder();
        builder
            .bootstrap(&bootstrap)
            .bind_address(*local.ip())
            .port(local.port());
        if options.server_mode {
            builder.server_mode();
        }
        if let Some(timeout) = options.request_timeout {
            builder.request_timeout(timeout);
        }
        // mainline panics instead of failing when its thread dies before answering the start-up
        // check (a bind that fails in the short window after `reserve` let go of the port).
        let node = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.build()))
            .map_err(|_| anyhow::anyhow!("the DHT node on {local} failed to start"))?
            .map_err(|e| bind_error(local, e))?;

        let status = Arc::new(Mutex::new(DhtStatus {
            local_address: local.to_string(),
            server_mode: options.server_mode,
            last_error: dns_error,
            ..DhtStatus::default()
        }));
        let node = node.as_async();
        let refresher = runtime.spawn(refresh_status(node.clone(), Arc::clone(&status)));
        Ok(Self {
            inner: Arc::new(Inner {
                node,
                local,
                bootstrap,
                status,
                last_seq: tokio::sync::Mutex::new(None),
                refresher,
            }),
        })
    }

    /// Address of the DHT socket.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.inner.local
    }

    /// The bootstrap nodes as resolved at start (IPv4, our own address left out).
    pub fn bootstrap_nodes(&self) -> &[SocketAddrV4] {
        &self.inner.bootstrap
    }

    /// The IP DHT nodes report seeing us at, to put in our record.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.inner
            .status()
            .public_address
            .map(|address| IpAddr::V4(*address.ip()))
    }

    /// Publishes `record` signed by `key`, with a sequence number above every one this node
    /// used before; returns that number. Publishes of one node run one at a time. Waits for the
    /// DHT nodes' answers: a publish takes one lookup and one round of puts.
    pub async fn publish(&self, key: &SecretKey, record: &Record) -> anyhow::Result<i64> {
        self.publish_with(key, record, &Privacy::Public).await
    }

    /// Publishes `record` in every slot `privacy` names for now (private mode: one or two
    /// periods, each sealed and under its own key); returns the last sequence used. Fails if
    /// any slot could not be written.
    pub async fn publish_with(
        &self,
        key: &SecretKey,
        record: &Record,
        privacy: &Privacy,
    ) -> anyhow::Result<i64> {
        let mut last = self.inner.last_seq.lock().await;
        let mut result = Ok(0);
        let mut seq = 0;
        for slot in privacy.slots(key, unix_now()) {
            seq = next_sequence(*last, unix_now());
            let mut put = self.put(key, &slot, record, seq).await;
            if let Err(failure) = &put {
                // Either the DHT holds a record of ours with a higher sequence (our clock
                // stepped back, or this key ran elsewhere with a clock ahead of ours), or the
                // nodes refused the write tokens mainline cached for our key before our
                // address changed (see the module doc). A lookup of our own key, run to its
                // end, tells the highest sequence and refreshes those tokens; then try once
                // more, above that sequence.
                tracing::debug!("DHT: put failed ({failure}); looking our record up and retrying");
                let newest = self.newest_sequence(&slot).await;
                seq = next_sequence(Some(newest.unwrap_or(seq).max(seq)), unix_now());
                put = self.put(key, &slot, record, seq).await;
            }
            // Even a failed put may have reached some nodes, so the next one must go higher.
            *last = Some(seq);
            if let Some(period) = slot.period() {
                tracing::debug!(period, ok = put.is_ok(), "DHT: private record put");
            }
            result = result.and(put);
        }
        drop(last);

        let mut status = self.inner.status();
        status.private = privacy.is_private();
        match result {
            Ok(stored_at) => {
                status.publishes += 1;
                status.last_publish_unix = Some(unix_now().as_secs());
                status.last_publish_seq = Some(seq);
                status.last_error = None;
                tracing::debug!(seq, stored_at, "DHT: published our record");
                Ok(seq)
            }
            Err(failure) => {
                let message = format!("publishing our record: {failure}");
                status.publish_failures += 1;
                status.last_error = Some(message.clone());
                tracing::warn!("DHT: {message}");
                Err(anyhow::anyhow!(message))
            }
        }
    }

    /// Looks up `peer`'s record. mainline has checked each item's signature, key and target;
    /// here an item is refused, and counted, when its value is not a record or when it is older
    /// than `seen` (the sequence of the record the caller already has) or than another item of
    /// the lookup. Returns the newest record found by the time the lookup ends, or
    /// `DHT_RESOLVE_SETTLE` after the first one (see `core::lookup`), if newer than `seen`;
    /// `None` when there is none within `DHT_RESOLVE_TIMEOUT`. An error means the DHT node
    /// itself has stopped.
    pub async fn resolve(
        &self,
        peer: &PublicKey,
        seen: Option<i64>,
    ) -> anyhow::Result<Option<(i64, Record)>> {
        self.resolve_early(peer, seen, None).await
    }

    /// Like `resolve`, and hands the first acceptable record to `first` as soon as it comes, so
    /// handshakes need not wait for the settle window: a newer one found later follows as the
    /// result.
    pub async fn resolve_early(
        &self,
        peer: &PublicKey,
        seen: Option<i64>,
        first: Option<oneshot::Sender<(i64, Record)>>,
    ) -> anyhow::Result<Option<(i64, Record)>> {
        self.resolve_with(peer, seen, first, &Privacy::Public).await
    }

    /// Like `resolve_early`, reading the slots `privacy` names for now: in private mode the
    /// peer's slot of the current period, and of the neighbouring one near a boundary, both
    /// looked up at once.
    pub async fn resolve_with(
        &self,
        peer: &PublicKey,
        seen: Option<i64>,
        first: Option<oneshot::Sender<(i64, Record)>>,
        privacy: &Privacy,
    ) -> anyhow::Result<Option<(i64, Record)>> {
        {
            let mut status = self.inner.status();
            status.resolves += 1;
            status.private = privacy.is_private();
        }
        let node = self.inner.node.clone();
        let status = Arc::clone(&self.inner.status);
        let reader = privacy.reader(peer, unix_now());
        // The lookup stops itself by DHT_RESOLVE_TIMEOUT with what it found; this limit only
        // backs that up.
        let limit = DHT_RESOLVE_TIMEOUT + DHT_ACTOR_TIMEOUT;
        let found = isolated(limit, lookup(node, status, reader, seen, first)).await?;
        Ok(found.flatten())
    }

    /// A snapshot of the node's state; never waits for the node.
    pub fn status(&self) -> DhtStatus {
        self.inner.status().clone()
    }

    /// One put of `record` in `slot` at `seq`, signed (and, when private, sealed) by `key`; on
    /// success, how many nodes stored it.
    async fn put(
        &self,
        key: &SecretKey,
        slot: &Slot,
        record: &Record,
        seq: i64,
    ) -> Result<u32, String> {
        let value = slot
            .value(key, seq, record, random_nonce())
            .map_err(|e| format!("encoding our record: {e}"))?;
        let signature = slot.sign_item(seq, &value);
        let item =
            MutableItem::new_signed_unchecked(slot.public(), signature, &value, seq, slot.salt());
        let node = self.inner.node.clone();
        let put = async move { node.put_mutable(item, None).await };
        match isolated(DHT_PUBLISH_TIMEOUT, put).await {
            Ok(Some(Ok(outcome))) => Ok(outcome.stored_at),
            Ok(Some(Err(error))) => Err(describe_put_error(&error)),
            Ok(None) => Err(format!(
                "no answer within {} s",
                DHT_PUBLISH_TIMEOUT.as_secs()
            )),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The highest sequence number the DHT holds for `key`'s record, whatever its value. The
    /// lookup runs to its end, so mainline's cached closest nodes for our key are fresh after.
    /// After the first publish of a run. A restart forgets the sequence we used last; if the
    /// DHT still holds a record of ours above the one just published (our clock is behind the
    /// last run's), peers that saw that one ignore ours until our clock passes it. So look our
    /// key up and, when it is so, publish again above it. Returns the new sequence if it did.
    pub async fn publish_above_earlier_runs(
        &self,
        key: &SecretKey,
        record: &Record,
    ) -> anyhow::Result<Option<i64>> {
        self.publish_above_earlier_runs_with(key, record, &Privacy::Public)
            .await
    }

    /// `publish_above_earlier_runs` for the slots `privacy` names.
    pub async fn publish_above_earlier_runs_with(
        &self,
        key: &SecretKey,
        record: &Record,
        privacy: &Privacy,
    ) -> anyhow::Result<Option<i64>> {
        let mut newest = None;
        for slot in privacy.slots(key, unix_now()) {
            newest = newest.max(self.newest_sequence(&slot).await);
        }
        {
            let mut last = self.inner.last_seq.lock().await;
            match (newest, *last) {
                (Some(newest), Some(ours)) if newest > ours => *last = Some(newest),
                _ => return Ok(None),
            }
        }
        self.publish_with(key, record, privacy).await.map(Some)
    }

    async fn newest_sequence(&self, slot: &Slot) -> Option<i64> {
        let node = self.inner.node.clone();
        let (key, salt) = (slot.public(), slot.salt());
        let newest = async move {
            let items = node.get_mutable(&key, salt, None);
            items
                .take(MAX_RESOLVE_ITEMS)
                .fold(None, |newest: Option<i64>, item| async move {
                    Some(newest.map_or(item.seq(), |n| n.max(item.seq())))
                })
                .await
        };
        isolated(DHT_RESOLVE_TIMEOUT, newest)
            .await
            .ok()
            .flatten()
            .flatten()
    }
}

struct Inner {
    node: AsyncDht,
    local: SocketAddrV4,
    bootstrap: Vec<SocketAddrV4>,
    status: Arc<Mutex<DhtStatus>>,
    /// The sequence of our last put; the lock also keeps our puts one at a time, since mainline
    /// refuses a second put of one key while the first is in flight.
    last_seq: tokio::sync::Mutex<Option<i64>>,
    refresher: JoinHandle<()>,
}

impl Inner {
    fn status(&self) -> MutexGuard<'_, DhtStatus> {
        lock(&self.status)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The refresher holds a handle to mainline's thread; stopping it lets that thread end.
        self.refresher.abort();
    }
}

/// The newest acceptable record among the items a lookup yields, as `core::lookup` picks it;
/// the picker holds one record, and at most `MAX_RESOLVE_ITEMS` items are looked at.
async fn lookup(
    node: AsyncDht,
    status: Arc<Mutex<DhtStatus>>,
    reader: Reader,
    seen: Option<i64>,
    mut first: Option<oneshot::Sender<(i64, Record)>>,
) -> Option<(i64, Record)> {
    let started = tokio::time::Instant::now();
    // One get per slot (two near a private period's boundary), their items merged.
    let streams = reader.targets().into_iter().map(|(key, salt)| {
        let lookup = node.get_mutable_detailed(&key, salt, seen);
        // Items that fail mainline's checks never reach us; its final tally counts them.
        tokio::spawn(count_bad_signatures(lookup.outcome, Arc::clone(&status)));
        lookup.items
    });
    let mut items = futures::stream::select_all(streams).take(MAX_RESOLVE_ITEMS);
    let mut picker = RecordPicker::with_reader(reader, seen);
    // Ends when the lookup does, or at the picker's deadline, whichever comes first.
    while let Ok(Some(item)) =
        tokio::time::timeout_at(started + picker.deadline(), items.next()).await
    {
        match picker.offer(item.key(), item.seq(), item.value(), started.elapsed()) {
            Offered::Taken { .. } => {
                if let (Some(tx), Some(best)) = (first.take(), picker.best()) {
                    let _ = tx.send(best.clone());
                }
            }
            Offered::Same | Offered::Superseded => {}
            Offered::Older => count(&status, 1, |s| &mut s.records_older),
            Offered::WrongKey => count(&status, 1, |s| &mut s.records_bad_signature),
            Offered::Malformed => count(&status, 1, |s| &mut s.records_malformed),
            Offered::Undecryptable => count(&status, 1, |s| &mut s.records_undecryptable),
            Offered::Forged => count(&status, 1, |s| &mut s.records_forged),
            Offered::WrongPeriod => count(&status, 1, |s| &mut s.records_wrong_period),
            Offered::Replayed => count(&status, 1, |s| &mut s.records_replayed),
        }
    }
    picker.finish()
}

async fn count_bad_signatures(outcome: GetMutableOutcomeReceiver, status: Arc<Mutex<DhtStatus>>) {
    if let Ok(outcome) = tokio::time::timeout(DHT_RESOLVE_TIMEOUT, outcome.recv()).await {
        if outcome.invalid_values > 0 {
            count(&status, u64::from(outcome.invalid_values), |s| {
                &mut s.records_bad_signature
            });
        }
    }
}

/// Adds `n` to a refusal counter and to their sum.
fn count(status: &Mutex<DhtStatus>, n: u64, counter: impl FnOnce(&mut DhtStatus) -> &mut u64) {
    let mut status = lock(status);
    let counter = counter(&mut status);
    *counter = counter.saturating_add(n);
    status.records_ignored = status.records_ignored.saturating_add(n);
}

/// Runs `work` in its own task for at most `limit`: `Ok(None)` when time ran out, an error
/// when the task panicked (mainline's way of saying its thread has stopped).
async fn isolated<T: Send + 'static>(
    limit: Duration,
    work: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<Option<T>> {
    let mut task = tokio::spawn(work);
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(value)) => Ok(Some(value)),
        Ok(Err(_)) => Err(anyhow::anyhow!("the DHT node stopped unexpectedly")),
        Err(_) => {
            task.abort();
            Ok(None)
        }
    }
}

/// Binds `bind` once to learn whether it can be bound (and, for port 0, which port is free),
/// then lets go so mainline can bind it: mainline cannot take a socket we opened.
fn reserve(bind: SocketAddrV4) -> anyhow::Result<SocketAddrV4> {
    let socket = UdpSocket::bind(bind).map_err(|e| bind_error(bind, e))?;
    match socket.local_addr() {
        Ok(SocketAddr::V4(local)) => Ok(local),
        Ok(other) => anyhow::bail!("the DHT socket bound to {other}, expected an IPv4 address"),
        Err(e) => Err(e).with_context(|| format!("reading the address of the DHT socket {bind}")),
    }
}

fn bind_error(bind: SocketAddrV4, error: std::io::Error) -> anyhow::Error {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "DHT UDP port {} is already in use on {}; choose another port, or 0 for any free one",
            bind.port(),
            bind.ip()
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "cannot bind the DHT socket to {bind}: {} is not an address of this host",
            bind.ip()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "binding the DHT socket to {bind}: permission denied (ports below 1024 need root)"
        ),
        _ => anyhow::anyhow!("binding the DHT socket to {bind}: {error}"),
    }
}

/// Whether `node` is this node itself, bound to `local`. Bound to every address, its other
/// addresses are not known here; loopback is the one a shared list would name.
fn is_own_address(node: SocketAddrV4, local: SocketAddrV4) -> bool {
    node.port() == local.port()
        && (node.ip() == local.ip()
            || (local.ip().is_unspecified()
                && (node.ip().is_loopback() || node.ip().is_unspecified())))
}

/// The IPv4 addresses of the bootstrap nodes, and what went wrong if some did not resolve.
/// Host names resolve concurrently, in tokio's blocking pool, under one time limit.
/// Resolves bootstrap nodes given as `HOST:PORT` or `IPV4:PORT`: the IPv4 addresses found, and
/// a line saying which nodes gave none, if any.
pub async fn resolve_bootstrap(nodes: &[String]) -> (Vec<SocketAddrV4>, Option<String>) {
    let lookups = nodes.iter().map(|node| async move {
        if let Ok(address) = node.parse::<SocketAddr>() {
            return Ok(vec![address]);
        }
        match tokio::time::timeout(DHT_BOOTSTRAP_DNS_TIMEOUT, tokio::net::lookup_host(node)).await {
            Ok(Ok(found)) => Ok(found.collect::<Vec<_>>()),
            Ok(Err(e)) => Err(format!("{node}: {e}")),
            Err(_) => Err(format!("{node}: no answer from the resolver")),
        }
    });
    let mut addresses = Vec::new();
    let mut failures = Vec::new();
    for (node, result) in nodes.iter().zip(futures::future::join_all(lookups).await) {
        match result {
            Ok(found) => {
                let before = addresses.len();
                addresses.extend(found.into_iter().filter_map(|a| match a {
                    SocketAddr::V4(v4) => Some(v4),
                    SocketAddr::V6(_) => None,
                }));
                if addresses.len() == before {
                    failures.push(format!("{node}: no IPv4 address (the DHT runs over IPv4)"));
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    let error = (!failures.is_empty()).then(|| {
        format!(
            "{} of {} bootstrap nodes unusable: {}",
            failures.len(),
            nodes.len(),
            failures.join("; ")
        )
    });
    (addresses, error)
}

fn describe_put_error(error: &PutMutableError) -> String {
    match error {
        PutMutableError::Query(PutQueryError::NoClosestNodes) => {
            "no DHT node to store it at: not bootstrapped (are the bootstrap nodes reachable?)"
                .to_string()
        }
        PutMutableError::Query(PutQueryError::Timeout) => {
            // mainline also says this when every node refused our write token.
            "no DHT node stored it (no answer, or our write tokens were refused)".to_string()
        }
        PutMutableError::Query(PutQueryError::ErrorResponse(e)) => {
            format!("DHT nodes refused it: {} {}", e.code, e.description)
        }
        PutMutableError::Concurrency(ConcurrencyError::NotMostRecent) => {
            "DHT nodes hold a newer record of ours (is this key in use elsewhere?)".to_string()
        }
        PutMutableError::Concurrency(e) => e.to_string(),
    }
}

fn lock(status: &Mutex<DhtStatus>) -> MutexGuard<'_, DhtStatus> {
    // Counters stay meaningful even if a holder panicked; never propagate the poison.
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh random nonce for a sealed record.
fn random_nonce() -> [u8; NONCE_BYTES] {
    use rand_core::RngCore as _;
    let mut nonce = [0u8; NONCE_BYTES];
    rand_core::OsRng.fill_bytes(&mut nonce);
    nonce
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    #[test]
    fn own_address_is_recognised() {
        let any = v4("0.0.0.0:6881");
        assert!(is_own_address(v4("127.0.0.1:6881"), any));
        assert!(is_own_address(v4("0.0.0.0:6881"), any));
        assert!(!is_own_address(v4("127.0.0.1:6882"), any));
        assert!(!is_own_address(v4("198.18.0.254:6881"), any));
        let one = v4("198.18.0.254:6881");
        assert!(is_own_address(one, one));
        assert!(!is_own_address(v4("198.18.0.1:6881"), one));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bootstrap_literals_resolve_without_dns() {
        let nodes = ["127.0.0.1:1".to_string(), "[::1]:2".to_string()];
        let (found, error) = resolve_bootstrap(&nodes).await;
        assert_eq!(found, [v4("127.0.0.1:1")]);
        let error = error.unwrap();
        assert!(
            error.contains("1 of 2") && error.contains("[::1]:2"),
            "{error}"
        );
        assert_eq!(resolve_bootstrap(&[]).await, (vec![], None));
    }
}
