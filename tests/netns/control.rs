//! The control socket: one per interface and network namespace, served to root and
//! CAP_NET_ADMIN only, never silenced by idle connections, and its errors said in words.

use std::io::{Read as _, Write as _};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, describe, run_timeout, Lab, Node, BIN};

/// Idle connections the stress test holds open to one daemon.
const HELD: usize = 1000;

#[test]
fn two_daemons_named_dhtun0_in_two_namespaces_each_answer_for_themselves() {
    if !common::netns_available("two_daemons_named_dhtun0_in_two_namespaces") {
        return;
    }
    let (mut lab, mut a, mut b) = Lab::pair("tw", 51840);
    // The name a new user keeps: both daemons are dhtun0, started with no extra environment.
    a.iface = "dhtun0".into();
    b.iface = "dhtun0".into();
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    for me in [&a, &b] {
        let out = run_timeout(
            &mut me.cli(&["status", "dhtun0", "--json"]),
            Duration::from_secs(10),
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !out.status.success() || json["public_key"] != me.public.as_str() {
            lab.fail(format!(
                "`dhtun status dhtun0` in {} should show that namespace's key {}; {}",
                me.ns,
                me.public,
                describe(&out)
            ));
        }
        // Without a name: the daemons of the caller's namespace, which is one.
        let out = run_timeout(&mut me.cli(&["status", "--json"]), Duration::from_secs(10));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let keys: Vec<&serde_json::Value> = json
            .as_array()
            .map(|all| all.iter().map(|s| &s["public_key"]).collect())
            .unwrap_or_default();
        if !out.status.success() || keys != [me.public.as_str()] {
            lab.fail(format!(
                "`dhtun status --json` in {} should list its own dhtun0 only; {}",
                me.ns,
                describe(&out)
            ));
        }
    }
    // /run/dhtun is shared by every namespace: a daemon in a named one leaves it alone.
    for me in [&a, &b] {
        let out = lab.ns_exec(&me.ns, &["cat", "/proc/net/unix"]);
        if String::from_utf8_lossy(&out.stdout).contains("/run/dhtun/") {
            lab.fail(format!(
                "the daemon in {} listens on a path in /run/dhtun, which belongs to the \
                 initial namespace",
                me.ns
            ));
        }
    }
    // `down` in A stops A's daemon, and B's runs on.
    let out = run_timeout(&mut a.cli(&["down", "dhtun0"]), Duration::from_secs(20));
    if !out.status.success() {
        lab.fail(format!(
            "`dhtun down dhtun0` in A failed: {}",
            describe(&out)
        ));
    }
    let out = run_timeout(&mut b.cli(&["status", "dhtun0"]), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains(&b.public) {
        lab.fail(format!(
            "B's dhtun0 should still answer after A's went down; {}",
            describe(&out)
        ));
    }
    let out = run_timeout(&mut a.cli(&["status", "dhtun0"]), Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("no dhtun daemon is running") {
        lab.fail(format!(
            "after its down, `dhtun status dhtun0` in A should say no daemon runs there; {}",
            describe(&out)
        ));
    }
}

#[test]
fn the_control_socket_serves_root_and_cap_net_admin_only() {
    if !common::netns_available("the_control_socket_serves_root_and_cap_net_admin_only") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("cr", 51842);
    lab.up(&a, &[(&b, &[])]);
    // setpriv with no capabilities at all, then with CAP_NET_ADMIN alone, as nobody.
    let as_nobody = |caps: &str, args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &a.ns, "setpriv"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args([
                format!("--inh-caps={caps}"),
                format!("--ambient-caps={caps}"),
            ])
            .arg(BIN)
            .args(args);
        run_timeout(&mut cmd, Duration::from_secs(10))
    };
    for request in ["status", "reload", "down"] {
        let out = as_nobody("-all", &[request, &a.iface]);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || err.lines().count() != 1 || !err.contains("permission denied") {
            lab.fail(format!(
                "`dhtun {request}` as nobody without capabilities should be refused in one \
                 line saying permission denied; {}",
                describe(&out)
            ));
        }
    }
    if lab.daemon_exited(&a.iface).is_some() {
        lab.fail("the daemon stopped after an unprivileged `dhtun down`");
    }
    let out = as_nobody("+net_admin", &["status", &a.iface]);
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(&a.public) {
        lab.fail(format!(
            "`dhtun status` as nobody with CAP_NET_ADMIN should be served; {}",
            describe(&out)
        ));
    }
}

#[test]
fn status_answers_while_a_thousand_idle_connections_are_held() {
    if !common::netns_available("status_answers_while_a_thousand_idle_connections_are_held") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("ic", 51844);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);

    // One connection that sends nothing is closed by the daemon, with a reason, soon.
    let idle = common::in_netns(&a.ns, {
        let name = format!("dhtun/{}", a.iface);
        move || {
            let address = SocketAddr::from_abstract_name(name.as_bytes()).map_err(text)?;
            let mut stream = UnixStream::connect_addr(&address).map_err(text)?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(text)?;
            let started = Instant::now();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).map_err(text)?;
            Ok((started.elapsed(), answer))
        }
    });
    match idle.join().expect("idle client thread panicked") {
        Ok((after, answer)) if after < Duration::from_secs(3) && answer.contains("no request") => {}
        other => lab.fail(format!(
            "an idle control connection should be closed within its 1 s deadline, saying no \
             request came; got {other:?}"
        )),
    }

    let before = ping_figures(&lab, &a, &b.v4);
    let stop = Arc::new(AtomicBool::new(false));
    let holder = hold_idle_connections(&a, stop.clone());
    // Let the holder open them all, then ask while they are held.
    std::thread::sleep(Duration::from_secs(1));
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let out = run_timeout(
            &mut a.cli(&["status", &a.iface, "--json"]),
            Duration::from_secs(10),
        );
        let took = started.elapsed();
        slowest = slowest.max(took);
        if !out.status.success() {
            failures.push(describe(&out));
        }
    }
    let during = ping_figures(&lab, &a, &b.v4);
    stop.store(true, Ordering::Relaxed);
    let opened = holder.join().expect("holder thread panicked");
    let after = ping_figures(&lab, &a, &b.v4);
    common::loud(&format!(
        "control stress: {HELD} idle connections held ({opened:?} opened in all); slowest \
         status {slowest:?}; ping through the tunnel before: {before}; while held: {during}; \
         after: {after}"
    ));
    if !failures.is_empty() {
        lab.fail(format!(
            "`dhtun status` failed {} of 10 times while {HELD} idle connections were held: {}",
            failures.len(),
            failures.join(" | ")
        ));
    }
    if slowest > Duration::from_secs(1) {
        lab.fail(format!(
            "`dhtun status` should answer within a second while {HELD} idle connections are \
             held; the slowest took {slowest:?}"
        ));
    }
    if !during.contains(" 0% packet loss") {
        lab.fail(format!(
            "pings through the tunnel were lost while the connections were held: {during}"
        ));
    }
}

