//! The ops subcommands: each asks the agent's API and prints the answer.

use hyper::Method;
use regex::Regex;
use serde_json::{json, Value};
use shoal_contract::{Member, MembersDoc, Status, StreamLine};

use crate::cli::{OutputFormat, QueryFormat};
use crate::client::Client;
use crate::serf::output as serf_out;
use crate::tags;

/// Whose output to print: shoal's, or Serf's (invoked as `serf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Shoal,
    Serf,
}

/// A CLI failure: `usage` errors (bad flags or arguments) exit 2, others 1.
#[derive(Debug)]
pub struct CliError {
    pub usage: bool,
    pub message: String,
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError {
            usage: false,
            message,
        }
    }
}

fn usage(message: String) -> CliError {
    CliError {
        usage: true,
        message,
    }
}

type CliResult = Result<(), CliError>;

/// A `--tag KEY=REGEX` filter (anchored, like Serf's).
pub struct TagFilter {
    key: String,
    re: Regex,
}

impl TagFilter {
    pub fn parse(s: &str) -> Result<TagFilter, String> {
        let (key, pattern) = s
            .split_once('=')
            .ok_or_else(|| format!("--tag {s:?} is not of the form KEY=REGEX"))?;
        let re = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("--tag {s:?}: bad regular expression: {e}"))?;
        Ok(TagFilter {
            key: key.to_string(),
            re,
        })
    }

    fn matches(&self, member: &Member) -> bool {
        member
            .tags
            .get(&self.key)
            .is_some_and(|v| self.re.is_match(v))
    }
}

/// An anchored regex, as Serf's `-status`, `-name` and `-tag` filters.
fn anchored(flag: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{flag} {pattern:?}: bad regular expression: {e}"))
}

/// Which members `shoal members` / `serf members` lists.
#[derive(Default)]
pub struct MemberFilter {
    /// Matched against the status as the style prints it.
    pub status: Option<Regex>,
    pub name: Option<Regex>,
    pub tags: Vec<TagFilter>,
}

impl MemberFilter {
    /// `--status` is a status name or an anchored regex; for shoal a plain
    /// word must name a status (a typo is an error, not an empty list),
    /// Serf takes any regex.
    pub fn parse(
        style: Style,
        status: Option<&str>,
        name: Option<&str>,
        tags: &[String],
    ) -> Result<MemberFilter, String> {
        let status = match status {
            None => None,
            Some(s) => {
                let plain = s.chars().all(|c| c.is_ascii_alphanumeric());
                if style == Style::Shoal && plain && Status::parse(s).is_none() {
                    return Err(format!(
                        "--status {s:?}: use alive, suspect, failed or left (or a regex)"
                    ));
                }
                Some(anchored("--status", s)?)
            }
        };
        Ok(MemberFilter {
            status,
            name: name.map(|n| anchored("--name", n)).transpose()?,
            tags: tags
                .iter()
                .map(|f| TagFilter::parse(f))
                .collect::<Result<_, _>>()?,
        })
    }

    fn matches(&self, style: Style, m: &Member) -> bool {
        let status = match style {
            Style::Shoal => m.status.as_str(),
            Style::Serf => serf_out::status(m.status),
        };
        self.status.as_ref().is_none_or(|re| re.is_match(status))
            && self.name.as_ref().is_none_or(|re| re.is_match(&m.name))
            && self.tags.iter().all(|f| f.matches(m))
    }
}

/// Filters a members document by status and tags.
pub fn filter_members(
    doc: &MembersDoc,
    status: Option<Status>,
    filters: &[TagFilter],
) -> Vec<Member> {
    doc.members
        .iter()
        .filter(|m| status.is_none_or(|s| m.status == s))
        .filter(|m| filters.iter().all(|f| f.matches(m)))
        .cloned()
        .collect()
}

