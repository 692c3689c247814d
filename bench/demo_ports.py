#!/usr/bin/env python3
"""What the demo's published ports cost `up`: the compose demo as it is (HTTP, stats, HTTPS,
lbgen's status page: four ports) against the same file with only HTTP and stats published
(the two the DNS rival publishes), `up -d --scale webapp=2` alone, alternating, the same load
and clock as bench/dns_rival.py's `up` row. Each published port is one more `docker-proxy`
process and its NAT rules before Docker starts the LB's container.

The two-port copy is written beside compose/docker-compose.yml (its relative paths and
.env hold) as compose/.bench-two-ports.yml and removed at the end, error or Ctrl-C. Prints
medians and every round's figure; writes nothing else. Needs the images (docker/build-images.sh).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dns_rival  # noqa: E402  (bench/dns_rival.py)

DEMO = os.path.join(dns_rival.ROOT, "compose", "docker-compose.yml")
TWO = os.path.join(dns_rival.ROOT, "compose", ".bench-two-ports.yml")
DROPPED = ("LB_STATUS_PORT:-8405", "LB_HTTPS_PORT:-8443")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="`up`s of each file (1-15)")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 15:
        ap.error(f"--rounds must be from 1 to 15, not {a.rounds}")
    with open(DEMO) as f:
        lines = f.readlines()
    kept = [ln for ln in lines if not any(d in ln for d in DROPPED)]
    if len(lines) - len(kept) != len(DROPPED):
        sys.exit(f"{DEMO}: expected one line per port in {DROPPED}; the file changed")
    files = {"four ports (the demo)": DEMO, "two ports (HTTP, stats)": TWO}
    got = {k: [] for k in files}
    lock = dns_rival.MachineLock(timeout=1800)
    try:
        with open(TWO, "w") as f:
            f.writelines(kept)
        for n in range(a.rounds):
            for label in list(files) if n % 2 else list(files)[::-1]:
                s = dns_rival.System("shoal", files[label], time.monotonic() + 120, f"ports{n}")
                try:
                    s.phase_up(4)
                    s.join_timeline()
                    s.up_from_lb_start()
                    got[label].append(s.figures)
                finally:
                    s.stop.set()
                    s.down()
    finally:
        if os.path.exists(TWO):
            os.remove(TWO)
        lock.release()
    print(f"`python3 bench/demo_ports.py --rounds {a.rounds}`: medians (every round's figure), s")
    for key, what in (("up", "up → first 2 replicas served"), ("up_cli", "up command returned"),
                      ("up_lb", "the LB's start → first 2 served")):
        row = []
        for label, figs in got.items():
            vals = [f[key] for f in figs]
            row.append(f"{label} {statistics.median(vals):.2f} ({', '.join(f'{v:.2f}' for v in vals)})")
        print(f"{what}: " + "; ".join(row))


if __name__ == "__main__":
    main()
