#!/usr/bin/env python3
"""User events and queries, shoal vs Serf, side by side in one run (issue 16).

Both systems run N agents on loopback with their default (LAN) profile and
the *same* handler script, registered for every event: a user event appends
`<unix time> <name>` to a file, a query prints `ok` (the response).
Measured, per system:

  event : `event -coalesce=false NAME` started -> the handler ran on every
          agent (per round: the last agent's delay; p50/p99 over rounds, and
          over all agent deliveries)
  query : `query NAME` started -> the CLI returned with every response.
          shoal ends as soon as every addressed member answered; Serf waits
          for its whole timeout (its default, gossip 200 ms x 16 x
          ceil(log10(N+1))), so fewer Serf rounds are run.

Usage: bench/userev.py [--nodes 50] [--rounds 30] [--serf-query-rounds 3]
                       [--no-results]
Also the simulated figure: one event in N = 1,000 members with 200 ms gossip
(`shoal-sim run --scenario user-event -n 1000`).

Needs: release builds of shoal and shoal-sim (SHOAL_BIN, SHOAL_SIM_BIN;
default target/release/) and serf (apt-get install serf). Traffic stays on 127.0.0.0/8; every process started
is killed; every loop is bounded in count and time.
"""

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from membership import agent_command  # noqa: E402  (same command lines as membership.py)
from results_section import replace_section  # noqa: E402

SHOAL_BIN = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target/release/shoal"))
SIM_BIN = os.environ.get("SHOAL_SIM_BIN", os.path.join(ROOT, "target/release/shoal-sim"))
HANDLER = """#!/bin/sh
# Serf-style: one script for every event, dispatching on SERF_EVENT.
case "$SERF_EVENT" in
  user) echo "$(date +%s.%N) $SERF_USER_EVENT" >> "$1" ;;
  query) cat >/dev/null; echo ok ;;
  *) cat >/dev/null ;;
esac
"""
RPC = 7373


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class Cluster:
    def __init__(self, system, n, net, workdir):
        self.system, self.n, self.net = system, n, net
        self.dir = os.path.join(workdir, system)
        os.makedirs(self.dir)
        self.handler = os.path.join(self.dir, "handler.sh")
        with open(self.handler, "w") as f:
            f.write(HANDLER)
        os.chmod(self.handler, 0o755)
        self.procs = []

    def ip(self, i):
        return f"127.0.{self.net}.{i}"

    def out(self, i):
        return os.path.join(self.dir, f"user-{i}.txt")

    def start(self):
        for i in range(1, self.n + 1):
            seed = self.ip(1) if i != 1 else self.ip(2)
            cmd, env = agent_command(self.system, SHOAL_BIN, f"{self.system[0]}{i}",
                                     self.ip(i), seed, f"{self.handler} {self.out(i)}")
            log = open(os.path.join(self.dir, f"agent-{i}.log"), "a")
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env,
                                               start_new_session=True))

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []

    def cli(self, args, timeout=60):
        if self.system == "shoal":
            cmd = [SHOAL_BIN, "--api", f"{self.ip(1)}:{RPC}"] + args
        else:
            cmd = ["serf"] + [args[0], f"-rpc-addr={self.ip(1)}:{RPC}"] + args[1:]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def alive_count(self):
        args = ["members", "--format", "json"] if self.system == "shoal" \
            else ["members", "-format=json"]
        try:
            r = self.cli(args, timeout=10)
        except subprocess.TimeoutExpired:
            return 0
        return r.stdout.count('"alive"')

    def wait_converged(self, limit=90):
        deadline = time.time() + limit
        while time.time() < deadline:
            if self.alive_count() == self.n:
                return True
            time.sleep(0.5)
        return False

    def deliveries(self, name):
        """Per agent, the time its handler saw event `name` (None if not)."""
        out = []
        for i in range(1, self.n + 1):
            t = None
            try:
                with open(self.out(i)) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) == 2 and parts[1] == name:
                            t = float(parts[0])
                            break
            except FileNotFoundError:
                pass
            out.append(t)
        return out

    def event_round(self, k, limit=10):
        name = f"bench{k}"
        args = ["event", "--coalesce=false", name] if self.system == "shoal" \
            else ["event", "-coalesce=false", name]
        t0 = time.time()
        r = self.cli(args)
        if r.returncode != 0:
            raise RuntimeError(f"{self.system} event failed: {r.stderr}")
        deadline = t0 + limit
        while time.time() < deadline:
            got = self.deliveries(name)
            if all(t is not None for t in got):
                return [t - t0 for t in got]
            time.sleep(0.01)
        got = self.deliveries(name)
        return [None if t is None else t - t0 for t in got]

    def query_round(self):
        t0 = time.time()
        if self.system == "shoal":
            r = self.cli(["query", "bench", "--format", "json"])
        else:
            r = self.cli(["query", "-format=json", "bench"])
        took = time.time() - t0
        responses = r.stdout.count('"ok')
        return took, responses


