//! Policy routing over rtnetlink: routes in a table other than main, the full tunnel's rules,
//! and the dumps that tell which tables, marks and priorities are taken and which rules are
//! dhtun's (see `shell::route_plan`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage, RulePortRange,
};
use rtnetlink::packet_route::{AddressFamily, IpProtocol};
use rtnetlink::{IpVersion, RouteMessageBuilder};

use super::{classify, errno, masked, route_message, Netlink, NetlinkError};
use crate::shell::route_plan::{InUse, Route, Rule, RuleMatch, MAIN_TABLE, RULE_PROTOCOL};

/// A rule of a dhtun daemon as the kernel lists it.
#[derive(Debug, Clone)]
pub struct OwnRule {
    pub priority: u32,
    pub table: u32,
    pub message: RuleMessage,
}

impl Netlink {
    /// Adds `route` out of the link, in its table. When the route is there already: Ok in a
    /// table the user named, an error (EEXIST) when `exclusive`, in a table dhtun picked, where
    /// it means something else uses the table.
    pub async fn add_table_route(
        &self,
        index: u32,
        route: Route,
        exclusive: bool,
    ) -> Result<(), NetlinkError> {
        let dest = masked(route.dest);
        let result = self
            .handle
            .route()
            .add(table_route_message(index, route))
            .execute()
            .await;
        if !exclusive && result.as_ref().err().and_then(errno) == Some(libc::EEXIST) {
            return Ok(());
        }
        self.check(index, result, false, |link| {
            format!("adding route {dest} via {link} in table {}", route.table)
        })
        .await
    }

    /// Removes a route added by [`Netlink::add_table_route`]; Ok when it is gone already.
    pub async fn del_table_route(&self, index: u32, route: Route) -> Result<(), NetlinkError> {
        let dest = masked(route.dest);
        let request = self.handle.route().del(table_route_message(index, route));
        let result = request.execute().await;
        if matches!(
            result.as_ref().err().and_then(errno),
            Some(libc::ESRCH | libc::ENOENT | libc::ENODEV)
        ) {
            return Ok(());
        }
        self.check(index, result, false, |link| {
            format!("deleting route {dest} via {link} in table {}", route.table)
        })
        .await
    }

    /// Adds `rule`. The same rule there already is an error (EEXIST): the priority was picked
    /// free, so another daemon or tool holds it, and the rule must not be taken for ours.
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = rule_message(rule);
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(classify(
                format!("adding rule {}", describe(rule)),
                e,
                false,
            )),
        }
    }

    /// Removes a rule added by [`Netlink::add_rule`]; Ok when it is gone already.
    pub async fn del_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        self.del_rule_message(rule_message(rule))
            .await
            .map_err(|e| match e {
                NetlinkError::Kernel { error, hint, .. } => NetlinkError::Kernel {
                    action: format!("deleting rule {}", describe(rule)),
                    error,
                    hint,
                },
                other => other,
            })
    }

    /// Removes the rule `message` describes (as built or as dumped); Ok when it is gone.
    pub async fn del_rule_message(&self, message: RuleMessage) -> Result<(), NetlinkError> {
        let result = self.handle.rule().del(message).execute().await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
            Err(e) => Err(classify("deleting a rule".to_string(), e, false)),
        }
    }

    /// The rules of dhtun daemons (protocol `RULE_PROTOCOL`), both families.
    pub async fn dhtun_rules(&self) -> Result<Vec<OwnRule>, NetlinkError> {
        let mut found = Vec::new();
        for message in self.all_rules().await? {
            let facts = RuleFacts::of(&message);
            if facts.protocol == Some(RULE_PROTOCOL) {
                found.push(OwnRule {
                    priority: facts.priority,
                    table: facts.table,
                    message,
                });
            }
        }
        Ok(found)
    }

    /// The tables that hold at least one route, both families.
    pub async fn tables_with_routes(&self) -> Result<BTreeSet<u32>, NetlinkError> {
        let mut tables = BTreeSet::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for mut request in dumps {
            request.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(|e| classify("listing routes".to_string(), e, false))?;
            tables.extend(routes.iter().map(route_table));
        }
        Ok(tables)
    }

    /// The tables, marks and priorities in use, to pick free ones.
    pub async fn policy_in_use(&self) -> Result<InUse, NetlinkError> {
        let mut in_use = InUse {
            tables: self.tables_with_routes().await?,
            ..InUse::default()
        };
        for message in self.all_rules().await? {
            let facts = RuleFacts::of(&message);
            in_use.tables.insert(facts.table);
            in_use.priorities.insert(facts.priority);
            if let Some(mark) = facts.mark {
                in_use.marks.insert(mark);
            }
        }
        Ok(in_use)
    }

    async fn all_rules(&self) -> Result<Vec<RuleMessage>, NetlinkError> {
        let mut found = Vec::new();
        let versions = [
            (IpVersion::V4, AddressFamily::Inet),
            (IpVersion::V6, AddressFamily::Inet6),
        ];
        for (version, family) in versions {
            let rules: Vec<RuleMessage> = match self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
            {
                Ok(rules) => rules,
                // A kernel without IPv6 has no IPv6 rules to list.
                Err(e) if errno(&e) == Some(libc::EAFNOSUPPORT) => continue,
                Err(e) => return Err(classify("listing routing rules".to_string(), e, false)),
            };
            found.extend(rules.into_iter().filter(|r| r.header.family == family));
        }
        Ok(found)
    }
}

