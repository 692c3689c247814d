#!/usr/bin/env python3
"""`docker restart lb` of the compose demo (one LB) under load: how soon it serves again.

Starts the demo (compose/docker-compose.yml) with 2 webapps on a fixed 127.0.0.1 port (a
restart keeps it: port 0 could move), puts a closed-loop GET / load on the LB (4 workers,
from this host), probes HAProxy's stats page every 10 ms, then runs `docker restart` of the
lb container --rounds times. Two probes (every 10 ms, 250 ms timeout, each request on a
new connection) tell when the LB is back, by their answers' own times: HAProxy's stats
page, and `/` answered by a webapp through it. The load's own first answers would not: its
workers' requests sent while the container starts again wait in Docker's port proxy, whose
dial to the container is answered on a SYN retransmit ~1 s later (the "slowest request").
For each round:

  refused    requests that failed (refused, reset, empty answer, 5xx) from the command
             to the first answer served by a webapp
  up->served HAProxy up again (the stats probe's first answer) -> `/` served by a webapp
             (the other probe's first answer) (s): the time HAProxy listens without serving
  cmd->served `docker restart` returned -> `/` served again (s)
  gap        the longest time with no request served, around the restart (s)
  slowest    the longest request: without a listener a request may hang rather than fail

Prints a table and writes it to bench/results/RESULTS.md (section lb_restart.py). Needs the
images: docker/build-images.sh (SHOAL_IMAGE_TAG as for the demo). The project is removed on
exit, error or Ctrl-C; every loop is bounded (--max-seconds). Takes the e2e tests' machine
lock (see dns_rival.py).
"""

import argparse
import http.client
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dns_rival import MachineLock, sh  # noqa: E402  (bench/dns_rival.py)
from results_section import replace_section  # noqa: E402  (bench/results_section.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    """A port free on 127.0.0.1 now (the kernel's pick), for a mapping that survives restarts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout):
    """GET on a new connection: (status, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


class Bed:
    """The demo project, its load and the stats-page probe; every sample is kept."""

    def __init__(self, deadline):
        self.project = f"shoal-lbrestart-{os.getpid()}"
        self.file = os.path.join(ROOT, "compose", "docker-compose.yml")
        self.http_port, self.stats_port = free_port(), free_port()
        self.env = dict(
            os.environ,
            LB_HTTP_PORT=str(self.http_port),
            LB_STATS_PORT=str(self.stats_port),
            LB_STATUS_PORT="0",
        )
        self.deadline = deadline
        self.lock = threading.Lock()
        self.samples = []  # (sent_at, done_at, served: bool, error or None)
        self.probes = {"/;csv": [], "/": []}  # path -> [(sent_at, answered_at or None)]
        self.stop = threading.Event()
        self.threads = []

    def compose(self, *args, timeout=180):
        return sh(["docker-compose", "-p", self.project, "-f", self.file, *args], self.env, timeout)

    def worker(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            t = time.monotonic()
            served, err = False, None
            try:
                status, body = get(self.http_port, "/", timeout=5)
                served = status == 200 and '"hostname":"' in body
                if not served:
                    err = f"status {status}"
            except (OSError, http.client.HTTPException) as e:
                err = type(e).__name__
            with self.lock:
                self.samples.append((t, time.monotonic(), served, err))
            # A refused connection returns at once: pace the loop so a down LB is not a
            # busy loop (and the counts mean something).
            time.sleep(0.01 if served else 0.005)

    def prober(self, port, path):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            t = time.monotonic()
            try:
                ok = get(port, path, timeout=0.25)[0] == 200
            except (OSError, http.client.HTTPException):
                ok = False
            with self.lock:
                self.probes[path].append((t, time.monotonic() if ok else None))
            time.sleep(0.01)

    def answered_again(self, path, since):
        """The path's first answer to a request sent after its first miss since `since`."""
        with self.lock:
            probes = [p for p in self.probes[path] if p[0] >= since]
        down_at = next((sent for sent, done in probes if done is None), None)
        if down_at is None:
            return None
        return min((done for sent, done in probes if sent > down_at and done), default=None)

    def start(self, workers):
        self.compose("up", "-d", "--no-build", "--scale", "webapp=2")
        probers = [
            lambda: self.prober(self.stats_port, "/;csv"),
            lambda: self.prober(self.http_port, "/"),
        ]
        for f in probers + [self.worker] * workers:
            th = threading.Thread(target=f, daemon=True)
            th.start()
            self.threads.append(th)

    def wait(self, what, pred, timeout=90):
        end = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")

    def served_since(self, t):
        with self.lock:
            return [s for s in self.samples if s[0] >= t and s[2]]

    def round(self):
        """One `docker restart lb`; its figures."""
        lb = self.compose("ps", "-q", "lb").strip()
        self.wait("the LB serving", lambda: len(self.served_since(time.monotonic() - 1)) > 5)
        time.sleep(1)
        t0 = time.monotonic()
        sh(["docker", "restart", "-t", "25", lb], timeout=120)
        t1 = time.monotonic()
        self.wait("served after the restart", lambda: self.served_since(t1))
        time.sleep(0.5)
        with self.lock:
            samples = [s for s in self.samples if s[0] >= t0 - 0.5]
        up_at = self.answered_again("/;csv", t0)
        served_at = self.answered_again("/", t0)
        first_served = min(s[1] for s in samples if s[2] and s[0] >= t1)
        # The last request served before the LB stopped listening.
        before = [s[1] for s in samples if s[2] and s[1] < first_served and s[0] < t1]
        last_before = max(before) if before else t0
        failed = [s for s in samples if s[3] and last_before <= s[1] <= first_served]
        # Without a listener a request may not fail but hang (the host's SYN to a stopped
        # container is retried): the longest wait of a request around the restart.
        slowest = max((s[1] - s[0] for s in samples if s[0] >= t0 - 0.5), default=0.0)
        served = sorted(s[1] for s in samples if s[2])
        gap = max((b - a for a, b in zip(served, served[1:])), default=0.0)
        return {
            "slowest": slowest,
            "gap": gap,
            "failed": len(failed),
            "failed_after_up": sum(1 for s in failed if up_at is not None and s[0] >= up_at),
            "up_served": None if None in (up_at, served_at) else max(0.0, served_at - up_at),
            "cmd_served": None if served_at is None else served_at - t1,
            "errors": sorted({s[3] for s in failed})[:3],
            "restart_cmd": t1 - t0,
        }

    def down(self):
        self.stop.set()
        for th in self.threads:
            th.join(timeout=10)
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=120)
        except Exception as e:
            print(f"cleanup of {self.project}: {e}", file=sys.stderr)


