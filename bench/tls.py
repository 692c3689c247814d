#!/usr/bin/env python3
"""HTTPS through lbgen's config against a hand-written HAProxy config, in one run.

Four HAProxy 2.6 instances serve the same certificate (a local CA's, made with openssl) in
front of the same backend (a fifth HAProxy answering 200 itself, so the backend is never the
bottleneck):

  lbgen     `lbgen watch` following a members file, default template, tls_certs=DIR (what the
            demo runs: JSON access log to stdout, request id, X-Forwarded-*, HSTS, health checks)
  hand+log  a minimal config written by hand: one `bind ... ssl crt FILE`, one backend, and the
            access log a skilled user would add: `option httplog` to the same stdout
  quiet     lbgen's with `access_log=` (no access log)
  hand      the hand-written one without a log

Each HAProxy's stdout is a pipe drained by `cat` into a file, as a container's stdout is a pipe
drained by the engine (a regular file as stdout is a case HAProxy's docs call slow).

Measured, the sides interleaved round by round so machine noise hits them alike:
  - requests/s with keep-alive (`wrk`, Debian's package): TLS record layer, no handshakes
  - HAProxy CPU time per keep-alive request (utime + stime of its processes over the run,
    divided by the requests): what each config costs, less swayed by the other load on a
    shared machine than requests/s
  - requests/s on new connections (`wrk -H "Connection: close"`): a full handshake each
  - handshake time p50/p99: Python's ssl, one new connection at a time
  - lbgen only: a certificate renamed into the directory -> served to a new client (ms),
    and the master's reload counter before and after (the swap must not reload)

Traffic to 127.0.0.1 only; every loop is bounded in count and time. Prints a table and
writes it to bench/results/RESULTS.md (section tls.py). Needs haproxy, openssl, wrk.
  python3 bench/tls.py [--seconds 5] [--rounds 3] [--handshakes 300] [--swaps 10]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_section import replace_section  # noqa: E402  (bench/results_section.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(args, cwd=None, timeout=120):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def issue(d, ca, name, serial):
    """A chain + key PEM for `name` signed by the CA in `d`."""
    sh(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", f"/CN={name}", "-keyout", "leaf.key", "-out", "leaf.csr"], cwd=d)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{name},IP:127.0.0.1\n")
    sh(["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", ca, "-CAkey", "ca.key",
        "-set_serial", str(serial), "-days", "30", "-extfile", "leaf.ext", "-out", "leaf.crt"], cwd=d)
    with open(os.path.join(d, "leaf.crt"), "rb") as a, open(os.path.join(d, "leaf.key"), "rb") as b:
        return a.read() + b.read()


def put(path, data):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class Proc:
    """A process in its own group, killed with its group on stop. With `pipe`, its stdout and
    stderr go through a pipe that a `cat` (in a group of its own, ending at the pipe's EOF) drains
    into `log`, as a container's output goes to the engine."""

    def __init__(self, args, log, env=None, pipe=False):
        self.log = open(log, "wb")
        out = self.log
        self.cat = None
        if pipe:
            self.cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=self.log,
                                        start_new_session=True)
            out = self.cat.stdin
        self.p = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env=env)
        if self.cat:
            self.cat.stdin.close()  # the child holds the write end; cat ends when it exits

    def cpu_seconds(self):
        """utime + stime of the processes in this one's group (HAProxy's master and worker)."""
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.p.pid:  # pgrp
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.cat:
            try:
                self.cat.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.cat.kill()
        self.log.close()


