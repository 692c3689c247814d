#!/usr/bin/env python3
"""Several LBs, one membership (issue 13): how soon after a membership change every
LB's HAProxy config is byte-identical again, holding the change.

Each LB is what the lb image runs: a real `shoal agent` (role=lb), a real HAProxy
in master-worker mode and the real `lbgen watch` binary with its defaults
(`--wait 200ms:2s`, `haproxy -c` before each write), following its own agent.
Backends are real agents, each with a tiny HTTP server on its address. All LBs
use the same `--var`s, as LBs on their own hosts would: they share the HTTP and
stats ports (HAProxy binds with SO_REUSEPORT), each runs in its own directory so
the relative stats socket `unix@admin.sock` is its own, and the server-state
file is off (its absolute path would be shared on one host).

Changes, each repeated --rounds times: a tag change (`weight`), a drain and
back to ready (`state`), a backend joining and leaving a pool gracefully (these
five go through HAProxy's runtime API), a new pool joining (a reload, so
lbgen's debounce may apply), its only member leaving gracefully (the pool and
its route stay, answering 503, until the member is reaped: a runtime `del
server`, no reload), and a kill -9 (the cluster must detect it first). Then
one more LB starts: how soon its file equals the others', the pools whose
members all left included (its agent learns them from the join's push-pull). For each, measured by polling the LBs' files every 2 ms:
  change -> all identical : from the change (CLI call, process start, signal)
                            to every file byte-identical and different from
                            before;
  first -> all identical  : from the first LB's file changing to the last one
                            matching it: how long two LBs disagree.

Usage: bench/twin_lbs.py [--lbs 2] [--rounds 5] [--no-write] [--keep DIR]
(--keep DIR: run in DIR and leave the logs there; LBGEN_LOG=debug shows each
lbgen's member events and how long its check, write and reload took.)
Needs: release builds (cargo build --release -p shoal -p lbgen, or SHOAL_BIN /
LBGEN_BIN) and haproxy. Traffic stays on 127.0.93.0/24. Every process started
is stopped. Prints a Markdown table and writes it into bench/results/RESULTS.md
(section twin_lbs.py) unless --no-write.
"""

import argparse
import contextlib
import http.server
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_section import replace_section  # noqa: E402

SHOAL_BIN = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target/release/shoal"))
LBGEN_BIN = os.environ.get("LBGEN_BIN", os.path.join(ROOT, "target/release/lbgen"))
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NET = "127.0.93"
WEB_PORT = 3000
BOUND = 30.0  # the longest wait for anything, in seconds
POLL = 0.002


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # HAProxy's health checks may close before the answer: not worth a traceback


def serve(ip):
    srv = Server((ip, WEB_PORT), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class Proc:
    """A process in its own session, killed with its session on stop()."""

    def __init__(self, cmd, log, cwd=None, stdin=subprocess.DEVNULL):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=stdin,
                                     cwd=cwd, start_new_session=True)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.log.close()


def wait_port(ip, port, what):
    deadline = time.time() + BOUND
    while time.time() < deadline:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{what} never opened {ip}:{port}")


def agent(workdir, name, ip, flags):
    p = Proc([SHOAL_BIN, "agent", "--node", name, "--profile", "local",
              "--bind", f"{ip}:7946", "--api", f"{ip}:7373", "--leave-timeout", "1s"] + flags,
             os.path.join(workdir, f"{name}.log"))
    p.name, p.ip = name, ip
    wait_port(ip, 7373, name)
    return p


def cli(a, *args):
    subprocess.run([SHOAL_BIN, "--api", f"{a.ip}:7373"] + list(args), check=True,
                   stdout=subprocess.DEVNULL, timeout=BOUND)


