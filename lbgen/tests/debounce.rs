//! `--wait MIN:MAX` on a members file (no HAProxy): a burst becomes one render of the final
//! state; a change stream that never goes quiet is still applied after MAX; the first change
//! after MIN of quiet is applied at once.

use std::time::{Duration, Instant};

use lbgen::apply::ApplyOutcome;
use lbgen::source::SourceSpec;
use lbgen::watch::{Wait, WatchConfig};

fn doc(n: usize) -> String {
    let ms: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name":"web-{i}","addr":"10.0.0.{}:7946","status":"alive","tags":{{"service":"web","port":"3000"}}}}"#,
                i + 1
            )
        })
        .collect();
    format!(r#"{{"members":[{}]}}"#, ms.join(","))
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_coalesced_max_wait_bounds_the_delay_and_a_change_after_quiet_leads() {
    let dir = tempfile::tempdir().unwrap();
    let members = dir.path().join("members.json");
    let out = dir.path().join("haproxy.cfg");
    write(&members, &doc(1));
    let (rtx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        template: None,
        vars: lbgen::render::Vars::default(),
        out: out.clone(),
        source: SourceSpec::File(members.clone()),
        master: None,
        check: None,
        wait: Wait::parse("500ms:1500ms").unwrap(),
        reload_timeout: Duration::from_secs(5),
        leaving_max: lbgen::watch::LEAVING_MAX,
        resync: None,
        renders: Vec::new(),
        local: None,
        reports: Some(rtx),
        http: None,
    };
    let w = tokio::spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.outcome, ApplyOutcome::Written);

    // A burst of 8 changes, 20 ms apart: one apply, of the last state.
    for n in 2..10 {
        write(&members, &doc(n));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.outcome, ApplyOutcome::Written);
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-8 "));
    let extra = tokio::time::timeout(Duration::from_millis(600), rx.recv()).await;
    assert!(extra.is_err(), "burst applied more than once: {extra:?}");

    // After more than MIN of quiet, changes every 100 ms (never 500 ms of quiet): the first
    // starts a burst and is applied at once (no debounce); the rest after at most MAX (1.5 s).
    let start = Instant::now();
    write(&members, &doc(10));
    let lead = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lead.outcome, ApplyOutcome::Written);
    let waited = lead.done.into_std() - start;
    assert!(
        waited < Duration::from_millis(450),
        "the first change after a quiet spell waited for the debounce: {waited:?}"
    );
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-9 "));
    let start = Instant::now();
    let mut n = 11;
    let r = loop {
        write(&members, &doc(n));
        n += 1;
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "MAX wait not honoured"
        );
    };
    assert_eq!(r.outcome, ApplyOutcome::Written);
    let waited = r.done.into_std() - start;
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "applied after {waited:?}"
    );

    let _ = stop_tx.send(());
    w.await.unwrap().unwrap();
}