def fmt(v, f="{:.2f}"):
    return "-" if v is None else f.format(v)


def table(rounds, command):
    out = [
        f"`docker restart` of the demo's only LB under load (2 webapps, 4 closed-loop clients from "
        f"the host; {time.strftime('%Y-%m-%d')}, `{command}`). HAProxy up = its stats page "
        "answers again, served = `/` answers again (two probes, by their answers' times; the "
        "slowest request is the load's, held in Docker's port proxy while the container starts).",
        "",
        "| round | restart command (s) | HAProxy up → `/` served (s) | `docker restart` returned → "
        "`/` served (s) | longest time nothing was served (s) | slowest request (s) | failed "
        "requests | of them sent after HAProxy was up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rounds, 1):
        out.append(
            f"| {i} | {fmt(r['restart_cmd'])} | {fmt(r['up_served'], '{:.3f}')} | "
            f"{fmt(r['cmd_served'], '{:.3f}')} | {fmt(r['gap'])} | {fmt(r['slowest'])} | {r['failed']} | "
            f"{r['failed_after_up']} |"
        )
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="restarts (1-10)")
    ap.add_argument("--workers", type=int, default=4, help="load workers (1-32)")
    ap.add_argument("--max-seconds", type=float, default=300, help="bound on the whole run")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 10:
        ap.error(f"--rounds must be from 1 to 10, not {a.rounds}")
    if not 1 <= a.workers <= 32:
        ap.error(f"--workers must be from 1 to 32, not {a.workers}")
    if not 30 <= a.max_seconds <= 1800:
        ap.error(f"--max-seconds must be from 30 to 1800, not {a.max_seconds}")
    lock = MachineLock(timeout=1800)
    bed = Bed(time.monotonic() + a.max_seconds)
    rounds = []
    try:
        bed.start(a.workers)
        for _ in range(a.rounds):
            rounds.append(bed.round())
            print(rounds[-1], file=sys.stderr)
    finally:
        bed.down()
        lock.release()
    text = table(rounds, "python3 bench/lb_restart.py")
    print(text)
    if not a.no_write:
        replace_section("lb_restart.py", "## `docker restart` of the only LB (`bench/lb_restart.py`)\n\n" + text)


if __name__ == "__main__":
    main()
