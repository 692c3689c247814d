#!/usr/bin/env bash
# Runs the multi-host Docker Swarm scenario (tests/e2e/tests/multihost.rs: three engines in
# containers, a host killed under load) and records the figures it measures
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
SHOAL_E2E_FIGURES="$FIGURES" cargo test --locked -p shoal-e2e --test multihost -- --test-threads=1 "$@"
# The figures go to bench/results/multihost.txt and this script's section of RESULTS.md.
mkdir -p bench/results
{
  echo "== shoal multi-host swarm figures ($(date -u +%FT%TZ), $(nproc) cores, $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?') engine; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); suite took $((SECONDS - start)) s)"
  sed 's/^FIGURE /  /' "$FIGURES"
} > bench/results/multihost.txt
echo
cat bench/results/multihost.txt
{
  echo '```text'
  cat bench/results/multihost.txt
  echo '```'
} | python3 bench/results_section.py multihost