#[test]
fn an_existing_run_directory_is_never_chmod_ed() {
    if !common::netns_available("an_existing_run_directory_is_never_chmod_ed") {
        return;
    }
    let mut lab = Lab::new("rd");
    let ns = lab.add_ns("a");
    let existing = lab.dir.join("shared");
    std::fs::create_dir(&existing).expect("create the run directory");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod the run directory");
    let missing = lab.dir.join("new/run");
    // `lo` exists in every namespace: `up` binds its control sockets, then stops at once.
    let secret = lab.genkey();
    let config = lab.write_file(
        "lo.toml",
        &format!(
            "[interface]\nname = \"lo\"\nprivate_key = \"{secret}\"\naddress = \
             [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n"
        ),
    );
    for dir in [&existing, &missing] {
        let out = run_timeout(
            Command::new("ip")
                .args(["netns", "exec", &ns, BIN, "up"])
                .arg(&config)
                .env("DHTUN_RUN_DIR", dir),
            Duration::from_secs(15),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("already exists") {
            lab.fail(format!(
                "`dhtun up` of an interface named lo should stop at `already exists`; {}",
                describe(&out)
            ));
        }
    }
    let mode = |dir: &std::path::Path| {
        std::fs::metadata(dir)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0)
    };
    if mode(&existing) != 0o1777 {
        lab.fail(format!(
            "DHTUN_RUN_DIR {} existed with mode 1777 and was changed to {:o}",
            existing.display(),
            mode(&existing)
        ));
    }
    if mode(&missing) != 0o700 {
        lab.fail(format!(
            "a missing DHTUN_RUN_DIR should be created with mode 700, got {:o}",
            mode(&missing)
        ));
    }
    if existing.join("lo.sock").exists() {
        lab.fail("a failed `dhtun up` left its control socket in DHTUN_RUN_DIR");
    }
}

