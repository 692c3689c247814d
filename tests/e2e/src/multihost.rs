//! A multi-host Docker Swarm made of real engines: [`Bed`] runs privileged containers
//! ([`ENGINE_PRIVILEGES`])
//! of `shoal-dind:bookworm` (Debian's `docker.io`, docker/dind-image.sh) on a bridge network
//! of their own, joins them into one swarm (three managers, the rest workers), and loads the
//! shoal images into each engine (`docker save | docker load`). [`BedStack`] is
//! `compose/stack.yml` + `compose/stack.multihost.yml` deployed on it.
//!
//! Three managers: a host failure must leave a raft quorum (2 of 3) so Swarm can still
//! reschedule, whichever manager it is; a fourth host as a worker lets a test kill two hosts
//! and keep that quorum. Each engine's LB ports ([`PUBLISHED`]) are published on 127.0.0.1 of
//! the outer host, so the test's load and health polls reach a host's host-mode ports through
//! 127.0.0.1 and never send to the bed's bridge. Dropping the bed removes the engine
//! containers with their volumes (everything inside: swarm state, images, tasks) and the
//! network, also when the test panics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{parse_members, repo_root, run, run_ok, Member};

const S: Duration = Duration::from_secs(1);

/// The image of one host (docker/dind-image.sh).
pub const DIND_IMAGE: &str = "shoal-dind:bookworm";