/// What a dumped rule says about itself.
struct RuleFacts {
    priority: u32,
    table: u32,
    mark: Option<u32>,
    protocol: Option<u8>,
}

impl RuleFacts {
    fn of(message: &RuleMessage) -> Self {
        let mut facts = Self {
            priority: 0,
            table: u32::from(message.header.table),
            mark: None,
            protocol: None,
        };
        for attribute in &message.attributes {
            match attribute {
                RuleAttribute::Priority(p) => facts.priority = *p,
                RuleAttribute::Table(t) => facts.table = *t,
                RuleAttribute::FwMark(m) => facts.mark = Some(*m),
                RuleAttribute::Protocol(p) => facts.protocol = Some(u8::from(*p)),
                _ => {}
            }
        }
        facts
    }
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn table_route_message(index: u32, route: Route) -> RouteMessage {
    let mut message = route_message(index, masked(route.dest));
    message.header.kind = RouteType::Unicast;
    message.header.protocol = RouteProtocol::Static;
    set_table(
        &mut message.header.table,
        &mut message.attributes,
        route.table,
    );
    message
}

/// Tables above 255 only fit the attribute; iproute2 then leaves the header's byte unspecified.
fn set_table(header: &mut u8, attributes: &mut Vec<RouteAttribute>, table: u32) {
    attributes.retain(|a| !matches!(a, RouteAttribute::Table(_)));
    match u8::try_from(table) {
        Ok(small) => *header = small,
        Err(_) => {
            *header = RouteHeader::RT_TABLE_UNSPEC;
            attributes.push(RouteAttribute::Table(table));
        }
    }
}

fn rule_message(rule: &Rule) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = if rule.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    message.header.action = RuleAction::ToTable;
    let attributes = &mut message.attributes;
    attributes.push(RuleAttribute::Priority(rule.priority));
    attributes.push(RuleAttribute::Protocol(RouteProtocol::from(RULE_PROTOCOL)));
    let table = match rule.what {
        RuleMatch::MainWithoutDefault => {
            attributes.push(RuleAttribute::SuppressPrefixLen(0));
            MAIN_TABLE
        }
        RuleMatch::OwnPort(port) => {
            attributes.push(RuleAttribute::IpProtocol(IpProtocol::Udp));
            attributes.push(RuleAttribute::SourcePortRange(RulePortRange {
                start: port,
                end: port,
            }));
            MAIN_TABLE
        }
        RuleMatch::Unmarked { mark, table } => {
            message.header.flags |= RuleFlags::Invert;
            attributes.push(RuleAttribute::FwMark(mark));
            table
        }
    };
    match u8::try_from(table) {
        Ok(small) => message.header.table = small,
        Err(_) => {
            message.header.table = RouteHeader::RT_TABLE_UNSPEC;
            attributes.push(RuleAttribute::Table(table));
        }
    }
    message
}

/// A rule the way `ip rule` shows it, for error messages.
fn describe(rule: &Rule) -> String {
    let family = if rule.v6 { "-6 " } else { "" };
    let what = match rule.what {
        RuleMatch::MainWithoutDefault => "lookup main suppress_prefixlength 0".to_string(),
        RuleMatch::OwnPort(port) => format!("ipproto udp sport {port} lookup main"),
        RuleMatch::Unmarked { mark, table } => format!("not fwmark {mark} lookup {table}"),
    };
    format!("{family}{}: {what}", rule.priority)
}
