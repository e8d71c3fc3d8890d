//! The CLI's side of the control socket: connect where the daemon of an interface listens,
//! check that it is root's, send one request and read the answer, saying what went wrong in
//! words (a daemon that refused or is busy says why; that is what the user reads, never the
//! connection reset that can follow it).

use super::address::{self, Place};
use super::peer;
use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the CLI waits for a daemon that accepted its connection to answer; `down` waits
/// longer because it includes tearing down routes and the interface.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the CLI tries to connect: a listen backlog kept full (by a flood of connections
/// from anyone) makes it wait, and past this it says busy instead of hanging.
pub(super) const CONNECT_DEADLINE: Duration = Duration::from_secs(2);
/// The pause between two tries to connect while the backlog is full.
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// The most the CLI reads of one answer: a status of the largest configuration is far less.
const ANSWER_BYTES: u64 = 64 << 20;

/// Sends `request` to the daemon of `interface` and returns its answer.
pub fn request(interface: &str, request: &str) -> anyhow::Result<String> {
    request_if_running(interface, request)?.ok_or_else(|| not_running(interface))
}

/// Like `request`, but None when no daemon is running for `interface`: nobody listens, or the
/// socket file is one left by a daemon that was killed.
pub fn request_if_running(interface: &str, request: &str) -> anyhow::Result<Option<String>> {
    let place = Place::of(interface);
    let stream = match connect(&place) {
        Ok(Some(stream)) => stream,
        Ok(None) => return Ok(None),
        // A backlog kept full may be a squatter's that never accepts: root's daemon, if it
        // runs, is then at the fallback path.
        Err(busy) => match fallback(&place, interface) {
            Some(stream) => return exchange(interface, request, stream).map(Some),
            None => return Err(busy),
        },
    };
    let stream = match trust(&stream, &place)? {
        None => stream,
        Some(holder) => match fallback(&place, interface) {
            Some(stream) => stream,
            None => return Err(holder.into()),
        },
    };
    exchange(interface, request, stream).map(Some)
}

/// The daemon's fallback path (`address::fallback_path`) when `place` is the abstract name and
/// a trusted daemon answers there.
fn fallback(place: &Place, interface: &str) -> Option<UnixStream> {
    let Place::Abstract(_) = place else {
        return None;
    };
    let fallback = Place::Path(address::fallback_path(interface)?);
    match connect(&fallback) {
        Ok(Some(stream)) if matches!(trust(&stream, &fallback), Ok(None)) => Some(stream),
        _ => None,
    }
}

/// A control socket held by a process the CLI does not talk to: not root's, not ours.
#[derive(Debug)]
pub struct UntrustedHolder {
    place: String,
    pid: i32,
    uid: u32,
}

impl std::fmt::Display for UntrustedHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is held by pid {} of uid {}, not by root: refusing to talk to it",
            self.place, self.pid, self.uid
        )
    }
}

impl std::error::Error for UntrustedHolder {}

/// A control socket whose listen backlog stayed full for CONNECT_DEADLINE: a flood of
/// connections, or a squatter that never accepts.
#[derive(Debug)]
pub struct Busy {
    place: String,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "busy: {} accepted no connection within {} s; try again",
            self.place,
            CONNECT_DEADLINE.as_secs()
        )
    }
}

impl std::error::Error for Busy {}

/// None when the daemon at the other end of `stream` is one to talk to; the holder when not.
fn trust(stream: &UnixStream, place: &Place) -> anyhow::Result<Option<UntrustedHolder>> {
    let (uid, pid) = peer::credentials(stream).map_err(|e| {
        anyhow::anyhow!("cannot tell who holds {place}: {e}; refusing to talk to it")
    })?;
    Ok((!peer::trusted_daemon(uid)).then(|| UntrustedHolder {
        place: place.to_string(),
        pid,
        uid,
    }))
}

