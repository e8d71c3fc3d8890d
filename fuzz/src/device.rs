//! Target `device`: two `Device`s, A and B, each the other's only peer, driven by a program the
//! fuzzer writes: datagrams and TUN packets of its own, honest traffic between the two
//! (delivered, lost, replayed, mutated or re-addressed as it says), time passing with timers,
//! DHT records and live reconfiguration. `poll_transmit` is drained after every step.
//!
//! Checks, besides never panicking:
//! - every datagram or TUN packet answered `Drop(reason)` adds exactly one to the device's
//!   count for that reason, and one to its total;
//! - `WriteToNetwork` answers only an initiation whose mac1 is right for that device (a
//!   handshake response or a cookie reply), goes back to its sender, and is one of our messages;
//! - `WriteToTun` and `Consumed` answer only datagrams the other device really sent (byte for
//!   byte, but for the unauthenticated indexes and macs of a handshake message), or a valid
//!   initiation; the packet written to the TUN device claims exactly its length and comes from
//!   an address the sending peer is allowed;
//! - no transport datagram is accepted twice (anti-replay), and `poll_transmit` ends.

use crate::input::Input;
use crate::mac;
use dhtun::core::device::{Device, DeviceConfig, NetworkAction, TunAction};
use dhtun::core::keys::{PresharedKey, PublicKey, SecretKey};
use dhtun::core::limits::{ring_slot_bytes, EVENT_QUEUE};
use dhtun::core::packet;
use dhtun::core::peer::PeerConfig;
use dhtun::core::record::Record;
use dhtun::core::stats::DropReason;
use dhtun::core::wire::{self, Message};
use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const MTU: usize = 1420;
pub const A_ADDR: &str = "198.18.0.1:51820";
pub const B_ADDR: &str = "198.18.0.2:51820";
/// Steps one input may take, so every input runs in bounded time.
const MAX_STEPS: usize = 256;
/// Datagrams in flight each way; the oldest is lost when more are sent.
const IN_FLIGHT: usize = 32;
/// A drain of `poll_transmit` longer than this never ends.
const MAX_TRANSMITS: usize = 4096;

pub fn peer_config(key: PublicKey, allowed: &[&str], endpoint: Option<&str>) -> PeerConfig {
    PeerConfig {
        public_key: key,
        preshared_key: PresharedKey::default(),
        allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
        endpoint: endpoint.map(|e| e.parse().unwrap()),
        persistent_keepalive: None,
        relay: false,
    }
}

/// Device `own` (seed byte) with `other` as its one peer: A is 1, B is 2.
pub fn device(own: u8) -> Device {
    let other = if own == 1 { 2 } else { 1 };
    let (allowed, endpoint) = if own == 1 {
        (["100.64.0.2/32", "fd64::2/128"], B_ADDR)
    } else {
        (["100.64.0.1/32", "fd64::1/128"], A_ADDR)
    };
    Device::new(DeviceConfig {
        secret_key: SecretKey::from_seed([own; 32]),
        mtu: MTU,
        peers: vec![peer_config(
            SecretKey::from_seed([other; 32]).public_key(),
            &allowed,
            Some(endpoint),
        )],
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        rng_seed: [own; 32],
        serve_relay: false,
        pacing: true,
    })
}

/// An IP packet from `src` to `dst` of the same family carrying `payload`, in a slot-sized
/// buffer (room for the padding the device adds); returns the buffer and the packet's length.
pub fn ip_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; ring_slot_bytes(MTU)];
    let (header, room) = match (src, dst) {
        (IpAddr::V4(..), IpAddr::V4(..)) => (20, MTU - 20),
        _ => (40, MTU - 40),
    };
    let payload = &payload[..payload.len().min(room)];
    let total = header + payload.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf[0] = 0x45;
            buf[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            buf[8] = 64;
            buf[9] = 17;
            buf[12..16].copy_from_slice(&s.octets());
            buf[16..20].copy_from_slice(&d.octets());
        }
        _ => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            buf[0] = 0x60;
            buf[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
            buf[6] = 17;
            buf[7] = 64;
            buf[8..24].copy_from_slice(&v6(src));
            buf[24..40].copy_from_slice(&v6(dst));
        }
    }
    buf[header..total].copy_from_slice(payload);
    (buf, total)
}