/// `k=v,k=v`, sorted by key.
fn member_tags_text(tags: &shoal_contract::Tags) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn tags_text(tags: &Value) -> String {
    tags.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Aligned columns, like `serf members`.
pub fn members_table(members: &[Member]) -> String {
    let rows: Vec<[String; 4]> = members
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.addr.clone(),
                m.status.to_string(),
                member_tags_text(&m.tags),
            ]
        })
        .collect();
    let header = ["NAME", "ADDRESS", "STATUS", "TAGS"].map(String::from);
    let mut widths = [0usize; 3];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (i, w) in widths.iter_mut().enumerate() {
            *w = (*w).max(row[i].len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out
}

/// `shoal members`' flags.
pub struct MembersQuery {
    pub format: OutputFormat,
    pub status: Option<String>,
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub detailed: bool,
}

/// shoal's table with the protocol column (`--detailed`).
fn members_table_detailed(members: &[Member]) -> String {
    let v = crate::wire::VERSION.to_string();
    let mut rows = vec![["NAME", "ADDRESS", "STATUS", "PROTOCOL", "TAGS"]
        .map(String::from)
        .to_vec()];
    for m in members {
        rows.push(vec![
            m.name.clone(),
            m.addr.clone(),
            m.status.to_string(),
            v.clone(),
            member_tags_text(&m.tags),
        ]);
    }
    serf_out::columnize(&rows)
}

pub async fn members(client: &Client, style: Style, q: MembersQuery) -> CliResult {
    let filter = MemberFilter::parse(style, q.status.as_deref(), q.name.as_deref(), &q.tags)
        .map_err(usage)?;
    let doc = client.call(Method::GET, "/v1/members", None).await?;
    let doc: MembersDoc = serde_json::from_value(doc)
        .map_err(|e| format!("the agent's members document is invalid: {e}"))?;
    shoal_contract::check_version(doc.version)?;
    for u in &doc.unrecognised {
        eprintln!(
            "shoal: member {:?} has status {:?}, which this CLI does not know; not listed",
            u.name, u.status
        );
    }
    let members: Vec<Member> = doc
        .members
        .iter()
        .filter(|m| filter.matches(style, m))
        .cloned()
        .collect();
    match (style, q.format) {
        // Exactly `{"members":[...]}`: the document scripts and lbgen read.
        (Style::Shoal, OutputFormat::Json) => {
            println!("{}", MembersDoc::list(members).to_json())
        }
        (Style::Shoal, OutputFormat::Table) if q.detailed => {
            print!("{}", members_table_detailed(&members))
        }
        (Style::Shoal, OutputFormat::Table) => print!("{}", members_table(&members)),
        (Style::Serf, OutputFormat::Json) => println!("{}", serf_out::members_json(&members)),
        (Style::Serf, OutputFormat::Table) => {
            print!("{}", serf_out::members_text(&members, q.detailed))
        }
    }
    Ok(())
}

/// `serf monitor`: the agent's log lines, as Serf's monitor prints them
/// (`level`: Serf's `-log-level`, default info).
pub async fn monitor_logs(client: &Client, level: Option<&str>, format: OutputFormat) -> CliResult {
    let level = level.map(crate::serf::level_directive);
    let level = level.as_deref().unwrap_or("info");
    if crate::logstream::parse_level(level).is_none() {
        return Err(usage(format!(
            "--log-level {level:?}: use trace, debug, info, warn or err"
        )));
    }
    client
        .stream(&format!("/v1/logs?level={level}"), |v| {
            match (format, serf_out::log_line(&v)) {
                (OutputFormat::Json, _) => println!("{v}"),
                (OutputFormat::Table, Some(l)) => println!("{l}"),
                (OutputFormat::Table, None) => {
                    if let Some(n) = v["lagged"].as_u64() {
                        println!("[WARN] monitor: {n} log lines skipped (too slow)");
                    }
                }
            }
            true
        })
        .await?;
    Ok(())
}

pub async fn monitor(client: &Client, index: Option<u64>, format: OutputFormat) -> CliResult {
    let path = match index {
        Some(i) => format!("/v1/events?index={i}"),
        None => {
            let info = client.call(Method::GET, "/v1/info", None).await?;
            format!(
                "/v1/events?index={}",
                info["events"]["last_index"].as_u64().unwrap_or(0)
            )
        }
    };
    client
        .stream(&path, |ev| {
            let line = serde_json::from_value::<StreamLine>(ev.clone());
            if let Ok(StreamLine::Notice(n)) = &line {
                if n.kind == shoal_contract::NoticeKind::Keepalive {
                    return true;
                }
            }
            match (format, line) {
                // As the agent sent it, fields this CLI does not know included.
                (OutputFormat::Json, _) => println!("{ev}"),
                (OutputFormat::Table, Ok(StreamLine::Event(e))) => println!(
                    "{} [{}] {} {} {} {} {}",
                    e.time,
                    e.index,
                    e.kind,
                    e.member.name,
                    e.member.addr,
                    e.member.status,
                    member_tags_text(&e.member.tags)
                ),
                // Stream notices (synced, resync) carry no member; neither does a
                // line of a kind this CLI does not know.
                (OutputFormat::Table, _) => println!(
                    "[{}] {} {}",
                    ev["index"],
                    ev["type"].as_str().unwrap_or("-"),
                    ev["reason"].as_str().unwrap_or("")
                ),
            }
            true
        })
        .await?;
    Ok(())
}

pub async fn join(client: &Client, style: Style, addrs: Vec<String>) -> CliResult {
    for a in &addrs {
        crate::addr::parse_host_port(a).map_err(usage)?;
    }
    // The agent answers once every push-pull is done; an error (exit 1)
    // when no node answered, naming each address, as `serf join` fails.
    let v = client
        .call(Method::POST, "/v1/join", Some(&json!({ "addrs": addrs })))
        .await?;
    match style {
        Style::Shoal => print!("{}", join_text(&v)),
        Style::Serf => println!("{}", serf_out::joined(v["joined"].as_u64().unwrap_or(0))),
    }
    Ok(())
}

/// `joined 1 of 2 node(s) contacted` and one line per failed address.
fn join_text(v: &Value) -> String {
    let mut out = format!(
        "joined {} of {} node(s) contacted\n",
        v["joined"].as_u64().unwrap_or(0),
        v["contacted"].as_u64().unwrap_or(0)
    );
    if let Some(failed) = v["failed"].as_object() {
        for (addr, why) in failed {
            out.push_str(&format!(
                "  {addr}: failed: {}\n",
                why.as_str().unwrap_or_default()
            ));
        }
    }
    out
}

pub async fn leave(client: &Client, style: Style) -> CliResult {
    client.call(Method::POST, "/v1/leave", None).await?;
    match style {
        Style::Shoal => println!("left the cluster gracefully"),
        Style::Serf => println!("Graceful leave complete"),
    }
    Ok(())
}

pub async fn force_leave(client: &Client, style: Style, name: &str) -> CliResult {
    crate::identity::validate_name(name).map_err(usage)?;
    client
        .call(Method::POST, &format!("/v1/force-leave/{name}"), None)
        .await?;
    if style == Style::Shoal {
        println!("{name} marked as left");
    }
    Ok(())
}

pub async fn set_tags(
    client: &Client,
    style: Style,
    set: &[String],
    delete: &[String],
) -> CliResult {
    if set.is_empty() && delete.is_empty() {
        return Err(usage(
            "nothing to change: give --set KEY=VALUE and/or --delete KEY".into(),
        ));
    }
    let mut map = serde_json::Map::new();
    for s in set {
        let (k, v) = tags::parse_tag(s).map_err(|e| usage(format!("--set: {e}")))?;
        map.insert(k, Value::String(v));
    }
    let body = json!({ "set": map, "delete": delete });
    let v = client.call(Method::PUT, "/v1/tags", Some(&body)).await?;
    match style {
        Style::Shoal => println!("{}", tags_text(&v["tags"])),
        Style::Serf => println!("Successfully updated agent tags"),
    }
    Ok(())
}

/// `shoal keys`: one operation, then the per-node results; exit 1 if any
/// member failed (the operation is idempotent: run it again).
pub async fn keys(
    client: &Client,
    list: bool,
    install: Option<String>,
    use_key: Option<String>,
    remove: Option<String>,
) -> CliResult {
    let (path, key, verb) = match (list, install, use_key, remove) {
        (true, None, None, None) => ("/v1/keys", None, "list"),
        (false, Some(k), None, None) => ("/v1/keys/install", Some(k), "install"),
        (false, None, Some(k), None) => ("/v1/keys/use", Some(k), "use"),
        (false, None, None, Some(k)) => ("/v1/keys/remove", Some(k), "remove"),
        _ => {
            return Err(usage(
                "give exactly one of --list, --install, --use, --remove".into(),
            ))
        }
    };
    if let Some(k) = &key {
        crate::keyring::Key::parse(k).map_err(usage)?;
    }
    let v = match key {
        None => client.call(Method::GET, path, None).await?,
        Some(k) => {
            client
                .call(Method::POST, path, Some(&json!({ "key": k })))
                .await?
        }
    };
    let nodes = v["nodes"].as_u64().unwrap_or(0);
    let ok = v["ok"].as_u64().unwrap_or(0);
    println!("{verb}: {ok}/{nodes} nodes ok");
    if let Some(errors) = v["errors"].as_object() {
        for (node, e) in errors {
            println!("  {node}: error: {}", e.as_str().unwrap_or_default());
        }
    }
    if let Some(keys) = v["keys"].as_object() {
        println!("keys installed (nodes):");
        for (k, n) in keys {
            let primary = v["primary"][k].as_u64().unwrap_or(0);
            println!("  {k}  {n}/{nodes}  primary on {primary}");
        }
    }
    if ok == nodes {
        Ok(())
    } else {
        Err(CliError::from(format!(
            "{} of {nodes} nodes failed to {verb}",
            nodes - ok
        )))
    }
}

pub async fn info(client: &Client, style: Style, format: OutputFormat) -> CliResult {
    let v = client.call(Method::GET, "/v1/info", None).await?;
    match (style, format) {
        (_, OutputFormat::Json) => println!("{v}"),
        (Style::Shoal, OutputFormat::Table) => print!("{}", info_text(&v, "")),
        (Style::Serf, OutputFormat::Table) => print!("{}", serf_out::info_text(&v)),
    }
    Ok(())
}

/// `shoal version` / `serf version`: the agent's and the wire protocol's.
pub fn version(style: Style) {
    let name = match style {
        Style::Shoal => "shoal",
        Style::Serf => "shoal (as serf)",
    };
    println!("{name} v{}", env!("CARGO_PKG_VERSION"));
    println!(
        "Agent Protocol: {} (shoal's own; no wire compatibility with Serf)",
        crate::wire::VERSION
    );
}

/// `key: value` lines, nested objects indented.
fn info_text(v: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            match val {
                Value::Object(_) => {
                    out.push_str(&format!("{indent}{k}:\n"));
                    out.push_str(&info_text(val, &format!("{indent}  ")));
                }
                Value::String(s) => out.push_str(&format!("{indent}{k}: {s}\n")),
                other => out.push_str(&format!("{indent}{k}: {other}\n")),
            }
        }
    }
    out
}

