#!/usr/bin/env python3
"""shoal's compose demo against the DNS-based rival, side by side in one run.

The rival (bench/dns-rival/) is HAProxy as a skilled Docker user tunes it without shoal:
`server-template web 30 webapp:3000 check resolvers docker init-addr none`, Docker's
embedded DNS at 127.0.0.11 with `hold valid 1s`, `inter 1s fall 2 rise 1`, `redispatch`,
`retry-on`. Both run the same webapp image and get the same load at the same moments (one
thread per system per action, so machine noise hits both alike):

  up      `docker-compose up -d --scale webapp=2` of the whole project, each system alone
          in a project of its own before the others (see `up_alone`): command started
          -> both replicas answered through the LB (s), from the answers' own times (the
          bench waits for them after the command returns; the command's time is a row). The LB's ports are picked free
          before `up` and the load starts with Docker's `start` event of the LB's container
          (see `phase_up`: requests before it were held by the host's ARP timer), so the
          clock holds no bench work (it held two `docker-compose port` calls, ~0.35 s,
          before) and does not hang on when compose returns (it starts the containers one
          after another). Also from Docker's `start` event of the LB's container to the
          same answer: the system's own part (compose's ~1.4-1.8 s before it is the same
          for both and varies from round to round by more than the systems differ).
  scale   `up --scale webapp=5` -> all 5 answered load requests (s), the last one's
          first answer (the command's time is a row)
  kill    `docker kill` of one webapp -> HAProxy has 4 servers UP (s): out of rotation.
          The stats page is polled from the moment the command starts, while it runs: the
          command itself returns only after Docker has torn the container down (~0.3 s
          here, shown in its own row), and polling after it (as before) made that the
          floor of both systems' figures. Also: Docker's own kill event (its SIGKILL) ->
          the LB's HAProxy logs the server DOWN, both on dockerd's clock.
  pause   `docker pause` of one running webapp (a hung replica: its kernel takes connections
          and requests, nothing answers) -> HAProxy has one server UP fewer (s); and -> the last of
          the requests sent before that answered (s): those HAProxy sent the frozen replica
          are held until the system cuts them (shoal: its member `failed`; the rival:
          `on-marked-down shutdown-sessions` once its checks fail) and retried elsewhere.
          Then `docker unpause` and both wait for all UP again.

and over the whole run: failed requests and requests slower than 500 ms (closed-loop GET /
load, 4 workers per system, from this host to the LB's port published on 127.0.0.1). A
request sent before the system's first answer is not counted as failed or slow (nothing
listens yet right after `up`; Docker's port proxy resets such a request, or holds it ~1 s
while the LB's container starts, so until the first answer a request gives up after 0.25 s):
those are shown apart, as "refused before the first answer".
--logs DIR also writes, beside each project's log, PROJECT.requests.txt: the kill's
timeline (Docker's kill event and HAProxy's DOWN line included) and every failed or slow
request (wall-clock UTC, as the log's stamps).
Join timeline (printed and written with the table): each replica `up` and `--scale` add,
step by step from Docker's `start` event (its `create` event, the agent's and the app's log
lines, the LB's agent, lbgen, HAProxy's UP line, the first request it served), the median of
each step over every replica of every round. Docker's `start` event comes once the process
runs (the rival's app listens ~10 ms before it), so early steps can be negative.
Before the first round, each system's `up` runs once alone, uncounted (--warmup 0 skips it):
the first container of an image built moments ago reads its files from disk, not the page
cache (the first round of a 12-round run took shoal's `up` 14.6 s, 1.9 s in the others),
and whichever system went first in round 1 paid for it.
--rounds N (default 3) repeats the whole sequence with new projects; the table gives each
time's median and every round's figure, the counts summed. Prints a table and writes it to
bench/results/RESULTS.md (section dns_rival.py).
Needs the images: docker/build-images.sh (SHOAL_IMAGE_TAG as for the demo). Every project
started is removed on exit, error or Ctrl-C; every loop is bounded (--max-seconds).
"""

