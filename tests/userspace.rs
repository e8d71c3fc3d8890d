//! Userspace mode end to end, with no root and no namespaces: two `dhtun up` daemons in
//! `mode = "userspace"` on loopback, each with the other's static endpoint, their control sockets
//! in a directory of the test's own. Local services are threads of the test on 127.0.0.1.
//! Traffic goes only to loopback.

mod common;

use common::{ByteStream, Fnv64, BIN};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest any single wait may take (a daemon coming up, a read, a whole transfer step).
const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

/// Two userspace daemons, A (100.64.0.1) and B (100.64.0.2), that know each other.
struct Pair {
    dir: PathBuf,
    daemons: Vec<(String, Child)>,
}

impl Pair {
    /// Starts A and B with `a_extra` and `b_extra` added to their configs (after [interface],
    /// so keys of [interface] come first, then whole sections).
    fn start(
        tag: &str,
        a_interface: &str,
        a_sections: &str,
        b_interface: &str,
        b_sections: &str,
    ) -> Pair {
        let dir = std::env::temp_dir().join(format!("dhtun-us-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).expect("creating the test directory");
        let mut pair = Pair {
            dir,
            daemons: Vec::new(),
        };
        let (key_a, key_b) = (genkey(), genkey());
        let (port_a, port_b) = (free_udp_port(), free_udp_port());
        // Control sockets are abstract names of the network namespace, shared by every test of
        // this process: each pair gets names of its own.
        static PAIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name_a = format!("usa{n}x{}", std::process::id() % 100_000);
        let name_b = format!("usb{n}x{}", std::process::id() % 100_000);
        let a = config(
            &name_a,
            &key_a,
            1,
            port_a,
            &pubkey(&key_b),
            2,
            port_b,
            a_interface,
            a_sections,
        );
        let b = config(
            &name_b,
            &key_b,
            2,
            port_b,
            &pubkey(&key_a),
            1,
            port_a,
            b_interface,
            b_sections,
        );
        pair.up(&name_a, &a);
        pair.up(&name_b, &b);
        pair
    }

    fn up(&mut self, name: &str, config: &str) {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("writing a config");
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(BIN)
            .arg("up")
            .arg(&path)
            .env("DHTUN_RUN_DIR", self.dir.join("run"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting dhtun up");
        self.daemons.push((name.to_string(), child));
        let deadline = Instant::now() + WAIT;
        while self.try_status(name).is_none() {
            if Instant::now() > deadline {
                panic!("{name} did not come up; log:\n{}", self.log(name));
            }
            if let Some((_, child)) = self.daemons.iter_mut().find(|(n, _)| n == name) {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited ({status}); log:\n{}", self.log(name));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn a(&self) -> &str {
        &self.daemons[0].0
    }

    fn b(&self) -> &str {
        &self.daemons[1].0
    }

    fn try_status(&self, name: &str) -> Option<serde_json::Value> {
        let out = Command::new(BIN)
            .args(["status", name, "--json"])
            .env("DHTUN_RUN_DIR", self.dir.join("run"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    #[track_caller]
    fn status(&self, name: &str) -> serde_json::Value {
        self.try_status(name)
            .unwrap_or_else(|| panic!("status of {name} failed; log:\n{}", self.log(name)))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            // SAFETY: kill has no memory preconditions; the pid is our own child's.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        for (_, child) in &mut self.daemons {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn config(
    name: &str,
    key: &str,
    host: u8,
    port: u16,
    peer: &str,
    peer_host: u8,
    peer_port: u16,
    interface: &str,
    sections: &str,
) -> String {
    format!(
        "[interface]\nname = \"{name}\"\nprivate_key = \"{key}\"\n\
         address = [\"100.64.0.{host}/24\", \"fd64::{host}/64\"]\nlisten_port = {port}\n\
         mode = \"userspace\"\n{interface}\n[dht]\nenabled = false\n\n\
         [[peer]]\npublic_key = \"{peer}\"\n\
         allowed_ips = [\"100.64.0.{peer_host}/32\", \"fd64::{peer_host}/128\"]\n\
         endpoint = \"127.0.0.1:{peer_port}\"\n\n{sections}"
    )
}

fn genkey() -> String {
    let out = Command::new(BIN)
        .arg("genkey")
        .output()
        .expect("dhtun genkey");
    String::from_utf8(out.stdout)
        .expect("key")
        .trim()
        .to_string()
}

fn pubkey(secret: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("dhtun pubkey");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(secret.as_bytes())
        .expect("writing the key");
    let out = child.wait_with_output().expect("dhtun pubkey");
    String::from_utf8(out.stdout)
        .expect("key")
        .trim()
        .to_string()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
    socket.local_addr().expect("address").port()
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
    listener.local_addr().expect("address").port()
}

/// A local service: accepts `connections` clients and runs `serve` on each in a thread.
fn serve<F>(connections: usize, serve: F) -> (SocketAddr, JoinHandle<Vec<Result<(), String>>>)
where
    F: Fn(TcpStream) -> Result<(), String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the local service");
    let address = listener.local_addr().expect("address");
    let handle = std::thread::spawn(move || {
        let serve = std::sync::Arc::new(serve);
        let mut threads = Vec::new();
        for _ in 0..connections {
            let Ok((stream, _)) = listener.accept() else {
                break;
            };
            let serve = serve.clone();
            threads.push(std::thread::spawn(move || serve(stream)));
        }
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("service thread panicked".into()))
            })
            .collect()
    });
    (address, handle)
}

/// Sends `total` bytes of ByteStream(`seed`), then shuts the sending side down.
fn send_stream(stream: &mut TcpStream, total: usize, seed: u64) -> Result<(), String> {
    let mut source = ByteStream::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let n = buf.len().min(total - sent);
        source.fill(&mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("sending at byte {sent}: {e}"))?;
        sent += n;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutting down: {e}"))
}

/// Reads to end of stream, comparing every byte with ByteStream(`seed`); returns the count.
fn receive_stream(stream: &mut TcpStream, seed: u64) -> Result<usize, String> {
    let mut expected = ByteStream::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut hash = (Fnv64::new(), Fnv64::new());
    let mut got = 0;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading after {got} bytes: {e}")),
        };
        expected.fill(&mut want[..n]);
        hash.0.update(&buf[..n]);
        hash.1.update(&want[..n]);
        if buf[..n] != want[..n] {
            let at = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b);
            return Err(format!("byte {} differs", got + at.unwrap_or(0)));
        }
        got += n;
    }
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, WAIT).expect("connecting to the forward");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_write_timeout(Some(WAIT)).expect("timeout");
    stream
}

fn counter(status: &serde_json::Value, list: &str, i: usize, key: &str) -> u64 {
    status["userspace"][list][i][key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no userspace.{list}[{i}].{key}: {status}"))
}

/// 64 MiB each way at once through A's forward and B's expose, every byte compared: the data
/// path (core into smoltcp and back), both directions' flow control, and the counters.
#[test]
fn forward_carries_64_mib_each_way_byte_for_byte() {
    const TOTAL: usize = 64 * MIB;
    let (service, served) = serve(1, |mut stream| {
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
        let upload = std::thread::spawn(move || receive_stream(&mut reader, 1));
        send_stream(&mut stream, TOTAL, 2)?;
        match upload.join() {
            Ok(Ok(n)) if n == TOTAL => Ok(()),
            Ok(Ok(n)) => Err(format!("the service received {n} bytes, not {TOTAL}")),
            Ok(Err(e)) => Err(format!("the service's receive: {e}")),
            Err(_) => Err("the receiving thread panicked".into()),
        }
    });
    let forward_port = free_tcp_port();
    let pair = Pair::start(
        "fwd",
        "",
        &format!("[[forward]]\nlisten = \"127.0.0.1:{forward_port}\"\nto = \"100.64.0.2:5001\"\n"),
        "",
        &format!("[[expose]]\nport = 5001\nto = \"{service}\"\n"),
    );
    let mut stream = connect(SocketAddr::from(([127, 0, 0, 1], forward_port)));
    let mut writer = stream.try_clone().expect("clone");
    let upload = std::thread::spawn(move || send_stream(&mut writer, TOTAL, 1));
    let downloaded = receive_stream(&mut stream, 2);
    let uploaded = upload.join().expect("upload thread");
    let served = served.join().expect("service thread");
    let logs = format!("A:\n{}\nB:\n{}", pair.log(pair.a()), pair.log(pair.b()));
    assert_eq!(
        downloaded,
        Ok(TOTAL),
        "download through the forward; {logs}"
    );
    assert_eq!(uploaded, Ok(()), "upload through the forward; {logs}");
    assert_eq!(served, vec![Ok(())], "the exposed service; {logs}");

    let a = pair.status(pair.a());
    assert_eq!(a["mode"], "userspace", "{a}");
    assert_eq!(counter(&a, "forwards", 0, "total_connections"), 1, "{a}");
    assert_eq!(counter(&a, "forwards", 0, "rx_bytes"), TOTAL as u64, "{a}");
    assert_eq!(counter(&a, "forwards", 0, "tx_bytes"), TOTAL as u64, "{a}");
    let b = pair.status(pair.b());
    assert_eq!(counter(&b, "exposes", 0, "total_connections"), 1, "{b}");
    assert_eq!(counter(&b, "exposes", 0, "tx_bytes"), TOTAL as u64, "{b}");
    assert_eq!(counter(&b, "exposes", 0, "rx_bytes"), TOTAL as u64, "{b}");
}

/// A minimal HTTP/1.0 server: answers every request with `body`.
fn http_service(
    connections: usize,
    body: &'static str,
) -> (SocketAddr, JoinHandle<Vec<Result<(), String>>>) {
    serve(connections, move |mut stream| {
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("reading the request: {e}"))?;
            if n == 0 {
                return Err("the client closed before its request ended".into());
            }
            request.extend_from_slice(&buf[..n]);
        }
        let answer = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(answer.as_bytes())
            .map_err(|e| format!("answering: {e}"))
    })
}

/// The SOCKS5 client side of a CONNECT to `to`; returns the stream after a success, or the
/// reply code.
fn socks5_connect(proxy: SocketAddr, to: SocketAddr) -> Result<TcpStream, u8> {
    let mut stream = connect(proxy);
    stream.write_all(&[5, 1, 0]).expect("greeting");
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).expect("method choice");
    assert_eq!(
        choice,
        [5, 0],
        "the proxy takes clients without authentication"
    );
    let mut request = vec![5, 1, 0];
    match to.ip() {
        std::net::IpAddr::V4(ip) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&to.port().to_be_bytes());
    stream.write_all(&request).expect("request");
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).expect("reply");
    let rest = if head[3] == 4 { 16 + 2 } else { 4 + 2 };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).expect("bound address");
    match head[1] {
        0 => Ok(stream),
        code => Err(code),
    }
}