/// One device and what the checks remember about it.
struct Side {
    device: Device,
    key: SecretKey,
    address: SocketAddr,
    /// The peer's tunnel addresses.
    peer_sources: [IpAddr; 2],
    /// The peers as the device was last configured.
    peers: Vec<PeerConfig>,
    /// Every datagram this device sent.
    sent: HashSet<Vec<u8>>,
    /// Transport datagrams this device accepted.
    accepted: HashSet<Vec<u8>>,
    /// Datagrams on their way to the other device, with the address they claim to come from.
    outbox: VecDeque<Vec<u8>>,
    /// Datagrams delivered to this device, for replays.
    delivered: VecDeque<Vec<u8>>,
    /// Cookie replies this device sent, and took from its peer.
    cookies_sent: usize,
    cookies_taken: usize,
}

impl Side {
    fn new(own: u8) -> Self {
        let (address, peer_sources) = if own == 1 {
            (A_ADDR, ["100.64.0.2", "fd64::2"])
        } else {
            (B_ADDR, ["100.64.0.1", "fd64::1"])
        };
        Side {
            device: device(own),
            key: SecretKey::from_seed([own; 32]),
            address: address.parse().unwrap(),
            peer_sources: peer_sources.map(|a| a.parse().unwrap()),
            peers: device_peers(own),
            sent: HashSet::new(),
            accepted: HashSet::new(),
            outbox: VecDeque::new(),
            delivered: VecDeque::new(),
            cookies_sent: 0,
            cookies_taken: 0,
        }
    }

    fn queue(&mut self, datagram: Vec<u8>) {
        if self.outbox.len() == IN_FLIGHT {
            self.outbox.pop_front();
        }
        self.sent.insert(authentic_part(&datagram));
        self.outbox.push_back(datagram);
    }

    fn drain(&mut self, now: Duration) {
        let mut out = vec![0u8; ring_slot_bytes(MTU)];
        let mut count = 0;
        while let Some(t) = self.device.poll_transmit(now, &mut out) {
            count += 1;
            assert!(count <= MAX_TRANSMITS, "poll_transmit does not end");
            assert!(t.len <= out.len());
            let datagram = out[..t.len].to_vec();
            assert!(
                Message::parse(&datagram).is_ok(),
                "poll_transmit sent something that is not one of our messages"
            );
            self.queue(datagram);
        }
        let mut events = 0;
        while self.device.poll_event().is_some() {
            events += 1;
            assert!(events <= EVENT_QUEUE, "more events than the queue holds");
        }
    }
}

/// With `DHTUN_FUZZ_TRACE=1`, prints what happens, to debug a failing input.
fn trace(line: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("DHTUN_FUZZ_TRACE").is_some_and(|v| v == "1")) {
        eprintln!("{}", line());
    }
}

/// What of a datagram only its sender can have made: a handshake message's type and Noise
/// bytes (its indexes and macs are not authenticated; anyone can recompute mac1, and mac2
/// is only checked under load), or all of any other message.
fn authentic_part(datagram: &[u8]) -> Vec<u8> {
    let noise = match Message::parse(datagram) {
        Ok(Message::Initiation(_)) => wire::initiation_layout()[0].clone(),
        Ok(Message::Response(_)) => wire::response_layout()[0].clone(),
        _ => return datagram.to_vec(),
    };
    [&datagram[..4], &datagram[noise]].concat()
}

/// Sum of all drop counters.
fn total_drops(device: &Device) -> u64 {
    device.drops().iter().map(|(_, n)| n).sum()
}

fn check_drop(device: &Device, before: &[u64], total_before: u64, reason: DropReason) {
    let index = DropReason::ALL.iter().position(|r| *r == reason).unwrap();
    assert_eq!(
        device.drops().get(reason),
        before[index] + 1,
        "Drop({reason:?}) not counted once"
    );
    assert_eq!(
        total_drops(device),
        total_before + 1,
        "Drop({reason:?}) changed other counters"
    );
}

fn counters(device: &Device) -> Vec<u64> {
    DropReason::ALL
        .iter()
        .map(|r| device.drops().get(*r))
        .collect()
}

