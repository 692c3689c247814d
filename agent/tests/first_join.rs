//! The first join round sends to the join targets as the advertise-address detection resolved
//! them moments before (`AgentConfig::first_join`), not to a second answer of the resolver:
//! in a container that is Docker's DNS, slow while dockerd starts the rest of the project.
//! Loopback only; the join name below never resolves (`.invalid`, RFC 6761).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use shoal::agent::{self, AgentConfig, Handle};

const BOUND: Duration = Duration::from_secs(5);

fn config(node: &str, join: Vec<(String, u16)>, first_join: Vec<SocketAddr>) -> AgentConfig {
    AgentConfig {
        first_join,
        // Only the first round is under test: no second one within the test's bounds.
        retry_max: Duration::from_secs(30),
        sync_timeout: Duration::from_secs(30),
        ..common::loopback_agent_config(node, join)
    }
}

/// Whether `node` lists `other` within `within`.
async fn sees(node: &Handle, other: &str, within: Duration) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if node.snapshot().members.iter().any(|m| m.name == other) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A seed agent, then one whose only join target is a name that never resolves, given the
/// seed's address as resolved at start or not: whether each then lists the other.
async fn late_agent_joins(tag: &str, with_first_join: bool, within: Duration) -> (bool, bool) {
    let seed_name = format!("fj-seed-{tag}");
    let late_name = format!("fj-late-{tag}");
    let (seed, _seed_loop) = agent::start(config(&seed_name, Vec::new(), Vec::new()))
        .await
        .expect("seed started");
    let unresolvable = vec![(
        "seed.shoal-test.invalid".to_string(),
        seed.gossip_addr().port(),
    )];
    let first_join = if with_first_join {
        vec![seed.gossip_addr()]
    } else {
        Vec::new()
    };
    let (late, _late_loop) = agent::start(config(&late_name, unresolvable, first_join))
        .await
        .expect("started");
    let late_sees_seed = sees(&late, &seed_name, within).await;
    (late_sees_seed, sees(&seed, &late_name, within).await)
}

#[tokio::test]
async fn the_first_join_round_uses_the_addresses_resolved_at_start() {
    let (late_sees_seed, seed_sees_late) = late_agent_joins("a", true, BOUND).await;
    assert!(
        late_sees_seed,
        "no join through the addresses resolved at start"
    );
    assert!(seed_sees_late);
}

#[tokio::test]
async fn without_them_the_first_join_round_resolves_the_names() {
    // The same agent without `first_join`: its name does not resolve, so it stays alone (this
    // is what makes the test above fail if `first_join` were not used).
    let (late_sees_seed, _) = late_agent_joins("b", false, Duration::from_secs(1)).await;
    assert!(!late_sees_seed);
}
