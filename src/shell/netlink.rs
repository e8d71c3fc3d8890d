//! Kernel network configuration over rtnetlink, so the daemon never shells
//! out to `ip`. This module owns one route-netlink socket and everything the
//! daemon does to its own link: looking it up, addressing it (IPv4 and IPv6,
//! the latter without duplicate address detection), setting its MTU, bringing
//! it up, adding and removing the routes that point into the tunnel, listing
//! them for cleanup checks, and deleting the link. It also decides which
//! configured prefixes need an explicit route at all. Routes in other tables
//! and the policy rules of a full tunnel are in `policy`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::pin;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

mod policy;

/// A failed netlink operation, worded for the person running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: opening a route netlink socket: {0}")]
    Open(io::Error),
    #[error(
        "netlink: {action}: operation not permitted; dhtun needs CAP_NET_ADMIN \
         (run it as root or grant it that capability)"
    )]
    NotPermitted { action: String },
    #[error("netlink: {action}: {error}{}", hint_suffix(*.hint))]
    Kernel {
        action: String,
        error: io::Error,
        hint: Option<&'static str>,
    },
    #[error("netlink: {action}: {detail}")]
    Protocol { action: String, detail: String },
}

impl NetlinkError {
    /// The errno behind this error, so callers can tolerate e.g. `EEXIST`.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Open(error) | Self::Kernel { error, .. } => error.raw_os_error(),
            Self::NotPermitted { .. } => Some(libc::EPERM),
            Self::Protocol { .. } => None,
        }
    }
}

