//! Every member as templates other than HAProxy's see it ([`Node`]), and the Prometheus
//! scrape endpoints the members advertise in tags ([`ScrapeTarget`]).
//!
//! Pure code, no I/O. Like the pools, only validated values reach a template: names of
//! [`valid_name`]'s alphabet, parsed IP addresses, ports of digits. So a template may put
//! them into JSON, YAML or a shell-free config without escaping (the
//! `templates/prometheus-targets.json.hbs` file_sd template does).

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use shoal_contract::tags;

use crate::model::{valid_name, MembersDoc, Status};

/// One member of the cluster, backend or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// The host part of the member's gossip address.
    pub ip: IpAddr,
    /// `alive`, `suspect`, `failed` or `left`.
    pub status: String,
    /// The `service` tag, when it is a valid pool name.
    pub service: Option<String>,
    /// The `role` tag (`lb` on the load balancers), when it is a valid name.
    pub role: Option<String>,
}

/// One `/metrics` endpoint to scrape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrapeTarget {
    /// `shoal-agent`, `lbgen` or `haproxy`.
    pub job: &'static str,
    /// The member that advertised it.
    pub node: String,
    /// The member's `service` tag, empty when it has none (Prometheus drops empty labels).
    pub service: String,
    /// `ip:port` (IPv6 bracketed): Prometheus's target and `instance` label.
    pub address: String,
}

/// The tag that advertises an endpoint, and the job it is scraped as.
pub const SCRAPE_TAGS: &[(&str, &str)] = &[
    (tags::METRICS_AGENT, "shoal-agent"),
    (tags::METRICS_LBGEN, "lbgen"),
    (tags::METRICS_HAPROXY, "haproxy"),
];

/// Every member with a valid name and address, sorted by name, then by every other field:
/// the same members in any order give the same list (and so the same bytes on every LB), also
/// when a members file lists one name twice. A member failing validation is left out: the pools' own
/// validation already reports it when it matters to HAProxy.
pub fn nodes_of(doc: &MembersDoc) -> Vec<Node> {
    let mut nodes: Vec<Node> = doc
        .members
        .iter()
        .filter(|m| valid_name(&m.name))
        .filter_map(|m| {
            let ip = m.addr.parse::<SocketAddr>().ok()?.ip();
            let name_tag = |k: &str| m.tags.get(k).filter(|v| valid_name(v)).cloned();
            Some(Node {
                name: m.name.clone(),
                ip,
                status: m.status.as_str().to_string(),
                service: name_tag(tags::SERVICE),
                role: name_tag(tags::ROLE),
            })
        })
        .filter(|n| !n.ip.is_unspecified() && !n.ip.is_multicast())
        .collect();
    nodes.sort_by(|a, b| {
        (&a.name, a.ip, &a.status, &a.service, &a.role)
            .cmp(&(&b.name, b.ip, &b.status, &b.service, &b.role))
    });
    nodes
}

/// The endpoints that alive and suspect members advertise (`metrics_agent=PORT`, ...), on
/// their gossip IP; failed and left members are not scraped. Sorted by job, then node.
/// A tag that is not a port is ignored (and does not hide the member's other endpoints).
pub fn scrape_targets(doc: &MembersDoc, nodes: &[Node]) -> Vec<ScrapeTarget> {
    let mut out = Vec::new();
    for m in &doc.members {
        if !matches!(m.status, Status::Alive | Status::Suspect) {
            continue;
        }
        let Some(node) = nodes.iter().find(|n| n.name == m.name) else {
            continue;
        };
        for (tag, job) in SCRAPE_TAGS {
            let Some(port) = m.tags.get(*tag).and_then(|p| port(p)) else {
                continue;
            };
            out.push(ScrapeTarget {
                job,
                node: node.name.clone(),
                service: node.service.clone().unwrap_or_default(),
                address: SocketAddr::new(node.ip, port).to_string(),
            });
        }
    }
    out.sort_by(|a, b| (a.job, &a.node, &a.address).cmp(&(b.job, &b.node, &b.address)));
    out.dedup_by(|a, b| a.job == b.job && a.address == b.address);
    out
}

/// 1-65535, digits only.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: serde_json::Value) -> MembersDoc {
        MembersDoc::from_json(&json.to_string()).unwrap()
    }

    #[test]
    fn alive_members_advertise_their_endpoints_on_their_gossip_ip() {
        let d = doc(serde_json::json!({"members": [
            {"name":"web-2","addr":"10.0.0.3:7946","status":"alive",
             "tags":{"service":"web","port":"3000","metrics_agent":"7373"}},
            {"name":"lb","addr":"10.0.0.1:7946","status":"alive",
             "tags":{"role":"lb","metrics_agent":"7373","metrics_lbgen":"8405","metrics_haproxy":"1936"}},
            {"name":"web-1","addr":"[fd00::2]:7946","status":"suspect",
             "tags":{"service":"web","metrics_agent":"7373"}},
            {"name":"gone","addr":"10.0.0.9:7946","status":"failed","tags":{"metrics_agent":"7373"}},
            {"name":"plain","addr":"10.0.0.8:7946","status":"alive","tags":{}}
        ]}));
        let nodes = nodes_of(&d);
        assert_eq!(
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["gone", "lb", "plain", "web-1", "web-2"]
        );
        let t = scrape_targets(&d, &nodes);
        let got: Vec<(&str, &str, &str, &str)> = t
            .iter()
            .map(|t| {
                (
                    t.job,
                    t.node.as_str(),
                    t.service.as_str(),
                    t.address.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("haproxy", "lb", "", "10.0.0.1:1936"),
                ("lbgen", "lb", "", "10.0.0.1:8405"),
                ("shoal-agent", "lb", "", "10.0.0.1:7373"),
                ("shoal-agent", "web-1", "web", "[fd00::2]:7373"),
                ("shoal-agent", "web-2", "web", "10.0.0.3:7373"),
            ]
        );
    }

    #[test]
    fn a_bad_port_tag_or_name_is_never_a_target() {
        let d = doc(serde_json::json!({"members": [
            {"name":"a","addr":"10.0.0.1:7946","status":"alive",
             "tags":{"metrics_agent":"7373\"}]","metrics_lbgen":"0","metrics_haproxy":"1936"}},
            {"name":"b\"x","addr":"10.0.0.2:7946","status":"alive","tags":{"metrics_agent":"7373"}},
            {"name":"c","addr":"0.0.0.0:7946","status":"alive","tags":{"metrics_agent":"7373"}},
            {"name":"d","addr":"10.0.0.4:7946","status":"alive",
             "tags":{"metrics_agent":"+7373","service":"we b","role":"lb\n"}}
        ]}));
        let nodes = nodes_of(&d);
        let t = scrape_targets(&d, &nodes);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(
            (t[0].job, t[0].address.as_str()),
            ("haproxy", "10.0.0.1:1936")
        );
        let dn = nodes.iter().find(|n| n.name == "d").unwrap();
        assert_eq!((dn.service.as_deref(), dn.role.as_deref()), (None, None));
    }
}