/// Connects to `place` within CONNECT_DEADLINE; None when nobody listens there.
fn connect(place: &Place) -> anyhow::Result<Option<UnixStream>> {
    let connected = match place {
        Place::Abstract(name) => address::abstract_address(name)
            .and_then(|a| connect_with_deadline(&a, CONNECT_DEADLINE)),
        Place::Path(path) => connect_path(path, CONNECT_DEADLINE),
    };
    match connected {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot reach {place}: permission denied (the control socket is root-only)"
        ),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Busy {
            place: place.to_string(),
        }
        .into()),
        Err(e) => anyhow::bail!("connecting to {place}: {e}"),
    }
}

fn connect_path(path: &Path, deadline: Duration) -> io::Result<UnixStream> {
    connect_with_deadline(
        &std::os::unix::net::SocketAddr::from_pathname(path)?,
        deadline,
    )
}

/// Connects without blocking, trying again while the listen backlog is full (EAGAIN) until
/// `deadline` has passed; then WouldBlock. The stream returned blocks.
pub(super) fn connect_with_deadline(
    address: &std::os::unix::net::SocketAddr,
    deadline: Duration,
) -> io::Result<UnixStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let address = match (
        address.as_pathname(),
        std::os::linux::net::SocketAddrExt::as_abstract_name(address),
    ) {
        (Some(path), _) => UnixAddr::new(path),
        (None, Some(name)) => UnixAddr::new_abstract(name),
        (None, None) => return Err(io::ErrorKind::InvalidInput.into()),
    }
    .map_err(io::Error::from)?;
    let end = Instant::now() + deadline;
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < end => {
                std::thread::sleep(CONNECT_RETRY)
            }
            Err(nix::errno::Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `request` on `stream` and reads the answer.
fn exchange(interface: &str, request: &str, mut stream: UnixStream) -> anyhow::Result<String> {
    let timeout = if request == "down" {
        DOWN_TIMEOUT
    } else {
        CLIENT_TIMEOUT
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    // A failed send is not the end: a daemon that closed at once may have said why.
    let sent = stream.write_all(format!("{request}\n").as_bytes());
    let (answer, failure) = read_answer(&stream);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if let Some(error) = answer.strip_prefix("error: ") {
        anyhow::bail!("{interface}: {}", error.trim());
    }
    match failure {
        None if answer.is_empty() && sent.is_err() => {
            anyhow::bail!("the {interface} daemon closed the connection before reading the request")
        }
        None => Ok(answer),
        // The daemon closed after answering, with our request unread: the answer is whole.
        Some(e) if is_reset(&e) && !answer.is_empty() => Ok(answer),
        Some(e) if is_reset(&e) => anyhow::bail!(
            "the {interface} daemon closed the connection without answering; try again"
        ),
        Some(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            anyhow::bail!(
                "the {interface} daemon did not answer {request} within {} s",
                timeout.as_secs()
            )
        }
        Some(e) => anyhow::bail!("reading the answer of the {interface} daemon: {e}"),
    }
}

/// Why nobody answered for `interface`.
fn not_running(interface: &str) -> anyhow::Error {
    match Place::of(interface) {
        Place::Path(path) if path.exists() => anyhow::anyhow!(
            "no dhtun daemon is running for {interface} (its control socket {} is left from a \
             daemon that was killed)",
            path.display()
        ),
        Place::Path(path) => anyhow::anyhow!(
            "no dhtun daemon is running for {interface} (no control socket at {})",
            path.display()
        ),
        Place::Abstract(name) => anyhow::anyhow!(
            "no dhtun daemon is running for {interface} in this network namespace (nothing \
             listens on @{name})"
        ),
    }
}

/// Everything the daemon sent, and the error that ended the reading, if not the end of the
/// stream.
fn read_answer(stream: &UnixStream) -> (Vec<u8>, Option<io::Error>) {
    let mut answer = Vec::new();
    let mut limited = stream.take(ANSWER_BYTES);
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match limited.read(&mut chunk) {
            Ok(0) => return (answer, None),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (answer, Some(e)),
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}
