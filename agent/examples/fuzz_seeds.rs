//! Writes valid packets and frames as the seed corpus of the packet-decoder
//! fuzz target: `cargo run -p shoal --example fuzz_seeds -- fuzz/corpus/packet_decoder`.

use foca::{Codec, Header, Member, Message};
use shoal::identity::NodeId;
use shoal::tags::Tags;
use shoal::wire::{self, KeyOp, KeyRequest, ShoalCodec, SyncEntry, SyncMsg, SyncState, TcpMsg};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/packet_decoder".into());
    std::fs::create_dir_all(&dir)?;
    let mut tags = Tags::new();
    tags.insert("service".into(), "web".into());
    tags.insert("port".into(), "3000".into());
    let now = shoal::identity::now_millis();
    let a = NodeId::new("web-1".into(), "10.0.0.5:7946".parse().unwrap(), tags, now);
    let b = NodeId::new(
        "lb".into(),
        "10.0.0.2:7946".parse().unwrap(),
        Tags::new(),
        now,
    );
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("leave", wire::encode_leave(&a)),
        ("leave_ack", wire::encode_leave_ack("lb", 42)),
        ("suspect", wire::encode_suspect("web-1", 42, 3)),
    ];
    for (name, message) in [
        ("ping", Message::Ping(1)),
        ("announce", Message::Announce),
        ("gossip", Message::Gossip),
        (
            "ping_req",
            Message::PingReq {
                target: b.clone(),
                probe_number: 3,
            },
        ),
    ] {
        let mut buf = bytes::BytesMut::new();
        let header = Header {
            src: a.clone(),
            src_incarnation: 1,
            dst: b.clone(),
            message,
        };
        ShoalCodec
            .encode_header(&header, &mut buf)
            .expect("encode header");
        if name == "gossip" {
            buf.extend_from_slice(&1u16.to_be_bytes());
            ShoalCodec
                .encode_member(&Member::alive(b.clone()), &mut buf)
                .expect("member");
        }
        seeds.push((name, wire::encode_foca(&buf)));
    }
    let sync = TcpMsg::Sync(SyncMsg {
        from: a.clone(),
        entries: vec![SyncEntry {
            id: b,
            incarnation: 2,
            state: SyncState::Left,
        }],
    });
    let frame = wire::encode_frame(&sync, None).expect("frame");
    seeds.push(("frame_body", frame[wire::FRAME_HEADER..].to_vec()));
    let keyop = TcpMsg::KeyOp(KeyRequest::new(
        KeyOp::Install(shoal::keyring::generate()),
        shoal::identity::now_millis(),
    ));
    let frame = wire::encode_frame(&keyop, None).expect("frame");
    seeds.push(("frame_keyop", frame[wire::FRAME_HEADER..].to_vec()));
    for (name, bytes) in seeds {
        std::fs::write(format!("{dir}/{name}"), bytes)?;
    }
    Ok(())
}
