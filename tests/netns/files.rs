//! Config and key files that are not what they claim to be (a FIFO, /dev/zero, /dev/urandom, a
//! directory): `up` and `reload` refuse them at once in one line, without reading them, while
//! packets keep flowing.

use std::ffi::CString;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{describe, proc_memory, run_timeout, Lab, Node, BIN};

/// A refusal must come at once: reading nothing takes milliseconds, even on a loaded machine.
const REFUSAL_WITHIN: Duration = Duration::from_secs(3);
/// Peak resident memory allowed to a daemon or `dhtun up` that refuses a file. A debug build of
/// the running daemon peaks at about 20 MiB; reading /dev/zero ran to 520 MiB.
const MAX_PEAK_KIB: u64 = 64 * 1024;

#[test]
fn reload_refuses_a_fifo_as_key_file_while_packets_flow() {
    if !common::netns_available("reload_refuses_a_fifo_as_key_file_while_packets_flow") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("ff", 51851);
    lab.up_pair(&a, &b, &[], &[]);
    lab.must_ping(&a, &b.v4);
    let fifo = make_fifo(&lab, "key.fifo");
    write_config_with_key_file(&lab, &a, &b, &fifo);

    let (took, out) = reload(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.trim().lines().count() != 1 || !err.contains("a FIFO") {
        lab.fail(format!(
            "a FIFO as private_key_file should be refused in one line naming it; {}",
            describe(&out)
        ));
    }
    if took > REFUSAL_WITHIN {
        lab.fail(format!("the refusal took {took:?}"));
    }
    // Nothing was written to the FIFO: a daemon still reading it would answer neither.
    lab.must_ping(&a, &b.v4);
    lab.status(&a.iface);
}

#[test]
fn reload_refuses_dev_zero_as_key_file_without_reading_it() {
    if !common::netns_available("reload_refuses_dev_zero_as_key_file_without_reading_it") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("fz", 51852);
    lab.up_pair(&a, &b, &[], &[]);
    for device in ["/dev/zero", "/dev/urandom"] {
        write_config_with_key_file(&lab, &a, &b, Path::new(device));
        let (took, out) = reload(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("a character device, not a regular file") {
            lab.fail(format!(
                "{device} as private_key_file should be refused as a device; {}",
                describe(&out)
            ));
        }
        if took > REFUSAL_WITHIN {
            lab.fail(format!("refusing {device} took {took:?}"));
        }
    }
    let pid = lab.daemon_pid(&a.iface);
    let memory = proc_memory(pid).unwrap_or_else(|e| lab.fail(e));
    if memory.hwm_kib > MAX_PEAK_KIB {
        lab.fail(format!(
            "the daemon peaked at {} KiB (VmHWM) refusing /dev/zero; at most {MAX_PEAK_KIB} KiB",
            memory.hwm_kib
        ));
    }
    lab.must_ping(&a, &b.v4);
}

#[test]
fn up_refuses_fifos_and_devices_at_once() {
    if !common::netns_available("up_refuses_fifos_and_devices_at_once") {
        return;
    }
    let mut lab = Lab::new("fu");
    let ns = lab.add_ns("x");
    let node = lab.node(ns.clone(), "x", 1, 51853, true);
    let peer = lab.node(ns.clone(), "y", 2, 51853, false);

    let fifo_config = make_fifo(&lab, "config.fifo");
    let key_fifo = make_fifo(&lab, "key.fifo");
    // (what, the config file, or None for the lab config with this key file; what stderr says)
    let cases: [(&str, Option<&Path>, &Path, &str); 4] = [
        (
            "a FIFO as the config",
            Some(&fifo_config),
            &key_fifo,
            "a FIFO",
        ),
        ("a FIFO as private_key_file", None, &key_fifo, "a FIFO"),
        (
            "/dev/urandom as private_key_file",
            None,
            Path::new("/dev/urandom"),
            "a character device",
        ),
        (
            "a directory as private_key_file",
            None,
            Path::new("/tmp"),
            "a directory",
        ),
    ];
    for (what, config, key, said) in cases {
        let config = match config {
            Some(config) => config.to_path_buf(),
            None => write_config_with_key_file(&lab, &node, &peer, key),
        };
        let run = up_measured(&ns, &config, Duration::from_secs(10))
            .unwrap_or_else(|e| lab.fail(format!("{what}: {e}")));
        let lines: Vec<&str> = run.stderr.trim().lines().collect();
        if run.exited_ok || lines.len() != 1 || !lines[0].contains(said) {
            lab.fail(format!(
                "{what}: `dhtun up` should fail with one line saying {said:?}; exit ok: {}, \
                 stderr: {:?}",
                run.exited_ok, run.stderr
            ));
        }
        if run.took > REFUSAL_WITHIN {
            lab.fail(format!("{what}: the refusal took {:?}", run.took));
        }
        if run.peak_kib > MAX_PEAK_KIB {
            lab.fail(format!(
                "{what}: `dhtun up` peaked at {} KiB; at most {MAX_PEAK_KIB} KiB",
                run.peak_kib
            ));
        }
    }
}

/// `dhtun reload` of `node`'s daemon, bounded; returns how long it took and what it said.
fn reload(node: &Node) -> (Duration, std::process::Output) {
    let start = Instant::now();
    let out = run_timeout(
        &mut node.cli(&["reload", &node.iface]),
        Duration::from_secs(20),
    );
    (start.elapsed(), out)
}

/// Writes `me`'s lab config (file name `{iface}.toml`, the one its daemon reloads) with `key` as
/// its private_key_file; returns its path.
fn write_config_with_key_file(lab: &Lab, me: &Node, peer: &Node, key: &Path) -> PathBuf {
    let text = lab.config_text(me, &[(peer, &[])]);
    let key_line = text
        .lines()
        .find(|l| l.starts_with("private_key_file"))
        .unwrap_or_else(|| lab.fail("the lab config of a key_in_file node has no key file line"))
        .to_string();
    let text = text.replace(
        &key_line,
        &format!("private_key_file = \"{}\"", key.display()),
    );
    lab.write_file(&format!("{}.toml", me.iface), &text)
}

fn make_fifo(lab: &Lab, name: &str) -> PathBuf {
    let path = lab.dir.join(name);
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a lab path");
    // SAFETY: c is a NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        lab.fail(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    path
}

/// How one `dhtun up` run ended.
struct UpRun {
    exited_ok: bool,
    stderr: String,
    took: Duration,
    /// The most memory it ever held resident (ru_maxrss from wait4).
    peak_kib: u64,
}

/// Runs `dhtun up CONFIG` in `ns` (`ip netns exec` execs it, so the child is dhtun itself);
/// kills it after `timeout`.
fn up_measured(ns: &str, config: &Path, timeout: Duration) -> Result<UpRun, String> {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, BIN, "up"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {BIN} up: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut stderr_pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(pipe) = stderr_pipe.as_mut() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    });
    let deadline = start + timeout;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it and status for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break (status, usage);
        }
        if reaped < 0 || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = reader.join().unwrap_or_default();
            return Err(format!(
                "`dhtun up` did not end within {timeout:?} (killed); stderr: {stderr:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    Ok(UpRun {
        exited_ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stderr: reader.join().unwrap_or_default(),
        took,
        peak_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

#[test]
fn sighup_reads_the_config_off_the_event_loop_and_applies_it() {
    if !common::netns_available("sighup_reads_the_config_off_the_event_loop_and_applies_it") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("fh", 51855);
    lab.up_pair(&a, &b, &[], &[]);
    let text = lab.config_text(&a, &[(&b, &["100.65.8.0/24"])]);
    lab.write_file(&format!("{}.toml", a.iface), &text);
    let pid = lab.daemon_pid(&a.iface);
    // SAFETY: kill with a pid of our own child and a signal number.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
        lab.fail(format!(
            "kill -HUP {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    lab.wait_until(
        "the route of the reloaded config",
        Duration::from_secs(10),
        || {
            let routes = lab.ip_ok(&a.ns, &["route", "show", "100.65.8.0/24"]);
            if routes.contains(&a.iface) {
                Ok(())
            } else {
                Err(format!("no route yet: {routes:?}"))
            }
        },
    );
    lab.must_ping(&a, &b.v4);
}
