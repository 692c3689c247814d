#!/usr/bin/env bash
# Makes the local base images the Dockerfiles build on, without any registry:
#
#   shoal-base:bookworm          Debian bookworm minbase + ca-certificates + procps
#   shoal-base-haproxy:bookworm  the same + haproxy + keepalived (for the lb image; keepalived
#                                runs only in VIP mode, docs/ha.md)
#
# One `debootstrap --variant=minbase` into a scratch folder, `docker import`, then
# haproxy and keepalived are installed into the same tree (chroot apt-get) and imported again.
# Idempotent: an image that already exists is reused (FORCE=1 rebuilds both). A
# shoal-base-haproxy made before keepalived was added is rebuilt (from shoal-base's files,
# without a new debootstrap), so an old machine does not keep a stale base.
#
# With a registry you do not need this: build the Dockerfiles with
#   --build-arg BASE=debian:bookworm-slim   (see docs/deploy-compose.md, "Use shoal in your own image").
#
# Env: MIRROR (default: the first Debian URI in this machine's apt sources, else
# http://deb.debian.org/debian), SUITE (bookworm), WORKDIR (scratch folder), FORCE.
set -euo pipefail

SUITE="${SUITE:-bookworm}"
BASE_IMAGE="shoal-base:${SUITE}"
HAPROXY_IMAGE="shoal-base-haproxy:${SUITE}"

log() { printf '[base-image] %s\n' "$*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The packages the lb image's base carries on top of shoal-base.
LB_PACKAGES=(haproxy keepalived)

# An lb base made before keepalived was added lacks it.
has_keepalived() {
  docker run --rm --entrypoint /bin/sh "$HAPROXY_IMAGE" -c 'command -v keepalived' >/dev/null 2>&1
}

# One run at a time on this machine (the e2e tests and several checkouts call it).
exec 8>"${TMPDIR:-/tmp}/shoal-base-image.lock"
flock 8

UPGRADE=""
if [[ -z "${FORCE:-}" ]] && image_exists "$BASE_IMAGE" && image_exists "$HAPROXY_IMAGE"; then
  if has_keepalived; then
    log "reusing $BASE_IMAGE and $HAPROXY_IMAGE (FORCE=1 to rebuild)"
    exit 0
  fi
  log "$HAPROXY_IMAGE has no keepalived (made by an older script): rebuilding it from $BASE_IMAGE"
  UPGRADE=1
fi

if [[ $(id -u) -ne 0 ]]; then
  log "debootstrap needs root; run as root (or: sudo $0)"
  exit 1
fi

# The mirror this machine's apt already uses (deb822 .sources or one-line .list).
detect_mirror() {
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  if [[ -z "$uri" ]]; then
    uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
          | grep -E '/debian/?$' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${MIRROR:-$(detect_mirror)}"

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q debootstrap >&2
fi

WORKDIR="${WORKDIR:-$(mktemp -d /tmp/shoal-base.XXXXXX)}"
ROOTFS="$WORKDIR/rootfs"
cleanup() {
  # Unmount anything left mounted inside the tree before removing it.
  for m in proc dev/pts; do
    mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
  done
  rm -rf "$WORKDIR"
}
trap cleanup EXIT

# Drops what a container never needs: docs, man pages, locales, apt caches and lists.
slim() {
  rm -rf "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
         "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/cache/apt/*.bin \
         "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
         "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* 2>/dev/null || true
}

import() {
  local tag="$1" old
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  log "docker import -> $tag"
  tar -C "$ROOTFS" --numeric-owner -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE ($MIRROR)" \
        - "$tag" >/dev/null
  log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
  # FORCE=1: the image it replaced is untagged now; remove it unless something uses it.
  if [[ -n "$old" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}

if [[ -n "$UPGRADE" ]]; then
  # shoal-base's files are the debootstrap tree (sources, apt settings, policy-rc.d included).
  mkdir -p "$ROOTFS"
  cid=$(docker create "$BASE_IMAGE" /bin/true)
  docker export "$cid" | tar -C "$ROOTFS" --numeric-owner -x
  docker rm "$cid" >/dev/null
  rm -f "$ROOTFS/.dockerenv"
  # Docker's export leaves resolv.conf empty; the chroot's apt-get needs a resolver.
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
else
# (not indented: the heredoc below must start its lines)
log "debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS (a few minutes)"
debootstrap --variant=minbase --include=ca-certificates,procps "$SUITE" "$ROOTFS" "$MIRROR" \
  > "$WORKDIR/debootstrap.log" 2>&1 || {
  log "debootstrap failed; last lines of its log:"
  tail -n 30 "$WORKDIR/debootstrap.log" >&2
  exit 1
}

# Same sources inside the image, so `apt-get install` works for users building on it.
echo "deb $MIRROR $SUITE main" > "$ROOTFS/etc/apt/sources.list"
# Keep images small when users apt-get inside them.
cat > "$ROOTFS/etc/apt/apt.conf.d/90shoal-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
# Nothing is started by package scripts inside a chroot/image.
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
chmod +x "$ROOTFS/usr/sbin/policy-rc.d"

slim
import "$BASE_IMAGE"
fi

log "installing ${LB_PACKAGES[*]} into the tree"
mount -t proc proc "$ROOTFS/proc"
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q \
  > "$WORKDIR/apt.log" 2>&1
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${LB_PACKAGES[@]}" >> "$WORKDIR/apt.log" 2>&1 || {
  log "apt-get install ${LB_PACKAGES[*]} failed:"
  tail -n 30 "$WORKDIR/apt.log" >&2
  exit 1
}
chroot "$ROOTFS" apt-get clean
umount -l "$ROOTFS/proc"
mkdir -p "$ROOTFS/run/haproxy"
slim
import "$HAPROXY_IMAGE"
log "done: $(docker run --rm "$HAPROXY_IMAGE" haproxy -v | sed -n 1p); $(docker run --rm "$HAPROXY_IMAGE" keepalived --version 2>&1 | sed -n 1p)"
