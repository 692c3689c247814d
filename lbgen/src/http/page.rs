//! The status page: server-rendered HTML (works with JS off: a `<noscript>` meta refresh),
//! and a little inline JS that, with JS on, re-fetches the `#status` fragment
//! (`status.html`) when `/events` reports an agent event or an apply, and every few seconds,
//! without reloading the page. No build step, no CDN, no external fonts. Everything from the
//! network (names, tags, errors) goes through [`escape`]. Pure: a [`StatusView`] in, HTML out.

use std::fmt::Write;

use crate::http::hub::StatusView;

/// Seconds between refreshes without JS (meta refresh) and between polls with JS.
pub const REFRESH_SECS: u32 = 5;

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds → `2026-12-01T12:00:00Z` (UTC; days-from-civil inverted, no date crate).
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The whole page.
pub fn page(v: &StatusView) -> String {
    let mut out = String::with_capacity(4096 + v.members.len() * 256);
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        out,
        "<noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"></noscript>"
    );
    out.push_str("<title>shoal lbgen status</title>\n<style>");
    out.push_str(CSS);
    out.push_str("</style></head>\n<body>\n<header><h1>shoal · lbgen</h1>");
    out.push_str("<span id=\"conn\" class=\"conn\">server-rendered</span></header>\n");
    out.push_str("<main id=\"status\">\n");
    fragment_into(&mut out, v);
    out.push_str("</main>\n<script>");
    out.push_str(&JS.replace("REFRESH_MS", &(REFRESH_SECS * 1000).to_string()));
    out.push_str("</script>\n</body></html>\n");
    out
}

/// The content of `<main id="status">`, which the page's JS swaps in.
pub fn fragment(v: &StatusView) -> String {
    let mut out = String::with_capacity(2048 + v.members.len() * 256);
    fragment_into(&mut out, v);
    out
}

fn fragment_into(out: &mut String, v: &StatusView) {
    summary(out, v);
    pools(out, v);
    members(out, v);
    events(out, v);
}

fn summary(out: &mut String, v: &StatusView) {
    let count = |s: &str| v.members.iter().filter(|m| m.status.as_str() == s).count();
    let servers: usize = v.pools.iter().map(|p| p.servers.len()).sum();
    let _ = writeln!(
        out,
        "<section id=\"summary\"><p><b>{}</b> members: {} alive, {} suspect, {} failed, {} left · \
         <b>{}</b> pools, <b>{servers}</b> servers · source {}</p>",
        v.members.len(),
        count("alive"),
        count("suspect"),
        count("failed"),
        count("left"),
        v.pools.len(),
        escape(&v.source)
    );
    let _ = writeln!(
        out,
        "<p id=\"haproxy\" data-state=\"{0}\">HAProxy: <span class=\"hs hs-{0}\">{0}</span> {1}</p>",
        v.haproxy.state,
        escape(&v.haproxy.detail)
    );
    match &v.last_apply {
        None => out.push_str("<p id=\"last-apply\" data-result=\"none\">No apply yet.</p>\n"),
        Some(a) => {
            let _ = writeln!(
                out,
                "<p id=\"last-apply\" data-result=\"{}\" data-kind=\"{}\">Last apply: \
                 <span class=\"res res-{0}\">{0}</span> ({1}) at {2}, {3} ms{4}</p>",
                a.result,
                a.kind,
                rfc3339(a.at),
                a.duration_ms,
                a.error
                    .as_deref()
                    .map(|e| format!(": <span class=\"err\">{}</span>", escape(e)))
                    .unwrap_or_default()
            );
        }
    }
    for r in &v.skipped {
        let _ = writeln!(
            out,
            "<p class=\"skipped\">skipped member {}: {}</p>",
            escape(&r.member),
            escape(&r.reason)
        );
    }
    for c in &v.conflicts {
        let _ = writeln!(out, "<p class=\"conflict\">{}</p>", escape(&c.to_string()));
    }
    if let Some(t) = &v.tls {
        let served: Vec<String> = t
            .served
            .iter()
            .map(|s| format!("{} ({})", escape(&s.file), escape(&s.sni)))
            .collect();
        let _ = writeln!(
            out,
            "<p>certificates from {}: {}</p>",
            escape(&t.dir),
            if served.is_empty() {
                "none".to_string()
            } else {
                served.join(", ")
            }
        );
        for r in &t.refused {
            let _ = writeln!(
                out,
                "<p class=\"skipped\">certificate {} refused: {}</p>",
                escape(&r.file),
                escape(&r.reason)
            );
        }
    }
    out.push_str("</section>\n");
}

