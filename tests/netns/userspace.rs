//! A TUN peer and a userspace peer talk: the same wire protocol, with the kernel's TCP on one
//! side and the in-daemon stack on the other. A (TUN) reaches a service B exposes on its overlay
//! address, and B reaches a service on A's overlay address through a forward.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{in_netns, ByteStream, Lab};

const TOTAL: usize = 8 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn tun_peer_and_userspace_peer_reach_each_others_services() {
    if !common::netns_available("tun_peer_and_userspace_peer_reach_each_others_services") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("us", 51820);
    lab.up(&a, &[(&b, &[])]);
    let keys = "mode = \"userspace\"";
    let mut text = lab.config_with_interface_keys(&b, &a, keys);
    text.push_str(
        "\n[[expose]]\nport = 7000\nto = \"127.0.0.1:7500\"\n\n\
         [[forward]]\nlisten = \"127.0.0.1:7100\"\nto = \"100.64.0.1:7001\"\n",
    );
    let config = lab.write_file(&format!("{}.toml", b.iface), &text);
    lab.start_daemon(&b.ns, &b.iface, &config);
    lab.wait_until("the userspace daemon to answer status", WAIT, || {
        lab.status_raw(&b.iface)
    });

    // A (TUN) -> B's exposed port -> B's local service.
    let service_b = in_netns(&b.ns, || serve("127.0.0.1:7500", 1));
    let client_a = in_netns(&a.ns, || exchange("100.64.0.2:7000".parse().unwrap(), 11));
    let sent = client_a.join().expect("client thread");
    let served = service_b.join().expect("service thread");
    assert_eq!(
        sent,
        Ok(TOTAL),
        "TUN peer to exposed service; {}",
        lab.logs()
    );
    assert_eq!(served, Ok(TOTAL), "exposed service; {}", lab.logs());

    // B's forward -> A's overlay address (the kernel's TCP behind a TUN device).
    let service_a = in_netns(&a.ns, || serve("100.64.0.1:7001", 1));
    let client_b = in_netns(&b.ns, || exchange("127.0.0.1:7100".parse().unwrap(), 12));
    let sent = client_b.join().expect("client thread");
    let served = service_a.join().expect("service thread");
    assert_eq!(sent, Ok(TOTAL), "forward to the TUN peer; {}", lab.logs());
    assert_eq!(served, Ok(TOTAL), "service on the TUN peer; {}", lab.logs());

    let status = lab.status(&b.iface);
    assert_eq!(status["mode"], "userspace", "{status}");
    let userspace = &status["userspace"];
    // The client's 8-byte seed, then its stream; the echo carries the stream alone.
    assert_eq!(userspace["exposes"][0]["rx_bytes"], TOTAL + 8, "{status}");
    assert_eq!(userspace["exposes"][0]["tx_bytes"], TOTAL, "{status}");
    assert_eq!(userspace["forwards"][0]["tx_bytes"], TOTAL + 8, "{status}");
    assert_eq!(userspace["forwards"][0]["rx_bytes"], TOTAL, "{status}");
}

/// Accepts `count` connections on `address`; each: reads the client's stream (seed sent first),
/// compares every byte, then sends it all back. Returns the bytes of the last.
fn serve(address: &str, count: usize) -> Result<usize, String> {
    let listener = TcpListener::bind(address).map_err(|e| format!("bind {address}: {e}"))?;
    let mut last = 0;
    for _ in 0..count {
        let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let mut seed = [0u8; 8];
        stream.read_exact(&mut seed).map_err(|e| e.to_string())?;
        let seed = u64::from_le_bytes(seed);
        let received = receive(&mut stream, seed)?;
        send(&mut stream, received, seed)?;
        last = received;
    }
    Ok(last)
}

/// Connects (retrying while the service comes up), sends TOTAL bytes of ByteStream(seed), and
/// checks the echo; returns the bytes echoed.
fn exchange(to: SocketAddr, seed: u64) -> Result<usize, String> {
    let deadline = Instant::now() + WAIT;
    let mut stream = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => return Err(format!("connect {to}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream
        .set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&seed.to_le_bytes())
        .map_err(|e| e.to_string())?;
    send(&mut stream, TOTAL, seed)?;
    receive(&mut stream, seed)
}

fn send(stream: &mut TcpStream, total: usize, seed: u64) -> Result<(), String> {
    let mut source = ByteStream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = buf.len().min(total - sent);
        source.fill(&mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("sending at {sent}: {e}"))?;
        sent += n;
    }
    stream.shutdown(Shutdown::Write).map_err(|e| e.to_string())
}

fn receive(stream: &mut TcpStream, seed: u64) -> Result<usize, String> {
    let mut expected = ByteStream::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut got = 0;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading after {got} bytes: {e}")),
        };
        expected.fill(&mut want[..n]);
        if buf[..n] != want[..n] {
            return Err(format!("bytes differ after {got}"));
        }
        got += n;
    }
}
