//! The members-JSON fuzz corpus (`fuzz/corpus/members_json`, outside the
//! workspace) and the golden inputs replayed through the fuzz target's oracle
//! ([`lbgen::grammar::check_members_json`]) on every `cargo test`, not only
//! under cargo-fuzz in CI.

#[test]
fn every_members_json_corpus_input_passes_the_oracle() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/members_json");
    let mut inputs = 0;
    for entry in std::fs::read_dir(dir).expect("fuzz/corpus/members_json") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus input");
        let caught = std::panic::catch_unwind(|| lbgen::grammar::check_members_json(&data));
        assert!(
            caught.is_ok(),
            "corpus input {} fails the oracle",
            path.display()
        );
        inputs += 1;
    }
    assert!(inputs >= 100, "only {inputs} corpus inputs in {dir}");
}

#[test]
fn the_golden_inputs_pass_the_oracle() {
    for name in [
        "empty",
        "one_pool",
        "several_pools",
        "injection",
        "ha_layout",
    ] {
        let path = format!("{}/tests/golden/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let data = std::fs::read(&path).expect("golden input");
        lbgen::grammar::check_members_json(&data);
    }
}
