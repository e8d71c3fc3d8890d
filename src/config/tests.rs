//! Config parsing: defaults, every key's bounds, and errors that name file and line.

use super::*;

const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn peer_key() -> String {
    SecretKey::from_seed([2; 32]).public_key().to_base64()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/dhtun/t.toml"), text)
}

#[test]
fn full_config_parses_with_defaults() {
    let text = format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\", \"fd64::1/64\"]\n\n\
         [dht]\nenabled = false\n\n[[peer]]\npublic_key = \"{}\"\n\
         allowed_ips = [\"100.64.0.2/32\", \"100.65.2.9/24\"]\nendpoint = \"198.18.0.2:51820\"\n\
         persistent_keepalive = 25\n",
        peer_key()
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.interface.name, "dhtun0");
    assert_eq!(config.interface.listen_port, 51820);
    assert_eq!(config.interface.mtu, 1420);
    assert!(!config.dht.enabled);
    let peer = &config.peers[0];
    assert_eq!(
        peer.allowed_ips[1],
        "100.65.2.0/24".parse::<IpNetwork>().unwrap()
    );
    assert_eq!(peer.persistent_keepalive, Some(Duration::from_secs(25)));
}

#[test]
fn relay_keys_parse_and_default_off() {
    let plain = format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\n\
         [[peer]]\npublic_key = \"{}\"\n",
        peer_key()
    );
    let config = parse(&plain).unwrap();
    assert!(!config.interface.relay);
    assert!(!config.peers[0].relay);
    // A relay-only peer routes nothing: no allowed_ips at all.
    assert!(config.peers[0].allowed_ips.is_empty());

    let relaying = format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nrelay = true\n\n\
         [[peer]]\npublic_key = \"{}\"\nrelay = true\n",
        peer_key()
    );
    let config = parse(&relaying).unwrap();
    assert!(config.interface.relay);
    assert!(config.peers[0].relay);

    let wrong = plain.replace("[[peer]]\n", "[[peer]]\nrelay = \"yes\"\n");
    let err = parse(&wrong).unwrap_err().to_string();
    assert!(err.starts_with("/etc/dhtun/t.toml:6: "), "{err}");
}

#[test]
fn unknown_key_names_file_and_line() {
    let text = format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\ncolour = 3\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("/etc/dhtun/t.toml:4: "), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn bad_values_name_their_line() {
    let cases = [
        ("[interface]\nprivate_key = \"abc\"\naddress = [\"100.64.0.1/24\"]\n", 2, "private_key"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.300/24\"]\n") as &str, 3, "address"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nmtu = 100\n"), 4, "mtu"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nring_bytes = 1000\n"), 4, "ring_bytes 1000 is outside 65536..=67108864"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\nring_max_delay_ms = 1001\n"), 5, "ring_max_delay_ms 1001 is outside 0..=1000"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nbatch_size = 4\n"), 4, "batch_size 4 is outside 8..=1024"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nbatch_size = -1\n"), 4, "-1"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nreceive_buffer_bytes = 4096\n"), 4, "receive_buffer_bytes 4096 is outside 32768..=67108864"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\nbusy_poll_us = 5000\n"), 4, "busy_poll_us 5000 is outside 0..=1000"),
        (&format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n[[peer]]\npublic_key = \"{}\"\nendpoint = \"nowhere\"\n", peer_key()), 6, "endpoint"),
    ];
    for (text, line, word) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, Some(line), "{err}");
        assert!(err.to_string().contains(word), "{err}");
    }
}

#[test]
fn duplicate_peers_and_prefixes_are_refused() {
    let peer = format!(
        "[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"100.64.0.2/32\"]\n",
        peer_key()
    );
    let text = format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n{peer}{peer}"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("listed twice"), "{err}");

    let one_peer_twice = format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n[[peer]]\n\
         public_key = \"{}\"\nallowed_ips = [\"100.65.0.0/24\", \"100.65.0.0/24\"]\n",
        peer_key()
    );
    let err = parse(&one_peer_twice).unwrap_err().to_string();
    assert!(
        err.contains("100.65.0.0/24 is listed twice for peer #1"),
        "{err}"
    );
}

