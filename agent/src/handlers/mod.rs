//! Serf-compatible event handlers: `--event-handler [FILTER=]CMD`.
//!
//! One dispatcher task per agent reads the event log, coalesces it
//! ([`coalesce`]: quiet period + max window, latest state per member) and
//! hands runs out per [`schedule`]: one run at a time per handler, events
//! about one member in order across handlers, everything else in parallel.
//! Runs are tasks of their own, so a slow handler never blocks gossip, nor
//! other handlers except for later events about the members it is running.
//! Scripts get Serf's environment (`SERF_EVENT`, `SERF_SELF_NAME`,
//! `SERF_SELF_ROLE`, `SERF_TAG_*`, and the same with `SHOAL_`) and stdin lines
//! `name<TAB>ip<TAB>role<TAB>k=v,k=v`. User events and queries take their
//! own way ([`user`]): Serf's variables, the payload on stdin, a query's
//! answer from its handler's stdout. Handler output goes to the log.

pub mod coalesce;
pub mod filter;
pub mod invoke;
pub mod schedule;
pub mod user;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tracing::warn;

use crate::agent::Handle;
use coalesce::Coalescer;
pub use filter::HandlerSpec;
use invoke::run_once;
pub use invoke::{environment, stdin_line};
use schedule::{Keyed, Schedule};
use shoal_contract::Event;

/// Members queued per handler before the oldest is dropped (and logged).
pub const MAX_PENDING: usize = 4096;
/// Coalescing: events are passed on once none came for this long...
pub const COALESCE_QUIET: Duration = Duration::from_millis(100);
/// ... or at the latest this long after the first one held.
pub const COALESCE_MAX: Duration = Duration::from_secs(1);

impl Keyed for Arc<Event> {
    fn member(&self) -> &str {
        &self.member.name
    }
    fn index(&self) -> u64 {
        self.index
    }
    fn kind(&self) -> &str {
        self.kind.as_str()
    }
}

/// Starts the dispatcher, fed from the agent's event log.
pub fn start(agent: &Handle, specs: Vec<HandlerSpec>, timeout: Duration) {
    if specs.is_empty() {
        return;
    }
    user::start(agent, &specs, timeout);
    // Include the events already logged (our own join) so handlers see them.
    let events = agent.subscribe_events(0);
    let (backlog, rx) = (events.backlog, events.live);
    let agent = agent.clone();
    tokio::spawn(dispatch(specs, agent, backlog, rx, timeout));
}

/// Reads events, coalesces them and starts the runs the schedule allows.
/// Never waits for a run: runs are tasks reported back through `runs`.
async fn dispatch(
    specs: Vec<HandlerSpec>,
    agent: Handle,
    backlog: Vec<Arc<Event>>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    timeout: Duration,
) {
    let mut schedule: Schedule<Arc<Event>> = Schedule::new(&specs, MAX_PENDING);
    let specs: Vec<Arc<HandlerSpec>> = specs.into_iter().map(Arc::new).collect();
    let mut held = Coalescer::new(COALESCE_QUIET, COALESCE_MAX).leading_edge();
    let mut last = 0;
    for e in backlog {
        last = e.index;
        held.push(&e.member.name.clone(), e, Instant::now());
    }
    let mut runs: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut open = true;
    loop {
        if held.len() >= MAX_PENDING {
            offer_all(&mut schedule, held.flush());
        }
        for (h, batch) in schedule.next_runs() {
            let spec = specs[h].clone();
            let local = agent.local();
            let of = agent.clone();
            let task = runs.spawn(async move {
                run_once(h, &spec, batch, &local, timeout, &of.stats().metrics).await
            });
            running.insert(task.id(), h);
        }
        let deadline = held.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rx.recv(), if open => match r {
                Ok(e) => {
                    if e.index > last {
                        last = e.index;
                        held.push(&e.member.name.clone(), e, Instant::now());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    warn!(skipped = k, "event handlers fell behind the event log; events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => open = false,
            },
            _ = sleep_until_some(deadline), if deadline.is_some() => {
                offer_all(&mut schedule, held.flush_due(Instant::now()));
            }
            Some(done) = runs.join_next_with_id(), if !runs.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => {
                        warn!(error = %e, "an event handler run ended abnormally");
                        e.id()
                    }
                };
                if let Some(h) = running.remove(&id) {
                    schedule.finished(h);
                }
            }
            else => return,
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn offer_all(schedule: &mut Schedule<Arc<Event>>, events: Vec<Arc<Event>>) {
    for e in events {
        for h in schedule.offer(e) {
            warn!(
                handler = h,
                max = MAX_PENDING,
                "event handler queue full; oldest member event dropped"
            );
        }
    }
}
