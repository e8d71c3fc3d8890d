//! The control socket: how `dhtun status`, `reload` and `down` reach the daemon of an interface.
//!
//! Each daemon listens on an abstract unix socket, `@dhtun/IFACE`. Abstract sockets belong to a
//! network namespace, so the CLI run in a namespace finds that namespace's daemon and no other,
//! two daemons named `dhtun0` in two namespaces never meet, and a killed daemon leaves nothing
//! behind. Abstract sockets have no file permissions: the daemon checks every peer's
//! credentials instead (root, or CAP_NET_ADMIN in the daemon's user namespace).
//!
//! A path socket is kept beside it, for scripts that use the path: `/run/dhtun/IFACE.sock` in
//! the initial network namespace, or `DHTUN_RUN_DIR/IFACE.sock` in any namespace when that
//! variable is set. The CLI uses the path only when `DHTUN_RUN_DIR` is set.
//!
//! The protocol is one request word per connection (`status`, `down`, `reload`), answered with
//! one text body, then the connection closes. An answer starting `error: ` is a refusal. `down`
//! is answered only after the interface and routes are gone, so `dhtun down` returning means
//! the daemon has cleaned up.

mod address;
mod client;
mod peer;
mod server;

pub use address::{interfaces, run_dir};
pub use client::{request, request_if_running, Busy, UntrustedHolder};
pub use server::{ControlServer, ControlTask};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    Status,
    Down,
    Reload,
}

/// A request for the main loop, with the channel its answer goes back on.
pub struct ControlCommand {
    pub request: ControlRequest,
    pub reply: oneshot::Sender<String>,
}
