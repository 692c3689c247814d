#!/usr/bin/env python3
"""The supervisor's join and drain figures (issue 14), before and after, in one run.

join : a supervised app opens its port 0.5 s after it starts; measured at a
       second agent (its /v1/members polled every 5 ms):
         app start  -> state=ready there
         port open  -> state=ready there
       before: health checks at the interval from the start (the old pace,
       set by config: --check-start-interval = --check-interval = 2s);
       after : the default, checks every 100 ms until the first pass.
drain: SIGTERM to the agent -> the app got SIGTERM (it writes the time),
       with no request in flight and with one request still running 2 s;
         before: the old timer (no `port` tag: the whole --drain 3s);
         after : the default drain (tag port, --drain-grace 1s, --drain 3s max).
       With the request, also: its last byte -> the app's SIGTERM. And once:
       a 30 s download in flight with --drain 40s completes.

Usage: bench/supervisor.py [--rounds 5] [--no-write]
Needs: a release build (cargo build --release -p shoal, or SHOAL_BIN) and
python3. Traffic stays on 127.0.92.0/24. Every process started is stopped.
Prints a Markdown table and writes it into bench/results/RESULTS.md
(section supervisor.py) unless --no-write.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_section import replace_section  # noqa: E402

SHOAL_BIN = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target/release/shoal"))
APP = os.path.join(ROOT, "agent/tests/fixtures/apps/slow_http.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
NET = "127.0.92"
PORT = 8080
BOUND = 60.0  # the longest wait for anything, in seconds


def read_stamp(path, within=5.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with open(path) as f:
                return float(f.read().strip())
        except (OSError, ValueError):
            time.sleep(0.005)
    raise RuntimeError(f"{path} never written")


class Agent:
    def __init__(self, workdir, name, ip, flags, app_args=None):
        self.name, self.ip = name, ip
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        cmd = [SHOAL_BIN, "agent", "--node", name, "--profile", "local",
               "--bind", f"{ip}:7946", "--api", f"{ip}:7373",
               "--leave-timeout", "1s"] + flags
        if app_args is not None:
            cmd += ["--", PYTHON, APP, "--bind", ip, "--port", str(PORT)] + app_args
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + BOUND
        while time.time() < deadline:
            try:
                socket.create_connection((ip, 7373), timeout=1).close()
                return
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"agent {name} never opened its API")

    def members(self):
        with urllib.request.urlopen(f"http://{self.ip}:7373/v1/members", timeout=5) as r:
            return json.load(r)["members"]

    def terminate(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=BOUND)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()


def join_round(workdir, observer, i, flags):
    opened = os.path.join(workdir, f"opened-{i}")
    ip = f"{NET}.{10 + i}"
    check = f"http://{ip}:{PORT}/health"
    b = Agent(workdir, f"join-{i}", ip,
              ["--join", f"{observer.ip}:7946", "--check", check] + flags,
              ["--delay", "0.5", "--opened-file", opened])
    try:
        deadline = time.time() + BOUND
        while time.time() < deadline:
            if any(m["name"] == b.name and m["tags"].get("state") == "ready"
                   for m in observer.members()):
                ready = time.time()
                return ready - b.started, ready - read_stamp(opened)
            time.sleep(0.005)
        raise RuntimeError(f"{b.name} never ready at {observer.name}")
    finally:
        b.terminate()
        b.stop()


def hold_request(ip, ms):
    """Opens /slow?ms=MS; returns a thread and a dict that gets 'end'."""
    s = socket.create_connection((ip, PORT), timeout=BOUND)
    s.sendall(f"GET /slow?ms={ms} HTTP/1.0\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\na"):
        b = s.recv(1)
        if not b:
            raise RuntimeError("the app closed before answering")
        head += b
    out = {}

    def rest():
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        if data == b"\n":
            out["end"] = time.time()
        s.close()

    t = threading.Thread(target=rest)
    t.start()
    return t, out


def drain_round(workdir, i, flags, request_ms):
    term = os.path.join(workdir, f"term-{i}")
    ip = f"{NET}.{100 + i}"
    b = Agent(workdir, f"drain-{i}", ip, flags, ["--term-file", term])
    try:
        deadline = time.time() + BOUND
        while True:
            try:
                urllib.request.urlopen(f"http://{ip}:{PORT}/health", timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the app never answered")
                time.sleep(0.01)
        req = hold_request(ip, request_ms) if request_ms else None
        sigterm = time.time()
        b.terminate()
        app_term = read_stamp(term)
        after_end = None
        if req:
            req[0].join(timeout=BOUND)
            if "end" in req[1]:
                after_end = app_term - req[1]["end"]
        return app_term - sigterm, after_end
    finally:
        b.stop()


def ms(values):
    values = sorted(values)
    return f"{statistics.median(values) * 1000:.0f} ms (min {values[0] * 1000:.0f}, max {values[-1] * 1000:.0f})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if not os.access(SHOAL_BIN, os.X_OK):
        sys.exit(f"{SHOAL_BIN}: not built (cargo build --release -p shoal, or set SHOAL_BIN)")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        observer = Agent(workdir, "observer", f"{NET}.1", [])
        try:
            for label, flags in [
                ("before: checks at the interval (`--check-interval 2s --check-start-interval 2s`)",
                 ["--check-interval", "2s", "--check-start-interval", "2s"]),
                ("after: fast start checks (`--check-interval 2s`, start interval 100ms)",
                 ["--check-interval", "2s"]),
            ]:
                res = [join_round(workdir, observer, n + (0 if "before" in label else 50), flags)
                       for n in range(a.rounds)]
                rows.append((f"join, {label}: app start → `ready` at a second agent", ms([r[0] for r in res])))
                rows.append((f"join, {label}: port open → `ready` at a second agent", ms([r[1] for r in res])))
        finally:
            observer.stop()
        n = 0
        for label, flags in [
            ("before: timer (no `port` tag, `--drain 3s`)", ["--drain", "3s"]),
            ("after: follows connections (`--tag port=8080 --drain 3s`, grace 1s)",
             ["--drain", "3s", "--tag", f"port={PORT}"]),
        ]:
            for request_ms in (0, 2000):
                res = []
                for _ in range(a.rounds):
                    n += 1
                    res.append(drain_round(workdir, n, flags, request_ms))
                what = "one 2 s request in flight" if request_ms else "no request in flight"
                rows.append((f"drain, {label}, {what}: SIGTERM → app SIGTERM", ms([r[0] for r in res])))
                ends = [r[1] for r in res if r[1] is not None]
                if request_ms:
                    cut = sum(1 for r in res if r[1] is None)
                    rows.append((f"drain, {label}, {what}: request's last byte → app SIGTERM",
                                 ms(ends) if ends else "n/a"))
                    rows.append((f"drain, {label}, {what}: requests cut short", f"{cut} of {len(res)}"))
        # The long download: one round, it takes 30 s.
        n += 1
        waited, after_end = drain_round(
            workdir, n, ["--drain", "40s", "--tag", f"port={PORT}"], 30_000)
        what = "one 30 s download in flight, `--tag port=8080 --drain 40s`"
        rows.append((f"drain, after, {what}: completed", "yes" if after_end is not None else "no (cut)"))
        rows.append((f"drain, after, {what}: SIGTERM → app SIGTERM", f"{waited * 1000:.0f} ms (1 round)"))
        if after_end is not None:
            rows.append((f"drain, after, {what}: last byte → app SIGTERM", f"{after_end * 1000:.0f} ms (1 round)"))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    lines = [
        f"Command: `python3 bench/supervisor.py --rounds {a.rounds}` (real `shoal agent` release "
        f"build on {NET}.x, the test app `agent/tests/fixtures/apps/slow_http.py`). Measured "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit}. Median (min, max) over "
        f"{a.rounds} rounds:",
        "",
        "| measured | result |",
        "| --- | --- |",
    ] + [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        replace_section("supervisor.py", text + "\n")


if __name__ == "__main__":
    main()
