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

/// The tag a load balancer sets to `off` to stay out of the VIP group (keepalived's notify
/// script writes `master`, `backup` or `fault` into the same tag).
pub const VRRP_TAG: &str = "vrrp";

/// An LB's VRRP priority: 100-199 from an FNV-1a hash of its name. It depends on the name
/// alone, so every LB computes the same one and it never changes when other LBs join or
/// leave: keepalived re-enters BACKUP (dropping the VIP) on a reload that changes its
/// priority, and keeps its state on one that only changes the peers. Equal priorities are
/// broken by keepalived (the higher address wins).
pub fn priority_of(name: &str) -> u8 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    100 + u8::try_from(h % 100).unwrap_or(0)
}

/// One load balancer of the VIP group, as the keepalived template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbPeer {
    pub name: String,
    pub ip: IpAddr,
    /// [`priority_of`] its name.
    pub priority: u8,
    /// This LB itself (`--local`).
    pub is_local: bool,
}

/// This node, for templates that are not the same on every node (keepalived's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Local {
    pub name: String,
    pub ip: IpAddr,
    pub status: String,
    pub role: Option<String>,
    /// Its priority in [`LbPeer`] terms, when it is one of the LBs.
    pub priority: Option<u8>,
    /// It is stopping: its own `state` tag is `draining` (the agent's first step on SIGTERM,
    /// before the leave) or it is no longer alive or suspect. The keepalived template puts
    /// a leaving LB in FAULT at once, so it hands the VIP over and, as a backup, never takes
    /// it during its drain (the others keep sending it adverts, but nothing else would stop
    /// a backup whose peers are gone for good from taking it).
    pub leaving: bool,
}

/// The VIP group: every `role=lb` member without `vrrp=off`, whatever its status, sorted by
/// name, until the agent reaps it. A failed or left LB stays a peer: an advert to a dead
/// address is harmless, while a restarted LB (usually back on the same address) hears the
/// master from its first second instead of only after the master's lbgen has seen the join
/// and reloaded keepalived (until then it heard nothing, took the VIP after 3 adverts: two
/// masters, and the higher priority kept it, so the VIP moved). Nor does a failure or a
/// leave change keepalived's file (no reload restarting the survivor's 3-advert timer).
pub fn lb_peers(doc: &MembersDoc, nodes: &[Node], local: Option<&str>) -> Vec<LbPeer> {
    let mut out: Vec<LbPeer> = Vec::new();
    for n in nodes {
        let is_local = local == Some(n.name.as_str());
        if n.role.as_deref() != Some("lb") {
            continue;
        }
        let opted_out = doc
            .members
            .iter()
            .any(|m| m.name == n.name && m.tags.get(VRRP_TAG).map(String::as_str) == Some("off"));
        if !opted_out && !out.iter().any(|p| p.name == n.name) {
            out.push(LbPeer {
                name: n.name.clone(),
                ip: n.ip,
                priority: priority_of(&n.name),
                is_local,
            });
        }
    }
    out
}

