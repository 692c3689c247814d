//! The agent's life as a library function: start everything, wait for a
//! reason to stop, stop in order. `main` is glue around [`run`]: it parses
//! flags ([`configure`]), turns the process's signals into [`Request`]s and
//! maps the [`Exit`] to the exit code; tests call [`run`] (or
//! [`Lifecycle::run`], which also reports each [`Step`]) with their own
//! requests, on paused time.
//!
//! Start: the child reaper, the gossip loop, the HTTP API, the event
//! handlers, then the supervised services and their health check (which
//! gossips tag `state`). Anything that fails before the services start is
//! reported as [`Exit::NotStarted`].
//!
//! Stop, on [`Request::Stop`] (SIGTERM, SIGINT) or `POST /v1/leave`:
//! 1. the health check stops gossiping `state`;
//! 2. `state=draining` is gossiped (when services run), so load balancers
//!    stop routing here;
//! 3. the node leaves the cluster (answered when members acknowledged it,
//!    or `--leave-timeout` passed); an API leave request is answered;
//! 4. the drain: the services keep running until no client connection is
//!    left open on the service port (tag `port`; counted after
//!    `--drain-grace`) or `--drain` (the maximum) ran out, so requests in
//!    flight finish ([`crate::supervisor::drain`]);
//! 5. the services are stopped in reverse dependency order;
//! 6. [`Exit::Stopped`] with the services' code (0 without services).
//!
//! On [`Request::StopWithoutLeave`] (a Serf config's `leave_on_terminate:
//! false`), steps 1–4 are skipped: the gossip loop is stopped and the
//! services are stopped in order.
//!
//! When the services end by themselves, the node leaves (no draining, no
//! drain wait) and exits with their code. When the gossip loop stops by
//! itself (this node lost its name to a newer twin), there is nothing left
//! to drain or leave: the services are stopped in order and the agent exits
//! with [`Exit::GossipEnded`] (code 1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::agent::{self, Handle, LoopEnd};
use crate::api::{self, ApiState, InfoHook, LeaveRequest};
use crate::cli::{AgentArgs, AgentSettings};
use crate::handlers;
use crate::process;
use crate::supervisor::{DrainEnd, DrainSpec, Health, Supervisor, SupervisorSpec};
use crate::tags::Tags;

/// Longest wait for the gossip loop to end after the leave.
const LOOP_END_WAIT: Duration = Duration::from_secs(1);
/// Longest wait for the API to write its answer to `POST /v1/leave`.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// What the outside world asks of a running agent; `main` turns the
/// process's signals into these. Dropping every sender asks for a stop too,
/// as nothing could ask for one any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop gracefully (SIGTERM, SIGINT); the text names the cause in the log.
    Stop(&'static str),
    /// Stop without leaving the cluster (Serf's default on SIGTERM, chosen
    /// with `leave_on_terminate: false`): no draining, no leave notice, the
    /// others see this node fail; the services are stopped in order.
    StopWithoutLeave(&'static str),
    /// Pass a signal on to every supervised service's process group
    /// (SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT).
    Forward(Signal),
}

/// The steps of a run, in order, as [`Lifecycle::report_steps`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Gossip, API, handlers and services are up.
    Started { gossip: SocketAddr, api: SocketAddr },
    /// `state=draining` is gossiped.
    Draining,
    /// The cluster was told this node left.
    Left,
    /// The `--drain` wait is over (or the services ended during it).
    Drained,
    /// The services are being stopped.
    StoppingServices,
    /// Everything stopped.
    Stopped { code: i32 },
}

/// How a run ended; [`Exit::code`] is the process's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Exit {
    /// Stopped as asked, or the services ended by themselves: the services'
    /// code (the main service's, 128+N for a signal), 0 without services.
    Stopped { code: i32 },
    /// Nothing ran: a bad flag or file (2), something that could not start
    /// (1), or the supervisor's code for a service that could not start.
    NotStarted { code: i32, error: String },
    /// The gossip loop stopped by itself (the node lost its name); the
    /// services were stopped. Code 1.
    GossipEnded { error: String },
}

impl Exit {
    pub fn code(&self) -> i32 {
        match self {
            Exit::Stopped { code } | Exit::NotStarted { code, .. } => *code,
            Exit::GossipEnded { .. } => 1,
        }
    }

