//! A TCP transfer through the tunnel, for the namespace tests: seeded pseudo-random bytes sent
//! from one node's overlay address to another's, every byte compared on arrival and both ends'
//! FNV-1a hashes returned, with every wait bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{in_netns, ByteStream, Fnv64, Node};

/// Longest a read or write may block: a transfer stalled this long has failed (a stall
/// shorter than this, say while a flood or a roam goes on, is only slow).
const STALL: Duration = Duration::from_secs(20);
/// Connection attempts, each bounded by CONNECT_TIMEOUT and all by the caller's deadline.
const CONNECT_TRIES: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one end of a transfer saw: bytes and their FNV-1a hash.
pub type Seen = (usize, u64);

/// A TCP transfer of `total` seeded pseudo-random bytes from `from` to `to` over their overlay
/// addresses; the receiver compares every byte with the regenerated stream.
pub struct Transfer {
    pub started: Instant,
    sender: JoinHandle<Result<Seen, String>>,
    receiver: JoinHandle<Result<Seen, String>>,
    abort: Arc<AtomicBool>,
}

impl Transfer {
    /// Starts listening in `to`, then sending from `from`; everything ends by `deadline`.
    pub fn start(
        from: &Node,
        to: &Node,
        port: u16,
        total: usize,
        seed: u64,
        deadline: Instant,
    ) -> Result<Transfer, String> {
        let to_v4: Ipv4Addr = to
            .v4
            .parse()
            .map_err(|e| format!("bad IPv4 {}: {e}", to.v4))?;
        let listen = SocketAddr::V4(SocketAddrV4::new(to_v4, port));
        let abort = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let abort_rx = Arc::clone(&abort);
        let receiver = in_netns(&to.ns, move || {
            let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("nonblocking: {e}"))?;
            let _ = ready_tx.send(());
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if abort_rx.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            return Err("no connection arrived".into());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(STALL))
                .map_err(|e| e.to_string())?;
            let mut expect = ByteStream::new(seed);
            let mut hash = Fnv64::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut want = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            while Instant::now() < deadline {
                let n = match conn.read(&mut buf) {
                    Ok(0) => return Ok((got, hash.0)),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read after {got} bytes: {e}")),
                };
                expect.fill(&mut want[..n]);
                if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
                    return Err(format!(
                        "byte {} differs: received {:#04x}, sent {:#04x}",
                        got + i,
                        buf[i],
                        want[i]
                    ));
                }
                hash.update(&buf[..n]);
                got += n;
                if got > total {
                    return Err(format!("received {got} bytes, more than the {total} sent"));
                }
            }
            Err(format!("deadline passed after receiving {got} bytes"))
        });
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            abort.store(true, Ordering::Relaxed);
            let err = receiver.join().ok().and_then(Result::err);
            return Err(format!("the receiver did not start listening: {err:?}"));
        }
        let started = Instant::now();
        let sender = in_netns(&from.ns, move || {
            let mut conn = None;
            let mut last = String::new();
            for _ in 0..CONNECT_TRIES {
                match TcpStream::connect_timeout(&listen, CONNECT_TIMEOUT) {
                    Ok(c) => {
                        conn = Some(c);
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            let mut conn = conn.ok_or_else(|| format!("connect to {listen}: {last}"))?;
            conn.set_write_timeout(Some(STALL))
                .map_err(|e| e.to_string())?;
            let mut gen = ByteStream::new(seed);
            let mut hash = Fnv64::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < total {
                if Instant::now() >= deadline {
                    return Err(format!("deadline passed after sending {sent} bytes"));
                }
                let n = buf.len().min(total - sent);
                gen.fill(&mut buf[..n]);
                conn.write_all(&buf[..n])
                    .map_err(|e| format!("write after {sent} bytes: {e}"))?;
                hash.update(&buf[..n]);
                sent += n;
            }
            conn.shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            Ok((sent, hash.0))
        });
        Ok(Transfer {
            started,
            sender,
            receiver,
            abort,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.sender.is_finished() && self.receiver.is_finished()
    }

    /// Waits for both ends; returns what the sender sent and what the receiver got.
    pub fn finish(self) -> (Result<Seen, String>, Result<Seen, String>) {
        let sent = self
            .sender
            .join()
            .unwrap_or_else(|_| Err("sender panicked".into()));
        if sent.is_err() {
            self.abort.store(true, Ordering::Relaxed);
        }
        let received = self
            .receiver
            .join()
            .unwrap_or_else(|_| Err("receiver panicked".into()));
        (sent, received)
    }
}
