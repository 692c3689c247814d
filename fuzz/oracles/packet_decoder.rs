//! The packet decoder's oracle, shared by the fuzz target and the corpus
//! replay in `cargo test -p shoal --test fuzz_corpus`: every byte string a peer
//! can send (UDP packets: envelope, leave notices, foca messages through our
//! validating codec; push-pull frame bodies) decodes without a panic, and
//! whatever decodes re-validates.

use foca::Codec;
use shoal_core::wire::{self, Packet, ShoalCodec};

pub fn check(data: &[u8]) {
    if let Ok(Packet::Foca(body)) = wire::decode_packet(data) {
        let mut buf = body;
        if let Ok(header) = ShoalCodec.decode_header(&mut buf) {
            assert!(header.src.validate().is_ok());
            while !buf.is_empty() {
                match ShoalCodec.decode_member(&mut buf) {
                    Ok(m) => assert!(m.id().validate().is_ok()),
                    Err(_) => break,
                }
            }
        }
    }
    if let Ok(wire::TcpMsg::Sync(msg)) = wire::decode_frame_body(data, None) {
        assert!(msg.entries.len() <= wire::MAX_SYNC_ENTRIES);
    }
    // The encrypted paths: a fixed key, so the fuzzer can also reach the
    // "authenticates but is garbage inside" branch via the seeds.
    let ring = shoal_core::keyring::Keyring::new(
        shoal_core::keyring::Key::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .expect("key"),
    );
    if let Ok(plain) = wire::open_packet(Some(&ring), data) {
        let _ = wire::decode_packet(&plain);
    }
    let _ = wire::decode_frame_body(data, Some(&ring));
}
