//! Helpers of tests/discovery.rs: the hub's bootstrap address, starting a daemon and timing its
//! first ping, a UDP socket served from a thread inside a namespace, and a lying DHT node that
//! answers the get of one record with a forgery, in just enough bencode.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{in_netns, try_run_timeout, Lab, Node, DHT_PORT, HUB_ADDR};

/// The bootstrap list of every daemon: the hub's `dhtun dht-node`.
pub fn hub_node() -> String {
    format!("{HUB_ADDR}:{DHT_PORT}")
}

/// Start `me`'s daemon with a DHT config listing `peers`, and ping `target`'s overlay IPv4
/// address from `me`'s namespace until the first echo reply, for at most 10 s. Returns the time
/// from spawning `dhtun up` to that reply, and how many ping runs it took.
pub fn start_and_ping(
    lab: &mut Lab,
    me: &Node,
    peers: &[(&Node, &[&str])],
    target: &Node,
) -> (Duration, u32) {
    let text = lab.dht_config_text(me, peers, &[&hub_node()]);
    start_with_config_and_ping(lab, me, &text, target)
}

/// `start_and_ping` with the config `text` (e.g. a DHT config with more `[dht]` keys).
pub fn start_with_config_and_ping(
    lab: &mut Lab,
    me: &Node,
    text: &str,
    target: &Node,
) -> (Duration, u32) {
    let config = lab.write_file(&format!("{}.toml", me.iface), text);
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    lab.start_daemon(&me.ns, &me.iface, &config);
    let mut tries = 0u32;
    let mut last = String::new();
    loop {
        if started.elapsed() >= limit {
            lab.fail(format!(
                "no echo reply from {} within {limit:?} of `dhtun up` of {} ({tries} pings): \
                 {last}",
                target.v4, me.iface
            ));
        }
        if let Some(st) = lab.daemon_exited(&me.iface) {
            lab.fail(format!(
                "{}'s daemon exited with {st} during start-up",
                me.iface
            ));
        }
        tries += 1;
        // One echo every 20 ms until the first reply, for at most 2 s; before the interface
        // and its route exist, ping fails at once and the loop starts it again.
        let out = try_run_timeout(
            Command::new("ip").args([
                "netns", "exec", &me.ns, "ping", "-n", "-q", "-c", "1", "-i", "0.02", "-w", "2",
                &target.v4,
            ]),
            Duration::from_secs(5),
        );
        match out {
            Ok(o) if o.status.success() => return (started.elapsed(), tries),
            Ok(o) => last = crate::common::describe(&o),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ----- A UDP socket served from a thread inside a namespace -----

/// A UDP socket bound in a namespace, served by a thread until dropped: every datagram is
/// counted and handed to a handler, whose answer (if any) is sent back to the sender.
pub struct UdpService {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl UdpService {
    pub fn start(
        ns: &str,
        bind: SocketAddr,
        mut handler: impl FnMut(&[u8], SocketAddr) -> Option<Vec<u8>> + Send + 'static,
    ) -> Result<UdpService, String> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&received), Arc::clone(&stop));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = in_netns(ns, move || {
            let socket = match UdpSocket::bind(bind) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {bind}: {e}")));
                    return Ok(());
                }
            };
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            let _ = ready_tx.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                if let Some(answer) = handler(&buf[..len], from) {
                    let _ = socket.send_to(&answer, from);
                }
            }
            Ok(())
        });
        let mut service = UdpService {
            received,
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(service),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let err = service
                    .thread
                    .take()
                    .map(|t| format!("{:?}", t.join()))
                    .unwrap_or_default();
                Err(format!("the socket thread did not start: {err}"))
            }
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ----- The lying DHT node -----

/// What the liar claims is B's record.
pub struct Forgery {
    pub key: [u8; 32],
    pub signature: [u8; 64],
    pub value: Vec<u8>,
    pub seq: i64,
    pub target: [u8; 20],
}

/// The liar's node id (any 20 bytes; it answers from an address no other node uses, so
/// mainline's one-insecure-node-per-IP rule keeps it in routing tables).
const LIAR_ID: [u8; 20] = *b"dhtun-test-liar-node";