/// Delivers `datagram`, claiming to come from `from`, to `to`, and checks the answer. `peer` is
/// the other device, whose sent datagrams are the only authentic ones.
fn deliver(
    to: &mut Side,
    peer: &Side,
    from: SocketAddr,
    datagram: &[u8],
    now: Duration,
) -> NetworkAction {
    let mut out = vec![0u8; ring_slot_bytes(MTU)];
    let before = counters(&to.device);
    let total_before = total_drops(&to.device);
    let action = to.device.handle_datagram(from, datagram, now, &mut out);
    trace(|| {
        format!(
            "{now:?} {} <- {from}: {:02x?}.. ({} B) -> {action:?}",
            to.address,
            &datagram[..datagram.len().min(16)],
            datagram.len()
        )
    });
    let honest = peer.sent.contains(&authentic_part(datagram));
    let parsed = Message::parse(datagram);
    let valid_initiation =
        matches!(parsed, Ok(Message::Initiation(_))) && mac1_valid(&to.key.public_key(), datagram);
    match action {
        NetworkAction::Drop(reason) => check_drop(&to.device, &before, total_before, reason),
        NetworkAction::WriteToNetwork { to: reply_to, len } => {
            assert!(
                valid_initiation,
                "answered a datagram that is no valid initiation"
            );
            assert_eq!(reply_to, from, "answered someone else");
            assert!(len <= out.len());
            match Message::parse(&out[..len]) {
                Ok(Message::Response(_)) => {}
                Ok(Message::CookieReply(_)) => to.cookies_sent += 1,
                other => panic!("answered with {other:?}"),
            }
            to.queue(out[..len].to_vec());
        }
        NetworkAction::WriteToTun { len } => {
            assert!(honest, "wrote a forged datagram to the TUN device");
            assert!(to.accepted.insert(datagram.to_vec()), "accepted a replay");
            assert!(len <= out.len());
            let inner = packet::parse(&out[..len]).expect("wrote a malformed packet");
            assert_eq!(inner.total_len, len);
            let sender = to
                .peers
                .iter()
                .find(|p| p.public_key == peer.key.public_key());
            assert!(
                sender.is_some_and(|p| p.allowed_ips.iter().any(|n| n.contains(inner.source))),
                "wrote a packet from {}, outside the sender's allowed_ips",
                inner.source
            );
        }
        NetworkAction::Consumed => {
            assert!(
                honest || valid_initiation,
                "consumed a datagram nobody sent"
            );
            match parsed {
                Ok(Message::Transport(_)) => {
                    assert!(to.accepted.insert(datagram.to_vec()), "accepted a replay");
                }
                Ok(Message::CookieReply(_)) => to.cookies_taken += 1,
                _ => {}
            }
        }
    }
    if to.delivered.len() == IN_FLIGHT {
        to.delivered.pop_front();
    }
    to.delivered.push_back(datagram.to_vec());
    action
}

fn mac1_valid(receiver: &PublicKey, datagram: &[u8]) -> bool {
    let [_, mac1, _] = wire::initiation_layout();
    datagram.len() >= mac1.end && mac::mac1(receiver, &datagram[..mac1.start])[..] == datagram[mac1]
}

fn tun(side: &mut Side, buf: &mut [u8], len: usize, now: Duration) -> TunAction {
    let mut out = vec![0u8; ring_slot_bytes(MTU)];
    let before = counters(&side.device);
    let total_before = total_drops(&side.device);
    let action = side.device.handle_tun_packet(buf, len, now, &mut out);
    trace(|| format!("{now:?} {} tun ({len} B) -> {action:?}", side.address));
    match action {
        TunAction::Drop(reason) => check_drop(&side.device, &before, total_before, reason),
        TunAction::WriteToNetwork { len, .. } => {
            assert!(len <= out.len());
            assert!(matches!(
                Message::parse(&out[..len]),
                Ok(Message::Transport(_))
            ));
            side.queue(out[..len].to_vec());
        }
        TunAction::Staged => {}
    }
    action
}

/// Addresses a datagram may claim to come from: the real one, a roaming one, an IPv6 one.
fn source(input: &mut Input<'_>, real: SocketAddr) -> SocketAddr {
    match input.byte() % 4 {
        0 | 1 => real,
        2 => SocketAddr::new([198, 18, 7, input.byte()].into(), input.u16()),
        _ => "[fd00::7]:51820".parse().unwrap(),
    }
}

