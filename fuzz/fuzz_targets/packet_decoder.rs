//! Every byte string a peer can send: nothing may panic; whatever decodes must
//! re-validate (the oracle is shared with the corpus replay in `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../oracles/packet_decoder.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    oracle::check(data);
});
