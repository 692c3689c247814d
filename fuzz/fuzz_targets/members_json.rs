//! The members document lbgen reads (from the agent, a file or stdin):
//! parsing never panics, and whatever renders stays inside the builtin
//! template's line grammar, with a `server` line only for a member of the
//! document ([`lbgen::grammar::check_members_json`], also replayed over this
//! target's corpus by `cargo test -p lbgen --test fuzz_corpus`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lbgen::grammar::check_members_json(data);
});
