//! Offload tests: split super-packets as the kernel hands them over, check every segment is a
//! valid packet, and check that coalescing the segments again gives back the super-packet.

use super::*;
use rand::{Rng, SeedableRng};

const MSS: usize = 1360;

/// A TCP super-packet as the kernel writes it with TSO: full headers, the transport checksum
/// field holding the folded pseudo-header sum of the whole packet.
fn tcp_super_packet(v6: bool, payload: &[u8], flags: u8) -> (Vec<u8>, VnetHeader) {
    let ip_len = if v6 { 40 } else { 20 };
    let total = ip_len + 20 + payload.len();
    let mut p = vec![0u8; total];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd64::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd64::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        ipv4_header_checksum(&mut p, 20);
    }
    p[ip_len..ip_len + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[ip_len + 2..ip_len + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[ip_len + 4..ip_len + 8].copy_from_slice(&0xfffff000u32.to_be_bytes()); // wraps
    p[ip_len + 8..ip_len + 12].copy_from_slice(&77u32.to_be_bytes());
    p[ip_len + 12] = 5 << 4;
    p[ip_len + TCP_FLAGS] = flags;
    p[ip_len + 20..].copy_from_slice(payload);
    let pseudo = pseudo_sum(&p, v6, PROTO_TCP, total - ip_len);
    write_u16(&mut p, ip_len + TCP_CHECKSUM, checksum::fold(pseudo));
    let header = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (ip_len + 20) as u16,
        gso_size: MSS as u16,
        csum_start: ip_len as u16,
        csum_offset: TCP_CHECKSUM as u16,
    };
    (p, header)
}

fn split_all(packet: &mut [u8], header: &VnetHeader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut segment = vec![0u8; 2048];
    split(packet, header, &mut segment, |s, len| {
        out.push(s[..len].to_vec())
    })
    .unwrap();
    out
}

fn valid(segment: &[u8]) -> bool {
    let v6 = segment[0] >> 4 == 6;
    let ip_len = if v6 { 40 } else { 20 };
    let ip_ok = v6 || checksum::finish(&segment[..20], 0) == 0;
    let transport_len = segment.len() - ip_len;
    let proto = if v6 { segment[6] } else { segment[9] };
    let tcp_ok = checksum::finish(
        &segment[ip_len..],
        pseudo_sum(segment, v6, proto, transport_len),
    ) == 0;
    ip_ok && tcp_ok
}

#[test]
fn tso_split_gives_valid_consecutive_segments() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for v6 in [false, true] {
        let payload: Vec<u8> = (0..MSS * 3 + 100).map(|_| rng.gen()).collect();
        let (mut packet, header) = tcp_super_packet(v6, &payload, TCP_ACK | TCP_PSH | TCP_FIN);
        let segments = split_all(&mut packet, &header);
        assert_eq!(segments.len(), 4);
        let ip_len = if v6 { 40 } else { 20 };
        let mut joined = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            assert!(valid(s), "segment {i} has a bad checksum (v6 {v6})");
            let seq = read_u32(s, ip_len + TCP_SEQ);
            assert_eq!(seq, 0xfffff000u32.wrapping_add((i * MSS) as u32));
            let flags = s[ip_len + TCP_FLAGS];
            let last = i == segments.len() - 1;
            assert_eq!(
                flags & (TCP_PSH | TCP_FIN) != 0,
                last,
                "segment {i} flags {flags:#x}"
            );
            if !v6 {
                assert_eq!(read_u16(s, IPV4_ID), 0x1234 + i as u16);
            }
            joined.extend_from_slice(&s[ip_len + 20..]);
        }
        assert_eq!(joined, payload);
    }
}

#[test]
fn partial_checksum_of_a_single_packet_is_completed() {
    let (mut packet, mut header) = tcp_super_packet(false, b"hello", TCP_ACK);
    header.gso_type = GSO_NONE;
    let segments = split_all(&mut packet, &header);
    assert_eq!(segments.len(), 1);
    assert!(valid(&segments[0]));
}

#[test]
fn coalescing_split_segments_rebuilds_the_super_packet() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for round in 0..200 {
        let v6 = round % 2 == 1;
        let len = rng.gen_range(1..MSS * 40);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let (mut packet, header) = tcp_super_packet(v6, &payload, TCP_ACK | TCP_PSH);
        let original = packet.clone();
        let mut segments = split_all(&mut packet, &header);

        let first = Segment::classify(&segments[0]).expect("a coalescable segment");
        let mut group = Group::start(first, segments[0].len());
        for s in &segments[1..] {
            let next = Segment::classify(s).expect("a coalescable segment");
            assert!(group.try_append(&next, s.len(), options_equal(&segments[0], s, &first)));
        }
        let mut merged = segments[0].clone();
        let vnet = group.finish(&mut merged);
        let headers_len = group.headers_len();
        for s in &segments[1..] {
            merged.extend_from_slice(&s[headers_len..]);
        }
        assert_eq!(merged.len(), group.total_len);
        if segments.len() == 1 {
            assert_eq!(vnet, VnetHeader::default());
            continue;
        }
        assert_eq!(vnet.gso_size as usize, MSS);
        // The merged packet is what the kernel handed us in the first place, up to the IPv4 id
        // and the partial checksum, which the kernel fills in.
        let ip_len = if v6 { 40 } else { 20 };
        assert_eq!(merged[ip_len..], original[ip_len..], "round {round}");
        // And splitting it again gives the same segments.
        let again = split_all(&mut merged, &vnet);
        segments
            .iter_mut()
            .zip(&again)
            .for_each(|(a, b)| assert_eq!(a, b));
    }
}

