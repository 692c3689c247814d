#!/usr/bin/env python3
"""Real processes at scale: N shoal agents and N Serf agents, in the same run.

Both clusters run at once on loopback (shoal on 127.0.10.x, Serf on
127.0.20.x), with their default LAN profiles and the same event handler
script (it appends `<unix time> <event> <member line>` to a per-agent file,
the method of bench/membership.py). Every action is done to both clusters
at the same moment, so machine noise hits both alike. Per round:

  join   : start a new agent          -> member-join at every other agent
  fail   : kill -9 an agent           -> member-failed at every other agent
  leave  : graceful stop of an agent  -> member-leave at every other agent
           (SIGTERM for shoal; SIGINT for Serf, which leaves only on SIGINT)

plus RSS and CPU of every agent at idle. Writes to --out:
  real_observations.csv  system,n,scenario,round,observer,seconds (one row per
                         observer; empty seconds = never saw it)
  real_summary.csv       per system and scenario: p50/p99/max over observers
  real_resources.csv     per system: RSS / private memory / idle CPU per agent

Bounded by --max-seconds; every process started is killed on exit, error or
Ctrl-C. Needs target/static/shoal (docker/build-binaries.sh, or --shoal-bin) and serf (apt-get
install serf).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from membership import agent_command, cpu_ticks, rss_kb  # noqa: E402  (shared with the 5-agent bench)
from results_section import replace_section  # noqa: E402  (bench/results_section.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not 7946/7373: Docker's swarm listens on *:7946 on this kind of host.
PORT, API = 17946, 17373
HANDLER = """#!/bin/sh
now=$(date +%s.%N)
while IFS= read -r line; do echo "$now $SERF_EVENT $line" >> "$1"; done
"""


class Cluster:
    def __init__(self, system, net, workdir, shoal_bin):
        self.system, self.net, self.bin = system, net, shoal_bin
        self.dir = os.path.join(workdir, system)
        os.makedirs(self.dir, exist_ok=True)
        self.handler = os.path.join(self.dir, "handler.sh")
        with open(self.handler, "w") as f:
            f.write(HANDLER)
        os.chmod(self.handler, 0o755)
        self.procs = {}
        self.offsets = {}
        self.seen = {}  # observer -> list of (t, kind, name)

    def ip(self, i):
        return f"127.0.{self.net}.{i}"

    def name(self, i):
        return f"{self.system[:2]}{i}"

    def events_file(self, i):
        return os.path.join(self.dir, f"events-{i}.txt")

    def start(self, i):
        ev = self.events_file(i)
        seed = self.ip(1) if i != 1 else self.ip(2)
        cmd, env = agent_command(self.system, self.bin, self.name(i), self.ip(i), seed,
                                 f"{self.handler} {ev}", port=PORT, api=API)
        log = open(os.path.join(self.dir, f"agent-{i}.log"), "a")
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def signal(self, i, sig):
        p = self.procs.get(i)
        if p is None:
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
        except ProcessLookupError:
            pass

    def reap(self, i, timeout=15):
        p = self.procs.pop(i, None)
        if p is None:
            return
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for i, p in list(self.procs.items()):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def poll(self, i):
        """New events of agent i (read incrementally)."""
        path = self.events_file(i)
        try:
            with open(path) as f:
                f.seek(self.offsets.get(i, 0))
                data = f.read()
        except FileNotFoundError:
            return self.seen.setdefault(i, [])
        # Keep a partial last line for the next read.
        cut = data.rfind("\n") + 1
        self.offsets[i] = self.offsets.get(i, 0) + len(data[:cut].encode())
        out = self.seen.setdefault(i, [])
        for line in data[:cut].splitlines():
            parts = line.split()
            if len(parts) >= 3:
                try:
                    out.append((float(parts[0]), parts[1], parts[2]))
                except ValueError:
                    pass
        return out

    def first(self, observer, kind, name, after):
        for t, k, n in self.poll(observer):
            if k == kind and n == name and t >= after:
                return t - after
        return None

    def known(self, observer):
        return {n for _, k, n in self.poll(observer) if k == "member-join"}


def bar(done, total, label, started):
    width = 30
    filled = int(done * width / max(total, 1))
    print(f"\r\x1b[K[{'#' * filled}{'-' * (width - filled)}] {done}/{total} "
          f"{int(time.time() - started):4d}s  {label}", end="", file=sys.stderr, flush=True)


def wait_all(clusters, actions, deadline):
    """actions: {system: (kind, name, t0, observers)}; waits until every
    observer saw it (or the deadline); returns {system: {observer: delay}}."""
    out = {c.system: {} for c in clusters}
    while True:
        pending = 0
        for c in clusters:
            kind, name, t0, observers = actions[c.system]
            for o in observers:
                if o in out[c.system]:
                    continue
                d = c.first(o, kind, name, t0)
                if d is None:
                    pending += 1
                else:
                    out[c.system][o] = d
        if pending == 0 or time.time() > deadline:
            return out
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="100",
                    type=lambda v: [int(x) for x in v.split(",")],
                    help="agents per system; a comma list runs each size in turn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--max-seconds", type=float, default=900,
                    help="hard bound for the whole run")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--shoal-bin", default=os.path.join(ROOT, "target/static/shoal"))
    args = ap.parse_args()
    if min(args.nodes) < 2:
        ap.error("--nodes must be at least 2")
    if max(args.nodes) + 2 * args.rounds + 1 > 254:
        ap.error("--nodes + 2 * --rounds must stay below 254 (one 127.0.x.0/24 per system)")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not os.access(args.shoal_bin, os.X_OK):
        ap.error(f"{args.shoal_bin} not found: docker/build-binaries.sh")
    if shutil.which("serf") is None:
        ap.error("serf not found: apt-get install serf")
    need_fds = 2 * (max(args.nodes) + args.rounds) * 8
    soft, hard = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)
    if soft < need_fds:
        print(f"warning: open-files limit {soft} may be low for {max(args.nodes)} agents",
              file=sys.stderr)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.time()
    deadline = started + args.max_seconds
    obs_rows, resources = [], []
    try:
        for n in args.nodes:
            if time.time() > deadline:
                print(f"max-seconds reached; N={n} skipped", file=sys.stderr)
                break
            print(f"== N = {n}: {n} shoal + {n} Serf agents", file=sys.stderr)
            if not run_one(args, n, deadline, obs_rows, resources):
                break
    finally:
        write(args, obs_rows, resources)


def run_one(args, n, deadline, obs_rows, resources):
    """One size; appends to the row lists. False if interrupted."""
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="shoal-scale-")
    clusters = [Cluster("shoal", 10, workdir, args.shoal_bin),
                Cluster("serf", 20, workdir, args.shoal_bin)]
    ok = True
    steps = 2 + 3 * args.rounds
    step = 0
    try:
        # Start both clusters, interleaved, 10 ms apart.
        for i in range(1, n + 1):
            for c in clusters:
                c.start(i)
            time.sleep(0.01)
            if i % 10 == 0:
                bar(step, steps, f"started {i}/{n} agents per system", started)
        # Formed when agent 1 has seen every other agent join.
        form_deadline = min(deadline, time.time() + 120)
        while time.time() < form_deadline:
            counts = [len(c.known(1) - {c.name(1)}) for c in clusters]
            bar(step, steps, f"forming: agent 1 knows shoal {counts[0]}, serf {counts[1]} "
                f"of {n - 1}", started)
            if all(k >= n - 1 for k in counts):
                break
            time.sleep(0.5)
        step += 1
        time.sleep(5)
        bar(step, steps, f"idle cost over {args.idle_seconds:.0f} s", started)
        pids = {c.system: [p.pid for p in c.procs.values()] for c in clusters}
        t0 = {s: [cpu_ticks(p) for p in ps] for s, ps in pids.items()}
        time.sleep(args.idle_seconds)
        hz = os.sysconf("SC_CLK_TCK")
        for c in clusters:
            ps = pids[c.system]
            cpu = [(cpu_ticks(p) - a) / hz / args.idle_seconds * 100
                   for p, a in zip(ps, t0[c.system])]
            rss = [rss_kb(p) for p in ps]
            anon = [rss_kb(p, "RssAnon:") for p in ps]
            resources.append((c.system, n, statistics.median(rss), max(rss),
                              statistics.median(anon), statistics.median(cpu), max(cpu)))
        step += 1
        def observe(scenario, event, subject, t, timeout, r, live, reap=False):
            """Waits until every live observer saw `event` about `subject`
            (or the timeout), then records one row per observer and system."""
            res = wait_all(clusters, {c.system: (event, c.name(subject), t, sorted(live))
                                      for c in clusters}, min(deadline, t + timeout))
            for c in clusters:
                if reap:
                    c.reap(subject)
                for o in sorted(live):
                    obs_rows.append((c.system, n, scenario, r, o, res[c.system].get(o)))

        live = set(range(1, n + 1))
        for r in range(1, args.rounds + 1):
            if time.time() > deadline:
                print("\nmax-seconds reached; stopping early", file=sys.stderr)
                break
            # join: a new agent
            new = n + r
            t = time.time()
            for c in clusters:
                c.start(new)
            bar(step, steps, f"round {r}: join", started)
            observe("join", "member-join", new, t, 30, r, live)
            live.add(new)
            step += 1
            time.sleep(2)
            # fail: kill -9 (never agent 1, the seed)
            victim = 1 + r
            t = time.time()
            for c in clusters:
                c.signal(victim, signal.SIGKILL)
            live.discard(victim)
            bar(step, steps, f"round {r}: kill -9", started)
            observe("fail", "member-failed", victim, t, 60, r, live, reap=True)
            step += 1
            time.sleep(2)
            # leave: graceful stop
            leaver = 1 + args.rounds + r
            t = time.time()
            for c in clusters:
                c.signal(leaver, signal.SIGTERM if c.system == "shoal" else signal.SIGINT)
            live.discard(leaver)
            bar(step, steps, f"round {r}: leave", started)
            observe("leave", "member-leave", leaver, t, 30, r, live, reap=True)
            step += 1
            time.sleep(2)
        bar(steps, steps, "done", started)
        print(file=sys.stderr)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e}); cleaning up", file=sys.stderr)
        ok = False
    finally:
        for c in clusters:
            c.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return ok


def write(args, obs_rows, resources):
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "real_observations.csv"), "w") as f:
        f.write("system,n,scenario,round,observer,seconds\n")
        for s, n, sc, r, o, d in obs_rows:
            f.write(f"{s},{n},{sc},{r},{o},{'' if d is None else f'{d:.4f}'}\n")
    with open(os.path.join(args.out, "real_summary.csv"), "w") as f:
        f.write("system,n,scenario,observations,missing,p50_s,p99_s,max_s\n")
        keys = sorted({(s, n, sc) for s, n, sc, *_ in obs_rows})
        for s, n, sc in keys:
            vals = [d for s2, n2, sc2, _, _, d in obs_rows if (s2, n2, sc2) == (s, n, sc)]
            got = sorted(v for v in vals if v is not None)
            missing = len(vals) - len(got)

            def q(p):
                if not got or missing > 0 and p >= 1.0:
                    return ""
                k = max(1, -(-int(p * len(vals) * 1000) // 1000))
                return f"{got[k - 1]:.3f}" if k <= len(got) else ""
            f.write(f"{s},{n},{sc},{len(vals)},{missing},{q(0.5)},{q(0.99)},{q(1.0)}\n")
    with open(os.path.join(args.out, "real_resources.csv"), "w") as f:
        f.write("system,n,rss_kb_median,rss_kb_max,anon_kb_median,cpu_pct_median,cpu_pct_max\n")
        for s, n, rm, rx, am, cm, cx in resources:
            f.write(f"{s},{n},{rm:.0f},{rx},{am:.0f},{cm:.3f},{cx:.3f}\n")
    print(f"wrote {args.out}/real_*.csv", file=sys.stderr)
    replace_section("scale.py", csv_tables(args.out, ["real_summary.csv", "real_resources.csv"]))


def csv_tables(out_dir, names):
    """The CSVs as Markdown tables, for this script's section of RESULTS.md."""
    parts = [f"Real processes on loopback ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} cores); raw rows in `bench/results/real_observations.csv`."]
    for name in names:
        with open(os.path.join(out_dir, name)) as f:
            rows = [line.rstrip("\n").split(",") for line in f if line.strip()]
        parts.append(f"\n`{name}`:\n")
        parts.append("| " + " | ".join(rows[0]) + " |")
        parts.append("|" + "---|" * len(rows[0]))
        parts.extend("| " + " | ".join(r) + " |" for r in rows[1:])
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