/// curl through A's SOCKS5 proxy reaches B's exposed HTTP server by its overlay address
/// (IPv4 and IPv6), and a CONNECT to a port B does not expose is refused with a SOCKS5 answer.
#[test]
fn socks5_proxy_reaches_an_http_server_exposed_by_the_other_peer() {
    const BODY: &str = "hello through the overlay\n";
    let (service, served) = http_service(3, BODY);
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let pair = Pair::start(
        "socks",
        &format!("socks5_listen = \"{proxy}\"\n"),
        "",
        "",
        &format!("[[expose]]\nport = 80\nto = \"{service}\"\n"),
    );
    let logs = || format!("A:\n{}\nB:\n{}", pair.log(pair.a()), pair.log(pair.b()));
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--socks5"])
        .arg(proxy.to_string())
        .arg("http://100.64.0.2/")
        .output();
    match curl {
        Ok(out) => assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            BODY,
            "curl: {}; {}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        ),
        // Without curl on this machine, the same request by hand.
        Err(e) => {
            eprintln!("curl not found ({e}); using the test's own SOCKS5 client");
            let mut stream = socks5_connect(proxy, "100.64.0.2:80".parse().unwrap())
                .unwrap_or_else(|code| panic!("CONNECT refused with {code}; {}", logs()));
            stream
                .write_all(b"GET / HTTP/1.0\r\n\r\n")
                .expect("request");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("answer");
            assert!(answer.ends_with(BODY), "{answer}");
        }
    }
    // IPv6, by the test's own client.
    let mut stream = socks5_connect(proxy, "[fd64::2]:80".parse().unwrap())
        .unwrap_or_else(|code| panic!("CONNECT over IPv6 refused with {code}; {}", logs()));
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(
        answer.starts_with("HTTP/1.0 200 OK"),
        "{answer}; {}",
        logs()
    );
    assert!(answer.ends_with(BODY), "{answer}");
    // Nothing listens on port 81 of B: B's stack resets the SYN, the proxy says refused (5).
    let refused = socks5_connect(proxy, "100.64.0.2:81".parse().unwrap());
    assert_eq!(
        refused.err(),
        Some(5),
        "CONNECT to a closed overlay port; {}",
        logs()
    );

    let a = pair.status(pair.a());
    let socks = &a["userspace"]["socks5"];
    assert_eq!(socks["total_connections"], 3, "{a}");
    assert_eq!(
        socks["rx_bytes"]
            .as_u64()
            .map(|n| n > 2 * BODY.len() as u64),
        Some(true),
        "{a}"
    );
    // Both HTTP clients were served; a third accept never comes, so don't wait for it.
    drop(served);
}

