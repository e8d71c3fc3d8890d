//! TUN offloads through the virtio-net header: splitting the TCP/UDP super-packets the kernel
//! hands us (TSO/USO) into MTU-sized packets, and planning which decrypted TCP segments can be
//! written back to the kernel as one super-packet (GRO). One super-packet instead of 45 small
//! ones saves 44 trips through the kernel on each side.
//!
//! Everything here is pure: buffers in, buffers and plans out.

use crate::core::checksum;

/// Size of `struct virtio_net_hdr` (without the mergeable-buffers field).
pub const VNET_HDR_LEN: usize = 10;
/// Largest IP packet a super-packet may reach.
pub const MAX_SUPER_PACKET: usize = 65535;

/// `flags`: the transport checksum is partial and must be completed at csum_start+csum_offset.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

const IPV4_TOTAL_LEN: usize = 2;
const IPV4_ID: usize = 4;
const IPV4_FLAGS: usize = 6;
const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV6_PAYLOAD_LEN: usize = 4;
const IPV6_SRC: usize = 8;
const IPV6_HEADER: usize = 40;
const TCP_SEQ: usize = 4;
const TCP_FLAGS: usize = 13;
const TCP_CHECKSUM: usize = 16;
const UDP_LEN: usize = 4;
const UDP_CHECKSUM: usize = 6;
const UDP_HEADER: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// Offsets of the transport protocol in the IPv4 header and of the next header in IPv6's.
const IPV4_PROTOCOL: usize = 9;
const IPV6_NEXT_HEADER: usize = 6;

/// A parsed virtio-net header. The kernel writes it in native (little-endian here) order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// Why a super-packet could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// The header's offsets or sizes do not fit the packet.
    BadHeader,
    /// A GSO type we did not ask the kernel for.
    Unsupported,
}

