//! The agent's lifecycle in process, through the library's `run`: the stop
//! order (draining → leave → `--drain` → services stopped) on paused time,
//! the API leave answered before the agent ends, and a node that lost its
//! name stopping its services and exiting non-zero.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio::time::Instant;

use shoal::cli::{Cli, CliCommand};
use shoal::lifecycle::{self, Exit, Lifecycle, Request, Step};

/// A run in real time must end well within this.
const BOUND: Duration = Duration::from_secs(20);

/// An agent on loopback ports the kernel picks, from the same flags `shoal
/// agent` takes.
fn lifecycle(node: &str, extra: &[&str]) -> Lifecycle {
    let mut argv = vec![
        "shoal",
        "agent",
        "--node",
        node,
        "--bind",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--profile",
        "local",
    ];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).expect("flags");
    let CliCommand::Agent(args) = cli.command else {
        panic!("not the agent command");
    };
    let (settings, services) = lifecycle::configure(&args, &cli.api, None).expect("configured");
    Lifecycle::new(settings, services)
}

/// Starts `lifecycle`, waits for [`Step::Started`]; the stop requests'
/// sender, the steps, the run's task and the started addresses.
async fn start(
    lifecycle: Lifecycle,
) -> (
    mpsc::Sender<Request>,
    mpsc::UnboundedReceiver<Step>,
    tokio::task::JoinHandle<Exit>,
    (SocketAddr, SocketAddr),
) {
    let (requests, rx) = mpsc::channel(4);
    let (steps_tx, mut steps) = mpsc::unbounded_channel();
    let run = tokio::spawn(lifecycle.report_steps(steps_tx).run(rx));
    match steps.recv().await {
        Some(Step::Started { gossip, api }) => (requests, steps, run, (gossip, api)),
        other => panic!("the agent did not start: {other:?} / {:?}", run.await),
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_gossips_draining_leaves_waits_the_drain_then_stops_the_services() {
    let agent = lifecycle(
        "life-drain",
        &[
            "--drain",
            "1s",
            "--leave-timeout",
            "2s",
            "--",
            "sleep",
            "3600",
        ],
    );
    let (requests, mut steps, run, _) = start(agent).await;
    requests.send(Request::Stop("test")).await.expect("running");
    let mut seen: Vec<(Step, Instant)> = Vec::new();
    while let Some(step) = steps.recv().await {
        if step == Step::StoppingServices {
            // The drain is measured; from here on real processes stop, and
            // their exits come from the reaper thread in real time: paused
            // time would jump straight to the stop timeout's SIGKILL.
            tokio::time::resume();
        }
        let last = matches!(step, Step::Stopped { .. });
        seen.push((step, Instant::now()));
        if last {
            break;
        }
    }
    let exit = run.await.expect("the run ends");
    let order: Vec<&Step> = seen.iter().map(|(s, _)| s).collect();
    assert_eq!(
        order,
        [
            &Step::Draining,
            &Step::Left,
            &Step::Drained,
            &Step::StoppingServices,
            &Step::Stopped { code: 143 },
        ],
        "{exit:?}"
    );
    // `sleep` ended by its SIGTERM (128 + 15), not by the SIGKILL after
    // the stop timeout.
    assert_eq!(exit, Exit::Stopped { code: 143 });
    let at = |wanted: &Step| seen.iter().find(|(s, _)| s == wanted).map(|(_, t)| *t);
    let (draining, stopping) = (
        at(&Step::Draining).expect("draining"),
        at(&Step::StoppingServices).expect("stopping"),
    );
    let drained = stopping - draining;
    // Alone in its cluster, the leave needs no acknowledgement: the time
    // between draining and the services' stop signal is the drain itself.
    assert!(
        drained >= Duration::from_secs(1) && drained < Duration::from_millis(1100),
        "{drained:?} between state=draining and the services' stop signal, --drain 1s"
    );
}

#[tokio::test(start_paused = true)]
async fn services_that_end_by_themselves_end_the_agent_without_a_drain() {
    let agent = lifecycle("life-ends", &["--drain", "30s", "--", "sh", "-c", "exit 7"]);
    let (_requests, mut steps, run, _) = start(agent).await;
    // The service's exit comes in real time.
    tokio::time::resume();
    let exit = tokio::time::timeout(BOUND, run)
        .await
        .expect("bounded")
        .expect("the run ends");
    assert_eq!(exit, Exit::Stopped { code: 7 });
    let mut order = Vec::new();
    while let Ok(step) = steps.try_recv() {
        order.push(step);
    }
    assert_eq!(
        order,
        [
            Step::Left,
            Step::StoppingServices,
            Step::Stopped { code: 7 }
        ]
    );
}

#[tokio::test]
async fn a_leave_through_the_api_is_answered_before_the_agent_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_requests, _steps, run, (_, api)) = start(lifecycle("life-api", &[])).await;
    let mut conn = tokio::net::TcpStream::connect(api).await.expect("API");
    conn.write_all(b"POST /v1/leave HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("request sent");
    // The agent closes the connection after its answer: read to the end.
    let mut answer = String::new();
    tokio::time::timeout(BOUND, conn.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("answer read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#"{"left":true}"#), "{answer}");
    let exit = tokio::time::timeout(BOUND, run)
        .await
        .expect("bounded")
        .expect("the run ends");
    assert_eq!(exit, Exit::Stopped { code: 0 });
}

#[tokio::test]
async fn a_node_that_lost_its_name_stops_its_services_and_exits_non_zero() {
    let agent = lifecycle("life-twin", &["--", "sleep", "3600"]);
    let (_requests, mut steps, run, (gossip, _)) = start(agent).await;
    // A newer node with the same name (a later start: a newer generation)
    // joins it: the older one gives its name up.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let twin =
        common::loopback_agent_config("life-twin", vec![("127.0.0.1".into(), gossip.port())]);
    let (_twin, _twin_loop) = shoal::agent::start(twin).await.expect("twin started");
    let exit = tokio::time::timeout(BOUND, run)
        .await
        .expect("the older twin gave up its name in time")
        .expect("the run ends");
    let Exit::GossipEnded { error } = &exit else {
        panic!("{exit:?}");
    };
    assert!(error.contains("duplicate node name"), "{error}");
    assert_eq!(exit.code(), 1);
    let mut order = Vec::new();
    while let Ok(step) = steps.try_recv() {
        order.push(step);
    }
    // Stopped with its stop signal, in order, not abandoned.
    assert_eq!(order, [Step::StoppingServices, Step::Stopped { code: 143 }]);
}
