//! Support for tests/dht.rs: a fake DHT node that answers every request with one BEP 44 item, as
//! a node that stores it would, so a test decides exactly what a lookup is told, and when; and
//! (in `nodes`) starting and asking real nodes on loopback.

mod nodes;
pub use nodes::*;

use dhtun::core::keys::SecretKey;
use dhtun::core::record::{Record, RECORD_SALT};
use mainline::MutableItem;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The BEP 44 item a fake node serves: key `k`, signature `sig`, value `v`, sequence `seq`.
pub struct Item {
    pub key: [u8; 32],
    pub signature: [u8; 64],
    pub value: Vec<u8>,
    pub seq: i64,
}

/// An hour in record sequence numbers (microseconds).
pub const HOUR: i64 = 3_600_000_000;

impl Item {
    /// The item `key` signs for `record` at `seq`, as a node storing it serves it.
    pub fn signed(key: &SecretKey, record: &Record, seq: i64) -> Self {
        let value = record.encode().unwrap();
        let item = MutableItem::new(key.signing_key(), &value, seq, Some(RECORD_SALT));
        Self {
            key: *key.public_key().ed25519_bytes(),
            signature: *item.signature(),
            value,
            seq,
        }
    }
}

/// A fake DHT node on loopback that answers every request, whatever it asks, with its item,
/// each answer `delay` after the request came.
pub struct FakeNode {
    pub address: SocketAddr,
    gets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FakeNode {
    /// Starts a node with the 20-byte node id `id`. Nodes of one test need distinct ids.
    pub fn start(item: Item, id: [u8; 20], delay: Duration) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let gets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopping) = (Arc::clone(&gets), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut due: VecDeque<(Instant, Vec<u8>, SocketAddr)> = VecDeque::new();
            while !stopping.load(Ordering::Relaxed) {
                while due.front().is_some_and(|(at, _, _)| *at <= Instant::now()) {
                    if let Some((_, answer, to)) = due.pop_front() {
                        let _ = socket.send_to(&answer, to);
                    }
                }
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Some(tid) = transaction_id(&buf[..len]) else {
                    continue;
                };
                if buf[..len].windows(8).any(|w| w == b"1:q3:get") {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                due.push_back((Instant::now() + delay, answer(&item, &id, &tid), from));
            }
        });
        Self {
            address,
            gets,
            stop,
        }
    }

    /// Whether it was asked for an item (a BEP 44 `get`).
    pub fn asked(&self) -> bool {
        self.gets.load(Ordering::Relaxed) > 0
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A child process that is killed when the test ends, passed or failed.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bencoded KRPC response carrying `item`, keys in sorted order.
fn answer(item: &Item, id: &[u8; 20], tid: &[u8; 4]) -> Vec<u8> {
    let mut out = b"d1:rd2:id20:".to_vec();
    out.extend_from_slice(id);
    out.extend_from_slice(b"1:k32:");
    out.extend_from_slice(&item.key);
    out.extend_from_slice(format!("3:seqi{}e3:sig64:", item.seq).as_bytes());
    out.extend_from_slice(&item.signature);
    out.extend_from_slice(b"5:token4:fake");
    out.extend_from_slice(format!("1:v{}:", item.value.len()).as_bytes());
    out.extend_from_slice(&item.value);
    out.extend_from_slice(b"e1:t4:");
    out.extend_from_slice(tid);
    out.extend_from_slice(b"1:y1:re");
    out
}

/// The 4-byte transaction id of a KRPC message mainline sent (`1:t4:` and four bytes).
fn transaction_id(message: &[u8]) -> Option<[u8; 4]> {
    let at = message.windows(5).position(|w| w == b"1:t4:")? + 5;
    message.get(at..at + 4)?.try_into().ok()
}

pub fn unix_micros() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_micros()).unwrap()
}

pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
