//! Small valid inputs for every target, made with dhtun's own functions: the seed corpus
//! (`cargo run --example gen_corpus` writes them under `corpus/<target>/seed-*`).

use crate::device::{self, ip_packet, A_ADDR, B_ADDR, MTU};
use crate::handshake::keys;
use dhtun::core::checksum;
use dhtun::core::cookie::CookieMaker;
use dhtun::core::device::{NetworkAction, TunAction};
use dhtun::core::handshake::{initiate, receive_initiation, tai64n};
use dhtun::core::keys::{PresharedKey, SecretKey};
use dhtun::core::limits::ring_slot_bytes;
use dhtun::core::offload::{VnetHeader, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use dhtun::core::record::Record;
use dhtun::core::wire::{self, Message, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One seed: the target it is for, a name, the bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// An initiation from the peer (seed 2) to us (seed 1).
pub fn initiation() -> [u8; INITIATION_LEN] {
    let k = keys();
    let mut out = [0u8; INITIATION_LEN];
    initiate(
        &k.peer,
        &k.local.public_key(),
        &PresharedKey::default(),
        0x1111,
        tai64n(Duration::from_secs(1_700_000_000)),
        [5; 32],
        &mut out,
    )
    .expect("an initiation between valid keys");
    out
}

/// The peer's response to an initiation of ours.
pub fn response() -> [u8; RESPONSE_LEN] {
    let k = keys();
    let mut init = [0u8; INITIATION_LEN];
    initiate(
        &k.local,
        &k.peer.public_key(),
        &PresharedKey::default(),
        0x2222,
        tai64n(Duration::from_secs(1_700_000_000)),
        [6; 32],
        &mut init,
    )
    .expect("an initiation between valid keys");
    let Ok(Message::Initiation(m)) = Message::parse(&init) else {
        panic!("our initiation does not parse");
    };
    let received =
        receive_initiation(&k.peer, &k.peer_mac1, m, [7; 32]).expect("the peer accepts it");
    let mut out = [0u8; RESPONSE_LEN];
    received
        .respond(
            &k.local.public_key(),
            &PresharedKey::default(),
            0x3333,
            &mut out,
        )
        .expect("the peer answers");
    out
}

/// A cookie reply from us under load to the peer's initiation.
pub fn cookie_reply() -> [u8; COOKIE_REPLY_LEN] {
    let k = keys();
    let init = initiation();
    let Ok(Message::Initiation(m)) = Message::parse(&init) else {
        panic!("the initiation does not parse");
    };
    let maker = CookieMaker::new(&k.local.public_key(), [8; 32], Duration::ZERO);
    let mut out = [0u8; COOKIE_REPLY_LEN];
    maker.write_reply(
        A_ADDR.parse().unwrap(),
        m.sender(),
        m.mac1(),
        [9; 24],
        &mut out,
    );
    out
}

/// A transport datagram carrying a small IPv4 packet from A to B, after a real handshake.
pub fn transport() -> Vec<u8> {
    let mut a = device::device(1);
    let mut b = device::device(2);
    let now = Duration::from_secs(1);
    let a_addr: SocketAddr = A_ADDR.parse().unwrap();
    let b_addr: SocketAddr = B_ADDR.parse().unwrap();
    let (mut packet, len) = ip_packet(
        "100.64.0.1".parse().unwrap(),
        "100.64.0.2".parse().unwrap(),
        b"hello",
    );
    let mut out = vec![0u8; ring_slot_bytes(MTU)];
    let mut reply = vec![0u8; ring_slot_bytes(MTU)];
    assert_eq!(
        a.handle_tun_packet(&mut packet, len, now, &mut out),
        TunAction::Staged
    );
    let init = a.poll_transmit(now, &mut out).expect("an initiation");
    let NetworkAction::WriteToNetwork { len, .. } =
        b.handle_datagram(a_addr, &out[..init.len], now, &mut reply)
    else {
        panic!("B did not answer");
    };
    assert_eq!(
        a.handle_datagram(b_addr, &reply[..len], now, &mut out),
        NetworkAction::Consumed
    );
    let data = a.poll_transmit(now, &mut out).expect("the staged packet");
    out[..data.len].to_vec()
}

fn handshake_seeds() -> Vec<Seed> {
    let seed = |name, bytes| Seed {
        target: "handshake",
        name,
        bytes,
    };
    let mut raw_init = vec![0, 0x07, 0x05];
    raw_init.extend_from_slice(&initiation());
    let mut raw_resp = vec![1, 0x0f];
    raw_resp.extend_from_slice(&0x2222u32.to_le_bytes());
    raw_resp.push(6);
    raw_resp.extend_from_slice(&response());
    // Mode 2/3 programs: flags, indexes, time, seeds, then mutations (count, at, xor).
    let mut intact_init = vec![2, 0x00];
    intact_init.extend_from_slice(&7u32.to_le_bytes());
    intact_init.extend_from_slice(&1_700_000_000u64.to_le_bytes());
    intact_init.extend_from_slice(&[3, 0, 4]);
    let mut tampered_init = intact_init.clone();
    tampered_init[1] = 0x30;
    tampered_init.truncate(tampered_init.len() - 1);
    tampered_init.extend_from_slice(&[1, 40, 0, 0x80, 4]);
    let mut intact_resp = vec![3, 0x00];
    intact_resp.extend_from_slice(&9u32.to_le_bytes());
    intact_resp.extend_from_slice(&10u32.to_le_bytes());
    intact_resp.extend_from_slice(&[1, 2, 0]);
    let mut tampered_resp = intact_resp.clone();
    tampered_resp.truncate(tampered_resp.len() - 1);
    tampered_resp.extend_from_slice(&[2, 20, 0, 1, 70, 0, 2]);
    vec![
        seed("raw-initiation", raw_init),
        seed("raw-response", raw_resp),
        seed("intact-initiation", intact_init),
        seed("tampered-initiation", tampered_init),
        seed("intact-response", intact_resp),
        seed("tampered-response", tampered_resp),
    ]
}

/// Device programs: op = action << 1 | side (0: B acts with A as its peer, 1: A acts).
fn device_seeds() -> Vec<Seed> {
    const B: u8 = 0;
    const A: u8 = 1;
    let op = |action: u8, side: u8| action << 1 | side;
    let send = |side: u8, payload: &[u8], v6: bool| {
        let mut p = vec![op(2, side)];
        p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        p.extend_from_slice(payload);
        p.push(u8::from(v6));
        p
    };
    // Deliver the oldest datagram in flight, unchanged, from the real address.
    let deliver = |side: u8| vec![op(3, side), 2, 0];
    let wait = |seconds: u16| {
        let mut p = vec![op(5, B)];
        p.extend_from_slice(&seconds.to_le_bytes());
        p.push(2);
        p
    };
    let mut handshake_and_data = Vec::new();
    handshake_and_data.extend(send(A, b"ping", false));
    handshake_and_data.extend(deliver(B)); // initiation to B
    handshake_and_data.extend(deliver(A)); // response to A
    handshake_and_data.extend(deliver(B)); // data to B
    handshake_and_data.extend(send(B, b"pong", true));
    handshake_and_data.extend(deliver(A));
    handshake_and_data.extend([op(4, B), 0, 0]); // a replay
    handshake_and_data.extend(wait(130)); // past rekey
    handshake_and_data.extend(send(A, b"again", false));
    for _ in 0..4 {
        // A keepalive, the packet, a new initiation: whatever A queued.
        handshake_and_data.extend(deliver(B));
        handshake_and_data.extend(deliver(A));
    }
    let mut garbage = Vec::new();
    garbage.extend([op(0, B), 8, 0]);
    garbage.extend_from_slice(b"garbage!");
    garbage.extend([1, 2]); // shaped as an initiation with a valid mac1, from a stranger
    garbage.extend([op(1, B), 24, 0]);
    garbage.extend_from_slice(&[0x45; 24]);
    garbage.push(0);
    let record = Record::new(
        51820,
        &["198.18.0.1".parse::<IpAddr>().unwrap()],
        Some("203.0.113.7".parse().unwrap()),
    )
    .unwrap()
    .encode()
    .unwrap();
    let mut discovery = vec![op(6, B)];
    discovery.extend_from_slice(&(record.len() as u16).to_le_bytes());
    discovery.extend_from_slice(&record);
    discovery.extend_from_slice(&5u64.to_le_bytes());
    discovery.push(1);
    discovery.extend([op(7, B), 0x0b]);
    discovery.extend(send(B, b"after reload", false));
    discovery.extend(deliver(A));
    // Under load: a flood of initiations with a valid mac1 from many addresses; A's initiation
    // gets a cookie reply, and A's retry, with mac2, gets through another flood.
    let flood = |program: &mut Vec<u8>| {
        for i in 0..110u8 {
            program.extend([op(0, B), 4, 0, 0, 0, 0, 0, 1]); // 4 bytes, shaped as an initiation
            program.extend([2, i, i, 0x1a]); // from 198.18.7.i:(i*257+0x1a00)
        }
    };
    let mut under_load = Vec::new();
    flood(&mut under_load);
    under_load.extend(send(A, b"ping", false));
    under_load.extend(deliver(B)); // A's initiation: answered with a cookie reply
    for _ in 0..11 {
        under_load.extend(deliver(A)); // the 10 cookie replies to strangers, then A's
    }
    under_load.extend([op(5, B), 0x18, 0x15, 0]); // 5.4 s: A retries, with mac2
    flood(&mut under_load);
    under_load.extend(deliver(B)); // A's retry: under load, but mac2 proves A's address
    for _ in 0..11 {
        under_load.extend(deliver(A)); // 10 more cookie replies to strangers, then the response
    }
    under_load.extend(deliver(B)); // A's staged ping
    let seed = |name, bytes| Seed {
        target: "device",
        name,
        bytes,
    };
    vec![
        seed("under-load", under_load),
        seed("handshake-and-data", handshake_and_data),
        seed("garbage", garbage),
        seed("discovery-and-reload", discovery),
    ]
}

/// A TCP or UDP super-packet as the kernel hands it over with TSO/USO, vnet header first.
pub fn super_packet(v6: bool, udp: bool, payload_len: usize, mss: u16) -> Vec<u8> {
    let ip_len = if v6 { 40 } else { 20 };
    let transport = if udp { 8 } else { 20 };
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        ("fd64::1".parse().unwrap(), "fd64::2".parse().unwrap())
    } else {
        ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap())
    };
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let mut body = vec![0u8; transport];
    body[..2].copy_from_slice(&40000u16.to_be_bytes());
    body[2..4].copy_from_slice(&5201u16.to_be_bytes());
    if udp {
        body[4..6].copy_from_slice(&((transport + payload_len) as u16).to_be_bytes());
    } else {
        body[4..8].copy_from_slice(&1000u32.to_be_bytes());
        body[8..12].copy_from_slice(&1u32.to_be_bytes());
        body[12] = 5 << 4;
        body[13] = 0x18; // PSH, ACK
    }
    body.extend_from_slice(&payload);
    let (mut packet, len) = raw_ip(src, dst, if udp { 17 } else { 6 }, &body);
    packet.truncate(len);
    // The kernel leaves the pseudo-header sum in the checksum field (CHECKSUM_PARTIAL).
    let (s, d) = if v6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let pseudo = checksum::pseudo_header(
        &packet[s],
        &packet[d],
        if udp { 17 } else { 6 },
        len - ip_len,
    );
    let at = ip_len + if udp { 6 } else { 16 };
    packet[at..at + 2].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let header = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: match (udp, v6) {
            (true, _) => GSO_UDP_L4,
            (false, true) => GSO_TCPV6,
            (false, false) => GSO_TCPV4,
        },
        hdr_len: (ip_len + transport) as u16,
        gso_size: mss,
        csum_start: ip_len as u16,
        csum_offset: if udp { 6 } else { 16 },
    };
    with_vnet(&header, &packet)
}

