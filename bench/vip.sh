#!/usr/bin/env bash
# VIP failover figures (docs/ha.md): the HA compose scenario (tests/e2e/tests/ha.rs: two LBs
# sharing a VIP, load from a container on the compose network to the VIP) run twice, side by
# side in one invocation:
#   - shoal's VIP mode (adverts every 0.2 s), and
#   - the same with keepalived's default advert_int 1 s (VRRP's ~3.6 s failover), the thing
#     compared against.
# Printed per run: docker kill of the master -> time from the old master's last answer to
# the new one's first, failed vs in-flight requests; docker stop of the master and docker
# restart of the backup -> failed requests (target 0).
#
#   bench/vip.sh              # ~4 min on 2 cores after the images are built
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIGURES="$(mktemp /tmp/shoal-vip-figures.XXXXXX)"
trap 'rm -f "$FIGURES"' EXIT
start=$SECONDS
status=0
for advert in 0.2 1; do
  # A failed assertion still leaves its figures; both settings always run.
  LB_VIP_ADVERT="$advert" SHOAL_E2E_FIGURES="$FIGURES" \
    cargo test --locked -p shoal-e2e --test ha -- --test-threads=1 --include-ignored two_lbs_share_a_vip \
    || status=1
done
mkdir -p bench/results
{
  echo "== VIP failover ($(date -u +%FT%TZ), $(nproc) cores, $(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?') engine, keepalived $(docker run --rm --entrypoint keepalived "shoal-lb:${SHOAL_IMAGE_TAG:-latest}" --version 2>&1 | sed -n 's/^Keepalived v\([0-9.]*\).*/\1/p'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); took $((SECONDS - start)) s)"
  sed 's/^FIGURE /  /' "$FIGURES"
} > bench/results/vip.txt
echo
cat bench/results/vip.txt
{
  echo 'Two LBs sharing a VIP (compose/ha.yml), load (4 threads, a new connection per request)'
  echo 'from a container on the compose network to the VIP. "advert 1 s" is keepalived'"'"'s'
  echo 'default interval, VRRP'"'"'s ~3.6 s failover; shoal'"'"'s VIP mode uses 0.2 s.'
  echo
  echo '```text'
  cat bench/results/vip.txt
  echo '```'
} | python3 bench/results_section.py vip.sh
exit "$status"
