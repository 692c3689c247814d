//! The packet decoder's fuzz corpus (`fuzz/corpus/packet_decoder`, outside the
//! workspace) replayed through the fuzz target's own oracle on every `cargo
//! test`, not only under cargo-fuzz in CI: a decoder change that panics on, or
//! wrongly accepts, an input the fuzzer once found fails here.

#[path = "../../fuzz/oracles/packet_decoder.rs"]
mod oracle;

#[test]
fn every_packet_decoder_corpus_input_passes_the_oracle() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/packet_decoder");
    let mut inputs = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/packet_decoder") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus input");
        let caught = std::panic::catch_unwind(|| oracle::check(&data));
        assert!(
            caught.is_ok(),
            "corpus input {} fails the oracle",
            path.display()
        );
        inputs += 1;
    }
    assert!(inputs >= 100, "only {inputs} corpus inputs in {dir}");
}
