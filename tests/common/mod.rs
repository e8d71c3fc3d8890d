//! Shared harness for the network-namespace integration tests.
//!
//! Every test builds its own `Lab`: uniquely named namespaces (tag + pid), a veth pair on the
//! underlay 198.18.0.0/24, and `dhtun up` daemons started with `ip netns exec`. Dropping the `Lab`
//! (also while unwinding from a failed assertion) stops the daemons, kills anything left in the
//! namespaces and deletes them, which also deletes the veth pair.
//!
//! Addresses used: underlay 198.18.0.1/.2, overlay 100.64.0.1/.2 and fd64::1/::2, extra subnets
//! in 100.65.0.0/16 and 100.99.0.0/16. Nothing outside the namespaces is ever contacted.
//!
//! The discovery tests use a hub topology instead of a veth pair (`Lab::hub`), laid out as
//! netns-scripts/lab.sh lays out its lab: a hub namespace whose bridge carries 198.18.0.254/24
//! and runs `dhtun dht-node`, and peer namespaces joined to that bridge (198.18.0.<host>/24),
//! whose daemons know each other by public key only.
#![allow(dead_code)]

use std::fmt::Display;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod transfer;

/// The daemon under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dhtun");

/// How long a daemon may take to come up (interface configured, control socket answering).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM during cleanup.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `ip netns add` is racy when several run at once on a fresh machine (it sets up the shared
/// /run/netns mount on first use), so namespace creation and deletion is serialised.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn netns_lock() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether DHTUN_REQUIRE_NETNS=1 forbids skipping namespace tests.
pub fn netns_required() -> bool {
    std::env::var("DHTUN_REQUIRE_NETNS").is_ok_and(|v| v == "1")
}

/// Root/skip policy. Returns true when the namespace test can run. Otherwise prints a loud
/// SKIPPED line and returns false, or panics when `DHTUN_REQUIRE_NETNS=1` (as in CI).
pub fn netns_available(test: &str) -> bool {
    match unavailable_reason() {
        None => true,
        Some(why) => {
            if netns_required() {
                panic!(
                    "netns test {test} cannot run: it needs {why}; \
                     DHTUN_REQUIRE_NETNS=1 is set, so this is a failure, not a skip"
                );
            }
            loud(&format!(
                "\n************************************************************\n\
                 SKIPPED: netns test {test} needs {why}\n\
                 (run as root, or set DHTUN_REQUIRE_NETNS=1 to make this a failure)\n\
                 ************************************************************\n"
            ));
            false
        }
    }
}

/// Print to the real stderr, past the test harness's output capture, so a skip is always seen.
pub fn loud(msg: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{msg}");
}

/// Whether the process runs as root (namespace operations are possible).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON.get_or_init(probe_environment).clone()
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(cmd);
            p.is_file()
                && fs::metadata(&p)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                    .unwrap_or(false)
        })
    })
}

fn probe_environment() -> Option<String> {
    if !is_root() {
        return Some("root (it creates network namespaces)".into());
    }
    for (cmd, pkg) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if !on_path(cmd) {
            return Some(format!("the `{cmd}` command (Debian package {pkg})"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun (the tun kernel module)".into());
    }
    sweep_stale_namespaces();
    let name = format!("dhtun-probe-{}-x", std::process::id());
    let _guard = netns_lock();
    let out = Command::new("ip").args(["netns", "add", &name]).output();
    let result = match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "a working `ip netns add` (it failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("a working `ip` command ({e})")),
    };
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    result
}

/// Delete namespaces left behind by earlier runs that were killed before their cleanup ran:
/// names `dhtun-TAG-PID-X` whose PID is no longer alive.
fn sweep_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('-').collect();
        if parts.len() != 4 || parts[0] != "dhtun" {
            continue;
        }
        let Ok(pid) = parts[2].parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("note: deleting stale namespace {name} left by dead process {pid}");
        let _guard = netns_lock();
        kill_namespace_pids(&name);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
}

fn kill_namespace_pids(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a pid that `ip netns pids` reported for our namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// One end of the tunnel.
#[derive(Clone, Debug)]
pub struct Node {
    /// Namespace the daemon runs in.
    pub ns: String,
    /// TUN interface name (globally unique: the control socket path is not per namespace).
    pub iface: String,
    pub secret: String,
    pub public: String,
    /// Underlay address on the veth (198.18.0.x).
    pub underlay: String,
    /// Overlay IPv4 address without prefix length.
    pub v4: String,
    /// Overlay IPv6 address without prefix length.
    pub v6: String,
    /// UDP listen port (inside the node's namespace).
    pub port: u16,
    /// Write the secret to a 0600 file (`private_key_file`) instead of inline `private_key`.
    pub key_in_file: bool,
}

impl Node {
    /// The control socket path of this node's daemon.
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.iface)
    }
}

pub fn socket_path(iface: &str) -> PathBuf {
    PathBuf::from(format!("/run/dhtun/{iface}.sock"))
}