    /// What to tell the operator, when the run failed.
    pub fn error(&self) -> Option<&str> {
        match self {
            Exit::Stopped { .. } => None,
            Exit::NotStarted { error, .. } | Exit::GossipEnded { error } => Some(error),
        }
    }

    fn not_started(code: i32, error: impl Into<String>) -> Exit {
        Exit::NotStarted {
            code,
            error: error.into(),
        }
    }
}

/// Checks the agent's flags and the services (file and/or `-- CMD`) before
/// anything starts: every error here is [`Exit::NotStarted`].
pub fn configure(
    args: &AgentArgs,
    api: &str,
    api_token: Option<&str>,
) -> Result<(AgentSettings, Option<SupervisorSpec>), Exit> {
    let settings = args
        .to_settings(api, api_token)
        .map_err(|e| Exit::not_started(2, e))?;
    let supervising = !args.command.is_empty() || args.services.is_some();
    if !supervising {
        if args.check.is_some() || args.check_cmd.is_some() {
            return Err(Exit::not_started(
                2,
                "--check needs a supervised command (-- CMD) or --services",
            ));
        }
        return Ok((settings, None));
    }
    let spec = SupervisorSpec::load(args.services.as_deref(), &args.command).and_then(|mut s| {
        s.apply_check_flags(
            args.check.as_deref(),
            args.check_cmd.as_deref(),
            args.check_interval,
        )
        .and_then(|()| s.apply_check_start_interval(args.check_start_interval))
        .map(|()| s)
    });
    match spec {
        Ok(s) => Ok((settings, Some(s))),
        Err(e) => Err(Exit::not_started(e.exit_code(), e.to_string())),
    }
}

/// Runs the agent until a [`Request::Stop`], an API leave, the services'
/// end or the gossip loop's; see the module docs for the order.
pub async fn run(
    settings: AgentSettings,
    services: Option<SupervisorSpec>,
    requests: mpsc::Receiver<Request>,
) -> Exit {
    Lifecycle::new(settings, services).run(requests).await
}

/// A run of the agent, configured, not started yet.
pub struct Lifecycle {
    settings: AgentSettings,
    services: Option<SupervisorSpec>,
    steps: Steps,
}

impl Lifecycle {
    pub fn new(settings: AgentSettings, services: Option<SupervisorSpec>) -> Lifecycle {
        Lifecycle {
            settings,
            services,
            steps: Steps(None),
        }
    }

    /// Reports each [`Step`] as it is done (tests check the order and the
    /// time between steps).
    pub fn report_steps(mut self, to: mpsc::UnboundedSender<Step>) -> Lifecycle {
        self.steps = Steps(Some(to));
        self
    }

    pub async fn run(self, mut requests: mpsc::Receiver<Request>) -> Exit {
        let mut running = match self.start().await {
            Ok(r) => r,
            Err(exit) => return exit,
        };
        let cause = running.wait_for_stop(&mut requests).await;
        running.stop(cause).await
    }

    async fn start(self) -> Result<Running, Exit> {
        let Lifecycle {
            settings,
            services,
            steps,
        } = self;
        process::init_reaper()
            .map_err(|e| Exit::not_started(1, format!("cannot start the child reaper: {e}")))?;
        let mut agent_cfg = settings.agent;
        if services.as_ref().is_some_and(|s| s.check.is_some()) {
            agent_cfg.tags.insert("state".into(), "starting".into());
        }
        let (agent, gossip) = agent::start(agent_cfg)
            .await
            .map_err(|e| Exit::not_started(1, e.to_string()))?;
        let listener = api::bind(settings.api)
            .await
            .map_err(|e| Exit::not_started(1, e.to_string()))?;
        let api_addr = listener.local_addr().unwrap_or(settings.api);
        info!(api = %api_addr, "HTTP API listening");
        handlers::start(&agent, settings.handlers, settings.handler_timeout);
        let snapshot = settings
            .snapshot
            .map(|path| crate::snapshot::Writer::start(agent.clone(), path));

        let started = match services {
            Some(spec) => Some(Supervisor::start(spec).await),
            None => None,
        };
        let services = match started.transpose() {
            Ok(s) => s,
            Err(e) => {
                let _ = agent.leave().await;
                return Err(Exit::not_started(e.exit_code(), e.to_string()));
            }
        };
        let info_hook = services.as_ref().map(|s| {
            let reader = s.status_reader();
            let hook: InfoHook =
                Arc::new(move || serde_json::to_value(reader.status()).unwrap_or_default());
            hook
        });
        let scrape = Arc::new(crate::metrics::Scrape::new(
            &agent,
            services.as_ref().map(|s| s.status_reader()),
        ));
        let (leave_tx, leave_requests) = mpsc::channel(4);
        tokio::spawn(api::serve(
            listener,
            ApiState {
                agent: agent.clone(),
                shutdown: leave_tx,
                info_hook,
                token: settings.api_token,
                scrape,
            },
        ));
        let health = services
            .as_ref()
            .and_then(|s| s.health())
            .map(|health| tokio::spawn(gossip_health(agent.clone(), health)));
        steps.report(Step::Started {
            gossip: agent.gossip_addr(),
            api: api_addr,
        });
        Ok(Running {
            agent,
            gossip,
            snapshot,
            services,
            health,
            leave_requests,
            drain: settings.drain,
            drain_grace: settings.drain_grace,
            steps,
        })
    }
}

