//! Replays the committed corpus through every target on the stable toolchain, without
//! libFuzzer: `cargo test` here. Also checks the seeds made now pass their target.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 8] = [
    ("wire", dhtun_fuzz::wire::run),
    ("handshake", dhtun_fuzz::handshake::run),
    ("device", dhtun_fuzz::device::run),
    ("packet", dhtun_fuzz::packet::run),
    ("record", dhtun_fuzz::record::run),
    ("private_record", dhtun_fuzz::private_record::run),
    ("krpc", dhtun_fuzz::krpc::run),
    ("config", dhtun_fuzz::config::run),
];

fn run_target(name: &str, bytes: &[u8]) {
    let (_, run) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    run(bytes);
}

#[test]
fn committed_corpus_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut count = 0;
    for (name, _) in TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            run_target(name, &bytes);
            count += 1;
        }
    }
    assert!(count >= TARGETS.len(), "the corpus is missing");
}

/// Inputs that once failed: they pass while `known` tolerates their defect (or once it is
/// fixed), and must never fail in another way.
#[test]
fn regressions_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for (name, _) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            eprintln!("{}", path.display());
            run_target(name, &std::fs::read(&path).unwrap());
        }
    }
}

#[test]
fn fresh_seeds_pass() {
    for seed in dhtun_fuzz::seeds::all() {
        run_target(seed.target, &seed.bytes);
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    dhtun_fuzz::seeds::all()
        .into_iter()
        .find(|s| s.target == target && s.name == name)
        .unwrap_or_else(|| panic!("no seed {target}/{name}"))
        .bytes
}

#[test]
fn device_seeds_reach_the_data_path() {
    let report = dhtun_fuzz::device::execute(&seed("device", "handshake-and-data"));
    // Both directions delivered, the handshake answered, the response consumed, a replay
    // dropped.
    assert!(report.to_tun >= 3, "{report:?}");
    assert!(report.answered >= 1, "{report:?}");
    assert!(report.consumed >= 1, "{report:?}");
    assert!(report.dropped >= 1, "{report:?}");
    let report = dhtun_fuzz::device::execute(&seed("device", "garbage"));
    assert_eq!(
        report.to_tun + report.answered + report.consumed,
        0,
        "{report:?}"
    );
    assert!(report.dropped >= 1, "{report:?}");
    let report = dhtun_fuzz::device::execute(&seed("device", "discovery-and-reload"));
    assert!(report.answered >= 1, "{report:?}");
    let report = dhtun_fuzz::device::execute(&seed("device", "under-load"));
    assert!(report.cookies_sent >= 10, "{report:?}");
    assert!(report.cookies_taken >= 1, "{report:?}");
    assert!(report.to_tun >= 1, "{report:?}");
}

#[test]
fn krpc_seed_answers_parse() {
    use dhtun::core::reflexive::krpc::PingResponse;
    for name in ["answer-v4", "answer-v6"] {
        let bytes = seed("krpc", name);
        let response = PingResponse::new_checked(&bytes)
            .unwrap_or_else(|e| panic!("seed {name} does not parse: {e:?}"));
        assert_eq!(
            response.transaction_id(),
            dhtun_fuzz::krpc::TXID_PLACEHOLDER
        );
    }
}