impl VnetHeader {
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let b = bytes.get(..VNET_HDR_LEN).ok_or(OffloadError::BadHeader)?;
        let word = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        })
    }

    pub fn write(&self, out: &mut [u8; VNET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Turns `packet` (what followed the vnet header) into complete IP packets, each with valid
/// checksums, written one after another into `segment` and handed to `emit(segment, len)`.
/// A packet without GSO is completed in place and emitted once. Returns how many were emitted.
pub fn split(
    packet: &mut [u8],
    header: &VnetHeader,
    segment: &mut [u8],
    mut emit: impl FnMut(&mut [u8], usize),
) -> Result<usize, OffloadError> {
    let gso = header.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if header.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(packet, header)?;
        }
        let len = packet.len();
        let out = segment.get_mut(..len).ok_or(OffloadError::BadHeader)?;
        out.copy_from_slice(packet);
        emit(segment, len);
        return Ok(1);
    }
    let protocol = match gso {
        GSO_TCPV4 | GSO_TCPV6 => PROTO_TCP,
        GSO_UDP_L4 => PROTO_UDP,
        _ => return Err(OffloadError::Unsupported),
    };
    let ip_len = usize::from(header.csum_start);
    let headers_len = usize::from(header.hdr_len);
    let mss = usize::from(header.gso_size);
    let is_v6 = packet.first().map(|b| b >> 4) == Some(6);
    let min_transport = if protocol == PROTO_TCP {
        20
    } else {
        UDP_HEADER
    };
    if mss == 0
        || ip_len < 20
        || headers_len < ip_len + min_transport
        || headers_len > packet.len()
        || headers_len + mss > segment.len()
        || (is_v6 && ip_len < IPV6_HEADER)
    {
        return Err(OffloadError::BadHeader);
    }
    let (headers, payload) = packet.split_at(headers_len);
    let first_seq = read_u32(headers, ip_len + TCP_SEQ);
    let tcp_flags = headers.get(ip_len + TCP_FLAGS).copied().unwrap_or(0);
    let first_id = read_u16(headers, IPV4_ID);
    let segments = payload.len().div_ceil(mss).max(1);
    // A super-packet with headers only still becomes one (empty) packet, as it was counted.
    let headers_only = payload.is_empty().then_some(payload);
    for (i, chunk) in payload.chunks(mss).chain(headers_only).enumerate() {
        let total = headers_len + chunk.len();
        let out = &mut segment[..total];
        out[..headers_len].copy_from_slice(headers);
        out[headers_len..].copy_from_slice(chunk);
        if is_v6 {
            write_u16(out, IPV6_PAYLOAD_LEN, (total - IPV6_HEADER) as u16);
        } else {
            write_u16(out, IPV4_TOTAL_LEN, total as u16);
            write_u16(out, IPV4_ID, first_id.wrapping_add(i as u16));
            ipv4_header_checksum(out, ip_len);
        }
        let transport_len = total - ip_len;
        let checksum_at = if protocol == PROTO_TCP {
            write_u32(
                out,
                ip_len + TCP_SEQ,
                first_seq.wrapping_add((i * mss) as u32),
            );
            // FIN and PSH belong to the last segment only, CWR to the first only.
            let mut flags = tcp_flags;
            if i + 1 < segments {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            out[ip_len + TCP_FLAGS] = flags;
            ip_len + TCP_CHECKSUM
        } else {
            write_u16(out, ip_len + UDP_LEN, transport_len as u16);
            ip_len + UDP_CHECKSUM
        };
        write_u16(out, checksum_at, 0);
        let pseudo = pseudo_sum(out, is_v6, protocol, transport_len);
        let mut check = checksum::finish(&out[ip_len..], pseudo);
        if protocol == PROTO_UDP && check == 0 {
            check = 0xffff;
        }
        write_u16(out, checksum_at, check);
        emit(segment, total);
    }
    Ok(segments)
}

/// Completes a partial transport checksum (the kernel left the pseudo-header sum in place).
pub fn complete_checksum(packet: &mut [u8], header: &VnetHeader) -> Result<(), OffloadError> {
    let start = usize::from(header.csum_start);
    let at = start + usize::from(header.csum_offset);
    if at + 2 > packet.len() || start > packet.len() {
        return Err(OffloadError::BadHeader);
    }
    // The field holds the folded pseudo-header sum, so summing it in with the rest is right.
    let check = checksum::finish(&packet[start..], 0);
    write_u16(packet, at, check);
    Ok(())
}

/// What the planner needs to know about one decrypted packet to coalesce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    key: FlowKey,
    ip_len: u8,
    /// TCP header with options, or the 8-byte UDP header.
    tcp_len: u8,
    seq: u32,
    payload_len: u16,
    psh: bool,
    is_v6: bool,
    udp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    addresses: [u8; 32],
    ports: [u8; 4],
    ack: u32,
    /// Header bytes that must match for a merge: ToS/traffic class, TTL/hop limit, DF.
    ip_bits: [u8; 3],
}

/// Whether an IP packet carries UDP, from its protocol (next header) field alone: no header is
/// validated and no checksum read, so it costs one byte on the per-packet path.
pub fn carries_udp(packet: &[u8]) -> bool {
    let protocol = match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(IPV4_PROTOCOL),
        Some(6) => packet.get(IPV6_NEXT_HEADER),
        _ => None,
    };
    protocol == Some(&PROTO_UDP)
}

