//! End-to-end: the lb image serves lbgen's status page, `/status.json` and `/metrics` on
//! 8405 (`LBGEN_HTTP` in its services file), published by compose next to HAProxy's stats.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);

#[test]
fn the_lb_image_publishes_lbgens_status_page_and_metrics() {
    let Some(_serial) = setup() else { return };
    let p = Project::new("status", &[], &[]);
    p.up(&["--scale", "webapp=2"]);
    let status = p.lb_addr(8405);
    let webapps = p.hostnames("webapp");
    assert_eq!(webapps.len(), 2);
    // Both webapps are servers of pool web, UP in HAProxy's own view (its runtime API).
    let doc = wait_for("both webapps UP on /status.json", 60 * S, POLL, || {
        let j = http_get(status, "/status.json", None, 5 * S).ok()?.json()?;
        let up: BTreeSet<String> = j["pools"]
            .as_array()?
            .iter()
            .filter(|p| p["name"] == "web")
            .flat_map(|p| p["servers"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["haproxy"] == "UP")
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        (up == webapps).then_some(j)
    });
    assert_eq!(doc["haproxy"]["state"], "live", "{doc}");
    let alive = doc["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "alive")
        .count();
    assert_eq!(alive, 3, "the LB and two webapps: {doc}");

    let page = http_get(status, "/", None, 5 * S).unwrap();
    assert_eq!(page.status, 200);
    for w in &webapps {
        assert!(
            page.body.contains(&format!("data-server=\"{w}\"")),
            "{w} not on the page"
        );
    }
    let metrics = http_get(status, "/metrics", None, 5 * S).unwrap();
    assert_eq!(metrics.status, 200);
    for line in [
        "lbgen_members{status=\"alive\"} 3",
        "lbgen_servers{state=\"ready\"} 2",
    ] {
        assert!(
            metrics.body.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            metrics.body
        );
    }
}