class Lb:
    def __init__(self, workdir, n, join, var_flags):
        self.dir = os.path.join(workdir, f"lb-{n}")
        os.makedirs(self.dir)
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        # As the lb image: HAProxy starts from the empty cluster's config.
        subprocess.run([LBGEN_BIN, "render", "--members", "-", "--out", self.cfg] + var_flags,
                       input=b'{"members":[]}', check=True, cwd=self.dir, timeout=BOUND,
                       env={**os.environ, "LBGEN_LOG": "warn"})
        master = os.path.join(self.dir, "master.sock")
        self.haproxy = Proc([HAPROXY, "-W", "-db", "-S", master, "-f", self.cfg],
                            os.path.join(self.dir, "haproxy.log"), cwd=self.dir)
        self.agent = agent(workdir, f"lb-{n}", f"{NET}.{n}", ["--tag", "role=lb"] + join)
        self.lbgen = Proc([LBGEN_BIN, "watch", "--api", f"{self.agent.ip}:7373", "--out",
                           self.cfg, "--haproxy-master", master] + var_flags,
                          os.path.join(self.dir, "lbgen.log"), cwd=self.dir)
        self.last = (None, "")

    def text(self):
        try:
            st = os.stat(self.cfg)
        except FileNotFoundError:
            return ""
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self.last[0]:
            with open(self.cfg) as f:
                self.last = (key, f.read())
        return self.last[1]

    def stop(self):
        for p in (self.lbgen, self.agent, self.haproxy):
            p.stop()


def common_text(lbs):
    texts = [lb.text() for lb in lbs]
    return texts[0] if all(t == texts[0] for t in texts) else None


def settle(lbs, what, must=lambda t: True):
    """Waits until all LBs' files are identical (and `must` holds); returns the text."""
    deadline = time.time() + BOUND
    while time.time() < deadline:
        t = common_text(lbs)
        if t is not None and must(t):
            return t
        time.sleep(0.05)
    raise RuntimeError(f"{what}: the LBs' configs never became identical")


