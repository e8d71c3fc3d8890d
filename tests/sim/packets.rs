//! Addresses, keys and packets of the simulation: each node's underlay and overlay address and
//! key seed, and the tracked inner packets that carry their own id.

use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{Ipv4Addr, SocketAddr};

use crate::network::{NodeId, PacketId};

pub(crate) fn key_seed(node: NodeId) -> [u8; 32] {
    [node as u8 + 1; 32]
}

pub(crate) fn underlay(node: NodeId) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, node as u8 + 1], 51820))
}

pub(crate) fn overlay(node: NodeId) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, node as u8 + 1)
}

pub(crate) fn host_route(addr: Ipv4Addr) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(addr, 32).expect("/32 is a valid prefix"))
}

/// Marks the payload of a tracked packet.
pub(crate) const MAGIC: &[u8; 4] = b"dsim";
/// Magic, source node, destination node, sequence number.
pub(crate) const ID_BYTES: usize = 4 + 1 + 1 + 8;
pub(crate) const IPV4_HEADER: usize = 20;

/// A UDP-protocol IPv4 packet whose payload names it, padded with filler whose length varies
/// with the sequence number, so sizes cross the 16-byte padding boundaries the tunnel adds.
pub(crate) fn app_packet(id: PacketId, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut payload = Vec::with_capacity(ID_BYTES + 600);
    payload.extend_from_slice(MAGIC);
    payload.push(id.src as u8);
    payload.push(id.dst as u8);
    payload.extend_from_slice(&id.seq.to_be_bytes());
    let filler = (id.seq as usize * 37) % 600;
    payload.extend((0..filler).map(|i| (i as u8) ^ (id.seq as u8) ^ 0x5a));
    ipv4_packet(src, dst, &payload)
}

/// The id a tracked packet carries, if `packet` is one.
pub(crate) fn packet_id(packet: &[u8]) -> Option<PacketId> {
    let payload = packet.get(IPV4_HEADER..IPV4_HEADER + ID_BYTES)?;
    if &payload[..4] != MAGIC {
        return None;
    }
    Some(PacketId {
        src: payload[4].into(),
        dst: payload[5].into(),
        seq: u64::from_be_bytes(payload[6..14].try_into().ok()?),
    })
}

/// A minimal IPv4 header (no options; the core does not check the checksum) and `payload`.
pub(crate) fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = IPV4_HEADER + payload.len();
    let mut packet = vec![0u8; IPV4_HEADER];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    packet.extend_from_slice(payload);
    packet
}