/// An IP packet with a given protocol: `ip_packet` with the protocol field set.
fn raw_ip(src: IpAddr, dst: IpAddr, protocol: u8, body: &[u8]) -> (Vec<u8>, usize) {
    let (mut packet, len) = ip_packet(src, dst, body);
    match src {
        IpAddr::V4(_) => {
            packet[9] = protocol;
            packet[10..12].fill(0);
            let sum = checksum::finish(&packet[..20], 0);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        IpAddr::V6(_) => packet[6] = protocol,
    }
    (packet, len)
}

fn with_vnet(header: &VnetHeader, packet: &[u8]) -> Vec<u8> {
    let mut out = [0u8; dhtun::core::offload::VNET_HDR_LEN].to_vec();
    let mut h = [0u8; dhtun::core::offload::VNET_HDR_LEN];
    header.write(&mut h);
    out.copy_from_slice(&h);
    out.extend_from_slice(packet);
    out
}

fn packet_seeds() -> Vec<Seed> {
    let plain = VnetHeader {
        gso_type: GSO_NONE,
        ..VnetHeader::default()
    };
    let (v4, len4) = raw_ip(
        "100.64.0.1".parse().unwrap(),
        "100.64.0.2".parse().unwrap(),
        17,
        b"an ipv4 datagram",
    );
    let (v6, len6) = raw_ip(
        "fd64::1".parse().unwrap(),
        "fd64::2".parse().unwrap(),
        17,
        b"an ipv6 datagram",
    );
    let seed = |name, bytes| Seed {
        target: "packet",
        name,
        bytes,
    };
    vec![
        seed("ipv4", with_vnet(&plain, &v4[..len4])),
        seed("ipv6", with_vnet(&plain, &v6[..len6])),
        seed("tso-ipv4", super_packet(false, false, 1200, 500)),
        seed("tso-ipv6", super_packet(true, false, 1200, 500)),
        seed("uso-ipv4", super_packet(false, true, 700, 300)),
    ]
}

fn record_seeds() -> Vec<Seed> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let full = Record::new(
        51820,
        &[ip("198.18.0.1"), ip("fd00::1"), ip("127.0.0.1")],
        Some(ip("203.0.113.7")),
    )
    .and_then(|r| r.with_reflexive(Some("203.0.113.7:40001".parse().unwrap())))
    .unwrap();
    let bare = Record::new(1, &[], None).unwrap();
    let seed = |name, bytes| Seed {
        target: "record",
        name,
        bytes,
    };
    vec![
        seed("full", full.encode().unwrap()),
        seed("bare", bare.encode().unwrap()),
    ]
}

