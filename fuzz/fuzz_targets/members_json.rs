//! The members document lbgen reads (from the agent, a file or stdin):
//! parsing never panics, and whatever renders never carries a character that
//! could inject HAProxy configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = lbgen::model::MembersDoc::from_json(text) else {
        return;
    };
    let model = lbgen::model::Model::build(&doc);
    let renderer = lbgen::render::Renderer::builtin();
    let vars = lbgen::render::Vars::default();
    if let Ok(cfg) = renderer.render(&model, &vars) {
        for line in cfg.lines() {
            let line = line.trim_start();
            if line.starts_with("server ") {
                assert!(!line.contains('"') && !line.contains('#') && !line.contains('\\'), "{line}");
            }
        }
    }
});