import argparse
import calendar
import shutil
import socket
import statistics
import http.client
import os
import subprocess
import sys
import threading
import re
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_section import replace_section  # noqa: E402  (bench/results_section.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW = 0.5
# A request's timeout until the system has answered once (see System.worker).
EARLY_TIMEOUT = 0.25
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The join timeline's steps, in order: (key, what, systems it applies to). Times are from
# Docker's `start` event of the replica (dockerd's clock, as the containers' log stamps).
STEPS = [
    ("command", "the compose command started", "both"),
    ("create", "Docker's `create` event", "both"),
    # `up` only: the LB container starts with the replicas; what its own start costs.
    ("lb_create", "`up`: the LB's `create` event", "both"),
    ("lb_start", "`up`: the LB's `start` event", "both"),
    ("lb_synced", "`up`: the LB's agent merged its first push-pull (`synced`)", "shoal"),
    ("lb_haproxy", "`up`: the LB's HAProxy loaded its config (`Loading success`)", "both"),
    ("agent", "the agent (PID 1) listens for gossip", "shoal"),
    ("app_started", "the agent started the app (supervised child)", "shoal"),
    ("joined", "the agent joined the cluster", "shoal"),
    ("app_listening", "the app listens (its own log line)", "both"),
    ("ready", "the agent's health check passed: `state=ready` gossiped", "shoal"),
    ("lb_has_it", "the LB's agent has the update", "shoal"),
    ("dns", "HAProxy's resolver fills a slot with its IP", "rival"),
    ("lbgen", "lbgen's runtime commands done (`add server`, `enable health`, `state ready`)", "shoal"),
    # The rival's slot is UP "administratively READY thanks to valid DNS answer", before
    # any check: Docker's DNS has the record before the app runs.
    ("haproxy_up", "HAProxy logs the server UP (rival: on the DNS answer, no check yet)", "both"),
    ("served", "the first request it served (the bench's load)", "both"),
]