/// A running `dhtun up`.
pub struct Daemon {
    pub ns: String,
    pub iface: String,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Everything one test created; cleaned up on drop.
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    daemons: Vec<Daemon>,
    /// Other processes of the test (`dhtun dht-node`), stopped after the daemons.
    helpers: Vec<Helper>,
    namespaces: Vec<String>,
    keep_dir: bool,
}

/// A process other than `dhtun up` that a test started, e.g. `dhtun dht-node`.
pub struct Helper {
    pub name: String,
    pub ns: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Lab {
    /// `tag` is a short (1-3 chars) test-specific tag that goes into every name.
    pub fn new(tag: &str) -> Lab {
        assert!(
            !tag.is_empty() && tag.len() <= 3 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "bad lab tag {tag:?}"
        );
        let dir = std::env::temp_dir().join(format!("dhtun-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Lab {
            tag: tag.to_string(),
            dir,
            daemons: Vec::new(),
            helpers: Vec::new(),
            namespaces: Vec::new(),
            keep_dir: false,
        }
    }

    /// A namespace name unique to this test and process.
    pub fn ns_name(&self, suffix: &str) -> String {
        format!("dhtun-{}-{}-{suffix}", self.tag, std::process::id())
    }

    /// An interface name (at most 15 bytes) unique to this test and process.
    pub fn iface_name(&self, suffix: &str) -> String {
        let name = format!("d{}{}{suffix}", self.tag, std::process::id() % 100_000);
        assert!(name.len() <= 15, "interface name {name} too long");
        name
    }

    /// Create a namespace (registered for cleanup before anything else can fail) with lo up.
    #[track_caller]
    pub fn add_ns(&mut self, suffix: &str) -> String {
        let name = self.ns_name(suffix);
        {
            let _guard = netns_lock();
            // A leftover from an earlier run with the same pid: remove it first.
            if Path::new("/run/netns").join(&name).exists() {
                kill_namespace_pids(&name);
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
            let out = run(Command::new("ip").args(["netns", "add", &name]));
            if !out.status.success() {
                self.fail(format!(
                    "`ip netns add {name}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            self.namespaces.push(name.clone());
        }
        self.ip_ok(&name, &["link", "set", "lo", "up"]);
        name
    }

    /// Two namespaces A and B joined by a veth pair with underlay addresses, and two nodes with
    /// fresh keys. A keeps its secret in a file, B inline, so both config forms are exercised.
    /// No daemon is started yet.
    pub fn pair(tag: &str, port: u16) -> (Lab, Node, Node) {
        let mut lab = Lab::new(tag);
        let ns_a = lab.add_ns("a");
        let ns_b = lab.add_ns("b");
        lab.ip_ok(
            &ns_a,
            &[
                "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &ns_b,
            ],
        );
        for (ns, addr) in [(&ns_a, "198.18.0.1/24"), (&ns_b, "198.18.0.2/24")] {
            lab.ip_ok(ns, &["addr", "add", addr, "dev", "ul0"]);
            lab.ip_ok(ns, &["link", "set", "ul0", "up"]);
        }
        let a = lab.node(ns_a, "a", 1, port, true);
        let b = lab.node(ns_b, "b", 2, port, false);
        (lab, a, b)
    }

    /// A node in `ns` with overlay host number `host` (1 or 2) and a fresh key pair.
    pub fn node(&self, ns: String, suffix: &str, host: u8, port: u16, key_in_file: bool) -> Node {
        let secret = self.genkey();
        let public = self.pubkey(&secret);
        Node {
            ns,
            iface: self.iface_name(suffix),
            secret,
            public,
            underlay: format!("198.18.0.{host}"),
            v4: format!("100.64.0.{host}"),
            v6: format!("fd64::{host}"),
            port,
            key_in_file,
        }
    }

    pub fn genkey(&self) -> String {
        let out = run(Command::new(BIN).arg("genkey"));
        if !out.status.success() {
            self.fail(format!("`dhtun genkey` failed: {}", describe(&out)));
        }
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!key.is_empty(), "`dhtun genkey` printed nothing");
        key
    }

    pub fn pubkey(&self, secret: &str) -> String {
        let mut child = Command::new(BIN)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN} pubkey: {e}"));
        {
            let mut stdin = child.stdin.take().expect("piped stdin");
            writeln!(stdin, "{secret}").expect("write secret to dhtun pubkey");
        }
        let out = wait_output(child, Duration::from_secs(10), "dhtun pubkey");
        if !out.status.success() {
            self.fail(format!("`dhtun pubkey` failed: {}", describe(&out)));
        }
        let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!key.is_empty(), "`dhtun pubkey` printed nothing");
        key
    }

    /// Render the config of `me`, with one `[[peer]]` per entry of `peers`: the peer's overlay
    /// /32 and /128 plus `extra` allowed_ips, and its static endpoint.
    pub fn config_text(&self, me: &Node, peers: &[(&Node, &[&str])]) -> String {
        let mut s = self.interface_section(me);
        s.push_str("\n[dht]\nenabled = false\n");
        for (peer, extra) in peers {
            s.push_str(&peer_section(peer, extra, true));
        }
        s
    }

    /// Render the config of `me` for discovery through the DHT: `[dht] bootstrap` (each
    /// `IP:PORT`) with `server_mode = true`, as on a private network, and one `[[peer]]` per entry
    /// of `peers` with its public key and allowed_ips (overlay /32 and /128 plus `extra`) but no
    /// endpoint: the daemon has to find it in the DHT.
    pub fn dht_config_text(
        &self,
        me: &Node,
        peers: &[(&Node, &[&str])],
        bootstrap: &[&str],
    ) -> String {
        let mut s = self.interface_section(me);
        let nodes: Vec<String> = bootstrap.iter().map(|b| format!("\"{b}\"")).collect();
        s.push_str(&format!(
            "\n[dht]\nbootstrap = [{}]\nserver_mode = true\n",
            nodes.join(", ")
        ));
        for (peer, extra) in peers {
            s.push_str(&peer_section(peer, extra, false));
        }
        s
    }

    /// The `[interface]` section of `me`'s config (writes the key file when `key_in_file`).
    fn interface_section(&self, me: &Node) -> String {
        let mut s = String::new();
        s.push_str("[interface]\n");
        s.push_str(&format!("name = \"{}\"\n", me.iface));
        if me.key_in_file {
            let key_path = self.dir.join(format!("{}.key", me.iface));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_path)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", key_path.display()));
            writeln!(f, "{}", me.secret).expect("write key file");
            s.push_str(&format!("private_key_file = \"{}\"\n", key_path.display()));
        } else {
            s.push_str(&format!("private_key = \"{}\"\n", me.secret));
        }
        s.push_str(&format!("address = [\"{}/24\", \"{}/64\"]\n", me.v4, me.v6));
        s.push_str(&format!("listen_port = {}\n", me.port));
        s.push_str("mtu = 1420\n");
        s
    }

    /// Write a file into the lab directory and return its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Write `me`'s config and start its daemon; waits until it is ready.
    #[track_caller]
    pub fn up(&mut self, me: &Node, peers: &[(&Node, &[&str])]) {
        let text = self.config_text(me, peers);
        let config = self.write_file(&format!("{}.toml", me.iface), &text);
        self.start_daemon(&me.ns, &me.iface, &config);
        self.wait_ready(&me.iface, &me.v4);
    }

    /// Like `up`, with `keys` (lines of `[interface]`) added to the lab config; `peer` is the
    /// only peer.
    #[track_caller]
    pub fn up_with_interface_keys(&mut self, me: &Node, peer: &Node, keys: &str) {
        let text = self.config_with_interface_keys(me, peer, keys);
        let config = self.write_file(&format!("{}.toml", me.iface), &text);
        self.start_daemon(&me.ns, &me.iface, &config);
        self.wait_ready(&me.iface, &me.v4);
    }

    /// The lab config of `me` with `peer` as its only peer and `keys` added to `[interface]`.
    #[track_caller]
    pub fn config_with_interface_keys(&self, me: &Node, peer: &Node, keys: &str) -> String {
        let text = self.config_text(me, &[(peer, &[])]);
        // The lab config ends [interface] where [dht] begins.
        let Some(at) = text.find("[dht]") else {
            self.fail("the lab config has no [dht] section to put interface keys before");
        };
        format!("{}{keys}\n{}", &text[..at], &text[at..])
    }

    /// Bring up A and B pointing at each other; `a_extra` are extra allowed_ips of B in A's config
    /// (subnets behind B), `b_extra` of A in B's config.
    #[track_caller]
    pub fn up_pair(&mut self, a: &Node, b: &Node, a_extra: &[&str], b_extra: &[&str]) {
        self.up(a, &[(b, a_extra)]);
        self.up(b, &[(a, b_extra)]);
    }

    /// Spawn `dhtun up CONFIG` inside `ns` with RUST_LOG=info (or DHTUN_TEST_LOG), stderr and
    /// stdout to a log file.
    pub fn start_daemon(&mut self, ns: &str, iface: &str, config: &Path) {
        // A restarted daemon logs to a file of its own: {iface}.log, then {iface}.2.log, ...
        let starts = self.daemons.iter().filter(|d| d.iface == iface).count();
        let log = match starts {
            0 => self.dir.join(format!("{iface}.log")),
            n => self.dir.join(format!("{iface}.{}.log", n + 1)),
        };
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let file2 = file.try_clone().expect("clone log file handle");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "up"])
            .arg(config)
            .env("RUST_LOG", daemon_log_level())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `ip netns exec {ns} {BIN} up`: {e}"));
        self.daemons.push(Daemon {
            ns: ns.to_string(),
            iface: iface.to_string(),
            config: config.to_path_buf(),
            log,
            child: Some(child),
        });
    }

