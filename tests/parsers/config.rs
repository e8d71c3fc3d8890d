//! The config file: mutated and random configs never panic, and errors carry the path and say
//! what is wrong on one line.

use dhtun::config::{Config, ConfigError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

use crate::handshake::key;

/// A scratch directory with the key files the configs name, removed when dropped.
struct ConfigDir(PathBuf);

impl ConfigDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("dhtun-parsers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("private.key"), format!("{}\n", key(1).to_base64())).unwrap();
        std::fs::write(
            dir.join("peer.psk"),
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
        )
        .unwrap();
        std::fs::write(dir.join("bad.key"), "not base64\n").unwrap();
        Self(dir)
    }

    fn config(&self) -> PathBuf {
        self.0.join("dhtun0.toml")
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn base_configs() -> Vec<String> {
    let peer = key(2).public_key();
    let other = key(3).public_key();
    vec![
        format!(
            "[interface]\nname = \"dhtun0\"\nprivate_key = \"{}\"\n\
             address = [\"100.64.0.1/24\", \"fd64::1/64\"]\nlisten_port = 51820\nmtu = 1420\n\
             ring_slots = 256\nring_bytes = 262144\nring_max_delay_ms = 5\nbatch_size = 128\n\
             receive_buffer_bytes = 98304\nbusy_poll_us = 50\npacing = true\n\n\
             [dht]\nenabled = true\nbootstrap = [\"198.18.0.254:6881\"]\n\
             port = 0\nserver_mode = false\nrequest_timeout_ms = 2000\n\n[[peer]]\n\
             public_key = \"{peer}\"\nallowed_ips = [\"100.64.0.2/32\", \"100.65.2.7/24\"]\n\
             endpoint = \"198.18.0.2:51820\"\npreshared_key = \"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\"\n\
             persistent_keepalive = 25\n",
            key(1).to_base64()
        ),
        format!(
            "[interface]\nprivate_key_file = \"private.key\"\naddress = [\"100.64.0.1\"]\n\n\
             [[peer]]\npublic_key = \"{peer}\"\nallowed_ips = [\"100.64.0.2/32\"]\n\
             preshared_key_file = \"peer.psk\"\n\n[[peer]]\npublic_key = \"{other}\"\n\
             allowed_ips = [\"fd64::3\"]\nendpoint = \"[fd00::3]:51820\"\n"
        ),
    ]
}

/// Values a mutation may put after a key's `=`: valid, out of range, of the wrong type.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "25",
    "65535",
    "65536",
    "1000",
    "1001",
    "1279",
    "1280",
    "8920",
    "8921",
    "15",
    "16",
    "16384",
    "16385",
    "32767",
    "32768",
    "67108864",
    "67108865",
    "18446744073709551615",
    "99999999999999999999",
    "true",
    "\"\"",
    "\"x\"",
    "\"dhtun-with-a-long-name\"",
    "\"bad key\"",
    "\"AQID\"",
    "\"100.64.0.1/33\"",
    "\"::/0\"",
    "\"0.0.0.0/0\"",
    "\"1.2.3.4:0\"",
    "\"[::1]:1\"",
    "[]",
    "[\"100.64.0.9\"]",
    "[1]",
    "{}",
    "\"bad.key\"",
    "\"missing.key\"",
    "\"private.key\"",
    "\"peer.psk\"",
    "1.5",
    "nan",
    "\"\\u0000\"",
];

/// Lines a mutation may insert.
const LINES: &[&str] = &[
    "[interface]",
    "[dht]",
    "[[peer]]",
    "[peer]",
    "colour = 3",
    "private_key_file = \"bad.key\"",
    "private_key_file = \"private.key\"",
    "preshared_key_file = \"missing.key\"",
    "allowed_ips = [\"100.64.0.2/32\"]",
    "public_key = \"AQID\"",
    "mtu =",
    "= 1",
    "[x",
    "a.b = 1",
    "#",
    "\"quoted key\" = 1",
    "name = 'dhtun1'",
    "address = \"100.64.0.1\"",
];

fn mutate_config(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    for _ in 0..rng.gen_range(1..=3) {
        let at = rng.gen_range(0..lines.len());
        match rng.gen_range(0..7) {
            0 => {
                lines.remove(at);
                if lines.is_empty() {
                    lines.push(String::new());
                }
            }
            1 => {
                let copy = lines[at].clone();
                lines.insert(at, copy);
            }
            2 => {
                let other = rng.gen_range(0..lines.len());
                lines.swap(at, other);
            }
            3 => {
                if let Some(eq) = lines[at].find('=') {
                    let value = VALUES[rng.gen_range(0..VALUES.len())];
                    lines[at] = format!("{}= {value}", &lines[at][..eq]);
                }
            }
            4 => lines.insert(at, LINES[rng.gen_range(0..LINES.len())].to_string()),
            5 => {
                // One character replaced by TOML punctuation or anything at all.
                let line = &lines[at];
                if !line.is_empty() {
                    let chars: Vec<char> = line.chars().collect();
                    let i = rng.gen_range(0..chars.len());
                    let c = if rng.gen_bool(0.5) {
                        ['[', ']', '=', '"', '\'', '#', '.', ',', '{', '}', '\\', ' ']
                            [rng.gen_range(0..12)]
                    } else {
                        char::from_u32(rng.gen_range(0..0x800)).unwrap_or('x')
                    };
                    let mut chars = chars;
                    chars[i] = c;
                    lines[at] = chars.into_iter().collect();
                }
            }
            _ => {
                // Cut the line short, at a character boundary.
                let line = &lines[at];
                let cut = line
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(rng.gen_range(0..=line.chars().count()));
                lines[at] = line[..cut.unwrap_or(line.len())].to_string();
            }
        }
    }
    lines.join("\n")
}

fn check_config_error(path: &Path, text: &str, e: &ConfigError) {
    assert_eq!(e.path, path, "{e}");
    let shown = e.to_string();
    let prefix = match e.line {
        Some(line) => {
            assert!(
                line >= 1 && line <= text.split('\n').count(),
                "line {line}: {shown}\n{text}"
            );
            format!("{}:{line}: ", path.display())
        }
        None => format!("{}: ", path.display()),
    };
    assert!(shown.starts_with(&prefix), "{shown:?}");
}

#[test]
fn config_mutations_never_panic_and_errors_carry_the_path() {
    let dir = ConfigDir::new();
    let path = dir.config();
    let mut rng = StdRng::seed_from_u64(0x434f_4e46);
    let bases = base_configs();
    for base in &bases {
        Config::parse(&path, base).expect("the base configs are valid");
    }
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let base = &bases[rng.gen_range(0..bases.len())];
        let text = mutate_config(&mut rng, base);
        match Config::parse(&path, &text) {
            Ok(config) => {
                accepted += 1;
                assert_eq!(config.path, path);
                assert!((1..=15).contains(&config.interface.name.len()));
                assert!(!config.interface.addresses.is_empty());
                for peer in &config.peers {
                    assert_ne!(peer.public_key, config.interface.secret_key.public_key());
                    for net in &peer.allowed_ips {
                        assert_eq!(net.ip(), net.network(), "{net} keeps host bits");
                    }
                }
            }
            Err(e) => {
                refused += 1;
                check_config_error(&path, &text, &e);
            }
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn config_random_text_never_panics() {
    let dir = ConfigDir::new();
    let path = dir.config();
    let mut rng = StdRng::seed_from_u64(0x5458_5421);
    const ALPHABET: &[u8] = b"[]=\"'#.,{}\\ \n\tabcdefghijklmnopqrstuvwxyz_0123456789-:/";
    for _ in 0..5_000 {
        let len = rng.gen_range(0..120);
        let text: String = (0..len)
            .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
            .collect();
        if let Err(e) = Config::parse(&path, &text) {
            check_config_error(&path, &text, &e);
        }
    }
}

/// Found by the `config` fuzz target (fixed): toml's `message()` is empty for some syntax
/// errors and several lines long for others, so dhtun prints `FILE:1: ` with nothing after it,
/// or more than the one line the README promises.
#[test]
fn config_syntax_errors_say_what_is_wrong_on_one_line() {
    let path = Path::new("/etc/dhtun/dhtun0.toml");
    for text in ["mtu =", "-=", "[x", "a = \"\\q\""] {
        let e = Config::parse(path, text).unwrap_err();
        assert!(!e.message.trim().is_empty(), "{text:?}: {e}");
        assert!(!e.to_string().contains('\n'), "{text:?}: {e}");
    }
}