/// A route netlink socket. Cloning shares the socket; its connection task
/// ends once the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink socket and spawns its connection task on the current
    /// tokio runtime.
    pub fn open() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| NetlinkError::Open(io::Error::other(e)))?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// Index of the link with this name, None when there is no such link.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        // The kernel rejects such names with EINVAL rather than ENODEV, yet
        // they can never name a link.
        if name.is_empty() || name.len() >= IFNAMSIZ {
            return Ok(None);
        }
        let mut links = pin!(self.handle.link().get().match_name(name).execute());
        match links.try_next().await {
            Ok(link) => Ok(link.map(|link| link.header.index)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(classify(format!("looking up link {name:?}"), e, false)),
        }
    }

    /// Adds an IPv4 or IPv6 address with its prefix length (e.g.
    /// 100.64.0.1/24, fd64::1/64) to the link. The kernel adds the route to
    /// the connected network itself. IPv6 addresses skip duplicate address
    /// detection, because nothing else can sit on a point-to-point tunnel and
    /// they must be usable at once. If the link was created with IPv6
    /// disabled (it inherits `net.ipv6.conf.default.disable_ipv6`), IPv6 is
    /// enabled on this link only and the address added again.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        let mut result = self.request_address(index, addr).await;
        if addr.is_ipv6() && result.as_ref().err().and_then(errno) == Some(libc::EACCES) {
            if let Some(name) = self.link_name(index).await {
                match enable_ipv6(&name) {
                    Ok(()) => {
                        tracing::warn!(link = %name, "IPv6 was disabled on the link; enabled it");
                        result = self.request_address(index, addr).await;
                    }
                    Err(e) => tracing::warn!(link = %name, "cannot enable IPv6 on the link: {e}"),
                }
            }
        }
        self.check(index, result, addr.is_ipv6(), |link| {
            format!("adding address {addr} to {link}")
        })
        .await
    }

    /// Sets the link MTU. IPv6 needs at least 1280: below that the kernel
    /// silently removes the link's IPv6 addresses and refuses new ones.
    /// Every address on every link, with its link's index (both families).
    pub async fn all_addresses(&self) -> Result<Vec<(u32, IpAddr)>, NetlinkError> {
        let mut dump = pin!(self.handle.address().get().execute());
        let mut found = Vec::new();
        loop {
            match dump.try_next().await {
                Ok(Some(message)) => {
                    let address = message.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    if let Some(ip) = address {
                        found.push((message.header.index, ip));
                    }
                }
                Ok(None) => return Ok(found),
                Err(e) => {
                    return Err(classify("listing addresses".to_string(), e, false));
                }
            }
        }
    }

    /// Removes an address from the link; Ok when it is not there.
    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<(), NetlinkError> {
        let mut found = pin!(self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.ip())
            .set_prefix_length_filter(addr.prefix())
            .execute());
        let mut messages = Vec::new();
        loop {
            match found.try_next().await {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(e) => {
                    return self
                        .check(index, Err(e), addr.is_ipv6(), |link| {
                            format!("looking up address {addr} on {link}")
                        })
                        .await
                }
            }
        }
        for message in messages {
            let result = self.handle.address().del(message).execute().await;
            if result.as_ref().err().and_then(errno) == Some(libc::EADDRNOTAVAIL) {
                continue;
            }
            self.check(index, result, addr.is_ipv6(), |link| {
                format!("removing address {addr} from {link}")
            })
            .await?;
        }
        Ok(())
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        let result = self.handle.link().set(message).execute().await;
        self.check(index, result, false, |link| {
            format!("setting the MTU of {link} to {mtu}")
        })
        .await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        let result = self.handle.link().set(message).execute().await;
        self.check(index, result, false, |link| format!("bringing {link} up"))
            .await
    }

    /// Adds a route for `dest` out of the link, without a gateway since the
    /// link is point-to-point: main table, scope link, protocol static. Host
    /// bits in `dest` are cleared first. The link must be up, or the kernel
    /// answers ENETDOWN.
    pub async fn add_route(&self, index: u32, dest: IpNetwork) -> Result<(), NetlinkError> {
        let dest = masked(dest);
        let request = self.handle.route().add(route_message(index, dest));
        let result = request.execute().await;
        self.check(index, result, false, |link| {
            format!("adding route {dest} via {link}")
        })
        .await
    }

    /// Removes a route added by [`Netlink::add_route`]; Ok when it is already
    /// gone, including when the link itself is.
    pub async fn del_route(&self, index: u32, dest: IpNetwork) -> Result<(), NetlinkError> {
        let dest = masked(dest);
        let request = self.handle.route().del(route_message(index, dest));
        let result = request.execute().await;
        let errno = result.as_ref().err().and_then(errno);
        if matches!(errno, Some(libc::ESRCH | libc::ENOENT | libc::ENODEV)) {
            return Ok(());
        }
        self.check(index, result, false, |link| {
            format!("deleting route {dest} via {link}")
        })
        .await
    }

    /// Unicast routes of the main table currently out of this link, both
    /// families, as masked networks. This includes the connected-network
    /// routes the kernel adds for the link's own addresses.
    pub async fn routes_via(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        let mut found = Vec::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for request in dumps {
            let family = request.header.address_family;
            let request = self.handle.route().get(request);
            let routes: Result<Vec<RouteMessage>, _> = request.execute().try_collect().await;
            let routes = self
                .check(index, routes, false, |link| {
                    format!("listing routes via {link}")
                })
                .await?;
            found.extend(routes.iter().filter_map(|r| route_out_of(r, family, index)));
        }
        Ok(found)
    }

    /// Deletes the link; Ok when it is already gone.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let result = self.handle.link().del(index).execute().await;
        if result.as_ref().err().and_then(errno) == Some(libc::ENODEV) {
            return Ok(());
        }
        self.check(index, result, false, |link| format!("deleting {link}"))
            .await
    }

    async fn request_address(&self, index: u32, addr: IpNetwork) -> Result<(), rtnetlink::Error> {
        let mut request = self.handle.address().add(index, addr.ip(), addr.prefix());
        if addr.is_ipv6() {
            let message = request.message_mut();
            // Old kernels only read the header byte; new ones prefer IFA_FLAGS.
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await
    }

    async fn link_name(&self, index: u32) -> Option<String> {
        let mut links = pin!(self.handle.link().get().match_index(index).execute());
        let link = links.try_next().await.ok()??;
        link.attributes
            .into_iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })
    }

    /// Turns a failure into an error naming the link the way `ip` shows it.
    /// The name is only fetched on failure, to keep success at one round trip.
    async fn check<T>(
        &self,
        index: u32,
        result: Result<T, rtnetlink::Error>,
        ipv6_address: bool,
        action: impl FnOnce(&str) -> String,
    ) -> Result<T, NetlinkError> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let link = match self.link_name(index).await {
            Some(name) => name,
            None => format!("link #{index}"),
        };
        Err(classify(action(&link), error, ipv6_address))
    }
}

/// Which of `prefixes` need a route out of the link: those not covered by
/// the connected network of one of `interface_addrs` (100.64.0.2/32 is
/// covered by address 100.64.0.1/24, 100.65.2.0/24 is not). Every route goes
/// out of the same link, so a prefix inside another listed prefix would not
/// change where any packet goes; it is dropped too, as are exact duplicates.
/// Host bits are cleared, and the first occurrence's order is kept.
pub fn prefixes_needing_routes(
    interface_addrs: &[IpNetwork],
    prefixes: &[IpNetwork],
) -> Vec<IpNetwork> {
    prefixes::needing_routes(interface_addrs, prefixes)
}

/// IFNAMSIZ: the longest link name is one byte shorter, for the NUL.
const IFNAMSIZ: usize = 16;