/// `local`'s own entry, when it is a member.
pub fn local_of(doc: &MembersDoc, nodes: &[Node], lbs: &[LbPeer], local: &str) -> Option<Local> {
    let n = nodes.iter().find(|n| n.name == local)?;
    let draining = doc
        .members
        .iter()
        .any(|m| m.name == local && m.tags.get("state").map(String::as_str) == Some("draining"));
    Some(Local {
        leaving: draining || !matches!(n.status.as_str(), "alive" | "suspect"),
        name: n.name.clone(),
        ip: n.ip,
        status: n.status.clone(),
        role: n.role.clone(),
        priority: lbs.iter().find(|p| p.is_local).map(|p| p.priority),
    })
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

    fn lb(name: &str, ip: &str, status: &str, extra: &str) -> serde_json::Value {
        let mut tags = serde_json::json!({"role": "lb"});
        if let Some((k, v)) = extra.split_once('=') {
            tags[k] = v.into();
        }
        serde_json::json!({"name": name, "addr": format!("{ip}:7946"), "status": status, "tags": tags})
    }

    #[test]
    fn lb_peers_are_all_lbs_but_the_opted_out_by_name_with_priorities_from_their_names() {
        let d = doc(serde_json::json!({"members": [
            lb("lb-c", "10.0.0.3", "alive", ""),
            lb("lb-a", "10.0.0.1", "suspect", "vrrp=master"),
            lb("lb-b", "10.0.0.2", "failed", ""),
            lb("lb-d", "10.0.0.4", "alive", "vrrp=off"),
            {"name": "web-1", "addr": "10.0.0.9:7946", "status": "alive", "tags": {"service": "web", "port": "80"}},
        ]}));
        let nodes = nodes_of(&d);
        let peers = lb_peers(&d, &nodes, Some("lb-c"));
        let got: Vec<_> = peers
            .iter()
            .map(|p| (p.name.as_str(), p.priority, p.is_local))
            .collect();
        let (pa, pb, pc) = (
            priority_of("lb-a"),
            priority_of("lb-b"),
            priority_of("lb-c"),
        );
        assert_eq!(
            got,
            vec![("lb-a", pa, false), ("lb-b", pb, false), ("lb-c", pc, true)]
        );
        let local = local_of(&d, &nodes, &peers, "lb-c").unwrap();
        assert_eq!(local.priority, Some(pc));
        assert_eq!(local.ip.to_string(), "10.0.0.3");
        assert!(!local.leaving);
    }

    #[test]
    fn a_draining_or_left_local_lb_is_leaving() {
        let d = doc(serde_json::json!({"members": [
            lb("lb-a", "10.0.0.1", "alive", "state=draining"),
            lb("lb-b", "10.0.0.2", "left", ""),
            lb("lb-c", "10.0.0.3", "alive", "state=ready"),
        ]}));
        let nodes = nodes_of(&d);
        let leaving = |name: &str| {
            let peers = lb_peers(&d, &nodes, Some(name));
            local_of(&d, &nodes, &peers, name).map(|l| l.leaving)
        };
        assert_eq!(leaving("lb-a"), Some(true));
        assert_eq!(leaving("lb-b"), Some(true));
        assert_eq!(leaving("lb-c"), Some(false));
    }

    #[test]
    fn a_left_lb_stays_in_every_group_so_its_restart_hears_the_master_at_once() {
        let d = doc(serde_json::json!({"members": [
            lb("lb-a", "10.0.0.1", "left", ""),
            lb("lb-b", "10.0.0.2", "alive", ""),
        ]}));
        let nodes = nodes_of(&d);
        let mine: Vec<_> = lb_peers(&d, &nodes, Some("lb-a"))
            .into_iter()
            .map(|p| p.name)
            .collect();
        let theirs: Vec<_> = lb_peers(&d, &nodes, Some("lb-b"))
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(mine, vec!["lb-a", "lb-b"]);
        assert_eq!(theirs, vec!["lb-a", "lb-b"]);
    }

    #[test]
    fn a_priority_depends_on_the_name_alone_and_stays_in_100_to_199() {
        let solo = doc(serde_json::json!({"members": [lb("lb-b", "10.0.0.2", "alive", "")]}));
        let pair = doc(serde_json::json!({"members": [
            lb("lb-a", "10.0.0.1", "alive", ""),
            lb("lb-b", "10.0.0.2", "alive", ""),
        ]}));
        let of = |d: &MembersDoc| {
            lb_peers(d, &nodes_of(d), Some("lb-b"))
                .into_iter()
                .find(|p| p.name == "lb-b")
                .map(|p| p.priority)
        };
        assert_eq!(
            of(&solo),
            of(&pair),
            "another LB joining changed lb-b's priority"
        );
        let all: Vec<u8> = (0..500).map(|i| priority_of(&format!("lb-{i}"))).collect();
        assert!(all.iter().all(|p| (100..=199).contains(p)));
        assert!(
            all.iter().collect::<std::collections::BTreeSet<_>>().len() > 50,
            "hardly spread"
        );
    }

    #[test]
    fn a_vrrp_state_change_does_not_change_the_group() {
        let before =
            doc(serde_json::json!({"members": [lb("lb-a", "10.0.0.1", "alive", "vrrp=backup")]}));
        let after =
            doc(serde_json::json!({"members": [lb("lb-a", "10.0.0.1", "alive", "vrrp=master")]}));
        assert_eq!(
            lb_peers(&before, &nodes_of(&before), None),
            lb_peers(&after, &nodes_of(&after), None)
        );
    }

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
