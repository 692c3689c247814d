//! User events and queries across simulated cores ([`crate::testing::Net`]):
//! delivery, de-duplication, query completion, and the measurements of
//! foca's custom broadcast queue quoted in `docs/architecture.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::testing::Net;
use crate::userev::{Payload, QueryNews, QueryRun, QuerySpec, ReplyKind, MAX_EVENT_PAYLOAD};

/// Steps until `done` or `limit_ms` of virtual time; the time it took.
fn run_until(net: &mut Net, limit_ms: u64, done: impl Fn(&Net) -> bool) -> Option<u64> {
    let t0 = net.now_ms;
    while !done(net) {
        if net.now_ms - t0 > limit_ms {
            return None;
        }
        net.step();
    }
    Some(net.now_ms - t0)
}

#[test]
fn a_user_event_reaches_every_member_exactly_once() {
    let mut net = Net::joined(20);
    let now = net.now();
    let ltime = net.cores[3]
        .user_event("deploy", b"v42".to_vec(), true, now)
        .unwrap();
    let took = run_until(&mut net, 3_000, |n| {
        n.user_events.iter().all(|e| !e.is_empty())
    })
    .expect("not every member got the event within 3 s");
    // Long after: still once each (gossip repeats it; de-duplication holds).
    for _ in 0..300 {
        net.step();
    }
    for (i, got) in net.user_events.iter().enumerate() {
        assert_eq!(got.len(), 1, "n{i} got {got:?}");
        let e = &got[0].1;
        assert_eq!(
            (e.name.as_str(), e.ltime, e.origin.as_str()),
            ("deploy", ltime, "n3")
        );
        assert_eq!(e.payload, Payload::Inline(b"v42".to_vec()));
    }
    eprintln!("one event, 20 members: everyone after {took} ms");
}

#[test]
fn a_large_event_payload_is_announced_for_fetching_and_an_oversized_one_refused() {
    let mut net = Net::joined(3);
    let now = net.now();
    let big = vec![7u8; 4000];
    let ltime = net.cores[0]
        .user_event("config", big.clone(), false, now)
        .unwrap();
    run_until(&mut net, 2_000, |n| {
        n.user_events.iter().all(|e| !e.is_empty())
    })
    .unwrap();
    let e = &net.user_events[2][0].1;
    let from = net.cores[0].local().addr;
    assert_eq!(e.payload, Payload::Fetch { len: 4000, from });
    assert_eq!(net.cores[0].kept_payload(ltime, "config"), Some(big));
    let err = net.cores[0]
        .user_event("config", vec![0; MAX_EVENT_PAYLOAD + 1], false, now)
        .unwrap_err();
    assert!(
        err.to_string().contains("exceeds the limit of 8192"),
        "{err}"
    );
}

/// Sends a query from core 0 and follows it until complete or timed out:
/// (time taken, responses, acks, complete).
fn follow_query(
    net: &mut Net,
    nodes: Vec<String>,
    ack: bool,
    timeout: Duration,
) -> (u64, Vec<(String, Vec<u8>)>, usize, bool) {
    let now = net.now();
    let spec = QuerySpec {
        name: "uptime".into(),
        payload: b"?".to_vec(),
        nodes,
        tags: vec![],
        ack,
        timeout,
    };
    let (q, expected) = net.cores[0].query(spec, now).unwrap();
    let mut run = QueryRun::new(&q, expected, now.mono);
    let t0 = net.now_ms;
    let mut responses = Vec::new();
    let mut acks = 0;
    loop {
        for (_, r) in std::mem::take(&mut net.replies[0]) {
            match run.on_reply(r) {
                Some(QueryNews::Response { from, payload }) => responses.push((from, payload)),
                Some(QueryNews::Ack { .. }) => acks += 1,
                None => {}
            }
        }
        if run.complete() || run.timed_out(net.now().mono) {
            break;
        }
        net.step();
    }
    (net.now_ms - t0, responses, acks, run.complete())
}

#[test]
fn a_query_completes_as_soon_as_every_member_answered() {
    let mut net = Net::joined(10);
    net.answer = Some(|i, q| ReplyKind::Response(format!("n{i}:{}", q.name).into_bytes()));
    let (took, responses, acks, complete) =
        follow_query(&mut net, vec![], true, Duration::from_secs(10));
    assert!(complete);
    assert!(took < 2_000, "took {took} ms of a 10 s timeout");
    let from: BTreeSet<_> = responses.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(from.len(), 10, "{responses:?}");
    assert!(responses.contains(&("n4".into(), b"n4:uptime".to_vec())));
    assert!(
        acks <= 10,
        "one ack per member at most (a response that comes first counts as one)"
    );
    eprintln!("query to 10 members: complete after {took} ms");
}

#[test]
fn a_query_with_a_dead_member_times_out_with_the_others_answers() {
    let mut net = Net::joined(5);
    net.answer = Some(|_, _| ReplyKind::Response(b"ok".to_vec()));
    net.dead.push(4);
    let (took, responses, _, complete) =
        follow_query(&mut net, vec![], true, Duration::from_millis(800));
    assert!(!complete);
    assert!((800..1_000).contains(&took), "took {took} ms");
    assert_eq!(responses.len(), 4);
}

