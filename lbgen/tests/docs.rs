//! The flag table in docs/lbgen.md against the binary: every flag of
//! `lbgen render`, `watch`, `status` and `acme` (as `--help` lists it) has a row
//! naming that command, and every row's flag exists for each command it names.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const COMMANDS: [&str; 4] = ["render", "watch", "status", "acme"];

/// `(command, flag)` for every long flag `lbgen COMMAND --help` lists.
fn real_flags() -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for cmd in COMMANDS {
        let out = Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .args([cmd, "--help"])
            .output()
            .expect("run lbgen --help");
        assert!(out.status.success(), "lbgen {cmd} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        // Option lines start with the option itself (`  -h, --help`,
        // `      --out <OUT>`); descriptions never do.
        for line in help.lines().map(str::trim_start) {
            if !line.starts_with('-') {
                continue;
            }
            for flag in long_flags(line.split("  ").next().unwrap_or(line)) {
                if flag != "help" && flag != "version" {
                    pairs.insert((cmd.to_string(), flag));
                }
            }
        }
    }
    pairs
}

/// The names of the `--flag`s written in `text` (a bare `--` is none).
fn long_flags(text: &str) -> Vec<String> {
    let mut flags = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
            flags.push(name.clone());
        }
        rest = &rest[at + 2 + name.len()..];
    }
    flags
}

/// A table row's cells (`\|` inside a cell is not a separator).
fn cells(row: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = row.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().expect("a cell").push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            _ => cells.last_mut().expect("a cell").push(c),
        }
    }
    cells
}

/// `(command, flag)` for every row of the `## Flags` table in docs/lbgen.md.
fn documented_flags() -> BTreeSet<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/lbgen.md");
    let doc = std::fs::read_to_string(&path).expect("docs/lbgen.md");
    let mut lines = doc.lines().skip_while(|l| l.trim_end() != "## Flags");
    assert!(
        lines.next().is_some(),
        "docs/lbgen.md has no `## Flags` heading"
    );
    let mut pairs = BTreeSet::new();
    for row in lines
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
    {
        let cells = cells(row);
        let (Some(flag_cell), Some(commands)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        for flag in long_flags(flag_cell) {
            for cmd in commands.split(',').map(str::trim) {
                assert!(
                    COMMANDS.contains(&cmd),
                    "docs/lbgen.md: --{flag} names an unknown command {cmd:?} (one of {COMMANDS:?})"
                );
                pairs.insert((cmd.to_string(), flag.clone()));
            }
        }
    }
    pairs
}

#[test]
fn every_lbgen_flag_is_documented_and_every_documented_flag_exists() {
    let real = real_flags();
    let documented = documented_flags();
    assert!(
        real.iter()
            .any(|(c, f)| c == "watch" && f == "haproxy-master"),
        "the --help parser found no flags: {real:?}"
    );
    let undocumented: Vec<_> = real.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&real).collect();
    assert!(
        undocumented.is_empty(),
        "(command, flag) without a row in docs/lbgen.md's Flags table: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "rows in docs/lbgen.md's Flags table for flags the command does not have: {unknown:?}"
    );
}
