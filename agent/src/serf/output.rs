//! What Serf's CLI prints, for the `serf` link: `serf members` (columns,
//! `-detailed`, `-format json`), `serf info`, the one-line answers of
//! `join`, `tags`, `leave`, `event`, and `serf query`'s totals and JSON. Checked against real `serf` 0.8 output in
//! `agent/tests/serf_cli.rs`.

use serde::Serialize;
use serde_json::Value;
use shoal_contract::{Member, Status};

/// The status Serf would report: a suspect member is still `alive` to Serf
/// (memberlist's suspicion is not a Serf member status).
pub fn status(s: Status) -> &'static str {
    match s {
        Status::Alive | Status::Suspect => "alive",
        Status::Failed => "failed",
        Status::Left => "left",
    }
}

/// The protocol versions every member shoal talks to speaks: one wire
/// version (a packet of another version is refused), so min = max = it.
fn protocol() -> Protocol {
    let v = u32::from(crate::wire::VERSION);
    Protocol {
        max: v,
        min: v,
        version: v,
    }
}

#[derive(Serialize)]
struct Protocol {
    max: u32,
    min: u32,
    version: u32,
}

/// One member as `serf members -format json` writes it (field order too).
#[derive(Serialize)]
struct JsonMember<'a> {
    name: &'a str,
    addr: &'a str,
    port: u16,
    tags: &'a shoal_contract::Tags,
    status: &'static str,
    protocol: Protocol,
}

#[derive(Serialize)]
struct JsonMembers<'a> {
    members: Vec<JsonMember<'a>>,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

