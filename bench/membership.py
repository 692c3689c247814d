#!/usr/bin/env python3
"""shoal vs Serf, side by side, on the same loopback setup (issue 3's benchmark).

Both run N agents with their default (LAN) profile and the *same* event
handler script, which appends `<unix time> <event> <member line>` to a file.
Measured, per system, over several rounds:

  join   : process start of a new agent  -> member-join handler at node 1
  failed : kill -9 of an agent           -> member-failed handler at node 1
  leave  : SIGTERM of an agent           -> member-leave handler at node 1
  RSS and CPU per agent at idle
  false failures under 10% packet loss (nftables in a private network
  namespace; this kernel has no netem), for --loss-seconds

Usage: bench/membership.py [--nodes 5] [--rounds 5] [--loss-seconds 300]
Needs: target/static/shoal (docker/build-binaries.sh), serf (apt-get install
serf), and for the loss run root + nftables + iproute2. Traffic stays on
127.0.0.0/8 (and inside the namespace). Every process started is killed.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "bench", "results")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_section import replace_section  # noqa: E402  (bench/results_section.py)
# The static release build the images ship (docker/build-binaries.sh).
SHOAL_BIN = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target/static/shoal"))
HANDLER = """#!/bin/sh
now=$(date +%s.%N)
while IFS= read -r line; do echo "$now $SERF_EVENT $line" >> "$1"; done
"""


class Cluster:
    """N agents of one system on 127.0.<net>.x; `ns` runs them in a netns."""

    def __init__(self, system, n, net, workdir, ns=None):
        self.system, self.n, self.net, self.ns = system, n, net, ns
        self.dir = os.path.join(workdir, f"{system}-{net}")
        os.makedirs(self.dir, exist_ok=True)
        self.handler = os.path.join(self.dir, "handler.sh")
        with open(self.handler, "w") as f:
            f.write(HANDLER)
        os.chmod(self.handler, 0o755)
        self.procs = {}

    def ip(self, i):
        return f"127.0.{self.net}.{i}"

    def events_file(self, i):
        return os.path.join(self.dir, f"events-{i}.txt")

    def start(self, i):
        name = f"{self.system[0]}{i}"
        ev = self.events_file(i)
        seed = self.ip(1) if i != 1 else self.ip(2)
        cmd, env = agent_command(self.system, SHOAL_BIN, name, self.ip(i), seed,
                                 f"{self.handler} {ev}")
        if self.ns:
            cmd = ["ip", "netns", "exec", self.ns] + cmd
        log = open(os.path.join(self.dir, f"agent-{i}.log"), "a")
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, env=env,
                                         start_new_session=True)
        return name

    def stop(self, i, sig):
        p = self.procs.pop(i, None)
        if p is None:
            return
        os.killpg(p.pid, sig) if sig == signal.SIGKILL else p.send_signal(sig)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for i in list(self.procs):
            self.stop(i, signal.SIGKILL)

    def agent_pid(self, i):
        """The agent's own pid (under `ip netns exec` it is the same process)."""
        return self.procs[i].pid

    def events(self, i):
        try:
            with open(self.events_file(i)) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) >= 3:
                out.append((float(parts[0]), parts[1], parts[2]))
        return out

    def wait_event(self, observer, kind, name, after, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t, k, n in self.events(observer):
                if k == kind and n == name and t >= after:
                    return t - after
            time.sleep(0.005)
        return None


class MemoryReadError(RuntimeError):
    """A memory figure could not be read: an error, never a "0.0 MB" figure."""


def rss_kb(pid, field="VmRSS:"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError) as e:
        raise MemoryReadError(f"{field} of pid {pid}: {e}") from e
    raise MemoryReadError(f"no {field} line in /proc/{pid}/status")


def agent_command(system, shoal_bin, name, ip, seed_ip, handler, port=7946, api=7373):
    """The command line and environment of one agent, shoal or Serf, each with
    its default (LAN) timing, quiet logs and the given event handler; shared by
    both benches so they run the two systems the same way."""
    if system == "shoal":
        cmd = [shoal_bin, "agent", "--node", name,
               "--bind", f"{ip}:{port}", "--api", f"{ip}:{api}",
               "--join", f"{seed_ip}:{port}", "--event-handler", handler]
        return cmd, dict(os.environ, SHOAL_LOG="warn")
    cmd = ["serf", "agent", f"-node={name}", f"-bind={ip}:{port}",
           f"-rpc-addr={ip}:{api}", f"-retry-join={seed_ip}:{port}",
           "-retry-interval=1s", f"-event-handler={handler}", "-log-level=warn"]
    return cmd, dict(os.environ)


def pss_kb(pid):
    """Proportional set size: shared pages (the binary, libc) split between
    the processes that map them, so N agents of one binary sum to their
    real footprint."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError) as e:
        raise MemoryReadError(f"Pss of pid {pid}: {e}") from e
    raise MemoryReadError(f"no Pss line in /proc/{pid}/smaps_rollup")


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def fmt(values, unit="s"):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if unit == "s":
        return f"{statistics.median(vals):.3f} s (max {max(vals):.3f}, n={len(vals)})"
    return f"{statistics.median(vals):.1f} {unit}"


def measure(system, args, workdir, net):
    c = Cluster(system, args.nodes, net, workdir)
    res = {"join": [], "failed": [], "leave": [], "missed": 0}
    try:
        for i in range(1, args.nodes + 1):
            c.start(i)
        last = args.nodes
        name = f"{system[0]}{last}"
        # Wait for the initial cluster to form.
        if c.wait_event(1, "member-join", name, 0, timeout=30) is None:
            # Not a row of zeros: without a cluster nothing below means anything.
            raise SystemExit(f"{system}: the cluster did not form")
        time.sleep(2)
        # Idle cost.
        pids = [c.agent_pid(i) for i in range(1, args.nodes + 1)]
        t0 = [cpu_ticks(p) for p in pids]
        time.sleep(args.idle_seconds)
        t1 = [cpu_ticks(p) for p in pids]
        hz = os.sysconf("SC_CLK_TCK")
        res["rss_kb"] = statistics.median(rss_kb(p) for p in pids)
        res["anon_kb"] = statistics.median(rss_kb(p, "RssAnon:") for p in pids)
        res["pss_kb"] = statistics.median(pss_kb(p) for p in pids)
        res["cpu_pct"] = statistics.median((b - a) / hz / args.idle_seconds * 100
                                           for a, b in zip(t0, t1))
        for r in range(args.rounds):
            print(f"  {system} round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
            # kill -9 -> failed
            t = time.time()
            c.stop(last, signal.SIGKILL)
            res["failed"].append(c.wait_event(1, "member-failed", name, t))
            # restart -> join (the old entry is failed; the restart is a new process)
            time.sleep(1)
            t = time.time()
            c.start(last)
            res["join"].append(c.wait_event(1, "member-join", name, t))
            time.sleep(1.5)
            # Graceful stop -> leave. Serf leaves on SIGINT (SIGTERM only with
            # leave_on_terminate); shoal leaves on both.
            t = time.time()
            c.stop(last, signal.SIGTERM if system == "shoal" else signal.SIGINT)
            res["leave"].append(c.wait_event(1, "member-leave", name, t))
            time.sleep(1)
            c.start(last)
            c.wait_event(1, "member-join", name, time.time() - 0.5, timeout=30)
            time.sleep(2)
    finally:
        c.stop_all()
    return res


def loss_run(args, workdir):
    """Both systems in one namespace with 10% loss on every packet; count false failures."""
    ns = f"shoalbench{os.getpid()}"
    need = ["ip", "nft"]
    if any(shutil.which(x) is None for x in need) or os.geteuid() != 0:
        print("loss run skipped: needs root, iproute2 and nftables", file=sys.stderr)
        return None
    subprocess.run(["ip", "netns", "add", ns], check=True)
    clusters = []
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        rules = ("add table inet loss\n"
                 "add chain inet loss out { type filter hook output priority 0; }\n"
                 f"add rule inet loss out numgen random mod 100 < {args.loss} drop\n")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules.encode(), check=True)
        for system, net in (("shoal", 11), ("serf", 12)):
            c = Cluster(system, args.nodes, net, workdir, ns=ns)
            for i in range(1, args.nodes + 1):
                c.start(i)
            clusters.append(c)
        time.sleep(10)  # form the clusters (under loss too)
        # Zero false failures mean nothing if the clusters never formed: every node must
        # have seen every other join before the count starts.
        for c in clusters:
            missing = [(i, j) for i in range(1, args.nodes + 1) for j in range(1, args.nodes + 1)
                       if i != j and c.wait_event(i, "member-join", f"{c.system[0]}{j}", 0,
                                                  timeout=60) is None]
            if missing:
                raise SystemExit(f"loss run: the {c.system} cluster did not form under "
                                 f"{args.loss}% loss (observer, member not joined): {missing}")
        start = time.time()
        end = start + args.loss_seconds
        while time.time() < end:
            left = int(end - time.time())
            print(f"  loss run: {left:4d} s left", file=sys.stderr, end="\r", flush=True)
            time.sleep(min(10, max(0.1, end - time.time())))
        print(file=sys.stderr)
        out = {}
        for c in clusters:
            false_failed = 0
            for i in range(1, args.nodes + 1):
                false_failed += sum(1 for t, k, _ in c.events(i) if k == "member-failed" and t >= start)
            out[c.system] = false_failed
        return out
    finally:
        for c in clusters:
            c.stop_all()
        subprocess.run(["ip", "netns", "del", ns])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--loss", type=int, default=10, help="packet loss percent for the loss run")
    ap.add_argument("--loss-seconds", type=float, default=300, help="0 skips the loss run")
    args = ap.parse_args()
    if args.nodes < 2:
        ap.error("--nodes must be at least 2")
    if not 0 <= args.loss < 100:
        ap.error("--loss must be in 0..99")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not os.path.exists(SHOAL_BIN):
        ap.error(f"build first: docker/build-binaries.sh ({SHOAL_BIN} not found)")
    if shutil.which("serf") is None:
        ap.error("serf not found: apt-get install serf")
    workdir = tempfile.mkdtemp(prefix="shoal-bench-")
    results = {}
    for system, net in (("shoal", 101), ("serf", 102)):
        print(f"measuring {system} ({args.nodes} agents, {args.rounds} rounds)...", file=sys.stderr)
        results[system] = measure(system, args, workdir, net)
    loss = loss_run(args, workdir) if args.loss_seconds > 0 else None

    sh, sf = results["shoal"], results["serf"]
    out = [f"{args.nodes} agents on loopback, default profile, same handler script; "
           f"median (max) over {args.rounds} rounds ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"{os.cpu_count()} cores)", "",
           "| measure | shoal | Serf |", "|---|---|---|"]
    for key, label in (("failed", "kill -9 -> member-failed"),
                       ("leave", "graceful stop -> member-leave"),
                       ("join", "start -> member-join")):
        out.append(f"| {label} | {fmt(sh[key])} | {fmt(sf[key])} |")
    out.append(f"| RSS per agent, idle | {sh['rss_kb'] / 1024:.1f} MB | {sf['rss_kb'] / 1024:.1f} MB |")
    out.append(f"| private (anonymous) memory per agent | {sh['anon_kb'] / 1024:.1f} MB "
               f"| {sf['anon_kb'] / 1024:.1f} MB |")
    out.append(f"| PSS per agent ({args.nodes} agents share the binary's pages) | "
               f"{sh['pss_kb'] / 1024:.1f} MB | {sf['pss_kb'] / 1024:.1f} MB |")
    out.append(f"| CPU per agent, idle | {sh['cpu_pct']:.2f} % | {sf['cpu_pct']:.2f} % |")
    if loss is not None:
        out.append(f"| false member-failed, {args.loss}% loss, {args.loss_seconds:.0f} s | "
                   f"{loss['shoal']} | {loss['serf']} |")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "membership.md"), "w") as f:
        f.write(text)
    replace_section("membership.py", text)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
