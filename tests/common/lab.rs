//! The `Lab`: what one test created (namespaces, daemons, helper processes, a directory), its
//! veth-pair topology, nodes and their keys, the logs for failure messages, and cleanup on drop.

use std::fmt::Display;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{kill_namespace_pids, netns_lock};
use super::{describe, run, wait_output, Daemon, BIN, STOP_TIMEOUT};

/// One end of the tunnel.
#[derive(Clone, Debug)]
pub struct Node {
    /// Namespace the daemon runs in.
    pub ns: String,
    /// TUN interface name (unique to the test, so that logs and configs can be told apart).
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
    /// `dhtun ARGS...` run in this node's namespace, where the CLI finds its daemon.
    pub fn cli(&self, args: &[&str]) -> Command {
        cli_in(&self.ns, args)
    }
}

/// `dhtun ARGS...` run in namespace `ns` (`ip netns exec`): the control socket of a daemon
/// belongs to its network namespace, so `status`, `reload` and `down` must run there.
pub fn cli_in(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, BIN]).args(args);
    cmd
}

/// Whether a control socket for `iface` listens in namespace `ns` (its abstract socket, as
/// /proc/net/unix lists it there).
pub fn control_listening(ns: &str, iface: &str) -> bool {
    let out = super::run(Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/unix"]));
    let name = format!("@dhtun/{iface}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().nth(7) == Some(name.as_str()))
}

/// Everything one test created; cleaned up on drop.
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    pub(super) daemons: Vec<Daemon>,
    /// Other processes of the test (`dhtun dht-node`), stopped after the daemons.
    pub(super) helpers: Vec<Helper>,
    pub(super) namespaces: Vec<String>,
    pub(super) keep_dir: bool,
}

/// A process other than `dhtun up` that a test started, e.g. `dhtun dht-node`.
pub struct Helper {
    pub name: String,
    pub ns: String,
    pub log: PathBuf,
    pub(super) child: Option<Child>,
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

    /// Write a file into the lab directory and return its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
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
