//! Which allowed_ips prefixes need a route of their own, in time that grows with n log n rather
//! than n squared: at MAX_ALLOWED_IPS prefixes, comparing every pair took most of `dhtun up`'s
//! 13 s.

use super::{covers, masked};
use ipnetwork::IpNetwork;
use std::collections::HashSet;

/// See `prefixes_needing_routes`: those of `prefixes` (host bits cleared) that no connected
/// network of `interface_addrs` and no other listed prefix covers, each once, in first-seen
/// order.
pub(super) fn needing_routes(
    interface_addrs: &[IpNetwork],
    prefixes: &[IpNetwork],
) -> Vec<IpNetwork> {
    let candidates: Vec<IpNetwork> = prefixes
        .iter()
        .map(|&prefix| masked(prefix))
        .filter(|&prefix| !interface_addrs.iter().any(|&addr| covers(addr, prefix)))
        .collect();
    let listed: HashSet<IpNetwork> = candidates.iter().copied().collect();
    // Only prefix lengths that occur can cover anything: a few, however many prefixes there are.
    let mut lengths: Vec<(bool, u8)> = listed.iter().map(|p| (p.is_ipv4(), p.prefix())).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut kept = HashSet::with_capacity(listed.len());
    candidates
        .into_iter()
        .filter(|&prefix| {
            let covered = lengths.iter().any(|&(v4, len)| {
                v4 == prefix.is_ipv4()
                    && len < prefix.prefix()
                    && IpNetwork::new(prefix.network(), len)
                        .is_ok_and(|outer| listed.contains(&masked(outer)))
            });
            !covered && kept.insert(prefix)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pairwise definition, as it was written first.
    fn naive(interface_addrs: &[IpNetwork], prefixes: &[IpNetwork]) -> Vec<IpNetwork> {
        let candidates: Vec<IpNetwork> = prefixes
            .iter()
            .map(|&prefix| masked(prefix))
            .filter(|&prefix| !interface_addrs.iter().any(|&addr| covers(addr, prefix)))
            .collect();
        candidates
            .iter()
            .enumerate()
            .filter(|&(i, &prefix)| {
                !candidates.iter().enumerate().any(|(j, &other)| {
                    j != i && covers(other, prefix) && (other != prefix || j < i)
                })
            })
            .map(|(_, &prefix)| prefix)
            .collect()
    }

    #[test]
    fn agrees_with_the_pairwise_definition() {
        let addrs: Vec<IpNetwork> = ["100.64.0.1/24", "fd64::1/64"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let prefixes: Vec<IpNetwork> = (0..40)
                .map(|_| {
                    let r = next();
                    // Few distinct addresses and lengths, so nesting and duplicates are common.
                    if r & 1 == 0 {
                        let ip = std::net::Ipv4Addr::new(
                            100,
                            64 + (r >> 8) as u8 % 3,
                            (r >> 16) as u8 % 4,
                            (r >> 24) as u8 % 4,
                        );
                        IpNetwork::new(ip.into(), [8, 10, 16, 24, 30, 32][(r >> 32) as usize % 6])
                            .unwrap()
                    } else {
                        let ip = std::net::Ipv6Addr::new(
                            0xfd64,
                            (r >> 8) as u16 % 3,
                            0,
                            0,
                            0,
                            0,
                            0,
                            (r >> 16) as u16 % 4,
                        );
                        IpNetwork::new(ip.into(), [16, 48, 64, 127, 128][(r >> 32) as usize % 5])
                            .unwrap()
                    }
                })
                .collect();
            assert_eq!(
                needing_routes(&addrs, &prefixes),
                naive(&addrs, &prefixes),
                "{prefixes:?}"
            );
        }
    }
}
