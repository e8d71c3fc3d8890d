//! Commands that need no root and no network: shell completions, man pages, and the `[[peer]]`
//! block `showpeer` prints. Each runs the real binary.

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_dhtun");
/// The visible subcommands, as `dhtun --help` lists them.
const SUBCOMMANDS: &[&str] = &[
    "genkey",
    "pubkey",
    "showpeer",
    "up",
    "down",
    "reload",
    "status",
    "dht-node",
    "completions",
];

#[test]
fn completions_name_every_subcommand_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = dhtun(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8(out.stdout).expect("completion scripts are UTF-8");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: no {sub} in the script");
        }
        assert!(
            !script.contains("manpages"),
            "{shell}: the hidden command is offered"
        );
    }
    // The bash script parses.
    let script = dhtun(&["completions", "bash"]).stdout;
    let dir = temp_dir("bash");
    let file = dir.join("dhtun.bash");
    std::fs::write(&file, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
}

#[test]
fn an_unknown_shell_is_one_line_naming_the_shells() {
    let out = dhtun(&["completions", "tcsh"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("bash, zsh, fish"), "{err}");
}

#[test]
fn manpages_has_a_page_per_subcommand_and_the_config_file() {
    let dir = temp_dir("man");
    let out = dhtun(&["manpages", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let main = std::fs::read_to_string(dir.join("dhtun.8")).expect("dhtun.8 written");
    assert!(main.contains(".TH dhtun 8"), "{main}");
    for sub in SUBCOMMANDS {
        let page = dir.join(format!("dhtun-{sub}.8"));
        assert!(page.exists(), "no {}", page.display());
        // dhtun(8) lists every subcommand (roff escapes the dash of dht-node).
        assert!(
            main.contains(&sub.replace('-', "\\-")),
            "dhtun.8 lacks {sub}"
        );
    }
    assert!(!dir.join("dhtun-help.8").exists());
    assert!(!dir.join("dhtun-manpages.8").exists());
    let config = std::fs::read_to_string(dir.join("dhtun.toml.5")).expect("dhtun.toml.5 written");
    assert!(config.contains(".TH DHTUN.TOML 5"));
    assert!(config.contains("\\fBprivate_key_file\\fR"));
}

#[test]
fn showpeer_prints_the_block_another_node_pastes() {
    let dir = temp_dir("showpeer");
    let key = dhtun(&["genkey"]).stdout;
    std::fs::write(dir.join("a.key"), &key).unwrap();
    let public = {
        let mut child = Command::new(BIN)
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &key).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let config = dir.join("a.toml");
    std::fs::write(
        &config,
        "[interface]\nprivate_key_file = \"a.key\"\naddress = [\"100.64.0.1/24\", \"fd64::1/64\"]\n",
    )
    .unwrap();
    let out = dhtun(&[
        "showpeer",
        config.to_str().unwrap(),
        "--endpoint",
        "198.18.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let block = String::from_utf8(out.stdout).unwrap();
    assert!(block.contains("[[peer]]\n"), "{block}");
    assert!(
        block.contains(&format!("public_key = \"{}\"", public.trim())),
        "{block}"
    );
    assert!(
        block.contains("allowed_ips = [\"100.64.0.1/32\", \"fd64::1/128\"]"),
        "{block}"
    );
    assert!(block.contains("endpoint = \"198.18.0.1:51820\""), "{block}");

    // A config that does not load is the usual one-line error naming the file.
    let out = dhtun(&["showpeer", dir.join("missing.toml").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

fn dhtun(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("runs the dhtun binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory of this test process, under the system's temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dhtun-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