#[test]
fn segments_that_do_not_continue_are_not_merged() {
    let payload = vec![7u8; MSS * 3];
    let (mut packet, header) = tcp_super_packet(false, &payload, TCP_ACK);
    let segments = split_all(&mut packet, &header);
    let first = Segment::classify(&segments[0]).unwrap();
    let mut group = Group::start(first, segments[0].len());
    // Skipping a segment breaks the sequence.
    let third = Segment::classify(&segments[2]).unwrap();
    assert!(!group.try_append(&third, segments[2].len(), true));
    // A corrupted segment is not even a candidate.
    let mut bad = segments[1].clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(Segment::classify(&bad).is_none());
    // SYN, FIN or RST segments are not candidates either.
    let mut syn = segments[1].clone();
    syn[20 + TCP_FLAGS] = 0x02;
    assert!(Segment::classify(&syn).is_none());
}

#[test]
fn random_headers_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut segment = vec![0u8; 2048];
    for _ in 0..20_000 {
        let len = rng.gen_range(0..400);
        let mut packet: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if len > 0 && rng.gen_bool(0.5) {
            packet[0] = if rng.gen_bool(0.5) { 0x45 } else { 0x60 };
        }
        let header = VnetHeader {
            flags: rng.gen_range(0..2),
            gso_type: [0, 1, 3, 4, 5, 0x81][rng.gen_range(0..6)],
            hdr_len: rng.gen_range(0..120),
            gso_size: rng.gen_range(0..3000),
            csum_start: rng.gen_range(0..100),
            csum_offset: rng.gen_range(0..40),
        };
        let _ = split(&mut packet, &header, &mut segment, |_, _| {});
        let _ = Segment::classify(&packet);
    }
}

/// A UDP super-packet as the kernel writes it with USO.
fn udp_super_packet(v6: bool, payload: &[u8], segment: usize) -> (Vec<u8>, VnetHeader) {
    let ip_len = if v6 { 40 } else { 20 };
    let total = ip_len + 8 + payload.len();
    let mut p = vec![0u8; total];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = PROTO_UDP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd64::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd64::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        ipv4_header_checksum(&mut p, 20);
    }
    p[ip_len..ip_len + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[ip_len + 2..ip_len + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[ip_len + 4..ip_len + 6].copy_from_slice(&((total - ip_len) as u16).to_be_bytes());
    p[ip_len + 8..].copy_from_slice(payload);
    let pseudo = pseudo_sum(&p, v6, PROTO_UDP, total - ip_len);
    write_u16(&mut p, ip_len + UDP_CHECKSUM, checksum::fold(pseudo));
    let header = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: (ip_len + 8) as u16,
        gso_size: segment as u16,
        csum_start: ip_len as u16,
        csum_offset: UDP_CHECKSUM as u16,
    };
    (p, header)
}

#[test]
fn udp_datagrams_coalesce_and_split_back() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    for round in 0..100 {
        let v6 = round % 2 == 0;
        let size = 1364;
        let len = rng.gen_range(1..size * 30);
        let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let (mut packet, header) = udp_super_packet(v6, &payload, size);
        let original = packet.clone();
        let mut segments = split_all(&mut packet, &header);
        for s in &segments {
            assert!(valid(s), "a split UDP datagram has a bad checksum");
        }
        let first = Segment::classify(&segments[0]).expect("a coalescable datagram");
        let mut group = Group::start(first, segments[0].len());
        for s in &segments[1..] {
            let next = Segment::classify(s).expect("a coalescable datagram");
            assert!(group.try_append(&next, s.len(), options_equal(&segments[0], s, &first)));
        }
        let mut merged = segments[0].clone();
        let vnet = group.finish(&mut merged);
        for s in &segments[1..] {
            merged.extend_from_slice(&s[group.headers_len()..]);
        }
        if segments.len() == 1 {
            continue;
        }
        let ip_len = if v6 { 40 } else { 20 };
        let first_difference =
            (ip_len..original.len().max(merged.len())).find(|&i| merged.get(i) != original.get(i));
        assert_eq!(
            first_difference, None,
            "round {round}: merged differs from the original"
        );
        assert_eq!(vnet.gso_type, GSO_UDP_L4);
        let again = split_all(&mut merged, &vnet);
        segments
            .iter_mut()
            .zip(&again)
            .for_each(|(a, b)| assert_eq!(a, b));
    }
}

#[test]
fn carries_udp_reads_the_protocol_field_of_either_version() {
    let (tcp_v4, _) = tcp_super_packet(false, &[1; 100], TCP_ACK);
    let (tcp_v6, _) = tcp_super_packet(true, &[1; 100], TCP_ACK);
    assert!(!carries_udp(&tcp_v4));
    assert!(!carries_udp(&tcp_v6));
    let (mut udp_v4, mut udp_v6) = (tcp_v4, tcp_v6);
    udp_v4[IPV4_PROTOCOL] = PROTO_UDP;
    udp_v6[IPV6_NEXT_HEADER] = PROTO_UDP;
    assert!(carries_udp(&udp_v4));
    assert!(carries_udp(&udp_v6));
    // Too short to hold the field, or not IP at all.
    assert!(!carries_udp(&udp_v4[..IPV4_PROTOCOL]));
    assert!(!carries_udp(&[]));
    assert!(!carries_udp(&[0x50; 40]));
}