/// `shoal event NAME [PAYLOAD]`: one user event to every member.
pub async fn event(client: &Client, name: &str, payload: String, coalesce: bool) -> CliResult {
    crate::userev::validate_event_name(name).map_err(|e| usage(e.to_string()))?;
    if payload.len() > crate::userev::MAX_EVENT_PAYLOAD {
        return Err(usage(format!(
            "payload of {} bytes exceeds the limit of {} bytes",
            payload.len(),
            crate::userev::MAX_EVENT_PAYLOAD
        )));
    }
    let body = json!({ "name": name, "payload": payload, "coalesce": coalesce });
    let v = client.call(Method::POST, "/v1/event", Some(&body)).await?;
    println!(
        "Event '{name}' dispatched! Coalescing enabled: {coalesce} (ltime {})",
        v["ltime"]
    );
    Ok(())
}

/// What `shoal query` was given.
pub struct QueryArgs {
    pub name: String,
    pub payload: String,
    pub nodes: Vec<String>,
    pub tags: Vec<String>,
    pub timeout: Option<String>,
    pub no_ack: bool,
}

/// `shoal query NAME [PAYLOAD]`: prints acks and responses as they come
/// (text, as Serf's), or Serf's JSON document at the end (`--format json`).
pub async fn query(client: &Client, q: QueryArgs, format: QueryFormat) -> CliResult {
    crate::userev::validate_event_name(&q.name).map_err(|e| usage(e.to_string()))?;
    let mut tags = serde_json::Map::new();
    for t in &q.tags {
        let (k, re) = t
            .split_once('=')
            .ok_or_else(|| usage(format!("--tag {t:?} is not of the form KEY=REGEX")))?;
        Regex::new(re).map_err(|e| usage(format!("--tag {t:?}: bad regular expression: {e}")))?;
        tags.insert(k.to_string(), Value::String(re.to_string()));
    }
    if let Some(t) = &q.timeout {
        shoal_contract::parse_duration(t).map_err(|e| usage(format!("--timeout: {e}")))?;
    }
    let body = json!({
        "name": q.name,
        "payload": q.payload,
        "nodes": q.nodes,
        "tags": tags,
        "timeout": q.timeout,
        "no_ack": q.no_ack,
    });
    let mut acks: Vec<String> = Vec::new();
    let mut responses = serde_json::Map::new();
    let mut done = None;
    client
        .stream_request(Method::POST, "/v1/query", Some(&body), |v| {
            let Ok(line) = serde_json::from_value::<shoal_contract::QueryLine>(v) else {
                return true;
            };
            match line {
                shoal_contract::QueryLine::Started { name, .. } => {
                    if format == QueryFormat::Text {
                        println!("Query '{name}' dispatched");
                    }
                }
                shoal_contract::QueryLine::Ack { from } => {
                    if format == QueryFormat::Text {
                        println!("Ack from '{from}'");
                    }
                    acks.push(from);
                }
                shoal_contract::QueryLine::Response { from, payload } => {
                    if format == QueryFormat::Text {
                        let shown = payload.strip_suffix('\n').unwrap_or(&payload);
                        println!("Response from '{from}': {shown}");
                    }
                    responses.insert(from, Value::String(payload));
                }
                d @ shoal_contract::QueryLine::Done { .. } => {
                    done = Some(d);
                    return false;
                }
            }
            true
        })
        .await?;
    let Some(shoal_contract::QueryLine::Done {
        acks: n_acks,
        responses: n_responses,
        ..
    }) = done
    else {
        return Err("the agent ended the query stream early".to_string().into());
    };
    match format {
        QueryFormat::Text => {
            println!("Total Acks: {n_acks}");
            println!("Total Responses: {n_responses}");
        }
        QueryFormat::Json => {
            let doc = json!({ "Acks": acks, "Responses": responses });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> MembersDoc {
        MembersDoc::from_json(r#"{"members":[
            {"name":"web-1","addr":"10.0.0.5:7946","status":"alive","tags":{"service":"web","port":"3000"}},
            {"name":"api-1","addr":"10.0.0.6:7946","status":"failed","tags":{"service":"api"}},
            {"name":"lb","addr":"10.0.0.2:7946","status":"alive","tags":{}}
        ]}"#)
        .unwrap()
    }

    #[test]
    fn filters_by_status_and_anchored_tag_regex() {
        let d = doc();
        assert_eq!(filter_members(&d, Some(Status::Alive), &[]).len(), 2);
        let web = [TagFilter::parse("service=web").unwrap()];
        assert_eq!(filter_members(&d, None, &web).len(), 1);
        let we = [TagFilter::parse("service=we").unwrap()];
        assert!(filter_members(&d, None, &we).is_empty(), "anchored");
        let any = [TagFilter::parse("service=.*").unwrap()];
        assert_eq!(
            filter_members(&d, None, &any).len(),
            2,
            "missing tag never matches"
        );
        assert!(TagFilter::parse("service=(").is_err());
    }

    #[test]
    fn status_is_a_name_or_an_anchored_regex_and_serf_sees_suspects_alive() {
        let d = MembersDoc::from_json(
            r#"{"members":[
            {"name":"a","addr":"10.0.0.5:7946","status":"suspect","tags":{}},
            {"name":"b","addr":"10.0.0.6:7946","status":"failed","tags":{}}]}"#,
        )
        .unwrap();
        let count = |style, status: &str| {
            let f = MemberFilter::parse(style, Some(status), None, &[]).unwrap();
            d.members.iter().filter(|m| f.matches(style, m)).count()
        };
        assert_eq!(count(Style::Shoal, "alive"), 0);
        assert_eq!(count(Style::Shoal, "suspect|failed"), 2);
        assert_eq!(count(Style::Serf, "alive"), 1, "a suspect is alive to Serf");
        assert_eq!(count(Style::Serf, "bogus"), 0, "Serf lists nobody");
        let e = MemberFilter::parse(Style::Shoal, Some("alvie"), None, &[])
            .err()
            .unwrap();
        assert!(e.contains("alvie"), "a typo is an error for shoal: {e}");
        assert!(MemberFilter::parse(Style::Serf, Some("("), None, &[]).is_err());
        let by_name = MemberFilter::parse(Style::Shoal, None, Some("b"), &[]).unwrap();
        assert_eq!(
            d.members
                .iter()
                .filter(|m| by_name.matches(Style::Shoal, m))
                .count(),
            1
        );
    }

    #[test]
    fn table_is_aligned() {
        let t = members_table(&filter_members(&doc(), None, &[]));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("NAME "));
        let col = lines[0].find("ADDRESS").unwrap();
        assert_eq!(&lines[1][col..col + 13], "10.0.0.5:7946");
    }
}