/// Flips bytes of `datagram` as the input says; may give a mutated initiation a correct mac1.
fn mutate(input: &mut Input<'_>, datagram: &mut [u8], receiver: &PublicKey) {
    let count = input.byte() % 4;
    for _ in 0..count {
        let (at, flip) = (usize::from(input.u16()), input.byte() | 1);
        if !datagram.is_empty() {
            let len = datagram.len();
            datagram[at % len] ^= flip;
        }
    }
    if input.bool() {
        let [_, mac1, _] = wire::initiation_layout();
        if datagram.len() == wire::INITIATION_LEN {
            mac::fix_mac1(receiver, datagram, mac1.start);
        }
    }
}

/// What a program made the devices do, for tests that check the seeds reach deep paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Datagrams answered with a packet for the TUN device.
    pub to_tun: usize,
    /// Datagrams answered with a datagram (handshake response or cookie reply).
    pub answered: usize,
    /// Datagrams consumed (a response, a keepalive, a cookie reply).
    pub consumed: usize,
    /// Datagrams and TUN packets dropped.
    pub dropped: usize,
    /// TUN packets encrypted and sent at once.
    pub encrypted: usize,
    /// Initiations answered with a cookie reply (under load), and cookie replies taken.
    pub cookies_sent: usize,
    pub cookies_taken: usize,
}

impl Report {
    fn network(&mut self, action: NetworkAction) {
        match action {
            NetworkAction::WriteToTun { .. } => self.to_tun += 1,
            NetworkAction::WriteToNetwork { .. } => self.answered += 1,
            NetworkAction::Consumed => self.consumed += 1,
            NetworkAction::Drop(_) => self.dropped += 1,
        }
    }

    fn tun(&mut self, action: TunAction) {
        match action {
            TunAction::WriteToNetwork { .. } => self.encrypted += 1,
            TunAction::Drop(_) => self.dropped += 1,
            TunAction::Staged => {}
        }
    }
}

pub fn run(data: &[u8]) {
    execute(data);
}

