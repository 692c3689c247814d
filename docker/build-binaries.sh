#!/usr/bin/env bash
# Builds the release binaries shoal, lbgen and webapp as static executables
# (glibc linked in: `-C target-feature=+crt-static`) and puts them in
# $CARGO_TARGET_DIR/static/ (default target/static/).
#
# Why static: the agent runs in every container, and a dynamic build maps
# libc, libm and ld.so besides itself (about 1.2 MB of its 5 MB RSS); static,
# it maps only what it uses (3.9 MB RSS), and the same file runs on any Linux
# base image of that architecture. Name resolution still works: glibc 2.34+
# has its `files` and `dns` lookups built in, which is what `hosts: files dns`
# (Debian's and Docker's default) uses.
#
# `--target` is passed explicitly so the flag reaches only the binaries, not
# the build scripts and proc-macros (which must stay dynamic).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
if [[ "$HOST" != *-linux-gnu* ]]; then
  echo "build-binaries: host $HOST is not *-linux-gnu; static glibc builds need it" >&2
  exit 1
fi

echo "[build-binaries] cargo build --release --target $HOST (static) -p shoal -p lbgen -p webapp" >&2
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$HOST" -p shoal -p lbgen -p webapp)

mkdir -p "$TARGET_DIR/static"
for b in shoal lbgen webapp; do
  src="$TARGET_DIR/$HOST/release/$b"
  # `file` may be missing; then ldd decides (it fails on a static executable).
  case "$(file -b "$src" 2>/dev/null || true)" in
    *static*) ;;
    *)
      if ldd "$src" >/dev/null 2>&1; then
        echo "build-binaries: $src is dynamically linked" >&2
        exit 1
      fi
      ;;
  esac
  # Replace atomically: a running benchmark may be executing the old file.
  cp "$src" "$TARGET_DIR/static/.$b.tmp"
  mv -f "$TARGET_DIR/static/.$b.tmp" "$TARGET_DIR/static/$b"
done
echo "[build-binaries] $TARGET_DIR/static/{shoal,lbgen,webapp}" >&2
