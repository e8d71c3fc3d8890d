//! The manual pages: dhtun(8) and one page per subcommand, rendered from the clap definitions by
//! clap_mangen, and dhtun.toml(5), rendered from docs/configuration.md.
//!
//! dhtun.toml(5) is generated rather than kept by hand so that it cannot drift: the same file is
//! checked against the config parser by tests/config_reference.rs. The converter below knows just
//! the Markdown that file uses (headings, paragraphs, bullets, code blocks, the key tables, inline
//! code, bold and links) and renders everything else as plain text.

use clap_mangen::roff::{bold, roman, Inline, Roff};
use std::io;
use std::path::{Path, PathBuf};

/// The text of docs/configuration.md, built into the binary for `dhtun manpages`.
pub const CONFIGURATION_MD: &str = include_str!("../docs/configuration.md");

/// Writes dhtun.8, dhtun-SUBCOMMAND.8 for each visible subcommand and dhtun.toml.5 into `dir`,
/// and returns their paths.
pub fn write_pages(cli: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // `dhtun help` is clap's own; a page for it would only repeat dhtun(8).
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let version = cli.get_version().unwrap_or_default().to_string();
    let mut written = Vec::new();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = clap_mangen::Man::new(sub.clone())
            .section("8")
            .manual("dhtun manual");
        written.push(page.generate_to(dir)?);
    }
    let main = clap_mangen::Man::new(cli)
        .section("8")
        .manual("dhtun manual");
    written.push(main.generate_to(dir)?);
    let config = dir.join("dhtun.toml.5");
    std::fs::write(&config, config_page(CONFIGURATION_MD, &version))?;
    written.push(config);
    Ok(written)
}

/// dhtun.toml(5) in roff, from the Markdown of docs/configuration.md.
pub fn config_page(markdown: &str, version: &str) -> String {
    let mut page = Roff::new();
    page.control(
        "TH",
        [
            "DHTUN.TOML",
            "5",
            "",
            &format!("dhtun {version}"),
            "dhtun manual",
        ],
    );
    page.control("SH", ["NAME"]);
    page.text([roman("dhtun.toml - the config file of dhtun(8)")]);
    page.control("SH", ["DESCRIPTION"]);
    let mut paragraph: Vec<String> = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            flush(&mut page, &mut paragraph);
            if in_code {
                page.control("fi", []).control("RE", []);
            } else {
                page.control("PP", [])
                    .control("RS", ["4"])
                    .control("nf", []);
            }
            in_code = !in_code;
        } else if in_code {
            page.text([roman(line)]);
        } else if line.starts_with("# ") {
            // The document's title: NAME says it.
        } else if let Some(heading) = line.strip_prefix("## ") {
            flush(&mut page, &mut paragraph);
            page.control("SH", [heading.trim().to_uppercase().as_str()]);
        } else if let Some(row) = line.strip_prefix('|') {
            flush(&mut page, &mut paragraph);
            key_row(&mut page, row);
        } else if let Some(item) = line.strip_prefix("- ") {
            flush(&mut page, &mut paragraph);
            page.control("IP", ["\\(bu", "2"]);
            paragraph.push(item.trim().to_string());
        } else if line.trim().is_empty() {
            flush(&mut page, &mut paragraph);
        } else {
            if paragraph.is_empty() && !line.starts_with("  ") {
                page.control("PP", []);
            }
            paragraph.push(line.trim().to_string());
        }
    }
    flush(&mut page, &mut paragraph);
    page.control("SH", ["SEE ALSO"]);
    page.text([roman(
        "dhtun(8), dhtun-up(8), dhtun-showpeer(8); /usr/share/doc/dhtun/ for the other documents",
    )]);
    page.render()
}

/// One row of a key table, `| `key` | default | range | meaning |`, as a tagged paragraph;
/// the header and separator rows are left out.
fn key_row(page: &mut Roff, row: &str) {
    let cells: Vec<&str> = row.trim_end().trim_end_matches('|').split('|').collect();
    let [key, default, range, meaning] = cells[..] else {
        return;
    };
    if !key.trim().starts_with('`') {
        return;
    }
    page.control("TP", []);
    page.text(inlines(key.trim()));
    let mut text = inlines(meaning.trim());
    text.push(roman(". Default: "));
    text.extend(inlines(default.trim()));
    text.push(roman(". Range: "));
    text.extend(inlines(range.trim()));
    if !range.trim().trim_end_matches('`').ends_with('.') {
        text.push(roman("."));
    }
    page.text(text);
}

/// Writes the pending paragraph (its lines joined) as one text line.
fn flush(page: &mut Roff, paragraph: &mut Vec<String>) {
    if !paragraph.is_empty() {
        page.text(inlines(&paragraph.join(" ")));
        paragraph.clear();
    }
}

/// Markdown inline text as roff: `code` and **bold** in bold, links as their text.
fn inlines(text: &str) -> Vec<Inline> {
    let text = strip_links(text).replace("**", "`");
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

/// `[text](target)` becomes `text`.
fn strip_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find("](") {
            Some(close) if !after[..close].contains('[') => match after[close + 2..].find(')') {
                Some(end) => {
                    out.push_str(&rest[..open]);
                    out.push_str(&after[..close]);
                    rest = &after[close + 2 + end + 1..];
                }
                None => break,
            },
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_become_their_text_and_brackets_stay() {
        assert_eq!(strip_links("see [nat.md](nat.md) now"), "see nat.md now");
        assert_eq!(strip_links("## [[peer]]"), "## [[peer]]");
        assert_eq!(strip_links("`[IPV6]:PORT`"), "`[IPV6]:PORT`");
    }

    #[test]
    fn every_documented_key_is_in_the_config_page() {
        let page = config_page(CONFIGURATION_MD, "0.0.0");
        assert!(
            page.starts_with(".ie") || page.contains(".TH DHTUN.TOML 5"),
            "{page}"
        );
        for key in [
            "private_key_file",
            "listen_port",
            "bootstrap",
            "public_key",
            "relay",
        ] {
            assert!(page.contains(&format!("\\fB{key}\\fR")), "{key} missing");
        }
        assert!(page.contains(".SH [[PEER]]"));
        // No Markdown left over: tables, links and backticks are all converted.
        assert!(!page.contains("](") && !page.contains('`') && !page.contains("|---"));
    }
}
