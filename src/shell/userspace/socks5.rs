//! The SOCKS5 proxy of `socks5_listen` (RFC 1928): no authentication, CONNECT to an IPv4 or
//! IPv6 address (or a name that is an address literal). Each client's handshake runs in a small
//! task of its own, at most SOCKS5_HANDSHAKES at once, each bounded by
//! SOCKS5_HANDSHAKE_TIMEOUT; a finished one is handed to the event loop, which answers the
//! CONNECT once the overlay connection is established or refused.

use super::tcp::{Incoming, Origin};
use crate::core::limits::{SOCKS5_HANDSHAKES, SOCKS5_HANDSHAKE_TIMEOUT};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

const VERSION: u8 = 5;
const NO_AUTHENTICATION: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

pub(crate) const REPLY_SUCCEEDED: u8 = 0;
pub(crate) const REPLY_GENERAL_FAILURE: u8 = 1;
pub(crate) const REPLY_HOST_UNREACHABLE: u8 = 4;
pub(crate) const REPLY_CONNECTION_REFUSED: u8 = 5;
pub(crate) const REPLY_COMMAND_UNSUPPORTED: u8 = 7;
pub(crate) const REPLY_ADDRESS_UNSUPPORTED: u8 = 8;

/// Accepts proxy clients until the task is aborted; each finished handshake goes to `incoming`.
pub(crate) fn spawn(
    listener: TcpListener,
    incoming: mpsc::Sender<Incoming>,
) -> tokio::task::JoinHandle<()> {
    let permits = Arc::new(Semaphore::new(SOCKS5_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Beyond the limit the client is closed at once rather than queued.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let incoming = incoming.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut stream = stream;
                let target =
                    tokio::time::timeout(SOCKS5_HANDSHAKE_TIMEOUT, handshake(&mut stream)).await;
                let Ok(Ok(to)) = target else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                if let Err(e) = incoming.try_send(Incoming {
                    stream,
                    to,
                    origin: Origin::Socks,
                }) {
                    let Incoming { stream, .. } = e.into_inner();
                    let _ = stream.try_write(&reply(REPLY_GENERAL_FAILURE, None));
                }
            });
        }
    })
}

/// Why a handshake ended without a destination (the client was already answered if it could
/// be).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Io,
    Protocol,
    Answered(u8),
}

impl From<std::io::Error> for Refused {
    fn from(_: std::io::Error) -> Self {
        Refused::Io
    }
}

/// Runs the server side of the greeting and the request; returns where to CONNECT. The answer
/// to the request is left to the caller, which knows whether the connection succeeded.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<SocketAddr, Refused> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Refused::Protocol);
    }
    let mut methods = [0u8; 255];
    let methods = &mut methods[..usize::from(head[1])];
    stream.read_exact(methods).await?;
    if !methods.contains(&NO_AUTHENTICATION) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Refused::Answered(NO_ACCEPTABLE_METHOD));
    }
    stream.write_all(&[VERSION, NO_AUTHENTICATION]).await?;
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(Refused::Protocol);
    }
    let ip = match request[3] {
        ATYP_IPV4 => {
            let mut octets = [0u8; 4];
            stream.read_exact(&mut octets).await?;
            Ok(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        ATYP_IPV6 => {
            let mut octets = [0u8; 16];
            stream.read_exact(&mut octets).await?;
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let mut name = [0u8; 255];
            let name = &mut name[..usize::from(len[0])];
            stream.read_exact(name).await?;
            // No naming scheme for peers yet: only an address written as a name is reachable.
            std::str::from_utf8(name)
                .ok()
                .map(|n| n.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|n| n.parse::<IpAddr>().ok())
                .ok_or(REPLY_HOST_UNREACHABLE)
        }
        _ => Err(REPLY_ADDRESS_UNSUPPORTED),
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await?;
    let refusal = match (request[1], ip) {
        (CMD_CONNECT, Ok(ip)) => return Ok(SocketAddr::new(ip, u16::from_be_bytes(port))),
        (CMD_CONNECT, Err(code)) => code,
        _ => REPLY_COMMAND_UNSUPPORTED,
    };
    stream.write_all(&reply(refusal, None)).await?;
    Err(Refused::Answered(refusal))
}

/// The answer to a request: `code`, and the address the proxy connected from (zeros when none).
pub(crate) fn reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut out = vec![VERSION, code, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `handshake` against `client` bytes; returns its result and what it answered.
    fn run(client: &[u8]) -> (Result<SocketAddr, Refused>, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut ours, mut theirs) = tokio::io::duplex(1024);
            theirs.write_all(client).await.unwrap();
            // The client sends nothing more: a request cut short ends in end of stream.
            theirs.shutdown().await.unwrap();
            let result = handshake(&mut ours).await;
            drop(ours);
            let mut answer = Vec::new();
            theirs.read_to_end(&mut answer).await.unwrap();
            (result, answer)
        })
    }

    #[test]
    fn connect_to_ipv4_and_ipv6_addresses() {
        let (to, answer) = run(&[5, 1, 0, 5, 1, 0, 1, 100, 64, 0, 2, 0, 80]);
        assert_eq!(to, Ok("100.64.0.2:80".parse().unwrap()));
        assert_eq!(answer, [5, 0]);
        let mut v6 = vec![5, 2, 2, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&"fd64::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x1f, 0x90]);
        assert_eq!(run(&v6).0, Ok("[fd64::2]:8080".parse().unwrap()));
    }

    #[test]
    fn a_name_is_taken_only_when_it_is_an_address() {
        let mut named = vec![5, 1, 0, 5, 1, 0, 3, 10];
        named.extend_from_slice(b"100.64.0.9");
        named.extend_from_slice(&[0, 22]);
        assert_eq!(run(&named).0, Ok("100.64.0.9:22".parse().unwrap()));
        let mut host = vec![5, 1, 0, 5, 1, 0, 3, 7];
        host.extend_from_slice(b"example");
        host.extend_from_slice(&[0, 22]);
        let (result, answer) = run(&host);
        assert_eq!(result, Err(Refused::Answered(REPLY_HOST_UNREACHABLE)));
        assert_eq!(&answer[2..5], &[VERSION, REPLY_HOST_UNREACHABLE, 0]);
    }

    #[test]
    fn refusals_are_answered() {
        // Only username/password offered.
        let (result, answer) = run(&[5, 1, 2]);
        assert_eq!(result, Err(Refused::Answered(NO_ACCEPTABLE_METHOD)));
        assert_eq!(answer, [5, 0xff]);
        // BIND is not supported.
        let (result, answer) = run(&[5, 1, 0, 5, 2, 0, 1, 100, 64, 0, 2, 0, 80]);
        assert_eq!(result, Err(Refused::Answered(REPLY_COMMAND_UNSUPPORTED)));
        assert_eq!(answer[3], REPLY_COMMAND_UNSUPPORTED);
        // SOCKS4 and a cut-off request.
        assert_eq!(run(&[4, 1, 0, 80]).0, Err(Refused::Protocol));
        assert_eq!(run(&[5, 1, 0, 5, 1]).0, Err(Refused::Io));
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(reply(0, None), [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let v6 = reply(0, Some("[fd64::1]:49152".parse().unwrap()));
        assert_eq!(v6.len(), 22);
        assert_eq!(&v6[20..], &[0xc0, 0x00]);
    }
}
