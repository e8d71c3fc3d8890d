//! A whole device fed random and mutated datagrams: every drop counted, and answers only to
//! what is authentic.

use dhtun::core::device::{Device, DeviceConfig, NetworkAction, TunAction};
use dhtun::core::keys::PresharedKey;
use dhtun::core::limits::ring_slot_bytes;
use dhtun::core::packet;
use dhtun::core::peer::PeerConfig;
use dhtun::core::stats::DropReason;
use dhtun::core::wire::{self, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_MIN_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;

use crate::handshake::{fix_mac1, key, mac1_ok};
use crate::{flip, MTU};

fn device(own: u8, other: u8, allowed: &str, endpoint: &str) -> Device {
    Device::new(DeviceConfig {
        secret_key: key(own),
        mtu: MTU,
        peers: vec![PeerConfig {
            public_key: key(other).public_key(),
            preshared_key: PresharedKey::default(),
            allowed_ips: vec![allowed.parse().unwrap()],
            endpoint: Some(endpoint.parse().unwrap()),
            persistent_keepalive: None,
            relay: false,
        }],
        wall_clock_at_zero: Duration::from_secs(1_700_000_000),
        rng_seed: [own; 32],
        serve_relay: false,
        pacing: true,
    })
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> (Vec<u8>, usize) {
    let total = 20 + payload.len();
    let mut p = vec![0u8; ring_slot_bytes(MTU)];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..total].copy_from_slice(payload);
    (p, total)
}

#[test]
fn device_counts_every_drop_and_answers_only_what_is_authentic() {
    let mut rng = StdRng::seed_from_u64(0x4445_5649);
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    let mut a = device(1, 2, "100.64.0.2/32", "198.18.0.2:51820");
    let mut b = device(2, 1, "100.64.0.1/32", "198.18.0.1:51820");
    let b_key = key(2).public_key();
    let now = Duration::from_secs(1);
    let mut out = vec![0u8; ring_slot_bytes(MTU)];
    let mut reply = vec![0u8; ring_slot_bytes(MTU)];

    // A real handshake, so real messages exist to mutate.
    let (mut first, len) = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"first");
    assert_eq!(
        a.handle_tun_packet(&mut first, len, now, &mut out),
        TunAction::Staged
    );
    let t = a.poll_transmit(now, &mut out).unwrap();
    let initiation = out[..t.len].to_vec();
    let NetworkAction::WriteToNetwork { len, .. } =
        b.handle_datagram(a_addr, &initiation, now, &mut reply)
    else {
        panic!("B did not answer the initiation");
    };
    assert_eq!(
        a.handle_datagram(b_addr, &reply[..len], now, &mut out),
        NetworkAction::Consumed
    );
    let mut authentic = Vec::new();
    while let Some(t) = a.poll_transmit(now, &mut out) {
        authentic.push(out[..t.len].to_vec());
    }
    for i in 0..20u8 {
        let (mut p, len) = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], &[i; 40]);
        let TunAction::WriteToNetwork { len, .. } = a.handle_tun_packet(&mut p, len, now, &mut out)
        else {
            panic!("A could not send on its session");
        };
        authentic.push(out[..len].to_vec());
    }
    let mut delivered = std::collections::HashSet::new();

    for i in 0..10_000 {
        let datagram: Vec<u8> = match i % 4 {
            0 => {
                let len = rng.gen_range(0..300);
                (0..len).map(|_| rng.gen()).collect()
            }
            1 => {
                // Our own kinds of message, random inside; some initiations with a valid mac1.
                let kind = rng.gen_range(1..=4u8);
                let len = match kind {
                    1 => INITIATION_LEN,
                    2 => RESPONSE_LEN,
                    3 => COOKIE_REPLY_LEN,
                    _ => rng.gen_range(TRANSPORT_MIN_LEN..200),
                };
                let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                d[..4].copy_from_slice(&[kind, 0, 0, 0]);
                if kind == 1 && rng.gen_bool(0.1) {
                    fix_mac1(&b_key, &mut d, wire::initiation_layout()[1].start);
                }
                d
            }
            2 => {
                let mut d = authentic[rng.gen_range(0..authentic.len())].clone();
                flip(&mut rng, &mut d);
                d
            }
            _ => {
                // Authentic datagrams, each accepted at most once, then replays.
                authentic[rng.gen_range(0..authentic.len())].clone()
            }
        };
        let before = b.drops().iter().map(|(_, n)| n).sum::<u64>();
        let action = b.handle_datagram(a_addr, &datagram, now, &mut out);
        let after = b.drops().iter().map(|(_, n)| n).sum::<u64>();
        let valid_initiation = datagram.len() == INITIATION_LEN
            && datagram[..4] == [1, 0, 0, 0]
            && mac1_ok(&b_key, &datagram, wire::initiation_layout()[1].start);
        match action {
            NetworkAction::Drop(reason) => {
                assert_eq!(after, before + 1, "Drop({reason:?}) not counted once");
            }
            NetworkAction::WriteToNetwork { to, .. } => {
                assert!(valid_initiation, "answered garbage");
                assert_eq!(to, a_addr);
            }
            NetworkAction::WriteToTun { len } => {
                assert!(authentic.contains(&datagram), "delivered a forgery");
                assert!(delivered.insert(datagram.clone()), "delivered a replay");
                assert_eq!(packet::parse(&out[..len]).unwrap().total_len, len);
            }
            NetworkAction::Consumed => {
                assert!(authentic.contains(&datagram) || valid_initiation);
                assert!(delivered.insert(datagram.clone()), "consumed a replay");
            }
        }
        while b.poll_transmit(now, &mut reply).is_some() {}
    }
    assert!(
        delivered.len() >= 10,
        "too few authentic datagrams got through"
    );
    assert!(b.drops().get(DropReason::Replay) > 0);
}
