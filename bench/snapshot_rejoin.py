#!/usr/bin/env python3
"""Snapshot rejoin (issue 16): how soon a restarted agent whose join name
does not resolve is back in its cluster and synced, from its --snapshot.

Per round: `lb` runs; `web` (with --snapshot) joins it and is killed -9; lb
holds it failed and is told `force-leave web` (so lb does not reach out by
itself); `web` is started again with `--join lb.invalid` (a name that never
resolves) and the same snapshot. Measured: process start -> `/v1/info`
says synced and lists lb alive. Both run --profile lan (the default).

Usage: bench/snapshot_rejoin.py [--rounds 10] [--bin target/release/shoal]
       [--no-results]   (else the section `snapshot_rejoin.py` of
                         bench/results/RESULTS.md is rewritten)
Traffic stays on 127.0.0.0/8; every process started is killed.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from results_section import replace_section  # noqa: E402

LB, WEB = "127.0.9.1", "127.0.9.2"


def agent(bin_, name, ip, extra, log):
    return subprocess.Popen(
        [bin_, "agent", "--node", name, "--bind", f"{ip}:7946", "--api", f"{ip}:7373"] + extra,
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)


def get(ip, path):
    try:
        with urllib.request.urlopen(f"http://{ip}:7373{path}", timeout=1) as r:
            return json.load(r)
    except Exception:
        return None


def wait(cond, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def status(ip, name):
    doc = get(ip, "/v1/members") or {}
    return next((m["status"] for m in doc.get("members", []) if m["name"] == name), None)


def stop(p):
    if p and p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def round_(bin_, snap, log):
    lb = web = None
    try:
        lb = agent(bin_, "lb", LB, [], log)
        web = agent(bin_, "web", WEB, ["--join", f"{LB}:7946", "--snapshot", snap], log)
        assert wait(lambda: status(LB, "web") == "alive", 15), "web never joined"
        assert wait(lambda: '"lb"' in open(snap).read() if os.path.exists(snap) else False, 10)
        stop(web)
        assert wait(lambda: status(LB, "web") == "failed", 30), "web never failed"
        subprocess.run([bin_, "--api", f"{LB}:7373", "force-leave", "web"], check=True,
                       stdout=subprocess.DEVNULL, timeout=20)
        t0 = time.monotonic()
        web = agent(bin_, "web", WEB, ["--join", "lb.invalid", "--snapshot", snap], log)
        ok = wait(lambda: (get(WEB, "/v1/info") or {}).get("synced") is True
                  and status(WEB, "lb") == "alive", 20)
        assert ok, "web did not rejoin from its snapshot"
        return time.monotonic() - t0
    finally:
        stop(web)
        stop(lb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "shoal"))
    ap.add_argument("--no-results", action="store_true")
    a = ap.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "agents.log"), "w") as log:
            for i in range(a.rounds):
                snap = os.path.join(d, f"snap{i}.json")
                times.append(round_(a.bin, snap, log))
                print(f"round {i + 1}: synced {times[-1] * 1000:.0f} ms after the restart")
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms)
    body = (
        f"Restart with a join name that never resolves, rejoined from `--snapshot` "
        f"(`bench/snapshot_rejoin.py --rounds {a.rounds}`, `{os.path.relpath(a.bin, ROOT)}`, "
        f"LAN profile, loopback, {time.strftime('%Y-%m-%d')}): start -> synced with lb alive "
        f"p50 {p50:.0f} ms, max {ms[-1]:.0f} ms (min {ms[0]:.0f} ms)."
    )
    print(body)
    if not a.no_results:
        replace_section("snapshot_rejoin.py", body)


if __name__ == "__main__":
    main()
