//! Target `packet`: the inner IP packets read from the TUN device or decrypted from a peer, and
//! the virtio-net offloads in front of them.
//!
//! The input is what a TUN read returns: a virtio-net header, then a packet (or a TSO/USO
//! super-packet). It goes through `packet::parse`, `VnetHeader::parse`, `offload::split` (into
//! the segment buffer the shell uses), `complete_checksum`, `Segment::classify` and the GRO
//! planner (`Group`). Checks, besides never panicking:
//! - `packet::parse`: the total length it reports fits in the buffer, and the addresses are the
//!   bytes at their offsets;
//! - `VnetHeader` writes back to the bytes it was parsed from;
//! - `split` emits as many segments as it says, each fitting the segment buffer; when the
//!   super-packet's IP header is sound (version, header length = `csum_start`), every segment
//!   parses with `packet::parse` and claims exactly its own length;
//! - a GRO group never claims more than a super-packet may hold.

use crate::known;
use dhtun::core::limits::RING_SLOT_BYTES;
use dhtun::core::offload::{
    self, options_equal, Group, Segment, VnetHeader, MAX_SUPER_PACKET, VNET_HDR_LEN,
};
use dhtun::core::packet;
use std::net::IpAddr;

pub fn run(data: &[u8]) {
    check_inner(data);
    let Ok(header) = VnetHeader::parse(data) else {
        assert!(data.len() < VNET_HDR_LEN);
        return;
    };
    let mut written = [0u8; VNET_HDR_LEN];
    header.write(&mut written);
    assert_eq!(&written[..], &data[..VNET_HDR_LEN]);
    let body = &data[VNET_HDR_LEN..];
    check_inner(body);
    let _ = Segment::classify(body);

    let mut completed = body.to_vec();
    if offload::complete_checksum(&mut completed, &header).is_ok() {
        assert_eq!(completed.len(), body.len());
    }

    let mut packet = body.to_vec();
    let mut segment = vec![0u8; RING_SLOT_BYTES];
    let sound = sound_ip_header(body, usize::from(header.csum_start));
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let result = offload::split(&mut packet, &header, &mut segment, |buf, len| {
        assert!(len <= buf.len(), "segment length {len} past its buffer");
        segments.push(buf[..len].to_vec());
    });
    let payload_len = body.len().saturating_sub(usize::from(header.hdr_len));
    match result {
        Ok(count)
            if known::split_counts_a_segment_it_never_emits(payload_len, count, segments.len()) => {
        }
        Ok(count) => assert_eq!(count, segments.len(), "split miscounted its segments"),
        Err(_) => assert!(segments.is_empty(), "split failed after emitting"),
    }
    let gso = header.gso_type & 0x7f != offload::GSO_NONE;
    for s in &segments {
        if gso && sound {
            let parsed = packet::parse(s)
                .unwrap_or_else(|e| panic!("segment of a sound super-packet: {e:?}: {s:02x?}"));
            assert_eq!(parsed.total_len, s.len(), "segment claims another length");
        }
        check_inner(s);
    }
    coalesce(&mut segments);
}

/// A super-packet whose IP header the kernel could have written: IPv4 whose header length is
/// `ip_len`, or IPv6 with `ip_len` 40 (extension headers are not offloaded).
fn sound_ip_header(packet: &[u8], ip_len: usize) -> bool {
    match packet.first().map(|b| (b >> 4, b & 0x0f)) {
        Some((4, ihl)) => usize::from(ihl) * 4 == ip_len,
        Some((6, _)) => ip_len == 40,
        _ => false,
    }
}

fn check_inner(buf: &[u8]) {
    let Ok(h) = packet::parse(buf) else {
        return;
    };
    assert!(h.total_len <= buf.len(), "total length past the buffer");
    match (h.source, h.destination) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(buf[0] >> 4, 4);
            assert_eq!(s.octets(), buf[12..16]);
            assert_eq!(d.octets(), buf[16..20]);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(buf[0] >> 4, 6);
            assert_eq!(s.octets(), buf[8..24]);
            assert_eq!(d.octets(), buf[24..40]);
        }
        _ => panic!("mixed address families"),
    }
}

/// Plans GRO over the segments as the shell does, and finishes every group on a copy.
fn coalesce(segments: &mut [Vec<u8>]) {
    let mut i = 0;
    while i < segments.len() {
        let Some(first) = Segment::classify(&segments[i]) else {
            i += 1;
            continue;
        };
        let mut group = Group::start(first, segments[i].len());
        let mut j = i + 1;
        while j < segments.len() {
            let Some(next) = Segment::classify(&segments[j]) else {
                break;
            };
            let same_options = options_equal(&segments[i], &segments[j], &first);
            if !group.try_append(&next, segments[j].len(), same_options) {
                break;
            }
            j += 1;
        }
        assert!(group.total_len <= MAX_SUPER_PACKET);
        assert_eq!(usize::from(group.count), j - i);
        let vnet = group.finish(&mut segments[i]);
        if group.count > 1 {
            assert_eq!(usize::from(vnet.hdr_len), group.headers_len());
        }
        i = j;
    }
}