/// Where steps go, if anywhere.
struct Steps(Option<mpsc::UnboundedSender<Step>>);

impl Steps {
    fn report(&self, step: Step) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(step);
        }
    }
}

/// Everything a started agent owns.
struct Running {
    agent: Handle,
    gossip: JoinHandle<LoopEnd>,
    /// `--snapshot`: records a graceful leave at the end.
    snapshot: Option<crate::snapshot::Writer>,
    services: Option<Supervisor>,
    /// Gossips the health check's verdict; stopped before `draining`.
    health: Option<JoinHandle<()>>,
    leave_requests: mpsc::Receiver<LeaveRequest>,
    drain: Duration,
    drain_grace: Duration,
    steps: Steps,
}

/// Why a run stops.
enum Cause {
    /// A signal (or every request sender gone).
    Asked,
    /// A signal configured not to leave the cluster.
    AskedWithoutLeave,
    /// `POST /v1/leave`: answered once the leave is done.
    ApiLeave(LeaveRequest),
    /// The main or a critical service ended (or all did); the supervisor
    /// keeps the code for its shutdown.
    ServicesEnded,
    /// The gossip loop ended on its own.
    GossipEnded(String),
}

impl Running {
    /// Serves signals until one of the reasons to stop comes.
    async fn wait_for_stop(&mut self, requests: &mut mpsc::Receiver<Request>) -> Cause {
        loop {
            let services_ended = ended(self.services.as_ref());
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Stop(why)) => {
                        info!("{why}: leaving gracefully");
                        return Cause::Asked;
                    }
                    Some(Request::StopWithoutLeave(why)) => {
                        info!("{why}: stopping without leaving the cluster (Serf config: leave_on_terminate false, or skip_leave_on_interrupt true)");
                        return Cause::AskedWithoutLeave;
                    }
                    Some(Request::Forward(sig)) => forward(self.services.as_ref(), sig),
                    None => {
                        info!("no one can ask for a stop any more: leaving gracefully");
                        return Cause::Asked;
                    }
                },
                Some(request) = self.leave_requests.recv() => {
                    info!("leave requested through the API");
                    return Cause::ApiLeave(request);
                }
                code = services_ended => {
                    info!(code, "supervised services ended");
                    return Cause::ServicesEnded;
                }
                end = &mut self.gossip => return Cause::GossipEnded(loop_end_reason(end)),
            }
        }
    }

    /// The stop sequence of the module docs.
    async fn stop(mut self, cause: Cause) -> Exit {
        // From here on `state` is ours to set: the health check must not
        // turn `draining` back into `ready`.
        if let Some(task) = self.health.take() {
            task.abort();
        }
        let (api_leave, services_ended) = match cause {
            Cause::GossipEnded(reason) => return self.stop_after_the_loop(reason).await,
            Cause::AskedWithoutLeave => return self.stop_without_leave().await,
            Cause::Asked => (None, false),
            Cause::ApiLeave(request) => (Some(request), false),
            Cause::ServicesEnded => (None, true),
        };
        let draining = self.services.is_some() && !services_ended;
        if draining {
            let mut t = Tags::new();
            t.insert("state".into(), "draining".into());
            match self.agent.set_tags(t, Vec::new()).await {
                Ok(_) => self.steps.report(Step::Draining),
                Err(e) => warn!(error = %e, "cannot gossip state=draining"),
            }
        }
        match self.agent.leave().await {
            Ok(()) => self.steps.report(Step::Left),
            Err(e) => warn!(error = %e, "leave did not complete"),
        }
        if let Some(snapshot) = self.snapshot.take() {
            snapshot.record_leave();
        }
        let _ = tokio::time::timeout(LOOP_END_WAIT, &mut self.gossip).await;
        if let Some(LeaveRequest { left, mut answered }) = api_leave {
            let _ = left.send(());
            let _ = tokio::time::timeout(ANSWER_WAIT, answered.recv()).await;
        }
        let Some(mut services) = self.services.take() else {
            self.steps.report(Step::Stopped { code: 0 });
            return Exit::Stopped { code: 0 };
        };
        if draining && !self.drain.is_zero() {
            let spec = DrainSpec {
                max: self.drain,
                grace: self.drain_grace,
                port: service_port(&self.agent),
            };
            info!(max = ?spec.max, grace = ?spec.grace, port = ?spec.port, "draining before stopping services");
            let report = services.drain(spec).await;
            if report.end == DrainEnd::ServicesEnded {
                info!("services ended during the drain");
            }
            self.steps.report(Step::Drained);
        }
        let code = self.stop_services(services).await;
        Exit::Stopped { code }
    }

    /// Stops gossiping without a leave (the others will see this node
    /// fail), then the services in order; the snapshot keeps its members.
    async fn stop_without_leave(mut self) -> Exit {
        if let Some(snapshot) = self.snapshot.take() {
            snapshot.stop();
        }
        self.gossip.abort();
        let Some(services) = self.services.take() else {
            self.steps.report(Step::Stopped { code: 0 });
            return Exit::Stopped { code: 0 };
        };
        let code = self.stop_services(services).await;
        Exit::Stopped { code }
    }

    /// The gossip loop is gone, so there is nothing to drain or leave: stop
    /// the services in order and say why the agent ends.
    async fn stop_after_the_loop(mut self, reason: String) -> Exit {
        error!("{reason}");
        if let Some(services) = self.services.take() {
            info!("stopping the supervised services: this node no longer gossips");
            let _ = self.stop_services(services).await;
        } else {
            self.steps.report(Step::Stopped { code: 1 });
        }
        Exit::GossipEnded {
            error: format!("{reason}; the agent stopped"),
        }
    }

    async fn stop_services(&self, services: Supervisor) -> i32 {
        self.steps.report(Step::StoppingServices);
        let code = services.shutdown().await;
        info!(code, "stopped");
        self.steps.report(Step::Stopped { code });
        code
    }
}

