//! docs/configuration.md against the config parser: every key the parser accepts is documented
//! there, and every key documented there is accepted.
//!
//! The parser's keys are not listed here by hand: they are read from the parser itself, by
//! giving each section a key it cannot know and reading the "expected one of ..." list of its
//! error. So a branch that adds a key (or a section such as `[[forward]]`) only has to document
//! it; this test then passes, and fails until it does.
//!
//! What the docs must look like, for this test: each section is a heading of exactly the form
//! `## [name]` or `## [[name]]`, and under it each key is a table row that starts with the key in
//! backticks: ``| `key` | default | range | meaning |``. Other headings end a section; other lines
//! are free text.

use dhtun::config::Config;
use std::collections::BTreeSet;
use std::path::Path;

const DOCS: &str = include_str!("../docs/configuration.md");
/// A key no section has, to make the parser list the keys it has.
const PROBE: &str = "zz_no_such_key";

#[test]
fn every_documented_key_is_accepted_and_every_accepted_key_is_documented() {
    let documented = documented_sections(DOCS);
    let top_level = accepted_keys("");
    let documented_sections: BTreeSet<String> = documented.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(
        documented_sections, top_level,
        "the sections of docs/configuration.md (left) differ from the parser's (right)"
    );
    let mut problems = Vec::new();
    for (section, keys) in &documented {
        let accepted = accepted_keys(section);
        for key in accepted.difference(keys) {
            problems.push(format!(
                "[{section}] {key}: accepted by the parser, not documented"
            ));
        }
        for key in keys.difference(&accepted) {
            problems.push(format!(
                "[{section}] {key}: documented, not accepted by the parser"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the parser disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_probe_reads_the_parsers_keys() {
    // Guards the trick above: if the parser's error stopped listing its keys, the main test
    // would compare empty sets.
    let interface = accepted_keys("interface");
    assert!(interface.contains("private_key_file"), "{interface:?}");
    assert!(accepted_keys("peer").contains("public_key"));
    assert!(accepted_keys("").contains("dht"));
}

#[test]
fn the_docs_parser_finds_every_section() {
    let sections = documented_sections(DOCS);
    let names: Vec<&str> = sections.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        names.contains(&"interface") && names.contains(&"peer"),
        "{names:?}"
    );
    for (section, keys) in &sections {
        assert!(!keys.is_empty(), "[{section}] documents no keys");
    }
}

/// The keys the parser accepts at the top level (`section` empty) or in `section`, which may be
/// a table (`[dht]`) or an array of tables (`[[peer]]`).
fn accepted_keys(section: &str) -> BTreeSet<String> {
    let attempts = if section.is_empty() {
        vec![format!("{PROBE} = 1\n")]
    } else {
        vec![
            format!("[{section}]\n{PROBE} = 1\n"),
            format!("[[{section}]]\n{PROBE} = 1\n"),
        ]
    };
    for text in &attempts {
        let message = match Config::parse(Path::new("probe.toml"), text) {
            Ok(_) => continue,
            Err(e) => e.message,
        };
        if let Some(list) = message.strip_prefix(&format!("unknown field `{PROBE}`, ")) {
            return backticked(list);
        }
    }
    panic!("the parser did not name the keys of [{section}]: is it a section?");
}

/// `name` of every `## [name]` or `## [[name]]` heading, with the keys of its table rows.
fn documented_sections(docs: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut sections: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in docs.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = section_name(heading.trim()).map(|name| {
                sections.push((name, BTreeSet::new()));
                sections.len() - 1
            });
        } else if line.starts_with('#') {
            current = None;
        } else if let (Some(i), Some(row)) = (current, line.strip_prefix("| `")) {
            if let Some(key) = row.split('`').next() {
                sections[i].1.insert(key.to_string());
            }
        }
    }
    sections
}

fn section_name(heading: &str) -> Option<String> {
    let inner = heading
        .strip_prefix("[[")
        .and_then(|h| h.strip_suffix("]]"))
        .or_else(|| heading.strip_prefix('[').and_then(|h| h.strip_suffix(']')))?;
    Some(inner.to_string())
}

/// Every `word` in backticks in `text`.
fn backticked(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}
