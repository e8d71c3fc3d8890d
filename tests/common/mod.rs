//! Shared harness for the network-namespace integration tests.
//!
//! Every test builds its own `Lab`: uniquely named namespaces (tag + pid), a veth pair on the
//! underlay 198.18.0.0/24, and `dhtun up` daemons started with `ip netns exec`. Dropping the `Lab`
//! (also while unwinding from a failed assertion) stops the daemons, kills anything left in the
//! namespaces and deletes them, which also deletes the veth pair.
//!
//! Addresses used: underlay 198.18.0.1/.2, overlay 100.64.0.1/.2 and fd64::1/::2, extra subnets
//! in 100.65.0.0/16 and 100.99.0.0/16. Nothing outside the namespaces is ever contacted.
//!
//! The discovery tests use a hub topology instead of a veth pair (`Lab::hub`), laid out as
//! netns-scripts/lab.sh lays out its lab: a hub namespace whose bridge carries 198.18.0.254/24
//! and runs `dhtun dht-node`, and peer namespaces joined to that bridge (198.18.0.<host>/24),
//! whose daemons know each other by public key only.
//!
//! Each submodule owns one part (the lab, configs, daemons, status, namespace commands, the hub,
//! processes, /proc figures, byte streams, transfers); the items tests use are re-exported here.
#![allow(dead_code)]

use std::time::Duration;

mod config;
mod daemon;
mod hub;
mod lab;
mod net;
mod netns;
mod process;
mod procfs;
mod routed;
mod status;
mod stream;
pub mod transfer;

// Every test binary compiles the whole harness but uses only part of it, so unused items
// (`allow(dead_code)` above) and unused re-exports are expected.
#[allow(unused_imports)]
pub use self::{
    daemon::{daemon_log_level, Daemon},
    hub::{DHT_PORT, HUB_ADDR},
    lab::{cli_in, control_listening, Helper, Lab, Node},
    net::set_int_option,
    netns::{in_netns, is_root, loud, netns_available, netns_required},
    process::{describe, run, run_timeout, try_run_timeout, try_wait_output, wait_output},
    procfs::{netns_udp_counter, proc_memory, udp_port_bound, ProcMemory},
    routed::{DefaultRoute, Routed, INTERNET_V4, INTERNET_V6, ROUTER_FAR_V4},
    status::drops_moved,
    stream::{ByteStream, Fnv64},
};

/// The daemon under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dhtun");

/// How long a daemon may take to come up (interface configured, control socket answering).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM during cleanup.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
