//! Event handlers in the lab's style (a join script that writes a file per
//! member after a slow step, a separate leave/failed script that deletes it),
//! run by a real agent: the final state must follow the members' final state.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{ip, wait_for, Agent};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn a_member_that_dies_during_its_slow_join_script_is_not_left_behind() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let nodes = dir.path().join("nodes");
    std::fs::create_dir(&nodes).expect("nodes dir");
    let log = dir.path().join("log");
    let (n, l) = (nodes.display(), log.display());
    // The join script's slow step (the lab's reload) comes before it writes
    // the member files; the leave script deletes them.
    let join = format!(
        "member-join=names=$(cut -f1); for m in $names; do echo \"start $m\" >> {l}; done; \
         sleep 4; for m in $names; do echo up > {n}/$m; echo \"joined $m\" >> {l}; done"
    );
    let leave = format!(
        "member-leave,member-failed=for m in $(cut -f1); do rm -f {n}/$m; \
         echo \"removed $m\" >> {l}; done"
    );
    let seed = vec![format!("{}:7946", ip(61, 1))];
    let a = Agent::start_in(
        dir.clone(),
        "ho1",
        &ip(61, 1),
        &seed,
        &["--event-handler", &join, "--event-handler", &leave],
    );
    let mut b = Agent::start("ho2", &ip(61, 2), &seed, &[]);
    // ho2 dies while the join script runs its slow step for it.
    assert!(
        wait_for(Duration::from_secs(20), || read(&log).contains("start ho2")),
        "the join script never started for ho2; log:\n{}\nhandlers:\n{}",
        a.log_text(),
        read(&log)
    );
    b.kill9();
    assert!(
        wait_for(Duration::from_secs(15), || a.status_of("ho2").as_deref()
            == Some("failed")),
        "ho2 never failed at ho1; log:\n{}",
        a.log_text()
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let text = read(&log);
            text.contains("joined ho2") && text.contains("removed ho2")
        }),
        "handlers did not finish; handlers:\n{}\nlog:\n{}",
        read(&log),
        a.log_text()
    );
    let text = read(&log);
    assert!(
        !nodes.join("ho2").exists(),
        "the dead member's file was left behind; handler runs:\n{text}"
    );
    let pos = |needle: &str| text.find(needle).unwrap_or(usize::MAX);
    assert!(pos("joined ho2") < pos("removed ho2"), "{text}");
    assert!(nodes.join("ho1").exists(), "{text}");
}
