//! The daemon on a hostile underlay, in network namespaces: captured tunnel packets replayed,
//! garbage and handshake floods from a stranger while a transfer runs, and forged transport
//! packets that try to move a peer's endpoint.
//!
//! Two daemons A and B as in tests/netns/ (underlay 198.18.0.1/.2, overlay 100.64.0.1/.2);
//! the flood and forgery tests add a namespace C, a stranger with no key B knows, on a second
//! veth pair to B (198.18.1.2 -> 198.18.1.1). Everything is removed on drop, also on failure.
//! Same policy as tests/netns/: without root, a loud SKIPPED; with DHTUN_REQUIRE_NETNS=1, a
//! failure instead.
//!
//! By attack: `replay`, `flood`, `budget` (floods from thousands of addresses), `forgery`; the
//! status deltas they share are here.

#[path = "../common/mod.rs"]
mod common;
#[path = "../hostile_support/mod.rs"]
mod hostile_support;

mod budget;
mod flood;
mod forgery;
mod replay;

use std::time::{Duration, Instant};

use common::Lab;
use serde_json::Value;

/// The difference of a `drops` counter of an interface between two statuses.
#[track_caller]
fn drops_delta(lab: &Lab, before: &Value, after: &Value, name: &str) -> u64 {
    lab.drop_counter(after, name)
        .saturating_sub(lab.drop_counter(before, name))
}

/// The difference of peer `key`'s `drops` counter between two statuses.
#[track_caller]
fn peer_drops_delta(lab: &Lab, before: &Value, after: &Value, key: &str, name: &str) -> u64 {
    let count = |st: &Value| {
        lab.peer_status(st, key)["drops"][name]
            .as_u64()
            .unwrap_or_else(|| lab.fail(format!("peer {key} has no numeric drops.{name}")))
    };
    count(after).saturating_sub(count(before))
}

/// Polls B's status (bounded) until `done` says the daemon has counted what was sent.
fn wait_for_status(
    lab: &Lab,
    iface: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let st = lab.status(iface);
        if done(&st) || Instant::now() >= deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