fn private_record_seeds() -> Vec<Seed> {
    let (peer, keys) = crate::private_record::keys();
    let record = Record::new(51820, &["198.18.0.1".parse().unwrap()], None).unwrap();
    let seq: i64 = 1_700_000_000_000_000;
    let program = |mode: u8, rest: &[u8]| {
        let mut out = vec![mode];
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(rest);
        out
    };
    let sealed = keys.seal(&peer, seq, &record, [3; 24]).unwrap();
    let inner = keys.decrypt(&sealed).unwrap();
    let seed = |name, bytes| Seed {
        target: "private_record",
        name,
        bytes,
    };
    vec![
        // A value as long as a sealed one, sealed by nobody.
        seed("unsealed", program(0, &vec![0x5a; sealed.len()])),
        // The peer's genuine inner part: it opens, and its mutations probe every inner check.
        seed("genuine-inner", program(1, &inner)),
        seed("record", program(2, &record.encode().unwrap())),
    ]
}

fn krpc_seeds() -> Vec<Seed> {
    // As mainline 8 answers a ping; the transaction id is filled in by the target.
    let answer = |ip: &[u8]| {
        let mut out = format!("d2:ip{}:", ip.len()).into_bytes();
        out.extend_from_slice(ip);
        out.extend_from_slice(b"1:rd2:id20:abcdefghijklmnopqrste2:roi0e1:t4:");
        out.extend_from_slice(crate::krpc::TXID_PLACEHOLDER);
        out.extend_from_slice(b"1:v4:RS\x05\x001:y1:re");
        out
    };
    let mut v6 = [0u8; 18];
    v6[0] = 0x20;
    v6[1] = 0x01;
    v6[17] = 80;
    let seed = |name, bytes| Seed {
        target: "krpc",
        name,
        bytes,
    };
    vec![
        seed("answer-v4", answer(&[198, 18, 0, 11, 0x9c, 0x40])),
        seed("answer-v6", answer(&v6)),
        seed("error", b"d1:eli203e9:Bad tokene1:t4:TXID1:y1:ee".to_vec()),
    ]
}

