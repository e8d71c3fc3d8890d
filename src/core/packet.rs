//! The inner IP packets the tunnel carries: just enough of their headers, read through
//! smoltcp's checked views, to route them (destination), police them (source), and strip the
//! padding added before encryption (total length).

use smoltcp::wire::{Ipv4Packet, Ipv6Packet};
use std::net::IpAddr;

/// What the tunnel needs to know of an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerHeader {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// Length the IP header claims; bytes past it in the buffer are padding.
    pub total_len: usize,
}

/// Why bytes were not a usable IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerError {
    /// Not IPv4 or IPv6, or a header whose lengths disagree with the buffer.
    Malformed,
}

/// Reads the IP header at the start of `buf`; `buf` may carry padding beyond the packet.
pub fn parse(buf: &[u8]) -> Result<InnerHeader, InnerError> {
    match buf.first().map(|b| b >> 4) {
        Some(4) => {
            let packet = Ipv4Packet::new_checked(buf).map_err(|_| InnerError::Malformed)?;
            Ok(InnerHeader {
                source: IpAddr::V4(packet.src_addr()),
                destination: IpAddr::V4(packet.dst_addr()),
                total_len: usize::from(packet.total_len()),
            })
        }
        Some(6) => {
            let packet = Ipv6Packet::new_checked(buf).map_err(|_| InnerError::Malformed)?;
            Ok(InnerHeader {
                source: IpAddr::V6(packet.src_addr()),
                destination: IpAddr::V6(packet.dst_addr()),
                total_len: packet.total_len(),
            })
        }
        _ => Err(InnerError::Malformed),
    }
}

/// A destination on the link itself, which a tunnel between hosts does not carry: IPv6
/// link-local unicast (fe80::/10) or multicast of interface or link scope (ffx1::, ffx2::), and
/// IPv4 multicast for the local network (224.0.0.0/24). The kernel sends such packets (router
/// solicitations to ff02::2) on any fresh interface with an IPv6 link-local address.
pub fn is_link_scoped(destination: IpAddr) -> bool {
    match destination {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            (a, b, c) == (224, 0, 0)
        }
        IpAddr::V6(v6) => {
            let [first, second, ..] = v6.octets();
            let link_local = first == 0xfe && second & 0xc0 == 0x80;
            let link_multicast = first == 0xff && matches!(second & 0x0f, 1 | 2);
            link_local || link_multicast
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let total = 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn link_scope_covers_the_link_and_nothing_beyond() {
        let scoped = |s: &str| is_link_scoped(s.parse().unwrap());
        for on_link in [
            "fe80::1",
            "febf::1",
            "ff02::2",
            "ff12::1:3",
            "ff01::1",
            "224.0.0.1",
        ] {
            assert!(scoped(on_link), "{on_link}");
        }
        for beyond in [
            "fec0::1",
            "fd64::1",
            "ff05::2",
            "ff0e::1",
            "224.0.1.1",
            "100.64.0.2",
        ] {
            assert!(!scoped(beyond), "{beyond}");
        }
    }

    #[test]
    fn reads_ipv4_and_ignores_padding() {
        let mut p = ipv4([100, 64, 0, 2], [100, 64, 0, 1], 3);
        p.extend_from_slice(&[0; 9]);
        let h = parse(&p).unwrap();
        assert_eq!(h.source, "100.64.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(h.destination, "100.64.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(h.total_len, 23);
    }

    #[test]
    fn reads_ipv6() {
        let mut p = vec![0u8; 40 + 8];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[8..24].copy_from_slice(&"fd64::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd64::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let h = parse(&p).unwrap();
        assert_eq!(h.source, "fd64::2".parse::<IpAddr>().unwrap());
        assert_eq!(h.total_len, 48);
    }

    #[test]
    fn truncated_or_lying_headers_are_malformed() {
        let p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 10);
        assert_eq!(parse(&p[..25]), Err(InnerError::Malformed));
        assert_eq!(parse(&[]), Err(InnerError::Malformed));
        assert_eq!(parse(&[0x50; 40]), Err(InnerError::Malformed));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut buf = [0u8; 128];
        for _ in 0..100_000 {
            let len = rng.gen_range(0..buf.len());
            rng.fill(&mut buf[..len]);
            if let Ok(h) = parse(&buf[..len]) {
                assert!(h.total_len <= len);
            }
        }
    }
}