#[test]
fn a_busy_control_socket_is_reported_as_busy() {
    // A daemon that answers "busy" and closes, before or after the request came: the CLI says
    // busy, never "connection reset by peer" or "broken pipe". No privileges needed.
    let lab = Lab::new("bz");
    let run_dir = lab.dir.join("run");
    std::fs::create_dir(&run_dir).expect("create the run directory");
    let iface = lab.iface_name("b");
    let listener = UnixListener::bind(run_dir.join(format!("{iface}.sock")))
        .expect("bind a scratch control socket");
    for wait_for_request in [true, false] {
        let server = std::thread::spawn({
            let listener = listener.try_clone().expect("clone the listener");
            move || {
                let (mut stream, _) = listener.accept().expect("accept the CLI");
                if wait_for_request {
                    std::thread::sleep(Duration::from_millis(300));
                }
                let _ = stream.write_all(b"error: busy\n");
            }
        });
        let out = run_timeout(
            Command::new(BIN)
                .args(["status", &iface])
                .env("DHTUN_RUN_DIR", &run_dir),
            Duration::from_secs(10),
        );
        server.join().expect("scratch server panicked");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if out.status.success() || !err.contains("busy") || err.contains("reset") {
            lab.fail(format!(
                "a busy daemon (request {}) should be reported as busy; {}",
                if wait_for_request { "read" } else { "unread" },
                describe(&out)
            ));
        }
    }
}

#[test]
fn a_squatter_on_the_abstract_name_blocks_neither_up_nor_status() {
    if !common::netns_available("a_squatter_on_the_abstract_name_blocks_neither_up_nor_status") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("sq", 51844);
    // Nobody binds @dhtun/IFACE first, a name with an escape sequence in it, and one whose
    // backlog it fills and never accepts.
    let full = format!("{}f", a.iface);
    let script = "import socket, sys, time\n\
        held = []\n\
        for name in sys.argv[1:]:\n\
        \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        \x20   s.bind(b'\\0dhtun/' + name.encode())\n\
        \x20   s.listen(1)\n\
        \x20   held.append(s)\n\
        for _ in range(3):\n\
        \x20   c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        \x20   c.setblocking(False)\n\
        \x20   try: c.connect(b'\\0dhtun/' + sys.argv[-1].encode())\n\
        \x20   except OSError: pass\n\
        \x20   held.append(c)\n\
        print('ready', flush=True)\n\
        time.sleep(120)\n";
    let mut squatter = Command::new("ip")
        .args(["netns", "exec", &a.ns, "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            "/usr/bin/python3",
            "-c",
            script,
            &a.iface,
            "\x1b[31mevil",
            &full,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| lab.fail(format!("starting the squatter: {e}")));
    let mut ready = String::new();
    let _ = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.take().expect("squatter stdout")),
        &mut ready,
    );
    if ready.trim() != "ready" {
        let _ = squatter.kill();
        lab.fail("the squatter did not bind its names");
    }
    // Root's daemon starts all the same (the lab fails the test if it does not).
    lab.up(&a, &[(&b, &[])]);
    let one = run_timeout(&mut a.cli(&["status", &a.iface]), Duration::from_secs(10));
    let all = run_timeout(&mut a.cli(&["status", "--json"]), Duration::from_secs(10));
    let _ = squatter.kill();
    let _ = squatter.wait();
    if !one.status.success() || !String::from_utf8_lossy(&one.stdout).contains(&a.public) {
        lab.fail(format!(
            "`dhtun status {}` should reach root's daemon past the squatter; {}",
            a.iface,
            describe(&one)
        ));
    }
    let err = String::from_utf8_lossy(&all.stderr);
    if !all.status.success()
        || !String::from_utf8_lossy(&all.stdout).contains(&a.public)
        || err.lines().count() != 1
        || !err.contains(&full)
        || all.stderr.contains(&0x1b)
        || err.contains("evil")
    {
        lab.fail(format!(
            "`dhtun status` should list root's daemon, with one warning naming {full} and no \
             raw bytes of the squatter's names; {}",
            describe(&all)
        ));
    }
}

