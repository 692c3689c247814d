//! Several LBs, one membership: the same members give the same bytes, whatever the order the
//! agent wrote them in, the order of keys in each JSON object, or the fields that belong to
//! one agent (`run`, `index`, `version`, `synced`). Two LBs' agents never write the same
//! document text for the same table (each has its own run id and event index, and nothing
//! promises an order), so this is what makes their HAProxy configs byte-identical.
//!
//! Seeded: a failure prints the seed, and the same seed gives the same two documents.

use std::path::Path;
use std::process::Command;

use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::testing as common;

/// xorshift64*: a small seeded generator (no crate for ten lines).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// One member as (key, JSON value text) pairs, its own and its tags', so each document can
/// order the keys its own way.
#[derive(Clone)]
struct RawMember {
    fields: Vec<(String, String)>,
    tags: Vec<(String, String)>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A random membership: backends of three pools with every tag lbgen reads, LBs, members
/// that are not backends, suspect/failed/left ones, IPv6, the odd invalid value and now and
/// then a duplicate name (which a members file may hold even if an agent never writes one).
fn membership(rng: &mut Rng) -> Vec<RawMember> {
    let n = rng.below(24);
    let mut out: Vec<RawMember> = Vec::new();
    for i in 0..n {
        if rng.chance(5) && !out.is_empty() {
            // The same member listed twice with another status (a hand-merged file).
            let mut twin = out[rng.below(out.len())].clone();
            twin.fields[2].1 = json_str(rng.pick(&["alive", "suspect", "failed"]));
            out.push(twin);
            continue;
        }
        let service = rng.pick(&["web", "api", "static", ""]);
        let name = if rng.chance(5) && i > 0 {
            format!("{service}-{}", rng.below(i))
        } else if rng.chance(3) {
            "bad name".to_string()
        } else {
            format!("{}-{i}", if service.is_empty() { "lb" } else { service })
        };
        let addr = match rng.below(10) {
            0 => format!("[fd00::{:x}]:7946", i + 1),
            1 if rng.chance(30) => "not-an-address".to_string(),
            _ => format!("10.0.{}.{}:7946", rng.below(3), i + 1),
        };
        let status = rng.pick(&["alive", "alive", "alive", "suspect", "failed", "left"]);
        let mut tags: Vec<(&str, String)> = Vec::new();
        if service.is_empty() {
            tags.push(("role", "lb".into()));
        } else {
            tags.push(("service", service.into()));
            tags.push(("port", rng.pick(&["3000", "3000", "8080", "0"]).into()));
            let route = match service {
                "api" => rng.pick(&["/api", "/api/", "/api/v2"]),
                "static" => rng.pick(&["/static", "/"]),
                _ => "/",
            };
            tags.push(("route", route.into()));
            if rng.chance(60) {
                tags.push(("check", rng.pick(&["/health", "/", "/ready?full=1"]).into()));
            }
            if rng.chance(40) {
                tags.push(("sticky", rng.pick(&["true", "false"]).into()));
            }
            if rng.chance(40) {
                tags.push(("weight", rng.pick(&["0", "50", "100", "256", "300"]).into()));
            }
            if rng.chance(50) {
                let s = rng.pick(&["ready", "ready", "draining", "starting", "unhealthy"]);
                tags.push(("state", s.into()));
            }
            if rng.chance(20) {
                tags.push(("balance", rng.pick(&["leastconn", "source"]).into()));
            }
            if rng.chance(15) {
                tags.push(("slowstart", rng.pick(&["30s", "1500ms"]).into()));
            }
        }
        if rng.chance(50) {
            tags.push(("metrics_agent", "7373".into()));
        }
        out.push(RawMember {
            fields: vec![
                ("name".to_string(), json_str(&name)),
                ("addr".to_string(), json_str(&addr)),
                ("status".to_string(), json_str(status)),
            ],
            tags: tags
                .iter()
                .map(|(k, v)| (json_str(k), json_str(v)))
                .collect(),
        });
    }
    out
}

/// The members document as one agent might write it: members, their keys and their tags in
/// an order of its own, its own run id, event index and API version, compact or indented.
fn document(members: &[RawMember], rng: &mut Rng) -> String {
    let mut members = members.to_vec();
    rng.shuffle(&mut members);
    let sep = if rng.chance(50) { "" } else { "\n  " };
    let objects: Vec<String> = members
        .into_iter()
        .map(|m| {
            let mut tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            rng.shuffle(&mut tags);
            let mut fields: Vec<String> = m
                .fields
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_str(k)))
                .collect();
            fields.push(format!("\"tags\":{{{}}}", tags.join(",")));
            rng.shuffle(&mut fields);
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    let mut top = vec![format!(
        "\"members\":[{sep}{}]",
        objects.join(&format!(",{sep}"))
    )];
    if rng.chance(70) {
        top.push(format!("\"run\":\"{:016x}\"", rng.next()));
        top.push(format!("\"index\":{}", rng.below(100_000)));
        top.push("\"version\":1".to_string());
        top.push("\"synced\":true".to_string());
    }
    rng.shuffle(&mut top);
    format!("{{{sep}{}}}", top.join(&format!(",{sep}")))
}

fn render(renderer: &Renderer, text: &str) -> String {
    let doc = MembersDoc::from_json(text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    renderer
        .render(&Model::build(&doc), &Vars::default())
        .unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

#[test]
fn the_same_members_in_any_order_with_any_agent_fields_render_the_same_bytes() {
    let templates = [
        Renderer::builtin(),
        Renderer::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/prometheus-targets.json.hbs"),
        )
        .expect("the Prometheus targets template compiles"),
        // What a keepalived or peers template reads: every member, LBs included.
        Renderer::from_source(
            "members",
            "{{#each members}}{{name}} {{ip}} {{status}} {{service}} {{role}}\n{{/each}}",
        )
        .expect("the members template compiles"),
    ];
    let mut servers_seen = 0;
    for seed in 0..400u64 {
        let mut rng = Rng::new(seed);
        let members = membership(&mut rng);
        let a = document(&members, &mut rng);
        let b = document(&members, &mut rng);
        for t in &templates {
            let (ra, rb) = (render(t, &a), render(t, &b));
            assert!(
                ra == rb,
                "seed {seed}: two documents of the same members rendered differently\n--- document A:\n{a}\n--- document B:\n{b}\n--- render A:\n{ra}\n--- render B:\n{rb}"
            );
            servers_seen += ra
                .lines()
                .filter(|l| l.trim_start().starts_with("server "))
                .count();
        }
    }
    // The generator must really produce backends, or the comparison proves little.
    assert!(
        servers_seen > 1000,
        "only {servers_seen} server lines in 400 cases"
    );
}

/// The same through the `lbgen render` binary an LB runs: two files with the same members,
/// written by two agents, give two identical config files.
#[test]
fn lbgen_render_writes_identical_files_from_two_agents_documents_of_one_membership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(0x5eed);
    let mut members = membership(&mut rng);
    while members.len() < 10 {
        members = membership(&mut rng);
    }
    let mut outs = Vec::new();
    for lb in ["lb-1", "lb-2"] {
        let input = dir.path().join(format!("{lb}.json"));
        let out = dir.path().join(format!("{lb}.cfg"));
        std::fs::write(&input, document(&members, &mut rng)).expect("write members");
        let result = common::output_within(
            Command::new(env!("CARGO_BIN_EXE_lbgen"))
                .arg("render")
                .arg("--members")
                .arg(&input)
                .arg("--out")
                .arg(&out)
                .env("LBGEN_LOG", "error"),
            common::COMMAND_TIMEOUT,
        );
        assert!(
            result.status.success(),
            "lbgen render for {lb}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        outs.push(std::fs::read(&out).expect("rendered file"));
    }
    assert!(
        std::fs::read(dir.path().join("lb-1.json")).ok()
            != std::fs::read(dir.path().join("lb-2.json")).ok(),
        "the two documents should differ as text"
    );
    assert_eq!(
        String::from_utf8_lossy(&outs[0]),
        String::from_utf8_lossy(&outs[1])
    );
}