fn pools(out: &mut String, v: &StatusView) {
    let _ = writeln!(
        out,
        "<section id=\"pools\"><h2>Pools ({})</h2>",
        v.pools.len()
    );
    if v.pools.is_empty() {
        out.push_str("<p>No pool: no member has a <code>service</code> tag.</p>\n");
    }
    for p in &v.pools {
        let name = escape(&p.name);
        let _ = writeln!(
            out,
            "<div class=\"pool\" data-pool=\"{name}\"><h3>{name} <small>route {}{} · check {} · {}{}</small></h3>",
            escape(&p.route),
            if p.default { " (default)" } else { "" },
            escape(&p.check),
            escape(&p.balance),
            if p.sticky { " · sticky" } else { "" },
        );
        let mut t = Chunked::open(out, &SERVER_TABLE);
        for s in &p.servers {
            t.row(out);
            let state = match s.state {
                crate::model::ServerState::Ready => "ready",
                crate::model::ServerState::Drain => "drain",
            };
            let hs = escape(&s.haproxy);
            let _ = writeln!(
                out,
                "<tr class=\"server\" data-server=\"{sn}\" data-state=\"{state}\" data-haproxy=\"{hs}\">\
                 <td>{sn}</td><td>{}</td><td>{}</td><td class=\"st-{state}\">{state}</td>\
                 <td class=\"hs-{}\">{hs}</td><td>{}</td></tr>",
                escape(&s.addr),
                s.weight,
                haproxy_class(&s.haproxy),
                escape(s.check.as_deref().unwrap_or("")),
                sn = escape(&s.name),
            );
        }
        t.close(out);
        out.push_str("</div>\n");
    }
    out.push_str("</section>\n");
}

/// A CSS class for HAProxy's status text (`UP 1/3` → `up`).
fn haproxy_class(s: &str) -> &'static str {
    let s = s.to_ascii_uppercase();
    if s.starts_with("UP") || s == "NO CHECK" {
        "up"
    } else if s.starts_with("DRAIN") || s.starts_with("NOLB") {
        "drain"
    } else if s.starts_with("MAINT") {
        "maint"
    } else if s.starts_with("DOWN") {
        "down"
    } else {
        "unknown"
    }
}

fn members(out: &mut String, v: &StatusView) {
    let _ = writeln!(
        out,
        "<section id=\"members\"><h2>Members ({})</h2>",
        v.members.len()
    );
    let mut t = Chunked::open(out, &MEMBER_TABLE);
    for m in &v.members {
        t.row(out);
        let name = escape(&m.name);
        let status = m.status.as_str();
        let _ = write!(
            out,
            "<tr class=\"member\" data-name=\"{name}\" data-status=\"{status}\"><td>{name}</td><td>{}</td>\
             <td class=\"st-{status}\">{status}</td><td class=\"tags\">",
            escape(&m.addr)
        );
        // One text node per row (not an element per tag): 1,000 members stay cheap to lay out.
        for (i, (k, val)) in m.tags.iter().enumerate() {
            if i > 0 {
                out.push_str(" · ");
            }
            let _ = write!(out, "{}={}", escape(k), escape(val));
        }
        out.push_str("</td></tr>\n");
    }
    t.close(out);
    out.push_str("</section>\n");
}

/// A table's class and header.
struct TableHead {
    class: &'static str,
    header: &'static str,
}

const SERVER_TABLE: TableHead = TableHead {
    class: "servers",
    header:
        "<th>server</th><th>address</th><th>weight</th><th>lbgen</th><th>HAProxy</th><th>check</th>",
};

const MEMBER_TABLE: TableHead = TableHead {
    class: "members",
    header: "<th>name</th><th>address</th><th>status</th><th>tags</th>",
};

