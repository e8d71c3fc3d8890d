//! Starting and stopping `dhtun up` in a lab: bring-up from a written config, readiness, the
//! daemon's pid and exit, and `dhtun down`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{cli_in, describe, run, try_run_timeout, Lab, Node, BIN, READY_TIMEOUT, STOP_TIMEOUT};

/// A running `dhtun up`.
pub struct Daemon {
    pub ns: String,
    pub iface: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub(super) child: Option<Child>,
}

impl Lab {
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

    /// Bring up A and B pointing at each other; `a_extra` are extra allowed_ips of B in A's config
    /// (subnets behind B), `b_extra` of A in B's config.
    #[track_caller]
    pub fn up_pair(&mut self, a: &Node, b: &Node, a_extra: &[&str], b_extra: &[&str]) {
        self.up(a, &[(b, a_extra)]);
        self.up(b, &[(a, b_extra)]);
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

    /// Stop the daemon of `iface` with `dhtun down` and wait (bounded) until it has exited, with
    /// success. Its log stays part of `logs()`; a later `start_daemon` for the same interface
    /// starts a fresh daemon.
    #[track_caller]
    pub fn stop_daemon(&mut self, iface: &str) {
        let ns = self.daemon_mut(iface).ns.clone();
        let out = try_run_timeout(&mut cli_in(&ns, &["down", iface]), Duration::from_secs(15));
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

    /// The namespace of the newest daemon of `iface`, if this lab started one.
    pub fn daemon_ns(&self, iface: &str) -> Option<&str> {
        self.daemons
            .iter()
            .rev()
            .find(|d| d.iface == iface)
            .map(|d| d.ns.as_str())
    }

    fn daemon_mut(&mut self, iface: &str) -> &mut Daemon {
        // The newest one: a daemon stopped and started again has two entries.
        self.daemons
            .iter_mut()
            .rev()
            .find(|d| d.iface == iface)
            .unwrap_or_else(|| panic!("no daemon for {iface} in this lab"))
    }
}

/// RUST_LOG of the daemons and DHT nodes a test starts: `info`, or DHTUN_TEST_LOG when set (e.g.
/// `DHTUN_TEST_LOG=debug,mainline=trace` to see each DHT message in the kept logs).
pub fn daemon_log_level() -> String {
    std::env::var("DHTUN_TEST_LOG").unwrap_or_else(|_| "info".to_string())
}