/// `{"members":[{"name","addr","port","tags","status","protocol"}]}`,
/// indented by two spaces as Go's `json.MarshalIndent`.
pub fn members_json(members: &[Member]) -> String {
    let doc = JsonMembers {
        members: members
            .iter()
            .map(|m| JsonMember {
                name: &m.name,
                addr: &m.addr,
                port: port_of(&m.addr),
                tags: &m.tags,
                status: status(m.status),
                protocol: protocol(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Serf's columns, no header: name, addr, status, `k=v,k=v`; `-detailed`
/// adds the protocol columns.
pub fn members_text(members: &[Member], detailed: bool) -> String {
    let p = protocol();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let tags = m
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut row = vec![
                m.name.clone(),
                m.addr.clone(),
                status(m.status).to_string(),
                tags,
            ];
            if detailed {
                row.push(format!("Protocol Version: {}", p.version));
                row.push(format!("Available Protocol Range: [{}, {}]", p.min, p.max));
            }
            row
        })
        .collect();
    columnize(&rows)
}

/// Columns padded to their widest cell and two spaces apart; the last
/// column is not padded, and the output's end is trimmed (what Serf's
/// `columnize` prints: only the last line loses an empty last column's
/// separator).
pub fn columnize(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    let end = out.trim_end().len();
    out.truncate(end);
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// `serf info`: sections of `\tkey = value` lines: Serf's `agent` (the
/// name) and `tags`, then shoal's info document (its own keys, not Serf's
/// runtime figures).
pub fn info_text(v: &Value) -> String {
    let mut out = String::new();
    let Some(obj) = v.as_object() else {
        return out;
    };
    // Serf's first section and its `tags`, which scripts grep for.
    out.push_str(&format!(
        "agent:\n\tname = {}\n",
        v["self"]["name"].as_str().unwrap_or_default()
    ));
    if let Some(tags) = v["self"]["tags"].as_object() {
        out.push_str("tags:\n");
        for (k, val) in tags {
            out.push_str(&format!("\t{k} = {}\n", val.as_str().unwrap_or_default()));
        }
    }
    for (section, val) in obj {
        match val {
            Value::Object(inner) => {
                out.push_str(&format!("{section}:\n"));
                flatten(inner, "", &mut out);
            }
            Value::String(s) => out.push_str(&format!("{section}:\n\tvalue = {s}\n")),
            other => out.push_str(&format!("{section}:\n\tvalue = {other}\n")),
        }
    }
    out
}

fn flatten(obj: &serde_json::Map<String, Value>, prefix: &str, out: &mut String) {
    for (k, v) in obj {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(inner) => flatten(inner, &key, out),
            Value::String(s) => out.push_str(&format!("\t{key} = {s}\n")),
            other => out.push_str(&format!("\t{key} = {other}\n")),
        }
    }
}

/// A log line as Serf's monitor prints it:
/// `2026/12/01 11:59:21 [INFO] shoal::agent: gossip listening ...`.
pub fn log_line(v: &Value) -> Option<String> {
    let time = v["time"].as_str()?;
    let level = match v["level"].as_str()? {
        "ERROR" => "ERR",
        "WARN" => "WARN",
        other => other,
    };
    Some(format!(
        "{} [{level}] {}: {}",
        serf_time(time),
        v["target"].as_str().unwrap_or_default(),
        v["message"].as_str().unwrap_or_default()
    ))
}

/// Serf's log time, `2026/12/01 11:59:21`, from the event's RFC 3339 time.
fn serf_time(rfc3339: &str) -> String {
    let date = rfc3339.get(..10).unwrap_or(rfc3339).replace('-', "/");
    let time = rfc3339.get(11..19).unwrap_or("");
    format!("{date} {time}")
}

/// `serf join`'s answer.
pub fn joined(n: u64) -> String {
    format!("Successfully joined cluster by contacting {n} nodes.")
}

/// `serf event`'s answer (no Lamport time, unlike `shoal event`'s).
pub fn event_dispatched(name: &str, coalesce: bool) -> String {
    format!("Event '{name}' dispatched! Coalescing enabled: {coalesce}")
}

/// `serf query`'s last lines: `Total Acks` only when acks were asked for
/// (Serf leaves it out with `-no-ack`).
pub fn query_totals(acks_asked: bool, acks: usize, responses: usize) -> String {
    let mut out = String::new();
    if acks_asked {
        out.push_str(&format!("Total Acks: {acks}\n"));
    }
    out.push_str(&format!("Total Responses: {responses}\n"));
    out
}

/// `serf query -format json`: `{"Acks":[...],"Responses":{...}}`, indented
/// as Go's `json.MarshalIndent`; no acks is `null` (Serf's nil slice).
pub fn query_json(acks: &[String], responses: &serde_json::Map<String, Value>) -> String {
    let acks = if acks.is_empty() {
        Value::Null
    } else {
        Value::from(acks)
    };
    let doc = serde_json::json!({ "Acks": acks, "Responses": responses });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<Member> {
        shoal_contract::MembersDoc::from_json(
            r#"{"members":[
            {"name":"a","addr":"127.0.0.41:7946","status":"alive","tags":{"role":"web","port":"3000"}},
            {"name":"bb","addr":"127.0.0.42:7946","status":"suspect","tags":{}}]}"#,
        )
        .unwrap()
        .members
    }

    #[test]
    fn members_text_is_serfs_columns_without_a_header() {
        // `serf members` on two real Serf 0.8 agents (`cat -A`, `$` is the end of line):
        // bb  127.0.0.42:7946  alive  $
        // a   127.0.0.41:7946  alive  port=3000,role=web$
        let mut two = members();
        two.reverse();
        assert_eq!(
            members_text(&two, false),
            "bb  127.0.0.42:7946  alive  \na   127.0.0.41:7946  alive  port=3000,role=web\n"
        );
        assert_eq!(
            members_text(&members(), false),
            "a   127.0.0.41:7946  alive  port=3000,role=web\nbb  127.0.0.42:7946  alive\n",
            "the output's end is trimmed"
        );
        let detailed = members_text(&members(), true);
        let lines: Vec<&str> = detailed.lines().collect();
        assert_eq!(
            lines[1],
            "bb  127.0.0.42:7946  alive                      Protocol Version: 1  Available Protocol Range: [1, 1]"
        );
    }

    #[test]
    fn a_log_line_reads_as_serfs() {
        let v = serde_json::json!({"time": "2026-12-01T11:59:21.123Z", "level": "ERROR",
            "target": "shoal::agent", "message": "cannot bind"});
        assert_eq!(
            log_line(&v).unwrap(),
            "2026/12/01 11:59:21 [ERR] shoal::agent: cannot bind"
        );
        assert_eq!(log_line(&serde_json::json!({"lagged": 3})), None);
    }

    #[test]
    fn info_starts_with_serfs_agent_and_tags_sections() {
        let v = serde_json::json!({"self": {"name": "a", "tags": {"role": "web"}}, "joined": true});
        let text = info_text(&v);
        assert!(
            text.starts_with("agent:\n\tname = a\ntags:\n\trole = web\n"),
            "{text}"
        );
        assert!(text.contains("joined:\n\tvalue = true\n"), "{text}");
    }

    #[test]
    fn query_and_event_answers_read_as_serfs() {
        // Real Serf 0.8: `serf event deploy v1`, `serf query -no-ack ...`.
        assert_eq!(
            event_dispatched("deploy", true),
            "Event 'deploy' dispatched! Coalescing enabled: true"
        );
        assert_eq!(
            query_totals(true, 2, 1),
            "Total Acks: 2\nTotal Responses: 1\n"
        );
        assert_eq!(query_totals(false, 0, 2), "Total Responses: 2\n");
        let mut r = serde_json::Map::new();
        r.insert("a".into(), Value::from("hello from a\n"));
        assert_eq!(
            query_json(&[], &r),
            "{\n  \"Acks\": null,\n  \"Responses\": {\n    \"a\": \"hello from a\\n\"\n  }\n}"
        );
        assert_eq!(
            query_json(&["a".into()], &serde_json::Map::new()),
            "{\n  \"Acks\": [\n    \"a\"\n  ],\n  \"Responses\": {}\n}"
        );
    }

    #[test]
    fn members_json_has_serfs_fields_in_serfs_order() {
        let text = members_json(&members());
        let v: Value = serde_json::from_str(&text).unwrap();
        let m = &v["members"][0];
        assert_eq!(m["port"], 7946);
        assert_eq!(m["protocol"]["version"], 1);
        assert_eq!(
            v["members"][1]["status"], "alive",
            "a suspect is alive to Serf"
        );
        let order: Vec<usize> = [
            "\"name\"",
            "\"addr\"",
            "\"port\"",
            "\"tags\"",
            "\"status\"",
            "\"protocol\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