/// A config exercising every section and key, with key material inline.
pub fn full_config() -> String {
    let peer = SecretKey::from_seed([2; 32]).public_key();
    format!(
        "[interface]\nname = \"dhtun0\"\nprivate_key = \"{}\"\n\
         address = [\"100.64.0.1/24\", \"fd64::1/64\"]\nlisten_port = 51820\nmtu = 1420\n\
         ring_slots = 256\nring_bytes = 262144\nring_max_delay_ms = 5\nbatch_size = 128\n\
         receive_buffer_bytes = 98304\nbusy_poll_us = 50\npacing = true\n\n\
         [dht]\nenabled = true\nbootstrap = [\"198.18.0.254:6881\"]\n\
         port = 0\nserver_mode = true\nrequest_timeout_ms = 500\n\n[[peer]]\n\
         public_key = \"{peer}\"\nallowed_ips = [\"100.64.0.2/32\", \"100.65.2.7/24\", \"fd64::2\"]\n\
         endpoint = \"198.18.0.2:51820\"\npreshared_key = \"{}\"\npersistent_keepalive = 25\n",
        crate::config::private_key_base64(),
        "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
    )
}

/// A config whose keys come from files in the config's directory.
pub fn file_config() -> String {
    let peer = SecretKey::from_seed([2; 32]).public_key();
    format!(
        "[interface]\nprivate_key_file = \"private.key\"\naddress = [\"100.64.0.1\"]\n\n\
         [[peer]]\npublic_key = \"{peer}\"\nallowed_ips = [\"100.64.0.2/32\"]\n\
         preshared_key_file = \"peer.psk\"\n\n[[peer]]\n\
         public_key = \"{}\"\nendpoint = \"[fd00::3]:51820\"\n",
        SecretKey::from_seed([3; 32]).public_key()
    )
}

