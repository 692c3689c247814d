#!/usr/bin/env bash
# Runs the Docker end-to-end scenarios (tests/e2e) and prints the figures they measure:
# time from `up --scale` to all backends serving, failed requests during scale-down and
# after `docker kill`, time from kill to removal, LB restart, image sizes, agent RSS.
#
#   bench/e2e.sh            # all scenarios (~5 min on 2 cores, after the images are built)
#   bench/e2e.sh scale      # only the tests whose name contains "scale"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIGURES="$(mktemp /tmp/shoal-e2e-figures.XXXXXX)"
trap 'rm -f "$FIGURES"' EXIT
start=$SECONDS
SHOAL_E2E_FIGURES="$FIGURES" cargo test --locked -p shoal-e2e --test docker -- --test-threads=1 "$@"
# The figures go to bench/results/e2e.txt and this script's section of RESULTS.md.
mkdir -p bench/results
{
  echo "== shoal e2e figures ($(date -u +%FT%TZ), $(nproc) cores, $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?') engine; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); suite took $((SECONDS - start)) s)"
  sed 's/^FIGURE /  /' "$FIGURES"
} > bench/results/e2e.txt
echo
cat bench/results/e2e.txt
{
  echo '```text'
  cat bench/results/e2e.txt
  echo '```'
} | python3 bench/results_section.py e2e.sh
