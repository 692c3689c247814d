#!/usr/bin/env bash
# Runs the multi-host Docker Swarm scenario (tests/e2e/tests/multihost.rs: four engines in
# containers, a webapp host then an LB host killed under load) and records the figures it measures
# (`FIGURE multihost: ...`) in bench/results/multihost.txt and the `multihost` section of
# bench/results/RESULTS.md. Extra arguments go to the test binary (e.g. --nocapture).
#
#   bench/multihost.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIGURES="$(mktemp /tmp/shoal-e2e-figures.XXXXXX)"
trap 'rm -f "$FIGURES"' EXIT
start=$SECONDS
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
SHOAL_E2E_FIGURES="$FIGURES" cargo test --locked -p shoal-e2e --test multihost -- --test-threads=1 "$@"
# The figures go to bench/results/multihost.txt and this script's section of RESULTS.md.
mkdir -p bench/results
{
  echo "== shoal multi-host swarm figures ($(date -u +%FT%TZ), $(nproc) cores, $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?') engine; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); suite took $((SECONDS - start)) s; load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after)"
  sed 's/^FIGURE /  /' "$FIGURES"
} > bench/results/multihost.txt
echo
cat bench/results/multihost.txt
{
  echo "Command: \`bench/multihost.sh\` (runs \`cargo test -p shoal-e2e --test multihost\`). Four engines from Debian bookworm's \`docker.io\` $(docker run --rm --entrypoint dpkg-query shoal-dind:bookworm -W -f '${Version}' docker.io 2>/dev/null || echo '?') in containers on one $(nproc)-core machine (a swarm of 3 managers and a worker), LAN profile, 4 closed-loop clients to host 0's LB through its port published on 127.0.0.1; first the worker h3 (webapps only), then h1 (the other LB and its webapps, a manager) killed with \`docker kill\` of its engine. Kernel without IPVS (no routing mesh) and without ESP (no encrypted overlay): [deploy-swarm.md](../../docs/deploy-swarm.md#several-hosts)."
  echo
  echo '```text'
  cat bench/results/multihost.txt
  echo '```'
} | python3 bench/results_section.py multihost