/// Runs the program `data` and reports what happened.
pub fn execute(data: &[u8]) -> Report {
    mac::check_matches_dhtun();
    let mut report = Report::default();
    let mut input = Input::new(data);
    let mut a = Side::new(1);
    let mut b = Side::new(2);
    let mut now = Duration::from_secs(1);
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let op = input.byte();
        trace(|| {
            format!(
                "op {} on {}",
                (op >> 1) % 8,
                if op & 1 == 0 { "B" } else { "A" }
            )
        });
        // Even ops act on B with A as its peer, odd ones the other way round.
        let (me, other) = if op & 1 == 0 {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        match (op >> 1) % 8 {
            0 => {
                // A datagram of the fuzzer's own, maybe with a valid header and mac1.
                let mut datagram = input.chunk(MTU + 100).to_vec();
                let shape = input.byte();
                if shape & 1 != 0 && datagram.len() >= 4 {
                    let kind = [1, 2, 3, 4][usize::from(shape >> 1) % 4];
                    datagram[..4].copy_from_slice(&[kind, 0, 0, 0]);
                    let size = match kind {
                        1 => wire::INITIATION_LEN,
                        2 => wire::RESPONSE_LEN,
                        3 => wire::COOKIE_REPLY_LEN,
                        _ => datagram.len().max(wire::TRANSPORT_MIN_LEN),
                    };
                    datagram.resize(size, 0);
                    if kind == 1 {
                        let [_, mac1, _] = wire::initiation_layout();
                        mac::fix_mac1(&me.key.public_key(), &mut datagram, mac1.start);
                    }
                }
                let from = source(&mut input, other.address);
                report.network(deliver(me, other, from, &datagram, now));
            }
            1 => {
                // A TUN packet of the fuzzer's own, maybe with a routable IPv4 header.
                let bytes = input.chunk(ring_slot_bytes(MTU));
                let mut buf = vec![0u8; ring_slot_bytes(MTU)];
                buf[..bytes.len()].copy_from_slice(bytes);
                let mut len = bytes.len();
                match input.byte() % 4 {
                    0 if len >= 20 => {
                        // Fuzzer bytes behind a header that routes to the peer.
                        buf[0] = 0x45;
                        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                        if let (_, IpAddr::V4(dst)) = own_and_peer_tunnel(me, false) {
                            buf[16..20].copy_from_slice(&dst.octets());
                        }
                    }
                    1 => len = usize::from(input.u16()) % (buf.len() + 16),
                    _ => {}
                }
                report.tun(tun(me, &mut buf, len, now));
            }
            2 => {
                // Honest traffic: the device sends a packet to its peer.
                let payload = input.chunk(MTU);
                let v6 = input.bool();
                let (src, dst) = own_and_peer_tunnel(me, v6);
                let (mut buf, len) = ip_packet(src, dst, payload);
                report.tun(tun(me, &mut buf, len, now));
            }
            3 => {
                // The network delivers (or loses, or mangles) the oldest datagram to me.
                // Parameters are read first, so a step reads the same bytes in any state.
                let fate = input.byte() % 4;
                let from = source(&mut input, other.address);
                let mut datagram = other.outbox.pop_front().unwrap_or_default();
                if fate == 1 {
                    mutate(&mut input, &mut datagram, &me.key.public_key());
                }
                if fate != 0 && !datagram.is_empty() {
                    report.network(deliver(me, other, from, &datagram, now));
                }
            }
            4 => {
                // A replay of something delivered before.
                let pick = usize::from(input.byte());
                let from = source(&mut input, other.address);
                if !me.delivered.is_empty() {
                    let datagram = me.delivered[pick % me.delivered.len()].clone();
                    report.network(deliver(me, other, from, &datagram, now));
                }
            }
            5 => {
                // Time passes; both devices' timers run.
                let step = u64::from(input.u16());
                now += match input.byte() % 4 {
                    0 => Duration::from_millis(step),
                    1 => Duration::from_millis(step * 10),
                    2 => Duration::from_secs(step),
                    _ => Duration::from_secs(step * 60),
                };
                me.device.handle_timers(now);
                other.device.handle_timers(now);
            }
            6 => {
                // A record from the DHT: decoded from the fuzzer's bytes, for my peer or not.
                let bytes = input.chunk(200);
                let sequence = input.u64() as i64;
                let whose = if input.bool() {
                    other.key.public_key()
                } else {
                    SecretKey::from_seed([9; 32]).public_key()
                };
                let candidates: Vec<SocketAddr> = match Record::decode(bytes) {
                    Ok(record) => record.candidates().collect(),
                    Err(_) => vec![other.address],
                };
                let _ = me.device.next_lookup(now);
                me.device.record_found(&whose, sequence, &candidates, now);
            }
            _ => {
                // A live reload: the peer stays, maybe with other settings, maybe a new peer.
                let flags = input.byte();
                let own = if op & 1 == 0 { 2 } else { 1 };
                let mut fresh = device_peers(own);
                if flags & 1 != 0 {
                    fresh[0].allowed_ips.push("100.65.0.0/16".parse().unwrap());
                }
                if flags & 2 != 0 {
                    fresh[0].persistent_keepalive = Some(Duration::from_secs(25));
                }
                if flags & 4 != 0 {
                    fresh[0].endpoint = None;
                }
                if flags & 8 != 0 {
                    fresh.push(peer_config(
                        SecretKey::from_seed([9; 32]).public_key(),
                        &["100.64.0.9/32"],
                        None,
                    ));
                }
                if flags & 16 != 0 {
                    fresh.reverse();
                }
                me.peers = fresh.clone();
                let _ = me.device.reconfigure(fresh);
            }
        }
        a.drain(now);
        b.drain(now);
    }
    report.cookies_sent = a.cookies_sent + b.cookies_sent;
    report.cookies_taken = a.cookies_taken + b.cookies_taken;
    report
}

/// The peer list a device starts with.
fn device_peers(own: u8) -> Vec<PeerConfig> {
    let other = if own == 1 { 2 } else { 1 };
    let (allowed, endpoint) = if own == 1 {
        (["100.64.0.2/32", "fd64::2/128"], B_ADDR)
    } else {
        (["100.64.0.1/32", "fd64::1/128"], A_ADDR)
    };
    vec![peer_config(
        SecretKey::from_seed([other; 32]).public_key(),
        &allowed,
        Some(endpoint),
    )]
}

/// My tunnel address and my peer's, IPv4 or IPv6.
fn own_and_peer_tunnel(me: &Side, v6: bool) -> (IpAddr, IpAddr) {
    let mine: [IpAddr; 2] = if me.address == A_ADDR.parse::<SocketAddr>().unwrap() {
        ["100.64.0.1".parse().unwrap(), "fd64::1".parse().unwrap()]
    } else {
        ["100.64.0.2".parse().unwrap(), "fd64::2".parse().unwrap()]
    };
    let i = usize::from(v6);
    (mine[i], me.peer_sources[i])
}
