//! Longest-prefix-match table from inner IP addresses to values: cryptokey routing, i.e. which
//! peer owns an address. Changed only from config; lookups never allocate.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::BitAnd;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// IPv4 and IPv6 prefixes mapped to values; a lookup returns the value of the longest prefix
/// containing the address. IPv4-mapped IPv6 addresses are plain IPv6 here.
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    v4: Levels<u32, T>,
    v6: Levels<u128, T>,
}

impl<T: Copy + PartialEq> PrefixTable<T> {
    pub fn new() -> Self {
        Self {
            v4: Levels::new(),
            v6: Levels::new(),
        }
    }

    /// Inserts the prefix (host bits are masked off first); returns the value it replaced, if
    /// the same prefix was present.
    pub fn insert(&mut self, net: IpNetwork, value: T) -> Option<T> {
        match net {
            IpNetwork::V4(n) => self.v4.insert(u32::from(n.ip()), n.prefix(), value),
            IpNetwork::V6(n) => self.v6.insert(u128::from(n.ip()), n.prefix(), value),
        }
    }

    /// Removes the prefix (host bits ignored); returns its value if it was present.
    pub fn remove(&mut self, net: IpNetwork) -> Option<T> {
        match net {
            IpNetwork::V4(n) => self.v4.remove(u32::from(n.ip()), n.prefix()),
            IpNetwork::V6(n) => self.v6.remove(u128::from(n.ip()), n.prefix()),
        }
    }

    /// Removes every prefix that maps to `value`.
    pub fn remove_value(&mut self, value: T) {
        self.v4.remove_value(value);
        self.v6.remove_value(value);
    }

    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a.octets()),
            IpAddr::V6(a) => self.lookup_v6(a.octets()),
        }
    }

    /// The length of the longest prefix containing `addr`, if any.
    pub fn longest_prefix(&self, addr: IpAddr) -> Option<u8> {
        match addr {
            IpAddr::V4(a) => self.v4.longest_prefix(u32::from(a)),
            IpAddr::V6(a) => self.v6.longest_prefix(u128::from(a)),
        }
    }

    /// Hot path: takes the address bytes straight from a packet header.
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<T> {
        self.v4.lookup(u32::from_be_bytes(addr))
    }

    /// Hot path: takes the address bytes straight from a packet header.
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<T> {
        self.v6.lookup(u128::from_be_bytes(addr))
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every (masked prefix, value): IPv4 first, longest prefixes first within a family, in no
    /// particular order among prefixes of the same length.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, T)> + '_ {
        let v4 = self.v4.iter().filter_map(|(addr, prefix, value)| {
            let net = Ipv4Network::new(Ipv4Addr::from(addr), prefix).ok()?;
            Some((IpNetwork::V4(net), value))
        });
        let v6 = self.v6.iter().filter_map(|(addr, prefix, value)| {
            let net = Ipv6Network::new(Ipv6Addr::from(addr), prefix).ok()?;
            Some((IpNetwork::V6(net), value))
        });
        v4.chain(v6)
    }
}

impl<T: Copy + PartialEq> Default for PrefixTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// An address as an integer, most significant bit first, so a prefix is a high-bit mask.
trait Bits: Copy + Eq + Hash + BitAnd<Output = Self> {
    const WIDTH: u8;
    /// The first `prefix` bits set; `prefix` is at most `WIDTH`.
    fn mask(prefix: u8) -> Self;
}

impl Bits for u32 {
    const WIDTH: u8 = 32;
    fn mask(prefix: u8) -> Self {
        // A /0 would shift by the full width, which `checked_shl` refuses: its mask is empty.
        u32::MAX
            .checked_shl(u32::from(Self::WIDTH - prefix))
            .unwrap_or(0)
    }
}

impl Bits for u128 {
    const WIDTH: u8 = 128;
    fn mask(prefix: u8) -> Self {
        u128::MAX
            .checked_shl(u32::from(Self::WIDTH - prefix))
            .unwrap_or(0)
    }
}

/// One family: a hash map per distinct prefix length, longest first, so the first hit is the
/// longest match and a lookup costs one probe per length present.
#[derive(Debug, Clone)]
struct Levels<K, T> {
    levels: Vec<Level<K, T>>,
}

#[derive(Debug, Clone)]
struct Level<K, T> {
    prefix: u8,
    mask: K,
    routes: HashMap<K, T, FixedState>,
}

/// Keys come only from config, so hash flooding is no concern; fixed keys keep the core free of
/// the OS randomness `RandomState` would fetch, and make iteration order reproducible.
type FixedState = BuildHasherDefault<DefaultHasher>;

impl<K: Bits, T: Copy + PartialEq> Levels<K, T> {
    fn new() -> Self {
        Self { levels: Vec::new() }
    }

    fn insert(&mut self, addr: K, prefix: u8, value: T) -> Option<T> {
        let prefix = prefix.min(K::WIDTH);
        let mask = K::mask(prefix);
        let at = self.levels.iter().position(|l| l.prefix <= prefix);
        match at {
            Some(i) if self.levels[i].prefix == prefix => {
                self.levels[i].routes.insert(addr & mask, value)
            }
            _ => {
                let mut routes = HashMap::default();
                routes.insert(addr & mask, value);
                let level = Level {
                    prefix,
                    mask,
                    routes,
                };
                self.levels.insert(at.unwrap_or(self.levels.len()), level);
                None
            }
        }
    }