#[test]
fn ring_and_batch_keys_default_bound_and_parse() {
    let base = format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n");
    let iface = parse(&base).unwrap().interface;
    assert_eq!(iface.ring_bytes, DEFAULT_RING_BYTES);
    assert_eq!(iface.ring_max_delay, Some(DEFAULT_RING_MAX_DELAY));
    assert_eq!(iface.batch_size, DEFAULT_BATCH_SIZE);
    assert_eq!(
        iface.receive_buffer_bytes, None,
        "unset keeps the kernel's default"
    );
    assert_eq!(iface.busy_poll, Duration::from_micros(DEFAULT_BUSY_POLL_US));
    let set = |keys: &str| parse(&format!("{base}{keys}")).map(|c| c.interface);
    let small = set("ring_slots = 64\nring_bytes = 65536\nring_max_delay_ms = 0\nbatch_size = 8\n")
        .unwrap();
    assert_eq!(
        (
            small.ring_slots,
            small.ring_bytes,
            small.ring_max_delay,
            small.batch_size
        ),
        (64, MIN_RING_BYTES, None, MIN_BATCH_SIZE)
    );
    let large = set(&format!(
        "ring_bytes = {MAX_RING_BYTES}\nring_max_delay_ms = {MAX_RING_MAX_DELAY_MS}\nbatch_size = {MAX_BATCH_SIZE}\n"
    ))
    .unwrap();
    assert_eq!(large.ring_bytes, MAX_RING_BYTES);
    assert_eq!(
        large.ring_max_delay,
        Some(Duration::from_millis(MAX_RING_MAX_DELAY_MS))
    );
    assert_eq!(large.batch_size, MAX_BATCH_SIZE);
    for bytes in [MIN_RECEIVE_BUFFER_BYTES, MAX_RECEIVE_BUFFER_BYTES] {
        let iface = set(&format!("receive_buffer_bytes = {bytes}\n")).unwrap();
        assert_eq!(iface.receive_buffer_bytes, Some(bytes));
    }
    assert!(iface.pacing, "pacing is on by default");
    assert!(!set("pacing = false\n").unwrap().pacing);
    for micros in [0, 50, MAX_BUSY_POLL_US] {
        let iface = set(&format!("busy_poll_us = {micros}\n")).unwrap();
        assert_eq!(iface.busy_poll, Duration::from_micros(micros));
    }
    for keys in [
        format!("ring_bytes = {}\n", MIN_RING_BYTES - 1),
        format!("ring_bytes = {}\n", MAX_RING_BYTES + 1),
        format!("batch_size = {}\n", MAX_BATCH_SIZE + 1),
        format!("receive_buffer_bytes = {}\n", MAX_RECEIVE_BUFFER_BYTES + 1),
        format!("busy_poll_us = {}\n", MAX_BUSY_POLL_US + 1),
        "busy_poll_us = -1\n".to_string(),
        "ring_max_delay_ms = 2.5\n".to_string(),
        "pacing = 1\n".to_string(),
    ] {
        let err = set(&keys).unwrap_err().to_string();
        assert!(err.starts_with("/etc/dhtun/t.toml:4: "), "{keys}: {err}");
    }
}

#[test]
fn a_missing_private_key_points_at_the_interface_section() {
    let text =
        "# a comment\n[dht]\nenabled = false\n\n[interface]\naddress = [\"100.64.0.1/24\"]\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.line, Some(5), "{err}");
    assert!(err.to_string().contains("private_key"), "{err}");
}

#[test]
fn bootstrap_nodes_of_the_wrong_form_are_refused_at_their_line() {
    let config = |bootstrap: &str| {
        format!(
            "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\n\
             [dht]\nbootstrap = [\n  \"dht.example:6881\",\n  {bootstrap},\n]\n"
        )
    };
    let good = parse(&config("\"198.18.0.254:6881\"")).unwrap();
    assert_eq!(
        good.dht.bootstrap,
        vec!["dht.example:6881".to_string(), "198.18.0.254:6881".into()]
    );
    for (bad, says) in [
        ("\"198.18.0.254\"", "no port"),
        ("\"[fd64::1]:6881\"", "IPv4 only"),
        ("\"dht.example:0\"", "not a port"),
    ] {
        let err = parse(&config(bad)).unwrap_err().to_string();
        assert!(
            err.contains(":8:") && err.contains(says),
            "{bad}: expected line 8 and {says:?} in: {err}"
        );
    }
}