/// Rows per chunk of a long table.
const CHUNK_ROWS: usize = 100;

/// A long table written as chunks of [`CHUNK_ROWS`] rows, each its own fixed-layout table in
/// a `content-visibility: auto` box: the browser lays out and paints only the chunks on
/// screen, which keeps 1,000 members within the page's render budget. The header goes on the
/// first chunk; every chunk has the same column widths, so they read as one table.
struct Chunked {
    head: &'static TableHead,
    rows: usize,
}

impl Chunked {
    fn open(out: &mut String, head: &'static TableHead) -> Chunked {
        let _ = writeln!(
            out,
            "<div class=\"chunk\"><table class=\"{}\"><thead><tr>{}</tr></thead><tbody>",
            head.class, head.header
        );
        Chunked { head, rows: 0 }
    }

    /// Call before each row.
    fn row(&mut self, out: &mut String) {
        if self.rows > 0 && self.rows.is_multiple_of(CHUNK_ROWS) {
            let _ = write!(
                out,
                "</tbody></table></div>\n<div class=\"chunk\"><table class=\"{}\"><tbody>\n",
                self.head.class
            );
        }
        self.rows += 1;
    }

    fn close(self, out: &mut String) {
        out.push_str("</tbody></table></div>\n");
    }
}

fn events(out: &mut String, v: &StatusView) {
    let _ = write!(
        out,
        "<section id=\"events\"><h2>Recent events ({})</h2>\n<ol id=\"event-list\">\n",
        v.events.len()
    );
    if v.events.is_empty() {
        out.push_str("<li class=\"none\">No agent event since lbgen started.</li>\n");
    }
    for e in &v.events {
        let _ = writeln!(
            out,
            "<li class=\"event\" data-kind=\"{}\"><time>{}</time> <b>{0}</b> {} → {}</li>",
            e.kind,
            escape(&e.time),
            escape(&e.member),
            e.status
        );
    }
    out.push_str("</ol></section>\n");
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{display:flex;gap:1em;align-items:baseline;padding:.6em 1em;background:#1f3b57;color:#fff}\
h1{font-size:1.2em;margin:0}h2{font-size:1.05em;margin:1.2em 0 .4em}h3{font-size:1em;margin:.8em 0 .3em}\
main{padding:0 1em 2em}table{border-collapse:collapse;width:100%;background:#fff;table-layout:fixed}\
.chunk{content-visibility:auto;contain-intrinsic-size:auto 2400px}\
.members tr:first-child>:nth-child(1){width:18%}.members tr:first-child>:nth-child(2){width:17%}\
.members tr:first-child>:nth-child(3){width:8%}.servers tr:first-child>:nth-child(1),\
.servers tr:first-child>:nth-child(2){width:22%}.servers tr:first-child>:nth-child(3){width:9%}\
.servers tr:first-child>:nth-child(4),.servers tr:first-child>:nth-child(5){width:12%}td{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}\
td.tags{font:12px ui-monospace,monospace;white-space:normal;overflow-wrap:anywhere}\
th,td{text-align:left;padding:2px 8px;border-bottom:1px solid #e4e4e4;vertical-align:top}\
th{background:#eef2f6;font-weight:600}code{font-size:12px;background:#f1f1f1;padding:0 3px;margin-right:2px}\
small{color:#666;font-weight:normal}.conn{font-size:12px;opacity:.8}.err{color:#a00}\
.hs,.res{padding:0 6px;border-radius:3px;font-size:12px}\
.st-alive,.st-ready,.hs-up,.res-applied{background:#d7f2dc}.st-suspect,.st-drain,.hs-drain,.res-unchanged{background:#fff1c7}\
.st-failed,.hs-down,.res-failed{background:#f8d3d3}.st-left,.hs-maint,.hs-unknown,.hs-absent{background:#e6e6e6}\
.hs-live{background:#d7f2dc}.hs-error{background:#f8d3d3}.skipped,.conflict{color:#8a5a00;margin:.2em 0}\
#event-list{font-size:13px;max-height:18em;overflow:auto;background:#fff;margin:0;padding:.4em 2.5em}";

/// With JS: swap in `status.html` on each pushed event or apply (coalesced) and every
/// REFRESH_MS; the page itself is never reloaded. `window.shoalStatus` counts the swaps
/// (the browser test reads it).
const JS: &str = r#"
(function () {
  "use strict";
  var main = document.getElementById("status");
  var conn = document.getElementById("conn");
  var state = { loadedAt: Date.now(), refreshes: 0, pushes: 0 };
  window.shoalStatus = state;
  var busy = false, again = false, timer = null;
  // Returns a promise, so a test or bench can await one refresh (and read lastRefreshMs:
  // fetch + swap + layout of the new fragment).
  function refresh() {
    if (busy) { again = true; return Promise.resolve(); }
    busy = true;
    var t0 = performance.now();
    return fetch("status.html", { cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (html) {
      main.innerHTML = html;
      void main.offsetHeight;
      state.lastRefreshMs = performance.now() - t0;
      state.refreshes++;
      conn.textContent = "live · updated " + new Date().toLocaleTimeString();
    }).catch(function (e) {
      conn.textContent = "not updating: " + e.message;
    }).then(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  state.refresh = refresh;
  function soon() {
    state.pushes++;
    if (timer === null) { timer = setTimeout(function () { timer = null; refresh(); }, 100); }
  }
  if (window.EventSource) {
    var es = new EventSource("events");
    es.addEventListener("member", soon);
    es.addEventListener("apply", soon);
    es.onopen = function () { conn.textContent = "live"; };
  }
  setInterval(refresh, REFRESH_MS);
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::hub::StatusHub;
    use crate::model::MembersDoc;

    fn view(json: &str) -> StatusView {
        let hub = StatusHub::new("file members.json".into(), None);
        hub.snapshot(&MembersDoc::from_json(json).unwrap());
        hub.view_with(Err("no --haproxy-master".into()))
    }

    #[test]
    fn served_and_refused_certificates_are_shown_escaped() {
        let hub = StatusHub::new("file members.json".into(), None);
        hub.tls(crate::http::hub::TlsView {
            dir: "/etc/lbgen/certs".into(),
            served: vec![crate::certs::Served {
                file: "default.pem".into(),
                sni: "default".into(),
            }],
            refused: vec![crate::certs::Refused {
                file: "a.test.pem".into(),
                reason: "haproxy: <b>bad</b>".into(),
            }],
        });
        let html = page(&hub.view_with(Err("no --haproxy-master".into())));
        assert!(
            html.contains("certificates from /etc/lbgen/certs: default.pem (default)"),
            "{html}"
        );
        assert!(
            html.contains("certificate a.test.pem refused: haproxy: &lt;b&gt;bad&lt;/b&gt;"),
            "{html}"
        );
    }

    #[test]
    fn tags_from_the_network_are_escaped() {
        let v = view(
            r#"{"members":[{"name":"web-1","addr":"10.0.0.1:1","status":"alive","tags":{"service":"web","port":"80","x":"<script>alert(1)</script>","q":"a\"b'c&"}}]}"#,
        );
        let html = page(&v);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("x=&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("q=a&quot;b&#39;c&amp;"));
        assert!(
            html.contains("data-server=\"web-1\" data-state=\"ready\" data-haproxy=\"unknown\"")
        );
        assert_eq!(
            html.matches("<script>").count(),
            1,
            "only the page's own script"
        );
    }

    #[test]
    fn a_thousand_members_render_quickly() {
        let members: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"name":"web-{i}","addr":"10.0.{}.{}:7946","status":"alive","tags":{{"service":"web{}","port":"80"}}}}"#,
                    i / 250,
                    i % 250 + 1,
                    i % 10
                )
            })
            .collect();
        let v = view(&format!(r#"{{"members":[{}]}}"#, members.join(",")));
        let t = std::time::Instant::now();
        let html = page(&v);
        let took = t.elapsed();
        assert_eq!(html.matches("class=\"member\"").count(), 1000);
        assert_eq!(html.matches("class=\"server\"").count(), 1000);
        // The page budget is 200 ms in a browser; rendering the HTML is a small part of it.
        assert!(took < std::time::Duration::from_millis(200), "{took:?}");
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_040_000.5), "2026-11-30T12:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
    }
}
