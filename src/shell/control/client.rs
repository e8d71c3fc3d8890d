//! The CLI's side of the control socket: connect where the daemon of an interface listens,
//! check that it is root's, send one request and read the answer, saying what went wrong in
//! words (a daemon that refused or is busy says why; that is what the user reads, never the
//! connection reset that can follow it).

use super::address::{self, Place};
use super::peer;
use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long the CLI waits for a daemon that accepted its connection to answer; `down` waits
/// longer because it includes tearing down routes and the interface.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
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
    let connected = match &place {
        Place::Abstract(name) => {
            address::abstract_address(name).and_then(|a| UnixStream::connect_addr(&a))
        }
        Place::Path(path) => UnixStream::connect(path),
    };
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => anyhow::bail!(
            "cannot reach {place}: permission denied (the control socket is root-only)"
        ),
        Err(e) => anyhow::bail!("connecting to {place}: {e}"),
    };
    let (uid, pid) = peer::credentials(&stream).map_err(|e| {
        anyhow::anyhow!("cannot tell who holds {place}: {e}; refusing to talk to it")
    })?;
    if !peer::trusted_daemon(uid) {
        anyhow::bail!(
            "{place} is held by pid {pid} of uid {uid}, not by root: refusing to talk to it"
        );
    }
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
        None => Ok(Some(answer)),
        // The daemon closed after answering, with our request unread: the answer is whole.
        Some(e) if is_reset(&e) && !answer.is_empty() => Ok(Some(answer)),
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
