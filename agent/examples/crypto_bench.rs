//! CPU cost of gossip encryption: packets per second one core handles on the
//! receive path (open + decode + SWIM processing + sealing the replies), with
//! and without a key. Real packets: two cores are joined on an in-memory
//! network and the packets one sends the other are captured and replayed.
//!
//! `cargo run --release -p shoal --example crypto_bench`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal::core::{Core, CoreConfig, Now, Output};
use shoal::identity::NodeId;
use shoal::keyring::{generate, Key, Keyring};
use shoal::profile::Profile;
use shoal::tags::Tags;
use shoal::wire;
use shoal_core::testing::Net;

fn id(i: u8) -> NodeId {
    let mut tags = Tags::new();
    tags.insert("service".into(), "web".into());
    tags.insert("port".into(), "3000".into());
    NodeId {
        name: format!("node-{i}"),
        addr: format!("10.0.0.{i}:7946").parse().unwrap(),
        generation: 1,
        tags,
    }
}

fn config() -> CoreConfig {
    CoreConfig {
        timing: Profile::Lan.timing(),
        has_join_targets: false,
        retry_max: Duration::from_secs(5),
        reap_after: Duration::from_secs(3600),
        leave_timeout: Duration::from_secs(1),
        replay: false,
    }
}

/// Node `i`, seeded with `i`, at wall clock 0.
fn core(i: u8, t0: Instant) -> Core {
    let now = Now {
        mono: t0,
        wall_ms: 0,
    };
    Core::new(id(i), config(), StdRng::seed_from_u64(i.into()), now)
}

/// Runs a small cluster for a while (20 virtual seconds on the shared test
/// network) and returns the packets sent to node 1.
fn capture() -> (Vec<Vec<u8>>, SocketAddr) {
    let mut net = Net::of((1..=6).map(id).collect(), config(), 1, 0);
    net.tap = Some(0);
    net.join_all_through_first();
    while net.now_ms < 20_000 {
        net.step();
    }
    (net.tapped, "10.0.0.2:7946".parse().unwrap())
}

fn run(packets: &[Vec<u8>], from: SocketAddr, ring: Option<&Keyring>) -> (f64, usize) {
    let t0 = Instant::now();
    let mut receiver = core(1, t0);
    let wire_packets: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| match ring {
            Some(r) => wire::seal_packet(r, p),
            None => p.clone(),
        })
        .collect();
    let bytes: usize = wire_packets.iter().map(Vec::len).sum::<usize>() / wire_packets.len();
    let rounds = 40;
    let start = Instant::now();
    let mut n = 0u64;
    for round in 0..rounds {
        let now = Now {
            mono: t0 + Duration::from_millis(round),
            wall_ms: round,
        };
        for p in &wire_packets {
            let plain = match wire::open_packet(ring, p) {
                Ok(p) => p.into_owned(),
                Err(_) => continue,
            };
            let _ = receiver.on_packet(&plain, from, now);
            for out in receiver.take_outputs() {
                if let (Output::Send { packet, .. }, Some(r)) = (&out, ring) {
                    black_box(wire::seal_packet(r, packet));
                }
                black_box(out);
            }
            n += 1;
        }
    }
    (n as f64 / start.elapsed().as_secs_f64(), bytes)
}

fn raw(ring: &Keyring, size: usize) -> f64 {
    let msg = vec![7u8; size];
    let start = Instant::now();
    let n = 200_000;
    for _ in 0..n {
        let sealed = ring.seal(b"hdr", &msg);
        black_box(ring.open(b"hdr", &sealed[3..]));
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn main() {
    let (packets, from) = capture();
    assert!(!packets.is_empty(), "no gossip captured");
    let ring128 = Keyring::new(Key::parse("AAAAAAAAAAAAAAAAAAAAAA==").unwrap());
    let ring256 = Keyring::new(Key::parse(&generate()).unwrap());
    let (clear, size) = run(&packets, from, None);
    let (aes128, _) = run(&packets, from, Some(&ring128));
    let (aes256, size_enc) = run(&packets, from, Some(&ring256));
    println!("receive path, one core: {} real gossip packets replayed (avg {size} B clear, {size_enc} B sealed)", packets.len());
    println!("| key | packets/s per core | relative |");
    println!("|---|---|---|");
    println!("| none | {clear:.0} | 1.00 |");
    println!("| AES-128-GCM | {aes128:.0} | {:.2} |", aes128 / clear);
    println!("| AES-256-GCM | {aes256:.0} | {:.2} |", aes256 / clear);
    println!();
    println!(
        "seal + open alone, AES-256-GCM: {:.0}/s at 300 B, {:.0}/s at 1400 B",
        raw(&ring256, 300),
        raw(&ring256, 1400)
    );
}
