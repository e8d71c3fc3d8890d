//! The daemon's side of the control socket: binding, and serving connections on a thread of its
//! own, so that no control work ever runs on the data path's thread.
//!
//! Every connection gets deadlines: its request within REQUEST_DEADLINE, its answer written
//! within ANSWER_DEADLINE. At most CONTROL_CLIENTS connections are held at once; when all are
//! taken, the one that has waited longest for its request is closed to make room. So idle
//! connections, however many, cannot keep `dhtun status` out, and accepting never stops (a
//! listen backlog full of idle connections would stall the CLI's connect).

use super::address::{self, DaemonPath};
use super::{client, peer, ControlCommand, ControlRequest};
use crate::core::limits::{CONTROL_CLIENTS, CONTROL_REQUEST_BYTES};
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinSet};

/// How long a connected client has to send its request; the CLI sends it at once.
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);
/// How long the daemon tries to hand a client its answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// At shutdown, how long the daemon waits for its sockets to close, and for answers under way
/// (above all `down`'s "stopped") to go out once it has finished.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// The most the serving thread waits at shutdown for connections still being answered. `down`'s
/// is answered only after the teardown, however long that takes: it must not be cut earlier,
/// or `dhtun down` would return before the interface is gone. The process exits soon after.
const FINISH_DEADLINE: Duration = Duration::from_secs(60);
/// Connections the kernel queues before the daemon accepts them. Small, so that a newcomer
/// waits behind few idle connections (each of which the daemon must accept before closing it),
/// not behind the thousands the default (net.core.somaxconn) lets in.
const LISTEN_BACKLOG: i32 = 16;
/// A pause after a failed accept (no descriptors left, say), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// The bound sockets of one interface: the abstract one, and the path beside it where there is
/// one (see `address::daemon_path`).
pub struct ControlServer {
    /// None when an untrusted process holds the abstract name: `fallback` is served instead.
    listener: Option<StdListener>,
    path: Option<(StdListener, PathGuard)>,
    fallback: Option<(StdListener, PathGuard)>,
}

