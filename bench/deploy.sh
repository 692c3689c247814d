#!/usr/bin/env bash
# Runs the deploy end-to-end scenarios (tests/e2e/tests/deploy.rs) and prints their figures:
# HAProxy reloads and failed requests over scale 1 -> 30 -> 1 under load (sticky clients
# included), and failed requests over a rolling `./demo deploy` of 5 webapps with GET and
# POST load, a 30 s download and a WebSocket held across it.
#
#   bench/deploy.sh              # both scenarios (~5 min on 2 cores, after the images)
#   bench/deploy.sh rolling      # only the tests whose name contains "rolling"
#
# The figures are written even when a scenario fails (they show by how much); the exit
# status is the tests'.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIGURES="$(mktemp /tmp/shoal-deploy-figures.XXXXXX)"
trap 'rm -f "$FIGURES"' EXIT
start=$SECONDS
SHOAL_E2E_FIGURES="$FIGURES" cargo test --locked -p shoal-e2e --test deploy -- --test-threads=1 "$@"
status=$?
{
  echo '```text'
  echo "== deploy scenarios ($(date -u +%FT%TZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), tests exit $status, took $((SECONDS - start)) s)"
  sed 's/^FIGURE /  /' "$FIGURES"
  echo '```'
} | tee /dev/stderr | python3 bench/results_section.py deploy.sh
exit $status