/// A client that does not read: the exposed service's bytes stop flowing once the windows and
/// socket buffers on the way are full, instead of piling up in either daemon.
#[test]
fn a_reader_that_stops_stops_the_sender() {
    let (service, _served) = serve(1, |mut stream| {
        let chunk = vec![7u8; 64 * 1024];
        // Writes until the test ends and the connection is reset.
        while stream.write_all(&chunk).is_ok() {}
        Ok(())
    });
    let forward_port = free_tcp_port();
    let pair = Pair::start(
        "slow",
        "",
        &format!("[[forward]]\nlisten = \"127.0.0.1:{forward_port}\"\nto = \"100.64.0.2:5002\"\n"),
        "",
        &format!("[[expose]]\nport = 5002\nto = \"{service}\"\n"),
    );
    let mut stream = connect(SocketAddr::from(([127, 0, 0, 1], forward_port)));
    let mut first = [0u8; 1];
    stream
        .read_exact(&mut first)
        .expect("the first byte arrives");
    // Let everything on the way fill up, then watch the service's side stand still.
    let taken = |pair: &Pair| counter(&pair.status(pair.b()), "exposes", 0, "tx_bytes");
    let mut before = taken(&pair);
    let deadline = Instant::now() + WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = taken(&pair);
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sender never stopped: {now} bytes taken"
        );
        before = now;
    }
    // What B took from the service but A has not delivered sits in the two stacks' buffers
    // and the kernel's socket buffers: bounded, whatever the time.
    assert!(
        before < 32 * MIB as u64,
        "{before} bytes taken from a service whose client reads nothing"
    );
    // Reading again drains it: the stall was flow control, not a broken connection.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0u8; 1024 * 1024];
    let mut read = 0;
    while read < 4 * MIB {
        read += stream.read(&mut buf).expect("reading again");
    }
    assert!(taken(&pair) > before, "reading did not restart the sender");
}

