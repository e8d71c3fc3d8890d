//! Namespace plumbing: the root/skip policy of the namespace tests, the lock that serialises
//! `ip netns add` and `del`, the sweep of namespaces left by dead runs, and `in_netns`.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

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

/// `ip netns add` is racy when several run at once on a fresh machine (it sets up the shared
/// /run/netns mount on first use), so namespace creation and deletion is serialised.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

pub(super) fn netns_lock() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn kill_namespace_pids(ns: &str) {
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