fn hint_suffix(hint: Option<&'static str>) -> String {
    hint.map(|hint| format!(" ({hint})")).unwrap_or_default()
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

fn classify(action: String, error: rtnetlink::Error, ipv6_address: bool) -> NetlinkError {
    let Some(code) = errno(&error) else {
        return NetlinkError::Protocol {
            action,
            detail: error.to_string(),
        };
    };
    let hint = match code {
        libc::EPERM => return NetlinkError::NotPermitted { action },
        libc::ENETDOWN => Some("the link must be up first"),
        libc::EAFNOSUPPORT => Some("IPv6 is disabled in this kernel"),
        libc::EACCES if ipv6_address => {
            Some("IPv6 is disabled on this link, see net.ipv6.conf.<link>.disable_ipv6")
        }
        // The kernel drops IPv6 from a link whose MTU is below the minimum.
        libc::EINVAL if ipv6_address => Some("IPv6 needs a link MTU of at least 1280"),
        _ => None,
    };
    NetlinkError::Kernel {
        action,
        error: io::Error::from_raw_os_error(code),
        hint,
    }
}

/// Netlink cannot change per-link IPv6 sysctls (the kernel only accepts the
/// token and address generation mode there), so this goes through procfs.
fn enable_ipv6(link: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "0")
}

/// The network of `net` with host bits cleared: 100.65.2.7/24 is 100.65.2.0/24.
pub fn masked(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

fn covers(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

fn route_message(index: u32, dest: IpNetwork) -> RouteMessage {
    let mut message = match dest {
        IpNetwork::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix())
            .build(),
        IpNetwork::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), net.prefix())
            .build(),
    };
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.scope = RouteScope::Link;
    message.header.protocol = RouteProtocol::Static;
    message.header.kind = RouteType::Unicast;
    message.attributes.push(RouteAttribute::Oif(index));
    message
}

/// The destination of `route` if it is a main-table unicast route of
/// `family` out of link `index`. The family is checked because a kernel
/// without IPv6 answers an IPv6 dump with routes of every family.
fn route_out_of(route: &RouteMessage, family: AddressFamily, index: u32) -> Option<IpNetwork> {
    if route.header.address_family != family || route.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(route.header.table);
    let mut oif = None;
    let mut dest = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Oif(id) => oif = Some(*id),
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dest = Some(IpAddr::V6(*ip)),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) {
        return None;
    }
    // A default route carries no destination attribute.
    let dest = dest.unwrap_or(match family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    IpNetwork::new(dest, route.header.destination_prefix_length)
        .ok()
        .map(masked)
}

mod prefixes;

#[cfg(test)]
mod tests {
    use super::*;

    fn needing(addrs: &[&str], prefixes: &[&str]) -> Vec<String> {
        let parse =
            |list: &[&str]| -> Vec<IpNetwork> { list.iter().map(|s| s.parse().unwrap()).collect() };
        prefixes_needing_routes(&parse(addrs), &parse(prefixes))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn prefixes_inside_a_connected_network_need_no_route() {
        let addrs = ["100.64.0.1/24", "fd64::1/64"];
        let prefixes = ["100.64.0.2/32", "100.65.2.0/24", "fd64::2/128", "fd65::/64"];
        assert_eq!(needing(&addrs, &prefixes), ["100.65.2.0/24", "fd65::/64"]);
        assert_eq!(needing(&addrs, &["100.64.0.0/16"]), ["100.64.0.0/16"]);
        assert_eq!(needing(&["0.0.0.0/0"], &["::/0", "fd00::/8"]), ["::/0"]);
        assert!(needing(&["100.64.0.1/32"], &["100.64.0.1/32"]).is_empty());
        assert_eq!(
            needing(&["100.64.0.1/32"], &["100.64.0.2/32"]),
            ["100.64.0.2/32"]
        );
    }

    #[test]
    fn duplicates_and_nested_prefixes_are_dropped_and_host_bits_cleared() {
        let prefixes = [
            "100.65.2.7/32",
            "100.65.2.0/24",
            "100.65.2.0/24",
            "100.65.3.9/24",
            "100.66.0.1/32",
            "100.66.0.1/32",
            "fd65::9/64",
        ];
        assert_eq!(
            needing(&["100.64.0.1/24"], &prefixes),
            [
                "100.65.2.0/24",
                "100.65.3.0/24",
                "100.66.0.1/32",
                "fd65::/64"
            ]
        );
    }

    #[test]
    fn errors_read_well() {
        let error = NetlinkError::Kernel {
            action: "adding route 100.65.2.0/24 via dhtun0".into(),
            error: io::Error::from_raw_os_error(libc::EEXIST),
            hint: None,
        };
        assert_eq!(
            error.to_string(),
            "netlink: adding route 100.65.2.0/24 via dhtun0: File exists (os error 17)"
        );
        assert_eq!(error.raw_os_error(), Some(libc::EEXIST));
        let denied = NetlinkError::NotPermitted {
            action: "bringing dhtun0 up".into(),
        };
        assert!(denied.to_string().contains("CAP_NET_ADMIN"));
    }

    #[test]
    fn open_needs_a_runtime() {
        assert!(matches!(Netlink::open(), Err(NetlinkError::Open(_))));
    }
}