/// More connections than the stack's cap: the extra ones are refused at once (reset), the
/// first ones keep working, and status counts the refusals.
#[test]
fn connections_beyond_the_cap_are_refused_cleanly() {
    // B's cap is shared by its listeners (4) and the connections; A's by its connections.
    const CAP: usize = 128;
    let (service, _served) = serve(CAP + 16, |mut stream| {
        // Echo one byte back, then hold the connection until the client closes it.
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).map_err(|e| e.to_string())?;
        stream.write_all(&byte).map_err(|e| e.to_string())?;
        let _ = stream.read(&mut byte);
        Ok(())
    });
    let forward_port = free_tcp_port();
    let pair = Pair::start(
        "cap",
        "",
        &format!("[[forward]]\nlisten = \"127.0.0.1:{forward_port}\"\nto = \"100.64.0.2:5003\"\n"),
        "",
        &format!("[[expose]]\nport = 5003\nto = \"{service}\"\n"),
    );
    let forward = SocketAddr::from(([127, 0, 0, 1], forward_port));
    let (mut open, mut refused) = (Vec::new(), 0);
    for i in 0..CAP + 8 {
        let mut stream = connect(forward);
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let echoed = stream.write_all(&[i as u8]).and_then(|_| {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).map(|_| byte[0])
        });
        match echoed {
            Ok(byte) => {
                assert_eq!(byte, i as u8);
                open.push(stream);
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ),
                    "connection {i} failed in an unclean way: {e}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(
        (open.len(), refused),
        (CAP, 8),
        "carried and refused connections"
    );
    let a = pair.status(pair.a());
    let b = pair.status(pair.b());
    assert_eq!(counter(&a, "forwards", 0, "refused"), 8, "{a}");
    assert_eq!(counter(&a, "forwards", 0, "connections"), CAP as u64, "{a}");
    assert_eq!(a["userspace"]["tcp_sockets"], CAP, "{a}");
    assert_eq!(b["userspace"]["tcp_sockets"], CAP, "{b}");
    // The carried connections still work.
    for (i, stream) in open.iter_mut().enumerate().take(4) {
        stream.shutdown(Shutdown::Write).expect("closing");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "connection {i}: {rest:?}");
    }
    drop(open);
    // Once they are closed, a new connection is carried again.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut stream = connect(forward);
        let ok = stream.write_all(&[9]).is_ok() && {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).is_ok()
        };
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection carried after the others closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// UDP through A's forward to B's expose and back: datagrams of every size up to a full MTU
/// arrive intact and in their own flow per local client, and status counts flows and bytes.
#[test]
fn udp_forward_and_expose_echo_datagrams() {
    let echo = UdpSocket::bind("127.0.0.1:0").expect("echo socket");
    let service = echo.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let forward_port = free_udp_port();
    let pair = Pair::start(
        "udp",
        "",
        &format!(
            "[[forward]]\nlisten = \"127.0.0.1:{forward_port}\"\nto = \"100.64.0.2:5353\"\n\
             protocol = \"udp\"\n"
        ),
        "",
        &format!("[[expose]]\nport = 5353\nto = \"{service}\"\nprotocol = \"udp\"\n"),
    );
    let forward = SocketAddr::from(([127, 0, 0, 1], forward_port));
    let mut sent = 0u64;
    for client in 0..2u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        for (i, len) in [1usize, 100, 512, 1000, 1300, 1380].into_iter().enumerate() {
            let datagram: Vec<u8> = (0..len).map(|k| (k as u8) ^ (i as u8) ^ client).collect();
            let mut buf = [0u8; 2048];
            // The first datagram may wait for the handshake; a lost one is sent again.
            let echoed = (0..20).find_map(|_| {
                socket.send_to(&datagram, forward).expect("sending");
                sent += len as u64;
                socket
                    .recv_from(&mut buf)
                    .ok()
                    .map(|(n, _)| buf[..n].to_vec())
            });
            assert_eq!(
                echoed.as_deref(),
                Some(&datagram[..]),
                "datagram {i} ({len} bytes) of client {client}; A:\n{}",
                pair.log(pair.a())
            );
        }
    }
    let a = pair.status(pair.a());
    assert_eq!(a["userspace"]["forwards"][0]["protocol"], "udp", "{a}");
    assert_eq!(counter(&a, "forwards", 0, "total_connections"), 2, "{a}");
    assert_eq!(counter(&a, "forwards", 0, "tx_bytes"), sent, "{a}");
    let b = pair.status(pair.b());
    assert_eq!(counter(&b, "exposes", 0, "total_connections"), 2, "{b}");
    assert!(counter(&b, "exposes", 0, "tx_bytes") > 0, "{b}");
}