#[test]
fn table_and_fwmark_parse_with_defaults_and_line_numbers() {
    let base = format!("[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n");
    let config = parse(&base).unwrap();
    assert_eq!(config.interface.table, super::TableSetting::Auto);
    assert_eq!(config.interface.fwmark, 0);
    for (line, table) in [
        ("table = \"off\"", super::TableSetting::Off),
        ("table = 1234", super::TableSetting::Number(1234)),
        ("table = \"auto\"", super::TableSetting::Auto),
    ] {
        let config = parse(&format!("{base}{line}\nfwmark = 51820\n")).unwrap();
        assert_eq!(config.interface.table, table, "{line}");
        assert_eq!(config.interface.fwmark, 51820);
    }
    let err = parse(&format!("{base}table = \"main\"\n")).unwrap_err();
    assert!(
        err.to_string().starts_with("/etc/dhtun/t.toml:4: table"),
        "{err}"
    );
    let err = parse(&format!("{base}fwmark = 4294967296\n")).unwrap_err();
    assert!(
        err.to_string().contains("fwmark 4294967296 is outside"),
        "{err}"
    );
}

#[test]
fn endpoints_and_interface_names_the_kernel_refuses_are_errors_at_their_line() {
    let peer = peer_key();
    for (endpoint, said) in [
        ("198.18.0.9:0", "port 0"),
        ("0.0.0.0:51820", "unspecified"),
        ("224.0.0.1:51820", "multicast"),
        ("255.255.255.255:51820", "broadcast"),
        ("[fe80::2]:51820", "link-local"),
    ] {
        let text = format!(
            "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\n\
             [[peer]]\npublic_key = \"{peer}\"\nendpoint = \"{endpoint}\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(7), "{endpoint}: {e}");
        assert!(e.message.contains(said), "{endpoint}: {e}");
    }
    for name in [".", ".."] {
        let text = format!(
            "[interface]\nname = \"{name}\"\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(2), "{name}: {e}");
        assert!(e.message.contains("interface name"), "{name}: {e}");
    }
}

#[test]
fn one_prefix_more_than_supported_is_refused_at_its_peer() {
    let prefixes = |from: usize, count: usize| -> String {
        (from..from + count)
            .map(|i| {
                format!(
                    "\"100.{}.{}.{}/32\"",
                    96 + (i >> 16),
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let second = SecretKey::from_seed([3; 32]).public_key().to_base64();
    let text = |second_count: usize| {
        format!(
            "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\n\
             [[peer]]\npublic_key = \"{}\"\nallowed_ips = [{}]\n\n\
             [[peer]]\npublic_key = \"{second}\"\nallowed_ips = [{}]\n",
            peer_key(),
            prefixes(0, 60_000),
            prefixes(60_000, second_count)
        )
    };
    let most = parse(&text(MAX_ALLOWED_IPS - 60_000)).unwrap();
    let total: usize = most.peers.iter().map(|p| p.allowed_ips.len()).sum();
    assert_eq!(total, MAX_ALLOWED_IPS);
    let e = parse(&text(MAX_ALLOWED_IPS - 60_000 + 1)).unwrap_err();
    assert_eq!(e.line, Some(10), "{e}");
    assert!(
        e.to_string().ends_with(
            "t.toml:10: more than 65536 allowed_ips in all (the most one interface supports)"
        ),
        "{e}"
    );
}

#[test]
fn network_secret_file_makes_records_private() {
    use crate::core::privacy::Privacy;
    use crate::core::private_record::NetworkSecret;
    let dir = std::env::temp_dir().join(format!("dhtun-secret-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("net.secret");
    std::fs::write(&good, format!("{KEY_A}\n")).unwrap();
    let short = dir.join("short.secret");
    std::fs::write(&short, "AQEB\n").unwrap();
    let config = |file: &str| {
        let text = format!(
            "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\n\
             [dht]\nbootstrap = [\"198.18.0.254:6881\"]\nnetwork_secret_file = \"{file}\"\n"
        );
        Config::parse(&dir.join("t.toml"), &text)
    };
    let public = parse(&format!(
        "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n"
    ))
    .unwrap();
    assert_eq!(public.dht.privacy, Privacy::Public);
    // Relative to the config file, as key files are.
    assert_eq!(
        config("net.secret").unwrap().dht.privacy,
        Privacy::Private(NetworkSecret::from_bytes([1; 32]))
    );
    for (file, says) in [
        ("short.secret", "decodes to 3 bytes, expected 32"),
        ("missing.secret", "No such file"),
    ] {
        let err = config(file).unwrap_err().to_string();
        assert!(
            err.contains(":7:") && err.contains("network_secret_file") && err.contains(says),
            "{file}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
