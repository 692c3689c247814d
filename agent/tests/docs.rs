//! The documentation against the code: the agent's flag table in
//! docs/agent.md lists exactly the flags clap knows, and every relative link
//! between README.md, CHANGELOG.md, docs/ and bench/results/RESULTS.md
//! points at a file (and a heading) that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use shoal::cli::Cli;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `doc` under the heading `## {title}`, up to the next `## `.
fn section<'a>(doc: &'a str, title: &str) -> Vec<&'a str> {
    let heading = format!("## {title}");
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != heading);
    assert!(lines.next().is_some(), "no heading {heading:?}");
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

/// The long flags (`--name`, without dashes) written in the first cell of
/// each table row; `-- CMD` (a bare `--`) is not a flag.
fn flags_in_first_column(lines: &[&str]) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in lines.iter().filter(|l| l.starts_with('|')) {
        let cell = first_cell(line);
        let mut rest = cell;
        while let Some(at) = rest.find("--") {
            let name: String = rest[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                flags.insert(name.clone());
            }
            rest = &rest[at + 2 + name.len()..];
        }
    }
    flags
}

/// A table row's first cell (`\|` inside a cell is not a separator).
fn first_cell(row: &str) -> &str {
    let inner = &row[1..];
    let bytes = inner.as_bytes();
    let end = (0..bytes.len())
        .find(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\'))
        .unwrap_or(inner.len());
    &inner[..end]
}

/// Every long flag `shoal agent` accepts: its own and the global ones
/// (`--api`, `--api-token`, `--log-format`).
fn agent_flags() -> BTreeSet<String> {
    let cli = Cli::command();
    let agent = cli
        .find_subcommand("agent")
        .expect("an agent subcommand")
        .clone();
    cli.get_arguments()
        .filter(|a| a.is_global_set())
        .chain(agent.get_arguments())
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_agent_flag_is_documented_and_every_documented_flag_exists() {
    let doc = read(&repo().join("docs/agent.md"));
    let documented = flags_in_first_column(&section(&doc, "Flags"));
    let real = agent_flags();
    let undocumented: Vec<_> = real.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&real).collect();
    assert!(
        undocumented.is_empty(),
        "flags of `shoal agent` without a row in docs/agent.md's Flags table: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "rows in docs/agent.md's Flags table for flags `shoal agent` does not have: {unknown:?}"
    );
}

/// The documents whose links are checked.
fn documents() -> Vec<PathBuf> {
    let root = repo();
    let mut docs = vec![
        root.join("README.md"),
        root.join("CHANGELOG.md"),
        root.join("bench/results/RESULTS.md"),
    ];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// The lines of a Markdown document outside fenced code blocks.
fn outside_fences(doc: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push(line);
        }
    }
    out
}

/// A line without its inline code spans (which hold no links).
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens; a repeated heading gets `-1`, `-2`, ...
fn anchors(doc: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in outside_fences(doc) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// The targets of inline links and images, `[text](target)`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        targets.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    targets
}

#[test]
fn every_relative_link_between_the_documents_points_to_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    for doc_path in documents() {
        let doc = read(&doc_path);
        let dir = doc_path.parent().expect("a parent directory");
        let shown = doc_path
            .strip_prefix(repo())
            .unwrap_or(&doc_path)
            .display()
            .to_string();
        for line in outside_fences(&doc) {
            for target in link_targets(&without_code(line)) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let path = if file.is_empty() {
                    doc_path.clone()
                } else {
                    dir.join(file)
                };
                if !path.exists() {
                    broken.push(format!("{shown}: ({target}): no file {}", path.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if path.extension().is_some_and(|x| x == "md")
                    && !anchors(&read(&path)).contains(anchor)
                {
                    broken.push(format!("{shown}: ({target}): no heading #{anchor}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_anchor_rules_match_githubs() {
    let doc = "# The model (members → pools)\n## Addresses: `tasks.<service>`, not `<service>`\n\
               ## bench/e2e.sh: the compose scenarios\n## Flags\n## Flags\n```\n# not a heading\n```\n";
    let got: Vec<String> = anchors(doc).into_iter().collect();
    assert_eq!(
        got,
        [
            "addresses-tasksservice-not-service",
            "benche2esh-the-compose-scenarios",
            "flags",
            "flags-1",
            "the-model-members--pools",
        ]
    );
}

/// The first-column cells (between backticks) of the table under `## {title}`.
fn first_column_words(doc: &str, title: &str) -> BTreeSet<String> {
    section(doc, title)
        .iter()
        .filter(|l| l.starts_with("| `"))
        .map(|l| first_cell(l).trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn every_serf_flag_and_config_key_shoal_translates_has_a_row_in_serf_md() {
    let doc = read(&repo().join("docs/serf.md"));
    let flags = first_column_words(&doc, "Flags");
    let want: BTreeSet<String> = shoal::serf::argv::TABLE
        .iter()
        .map(|(name, _)| format!("-{name}"))
        .collect();
    assert_eq!(
        flags, want,
        "docs/serf.md's flag table against serf::argv::TABLE"
    );
    let keys = first_column_words(&doc, "Config files");
    let want: BTreeSet<String> = shoal::serf::config::KEYS
        .iter()
        .map(|(key, _)| key.to_string())
        .collect();
    assert_eq!(
        keys, want,
        "docs/serf.md's key table against serf::config::KEYS"
    );
}
