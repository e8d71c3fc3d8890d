//! The errors an operator meets: each a single clear line on stderr, naming what is wrong and
//! where.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common;
use crate::common::{describe, run_timeout, try_run_timeout, Lab, BIN};

/// Run `dhtun up CONFIG` (logging left at its default) in `ns` when given, else here; it must
/// fail within 15 s. Returns the stderr lines.
fn up_must_fail(lab: &Lab, ns: Option<&str>, config: &Path, what: &str) -> Vec<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("up").arg(config).env_remove("RUST_LOG");
    let out = try_run_timeout(&mut cmd, Duration::from_secs(15)).unwrap_or_else(|e| {
        lab.fail(format!(
            "{what}: `dhtun up` should fail at once, but it kept running: {e}"
        ))
    });
    if out.status.success() {
        lab.fail(format!("{what}: `dhtun up` should fail, but it exited 0"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<String> = stderr.trim_end().lines().map(str::to_string).collect();
    if lines.len() != 1 || lines[0].trim().is_empty() {
        lab.fail(format!(
            "{what}: expected exactly one line on stderr, got {}: {stderr:?}",
            lines.len()
        ));
    }
    lines
}

/// Whether `line` holds `n` as a whole number (not part of a longer one).
fn has_number(line: &str, n: u32) -> bool {
    line.split(|c: char| !c.is_ascii_digit())
        .any(|tok| tok.parse::<u32>() == Ok(n))
}

#[test]
fn errors_are_one_clear_line() {
    // The config errors need no privileges. As root they run inside a scratch namespace anyway,
    // so that a daemon that wrongly accepted a config could not touch the host's network.
    let mut lab = Lab::new("er");
    let want_netns = common::is_root() || common::netns_required();
    let ns = if want_netns && common::netns_available("errors_are_one_clear_line") {
        Some(lab.add_ns("x"))
    } else {
        None
    };
    let ns = ns.as_deref();
    let iface = lab.iface_name("x");
    let secret = lab.genkey();
    let peer_public = lab.pubkey(&lab.genkey());

    // 1. Unknown key, on line 7.
    let text = format!(
        "# dhtun test config\n\
         [interface]\n\
         name = \"{iface}\"\n\
         private_key = \"{secret}\"\n\
         address = [\"100.64.0.1/24\"]\n\
         listen_port = 0\n\
         colour = \"blue\"\n\
         \n\
         [dht]\n\
         enabled = false\n"
    );
    assert_eq!(text.lines().nth(6), Some("colour = \"blue\""));
    let path = lab.write_file("unknown-key.toml", &text);
    let lines = up_must_fail(&lab, ns, &path, "unknown key `colour` on line 7");
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    if !lines[0].contains(&file) {
        lab.fail(format!(
            "unknown key: the error should name the file {file}, got {:?}",
            lines[0]
        ));
    }
    let without_path = lines[0].replace(&path.display().to_string(), "");
    if !has_number(&without_path, 7) {
        lab.fail(format!(
            "unknown key: the error should give line 7, got {:?}",
            lines[0]
        ));
    }

    // 2. Bad base64 in private_key and in a peer's public_key.
    for (field, text) in [
        (
            "private_key",
            format!(
                "[interface]\nname = \"{iface}\"\nprivate_key = \"this is not base64!\"\n\
                 address = [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n"
            ),
        ),
        (
            "public_key",
            format!(
                "[interface]\nname = \"{iface}\"\nprivate_key = \"{secret}\"\n\
                 address = [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n\n\
                 [[peer]]\npublic_key = \"@@not*base64@@\"\nallowed_ips = [\"100.64.0.2/32\"]\n\
                 endpoint = \"198.18.0.2:51820\"\n"
            ),
        ),
    ] {
        let path = lab.write_file(&format!("bad-{field}.toml"), &text);
        let lines = up_must_fail(&lab, ns, &path, &format!("invalid base64 in {field}"));
        let spaced = field.replace('_', " ");
        let lower = lines[0].to_lowercase();
        if !lower.contains(field) && !lower.contains(&spaced) {
            lab.fail(format!(
                "bad {field}: the error should name the field {field}, got {:?}",
                lines[0]
            ));
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !lines[0].contains(&file) {
            lab.fail(format!(
                "bad {field}: the error should name the config file {file}, got {:?}",
                lines[0]
            ));
        }
    }

    // 3. Config file that does not exist.
    let missing = lab.dir.join("does-not-exist.toml");
    let lines = up_must_fail(&lab, ns, &missing, "missing config file");
    if !lines[0].contains(&missing.display().to_string()) {
        lab.fail(format!(
            "missing config: the error should name {}, got {:?}",
            missing.display(),
            lines[0]
        ));
    }

    // 4. The interface name is taken already (needs a namespace).
    let Some(ns) = ns else {
        common::loud(
            "SKIPPED (part): errors_are_one_clear_line: the `interface exists` case needs root",
        );
        return;
    };
    lab.add_stub_link(ns, &iface);
    let text = format!(
        "[interface]\nname = \"{iface}\"\nprivate_key = \"{secret}\"\n\
         address = [\"100.64.0.1/24\"]\nlisten_port = 0\n\n[dht]\nenabled = false\n\n\
         [[peer]]\npublic_key = \"{peer_public}\"\nallowed_ips = [\"100.64.0.2/32\"]\n\
         endpoint = \"198.18.0.2:51820\"\n"
    );
    let path = lab.write_file("taken.toml", &text);
    let lines = up_must_fail(&lab, Some(ns), &path, &format!("interface {iface} exists"));
    if !lines[0].contains(&iface) {
        lab.fail(format!(
            "interface exists: the error should name {iface}, got {:?}",
            lines[0]
        ));
    }
    let still = lab.ip(ns, &["link", "show", &iface]);
    if !still.status.success() {
        lab.fail(format!(
            "the pre-existing interface {iface} must survive a failed `dhtun up`, but it is gone"
        ));
    }
    if common::control_listening(ns, &iface) {
        lab.fail(format!(
            "a failed `dhtun up` left its control socket @dhtun/{iface} listening"
        ));
    }
}

#[test]
fn errors_an_operator_meets() {
    if !common::netns_available("errors_an_operator_meets") {
        return;
    }
    let (mut lab, a, b) = Lab::pair("op", 51828);
    let config = |lab: &Lab, me: &common::Node, extra: &str| {
        let text = lab.config_text(me, &[(&b, &[])]) + extra;
        lab.write_file(&format!("{}-{}.toml", me.iface, extra.len()), &text)
    };
    let must_say = |lab: &Lab, lines: &[String], words: &[&str], what: &str| {
        let lower = lines[0].to_lowercase();
        if !words.iter().all(|w| lower.contains(&w.to_lowercase())) {
            lab.fail(format!(
                "{what}: the error should mention {words:?}, got {:?}",
                lines[0]
            ));
        }
    };

    // The same peer twice, and one prefix given to two peers.
    let twice = format!(
        "\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"100.64.0.9/32\"]\n",
        b.public
    );
    let lines = up_must_fail(
        &lab,
        Some(&a.ns),
        &config(&lab, &a, &twice),
        "a peer listed twice",
    );
    must_say(&lab, &lines, &["listed twice"], "a peer listed twice");
    let other = lab.pubkey(&lab.genkey());
    let overlap = format!(
        "\n[[peer]]\npublic_key = \"{other}\"\nallowed_ips = [\"{}/32\"]\n",
        b.v4
    );
    let lines = up_must_fail(
        &lab,
        Some(&a.ns),
        &config(&lab, &a, &overlap),
        "overlapping allowed_ips",
    );
    must_say(
        &lab,
        &lines,
        &["allowed_ips", "two peers"],
        "overlapping allowed_ips",
    );

    // A running daemon holds the interface's control socket and its port.
    lab.up(&a, &[(&b, &[])]);
    let path = config(&lab, &a, "");
    let lines = up_must_fail(&lab, Some(&a.ns), &path, "the same interface twice");
    must_say(
        &lab,
        &lines,
        &[&a.iface, "already running"],
        "the same interface twice",
    );
    let mut second = a.clone();
    second.iface = lab.iface_name("y");
    let lines = up_must_fail(
        &lab,
        Some(&a.ns),
        &config(&lab, &second, ""),
        "a port in use",
    );
    must_say(&lab, &lines, &["port", "in use"], "a port in use");

    // No privilege: an unprivileged user cannot create the interface or the control socket.
    let mut unprivileged = a.clone();
    unprivileged.iface = lab.iface_name("z");
    unprivileged.port = 51829;
    let path = config(&lab, &unprivileged, "");
    let _ = std::fs::set_permissions(
        &lab.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let _ = std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let out = run_timeout(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a.ns,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                BIN,
                "up",
            ])
            .arg(&path)
            .env_remove("RUST_LOG"),
        Duration::from_secs(15),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.trim_end().lines().count() != 1 {
        lab.fail(format!(
            "without privilege `dhtun up` should fail in one line; {}",
            describe(&out)
        ));
    }
    let lower = err.to_lowercase();
    if !(lower.contains("permission denied")
        || lower.contains("cap_net_admin")
        || lower.contains("not permitted"))
    {
        lab.fail(format!(
            "without privilege the error should say so, got {err:?}"
        ));
    }

    // A DHT node none of whose bootstrap nodes resolves would serve a DHT of its own for good.
    // In A's namespace the resolver is out of reach, so nothing leaves the lab; `.invalid`
    // never resolves anyway.
    let out = run_timeout(
        Command::new("ip")
            .args(["netns", "exec", &a.ns, BIN, "dht-node", "--listen"])
            .arg(format!("{}:0", a.underlay))
            .args(["--bootstrap", "no-such-node.invalid:6881"])
            .env_remove("RUST_LOG"),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success()
        || err.trim_end().lines().count() != 1
        || !err.contains("no-such-node.invalid")
        || !err.contains("on its own")
    {
        lab.fail(format!(
            "dht-node with no resolvable bootstrap node should fail in one line naming it; {}",
            describe(&out)
        ));
    }

    // No /dev/net/tun: hide it in a private mount namespace.
    let mut no_tun = a.clone();
    no_tun.iface = lab.iface_name("w");
    no_tun.port = 51830;
    let path = config(&lab, &no_tun, "");
    let script = format!(
        "mount -t tmpfs none /dev/net && exec {BIN} up {}",
        path.display()
    );
    let out = run_timeout(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &a.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .env_remove("RUST_LOG"),
        Duration::from_secs(15),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.trim_end().lines().count() != 1 || !err.contains("/dev/net/tun")
    {
        lab.fail(format!(
            "without /dev/net/tun `dhtun up` should fail in one line naming it; {}",
            describe(&out)
        ));
    }
}

#[test]
fn status_skips_sockets_left_by_killed_daemons() {
    // A daemon killed with SIGKILL leaves its control socket behind. Listing every interface
    // must not fail on it, and asking for that one interface must say what happened. No
    // privileges needed: the run directory is the lab's.
    let lab = Lab::new("st");
    let run_dir = lab.dir.join("run");
    let _ = std::fs::create_dir(&run_dir);
    let stale = lab.iface_name("k");
    let socket = run_dir.join(format!("{stale}.sock"));
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind a scratch unix socket"));
    if !socket.exists() {
        lab.fail("a dropped listener should leave its socket file, as a killed daemon does");
    }
    let status = |args: &[&str]| {
        run_timeout(
            Command::new(BIN).args(args).env("DHTUN_RUN_DIR", &run_dir),
            Duration::from_secs(10),
        )
    };
    let out = status(&["status", "--json"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || listed.trim() != "[]" {
        lab.fail(format!(
            "`dhtun status --json` should list no interfaces when the only socket is stale; {}",
            describe(&out)
        ));
    }
    let out = status(&["status", &stale]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.lines().count() != 1 || !err.contains("killed") {
        lab.fail(format!(
            "`dhtun status {stale}` should fail in one line saying its daemon was killed; {}",
            describe(&out)
        ));
    }
}

#[test]
fn argument_errors_are_one_line() {
    // Mistakes on the command line get the same one line and exit status 1 as every other
    // error, with what was expected; no privileges needed.
    let lab = Lab::new("ar");
    let cases: [(&[&str], &str); 6] = [
        (&["frob"], "unrecognized subcommand 'frob'"),
        (&["up"], "<CONFIG>"),
        (
            &["--log-level", "bogus", "genkey"],
            "possible values: error, warn",
        ),
        (&["dht-node", "--listen", "nowhere"], "--listen"),
        (
            &[
                "dht-node",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap",
                "nohost",
            ],
            "expected HOST:PORT",
        ),
        (&["status", "a", "b"], "unexpected argument 'b'"),
    ];
    for (args, expected) in cases {
        let out = run_timeout(Command::new(BIN).args(args), Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        let one_line = err.lines().count() == 1 && err.starts_with("dhtun: ");
        if out.status.code() != Some(1) || !one_line || !err.contains(expected) {
            lab.fail(format!(
                "`dhtun {}` should exit 1 with one line mentioning {expected:?}; {}",
                args.join(" "),
                describe(&out)
            ));
        }
    }
    let out = run_timeout(
        Command::new(BIN).args(["--log-level", "debug", "genkey"]),
        Duration::from_secs(10),
    );
    if !out.status.success() {
        lab.fail(format!(
            "a valid --log-level must be accepted; {}",
            describe(&out)
        ));
    }
}