def measure(system, n, rounds, query_rounds, workdir, net):
    c = Cluster(system, n, net, workdir)
    try:
        c.start()
        if not c.wait_converged():
            raise RuntimeError(f"{system}: {n} agents did not converge in 90 s")
        time.sleep(2)
        last, every, missed = [], [], 0
        for k in range(rounds):
            d = c.event_round(k)
            missed += sum(1 for x in d if x is None)
            seen = [x for x in d if x is not None]
            every += seen
            if len(seen) == n:
                last.append(max(seen))
            time.sleep(0.3)
        queries, short = [], 0
        for _ in range(query_rounds):
            took, responses = c.query_round()
            queries.append(took)
            short += n - responses
            time.sleep(0.3)
        return {"last": last, "every": every, "missed": missed,
                "queries": queries, "short": short}
    finally:
        c.stop()


def ms(x):
    return f"{x * 1000:.0f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--query-rounds", type=int, default=30)
    ap.add_argument("--serf-query-rounds", type=int, default=3)
    ap.add_argument("--no-results", action="store_true",
                    help="print only; do not write bench/results/RESULTS.md")
    a = ap.parse_args()
    if not 2 <= a.nodes <= 200 or not 1 <= a.rounds <= 500:
        sys.exit("--nodes must be 2..200 and --rounds 1..500")
    if not os.access(SHOAL_BIN, os.X_OK):
        sys.exit(f"no shoal binary at {SHOAL_BIN} (cargo build --release -p shoal, or SHOAL_BIN)")
    if not os.access(SIM_BIN, os.X_OK):
        sys.exit(f"no shoal-sim binary at {SIM_BIN} (cargo build --release -p sim)")
    simulated = subprocess.run(
        [SIM_BIN, "run", "--scenario", "user-event", "-n", "1000", "--gossip-interval", "200"],
        capture_output=True, text=True, timeout=600, check=True).stdout.strip()
    print(simulated)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="userev-bench-") as work:
        rows["shoal"] = measure("shoal", a.nodes, a.rounds, a.query_rounds, work, 181)
        rows["serf"] = measure("serf", a.nodes, a.rounds, a.serf_query_rounds, work, 182)
    serf_version = subprocess.run(["serf", "version"], capture_output=True,
                                  text=True).stdout.splitlines()[0]
    lines = [
        f"User events and queries, {a.nodes} real agents of each on loopback, one run "
        f"(`bench/userev.py --nodes {a.nodes} --rounds {a.rounds}`), {serf_version} "
        f"beside shoal, both with their default LAN profile and one Serf-style handler "
        f"script. Event: from the CLI call to the handler having run on every agent; query: "
        f"from the CLI call to its return with every response.",
        "",
        "| | event: every agent, p50 | p99 | all deliveries p99 | missed | query: p50 | p99 | responses missing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, r in rows.items():
        lines.append(
            f"| {system} | {ms(pct(r['last'], 0.5))} | {ms(pct(r['last'], 0.99))} | "
            f"{ms(pct(r['every'], 0.99))} | {r['missed']} | {ms(pct(r['queries'], 0.5))} | "
            f"{ms(pct(r['queries'], 0.99))} | {r['short']} |")
    lines += ["", f"Serf's query waits for its whole default timeout "
              f"({len(rows['serf']['queries'])} rounds); shoal's ends when every addressed "
              f"member answered ({len(rows['shoal']['queries'])} rounds).",
              "", f"Simulated (`shoal-sim run --scenario user-event -n 1000 --gossip-interval 200`, "
              f"virtual time, 0.5-1 ms links): {simulated}."]
    text = "\n".join(lines)
    print(text)
    if not a.no_results:
        replace_section("userev.py", text)


if __name__ == "__main__":
    main()
