#!/usr/bin/env bash
# Makes shoal-dind:bookworm, the image of one "host" of the multi-host Swarm bed
# (tests/e2e/src/multihost.rs): Debian's own Docker engine (docker.io, with iptables and
# iproute2) in a privileged container, without any registry.
#
# Built on shoal-base:bookworm (docker/base-image.sh, debootstrap): its tree is exported,
# the packages are installed into it with a chroot apt-get on this machine (so no
# container needs a network path to the mirror), and the tree is imported again with
# /usr/local/bin/shoal-dind as its command. Kept apart from base-image.sh so the images the
# demo needs do not carry a Docker engine. Idempotent: an existing image is reused
# (FORCE=1 rebuilds).
#
# Run an engine:  docker run -d --privileged -v VOL:/var/lib/docker shoal-dind:bookworm
# (where --privileged is refused: the capability flags in tests/e2e/src/multihost.rs)
# (the volume: overlay2 cannot stack on the outer engine's overlay/fuse-overlayfs layer).
#
# Env: SUITE (bookworm), FORCE, WORKDIR (scratch folder).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE="${SUITE:-bookworm}"
BASE_IMAGE="shoal-base:${SUITE}"
IMAGE="shoal-dind:${SUITE}"

log() { printf '[dind-image] %s\n' "$*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

exec 9>"${TMPDIR:-/tmp}/shoal-dind-image.lock"
flock 9

if [[ -z "${FORCE:-}" ]] && image_exists "$IMAGE"; then
  log "reusing $IMAGE (FORCE=1 to rebuild)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "chroot needs root; run as root (or: sudo $0)"
  exit 1
fi
image_exists "$BASE_IMAGE" || "$ROOT/docker/base-image.sh"

WORKDIR="${WORKDIR:-$(mktemp -d /tmp/shoal-dind.XXXXXX)}"
ROOTFS="$WORKDIR/rootfs"
CID=""
cleanup() {
  for m in proc dev/pts; do
    mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
  done
  [[ -n "$CID" ]] && docker rm -f "$CID" >/dev/null 2>&1 || true
  rm -rf "$WORKDIR"
}
trap cleanup EXIT

log "exporting $BASE_IMAGE"
mkdir -p "$ROOTFS"
CID=$(docker create "$BASE_IMAGE" /bin/true)
docker export "$CID" | tar -C "$ROOTFS" --numeric-owner -x
docker rm -f "$CID" >/dev/null
CID=""

log "installing docker.io iptables iproute2 into the tree (chroot apt-get)"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount -t proc proc "$ROOTFS/proc"
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q \
  > "$WORKDIR/apt.log" 2>&1
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends docker.io iptables iproute2 \
  >> "$WORKDIR/apt.log" 2>&1 || {
  log "apt-get install failed:"
  tail -n 30 "$WORKDIR/apt.log" >&2
  exit 1
}
chroot "$ROOTFS" apt-get clean
umount -l "$ROOTFS/proc"
: > "$ROOTFS/etc/resolv.conf"
rm -rf "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* 2>/dev/null || true

# The engine's start (see the script: what it does without --privileged).
install -m 0755 "$ROOT/docker/shoal-dind.sh" "$ROOTFS/usr/local/bin/shoal-dind"

old=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "docker import -> $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . \
  | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'VOLUME /var/lib/docker' \
      --change 'CMD ["/usr/local/bin/shoal-dind"]' \
      --message "$BASE_IMAGE + docker.io iptables iproute2" \
      - "$IMAGE" >/dev/null
if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]]; then
  docker rmi "$old" >/dev/null 2>&1 || true
fi
log "$IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}'), $(docker run --rm "$IMAGE" dockerd --version)"
