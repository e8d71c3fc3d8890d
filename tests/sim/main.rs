//! Deterministic multi-node simulation of the sans-IO core.
//!
//! Several `Device`s talk over an in-memory underlay with seeded loss, duplication, reordering
//! and latency, driven by a virtual clock. Nothing here reads a real clock or a socket, so one
//! seed always gives the same run, and minutes of virtual time pass in milliseconds.
//!
//! Every inner packet an application "writes" carries its sender, receiver and a sequence
//! number; every packet a node's TUN "reads" is checked byte for byte against what was sent, so
//! the tests can count losses, duplicates and forgeries exactly.
//!
//! Layout: the scenarios by topic (`delivery`, `handshake`, `crossed`, `relay`, `rekey`,
//! `restart`), then the harness (`network`: the nodes, the network between them and the event
//! loop; `observe`: what the tests read back from a run), then packet and key helpers
//! (`packets`).

use std::time::Duration;

use network::NodeId;

mod crossed;
mod delivery;
mod handshake;
mod network;
mod observe;
mod packets;
mod rekey;
mod relay;
mod restart;

const A: NodeId = 0;
const B: NodeId = 1;
const C: NodeId = 2;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
