#!/usr/bin/env bash
# Builds everything the demo and the end-to-end tests run, in order:
#   1. the local base images (docker/base-image.sh; reused when present),
#   2. the release binaries on the host, static (docker/build-binaries.sh -> target/static/),
#   3. the images shoal-webapp:$TAG and shoal-lb:$TAG from a small staged context
#      (bin/ + templates/ + docker/lb-services.toml), so the build context is a few MB.
#
# With MONITORING=1 also shoal-prometheus:$TAG (docker/prometheus.Dockerfile: Debian's
# prometheus package on the base image), for compose/monitoring.yml.
#
# Env: SHOAL_IMAGE_TAG (default latest), BASE / LB_BASE (base images, default the local
# shoal-base[-haproxy]:bookworm; set e.g. debian:bookworm-slim with a registry and
# SKIP_BASE=1), SKIP_CARGO=1 (binaries already built), CARGO_TARGET_DIR.
# Safe to run concurrently: a lock serialises runs (the e2e tests call it once each).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${SHOAL_IMAGE_TAG:-latest}"
BASE="${BASE:-shoal-base:bookworm}"
LB_BASE="${LB_BASE:-shoal-base-haproxy:bookworm}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"

log() { printf '[build-images] %s\n' "$*" >&2; }

exec 9>"${TMPDIR:-/tmp}/shoal-build-images.lock"
flock 9

if [[ -z "${SKIP_BASE:-}" ]]; then
  "$ROOT/docker/base-image.sh"
fi

if [[ -z "${SKIP_CARGO:-}" ]]; then
  "$ROOT/docker/build-binaries.sh"
fi

CTX="$(mktemp -d "${TMPDIR:-/tmp}/shoal-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/bin" "$CTX/templates" "$CTX/docker"
for b in shoal lbgen webapp; do
  if [[ ! -x "$TARGET_DIR/static/$b" ]]; then
    log "missing $TARGET_DIR/static/$b (run docker/build-binaries.sh, or unset SKIP_CARGO)"
    exit 1
  fi
  cp "$TARGET_DIR/static/$b" "$CTX/bin/$b"
done
cp "$ROOT/templates/haproxy.cfg.hbs" "$ROOT/templates/prometheus-targets.json.hbs" \
   "$ROOT/templates/keepalived.conf.hbs" "$CTX/templates/"
cp "$ROOT/docker/lb-vip-services.toml" "$ROOT/docker/lb-vip.sh" "$CTX/docker/"
cp "$ROOT/docker/lb-services.toml" "$ROOT/docker/prometheus.yml" "$ROOT/docker/prometheus-start.sh" "$CTX/docker/"

build() {
  local image="$1" dockerfile="$2" base="$3"
  local old
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  log "docker build $image (base $base)"
  # The legacy builder is what a Docker engine without buildx has; it reads ARG BASE.
  DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -q --build-arg "BASE=$base" \
    -f "$ROOT/docker/$dockerfile" -t "$image" "$CTX" >/dev/null 2> >(grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e BuildKit -e 'environment-variable' -e '^ *$' >&2)
  log "$image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
  # The image it replaced is now untagged: remove it unless a container still uses it.
  if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}
build "shoal-webapp:$TAG" webapp.Dockerfile "$BASE"
build "shoal-lb:$TAG" lb.Dockerfile "$LB_BASE"
if [[ -n "${MONITORING:-}" ]]; then
  build "shoal-prometheus:$TAG" prometheus.Dockerfile "$BASE"
fi
log "done"