def sh(args, env=None, timeout=180):
    """Runs a command; its stdout, or an exception naming it and its stderr."""
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def free_port():
    """A port free on 127.0.0.1 now (compose publishes the LB's ports on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(addr, path, timeout=20):
    """GET on a new connection: (status, body)."""
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


class System:
    """One compose project (shoal's demo or the rival), its load and its measurements."""

    def __init__(self, label, compose_file, deadline, round_no=1):
        self.label = label
        self.project = f"shoal-rival-{label.split()[0].lower()}-{os.getpid()}-{round_no}"
        self.file = compose_file
        self.deadline = deadline
        self.pick_ports()
        self.samples = []  # (sent_at, latency, hostname or None, error or None)
        # Wall clock = monotonic + this: --logs writes wall times, to line up with the
        # containers' log timestamps and `docker events`.
        self.wall = time.time() - time.monotonic()
        self.timeline = []  # (monotonic time, what happened), written by --logs
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.answered = threading.Event()  # the system's first answer came
        self.threads = []
        self.figures = {}
        # phase -> (wall time the command started, ids of the containers it added), for
        # the per-replica join timeline (`join_timeline`).
        self.marks = {}
        self.joins = {}  # phase -> [{step: wall time}] per new replica
        self.inflight = {}  # worker thread -> when its request in flight was sent, or None

    def pick_ports(self):
        """The LB's published ports, chosen by the bench (0 = any free one for those not
        measured), so no `docker-compose port` call sits between `up` and the clock. Picked
        again right before `up`: a port free at start-up may since have gone to the other
        project's `0` ports."""
        http, stats = free_port(), free_port()
        self.http, self.stats = f"127.0.0.1:{http}", f"127.0.0.1:{stats}"
        self.env = dict(
            os.environ,
            LB_HTTP_PORT=str(http),
            LB_STATS_PORT=str(stats),
            LB_STATUS_PORT="0",
            LB_HTTPS_PORT="0",
        )

    def compose(self, *args, timeout=180):
        return sh(["docker-compose", "-p", self.project, "-f", self.file, *args], self.env, timeout)

    def webapps(self):
        return [c for c in self.compose("ps", "-q", "webapp").split() if c]

    def hostnames_since(self, t):
        with self.lock:
            return {h for (at, _, h, _) in self.samples if at >= t and h}

    def first_served(self, t):
        """hostname -> when its first answer among requests sent since `t` arrived."""
        firsts = {}
        with self.lock:
            for at, lat, h, err in self.samples:
                if at >= t and h and not err:
                    firsts[h] = min(firsts.get(h, at + lat), at + lat)
        return firsts

    def up_servers(self):
        """Servers of backend web HAProxy has UP (stats CSV)."""
        try:
            status, body = get(self.stats, "/;csv", timeout=3)
        except OSError:
            return None
        if status != 200:
            return None
        lines = body.splitlines()
        head = lines[0].lstrip("# ").split(",")
        px, sv, st = head.index("pxname"), head.index("svname"), head.index("status")
        return {
            f[sv]
            for f in (l.split(",") for l in lines[1:] if l)
            if f[px] == "web" and f[sv] not in ("BACKEND", "FRONTEND") and f[st].startswith("UP")
        }

    def worker(self, go=None):
        """Closed-loop GET / until stopped; from `go` on, if given (see `phase_up`)."""
        while go is not None and not go.wait(timeout=0.05):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            t = time.monotonic()
            self.inflight[threading.get_ident()] = t
            host = err = None
            try:
                # Until the system's first answer, a request gives up after EARLY_TIMEOUT (it
                # is "early" either way): while the LB's container starts, Docker's port proxy
                # accepts a connection and holds its dial to the container until a SYN
                # retransmit ~1 s later. With every worker held there, the first answer was
                # dated by Docker's retransmit instead of by the LB (a 1.9 s `up` whose LB had
                # loaded its config 0.4 s earlier), whichever the system.
                status, body = get(self.http, "/", timeout=20 if self.answered.is_set() else EARLY_TIMEOUT)
                if status == 200 and '"hostname":"' in body:
                    host = body.split('"hostname":"', 1)[1].split('"', 1)[0]
                    self.answered.set()
                else:
                    err = f"status {status}"
            except (OSError, http.client.HTTPException) as e:
                err = f"{type(e).__name__}: {e}"
            with self.lock:
                self.samples.append((t, time.monotonic() - t, host, err))
            self.inflight[threading.get_ident()] = None
            time.sleep(0.01)

    def wait(self, what, pred, timeout=90, every=0.05):
        end = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < end:
            if pred():
                return time.monotonic()
            time.sleep(every)
        raise RuntimeError(f"{self.label}: timed out waiting for {what}")

    # --- the phases ---------------------------------------------------------------
    def phase_up(self, workers):
        self.pick_ports()
        # The load starts with the LB's container (Docker's `start` event), not before it: a
        # request that Docker's port proxy accepts while the container's network is being
        # set up makes the proxy dial an address the host cannot resolve yet (ARP). That SYN
        # and every later one to the LB wait in the host's neighbour queue for the next ARP
        # probe, 1 s after the first (tcpdump: 15 SYNs released at once 0.50 s after the
        # LB's start, 0.39 s after its HAProxy had loaded): the first answer was dated by
        # the host's ARP timer, in some rounds of either system. The ports are known before
        # `up`, so the first answer is still seen when it comes.
        started = threading.Event()
        watcher = subprocess.Popen(
            ["docker", "events", "--filter", f"label=com.docker.compose.project={self.project}",
             "--filter", "label=com.docker.compose.service=lb", "--filter", "event=start",
             "--format", "{{.Action}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        threading.Thread(
            target=lambda: watcher.stdout.readline() and started.set(), daemon=True
        ).start()
        for _ in range(workers):
            th = threading.Thread(target=self.worker, args=(started,), daemon=True)
            th.start()
            self.threads.append(th)
        try:
            # `docker events` subscribes before it prints anything: give it a moment, then
            # check that it runs (a missed `start` would hold the load back for good).
            time.sleep(0.2)
            if watcher.poll() is not None:
                raise RuntimeError(f"{self.label}: docker events exited ({watcher.returncode})")
            t0 = time.monotonic()
            self.compose("up", "-d", "--no-build", "--scale", "webapp=2")
            self.figures["up_cli"] = time.monotonic() - t0
            if not started.wait(timeout=30):
                raise RuntimeError(f"{self.label}: no `start` event of the LB's container")
        finally:
            watcher.kill()
            watcher.wait()
        self.wait("2 replicas served", lambda: len(self.hostnames_since(t0)) >= 2)
        # From the answers themselves, not from when the bench saw them: the wait starts
        # only once the command has returned, and a system that served before that would
        # read as the command's own time.
        firsts = sorted(self.first_served(t0).values())
        self.figures["up"] = firsts[1] - t0
        self.up_second_served = firsts[1]
        self.marks["up"] = (t0, set(self.webapps()))

    def up_from_lb_start(self):
        """`up`: the LB container's `start` event -> the second replica's first answer (s):
        the part of `up` that is the system's own (Docker's part before it, ~1.4-1.8 s of
        creating and starting the containers, is the same for both and varies by more than
        the systems differ). Needs `join_timeline` (it reads the event)."""
        starts = [r["lb_start"] for r in self.joins["up"] if "lb_start" in r]
        if not starts:
            raise RuntimeError(f"{self.label}: no `start` event of the LB's container")
        self.figures["up_lb"] = self.up_second_served + self.wall - min(starts)

    def phase_scale(self):
        before = set(self.webapps())
        t0 = time.monotonic()
        self.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "webapp=5", "webapp")
        self.figures["scale_cli"] = time.monotonic() - t0
        now = set(self.webapps())
        want = {c[:12] for c in now}
        self.wait("5 replicas served", lambda: want <= self.hostnames_since(t0))
        # The last one's first answer (the wait began after the command and a `ps`).
        firsts = self.first_served(t0)
        self.figures["scale"] = max(firsts[h] for h in want) - t0
        self.marks["scale"] = (t0, now - before)

    def phase_kill(self):
        self.wait("5 UP", lambda: len(self.up_servers() or ()) == 5)
        victim = self.webapps()[0]
        # The stats page is polled while `docker kill` runs, not after it returns: the
        # command returns ~0.3 s after Docker's SIGKILL on this machine (it waits for the
        # container to be torn down), and a server out of rotation before that would read
        # as the command's own time.
        t0 = time.monotonic()
        kill = subprocess.Popen(
            ["docker", "kill", victim],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        returned = []  # when the command returned (its own thread waits for it)
        waiter = threading.Thread(
            target=lambda: returned.append((kill.communicate()[1], time.monotonic())),
            daemon=True,
        )
        waiter.start()
        self.timeline.append((t0, f"docker kill {victim[:12]} started"))
        try:
            self.wait("4 UP", lambda: len(self.up_servers() or {1, 2, 3, 4, 5}) == 4, every=0.02)
            self.figures["kill"] = time.monotonic() - t0
            self.timeline.append((t0 + self.figures["kill"], "4 UP in the stats page"))
            waiter.join(timeout=60)
        finally:
            if kill.poll() is None:
                kill.kill()
            waiter.join(timeout=10)
        if kill.returncode != 0 or not returned:
            err = returned[0][0].strip() if returned else "no exit"
            raise RuntimeError(f"docker kill {victim} failed ({kill.returncode}): {err}")
        self.figures["kill_cli"] = returned[0][1] - t0
        self.timeline.append((returned[0][1], "docker kill returned"))
        self.kill_to_down(victim, t0)

    def running_webapps(self):
        """The webapp containers running now (`compose ps` lists stopped ones too)."""
        return sh(["docker", "ps", "-q", "--no-trunc",
                   "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", "label=com.docker.compose.service=webapp"]).split()

    def phase_pause(self):
        running = self.running_webapps()
        n = len(running)
        self.wait(f"{n} UP", lambda: len(self.up_servers() or ()) == n)
        victim = running[0]
        t0 = time.monotonic()
        sh(["docker", "pause", victim])
        self.timeline.append((t0, f"docker pause {victim[:12]}"))
        try:
            self.wait(f"{n - 1} UP", lambda: len(self.up_servers() or range(n)) == n - 1, every=0.02)
            t_out = time.monotonic()
            self.figures["pause"] = t_out - t0
            self.timeline.append((t_out, f"{n - 1} UP in the stats page"))
            # The requests it held end: answered elsewhere once cut, or given up by the
            # client after 20 s (then counted as failed).
            self.wait(
                "no request sent before it was out of rotation in flight",
                lambda: all(v is None or v >= t_out for v in list(self.inflight.values())),
                timeout=30,
                every=0.02,
            )
            with self.lock:
                ends = [t + lat for t, lat, _, _ in self.samples if t0 <= t < t_out]
            self.figures["pause_held"] = max(ends, default=t_out) - t0
        finally:
            sh(["docker", "unpause", victim])
        self.timeline.append((time.monotonic(), "docker unpause returned"))
        self.wait(f"{n} UP after the unpause", lambda: len(self.up_servers() or ()) == n, timeout=60)

    def kill_to_down(self, victim, t0):
        """Docker's own `kill` event (its SIGKILL) -> the LB's HAProxy logs the server DOWN:
        what the system took, without the command's start, the stats page or the poll.
        Both from dockerd's clock (`docker events`, `docker logs -t`)."""
        since = f"{t0 + self.wall - 1:.3f}"
        out = sh(
            ["docker", "events", "--since", since, "--until", f"{time.time():.3f}",
             "--filter", f"container={victim}", "--filter", "event=kill",
             "--format", "{{.TimeNano}}"],
            timeout=30,
        ).split()
        if not out:
            raise RuntimeError(f"{self.label}: no docker kill event for {victim[:12]}")
        killed = int(out[0]) / 1e9
        lb = self.compose("ps", "-q", "lb").split()
        logs = subprocess.run(
            ["docker", "logs", "-t", "--since", since, lb[0]],
            capture_output=True, text=True, timeout=60,
        )
        # shoal names a server after its container; the rival's slots are web1..web30,
        # so its first DOWN after the kill is taken (only the victim goes down here).
        downs = []  # HAProxy writes it twice (a warning on stderr, the log on stdout)
        for line in (logs.stdout + "\n" + logs.stderr).splitlines():
            if " is DOWN" not in line and " going DOWN" not in line:
                continue
            if self.label == "shoal" and f"/{victim[:12]} " not in line:
                continue
            at = docker_time(line.split(" ", 1)[0])
            if at is not None and at >= killed - 0.005:
                downs.append((at, line.split(" ", 1)[1][:160]))
        if not downs:
            # Seen once in 10 rounds (shoal): counted as missing in the row, not fatal.
            print(f"{self.label}: HAProxy logged no DOWN for {victim[:12]}", file=sys.stderr)
            self.figures["kill_down"] = None
            self.timeline.append((killed - self.wall, "Docker's kill event (SIGKILL)"))
            return
        at, what = min(downs)
        self.figures["kill_down"] = at - killed
        self.timeline.append((killed - self.wall, "Docker's kill event (SIGKILL)"))
        self.timeline.append((at - self.wall, "HAProxy logged it DOWN: " + what))

    def container_logs(self, cid):
        """`docker logs -t` of one container as [(dockerd's stamp, line without colours)]."""
        out = subprocess.run(
            ["docker", "logs", "-t", cid], capture_output=True, text=True, timeout=60
        )
        lines = []
        for line in (out.stdout + "\n" + out.stderr).splitlines():
            stamp, _, rest = line.partition(" ")
            at = docker_time(stamp)
            if at is not None:
                lines.append((at, ANSI.sub("", rest)))
        return sorted(lines)

    def join_timeline(self):
        """Each replica a phase added, step by step, as wall times on dockerd's clock (the
        containers' log stamps, `docker events`) and the bench's own (the first answer it
        served; the two clocks are this host's): what `--scale` and `up` spend where."""
        lb_id = self.compose("ps", "-q", "lb").split()[0]
        lb = self.container_logs(lb_id)
        for phase, (t0, ids) in self.marks.items():
            start = t0 + self.wall
            events = sh(
                ["docker", "events", "--since", f"{start - 1:.3f}", "--until", f"{time.time():.3f}",
                 "--filter", f"label=com.docker.compose.project={self.project}",
                 "--filter", "event=create", "--filter", "event=start",
                 "--format", "{{.TimeNano}} {{.Action}} {{.Actor.ID}}"],
                timeout=30,
            ).split("\n")
            rows = []
            for cid in sorted(ids):
                row = {"command": start}
                for ev in events:
                    f = ev.split()
                    if len(f) == 3 and f[2] == cid and f[1] not in row:
                        row[f[1]] = int(f[0]) / 1e9
                    if phase == "up" and len(f) == 3 and f[2] == lb_id:
                        row.setdefault(f"lb_{f[1]}", int(f[0]) / 1e9)
                self.replica_steps(row, cid, lb, start)
                if phase == "up":
                    self.lb_steps(row, lb, start)
                with self.lock:
                    served = [a + lat for (a, lat, h, e) in self.samples
                              if h == cid[:12] and not e and a >= t0]
                if served:
                    row["served"] = min(served) + self.wall
                rows.append(row)
            self.joins[phase] = rows

    def lb_steps(self, row, lb, since):
        """`up`: the LB's own start-up, from its log (see STEPS)."""
        def first(pred):
            return next((at for at, l in lb if at >= since and pred(l)), None)

        for key, at in (
            ("lb_haproxy", first(lambda l: "Loading success" in l)),
            ("lb_synced", first(lambda l: "member table synced" in l) if self.label == "shoal" else None),
        ):
            if at is not None:
                row.setdefault(key, at)

    def replica_steps(self, row, cid, lb, since):
        """The steps in the replica's own log and in the LB's (see STEPS)."""
        def first(lines, pred, after=since):
            return next((at for at, l in lines if at >= after and pred(l)), None)

        own = self.container_logs(cid)
        name = cid[:12]
        put = lambda k, v: v is not None and row.setdefault(k, v)  # noqa: E731
        put("app_listening", first(own, lambda l: "listening on 0.0.0.0:3000" in l))
        if self.label == "shoal":
            put("agent", first(own, lambda l: "gossip listening" in l))
            put("app_started", first(own, lambda l: "shoal::supervisor: started" in l))
            put("joined", first(own, lambda l: "joined the cluster" in l))
            put("ready", first(own, lambda l: "health state gossiped state=ready" in l))
            # The LB's agent: the member's update after it gossiped ready (its tags).
            ready = row.get("ready", since)
            put("lb_has_it", first(lb, lambda l: '"member-update"' in l and f"node={name} " in l,
                                   after=ready - 0.002))
            put("lbgen", first(lb, lambda l: "lbgen::" in l and f"web/{name} " in l))
            put("haproxy_up", first(lb, lambda l: f"Server web/{name} is UP" in l))
        else:
            # Docker's DNS answers the resolver with the replica's IP: HAProxy logs the slot
            # it filled, then the slot UP.
            ip = sh(["docker", "inspect", "-f",
                     "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid]).strip()
            slot = None
            for at, l in lb:
                if at >= since and "changed its IP from" in l and f" to {ip} " in l:
                    slot = l.split("web/", 1)[1].split()[0]
                    put("dns", at)
                    break
            if slot:
                put("haproxy_up", first(lb, lambda l: f"Server web/{slot} " in l and " is UP" in l))

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join(timeout=30)
        with self.lock:
            ok = [s[0] for s in self.samples if not s[3]]
            first = min(ok) if ok else float("inf")
            failed = [s for s in self.samples if s[3] and s[0] >= first]
            self.figures["requests"] = len(self.samples)
            self.figures["failed"] = len(failed)
            self.figures["early"] = sum(1 for s in self.samples if s[3] and s[0] < first)
            # From the first answer on, like the failures: before it, a request sent while
            # the LB's container starts can hang in Docker's port proxy for up to ~1 s (the
            # SYN retransmit) before it is reset, whatever the LB; those are in "early".
            self.figures["slow"] = sum(1 for s in self.samples if s[1] > SLOW and s[0] >= first)
            self.figures["errors"] = sorted({s[3] for s in failed})[:3]

    def save_logs(self, path):
        """`docker-compose logs -t` of the whole project into `path` (--logs), and beside it
        (`.requests.txt`) the bench's own view: the kill's timeline and every request that
        failed or took over 500 ms, in wall-clock UTC like the log's timestamps."""
        with open(path, "w") as f:
            f.write(self.compose("logs", "-t", "--no-color", timeout=60))

        def utc(t):
            w = t + self.wall
            return time.strftime("%H:%M:%S", time.gmtime(w)) + f"{w % 1:.3f}"[1:]

        with self.lock:
            ok = [s[0] for s in self.samples if not s[3]]
            first = min(ok) if ok else float("inf")
            # Refusals before the first answer are left out (as in the counts).
            odd = [s for s in self.samples if s[1] > SLOW or (s[3] and s[0] >= first)]
        with open(os.path.splitext(path)[0] + ".requests.txt", "w") as f:
            for t, what in sorted(self.timeline):
                f.write(f"{utc(t)} {what}\n")
            f.write("sent at (UTC), latency (s), served by, error\n")
            for t, lat, host, err in odd:
                early = " (before the first answer: not counted)" if t < first else ""
                f.write(f"{utc(t)} {lat:.3f} {host or '-'} {err or ''}{early}\n")

    def down(self):
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=120)
        except Exception as e:  # cleanup must go on for the other system
            print(f"cleanup of {self.project}: {e}", file=sys.stderr)


class MachineLock:
    """The e2e tests' machine-wide lock (a directory holding the owner's pid, see
    tests/e2e/src/lib.rs): timings taken while another cluster runs on the same cores
    mean nothing. A lock whose owner is gone is taken over."""

    DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "shoal-e2e-docker.lock")

    def __init__(self, timeout):
        end = time.monotonic() + timeout
        announced = False
        while True:
            try:
                os.mkdir(self.DIR)
                with open(os.path.join(self.DIR, "pid"), "w") as f:
                    f.write(str(os.getpid()))
                return
            except FileExistsError:
                if self._stale():
                    shutil.rmtree(self.DIR, ignore_errors=True)
                    continue
            if not announced:
                print(f"waiting for the e2e lock {self.DIR}", file=sys.stderr)
                announced = True
            if time.monotonic() > end:
                raise RuntimeError(f"the e2e lock {self.DIR} is still held after {timeout} s")
            time.sleep(0.5)

    def _stale(self):
        try:
            with open(os.path.join(self.DIR, "pid")) as f:
                pid = f.read().strip()
            return bool(pid) and not os.path.exists(f"/proc/{pid}")
        except FileNotFoundError:
            try:
                return time.time() - os.stat(self.DIR).st_mtime > 10
            except FileNotFoundError:
                return False

    def release(self):
        shutil.rmtree(self.DIR, ignore_errors=True)


def both(systems, phase, *args):
    """Runs one phase on every system at the same moment; re-raises the first failure."""
    errors = []

    def run(s):
        try:
            getattr(s, phase)(*args)
        except Exception as e:
            errors.append(e)

    ts = [threading.Thread(target=run, args=(s,)) for s in systems]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def up_alone(a, round_no, deadline):
    """The `up` row: each system's `up -d --scale webapp=2` alone on the machine, in a
    project of its own that is removed before the other's (shoal first in odd rounds).
    Two `up`s at the same moment are a race for dockerd, which creates and starts one
    container after another (in the last such run shoal's replicas started 0.31 s later
    after the command, though the two commands alone take the same); one after the other
    with both kept, whoever went second shared the machine with the first's starting
    project and lost all 8 rounds. label -> (figures, the `up` join timeline)."""
    files = [("shoal", os.path.join(ROOT, "compose", "docker-compose.yml")),
             ("DNS rival", os.path.join(ROOT, "bench", "dns-rival", "docker-compose.yml"))]
    out = {}
    for label, path in files if round_no % 2 else files[::-1]:
        s = System(label, path, deadline, f"{round_no}up")
        try:
            s.phase_up(a.workers)
            s.join_timeline()
            s.up_from_lb_start()
        finally:
            s.stop.set()
            s.down()
        out[label] = ({k: s.figures[k] for k in ("up", "up_lb", "up_cli")}, s.joins["up"])
    return out


def docker_time(stamp):
    """`docker logs -t`'s RFC 3339 stamp (nanoseconds, UTC) as a Unix time; None if not one."""
    try:
        head, frac = stamp.rstrip("Z").split(".")
        whole = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        return whole + float("0." + frac)
    except ValueError:
        return None


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def table(rounds, command, load_before, load_after, warmup):
    """rounds: [(shoal System, rival System)] of every round."""
    s0, r0 = rounds[0]
    times = [
        ("`docker kill` of a webapp → out of rotation (s)", "kill"),
        ("Docker's SIGKILL → HAProxy logs the server DOWN (s)", "kill_down"),
        ("`docker kill` command returned (s)", "kill_cli"),
        ("`docker pause` of a webapp → out of rotation (s)", "pause"),
        ("`docker pause` → the last request it held answered (s)", "pause_held"),
        ("`--scale 5` → all 5 serving (s)", "scale"),
        ("`--scale 5` command returned (s)", "scale_cli"),
        ("`up` → first 2 replicas served (s)", "up"),
        ("`up`: the LB container's start → first 2 replicas served (s)", "up_lb"),
        ("`up` command returned (s)", "up_cli"),
    ]
    counts = [
        ("failed requests", "failed"),
        ("requests over 500 ms", "slow"),
        ("requests sent", "requests"),
        ("refused before the first answer (not counted as failed)", "early"),
    ]

    def cell(i, key):
        vals = [rnd[i].figures[key] for rnd in rounds]
        each = ", ".join("–" if v is None else f"{v:.2f}" for v in vals)
        known = [v for v in vals if v is not None]
        return f"{statistics.median(known):.2f} ({each})" if known else f"– ({each})"

    out = [
        f"Side by side in one run, same webapp image, same load ({time.strftime('%Y-%m-%d')}, "
        f"`{command}`). Rival: HAProxy with Docker's embedded DNS, `server-template` and tuned "
        "checks ([bench/dns-rival/haproxy.cfg](../dns-rival/haproxy.cfg)). "
        f"{len(rounds)} round{'s' if len(rounds) > 1 else ''}; times: the median (every round's figure), counts: summed. "
        "`up`: each system alone, in a project removed before the other's (shoal first in odd "
        "rounds); the other actions at the same moment, on projects `up` together. "
        + (f"Before round 1, {warmup} uncounted `up` of each (cold page cache). " if warmup else "")
        +         f"Load average (1/5/15 min) before: {load_before}, after: {load_after}, "
        f"{os.cpu_count()} cores (shared).",
        "",
        f"| | {s0.label} | {r0.label} |",
        "|---|---|---|",
    ]
    for name, key in times:
        out.append(f"| {name} | {cell(0, key)} | {cell(1, key)} |")
    for name, key in counts:
        a = sum(rnd[0].figures[key] for rnd in rounds)
        b = sum(rnd[1].figures[key] for rnd in rounds)
        out.append(f"| {name} | {a} | {b} |")
    for i in range(2):
        errs = sorted({e for rnd in rounds for e in rnd[i].figures["errors"]})[:3]
        if errs:
            out.append(f"\n{rounds[0][i].label} errors: {'; '.join(errs)}")
    return "\n".join(out) + "\n" + timeline_table(rounds)


def timeline_table(rounds):
    """The join timeline: each step's median over every replica of every round, in ms
    after the replica's `start` event; n = how many replicas had the step."""
    out = []
    for phase, title in (("scale", "`--scale 5` (3 new replicas per round)"),
                         ("up", "`up` (2 replicas per round, the LB started with them)")):
        out += [
            "",
            f"Join timeline of {title}: ms after Docker's `start` event of the replica "
            "(dockerd's clock: `docker events`, `docker logs -t`; the first answer on this host's "
            "clock), median over every replica of every round (n).",
            "",
            "| step | shoal | DNS rival |",
            "|---|---|---|",
        ]
        for key, what, who in STEPS:
            cells = []
            for i, label in enumerate(("shoal", "rival")):
                if who not in ("both", label):
                    cells.append("")
                    continue
                vals = [
                    (row[key] - row["start"]) * 1000
                    for rnd in rounds
                    for row in rnd[i].joins.get(phase, [])
                    if key in row and "start" in row
                ]
                reps = sum(len(rnd[i].joins.get(phase, [])) for rnd in rounds)
                cells.append(f"{statistics.median(vals):.0f} (n={len(vals)}/{reps})" if vals else "–")
            if all(c in ("", "–") for c in cells):
                continue  # a step of the other phase (the LB's own start is in `up` only)
            out.append(f"| {what} | {cells[0]} | {cells[1]} |")
    return "\n".join(out) + "\n"


def one_round(a, round_no, deadline):
    systems = [
        System("shoal", os.path.join(ROOT, "compose", "docker-compose.yml"), deadline, round_no),
        System(
            "DNS rival",
            os.path.join(ROOT, "bench", "dns-rival", "docker-compose.yml"),
            deadline,
            round_no,
        ),
    ]
    try:
        alone = up_alone(a, round_no, deadline)
        both(systems, "phase_up", a.workers)
        for s in systems:
            s.marks.pop("up")  # `up` alone has the row and the timeline: not read twice
        time.sleep(3)
        both(systems, "phase_scale")
        # Read the logs now: the rival's victim of the kill loses its IP, which maps its slot.
        both(systems, "join_timeline")
        time.sleep(3)
        both(systems, "phase_kill")
        time.sleep(3)
        both(systems, "phase_pause")
        time.sleep(3)
        both(systems, "finish")
        if a.logs:
            os.makedirs(a.logs, exist_ok=True)
            for s in systems:
                s.save_logs(os.path.join(a.logs, f"{s.project}.log"))
    finally:
        for s in systems:
            s.stop.set()
            s.down()
    for s in systems:
        figures, timeline = alone[s.label]
        s.figures.update(figures)
        s.joins["up"] = timeline
    f = [s.figures for s in systems]
    print(
        f"round {round_no}: kill {f[0]['kill']:.2f} vs {f[1]['kill']:.2f}, "
        f"pause {f[0]['pause']:.2f} vs {f[1]['pause']:.2f} (held {f[0]['pause_held']:.2f} vs {f[1]['pause_held']:.2f}), "
        f"scale {f[0]['scale']:.2f} vs {f[1]['scale']:.2f}, up {f[0]['up']:.2f} vs {f[1]['up']:.2f} "
        f"(from the LB's start {f[0]['up_lb']:.2f} vs {f[1]['up_lb']:.2f}), "
        f"failed {f[0]['failed']} vs {f[1]['failed']}, slow {f[0]['slow']} vs {f[1]['slow']} "
        f"(load {loadavg()})",
        flush=True,
    )
    return systems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4, help="load workers per system (1-32)")
    ap.add_argument("--rounds", type=int, default=3, help="whole runs, for medians (1-15)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted `up`s of each system first (0-3)")
    ap.add_argument("--max-seconds", type=float, default=300, help="bound on each round")
    ap.add_argument("--logs", help="save each project's `docker-compose logs -t` in this directory")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    a = ap.parse_args()
    if not 1 <= a.workers <= 32:
        ap.error(f"--workers must be from 1 to 32, not {a.workers}")
    if not 1 <= a.rounds <= 15:
        ap.error(f"--rounds must be from 1 to 15, not {a.rounds}")
    if not 0 <= a.warmup <= 3:
        ap.error(f"--warmup must be from 0 to 3, not {a.warmup}")
    if not 30 <= a.max_seconds <= 1800:
        ap.error(f"--max-seconds must be from 30 to 1800, not {a.max_seconds}")
    lock = MachineLock(timeout=1800)
    rounds = []
    try:
        for n in range(1, a.warmup + 1):
            alone = up_alone(a, n, time.monotonic() + a.max_seconds)
            print("warm-up (not counted): up " + ", ".join(
                f"{label} {f['up']:.2f} s" for label, (f, _) in alone.items()), flush=True)
        load_before = loadavg()
        for n in range(1, a.rounds + 1):
            rounds.append(one_round(a, n, time.monotonic() + a.max_seconds))
    finally:
        lock.release()
    command = "python3 bench/dns_rival.py" + (f" --rounds {a.rounds}" if a.rounds != 3 else "")
    command += f" --warmup {a.warmup}" if a.warmup != 1 else ""
    text = table(rounds, command, load_before, loadavg(), a.warmup)
    print(text)
    if not a.no_write:
        replace_section("dns_rival.py", "## shoal vs a DNS-based HAProxy (compose)\n\n" + text)


if __name__ == "__main__":
    main()