def master(sock, cmd):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sock)
    s.sendall(cmd.encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    return out.decode()


def reloads(sock):
    for line in master(sock, "show proc").splitlines():
        if " master " in line:
            return int(line.split()[2])
    raise SystemExit("no master line in show proc")


def wait_https(port, ctx, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                with ctx.wrap_socket(s, server_hostname="lb.test") as t:
                    t.sendall(b"GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n")
                    if t.recv(64).startswith(b"HTTP/1.1 200"):
                        return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"HTTPS on {port} never answered 200")


def served_der(port, ctx):
    """The DER of the certificate a new connection is served."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="lb.test") as t:
            return t.getpeercert(binary_form=True)


def leaf_der(pem):
    text = pem.decode()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[:end])


def handshakes(port, ctx, n):
    """Handshake times (ms) of `n` new connections, one at a time (no session reuse)."""
    times = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            t0 = time.perf_counter()
            with ctx.wrap_socket(s, server_hostname="lb.test"):
                times.append((time.perf_counter() - t0) * 1000)
    return times


def wrk(port, seconds, close):
    args = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    out = sh(args + [f"https://127.0.0.1:{port}/"], timeout=seconds + 60)
    rps = errors = 0.0
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        if "Non-2xx" in line or "Socket errors" in line:
            errors += sum(int(x.strip(",")) for x in line.split() if x.strip(",").isdigit())
    return rps, int(errors)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="per wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per side (default 3)")
    ap.add_argument("--handshakes", type=int, default=300, help="per side (default 300)")
    ap.add_argument("--swaps", type=int, default=10, help="certificate renewals timed (default 10)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--lbgen", help="an lbgen binary to use (default: build target/release/lbgen)")
    a = ap.parse_args()
    for tool in ("haproxy", "openssl", "wrk"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is needed (apt-get install {tool})")
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    lbgen = a.lbgen
    if not lbgen:
        sh(["cargo", "build", "-q", "--release", "-p", "lbgen"], cwd=ROOT, timeout=3600)
        lbgen = os.path.join(ROOT, "target", "release", "lbgen")
    load_before = open("/proc/loadavg").read().split()[:3]

    tmp = tempfile.mkdtemp(prefix="shoal-tls-bench-")
    procs = []
    try:
        ca = os.path.join(tmp, "ca.pem")
        sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "30", "-subj", "/CN=bench CA", "-keyout", "ca.key", "-out", ca], cwd=tmp)
        certs = os.path.join(tmp, "certs")
        os.mkdir(certs)
        pem = issue(tmp, ca, "lb.test", 1)
        put(os.path.join(certs, "default.pem"), pem)
        hand_pem = os.path.join(tmp, "hand.pem")
        put(hand_pem, pem)

        # The backend: HAProxy answering 200 itself.
        bport = free_port()
        with open(os.path.join(tmp, "backend.cfg"), "w") as f:
            f.write(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend be
    bind 127.0.0.1:{bport}
    http-request return status 200 content-type text/plain string "ok"
""")
        procs.append(Proc([haproxy, "-f", os.path.join(tmp, "backend.cfg")], os.path.join(tmp, "backend.log")))

        # Hand-written.
        hand_port = free_port()
        with open(os.path.join(tmp, "hand.cfg"), "w") as f:
            f.write(f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend https-in
    bind 127.0.0.1:{hand_port} ssl crt {hand_pem} alpn h2,http/1.1
    default_backend web
backend web
    server s1 127.0.0.1:{bport}
""")
        hand = Proc([haproxy, "-W", "-S", os.path.join(tmp, "hand.sock"), "-f",
                     os.path.join(tmp, "hand.cfg")], os.path.join(tmp, "hand.log"), pipe=True)
        procs.append(hand)

        # Hand-written with an access log: HAProxy's own line, to the same stdout as lbgen's.
        hlog_port = free_port()
        with open(os.path.join(tmp, "hand-log.cfg"), "w") as f:
            f.write(f"""global
    maxconn 4096
    log stdout len 8192 format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend https-in
    bind 127.0.0.1:{hlog_port} ssl crt {hand_pem} alpn h2,http/1.1
    default_backend web
backend web
    server s1 127.0.0.1:{bport}
""")
        hand_log = Proc([haproxy, "-W", "-S", os.path.join(tmp, "hand-log.sock"), "-f",
                         os.path.join(tmp, "hand-log.cfg")], os.path.join(tmp, "hand-log.log"), pipe=True)
        procs.append(hand_log)

        # lbgen's: HAProxy from an empty render, then lbgen watch.
        lb_port, http_port = free_port(), free_port()
        members = os.path.join(tmp, "members.json")
        with open(members, "w") as f:
            json.dump({"members": [{"name": "web-1", "addr": "127.0.0.1:7946", "status": "alive",
                                    "tags": {"service": "web", "port": str(bport)}}]}, f)
        out = os.path.join(tmp, "haproxy.cfg")
        msock = os.path.join(tmp, "master.sock")
        vars_ = ["bind=127.0.0.1", f"http_port={http_port}", f"https_port={lb_port}",
                 f"stats_port={free_port()}", f"stats_socket={tmp}/admin.sock",
                 f"server_state_file={tmp}/server-state", f"tls_certs={certs}",
                 f"tls_state_dir={tmp}/tls", "hsts_max_age=31536000"]
        var_args = [x for v in vars_ for x in ("--var", v)]
        # The same with the access log off: what the JSON log line per request costs.
        quiet_port = free_port()
        quiet_vars = [v for v in vars_ if not v.startswith(("https_port=", "http_port=", "stats_port=",
                                                             "stats_socket=", "server_state_file=",
                                                             "tls_state_dir="))]
        quiet_vars += [f"https_port={quiet_port}", f"http_port={free_port()}", f"stats_port={free_port()}",
                       f"stats_socket={tmp}/q-admin.sock", f"server_state_file={tmp}/q-server-state",
                       f"tls_state_dir={tmp}/q-tls", "access_log="]
        quiet_args = [x for v in quiet_vars for x in ("--var", v)]
        empty = os.path.join(tmp, "empty.json")
        with open(empty, "w") as f:
            f.write('{"members":[]}')
        cfg = sh([lbgen, "render", "--members", empty, "--dry-run"] + var_args)
        with open(out, "w") as f:
            f.write(cfg)
        lb = Proc([haproxy, "-W", "-S", msock, "-f", out], os.path.join(tmp, "lb.log"), pipe=True)
        procs.append(lb)
        qout, qsock = os.path.join(tmp, "q-haproxy.cfg"), os.path.join(tmp, "q-master.sock")
        with open(qout, "w") as f:
            f.write(sh([lbgen, "render", "--members", empty, "--dry-run"] + quiet_args))
        quiet = Proc([haproxy, "-W", "-S", qsock, "-f", qout], os.path.join(tmp, "q-lb.log"), pipe=True)
        procs.append(quiet)
        time.sleep(0.5)
        procs.append(Proc([lbgen, "watch", "--members", members, "--out", out, "--haproxy-master", msock,
                           "--wait", "20ms:200ms", "--log-format", "json"] + var_args,
                          os.path.join(tmp, "lbgen.log")))
        procs.append(Proc([lbgen, "watch", "--members", members, "--out", qout, "--haproxy-master", qsock,
                           "--wait", "20ms:200ms", "--log-format", "json"] + quiet_args,
                          os.path.join(tmp, "q-lbgen.log")))
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = True
        try:
            wait_https(hand_port, ctx)
            wait_https(lb_port, ctx)
            wait_https(quiet_port, ctx)
            wait_https(hlog_port, ctx)
        except SystemExit:
            for log in ("lbgen.log", "lb.log", "hand.log", "hand-log.log", "backend.log"):
                with open(os.path.join(tmp, log), errors="replace") as f:
                    print(f"--- {log}:\n" + "".join(f.readlines()[-15:]), file=sys.stderr)
            raise

        sides = {"lbgen": lb_port, "hand_log": hlog_port, "quiet": quiet_port, "hand": hand_port}
        proc_of = {"lbgen": lb, "hand_log": hand_log, "quiet": quiet, "hand": hand}
        rps = {(s, c): [] for s in sides for c in (False, True)}
        cpu_us = {s: [] for s in sides}
        errs = {s: 0 for s in sides}
        names = list(sides)
        for r in range(a.rounds):
            # Each round in another order, so no side always runs first or last.
            order = names[r % len(names):] + names[:r % len(names)]
            for close in (False, True):
                for side in order:
                    port = sides[side]
                    c0 = proc_of[side].cpu_seconds()
                    r, e = wrk(port, a.seconds, close)
                    c1 = proc_of[side].cpu_seconds()
                    rps[(side, close)].append(r)
                    if not close and r > 0:
                        cpu_us[side].append((c1 - c0) / (r * a.seconds) * 1e6)
                    errs[side] += e
        hs = {s: [] for s in sides}
        for _ in range(3):
            for side, port in sides.items():
                hs[side] += handshakes(port, ctx, max(1, a.handshakes // 3))

        # Renewals: a new certificate renamed into the directory -> served.
        before = reloads(msock)
        swap_ms = []
        for i in range(a.swaps):
            new = issue(tmp, ca, "lb.test", 100 + i)
            want = leaf_der(new)
            t0 = time.perf_counter()
            put(os.path.join(certs, "default.pem"), new)
            deadline = t0 + 30
            while served_der(lb_port, ctx) != want:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"renewal {i} not served within 30 s")
                time.sleep(0.005)
            swap_ms.append((time.perf_counter() - t0) * 1000)
        after = reloads(msock)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = open("/proc/loadavg").read().split()[:3]
    med = {k: statistics.median(v) for k, v in rps.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_us.items()}

    def ratio(side, close, base):
        return med[(side, close)] / med[(base, close)]

    def ratios(close):
        return f"{ratio('lbgen', close, 'hand_log'):.2f}, {ratio('quiet', close, 'hand'):.2f}"

    def hs_cell(side):
        return f"{pct(hs[side], 50):.2f} / {pct(hs[side], 99):.2f}"

    cols = ("lbgen", "hand_log", "quiet", "hand")

    def row(label, cell, last=""):
        return f"| {label} | " + " | ".join(cell(s) for s in cols) + f" | {last} |"

    lines = [
        "| | lbgen's config (defaults: JSON access log) | hand-written + `option httplog` (same stdout) "
        "| lbgen's, `access_log=` | hand-written, no log | lbgen / hand+log, quiet / hand |",
        "|---|---|---|---|---|---|",
        row(f"HTTPS requests/s, keep-alive (median of {a.rounds})",
            lambda s: f"{med[(s, False)]:,.0f}", ratios(False)),
        row(f"HTTPS requests/s, new connection each (median of {a.rounds})",
            lambda s: f"{med[(s, True)]:,.0f}", ratios(True)),
        row("HAProxy CPU per keep-alive request, µs (median)", lambda s: f"{cpu[s]:.1f}",
            f"{cpu['lbgen'] / cpu['hand_log']:.2f}, {cpu['quiet'] / cpu['hand']:.2f} (CPU ratio)"),
        row(f"TLS handshake p50 / p99, ms ({len(hs['lbgen'])} each)", hs_cell),
        row("wrk errors (non-2xx + socket)", lambda s: str(errs[s])),
        "",
        f"Certificate renewed on disk (rename) -> served to a new client, {len(swap_ms)} renewals: "
        f"p50 {pct(swap_ms, 50):.0f} ms, max {max(swap_ms):.0f} ms; HAProxy reloads during them: {after - before}.",
    ]
    table = "\n".join(lines)
    print(table)
    if a.no_write:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    hv = sh([haproxy, "-v"]).splitlines()[0]
    body = "\n".join([
        f"Command: `python3 bench/tls.py --seconds {a.seconds} --rounds {a.rounds} --handshakes {a.handshakes} --swaps {a.swaps}` "
        "(wrk -t2 -c32 to 127.0.0.1; ECDSA P-256 certificate; backend: an HAProxy answering 200 itself).",
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, commit {commit}, {os.cpu_count()} cores, {hv}",
        f"Load average (1/5/15 min) before the run: {' '.join(load_before)}, after: {' '.join(load_after)} "
        "(the machine is shared; the figures follow it).",
        "",
        table,
    ])
    replace_section("tls.py", body)


if __name__ == "__main__":
    main()