fn config_seeds() -> Vec<Seed> {
    let seed = |name, text: String| Seed {
        target: "config",
        name,
        bytes: text.into_bytes(),
    };
    vec![
        seed("full", full_config()),
        seed("key-files", file_config()),
        seed(
            "bad-line",
            full_config().replace("mtu = 1420", "mtu = 100\ncolour = 3"),
        ),
    ]
}

fn wire_seeds() -> Vec<Seed> {
    let seed = |name, bytes: Vec<u8>| Seed {
        target: "wire",
        name,
        bytes,
    };
    let mut keepalive = vec![0u8; wire::TRANSPORT_MIN_LEN];
    wire::write_transport_header(&mut keepalive, 5, 6).unwrap();
    vec![
        seed("initiation", initiation().to_vec()),
        seed("response", response().to_vec()),
        seed("cookie-reply", cookie_reply().to_vec()),
        seed("transport", transport()),
        seed("keepalive-header", keepalive),
    ]
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds = wire_seeds();
    seeds.extend(handshake_seeds());
    seeds.extend(device_seeds());
    seeds.extend(packet_seeds());
    seeds.extend(record_seeds());
    seeds.extend(private_record_seeds());
    seeds.extend(krpc_seeds());
    seeds.extend(config_seeds());
    seeds
}