impl Segment {
    /// A packet that may merge with its neighbours: a TCP segment with plain ACK or PSH+ACK
    /// and payload, or a UDP datagram with payload; no IP options or fragments; a valid
    /// checksum (a merged packet's checksum is recomputed by the kernel, so a bad one must not
    /// be laundered through a merge).
    pub fn classify(packet: &[u8]) -> Option<Segment> {
        let version = packet.first()? >> 4;
        let (ip_len, is_v6, protocol) = match version {
            4 => {
                let flags = read_u16(packet, IPV4_FLAGS);
                // Options, more-fragments or a fragment offset: leave it alone.
                if packet.first()? & 0x0f != 5
                    || flags & 0x3fff != 0
                    || usize::from(read_u16(packet, IPV4_TOTAL_LEN)) != packet.len()
                {
                    return None;
                }
                (20usize, false, *packet.get(IPV4_PROTOCOL)?)
            }
            6 => {
                if usize::from(read_u16(packet, IPV6_PAYLOAD_LEN)) + IPV6_HEADER != packet.len() {
                    return None;
                }
                (IPV6_HEADER, true, *packet.get(IPV6_NEXT_HEADER)?)
            }
            _ => return None,
        };
        let udp = match protocol {
            PROTO_TCP => false,
            PROTO_UDP => true,
            _ => return None,
        };
        let header_len = if udp {
            UDP_HEADER
        } else {
            usize::from(packet.get(ip_len + 12)? >> 4) * 4
        };
        if header_len < min_header(udp) || packet.len() <= ip_len + header_len {
            return None;
        }
        let flags = if udp {
            TCP_ACK
        } else {
            packet[ip_len + TCP_FLAGS]
        };
        if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
            return None;
        }
        let transport_len = packet.len() - ip_len;
        if udp && usize::from(read_u16(packet, ip_len + UDP_LEN)) != transport_len {
            return None;
        }
        // IPv4 UDP may go without a checksum (zero): then there is nothing to verify.
        let unchecked = udp && !is_v6 && read_u16(packet, ip_len + UDP_CHECKSUM) == 0;
        let pseudo = pseudo_sum(packet, is_v6, protocol, transport_len);
        if !unchecked && checksum::finish(&packet[ip_len..], pseudo) != 0 {
            return None;
        }
        let mut addresses = [0u8; 32];
        let ip_bits = if is_v6 {
            addresses.copy_from_slice(&packet[IPV6_SRC..IPV6_SRC + 32]);
            [packet[0] & 0x0f, packet[1] >> 4, packet[7]]
        } else {
            addresses[..8].copy_from_slice(&packet[IPV4_SRC..IPV4_SRC + 8]);
            [packet[1], packet[IPV4_FLAGS] >> 5, packet[8]]
        };
        let mut ports = [0u8; 4];
        ports.copy_from_slice(&packet[ip_len..ip_len + 4]);
        Some(Segment {
            key: FlowKey {
                addresses,
                ports,
                ack: if udp { 0 } else { read_u32(packet, ip_len + 8) },
                ip_bits,
            },
            ip_len: ip_len as u8,
            tcp_len: header_len as u8,
            seq: if udp {
                0
            } else {
                read_u32(packet, ip_len + TCP_SEQ)
            },
            payload_len: (packet.len() - ip_len - header_len) as u16,
            psh: flags & TCP_PSH != 0,
            is_v6,
            udp,
        })
    }
}

impl Segment {
    /// A UDP datagram (merging it needs UDP segmentation offload), not a TCP segment.
    pub fn is_udp(&self) -> bool {
        self.udp
    }
}

fn min_header(udp: bool) -> usize {
    if udp {
        UDP_HEADER
    } else {
        20
    }
}

/// A run of segments of one flow that will be written as one super-packet: the first
/// packet's headers, then the payloads of the rest, in sequence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub first: Segment,
    pub count: u16,
    pub total_len: usize,
    next_seq: u32,
    ended: bool,
    psh: bool,
}

impl Group {
    pub fn start(first: Segment, len: usize) -> Self {
        Self {
            first,
            count: 1,
            total_len: len,
            next_seq: first.seq.wrapping_add(u32::from(first.payload_len)),
            ended: first.psh,
            psh: first.psh,
        }
    }

    /// Whether `next` (of `len` bytes, with the same TCP options `options_equal` says) continues
    /// this group: same flow, next in sequence, no bigger than the first, nothing after a short
    /// or PSH segment, and the result still fits one IP packet.
    pub fn try_append(&mut self, next: &Segment, len: usize, options_equal: bool) -> bool {
        let fits = self.total_len + usize::from(next.payload_len) <= MAX_SUPER_PACKET;
        let continues = next.key == self.first.key
            && next.udp == self.first.udp
            && next.tcp_len == self.first.tcp_len
            && (next.udp || next.seq == self.next_seq)
            && next.payload_len <= self.first.payload_len
            && !self.ended;
        if !(fits && continues && options_equal) || len < usize::from(next.ip_len) {
            return false;
        }
        self.count += 1;
        self.total_len += usize::from(next.payload_len);
        self.next_seq = self.next_seq.wrapping_add(u32::from(next.payload_len));
        self.ended = next.psh || next.payload_len < self.first.payload_len;
        self.psh |= next.psh;
        true
    }

