//! Values the config parses but the kernel would refuse later, with a misleading error or at a
//! cost to others: an endpoint no datagram can be sent to, an interface name the kernel will
//! not take. Each is refused at its line instead.

use std::net::{IpAddr, SocketAddr};

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// Why `name` cannot be an interface name, or None when it can. Stricter than the kernel's
/// dev_valid_name (which refuses "", ".", "..", names of IFNAMSIZ bytes or more, and '/', ':'
/// and white space): only letters, digits, '-', '_' and '.', which also keeps the control
/// socket's path and shell quoting simple.
pub(super) fn interface_name_problem(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!(
            "interface name {name:?} names a directory, which the kernel refuses as a link name"
        ));
    }
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!valid).then(|| {
        format!("interface name {name:?}: use 1 to {MAX_IFNAME} letters, digits, '-', '_' or '.'")
    })
}

/// Why datagrams cannot be sent to `endpoint`, or None when they can.
pub(super) fn endpoint_problem(endpoint: SocketAddr) -> Option<&'static str> {
    if endpoint.port() == 0 {
        return Some("port 0 cannot be sent to");
    }
    let ip = match endpoint.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Some("the unspecified address is no peer's address");
    }
    if ip.is_multicast() {
        return Some("a multicast address is no single peer's address");
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Some("the broadcast address is no single peer's address");
        }
    }
    if let SocketAddr::V6(v6) = endpoint {
        // fe80::/10: without a scope the kernel cannot tell which link is meant.
        let link_local = v6.ip().segments()[0] & 0xffc0 == 0xfe80;
        if link_local && v6.scope_id() == 0 {
            return Some(
                "a link-local IPv6 address needs its interface's index as scope, e.g. \
                 [fe80::2%3]:51820",
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_no_datagram_can_reach_are_refused() {
        for bad in [
            "198.18.0.9:0",
            "0.0.0.0:51820",
            "[::]:51820",
            "[::ffff:0.0.0.0]:51820",
            "224.0.0.1:51820",
            "[ff02::1]:51820",
            "[::ffff:239.1.1.1]:51820",
            "255.255.255.255:51820",
            "[fe80::2]:51820",
        ] {
            let addr: SocketAddr = bad.parse().unwrap();
            assert!(endpoint_problem(addr).is_some(), "{bad} should be refused");
        }
    }

    #[test]
    fn ordinary_endpoints_pass() {
        for good in [
            "198.18.0.9:51820",
            "[fd00::2]:51820",
            "[fe80::2%3]:51820",
            "[::ffff:198.18.0.9]:1",
            "100.64.0.255:51820",
        ] {
            let addr: SocketAddr = good.parse().unwrap();
            assert_eq!(endpoint_problem(addr), None, "{good}");
        }
    }

    #[test]
    fn interface_names_follow_the_kernel_rules_and_ours() {
        for bad in [
            ".",
            "..",
            "",
            "a/b",
            "a:b",
            "a b",
            "sixteen-bytes-xx",
            "tab\t",
        ] {
            assert!(interface_name_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["dhtun0", "wg.0", "...", "a-b_c", "fifteen-bytes-x"] {
            assert_eq!(interface_name_problem(good), None, "{good:?}");
        }
    }
}