/// The answer to one KRPC query: to a `get` of B's record, the forgery; to any other `get`, "no
/// values" with a token; to `find_node`, no nodes; to anything else, a bare id (a ping answer).
/// Answers only well-formed queries; counts the gets of B's record in `asked`.
pub fn liar_answer(datagram: &[u8], forgery: &Forgery, asked: &AtomicU64) -> Option<Vec<u8>> {
    let Bencode::Dict(query) = Bencode::decode(datagram)? else {
        return None;
    };
    if query.get(&b"y"[..])?.bytes()? != b"q" {
        return None;
    }
    let tid = query.get(&b"t"[..])?.bytes()?.to_vec();
    let method = query.get(&b"q"[..])?.bytes()?;
    let mut r = BTreeMap::new();
    r.insert(b"id".to_vec(), Bencode::Bytes(LIAR_ID.to_vec()));
    match method {
        b"get" => {
            let Bencode::Dict(args) = query.get(&b"a"[..])? else {
                return None;
            };
            let target = args.get(&b"target"[..])?.bytes()?;
            r.insert(b"token".to_vec(), Bencode::Bytes(b"liar".to_vec()));
            if target == forgery.target {
                asked.fetch_add(1, Ordering::Relaxed);
                r.insert(b"k".to_vec(), Bencode::Bytes(forgery.key.to_vec()));
                r.insert(b"seq".to_vec(), Bencode::Int(forgery.seq));
                r.insert(b"sig".to_vec(), Bencode::Bytes(forgery.signature.to_vec()));
                r.insert(b"v".to_vec(), Bencode::Bytes(forgery.value.clone()));
            }
        }
        b"find_node" => {
            r.insert(b"nodes".to_vec(), Bencode::Bytes(Vec::new()));
        }
        _ => {}
    }
    let mut answer = BTreeMap::new();
    answer.insert(b"r".to_vec(), Bencode::Dict(r));
    answer.insert(b"t".to_vec(), Bencode::Bytes(tid));
    answer.insert(b"y".to_vec(), Bencode::Bytes(b"r".to_vec()));
    Some(Bencode::Dict(answer).encode())
}

/// Just enough bencode for KRPC: byte strings, integers, lists and dictionaries (keys sorted, as
/// a BTreeMap keeps them, which is what bencode requires).
#[derive(Debug, Clone, PartialEq)]
enum Bencode {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bencode>),
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Bencode::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bencode::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    Bencode::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The value that makes up all of `input`, or None for anything malformed.
    fn decode(input: &[u8]) -> Option<Bencode> {
        let (value, rest) = Bencode::parse(input, 0)?;
        rest.is_empty().then_some(value)
    }

    fn parse(input: &[u8], depth: usize) -> Option<(Bencode, &[u8])> {
        if depth > 16 {
            return None;
        }
        match *input.first()? {
            b'i' => {
                let end = input.iter().position(|&c| c == b'e')?;
                let n = std::str::from_utf8(&input[1..end]).ok()?.parse().ok()?;
                Some((Bencode::Int(n), &input[end + 1..]))
            }
            b'l' => {
                let mut rest = &input[1..];
                let mut items = Vec::new();
                while *rest.first()? != b'e' {
                    let (item, r) = Bencode::parse(rest, depth + 1)?;
                    items.push(item);
                    rest = r;
                }
                Some((Bencode::List(items), &rest[1..]))
            }
            b'd' => {
                let mut rest = &input[1..];
                let mut map = BTreeMap::new();
                while *rest.first()? != b'e' {
                    let (key, r) = Bencode::parse(rest, depth + 1)?;
                    let (value, r) = Bencode::parse(r, depth + 1)?;
                    map.insert(key.bytes()?.to_vec(), value);
                    rest = r;
                }
                Some((Bencode::Dict(map), &rest[1..]))
            }
            b'0'..=b'9' => {
                let colon = input.iter().position(|&c| c == b':')?;
                let len: usize = std::str::from_utf8(&input[..colon]).ok()?.parse().ok()?;
                let start = colon + 1;
                let bytes = input.get(start..start.checked_add(len)?)?;
                Some((Bencode::Bytes(bytes.to_vec()), &input[start + len..]))
            }
            _ => None,
        }
    }
}

pub fn unix_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_micros()).expect("microseconds fit in i64")
}

#[test]
fn bencode_round_trips_a_krpc_message() {
    let mut a = BTreeMap::new();
    a.insert(b"id".to_vec(), Bencode::Bytes(vec![7; 20]));
    a.insert(b"target".to_vec(), Bencode::Bytes(vec![9; 20]));
    let mut m = BTreeMap::new();
    m.insert(b"a".to_vec(), Bencode::Dict(a));
    m.insert(b"q".to_vec(), Bencode::Bytes(b"get".to_vec()));
    m.insert(b"t".to_vec(), Bencode::Bytes(vec![1, 2]));
    m.insert(
        b"x".to_vec(),
        Bencode::List(vec![Bencode::Int(-3), Bencode::Int(40)]),
    );
    m.insert(b"y".to_vec(), Bencode::Bytes(b"q".to_vec()));
    let msg = Bencode::Dict(m);
    let bytes = msg.encode();
    assert!(bytes.starts_with(b"d1:ad2:id20:"), "{bytes:?}");
    assert_eq!(Bencode::decode(&bytes), Some(msg));
    for bad in [&b"d1:a"[..], b"i12", b"5:abc", b"d1:ai1ee1:x", b"x"] {
        assert_eq!(Bencode::decode(bad), None, "{bad:?}");
    }
}