/// Builds [`DIND_IMAGE`] unless it exists (the script takes a lock and reuses the image).
pub fn build_dind_image() {
    let script = repo_root().join("docker/dind-image.sh");
    let out = run(&mut Command::new(&script), 1500 * S);
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `--privileged` gives, spelled out minus `CAP_SYS_RESOURCE`: some sandboxes (this
/// project's CI machine) run the outer engine without it in its bounding set, and runc then
/// refuses `--privileged` ("unable to apply caps: operation not permitted"). The engine's
/// start script (docker/shoal-dind.sh) remounts /sys and the cgroups writable itself.
pub const ENGINE_PRIVILEGES: &[&str] = &[
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--device-cgroup-rule",
    "a *:* rwm",
];

/// The ports `compose/stack.yml` publishes in `mode: host` on an LB's node (HTTP, HAProxy
/// stats), published again by each engine container on 127.0.0.1 of the outer host.
pub const PUBLISHED: &[u16] = &[8080, 8404];

/// One host of the bed: a container named `name` (also its hostname, the swarm node's
/// name) at `ip` on the bed's network, with [`PUBLISHED`] ports on 127.0.0.1 (`ports`:
/// the engine's port → the outer host's address).
#[derive(Debug, Clone)]
pub struct Engine {
    pub name: String,
    pub ip: String,
    pub ports: BTreeMap<u16, SocketAddr>,
}

impl Engine {
    /// Where the test reaches this host's `port` (one of [`PUBLISHED`]): 127.0.0.1 of the
    /// outer host, forwarded by the outer engine to the engine container, whose own
    /// host-mode rule passes it to the task.
    pub fn addr(&self, port: u16) -> SocketAddr {
        *self
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("port {port} of {} is not published", self.name))
    }
}

/// The 127.0.0.1 address `docker port CONTAINER PORT` names.
fn published(container: &str, port: u16) -> SocketAddr {
    let out = crate::docker(&["port", container, &format!("{port}/tcp")]);
    out.lines()
        .find_map(|l| l.trim().parse::<SocketAddr>().ok().filter(|a| a.is_ipv4()))
        .unwrap_or_else(|| panic!("docker port {container} {port}: {out:?}"))
}

/// Engines in one swarm; removed with their volumes and network when dropped.
pub struct Bed {
    pub prefix: String,
    pub network: String,
    pub engines: Vec<Engine>,
    containers: Vec<String>,
    volumes: Vec<String>,
}

/// `docker exec ENGINE docker ARGS...` with a deadline; `Output` as is.
pub fn engine_docker(engine: &str, args: &[&str], timeout: Duration) -> Output {
    run(
        Command::new("docker")
            .args(["exec", engine, "docker"])
            .args(args),
        timeout,
    )
}

/// Its stdout when it succeeded.
pub fn engine_out(engine: &str, args: &[&str], timeout: Duration) -> Option<String> {
    let out = engine_docker(engine, args, timeout);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn engine_ok(engine: &str, args: &[&str], timeout: Duration) -> String {
    let out = engine_docker(engine, args, timeout);
    if !out.status.success() {
        panic!(
            "on {engine}: docker {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Bed {
    /// Starts `n` engines, makes a swarm of the first `managers` as managers and the rest
    /// as workers, loads `images` into every engine and labels the first `lb_nodes` of them
    /// `shoal.lb=true`.
    pub fn start(n: usize, managers: usize, images: &[String], lb_nodes: usize) -> Bed {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let prefix = format!("shoal-mh-{}-{:x}", std::process::id(), nanos >> 12);
        let mut bed = Bed {
            network: format!("{prefix}-net"),
            prefix,
            engines: Vec::new(),
            containers: Vec::new(),
            volumes: Vec::new(),
        };
        // MTU 1500 on this internal bridge (the outer engine may default to less): the
        // overlay's VXLAN packets (1450 + 50) then travel unfragmented between the hosts.
        run_ok(
            Command::new("docker").args([
                "network",
                "create",
                "-o",
                "com.docker.network.driver.mtu=1500",
                &bed.network,
            ]),
            60 * S,
        );
        for i in 0..n {
            let name = format!("{}-h{i}", bed.prefix);
            let vol = format!("{name}-docker");
            bed.volumes.push(vol.clone());
            bed.containers.push(name.clone());
            let publish: Vec<String> = PUBLISHED
                .iter()
                .flat_map(|p| ["-p".to_string(), format!("127.0.0.1:0:{p}")])
                .collect();
            run_ok(
                Command::new("docker")
                    .args([
                        "run",
                        "-d",
                        "--name",
                        &name,
                        "--hostname",
                        &name,
                        "--network",
                        &bed.network,
                    ])
                    .args(&publish)
                    .args(ENGINE_PRIVILEGES)
                    .args(["-v", &format!("{vol}:/var/lib/docker"), DIND_IMAGE]),
                60 * S,
            );
            let ip = crate::container_ip(&name, &bed.network);
            let ports = PUBLISHED
                .iter()
                .map(|&p| (p, published(&name, p)))
                .collect();
            bed.engines.push(Engine { name, ip, ports });
        }
        for e in &bed.engines {
            let ok = wait(60 * S, || engine_out(&e.name, &["info"], 10 * S).is_some());
            assert!(
                ok,
                "the engine in {} did not start: {}",
                e.name,
                bed.logs(e)
            );
        }
        let t = Instant::now();
        let first = bed.engines[0].clone();
        engine_ok(
            &first.name,
            &["swarm", "init", "--advertise-addr", &first.ip],
            60 * S,
        );
        let token = |role: &str| {
            engine_ok(&first.name, &["swarm", "join-token", "-q", role], 30 * S)
                .trim()
                .to_string()
        };
        let (manager, worker) = (token("manager"), token("worker"));
        for (i, e) in bed.engines.iter().enumerate().skip(1) {
            let token = if i < managers { &manager } else { &worker };
            engine_ok(
                &e.name,
                &[
                    "swarm",
                    "join",
                    "--advertise-addr",
                    &e.ip,
                    "--token",
                    token,
                    &format!("{}:2377", first.ip),
                ],
                90 * S,
            );
        }
        eprintln!(
            "swarm of {n} engines ({} managers) formed in {:.1} s",
            managers.min(n),
            t.elapsed().as_secs_f64()
        );
        bed.load_images(images);
        for e in &bed.engines[..lb_nodes] {
            engine_ok(
                &first.name,
                &["node", "update", "--label-add", "shoal.lb=true", &e.name],
                30 * S,
            );
        }
        bed
    }

    /// `docker save` once, `docker load` into every engine.
    fn load_images(&self, images: &[String]) {
        let t = Instant::now();
        let tar = std::env::temp_dir().join(format!("{}-images.tar", self.prefix));
        let mut save = Command::new("docker");
        save.arg("save").arg("-o").arg(&tar).args(images);
        run_ok(&mut save, 300 * S);
        for e in &self.engines {
            let script = format!(
                "docker exec -i {} docker load < '{}'",
                e.name,
                tar.display()
            );
            run_ok(Command::new("sh").args(["-c", &script]), 300 * S);
        }
        let _ = std::fs::remove_file(&tar);
        eprintln!(
            "images {images:?} loaded into {} engines in {:.1} s",
            self.engines.len(),
            t.elapsed().as_secs_f64()
        );
    }

    fn logs(&self, e: &Engine) -> String {
        let out = run(
            Command::new("docker").args(["logs", "--tail", "30", &e.name]),
            30 * S,
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `docker kill` of a host's container (SIGKILL to its whole engine: a host failure).
    pub fn kill(&self, i: usize) {
        self.kill_named(&self.engines[i].name);
    }

    /// [`Bed::kill`] by the engine's name.
    pub fn kill_named(&self, name: &str) {
        run_ok(Command::new("docker").args(["kill", name]), 60 * S);
    }

    /// The swarm's node names by node ID, asked of `via` (a live manager).
    pub fn nodes(&self, via: &str) -> BTreeMap<String, String> {
        engine_out(
            via,
            &[
                "node",
                "ls",
                "--format",
                "{{.ID}} {{.Hostname}} {{.Status}}",
            ],
            30 * S,
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
    }

    /// A node's status (`Ready`, `Down`, ...) as the manager `via` sees it.
    pub fn node_status(&self, via: &str, node: &str) -> String {
        engine_out(
            via,
            &["node", "inspect", "-f", "{{.Status.State}}", node],
            30 * S,
        )
        .unwrap_or_default()
        .trim()
        .to_string()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for e in &self.engines {
                eprintln!("--- last lines of engine {} ---\n{}", e.name, self.logs(e));
            }
        }
        for c in &self.containers {
            let _ = run(Command::new("docker").args(["rm", "-f", "-v", c]), 120 * S);
        }
        for v in &self.volumes {
            let _ = run(
                Command::new("docker").args(["volume", "rm", "-f", v]),
                60 * S,
            );
        }
        let out = run(
            Command::new("docker").args(["network", "rm", &self.network]),
            60 * S,
        );
        if out.status.success() {
            eprintln!("bed {} removed", self.prefix);
        } else {
            eprintln!(
                "bed {}: network rm failed: {}",
                self.prefix,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// One task of a service as the managers know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedTask {
    /// `<service>-<slot>`: the task's hostname, the shoal node name.
    pub hostname: String,
    /// The engine (swarm node) running it.
    pub node: String,
    pub container: String,
    /// Its address on the stack's overlay network.
    pub ip: String,
    pub state: String,
}

/// The stack deployed on a [`Bed`] (the bed's drop removes it with the engines).
pub struct BedStack {
    pub name: String,
}

impl BedStack {
    /// `docker stack deploy -c stack.yml -c stack.multihost.yml` run on the bed's engine
    /// `via` (a manager), with `env` for the stack file's variables.
    pub fn deploy(via: &str, env: &[(&str, &str)]) -> BedStack {
        let stack = BedStack {
            name: format!("mh{:x}", std::process::id()),
        };
        for f in ["stack.yml", "stack.multihost.yml"] {
            let src = repo_root().join("compose").join(f);
            run_ok(
                Command::new("docker")
                    .arg("cp")
                    .arg(&src)
                    .arg(format!("{via}:/{f}")),
                30 * S,
            );
        }
        let mut cmd = Command::new("docker");
        cmd.args(["exec"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.args([
            via,
            "docker",
            "stack",
            "deploy",
            "-c",
            "/stack.yml",
            "-c",
            "/stack.multihost.yml",
            &stack.name,
        ]);
        run_ok(&mut cmd, 120 * S);
        eprintln!("stack {} deployed on the bed", stack.name);
        stack
    }

    pub fn service(&self, svc: &str) -> String {
        format!("{}_{svc}", self.name)
    }

    /// The tasks of `svc` whose desired state is running, from the manager `via`
    /// (`node_names`: node ID → hostname, [`Bed::nodes`]).
    pub fn tasks(
        &self,
        via: &str,
        svc: &str,
        node_names: &BTreeMap<String, String>,
    ) -> Vec<BedTask> {
        let Some(ids) = engine_out(
            via,
            &[
                "service",
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                "desired-state=running",
                &self.service(svc),
            ],
            30 * S,
        ) else {
            return Vec::new();
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let net = format!("{}_shoal", self.name);
        let fmt = format!(
            "{{{{.Status.State}}}} {{{{.Slot}}}} {{{{.NodeID}}}} \
             {{{{if .Status.ContainerStatus}}}}{{{{.Status.ContainerStatus.ContainerID}}}}{{{{end}}}}- \
             {{{{range .NetworksAttachments}}}}{{{{if eq .Network.Spec.Name \"{net}\"}}}}\
             {{{{index .Addresses 0}}}}{{{{end}}}}{{{{end}}}}"
        );
        let mut args = vec!["inspect", "--type", "task", "-f", &fmt];
        args.extend(ids);
        let Some(out) = engine_out(via, &args, 30 * S) else {
            return Vec::new();
        };
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let [state, slot, node, cid, ip] = f.as_slice() else {
                    return None;
                };
                Some(BedTask {
                    hostname: format!("{svc}-{slot}"),
                    node: node_names.get(*node).cloned().unwrap_or(node.to_string()),
                    container: cid.trim_end_matches('-').to_string(),
                    ip: ip.split('/').next().unwrap_or_default().to_string(),
                    state: state.to_string(),
                })
            })
            .collect()
    }

    /// `shoal members` of the task container `cid` on `engine` (`None` while unanswered).
    pub fn members(&self, engine: &str, cid: &str) -> Option<Vec<Member>> {
        let out = engine_out(
            engine,
            &["exec", cid, "shoal", "members", "--format", "json"],
            20 * S,
        )?;
        parse_members(&out)
    }

    /// When `shoal members` of the task `cid` on `engine` first said each of `victims`
    /// (name at address) `failed`: the wall-clock time (Unix ms) of its first `member-failed`
    /// event at or after `since_ms`, from the agent's own event log (replayed by `shoal
    /// monitor --index 0`, which holds the last 4,096 events). The agent stamps an event when
    /// its member table changes, so this is the time of the change there, not of a poll.
    /// `None` for a victim with no such event.
    pub fn failed_at(
        &self,
        engine: &str,
        cid: &str,
        victims: &[(String, String)],
        since_ms: u64,
    ) -> Vec<Option<u64>> {
        // `monitor` streams until stopped: `timeout` ends it once the replay is out.
        let out = engine_docker(
            engine,
            &[
                "exec", cid, "timeout", "1", "shoal", "monitor", "--index", "0", "--format", "json",
            ],
            30 * S,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        victims
            .iter()
            .map(|(name, ip)| {
                events
                    .iter()
                    .filter(|e| {
                        e["type"] == "member-failed"
                            && e["member"]["name"] == name.as_str()
                            && e["member"]["addr"]
                                .as_str()
                                .is_some_and(|a| a.rsplit_once(':').map(|(h, _)| h) == Some(ip))
                    })
                    .filter_map(|e| crate::rfc3339_ms(e["time"].as_str()?))
                    .find(|&t| t >= since_ms)
            })
            .collect()
    }

    /// Watches, inside the LB task `cid` on `engine`, until none of `ips` is a server
    /// address (`IP:3000`) in its rendered HAProxy config: a shell loop that checks the file
    /// every 50 ms in the container (no `docker exec` per check) and prints the wall-clock
    /// time (Unix ms) it saw them gone. Blocks; run it in a thread started before the
    /// change. `None` if not within `timeout`.
    pub fn config_without(
        &self,
        engine: &str,
        cid: &str,
        ips: &[String],
        timeout: Duration,
    ) -> Option<u64> {
        let pats: String = ips.iter().map(|ip| format!(" -e ' {ip}:3000'")).collect();
        let script = format!(
            "C=/usr/local/etc/haproxy/haproxy.cfg; \
             while [ ! -s $C ] || grep -qF{pats} $C; do sleep 0.05; done; date +%s%3N"
        );
        let secs = timeout.as_secs().max(1).to_string();
        let out = engine_docker(
            engine,
            &["exec", cid, "timeout", &secs, "sh", "-c", &script],
            timeout + 30 * S,
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten()
    }

    /// The HAProxy config lbgen rendered in the LB container `cid` on `engine`.
    pub fn lb_config(&self, engine: &str, cid: &str) -> Option<String> {
        engine_out(
            engine,
            &["exec", cid, "cat", "/usr/local/etc/haproxy/haproxy.cfg"],
            20 * S,
        )
    }
}

fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
