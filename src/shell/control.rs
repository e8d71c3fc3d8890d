//! The control socket `/run/dhtun/IFACE.sock`: the daemon's side (accept, read one request,
//! hand it to the main loop, write the answer) and the client side the CLI uses.
//!
//! The protocol is one request word per connection (`status`, `down`, `reload`), answered with
//! one text body, then the connection closes. `down` is answered only after the interface and
//! routes are gone, so `dhtun down` returning means the daemon has cleaned up.

use crate::core::limits::{CONTROL_CONNECTIONS, CONTROL_REQUEST_BYTES};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Where control sockets live; `DHTUN_RUN_DIR` overrides it. Root's are in /run/dhtun; another
/// user's (a rootless userspace-mode daemon) in `$XDG_RUNTIME_DIR/dhtun`, or /tmp/dhtun-UID
/// without one, where `bind` checks the directory is the user's own.
pub fn run_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DHTUN_RUN_DIR") {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/dhtun");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("dhtun"),
        None => PathBuf::from(format!("/tmp/dhtun-{uid}")),
    }
}

pub fn socket_path(interface: &str) -> PathBuf {
    run_dir().join(format!("{interface}.sock"))
}

/// How long a client waits for a daemon that accepted its connection to answer; `down` waits
/// longer because it includes tearing down routes and the interface.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon waits for a connected client to send its request.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon tries to hand a client its answer.
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the socket of `interface`, refusing when a live daemon already holds it.
    pub fn bind(interface: &str) -> anyhow::Result<Self> {
        let dir = run_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("creating control directory {}: {e}", dir.display()))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        // Another user's directory (in a shared /tmp) would let them take our socket's place.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir)?);
        if uid != 0 && owner != uid {
            anyhow::bail!(
                "control directory {} belongs to user {owner}, not to us (user {uid}); \
                 set DHTUN_RUN_DIR to a directory of our own",
                dir.display()
            );
        }
        let path = socket_path(interface);
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "a dhtun daemon for {interface} is already running (control socket {} answers)",
                path.display()
            );
        }
        // Nobody answers: a stale socket left by a daemon that was killed.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| anyhow::anyhow!("binding control socket {}: {e}", path.display()))?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        Ok(Self { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the task is aborted. Requests go to the main loop through
    /// `commands`, a bounded channel: when it is full the request is refused, not queued.
    pub fn spawn(self, commands: mpsc::Sender<ControlCommand>) -> tokio::task::JoinHandle<()> {
        let permits = Arc::new(Semaphore::new(CONTROL_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = self.listener.accept().await else {
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    let _ = stream.write_all(b"error: busy\n").await;
                    continue;
                };
                let commands = commands.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let answer = serve(&mut stream, &commands).await;
                    // A client that stops reading must not keep its slot for ever.
                    let _ = tokio::time::timeout(SERVER_WRITE_TIMEOUT, async {
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                });
            }
        })
    }
}

async fn serve(
    stream: &mut tokio::net::UnixStream,
    commands: &mpsc::Sender<ControlCommand>,
) -> String {
    let mut buf = [0u8; CONTROL_REQUEST_BYTES];
    let read = tokio::time::timeout(SERVER_READ_TIMEOUT, stream.read(&mut buf)).await;
    let Ok(Ok(n)) = read else {
        return "error: no request received\n".into();
    };
    let request = match std::str::from_utf8(&buf[..n]).map(str::trim) {
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
        return "error: daemon busy, try again\n".into();
    }
    answer
        .await
        .unwrap_or_else(|_| "error: daemon stopped before answering\n".into())
}

impl Drop for ControlServer {
    /// The socket file goes with the server, on every path out of the daemon.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `request` to the daemon of `interface` and returns its answer.
pub fn request(interface: &str, request: &str) -> anyhow::Result<String> {
    request_if_running(interface, request)?.ok_or_else(|| {
        let path = socket_path(interface);
        if path.exists() {
            anyhow::anyhow!(
                "no dhtun daemon is running for {interface} (its control socket {} is left \
                 from a daemon that was killed)",
                path.display()
            )
        } else {
            anyhow::anyhow!(
                "no dhtun daemon is running for {interface} (no control socket at {})",
                path.display()
            )
        }
    })
}

/// Like `request`, but None when no daemon is running for `interface`: no socket, or one left
/// by a daemon that was killed, which nobody answers.
pub fn request_if_running(interface: &str, request: &str) -> anyhow::Result<Option<String>> {
    let path = socket_path(interface);
    let connected = std::os::unix::net::UnixStream::connect(&path);
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot reach {}: permission denied (the control socket is root-only)",
            path.display()
        ),
        Err(e) => anyhow::bail!("connecting to {}: {e}", path.display()),
    };
    let timeout = if request == "down" {
        DOWN_TIMEOUT
    } else {
        CLIENT_TIMEOUT
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| anyhow::anyhow!("reading the answer of the {interface} daemon: {e}"))?;
    if let Some(error) = answer.strip_prefix("error: ") {
        anyhow::bail!("{interface}: {}", error.trim());
    }
    Ok(Some(answer))
}

/// Interfaces with a control socket in the run directory, sorted by name.
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sock"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}