    fn remove(&mut self, addr: K, prefix: u8) -> Option<T> {
        let prefix = prefix.min(K::WIDTH);
        let i = self.levels.iter().position(|l| l.prefix == prefix)?;
        let level = &mut self.levels[i];
        let removed = level.routes.remove(&(addr & level.mask));
        // Empty levels would cost every lookup a useless probe.
        if level.routes.is_empty() {
            self.levels.remove(i);
        }
        removed
    }

    fn remove_value(&mut self, value: T) {
        for level in &mut self.levels {
            level.routes.retain(|_, v| *v != value);
        }
        self.levels.retain(|l| !l.routes.is_empty());
    }

    fn lookup(&self, addr: K) -> Option<T> {
        self.levels
            .iter()
            .find_map(|l| l.routes.get(&(addr & l.mask)).copied())
    }

    fn longest_prefix(&self, addr: K) -> Option<u8> {
        self.levels
            .iter()
            .find(|l| l.routes.contains_key(&(addr & l.mask)))
            .map(|l| l.prefix)
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|l| l.routes.len()).sum()
    }

    fn iter(&self) -> impl Iterator<Item = (K, u8, T)> + '_ {
        self.levels.iter().flat_map(|l| {
            l.routes
                .iter()
                .map(move |(addr, value)| (*addr, l.prefix, *value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Linear scan over (masked network, value), choosing the longest containing prefix.
    #[derive(Default)]
    struct Model(Vec<(IpNetwork, u8)>);

    impl Model {
        fn insert(&mut self, net: IpNetwork, value: u8) -> Option<u8> {
            let net = masked(net);
            match self.0.iter_mut().find(|(n, _)| *n == net) {
                Some((_, v)) => Some(std::mem::replace(v, value)),
                None => {
                    self.0.push((net, value));
                    None
                }
            }
        }

        fn remove(&mut self, net: IpNetwork) -> Option<u8> {
            let net = masked(net);
            let i = self.0.iter().position(|(n, _)| *n == net)?;
            Some(self.0.swap_remove(i).1)
        }

        fn lookup(&self, addr: IpAddr) -> Option<u8> {
            let containing = self.0.iter().filter(|(n, _)| n.contains(addr));
            containing.max_by_key(|(n, _)| n.prefix()).map(|(_, v)| *v)
        }

        fn sorted(&self) -> Vec<(IpNetwork, u8)> {
            let mut all = self.0.clone();
            all.sort();
            all
        }
    }

    fn masked(net: IpNetwork) -> IpNetwork {
        IpNetwork::new(net.network(), net.prefix()).unwrap()
    }

    /// An address with the top `keep` bits of `base` and random bits below.
    fn near(rng: &mut StdRng, base: u128, width: u8, keep: u8) -> u128 {
        let host = if keep >= width {
            0
        } else {
            rng.gen::<u128>() >> (128 - u32::from(width - keep))
        };
        let mask = u128::MAX >> (128 - u32::from(width));
        let top = !mask.checked_shr(u32::from(keep)).unwrap_or(0) & mask;
        (base & top) | host
    }

    /// Lookups probe once per level, so levels must be non-empty and strictly longest first.
    fn tight<K>(levels: &Levels<K, u8>) -> bool {
        let nonempty = levels.levels.iter().all(|l| !l.routes.is_empty());
        nonempty && levels.levels.windows(2).all(|w| w[0].prefix > w[1].prefix)
    }

    fn to_addr(v6: bool, bits: u128) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        }
    }

    fn check_family(v6: bool, seed: u64) {
        let width: u8 = if v6 { 128 } else { 32 };
        let mut rng = StdRng::seed_from_u64(seed);
        let bases: Vec<u128> = (0..3).map(|_| near(&mut rng, 0, width, 0)).collect();
        let mut table = PrefixTable::new();
        let mut model = Model::default();
        for _ in 0..1_200 {
            let base = bases[rng.gen_range(0..bases.len())];
            // Short prefixes cover most of the space, so keep them rare or misses go untested.
            let prefix = match rng.gen_range(0..100) {
                0 => 0,
                1..=4 => rng.gen_range(1..width / 4),
                _ => rng.gen_range(width / 4..=width),
            };
            // Keep host bits random too, so `insert` must mask them off itself.
            let keep = rng.gen_range(0..=prefix);
            let bits = near(&mut rng, base, width, keep);
            let net = IpNetwork::new(to_addr(v6, bits), prefix).unwrap();
            let value = rng.gen_range(0..6u8);
            match rng.gen_range(0..100) {
                0..=69 => assert_eq!(table.insert(net, value), model.insert(net, value)),
                70..=89 => assert_eq!(table.remove(net), model.remove(net)),
                90..=91 => {
                    table.remove_value(value);
                    model.0.retain(|(_, v)| *v != value);
                }
                _ => {}
            }
            assert_eq!(table.len(), model.0.len());
            assert!(
                tight(&table.v4) && tight(&table.v6),
                "empty or unsorted levels"
            );
            assert_eq!(table.is_empty(), model.0.is_empty());
            for _ in 0..10 {
                let bits = match (rng.gen_range(0..10), model.0.is_empty()) {
                    (0..=6, false) => {
                        let (n, _) = model.0[rng.gen_range(0..model.0.len())];
                        let network = match n.network() {
                            IpAddr::V4(a) => u128::from(u32::from(a)),
                            IpAddr::V6(a) => u128::from(a),
                        };
                        near(&mut rng, network, width, n.prefix())
                    }
                    (7..=8, _) => {
                        let keep = rng.gen_range(0..=width);
                        near(&mut rng, base, width, keep)
                    }
                    _ => near(&mut rng, 0, width, 0),
                };
                let addr = to_addr(v6, bits);
                assert_eq!(table.lookup(addr), model.lookup(addr), "{addr}");
            }
        }
        let mut listed: Vec<_> = table.iter().collect();
        listed.sort();
        assert_eq!(listed, model.sorted());
    }

    #[test]
    fn v4_matches_model() {
        for seed in 0..8 {
            check_family(false, seed);
        }
    }

    #[test]
    fn v6_matches_model() {
        for seed in 100..108 {
            check_family(true, seed);
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_routes_and_host_routes() {
        let mut table = PrefixTable::default();
        table.insert(net("0.0.0.0/0"), 1);
        table.insert(net("::/0"), 2);
        table.insert(net("10.1.2.3/32"), 3);
        table.insert(net("fd00::1/128"), 4);
        assert_eq!(table.lookup(ip("10.1.2.3")), Some(3));
        assert_eq!(table.lookup(ip("10.1.2.4")), Some(1));
        assert_eq!(table.lookup(ip("255.255.255.255")), Some(1));
        assert_eq!(table.lookup(ip("fd00::1")), Some(4));
        assert_eq!(table.lookup(ip("fd00::2")), Some(2));
        assert_eq!(table.lookup_v4([10, 1, 2, 3]), Some(3));
        assert_eq!(table.lookup_v6(Ipv6Addr::UNSPECIFIED.octets()), Some(2));
    }

    #[test]
    fn families_are_separate() {
        let mut table = PrefixTable::new();
        table.insert(net("0.0.0.0/0"), 1);
        assert_eq!(table.lookup(ip("::ffff:10.0.0.1")), None);
        assert_eq!(table.lookup(ip("10.0.0.1")), Some(1));
    }

    #[test]
    fn insert_masks_and_replaces() {
        let mut table = PrefixTable::new();
        assert_eq!(table.insert(net("10.1.2.3/16"), 1), None);
        assert_eq!(table.insert(net("10.1.0.0/16"), 2), Some(1));
        assert_eq!(table.len(), 1);
        assert_eq!(table.iter().collect::<Vec<_>>(), [(net("10.1.0.0/16"), 2)]);
        assert_eq!(table.remove(net("10.1.99.99/16")), Some(2));
        assert_eq!(table.remove(net("10.1.0.0/16")), None);
        assert!(table.is_empty());
        assert_eq!(table.lookup(ip("10.1.0.1")), None);
    }

    #[test]
    fn longest_prefix_wins_and_removal_falls_back() {
        let mut table = PrefixTable::new();
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("10.1.0.0/16"), 2);
        table.insert(net("10.1.1.0/24"), 3);
        assert_eq!(table.lookup(ip("10.1.1.9")), Some(3));
        assert_eq!(table.lookup(ip("10.1.2.9")), Some(2));
        assert_eq!(table.lookup(ip("10.2.2.9")), Some(1));
        assert_eq!(table.remove(net("10.1.1.0/24")), Some(3));
        assert_eq!(table.lookup(ip("10.1.1.9")), Some(2));
    }

    #[test]
    fn remove_value_drops_every_prefix_of_that_value() {
        let mut table = PrefixTable::new();
        table.insert(net("10.0.0.0/8"), 1);
        table.insert(net("10.1.0.0/16"), 2);
        table.insert(net("fd00::/8"), 2);
        table.insert(net("192.168.0.0/16"), 2);
        table.remove_value(2);
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(ip("10.1.0.1")), Some(1));
        assert_eq!(table.lookup(ip("fd00::1")), None);
        assert_eq!(table.lookup(ip("192.168.0.1")), None);
    }

    #[test]
    fn longest_prefix_is_the_length_of_the_match() {
        let mut table = PrefixTable::new();
        table.insert("0.0.0.0/0".parse().unwrap(), 1u8);
        table.insert("100.65.0.0/16".parse().unwrap(), 2);
        table.insert("fd00::/8".parse().unwrap(), 3);
        let at = |ip: &str| table.longest_prefix(ip.parse().unwrap());
        assert_eq!(at("100.65.1.1"), Some(16));
        assert_eq!(at("198.18.0.1"), Some(0));
        assert_eq!(at("fd64::1"), Some(8));
        assert_eq!(at("2001:db8::1"), None);
    }
}
