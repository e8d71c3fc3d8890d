//! End-to-end tests of `dhtun up` between two network namespaces.
//!
//! Each test builds its own namespaces (names carry a test tag and the pid), runs the real daemon
//! binary inside them with `ip netns exec`, and removes everything on drop, also when it fails.
//! Without root they print SKIPPED and pass, unless DHTUN_REQUIRE_NETNS=1 (CI), where they fail.
//!
//! By topic: `traffic` (packets and streams through the tunnel, spoofed sources), `lifecycle`
//! (down, reload, an underlay that goes away and comes back), `restart` (a peer killed and started
//! again), `linkflap` (the interface taken down and up), `errors` (what an operator reads
//! when something is wrong), `control` (the control socket: per namespace, privileged callers
//! only, never silenced by idle connections), `full_tunnel` (a default route
//! through a peer), `files` (config and key files that are FIFOs or devices), `scale` (the
//! most allowed_ips).

#[path = "../common/mod.rs"]
mod common;

mod control;
mod errors;
mod files;
mod full_tunnel;
mod lifecycle;
mod linkflap;
mod restart;
mod scale;
mod traffic;
mod userspace;
