//! End-to-end tests of `dhtun up` between two network namespaces.
//!
//! Each test builds its own namespaces (names carry a test tag and the pid), runs the real daemon
//! binary inside them with `ip netns exec`, and removes everything on drop, also when it fails.
//! Without root they print SKIPPED and pass, unless DHTUN_REQUIRE_NETNS=1 (CI), where they fail.
//!
//! By topic: `traffic` (packets and streams through the tunnel, spoofed sources), `lifecycle`
//! (down, reload, an underlay that goes away and comes back), `errors` (what an operator reads
//! when something is wrong).

#[path = "../common/mod.rs"]
mod common;

mod errors;
mod lifecycle;
mod traffic;
mod userspace;
