#!/bin/sh
# The command of shoal-dind:bookworm (docker/dind-image.sh): one engine of the multi-host
# Swarm bed, dockerd in the foreground, extra dockerd flags from "$@".
#
# It also runs without --privileged, where the outer engine cannot grant that (a sandbox
# whose bounding set lacks CAP_SYS_RESOURCE: runc then fails with "unable to apply caps").
# The bed starts it with every other capability, unconfined seccomp/AppArmor/system paths
# and all devices allowed; this script makes writable what --privileged would have: /sys
# and the cgroup v1 hierarchies (mounted afresh, so the nested engine puts its containers
# under its own --cgroup-parent, apart from the outer engine's /docker).
set -e
if grep -qE '^sysfs /sys sysfs ro' /proc/mounts; then
  mount -o remount,rw /sys
fi
grep -E '^cgroup /sys/fs/cgroup/[^ ]+ cgroup ro' /proc/mounts | while read -r _ dir _ opts _; do
  sub=$(echo "$opts" | tr , '\n' | grep -vE '^(ro|rw|nosuid|nodev|noexec|relatime)$' | paste -sd, -)
  umount "$dir"
  mount -t cgroup -o "$sub" cgroup "$dir"
done
# Shared propagation, as Docker's own dind script does: mounts made by the nested engine
# (volumes, overlay layers) must propagate into its containers.
mount --make-rshared / 2>/dev/null || true
rm -f /var/run/docker.pid /run/docker/containerd/containerd.pid
exec dockerd --host=unix:///var/run/docker.sock --storage-driver=overlay2 \
  --cgroup-parent="/shoal-dind-$(hostname)" "$@"
