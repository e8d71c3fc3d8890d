//! Private DHT records end to end: `dhtun up` daemons in network namespaces with `[dht]
//! network_secret_file`, on the private "internet" of tests/discovery.rs (a hub namespace whose
//! only DHT node is `dhtun dht-node`). A member finds its peer and connects; the time to the
//! first packet is measured next to a public-mode pair in the same run and the same lab.
//!
//! Same policy as tests/discovery.rs: without root these print SKIPPED and pass, unless
//! DHTUN_REQUIRE_NETNS=1 (CI), where they fail.

mod common;
#[allow(dead_code)]
mod discovery_support;

use std::time::Duration;

use common::{loud, Lab, Node};
use discovery_support::{hub_node, start_and_ping, start_with_config_and_ping};

/// `me`'s DHT config (see `dht_config_text`) with the network secret in `secret_file`.
fn private_config(lab: &Lab, me: &Node, peer: &Node, secret_file: &str) -> String {
    let text = lab.dht_config_text(me, &[(peer, &[])], &[&hub_node()]);
    let dht = "server_mode = true\n";
    if !text.contains(dht) {
        lab.fail(format!(
            "the lab's DHT config has no {dht:?} to add to: {text}"
        ));
    }
    text.replacen(
        dht,
        &format!("{dht}network_secret_file = \"{secret_file}\"\n"),
        1,
    )
}

/// The time from `dhtun up` of one peer to its first echo reply from another that published
/// before, for a public pair, then a private pair, then another public pair, in one lab. Each
/// pair joins a DHT with two more nodes than the one before, which slows mainline's bootstrap a
/// little, so the private pair is measured between two public ones. Prints the three; asserts
/// that each found its peer through the DHT (private: from a sealed record) and that nothing
/// was refused. A timed assertion would fail on a loaded machine: the figures are for reading,
/// the 10 s limit of each ping is the bound.
#[test]
fn private_peers_find_each_other_as_fast_as_public_ones() {
    if !common::netns_available("private_peers_find_each_other_as_fast_as_public_ones") {
        return;
    }
    let (mut lab, _hub, nodes) = Lab::hub("pv", &[1, 2, 3, 4, 5, 6], 51820);
    let (a, b, c, d, e, f) = (
        &nodes[0], &nodes[1], &nodes[2], &nodes[3], &nodes[4], &nodes[5],
    );
    let secret = lab.genkey();
    let secret_file = lab.write_file("net.secret", &format!("{secret}\n"));
    let secret_file = secret_file.display().to_string();

    // Public: A publishes, B starts and pings A.
    lab.up_dht(a, &[(b, &[])], &[&hub_node()]);
    lab.wait_published(&a.iface);
    let (public, public_tries) = start_and_ping(&mut lab, b, &[(a, &[])], a);

    // Private: C publishes, D starts and pings C.
    let text = private_config(&lab, c, d, &secret_file);
    let config = lab.write_file(&format!("{}.toml", c.iface), &text);
    lab.start_daemon(&c.ns, &c.iface, &config);
    lab.wait_ready(&c.iface, &c.v4);
    lab.wait_published(&c.iface);
    let text = private_config(&lab, d, c, &secret_file);
    let (private, private_tries) = start_with_config_and_ping(&mut lab, d, &text, c);

    // Public again: E publishes, F starts and pings E.
    lab.up_dht(e, &[(f, &[])], &[&hub_node()]);
    lab.wait_published(&e.iface);
    let (public_after, after_tries) = start_and_ping(&mut lab, f, &[(e, &[])], e);

    for (me, peer, private) in [(b, a, false), (d, c, true), (f, e, false)] {
        let status = lab.status(&me.iface);
        let view = lab.peer_status(&status, &peer.public);
        if view["endpoint_source"] != "dht" {
            lab.fail(format!(
                "{} should have found its peer in the DHT: {view}",
                me.iface
            ));
        }
        let dht = lab.dht_status(&status);
        if dht["private"] != private || dht["records_ignored"] != 0 {
            lab.fail(format!(
                "{}: expected private = {private} and nothing refused: {dht}",
                me.iface
            ));
        }
    }

    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    loud(&format!(
        "\n************************************************************\n\
         time to first packet, `dhtun up` of B to its first echo reply (same lab, same run):\n\
         public records:  {} ms ({public_tries} ping runs), first pair\n\
         private records: {} ms ({private_tries} ping runs), second pair\n\
         public records:  {} ms ({after_tries} ping runs), third pair\n\
         ({build}; hub + 6 peer namespaces)\n\
         ************************************************************\n",
        public.as_millis(),
        private.as_millis(),
        public_after.as_millis()
    ));
    assert!(private < Duration::from_secs(10));
}
