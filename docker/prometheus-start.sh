#!/bin/sh
# Entry point of the shoal-prometheus image: writes SHOAL_API_TOKEN (the agents' API token)
# to the file prometheus.yml reads, then runs Prometheus in the foreground.
set -eu
if [ -z "${SHOAL_API_TOKEN:-}" ]; then
  echo "prometheus-start: SHOAL_API_TOKEN is not set: the agents' /metrics would answer 401" >&2
  exit 2
fi
umask 077
printf '%s' "$SHOAL_API_TOKEN" > /tmp/shoal-api-token
exec /usr/bin/prometheus \
  --config.file=/etc/prometheus/prometheus.yml \
  --storage.tsdb.path=/prometheus \
  --storage.tsdb.retention.time="${PROM_RETENTION:-1d}" \
  --web.listen-address=:9090 \
  "$@"