    fn daemon_mut(&mut self, iface: &str) -> &mut Daemon {
        // The newest one: a daemon stopped and started again has two entries.
        self.daemons
            .iter_mut()
            .rev()
            .find(|d| d.iface == iface)
            .unwrap_or_else(|| panic!("no daemon for {iface} in this lab"))
    }

    /// The pid of the daemon of `iface`. `ip netns exec` execs the command it is given, so the
    /// spawned child is the daemon itself; checked through /proc/PID/comm, because a wrapper
    /// process here would make every /proc figure read from it (memory above all) meaningless.
    #[track_caller]
    pub fn daemon_pid(&mut self, iface: &str) -> u32 {
        let pid = match self.daemon_mut(iface).child.as_ref() {
            Some(child) => child.id(),
            None => self.fail(format!("daemon for {iface} has no running child")),
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let want = Path::new(BIN)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // comm is cut to 15 bytes by the kernel.
        if comm.trim() != want.chars().take(15).collect::<String>() {
            self.fail(format!(
                "pid {pid} of the daemon for {iface} is {:?}, not {want:?}: \
                 `ip netns exec` did not exec the daemon in place",
                comm.trim()
            ));
        }
        pid
    }

    /// Has the daemon of `iface` exited? Returns its status if so.
    pub fn daemon_exited(&mut self, iface: &str) -> Option<ExitStatus> {
        let d = self.daemon_mut(iface);
        match d.child.as_mut() {
            None => None,
            Some(c) => c.try_wait().ok().flatten(),
        }
    }

    /// Wait (bounded) for the daemon of `iface` to exit; returns its status or None on timeout.
    pub fn wait_daemon_exit(&mut self, iface: &str, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.daemon_exited(iface) {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the daemon answers `status` and its interface carries `v4`.
    #[track_caller]
    pub fn wait_ready(&mut self, iface: &str, v4: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ns = self.daemon_mut(iface).ns.clone();
        loop {
            if let Some(st) = self.daemon_exited(iface) {
                self.fail(format!(
                    "daemon for {iface} exited during startup with {st}; expected it to keep running"
                ));
            }
            let status = self.status_raw(iface);
            let addrs =
                run(Command::new("ip").args(["-n", &ns, "-o", "addr", "show", "dev", iface]));
            let addr_ok = String::from_utf8_lossy(&addrs.stdout).contains(&format!("inet {v4}/"));
            let last = match status {
                Ok(_) if addr_ok => return,
                Ok(_) => format!("status ok, but {v4} not yet on {iface}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.fail(format!(
                    "daemon for {iface} not ready after {READY_TIMEOUT:?}: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `dhtun status IFACE --json`, parsed; the object for `iface`.
    pub fn status_raw(&self, iface: &str) -> Result<Value, String> {
        let out = run_timeout(
            Command::new(BIN).args(["status", iface, "--json"]),
            Duration::from_secs(10),
        );
        if !out.status.success() {
            return Err(format!(
                "`dhtun status {iface} --json` failed: {}",
                describe(&out)
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "`dhtun status {iface} --json` printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        // Accept an array too, and pick our interface out of it.
        let obj = match v {
            Value::Array(items) => items
                .into_iter()
                .find(|i| i["interface"] == iface)
                .ok_or_else(|| format!("status array has no entry for {iface}"))?,
            other => other,
        };
        if obj["interface"] != iface {
            return Err(format!(
                "status has \"interface\" {} instead of {iface}",
                obj["interface"]
            ));
        }
        Ok(obj)
    }

    #[track_caller]
    pub fn status(&self, iface: &str) -> Value {
        self.status_raw(iface).unwrap_or_else(|e| self.fail(e))
    }

    /// A `drops` counter of an interface's status.
    #[track_caller]
    pub fn drop_counter(&self, status: &Value, name: &str) -> u64 {
        status["drops"][name].as_u64().unwrap_or_else(|| {
            self.fail(format!(
                "status has no numeric drops.{name}; expected one per the contract. status: {status}"
            ))
        })
    }

    /// The status entry of peer `public_key`.
    #[track_caller]
    pub fn peer_status<'a>(&self, status: &'a Value, public_key: &str) -> &'a Value {
        status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["public_key"] == public_key))
            .unwrap_or_else(|| {
                self.fail(format!(
                    "status has no peer with public_key {public_key}; status: {status}"
                ))
            })
    }

    /// A numeric counter of peer `public_key`.
    #[track_caller]
    pub fn peer_counter(&self, status: &Value, public_key: &str, field: &str) -> u64 {
        let p = self.peer_status(status, public_key);
        p[field].as_u64().unwrap_or_else(|| {
            self.fail(format!(
                "peer {public_key} has no numeric {field}; expected one per the contract. peer: {p}"
            ))
        })
    }

    /// Run a command inside a namespace (`ip netns exec NS ...`), bounded to 30 s.
    pub fn ns_exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// `ip -n NS ARGS...`, which must succeed; returns stdout.
    #[track_caller]
    pub fn ip_ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ip(ns, args);
        if !out.status.success() {
            self.fail(format!(
                "`ip -n {ns} {}` failed: {}",
                args.join(" "),
                describe(&out)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create a local stub interface `name` in `ns`, up: a dummy link, or where the kernel has no
    /// dummy driver, a veth pair whose both ends stay in `ns` (`name` and `name`+"p").
    #[track_caller]
    pub fn add_stub_link(&self, ns: &str, name: &str) {
        let dummy = self.ip(ns, &["link", "add", name, "type", "dummy"]);
        if !dummy.status.success() {
            let peer = format!("{name}p");
            self.ip_ok(
                ns,
                &["link", "add", name, "type", "veth", "peer", "name", &peer],
            );
            self.ip_ok(ns, &["link", "set", &peer, "up"]);
        }
        self.ip_ok(ns, &["link", "set", name, "up"]);
    }

    /// Set an IPv4/IPv6 sysctl (path under /proc/sys, e.g. "net/ipv4/conf/all/rp_filter") in `ns`.
    #[track_caller]
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_string();
        let res = in_netns(ns, move || {
            fs::write(&path, value.as_bytes()).map_err(|e| format!("write {path}: {e}"))
        })
        .join()
        .expect("sysctl thread panicked");
        if let Err(e) = res {
            self.fail(format!("cannot set sysctl {key} in {ns}: {e}"));
        }
    }

    /// Ping `addr` from `ns`, one echo per attempt (1 s wait each), up to `attempts` times: the
    /// first packets may be lost while the handshake runs. Returns the number of attempts used.
    pub fn ping(&self, ns: &str, addr: &str, attempts: u32) -> Result<u32, String> {
        let mut last = String::from("no attempt made");
        for i in 1..=attempts {
            let out = self.ns_exec(ns, &["ping", "-n", "-c", "1", "-W", "1", addr]);
            if out.status.success() {
                return Ok(i);
            }
            last = describe(&out);
        }
        Err(format!(
            "ping {addr} from {ns} failed {attempts} times; last attempt: {last}"
        ))
    }

    /// Like `ping`, but a failure fails the test with the daemon logs attached.
    #[track_caller]
    pub fn must_ping(&self, from: &Node, addr: &str) {
        if let Err(e) = self.ping(&from.ns, addr, 15) {
            self.fail(format!(
                "expected {} to reach {addr} through the tunnel: {e}",
                from.ns
            ));
        }
    }

    /// Send one UDP datagram from `src` (a local address in `ns`) to `dst`.
    #[track_caller]
    pub fn send_udp(&self, ns: &str, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let payload = payload.to_vec();
        let res = in_netns(ns, move || {
            let sock = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
            sock.send_to(&payload, dst)
                .map_err(|e| format!("send {src} -> {dst}: {e}"))?;
            Ok(())
        })
        .join()
        .expect("udp sender thread panicked");
        if let Err(e) = res {
            self.fail(format!("cannot send UDP in {ns}: {e}"));
        }
    }

    /// All daemon logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for d in &self.daemons {
            let text = fs::read_to_string(&d.log).unwrap_or_else(|e| format!("<unreadable: {e}>"));
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(60);
            s.push_str(&format!(
                "\n----- daemon {} in {} (last {} of {} log lines, {}) -----\n",
                d.iface,
                d.ns,
                lines.len() - start,
                lines.len(),
                d.log.display()
            ));
            for l in &lines[start..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        for h in &self.helpers {
            let text = fs::read_to_string(&h.log).unwrap_or_else(|e| format!("<unreadable: {e}>"));
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(20);
            s.push_str(&format!(
                "\n----- {} in {} (last {} of {} log lines, {}) -----\n",
                h.name,
                h.ns,
                lines.len() - start,
                lines.len(),
                h.log.display()
            ));
            for l in &lines[start..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Fail the test with `msg` and every daemon's log.
    #[track_caller]
    pub fn fail(&self, msg: impl Display) -> ! {
        panic!("{msg}\n{}", self.logs());
    }

    /// Forget that the directory should be removed (keep logs for inspection).
    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    // ----- The hub topology: a private "internet" for discovery through the DHT -----
    //
    // The same layout as netns-scripts/lab.sh: a hub namespace whose bridge br0 carries
    // 198.18.0.254/24 and runs `dhtun dht-node` on 198.18.0.254:6881; each peer namespace joined
    // to the bridge by a veth (`ul0` inside it, `p<suffix>` on the bridge) with underlay
    // 198.18.0.<host>/24; overlay 100.64.0.<host> and fd64::<host>; subnet 100.65.<host>.0/24.

    /// Create the hub namespace (suffix `hub`) with bridge br0 carrying HUB_ADDR/24.
    #[track_caller]
    pub fn add_hub(&mut self) -> String {
        let hub = self.add_ns("hub");
        self.ip_ok(&hub, &["link", "add", "br0", "type", "bridge"]);
        self.ip_ok(
            &hub,
            &["addr", "add", &format!("{HUB_ADDR}/24"), "dev", "br0"],
        );
        self.ip_ok(&hub, &["link", "set", "br0", "up"]);
        hub
    }

    /// Create namespace `suffix` and join it to the bridge of `hub`: veth `ul0` in it carrying
    /// `underlay`/24, its other end `p<suffix>` on br0.
    #[track_caller]
    pub fn attach_to_hub(&mut self, hub: &str, suffix: &str, underlay: &str) -> String {
        let ns = self.add_ns(suffix);
        let port = format!("p{suffix}");
        self.ip_ok(
            hub,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", &ns,
            ],
        );
        self.ip_ok(hub, &["link", "set", &port, "master", "br0"]);
        self.ip_ok(hub, &["link", "set", &port, "up"]);
        self.ip_ok(
            &ns,
            &["addr", "add", &format!("{underlay}/24"), "dev", "ul0"],
        );
        self.ip_ok(&ns, &["link", "set", "ul0", "up"]);
        ns
    }

    /// A hub running `dhtun dht-node` on HUB_ADDR:DHT_PORT, and one namespace per entry of
    /// `hosts` (suffixes a, b, c, ...) attached to it with underlay 198.18.0.<host>, each with a
    /// node (fresh keys, UDP port `port`; the first keeps its key in a file, the others inline).
    /// No `dhtun up` is started yet. Returns the lab, the hub's namespace and the nodes.
    pub fn hub(tag: &str, hosts: &[u8], port: u16) -> (Lab, String, Vec<Node>) {
        let mut lab = Lab::new(tag);
        let hub = lab.add_hub();
        lab.start_dht_node(&hub, &format!("{HUB_ADDR}:{DHT_PORT}"));
        let mut nodes = Vec::new();
        for (i, &host) in hosts.iter().enumerate() {
            let suffix = char::from(b'a' + u8::try_from(i).expect("at most 26 hosts")).to_string();
            let ns = lab.attach_to_hub(&hub, &suffix, &format!("198.18.0.{host}"));
            nodes.push(lab.node(ns, &suffix, host, port, i == 0));
        }
        (lab, hub, nodes)
    }

    /// The subnet behind `node`: interface lan0 carrying 100.65.<host>.1/24 in its namespace.
    /// Returns that address.
    #[track_caller]
    pub fn add_subnet(&self, node: &Node, host: u8) -> String {
        self.add_stub_link(&node.ns, "lan0");
        let addr = format!("100.65.{host}.1");
        self.ip_ok(
            &node.ns,
            &["addr", "add", &format!("{addr}/24"), "dev", "lan0"],
        );
        addr
    }

    /// Move `node`'s underlay on ul0 to `new` (an address of 198.18.0.0/24, without prefix) and
    /// update `node.underlay`.
    #[track_caller]
    pub fn move_underlay(&self, node: &mut Node, new: &str) {
        let old = format!("{}/24", node.underlay);
        self.ip_ok(&node.ns, &["addr", "del", &old, "dev", "ul0"]);
        self.ip_ok(
            &node.ns,
            &["addr", "add", &format!("{new}/24"), "dev", "ul0"],
        );
        node.underlay = new.to_string();
    }

    /// Start `dhtun dht-node --listen LISTEN` in `ns` (stopped on drop, after the daemons) and
    /// wait until its UDP socket is bound.
    #[track_caller]
    pub fn start_dht_node(&mut self, ns: &str, listen: &str) {
        let port: u16 = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("dht-node listen address {listen} has no port"));
        let name = format!("dht-node {listen}");
        let log = self
            .dir
            .join(format!("dht-node-{}.log", self.helpers.len()));
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let file2 = file.try_clone().expect("clone log file handle");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "dht-node", "--listen", listen])
            .env("RUST_LOG", daemon_log_level())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `ip netns exec {ns} {BIN} dht-node`: {e}"));
        self.helpers.push(Helper {
            name: name.clone(),
            ns: ns.to_string(),
            log,
            child: Some(child),
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .helpers
                .last_mut()
                .and_then(|h| h.child.as_mut())
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(st) = exited {
                self.fail(format!("{name} in {ns} exited during startup with {st}"));
            }
            match udp_port_bound(ns, port) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => self.fail(format!("cannot tell whether {name} listens: {e}")),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "{name} in {ns} did not bind UDP port {port} within {READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write `me`'s DHT-discovery config (see `dht_config_text`) and start its daemon; waits
    /// until it is ready. Returns the config path.
    #[track_caller]
    pub fn up_dht(&mut self, me: &Node, peers: &[(&Node, &[&str])], bootstrap: &[&str]) -> PathBuf {
        let text = self.dht_config_text(me, peers, bootstrap);
        let config = self.write_file(&format!("{}.toml", me.iface), &text);
        self.start_daemon(&me.ns, &me.iface, &config);
        self.wait_ready(&me.iface, &me.v4);
        config
    }

    /// Stop the daemon of `iface` with `dhtun down` and wait (bounded) until it has exited, with
    /// success. Its log stays part of `logs()`; a later `start_daemon` for the same interface
    /// starts a fresh daemon.
    #[track_caller]
    pub fn stop_daemon(&mut self, iface: &str) {
        let out = try_run_timeout(
            Command::new(BIN).args(["down", iface]),
            Duration::from_secs(15),
        );
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => self.fail(format!("`dhtun down {iface}` failed: {}", describe(&o))),
            Err(e) => self.fail(format!("`dhtun down {iface}`: {e}")),
        }
        match self.wait_daemon_exit(iface, STOP_TIMEOUT) {
            Some(st) if st.success() => {}
            Some(st) => self.fail(format!(
                "daemon {iface} exited with {st} after `dhtun down`"
            )),
            None => self.fail(format!(
                "daemon {iface} still runs {STOP_TIMEOUT:?} after `dhtun down` returned"
            )),
        }
        // Reaped: drop the child so cleanup does not signal a pid that may be reused.
        self.daemon_mut(iface).child = None;
    }

    /// The interface-level `dht` object of a status.
    #[track_caller]
    pub fn dht_status<'a>(&self, status: &'a Value) -> &'a Value {
        let dht = &status["dht"];
        if !dht.is_object() {
            self.fail(format!(
                "status has no \"dht\" object though the DHT is enabled; status: {status}"
            ));
        }
        dht
    }

    /// Poll `check` every 50 ms until it returns Some, for at most `timeout`; then fail with
    /// `what` and the last thing `check` reported.
    #[track_caller]
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check() {
                Ok(v) => return v,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.fail(format!("{what}: not within {timeout:?}; last: {last}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the daemon of `iface` has published its record; returns the record's sequence.
    #[track_caller]
    pub fn wait_published(&self, iface: &str) -> i64 {
        self.wait_until(
            &format!("{iface} publishing its DHT record"),
            Duration::from_secs(15),
            || {
                let status = self.status_raw(iface)?;
                status["dht"]["last_publish_seq"]
                    .as_i64()
                    .ok_or_else(|| format!("dht: {}", status["dht"]))
            },
        )
    }
}

/// RUST_LOG of the daemons and DHT nodes a test starts: `info`, or DHTUN_TEST_LOG when set (e.g.
/// `DHTUN_TEST_LOG=debug,mainline=trace` to see each DHT message in the kept logs).
pub fn daemon_log_level() -> String {
    std::env::var("DHTUN_TEST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// The address and port of the hub's DHT node.
pub const HUB_ADDR: &str = "198.18.0.254";
pub const DHT_PORT: u16 = 6881;

/// Send SIGTERM to a child, wait up to STOP_TIMEOUT, then SIGKILL it; always reaps it.
fn stop_child(mut child: Child, name: &str) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on the pid of our own, not yet reaped child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            eprintln!("cleanup: {name} ignored SIGTERM for {STOP_TIMEOUT:?}; killing");
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// Whether a UDP socket in namespace `ns` is bound to local port `port` (IPv4).
pub fn udp_port_bound(ns: &str, port: u16) -> Result<bool, String> {
    in_netns(ns, move || {
        // thread-self, not self: only this thread has joined the namespace.
        let text = fs::read_to_string("/proc/thread-self/net/udp")
            .map_err(|e| format!("read /proc/thread-self/net/udp: {e}"))?;
        Ok(text.lines().skip(1).any(|line| {
            line.split_whitespace()
                .nth(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                == Some(port)
        }))
    })
    .join()
    .unwrap_or_else(|_| Err("/proc/net/udp reader thread panicked".to_string()))
}

/// One `[[peer]]` section: public key, allowed_ips (overlay /32 and /128 plus `extra`) and, when
/// `with_endpoint`, the peer's static endpoint.
fn peer_section(peer: &Node, extra: &[&str], with_endpoint: bool) -> String {
    let mut allowed = vec![
        format!("\"{}/32\"", peer.v4),
        format!("\"{}/128\"", peer.v6),
    ];
    allowed.extend(extra.iter().map(|a| format!("\"{a}\"")));
    let mut s = String::from("\n[[peer]]\n");
    s.push_str(&format!("public_key = \"{}\"\n", peer.public));
    s.push_str(&format!("allowed_ips = [{}]\n", allowed.join(", ")));
    if with_endpoint {
        s.push_str(&format!("endpoint = \"{}:{}\"\n", peer.underlay, peer.port));
    }
    s
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().rev() {
            let Some(mut child) = d.child.take() else {
                continue;
            };
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on the pid of our own, not yet reaped child.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + STOP_TIMEOUT;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if let Ok(None) = child.try_wait() {
                    eprintln!(
                        "cleanup: daemon {} ignored SIGTERM for {STOP_TIMEOUT:?}; killing",
                        d.iface
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    // A killed daemon cannot remove its own control socket.
                    let _ = fs::remove_file(socket_path(&d.iface));
                }
            }
        }
        for h in self.helpers.iter_mut().rev() {
            if let Some(child) = h.child.take() {
                stop_child(child, &h.name);
            }
        }
        let _guard = netns_lock();
        for ns in self.namespaces.iter().rev() {
            kill_namespace_pids(ns);
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("cleanup: could not delete namespace {ns}: {out:?}");
            }
        }
        if std::thread::panicking() || self.keep_dir {
            eprintln!("logs and configs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run a closure on a new thread that has joined network namespace `ns` (the network namespace is
/// per thread, so sockets it opens live in `ns`).
pub fn in_netns<T, F>(ns: &str, f: F) -> JoinHandle<Result<T, String>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, String> + Send + 'static,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let path = Path::new("/run/netns").join(&ns);
        let file = fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        // SAFETY: setns(2) on a valid namespace fd; it only affects the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!(
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            ));
        }
        drop(file);
        f()
    })
}

/// Resident memory of a process, in KiB, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMemory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most that was ever resident (the kernel's own peak, not sampled by us).
    pub hwm_kib: u64,
    /// RssFile: the resident part that maps files, mostly the program's and libraries' code.
    /// It depends on the build (a debug binary keeps far more code pages), not on the load.
    pub file_kib: u64,
}

impl ProcMemory {
    /// Resident memory that the process itself allocated (heap, stacks, buffers): VmRSS less the
    /// file-backed pages.
    pub fn private_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.file_kib)
    }
}

/// Read VmRSS, VmHWM and RssFile of `pid`.
pub fn proc_memory(pid: u32) -> Result<ProcMemory, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let field = |name: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path} has no {name} line"))
    };
    Ok(ProcMemory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        file_kib: field("RssFile:")?,
    })
}

/// A counter of the `Udp:` lines of namespace `ns`'s /proc/net/snmp, e.g. "RcvbufErrors" (datagrams
/// dropped because a socket's receive buffer was full).
pub fn netns_udp_counter(ns: &str, name: &str) -> Result<u64, String> {
    let name = name.to_string();
    in_netns(ns, move || {
        // thread-self, not self: only this thread has joined the namespace.
        let text = fs::read_to_string("/proc/thread-self/net/snmp")
            .map_err(|e| format!("read /proc/thread-self/net/snmp: {e}"))?;
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(head), Some(values)) = (udp.next(), udp.next()) else {
            return Err("no Udp: lines in /proc/net/snmp".to_string());
        };
        head.split_whitespace()
            .zip(values.split_whitespace())
            .find(|(h, _)| *h == name)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| format!("no Udp {name} counter in /proc/net/snmp"))
    })
    .join()
    .unwrap_or_else(|_| Err("snmp reader thread panicked".to_string()))
}