#[test]
fn a_query_addresses_only_its_nodes_and_no_ack_means_no_acks() {
    let mut net = Net::joined(6);
    net.answer = Some(|_, _| ReplyKind::NoResponse);
    let (_, responses, acks, complete) = follow_query(
        &mut net,
        vec!["n2".into(), "n5".into()],
        false,
        Duration::from_secs(5),
    );
    assert!(complete, "\"no response\" answers complete it too");
    assert!(responses.is_empty());
    assert_eq!(acks, 0);
    for _ in 0..100 {
        net.step();
    }
    let asked: Vec<usize> = (0..6).filter(|&i| !net.queries[i].is_empty()).collect();
    assert_eq!(asked, vec![2, 5]);
}

#[test]
fn a_response_larger_than_a_packet_goes_over_tcp() {
    let mut net = Net::joined(3);
    net.answer = Some(|_, _| ReplyKind::Response(vec![b'x'; 5000]));
    let now = net.now();
    net.cores[0]
        .query(
            QuerySpec {
                name: "big".into(),
                payload: vec![],
                nodes: vec!["n1".into()],
                tags: vec![],
                ack: true,
                timeout: Duration::from_secs(2),
            },
            now,
        )
        .unwrap();
    // The simulated network hands a ReplyTcp straight to its receiver; the
    // point is that the core asks for TCP rather than an oversized packet.
    run_until(&mut net, 2_000, |n| {
        n.replies[0]
            .iter()
            .any(|(_, r)| matches!(&r.kind, ReplyKind::Response(p) if p.len() == 5000))
    })
    .expect("the large response never arrived");
}

/// The measurements quoted in docs/architecture.md: a burst of events from
/// many origins, and a burst under one name (queue invalidation).
#[test]
fn foca_broadcast_queue_under_a_burst() {
    let n = 100;
    let mut net = Net::joined(n);
    for _ in 0..300 {
        net.step();
    }
    let burst = 50;
    let now = net.now();
    for k in 0..burst {
        let payload = vec![b'p'; 100];
        net.cores[k % n]
            .user_event(&format!("e{k}"), payload, false, now)
            .unwrap();
    }
    let took = run_until(&mut net, 20_000, |net| {
        net.user_events.iter().all(|e| e.len() >= burst)
    })
    .expect("a burst of 50 events did not reach 100 members in 20 s");
    let backlog_max = net
        .cores
        .iter()
        .map(|c| c.broadcast_backlog())
        .max()
        .unwrap_or(0);
    eprintln!(
        "burst of {burst} events (100 B) from {burst} origins, {n} members: all delivered \
         after {took} ms ({} gossip rounds of 100 ms); largest queue left {backlog_max}",
        took.div_ceil(100)
    );
    for (i, got) in net.user_events.iter().enumerate() {
        assert_eq!(got.len(), burst, "n{i}: duplicates or losses");
    }
    // One origin, one name, coalescing: a newer one replaces the queued one.
    let now = net.now();
    for k in 0..100 {
        net.cores[0]
            .user_event("same", format!("{k}").into_bytes(), true, now)
            .unwrap();
    }
    assert_eq!(
        net.cores[0].broadcast_backlog(),
        1,
        "the queue keeps the newest only"
    );
    run_until(&mut net, 5_000, |net| {
        net.user_events.iter().all(|e| {
            e.iter()
                .any(|(_, e)| e.name == "same" && e.payload == Payload::Inline(b"99".to_vec()))
        })
    })
    .expect("the newest coalescing event did not reach everyone");
}

#[test]
fn an_event_the_gossip_missed_arrives_with_the_next_clock_exchange() {
    let mut net = Net::joined(3);
    // n2 hears nothing while the event is gossiped, and until the gossip
    // stopped repeating it.
    net.dead.push(2);
    let now = net.now();
    net.cores[0]
        .user_event("missed", b"x".to_vec(), false, now)
        .unwrap();
    for _ in 0..200 {
        net.step();
    }
    net.dead.clear();
    for _ in 0..50 {
        net.step();
    }
    assert!(
        net.user_events[2].is_empty(),
        "the test must make n2 miss it"
    );
    // What follows a push-pull: clocks and recent events, both ways.
    let now = net.now();
    let theirs = net.cores[0].user_sync();
    assert_eq!(theirs.event, 1);
    net.cores[2].peer_sync(theirs, now);
    net.step();
    let got: Vec<&str> = net.user_events[2]
        .iter()
        .map(|(_, e)| e.name.as_str())
        .collect();
    assert_eq!(got, ["missed"]);
    // Again: a duplicate now, nothing new.
    let theirs = net.cores[1].user_sync();
    net.cores[2].peer_sync(theirs, now);
    net.step();
    assert_eq!(net.user_events[2].len(), 1);
}
