//! The I/O shell: the TUN device, the UDP socket, netlink, the control socket and signals. It
//! moves bytes and time into the core and carries out what the core answers; it makes no
//! protocol decisions of its own.

pub mod config_read;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dht;
pub mod dht_node;
pub mod discovery;
pub mod linkwatch;
pub mod metrics;
pub mod netlink;
pub mod policy_claim;
pub mod privileges;
pub mod reload;
pub mod route_plan;
pub mod status;
pub mod timer;
pub mod tun;
pub mod udp;
pub mod userspace;