fn forward(services: Option<&Supervisor>, sig: Signal) {
    match services {
        Some(s) => s.forward_signal(sig),
        None => info!(signal = sig.as_str(), "signal ignored: nothing supervised"),
    }
}

/// Resolves when the services end by themselves; never without services.
async fn ended(services: Option<&Supervisor>) -> i32 {
    match services {
        Some(s) => s.wait_exit().await,
        None => std::future::pending().await,
    }
}

fn loop_end_reason(end: Result<LoopEnd, tokio::task::JoinError>) -> String {
    match end {
        Ok(LoopEnd::NameTaken(reason)) => reason,
        Ok(LoopEnd::Left) => "the gossip loop stopped unexpectedly (left the cluster)".into(),
        Ok(LoopEnd::Closed) => "the gossip loop stopped unexpectedly (no commands)".into(),
        Err(e) => format!("the gossip loop stopped unexpectedly: {e}"),
    }
}

/// The port the load balancer sends this node's clients to (tag `port`), as
/// gossiped now: the one whose connections the drain follows.
fn service_port(agent: &Handle) -> Option<u16> {
    agent
        .local()
        .tags
        .get(shoal_contract::tags::PORT)
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
}

/// Gossips the health check's verdict as tag `state`.
async fn gossip_health(agent: Handle, mut health: watch::Receiver<Health>) {
    loop {
        let state = health.borrow_and_update().to_string();
        let mut t = Tags::new();
        t.insert("state".into(), state.clone());
        match agent.set_tags(t, Vec::new()).await {
            Ok(_) => info!(state = %state, "health state gossiped"),
            Err(e) => warn!(error = %e, "cannot gossip health state"),
        }
        if health.changed().await.is_err() {
            return;
        }
    }
}
