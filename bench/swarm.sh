#!/usr/bin/env bash
# Runs the Docker Swarm end-to-end scenario (tests/e2e/tests/swarm.rs) and records the
# figures it measures (`FIGURE swarm: ...`) in bench/results/swarm.txt and the `swarm`
# section of bench/results/RESULTS.md.
#
#   bench/swarm.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIGURES="$(mktemp /tmp/shoal-e2e-figures.XXXXXX)"
trap 'rm -f "$FIGURES"' EXIT
start=$SECONDS
SHOAL_E2E_FIGURES="$FIGURES" cargo test --locked -p shoal-e2e --test swarm -- --test-threads=1 "$@"
# The figures go to bench/results/swarm.txt and this script's section of RESULTS.md.
mkdir -p bench/results
{
  echo "== shoal swarm figures ($(date -u +%FT%TZ), $(nproc) cores, $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?') engine; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); suite took $((SECONDS - start)) s)"
  sed 's/^FIGURE /  /' "$FIGURES"
} > bench/results/swarm.txt
echo
cat bench/results/swarm.txt
{
  echo '```text'
  cat bench/results/swarm.txt
  echo '```'
} | python3 bench/results_section.py swarm