/// Run a command to completion (no timeout; for commands that cannot block).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command, killing it if it has not finished within `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_output(child, timeout, &format!("{cmd:?}"))
}

/// Collect a child's output, killing it after `timeout` (then the test fails).
pub fn wait_output(child: Child, timeout: Duration, what: &str) -> Output {
    try_wait_output(child, timeout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Like `run_timeout`, but a timeout is an `Err` instead of a panic.
pub fn try_run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    try_wait_output(child, timeout)
}

/// Collect a child's output; after `timeout` kill it and return what it printed as an error.
pub fn try_wait_output(mut child: Child, timeout: Duration) -> Result<Output, String> {
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "did not finish within {timeout:?}, killed it; stdout: {:?}; stderr: {:?}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        )),
    }
}

/// "exit status N; stdout: ...; stderr: ..." for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {:?}; stderr: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A seeded pseudo-random byte stream (splitmix64), identical however it is chunked.
pub struct ByteStream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl ByteStream {
    pub fn new(seed: u64) -> ByteStream {
        ByteStream {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        // Finish the current word, then whole words, then start a new partial one.
        while i < out.len() && self.used < 8 {
            out[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        while out.len() - i >= 8 {
            let w = self.next_word().to_le_bytes();
            out[i..i + 8].copy_from_slice(&w);
            i += 8;
        }
        if i < out.len() {
            self.word = self.next_word().to_le_bytes();
            self.used = 0;
            while i < out.len() {
                out[i] = self.word[self.used];
                self.used += 1;
                i += 1;
            }
        }
    }
}

/// 64-bit FNV-1a, fed incrementally.
pub struct Fnv64(pub u64);

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

/// The drop counters that moved between two statuses of one interface (or one peer), as
/// "name +n, ..." ("none" when nothing moved).
pub fn drops_moved(before: &Value, after: &Value) -> String {
    let Some(drops) = after["drops"].as_object() else {
        return "unknown (status has no drops object)".to_string();
    };
    let moved: Vec<String> = drops
        .iter()
        .filter_map(|(name, v)| {
            let d = v
                .as_u64()?
                .saturating_sub(before["drops"][name].as_u64().unwrap_or(0));
            (d > 0).then(|| format!("{name} +{d}"))
        })
        .collect();
    if moved.is_empty() {
        "none".to_string()
    } else {
        moved.join(", ")
    }
}