impl ControlServer {
    /// Binds the sockets of `interface`, refusing when a live daemon already holds them.
    pub fn bind(interface: &str) -> anyhow::Result<Self> {
        let name = address::abstract_name(interface);
        let mut fallback = None;
        let listener = match StdListener::bind_addr(&address::abstract_address(&name)?) {
            Ok(listener) => Some(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => match untrusted_holder(&name) {
                None => anyhow::bail!(
                    "a dhtun daemon for {interface} is already running in this network \
                     namespace (control socket @{name} answers)"
                ),
                Some(holder) => {
                    // A squatter must not keep root's daemon from starting: serve a path only
                    // root can reach, which the CLI tries when it finds the name so held.
                    let path = match address::daemon_path(interface) {
                        DaemonPath::Required(_) if std::env::var_os("DHTUN_RUN_DIR").is_some() => {
                            None
                        }
                        _ => address::fallback_path(interface),
                    };
                    let where_ = path
                        .as_ref()
                        .map_or_else(|| "its path only".to_string(), |p| p.display().to_string());
                    tracing::warn!(
                        "the control socket @{name} of this network namespace is taken by \
                         {holder}, not a dhtun daemon run by root; serving the control \
                         socket at {where_} instead"
                    );
                    if let Some(path) = path {
                        fallback = Some(bind_private_path(interface, path)?);
                    }
                    None
                }
            },
            Err(e) => anyhow::bail!("binding control socket @{name}: {e}"),
        };
        let path = match address::daemon_path(interface) {
            DaemonPath::Required(path) => Some(bind_path(interface, path)?),
            DaemonPath::IfFree(path) if answers(&path) => {
                tracing::info!(
                    "control socket {} is held by the daemon of another network namespace; \
                     this one is reached at @{name} only",
                    path.display()
                );
                None
            }
            DaemonPath::IfFree(path) => bind_path(interface, path)
                .inspect_err(|e| tracing::info!("no control socket path: {e:#}"))
                .ok(),
            DaemonPath::None => None,
        };
        Ok(Self {
            listener,
            path,
            fallback,
        })
    }

    /// Serves connections on a thread of its own until the returned task is stopped. Requests
    /// go to the main loop through `commands`, a bounded channel: when it is full the request
    /// is refused as busy, not queued.
    pub fn spawn(self, commands: mpsc::Sender<ControlCommand>) -> ControlTask {
        let stop = Arc::new(Notify::new());
        let (closed_tx, closed) = std::sync::mpsc::sync_channel(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let thread_stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("dhtun-control".into())
            .spawn(move || {
                lowest_priority();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        runtime.block_on(serve(self, commands, &thread_stop, closed_tx));
                    }
                    Err(e) => tracing::error!("control socket not served: {e}"),
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            tracing::error!("control socket not served: starting its thread: {e}");
        }
        ControlTask { stop, closed, done }
    }
}

/// The thread serving the control socket.
pub struct ControlTask {
    stop: Arc<Notify>,
    closed: std::sync::mpsc::Receiver<()>,
    done: std::sync::mpsc::Receiver<()>,
}

impl ControlTask {
    /// Stops accepting and closes the sockets (the path is removed), so a new daemon for this
    /// interface can start at once. Answers under way still go out until the task is dropped.
    pub fn abort(&self) {
        self.stop.notify_one();
        let _ = self.closed.recv_timeout(DRAIN_DEADLINE);
    }
}

impl Drop for ControlTask {
    /// Lets answers under way (`down`'s "stopped") go out before the process exits.
    fn drop(&mut self) {
        self.abort();
        let _ = self.done.recv_timeout(DRAIN_DEADLINE * 2);
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19, a weight of 15 against the data
/// path's 1024), so that answering the control socket, however busy, waits while packets
/// are to be moved. Threads have a niceness of their own on Linux.
fn lowest_priority() {
    // SAFETY: gettid has no preconditions; setpriority takes integers and only lowers the
    // priority of this thread, which needs no privilege.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if done != 0 {
        tracing::debug!(
            "control thread keeps its priority: {}",
            io::Error::last_os_error()
        );
    }
}

/// Removes the path socket when the server goes, on every way out of the daemon.
struct PathGuard(PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Who holds the abstract name `name`, when it is not a daemon run by root (or by our own
/// user); None when it is. A holder that does not accept within the deadline (a squatter may
/// keep its backlog full) or does not listen at all is not one.
fn untrusted_holder(name: &str) -> Option<String> {
    let stream = address::abstract_address(name)
        .and_then(|a| client::connect_with_deadline(&a, client::CONNECT_DEADLINE));
    match stream.and_then(|stream| peer::credentials(&stream)) {
        Ok((uid, _)) if peer::trusted_daemon(uid) => None,
        Ok((uid, pid)) => Some(format!("pid {pid} (uid {uid})")),
        Err(e) => Some(format!("a process that does not answer ({e})")),
    }
}

/// Binds `path` in a directory of its own that only we may enter (made with mode 0700, or
/// refused when it exists with other owner or permissions).
fn bind_private_path(interface: &str, path: PathBuf) -> anyhow::Result<(StdListener, PathGuard)> {
    use std::os::unix::fs::MetadataExt as _;
    if let Some(dir) = path.parent() {
        address::prepare_dir(dir)
            .map_err(|e| anyhow::anyhow!("creating control directory {}: {e}", dir.display()))?;
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o077 != 0
        {
            anyhow::bail!(
                "control directory {} is not a directory of ours with mode 0700",
                dir.display()
            );
        }
    }
    bind_path(interface, path)
}

fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

fn bind_path(interface: &str, path: PathBuf) -> anyhow::Result<(StdListener, PathGuard)> {
    if let Some(dir) = path.parent() {
        address::prepare_dir(dir)
            .map_err(|e| anyhow::anyhow!("creating control directory {}: {e}", dir.display()))?;
        // A rootless daemon in a shared directory such as /tmp: another user's directory would
        // let them take our socket's place.
        let uid = nix::unistd::geteuid().as_raw();
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir)?);
        if uid != 0 && owner != uid {
            anyhow::bail!(
                "control directory {} belongs to user {owner}, not to us (user {uid}); \
                 set DHTUN_RUN_DIR to a directory of our own",
                dir.display()
            );
        }
    }
    if answers(&path) {
        anyhow::bail!(
            "a dhtun daemon for {interface} is already running (control socket {} answers)",
            path.display()
        );
    }
    // Nobody answers: a stale socket left by a daemon that was killed.
    let _ = std::fs::remove_file(&path);
    let listener = StdListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("binding control socket {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    Ok((listener, PathGuard(path)))
}

/// The accept loop: admits connections until `stop`, then closes the sockets, tells `closed`,
/// and lets the answers under way go out.
async fn serve(
    server: ControlServer,
    commands: mpsc::Sender<ControlCommand>,
    stop: &Notify,
    closed: std::sync::mpsc::SyncSender<()>,
) {
    let ControlServer {
        listener,
        path,
        fallback,
    } = server;
    let (path_listener, guard) = match path {
        Some((listener, guard)) => (Some(listener), Some(guard)),
        None => (None, None),
    };
    let (fallback_listener, fallback_guard) = match fallback {
        Some((listener, guard)) => (Some(listener), Some(guard)),
        None => (None, None),
    };
    let listener = listener.and_then(tokio_listener);
    let path_listener = path_listener.and_then(tokio_listener);
    let fallback_listener = fallback_listener.and_then(tokio_listener);
    let mut connections = Connections::new(commands);
    if listener.is_some() || path_listener.is_some() || fallback_listener.is_some() {
        loop {
            let accepted = tokio::select! {
                _ = stop.notified() => break,
                accepted = accept(listener.as_ref()) => accepted,
                accepted = accept(path_listener.as_ref()) => accepted,
                accepted = accept(fallback_listener.as_ref()) => accepted,
            };
            match accepted {
                Ok((stream, _)) => connections.admit(stream),
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            }
        }
    } else {
        stop.notified().await;
    }
    drop(listener);
    drop(path_listener);
    drop(guard);
    drop(fallback_listener);
    drop(fallback_guard);
    let _ = closed.send(());
    connections.finish().await;
}

/// The std listener as tokio's; None (logged) when that fails.
fn tokio_listener(listener: StdListener) -> Option<UnixListener> {
    let backlog = nix::sys::socket::Backlog::new(LISTEN_BACKLOG);
    if let Err(e) = backlog.and_then(|backlog| nix::sys::socket::listen(&listener, backlog)) {
        tracing::debug!("control socket keeps its listen backlog: {e}");
    }
    let converted = listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener));
    converted
        .inspect_err(|e| tracing::error!("control socket not served: {e}"))
        .ok()
}

async fn accept(
    listener: Option<&UnixListener>,
) -> io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The connections held, with what is needed to pick one to close.
struct Connections {
    tasks: JoinSet<()>,
    held: Vec<Held>,
    commands: mpsc::Sender<ControlCommand>,
}

struct Held {
    accepted_at: Instant,
    /// Still waiting for its request: the kind of connection that may be closed for a new one.
    waiting: Arc<AtomicBool>,
    task: AbortHandle,
}

impl Connections {
    fn new(commands: mpsc::Sender<ControlCommand>) -> Self {
        Self {
            tasks: JoinSet::new(),
            held: Vec::with_capacity(CONTROL_CLIENTS),
            commands,
        }
    }

    /// Checks who connected, makes room, and serves the connection.
    fn admit(&mut self, stream: UnixStream) {
        while self.tasks.try_join_next().is_some() {}
        self.held.retain(|held| !held.task.is_finished());
        let verdict = match stream.peer_cred() {
            Ok(cred) => peer::authorize(cred.uid(), cred.gid(), cred.pid()),
            Err(e) => Err(format!("cannot tell who is asking: {e}")),
        };
        if let Err(why) = verdict {
            return refuse(&stream, &why);
        }
        if self.held.len() >= CONTROL_CLIENTS && !self.close_longest_waiting() {
            return refuse(
                &stream,
                &format!("busy: {CONTROL_CLIENTS} control requests are being answered; try again"),
            );
        }
        // The CLI sends its request right after connecting, so it is usually here already;
        // read now, and such a connection is never the one closed for a newer one.
        let mut request = [0u8; CONTROL_REQUEST_BYTES];
        let early = match stream.try_read(&mut request) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(_) => Some(0),
        };
        let waiting = Arc::new(AtomicBool::new(early.is_none()));
        let task = self.tasks.spawn(serve_connection(
            stream,
            request,
            early,
            waiting.clone(),
            self.commands.clone(),
        ));
        self.held.push(Held {
            accepted_at: Instant::now(),
            waiting,
            task,
        });
    }

    /// Closes the connection that has waited longest for its request; false when none waits.
    fn close_longest_waiting(&mut self) -> bool {
        let oldest = self
            .held
            .iter()
            .enumerate()
            .filter(|(_, held)| held.waiting.load(Ordering::Relaxed))
            .min_by_key(|(_, held)| held.accepted_at)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.held.swap_remove(i).task.abort();
                true
            }
            None => false,
        }
    }

    /// At shutdown: closes the connections that sent nothing and lets the others finish.
    async fn finish(mut self) {
        for held in &self.held {
            if held.waiting.load(Ordering::Relaxed) {
                held.task.abort();
            }
        }
        let _ = tokio::time::timeout(FINISH_DEADLINE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Answers `why` and closes, without blocking the accept loop. The request, when it is there
/// already, is read first: closing a unix socket on unread data resets the connection, and
/// the client would see "connection reset" instead of the reason.
fn refuse(stream: &UnixStream, why: &str) {
    let mut request = [0u8; CONTROL_REQUEST_BYTES];
    let _ = stream.try_read(&mut request);
    let _ = stream.try_write(format!("error: {why}\n").as_bytes());
}

async fn serve_connection(
    mut stream: UnixStream,
    mut request: [u8; CONTROL_REQUEST_BYTES],
    early: Option<usize>,
    waiting: Arc<AtomicBool>,
    commands: mpsc::Sender<ControlCommand>,
) {
    let received = match early {
        Some(n) => n,
        None => tokio::time::timeout(REQUEST_DEADLINE, stream.read(&mut request))
            .await
            .map_or(0, |read| read.unwrap_or(0)),
    };
    waiting.store(false, Ordering::Relaxed);
    let answer = answer(&request[..received], &commands).await;
    // A client that stops reading must not keep its slot for ever.
    let _ = tokio::time::timeout(ANSWER_DEADLINE, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn answer(request: &[u8], commands: &mpsc::Sender<ControlCommand>) -> String {
    if request.is_empty() {
        return format!(
            "error: no request received within {} s\n",
            REQUEST_DEADLINE.as_secs()
        );
    }
    let request = match std::str::from_utf8(request).map(str::trim) {
        Ok("status") => ControlRequest::Status,
        Ok("down") => ControlRequest::Down,
        Ok("reload") => ControlRequest::Reload,
        _ => return "error: unknown request (expected status, down or reload)\n".into(),
    };
    let (reply, answer) = oneshot::channel();
    if commands
        .try_send(ControlCommand { request, reply })
        .is_err()
    {
        return "error: busy: the daemon has other control requests queued; try again\n".into();
    }
    answer
        .await
        .unwrap_or_else(|_| "error: daemon stopped before answering\n".into())
}