def measure(lbs, before, change):
    """Makes the change; returns (change -> all identical, first -> all identical) in s."""
    first = None
    t0 = time.monotonic()
    change()
    deadline = t0 + BOUND
    while time.monotonic() < deadline:
        texts = [lb.text() for lb in lbs]
        now = time.monotonic()
        if first is None and any(t != before for t in texts):
            first = now
        if texts[0] != before and all(t == texts[0] for t in texts):
            return now - t0, now - first
        time.sleep(POLL)
    raise RuntimeError("the LBs' configs did not become identical with the change")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def stats(values):
    if not values:
        return "n/a"
    return (f"{statistics.median(values) * 1000:.0f} / {pct(values, 0.99) * 1000:.0f} / "
            f"{max(values) * 1000:.0f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lbs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", metavar="DIR", help="run in DIR (must not exist) and keep the logs")
    a = p.parse_args()
    for b, how in ((SHOAL_BIN, "cargo build --release -p shoal, or set SHOAL_BIN"),
                   (LBGEN_BIN, "cargo build --release -p lbgen, or set LBGEN_BIN")):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b}: not built ({how})")
    var_flags = []
    for kv in ("bind=127.0.0.1", f"http_port={free_port()}", f"stats_port={free_port()}",
               "stats_socket=unix@admin.sock", "server_state_file="):
        var_flags += ["--var", kv]
    load_before = open("/proc/loadavg").read().split()[:3]
    results = {}
    procs, servers, lbs = [], [], []
    if a.keep:
        os.makedirs(a.keep)
    with (contextlib.nullcontext(a.keep) if a.keep else tempfile.TemporaryDirectory()) as workdir:
        try:
            seed = f"{NET}.1:7946"
            for n in range(1, a.lbs + 1):
                lbs.append(Lb(workdir, n, ["--join", seed] if n > 1 else [], var_flags))

            def backend(name, n, tags):
                ip = f"{NET}.{n}"
                servers.append(serve(ip))
                flags = ["--join", seed, "--tag", f"port={WEB_PORT}", "--tag", "check=/health"]
                for t in tags:
                    flags += ["--tag", t]
                b = agent(workdir, name, ip, flags)
                procs.append(b)
                return b

            web1 = backend("web-1", 11, ["service=web"])
            web2 = backend("web-2", 12, ["service=web"])
            before = settle(lbs, "start", lambda t: "server web-1 " in t and "server web-2 " in t)

            def record(kind, change, must):
                nonlocal before
                total, skew = measure(lbs, before, change)
                before = settle(lbs, kind, must)
                results.setdefault(kind, []).append((total, skew))

            for r in range(a.rounds):
                w = 50 if r % 2 == 0 else 100
                record("tag change (weight)", lambda: cli(web1, "tags", "--set", f"weight={w}"),
                       lambda t: f"server web-1 {NET}.11:{WEB_PORT} weight {w} " in t)
                record("drain (state=draining)", lambda: cli(web2, "tags", "--set", "state=draining"),
                       lambda t: f"server web-2 {NET}.12:{WEB_PORT} weight 0 " in t)
                record("ready again (state=ready)", lambda: cli(web2, "tags", "--set", "state=ready"),
                       lambda t: f"server web-2 {NET}.12:{WEB_PORT} weight 100 " in t)
                extra = {}
                record("backend joins a pool", lambda: extra.setdefault(
                    "b", backend(f"web-x{r}", 20 + r, ["service=web"])),
                    lambda t: f"server web-x{r} " in t)
                record("backend leaves (SIGTERM)", lambda: extra["b"].signal(signal.SIGTERM),
                       lambda t: f"server web-x{r} " not in t)
                record("new pool joins (reload)", lambda: extra.setdefault(
                    "p", backend(f"api-{r}", 60 + r, [f"service=api{r}", f"route=/api{r}"])),
                    lambda t: f"backend api{r}" in t)
                record("pool's only member leaves (SIGTERM; pool stays, 503)",
                       lambda: extra["p"].signal(signal.SIGTERM),
                       lambda t: f"server api-{r} " not in t and f"\nbackend api{r}\n" in t)
                k = backend(f"web-k{r}", 100 + r, ["service=web"])
                before = settle(lbs, "kill setup", lambda t: f"server web-k{r} " in t)
                record("kill -9 (detection included)", lambda: k.signal(signal.SIGKILL),
                       lambda t: f"server web-k{r} " not in t)
            # An LB that starts now, after every api pool's only member left: its agent's
            # join sync carries those left members, so it must have the same pools (503).
            t0 = time.monotonic()
            late = Lb(workdir, a.lbs + 1, ["--join", seed], var_flags)
            lbs.append(late)
            target = lbs[0].text()
            while late.text() != target:
                if time.monotonic() - t0 > BOUND:
                    raise RuntimeError("the late LB's config never matched the others'")
                time.sleep(POLL)
            late_ms = (time.monotonic() - t0) * 1000
            late_pools = sum(1 for r in range(a.rounds) if f"\nbackend api{r}\n" in target)
        finally:
            for lb in lbs:
                lb.stop()
            for b in procs:
                b.stop()
            for s in servers:
                s.shutdown()
    load_after = open("/proc/loadavg").read().split()[:3]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    haproxy_v = " ".join(subprocess.run([HAPROXY, "-v"], capture_output=True,
                                        text=True).stdout.split()[:3])
    all_but_kill = [x for k, v in results.items() if not k.startswith("kill") for x in v]
    rows = [(k, len(v), stats([x[0] for x in v]), stats([x[1] for x in v]))
            for k, v in results.items()]
    rows.append(("**every change but kill -9**", len(all_but_kill),
                 stats([x[0] for x in all_but_kill]), stats([x[1] for x in all_but_kill])))
    every = [x for v in results.values() for x in v]
    rows.append(("**every change**", len(every), "", stats([x[1] for x in every])))
    lines = [
        f"Command: `python3 bench/twin_lbs.py --lbs {a.lbs} --rounds {a.rounds}` ({a.lbs} LBs, each a "
        f"real `shoal agent` + `lbgen watch` with its defaults + HAProxy, release builds, "
        f"`local` profile on {NET}.x). Measured {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
        f"commit {commit}, {os.cpu_count()} cores, {haproxy_v}. Load average (1/5/15 min) "
        f"before: {' '.join(load_before)}, after: {' '.join(load_after)}.",
        "",
        "p50 / p99 / max in ms; files polled every 2 ms:",
        "",
        "| change | n | change → all LBs identical | first LB changed → all identical |",
        "| --- | --- | --- | --- |",
    ] + [f"| {k} | {n} | {t} | {s} |" for k, n, t, s in rows] + [
        "",
        f"An LB started after the rounds (its agent, HAProxy and lbgen; {late_pools} pools whose "
        f"only member left, each answering 503): its file byte-identical with the others' "
        f"{late_ms:.0f} ms after it was started.",
    ]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        replace_section("twin_lbs.py", text + "\n")


if __name__ == "__main__":
    main()