    pub fn headers_len(&self) -> usize {
        usize::from(self.first.ip_len) + usize::from(self.first.tcp_len)
    }

    /// Rewrites the first packet's headers for the merged packet and returns the vnet header
    /// to write before it; `first_packet` is the first segment's bytes.
    pub fn finish(&self, first_packet: &mut [u8]) -> VnetHeader {
        if self.count < 2 {
            return VnetHeader::default();
        }
        let ip_len = usize::from(self.first.ip_len);
        if self.first.is_v6 {
            write_u16(
                first_packet,
                IPV6_PAYLOAD_LEN,
                (self.total_len - IPV6_HEADER) as u16,
            );
        } else {
            write_u16(first_packet, IPV4_TOTAL_LEN, self.total_len as u16);
            ipv4_header_checksum(first_packet, ip_len);
        }
        let transport_len = self.total_len - ip_len;
        let (protocol, checksum_offset, gso_type) = if self.first.udp {
            write_u16(first_packet, ip_len + UDP_LEN, transport_len as u16);
            (PROTO_UDP, UDP_CHECKSUM, GSO_UDP_L4)
        } else {
            if self.psh {
                first_packet[ip_len + TCP_FLAGS] |= TCP_PSH;
            }
            let gso = if self.first.is_v6 {
                GSO_TCPV6
            } else {
                GSO_TCPV4
            };
            (PROTO_TCP, TCP_CHECKSUM, gso)
        };
        // The kernel completes the checksum from the pseudo-header sum we leave in the field.
        let pseudo = pseudo_sum(first_packet, self.first.is_v6, protocol, transport_len);
        write_u16(
            first_packet,
            ip_len + checksum_offset,
            checksum::fold(pseudo),
        );
        VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: self.headers_len() as u16,
            gso_size: self.first.payload_len,
            csum_start: ip_len as u16,
            csum_offset: checksum_offset as u16,
        }
    }
}

/// TCP options of two segments are equal (they must be, to merge); UDP has none.
pub fn options_equal(a: &[u8], b: &[u8], first: &Segment) -> bool {
    if first.udp {
        return true;
    }
    let start = usize::from(first.ip_len) + 20;
    let end = usize::from(first.ip_len) + usize::from(first.tcp_len);
    a.get(start..end) == b.get(start..end)
}

fn pseudo_sum(packet: &[u8], is_v6: bool, protocol: u8, transport_len: usize) -> u64 {
    let (src, len) = if is_v6 { (IPV6_SRC, 16) } else { (IPV4_SRC, 4) };
    match (
        packet.get(src..src + len),
        packet.get(src + len..src + 2 * len),
    ) {
        (Some(s), Some(d)) => checksum::pseudo_header(s, d, protocol, transport_len),
        _ => 0,
    }
}

fn ipv4_header_checksum(packet: &mut [u8], ip_len: usize) {
    write_u16(packet, IPV4_CHECKSUM, 0);
    let check = checksum::finish(&packet[..ip_len.min(packet.len())], 0);
    write_u16(packet, IPV4_CHECKSUM, check);
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(w) => u16::from_be_bytes([w[0], w[1]]),
        None => 0,
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(w) => u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
        None => 0,
    }
}

fn write_u16(b: &mut [u8], at: usize, value: u16) {
    if let Some(w) = b.get_mut(at..at + 2) {
        w.copy_from_slice(&value.to_be_bytes());
    }
}

fn write_u32(b: &mut [u8], at: usize, value: u32) {
    if let Some(w) = b.get_mut(at..at + 4) {
        w.copy_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