#[test]
fn a_full_listen_backlog_is_reported_busy_within_the_connect_deadline() {
    // A listener that never accepts, its backlog full: the CLI gives up and says busy in one
    // line, instead of blocking in connect. No privileges needed.
    let lab = Lab::new("bl");
    let run_dir = lab.dir.join("run");
    std::fs::create_dir(&run_dir).expect("create the run directory");
    let iface = lab.iface_name("b");
    let path = run_dir.join(format!("{iface}.sock"));
    let listener = UnixListener::bind(&path).expect("bind a scratch control socket");
    let backlog = nix::sys::socket::Backlog::new(1).expect("backlog");
    nix::sys::socket::listen(&listener, backlog).expect("listen");
    let mut held = Vec::new();
    loop {
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        let address = nix::sys::socket::UnixAddr::new(&path).expect("address");
        match nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &address) {
            Ok(()) => held.push(socket),
            Err(_) => break,
        }
        if held.len() > 100 {
            lab.fail("the backlog of 1 never filled");
        }
    }
    let started = Instant::now();
    let out = run_timeout(
        Command::new(BIN)
            .args(["status", &iface])
            .env("DHTUN_RUN_DIR", &run_dir),
        Duration::from_secs(10),
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success()
        || !err.contains("busy")
        || err.lines().count() != 1
        || took > Duration::from_secs(5)
    {
        lab.fail(format!(
            "a full backlog should be reported busy in one line within the 2 s deadline \
             (took {took:?}); {}",
            describe(&out)
        ));
    }
    drop(held);
}

/// Holds HELD connections to `node`'s control socket open without a request, opening again
/// every one the daemon closes, every 100 ms, until `stop` (at most 60 s). Returns how many
/// connections it opened in all.
fn hold_idle_connections(
    node: &Node,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<usize, String>> {
    let name = format!("dhtun/{}", node.iface);
    common::in_netns(&node.ns, move || {
        let address = SocketAddr::from_abstract_name(name.as_bytes()).map_err(text)?;
        let mut held: Vec<Option<UnixStream>> = (0..HELD).map(|_| None).collect();
        let mut opened = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for slot in held.iter_mut() {
                let open = slot.as_mut().is_some_and(|stream| {
                    let mut byte = [0u8; 64];
                    matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                if !open {
                    *slot = UnixStream::connect_addr(&address)
                        .ok()
                        .filter(|stream| stream.set_nonblocking(true).is_ok());
                    opened += usize::from(slot.is_some());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(opened)
    })
}

/// `ping` summary from `from` to `addr`: 100 echoes 10 ms apart, as "loss, rtt min/avg/max".
fn ping_figures(lab: &Lab, from: &Node, addr: &str) -> String {
    let out = lab.ns_exec(
        &from.ns,
        &[
            "ping", "-n", "-q", "-c", "100", "-i", "0.01", "-W", "1", addr,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("packet loss") || l.starts_with("rtt"))
        .collect();
    summary.join("; ")
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
