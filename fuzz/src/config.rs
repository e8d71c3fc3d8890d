//! Target `config`: `Config::parse(path, text)` on arbitrary UTF-8 text.
//!
//! Key files named in the text are read relative to the config's directory, a scratch
//! directory holding a few key files (`private.key`, `peer.psk`, `bad.key`, `short.key`). Text
//! whose key-file paths leave that directory (a '/' or "..") is skipped, so the fuzzer cannot
//! make the target read /dev/zero or block on a FIFO; see `reads_only_the_sandbox`.
//!
//! Checks, besides never panicking: every error carries the path it was given, displays as
//! `PATH: message` or `PATH:LINE: message` on one line with a message that is not empty, and
//! its line is within the text; an accepted config
//! keeps the path and obeys the rules docs/configuration.md states (interface name, MTU and ring-size
//! ranges, at least one address, allowed_ips with host bits cleared, no prefix given twice, no
//! peer listed twice or with the interface's own key, keepalive within 1..=65535 s).

use crate::known;
use dhtun::config::{Config, ConfigError};
use dhtun::core::keys::SecretKey;
use dhtun::core::limits::{
    MAX_BATCH_SIZE, MAX_BUSY_POLL_US, MAX_MTU, MAX_PEERS, MAX_RECEIVE_BUFFER_BYTES,
    MAX_RING_BYTES, MAX_RING_MAX_DELAY_MS, MAX_RING_SLOTS, MIN_BATCH_SIZE, MIN_MTU,
    MIN_RECEIVE_BUFFER_BYTES, MIN_RING_BYTES, MIN_RING_SLOTS,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The base64 secret key in `private.key` (seed 1, the handshake target's local key).
pub fn private_key_base64() -> String {
    SecretKey::from_seed([1; 32]).to_base64()
}

/// The scratch directory and the config path inside it, made once per process.
pub fn sandbox() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join("dhtun-fuzz-config");
        std::fs::create_dir_all(&dir).expect("creating the config sandbox");
        let files = [
            ("private.key", format!("{}\n", private_key_base64())),
            (
                "peer.psk",
                "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n".to_string(),
            ),
            ("bad.key", "this is not base64\n".to_string()),
            (
                "short.key",
                "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\n".to_string(),
            ),
        ];
        for (name, text) in files {
            let target = dir.join(name);
            if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
                // Written aside and renamed, so a parallel fuzzer never reads half a file.
                let aside = dir.join(format!("{name}.{}", std::process::id()));
                std::fs::write(&aside, &text).expect("writing a sandbox key file");
                std::fs::rename(&aside, &target).expect("placing a sandbox key file");
            }
        }
        dir.join("dhtun0.toml")
    })
}

/// Whether every key-file path in `text` names a plain file in the config's directory.
pub fn reads_only_the_sandbox(text: &str) -> bool {
    let Ok(doc) = text.parse::<toml::Table>() else {
        // Not TOML: dhtun refuses it before reading any file.
        return true;
    };
    let plain = |v: Option<&toml::Value>| match v {
        None => true,
        Some(toml::Value::String(s)) => !s.contains('/') && s != ".." && !s.contains('\0'),
        Some(_) => true,
    };
    let interface_ok = match doc.get("interface") {
        Some(toml::Value::Table(t)) => plain(t.get("private_key_file")),
        _ => true,
    };
    let peers_ok = match doc.get("peer") {
        Some(toml::Value::Array(peers)) => peers.iter().all(|p| match p {
            toml::Value::Table(t) => plain(t.get("preshared_key_file")),
            _ => true,
        }),
        Some(toml::Value::Table(t)) => plain(t.get("preshared_key_file")),
        _ => true,
    };
    interface_ok && peers_ok
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
}

/// Parses `text` as the sandbox's config and checks the result.
pub fn check(text: &str) {
    if !reads_only_the_sandbox(text) {
        return;
    }
    let path = sandbox();
    match Config::parse(path, text) {
        Err(e) => check_error(path, text, &e),
        Ok(config) => check_config(path, &config),
    }
}

fn check_error(path: &Path, text: &str, e: &ConfigError) {
    assert_eq!(e.path, path, "error lost its path: {e}");
    let shown = e.to_string();
    let prefix = match e.line {
        Some(line) => {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&line),
                "line {line} of a {lines}-line text: {shown}"
            );
            format!("{}:{line}: ", path.display())
        }
        None => format!("{}: ", path.display()),
    };
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} does not start with {prefix:?}"
    );
    if known::config_message_empty_or_multiline(&e.message) {
        return;
    }
    assert!(!e.message.is_empty(), "an error with no message: {shown:?}");
    assert!(
        !shown.contains('\n'),
        "an error of more than one line: {shown:?}"
    );
}

fn check_config(path: &Path, config: &Config) {
    assert_eq!(config.path, path);
    let iface = &config.interface;
    assert!(
        (1..=15).contains(&iface.name.len()),
        "name {:?}",
        iface.name
    );
    assert!(iface
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    assert!((MIN_MTU..=MAX_MTU).contains(&iface.mtu));
    assert!((MIN_RING_SLOTS..=MAX_RING_SLOTS).contains(&iface.ring_slots));
    assert!((MIN_RING_BYTES..=MAX_RING_BYTES).contains(&iface.ring_bytes));
    assert!((MIN_BATCH_SIZE..=MAX_BATCH_SIZE).contains(&iface.batch_size));
    assert!(iface.busy_poll.as_micros() <= u128::from(MAX_BUSY_POLL_US));
    assert!(iface
        .receive_buffer_bytes
        .is_none_or(|b| (MIN_RECEIVE_BUFFER_BYTES..=MAX_RECEIVE_BUFFER_BYTES).contains(&b)));
    assert!(iface
        .ring_max_delay
        .is_none_or(|d| !d.is_zero() && d.as_millis() <= u128::from(MAX_RING_MAX_DELAY_MS)));
    assert!(!iface.addresses.is_empty());
    assert!(config.peers.len() <= MAX_PEERS);
    let own = iface.secret_key.public_key();
    let mut keys = HashSet::new();
    let mut prefixes = HashSet::new();
    for peer in &config.peers {
        assert_ne!(peer.public_key, own, "a peer with our own key");
        assert!(keys.insert(peer.public_key), "a peer listed twice");
        for net in &peer.allowed_ips {
            assert_eq!(net.ip(), net.network(), "{net} keeps host bits");
            assert!(prefixes.insert(*net), "{net} given twice");
        }
        if let Some(keepalive) = peer.persistent_keepalive {
            assert!((1..=65535).contains(&keepalive.as_secs()));
            assert_eq!(keepalive.subsec_nanos(), 0);
        }
    }
}
