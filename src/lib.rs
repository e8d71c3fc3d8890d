//! dhtun: a layer-3 VPN. Packets read from a TUN interface are encrypted with Noise and sent over
//! UDP straight to peers, through fixed-size packet rings, so memory stays constant at any load.
//!
//! `core` decides everything and does no I/O; `shell` does the I/O; `config` reads the config
//! file of the contract; `manual` renders the man pages; `onboarding` prints the `[[peer]]`
//! block that adds this node to another.

pub mod config;
pub mod core;
pub mod manual;
pub mod onboarding;
pub mod shell;
