//! A single-node Docker Swarm created by a test, and `compose/stack.yml` deployed on it.
//!
//! [`Swarm::init`] refuses to touch an engine that is already part of a swarm (skip, or a
//! failure under `CI=true`); a swarm it created is left (`docker swarm leave --force`) when
//! dropped, also when the test panics. [`Stack`] is removed (`docker stack rm`, then waiting
//! for its containers and network to go) before that.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{ci, parse_members, repo_root, run, run_ok, Member};

fn docker_out(args: &[&str], timeout: Duration) -> Option<String> {
    let out = run(Command::new("docker").args(args), timeout);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker info`'s `Swarm.LocalNodeState`: `inactive`, `pending`, `active`, `error`, `locked`.
pub fn local_node_state() -> String {
    docker_out(
        &["info", "--format", "{{.Swarm.LocalNodeState}}"],
        Duration::from_secs(20),
    )
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// A swarm this process created (single node, manager), left when dropped.
pub struct Swarm {
    /// `swarm init` creates the `docker_gwbridge` network and `leave` keeps it: removed
    /// on drop when it was not there before.
    remove_gwbridge: bool,
}

impl Swarm {
    /// `docker swarm init` on loopback: advertised and listening on 127.0.0.1 only. The
    /// listen address matters beyond the control port 2377: the engine's own gossip then
    /// binds 127.0.0.1:7946 instead of *:7946, which would take port 7946 from every other
    /// address (the agent tests bind 127.x.y.z:7946). `None`: skip (message printed); an
    /// engine already in a swarm is never touched, and under `CI=true` that is a failure.
    pub fn init() -> Option<Swarm> {
        let state = local_node_state();
        if state != "inactive" {
            let msg = format!(
                "this Docker engine's swarm state is {state:?} (not \"inactive\"): the Swarm \
                 test creates and leaves its own single-node swarm and never touches an \
                 existing one (`docker swarm leave --force` to run it)"
            );
            if ci() {
                panic!("CI=true and {msg}");
            }
            eprintln!("SKIPPED: shoal Swarm end-to-end test: {msg}");
            return None;
        }
        let remove_gwbridge = docker_out(
            &["network", "inspect", "docker_gwbridge"],
            Duration::from_secs(20),
        )
        .is_none();
        let out = run(
            Command::new("docker").args([
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                "127.0.0.1:2377",
            ]),
            Duration::from_secs(90),
        );
        // From here on a swarm may exist: the guard leaves it whatever happens next.
        let swarm = Swarm { remove_gwbridge };
        if !out.status.success() {
            panic!(
                "docker swarm init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("single-node swarm created (advertise/listen 127.0.0.1)");
        Some(swarm)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let out = run(
            Command::new("docker").args(["swarm", "leave", "--force"]),
            Duration::from_secs(90),
        );
        if out.status.success() {
            eprintln!("swarm left");
            if self.remove_gwbridge {
                let _ = docker_out(
                    &["network", "rm", "docker_gwbridge"],
                    Duration::from_secs(30),
                );
            }
        } else {
            eprintln!(
                "docker swarm leave --force failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// One running task of a service, as its container shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub container: String,
    /// The container's hostname: the node name (`webapp-{{.Task.Slot}}` in the stack file).
    pub hostname: String,
    /// Its address on the stack's overlay network.
    pub ip: String,
}

/// `compose/stack.yml` deployed as a stack with a unique name; removed when dropped.
pub struct Stack {
    pub name: String,
}

impl Stack {
    /// `docker stack deploy -c compose/stack.yml NAME` with `env` added (ports default to 0:
    /// free host ports).
    pub fn deploy(scenario: &str, env: &[(&str, &str)]) -> Stack {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("se2e-{scenario}-{}-{:x}", std::process::id(), nanos >> 12);
        let stack = Stack { name };
        let mut cmd = Command::new("docker");
        cmd.args(["stack", "deploy", "-c"])
            .arg(repo_root().join("compose/stack.yml"))
            .arg(&stack.name)
            .env("LB_HTTP_PORT", "0")
            .env("LB_STATS_PORT", "0")
            .env("LB_STATUS_PORT", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_ok(&mut cmd, Duration::from_secs(120));
        eprintln!("stack {} deployed", stack.name);
        stack
    }

    pub fn service(&self, svc: &str) -> String {
        format!("{}_{svc}", self.name)
    }

    pub fn network(&self) -> String {
        format!("{}_shoal", self.name)
    }

    /// The running tasks of `svc` whose desired state is running (not those being stopped).
    pub fn tasks(&self, svc: &str) -> Vec<Task> {
        let Some(ids) = docker_out(
            &[
                "service",
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                "desired-state=running",
                &self.service(svc),
            ],
            Duration::from_secs(30),
        ) else {
            return Vec::new();
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec![
            "inspect",
            "--type",
            "task",
            "-f",
            "{{.Status.State}} {{.Status.ContainerStatus.ContainerID}}",
        ];
        args.extend(ids);
        let Some(states) = docker_out(&args, Duration::from_secs(30)) else {
            return Vec::new();
        };
        let net = self.network();
        let fmt = format!(
            "{{{{.Config.Hostname}}}} {{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"
        );
        states
            .lines()
            .filter_map(|l| {
                let (state, cid) = l.trim().split_once(' ')?;
                if state != "running" || cid.is_empty() {
                    return None;
                }
                let out = docker_out(&["inspect", "-f", &fmt, cid], Duration::from_secs(30))?;
                let (hostname, ip) = out.trim().split_once(' ')?;
                Some(Task {
                    container: cid.to_string(),
                    hostname: hostname.to_string(),
                    ip: ip.to_string(),
                })
            })
            .collect()
    }

    /// Running containers of `svc`, those being stopped (draining) included.
    pub fn live_containers(&self, svc: &str) -> usize {
        let label = format!("label=com.docker.swarm.service.name={}", self.service(svc));
        docker_out(
            &["ps", "-q", "--filter", &label, "--filter", "status=running"],
            Duration::from_secs(30),
        )
        .map(|o| o.split_whitespace().count())
        .unwrap_or(0)
    }

    /// The LB's container (its one running task).
    pub fn lb(&self) -> Option<String> {
        self.tasks("lb").into_iter().next().map(|t| t.container)
    }

    /// The 127.0.0.1 address the LB's container `port` is published on (`mode: host`).
    pub fn lb_addr(&self, lb: &str, port: u16) -> SocketAddr {
        let out = crate::docker(&["port", lb, &port.to_string()]);
        let host_port = out
            .lines()
            .find_map(|l| l.trim().rsplit_once(':').map(|(_, p)| p.to_string()))
            .unwrap_or_else(|| panic!("docker port {lb} {port}: {out:?}"));
        format!("127.0.0.1:{host_port}")
            .parse()
            .unwrap_or_else(|_| panic!("docker port {lb} {port}: {out:?}"))
    }

    /// The LB agent's members (`None` while it is not answering).
    pub fn members(&self, lb: &str) -> Option<Vec<Member>> {
        let out = docker_out(
            &["exec", lb, "shoal", "members", "--format", "json"],
            Duration::from_secs(20),
        )?;
        parse_members(&out)
    }

    /// `docker service scale -d SVC=N` (returns at once; the caller waits for what it needs).
    pub fn scale(&self, svc: &str, n: usize) {
        let arg = format!("{}={n}", self.service(svc));
        crate::docker(&["service", "scale", "-d", &arg]);
    }

    /// `docker service update --force -d SVC`: every task replaced (new container, new IP),
    /// one at a time as `update_config` says.
    pub fn force_update(&self, svc: &str) {
        run_ok(
            Command::new("docker").args(["service", "update", "--force", "-d", &self.service(svc)]),
            Duration::from_secs(60),
        );
    }

    /// `UpdateStatus.State` of a service (`updating`, `completed`, ...; empty before any).
    pub fn update_state(&self, svc: &str) -> String {
        docker_out(
            &[
                "service",
                "inspect",
                "-f",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                &self.service(svc),
            ],
            Duration::from_secs(30),
        )
        .unwrap_or_default()
        .trim()
        .to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for svc in ["lb", "webapp"] {
                let out = run(
                    Command::new("docker").args([
                        "service",
                        "logs",
                        "--no-trunc",
                        "--tail",
                        "40",
                        &self.service(svc),
                    ]),
                    Duration::from_secs(30),
                );
                eprintln!(
                    "--- logs of {} ---\n{}{}",
                    self.service(svc),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let out = run(
            Command::new("docker").args(["stack", "rm", &self.name]),
            Duration::from_secs(120),
        );
        if !out.status.success() {
            eprintln!(
                "docker stack rm {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // `stack rm` returns before the containers are gone: wait for them (grace periods)
        // and the network, so leaving the swarm afterwards finds nothing in use.
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let containers =
                docker_out(&["ps", "-aq", "--filter", &label], Duration::from_secs(30))
                    .map(|o| o.split_whitespace().count())
                    .unwrap_or(0);
            let networks = docker_out(
                &["network", "ls", "-q", "--filter", &label],
                Duration::from_secs(30),
            )
            .map(|o| o.split_whitespace().count())
            .unwrap_or(0);
            if containers == 0 && networks == 0 {
                eprintln!("stack {} removed", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "stack {}: containers or network still there after 90 s",
            self.name
        );
    }
}

/// The members whose name is one of `tasks`' hostnames, checked against the tasks: one
/// alive entry per name, at the task's overlay IP. `Err` says what differs.
pub fn check_addresses(members: &[Member], tasks: &[Task]) -> Result<(), String> {
    for t in tasks {
        let entries: Vec<&Member> = members.iter().filter(|m| m.name == t.hostname).collect();
        match entries.as_slice() {
            [m] if m.status == "alive" && m.ip() == t.ip => {}
            [] => return Err(format!("{} ({}) is not a member", t.hostname, t.ip)),
            _ => {
                return Err(format!(
                    "{} should be one alive entry at {}: {:?}",
                    t.hostname,
                    t.ip,
                    entries
                        .iter()
                        .map(|m| format!("{} {}", m.addr, m.status))
                        .collect::<Vec<_>>()
                ))
            }
        }
    }
    Ok(())
}
