#!/usr/bin/env bash
# deploy/build-image.sh [image name]: builds the Tally image with buildah, pulling nothing.
#
# The Containerfile does the same with a registry's debian image as its build stage; here the
# build stage is this machine: the static `tally` from make (glibc, -static), Debian's static
# BusyBox, and deploy/image-rootfs.sh, which both use. Then `buildah from scratch`, one layer with
# that tree, and the Containerfile's USER, VOLUME, WORKDIR, EXPOSE, ENTRYPOINT and CMD.
#
# Installs buildah and busybox-static from apt when missing (root). Prints the image's name, id
# and size last. Default name: localhost/tally:<version>-<commit>, also tagged localhost/tally:latest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need=()
command -v buildah >/dev/null || need+=(buildah)
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' || need+=(busybox-static)
command -v file >/dev/null || need+=(file)
command -v strip >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt-get)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

make -s -j"$(nproc)" VARIANT=static EXTRA_LDFLAGS=-static build/static/tally 2>&1 |
  grep -v "Using 'getaddrinfo' in statically linked\|in function \`address_resolve'" >&2 || true
bin=build/static/tally
[ -x "$bin" ] || { echo "make did not build $bin" >&2; exit 1; }
# libc only: a static binary has no NEEDED entries at all.
if readelf -d "$bin" 2>/dev/null | grep -q NEEDED; then echo "$bin links shared libraries" >&2; exit 1; fi

version=$("$bin" version | sed -n 's/^Tally version \([^ ]*\).*/\1/p')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
name=${1:-localhost/tally:${version}-${commit}}

rootfs=$(mktemp -d /tmp/tally-rootfs.XXXXXX)
ctr=""
cleanup() { [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1; rm -rf "$rootfs" "$rootfs.tar"; }
trap cleanup EXIT
sh deploy/image-rootfs.sh "$bin" /bin/busybox "$rootfs"

ctr=$(buildah from scratch)
# One layer from a tar of the tree: `buildah add` extracts a local tar keeping its owners (a
# plain copy would make /data root's, and no container can run here to chown it).
tar -C "$rootfs" --numeric-owner -cf "$rootfs.tar" .
buildah add --quiet "$ctr" "$rootfs.tar" / >/dev/null
buildah config \
  --user 65532:65532 \
  --volume /data \
  --workingdir /data \
  --port 3000 --port 9100 \
  --entrypoint '["/tally"]' \
  --cmd version \
  --label org.opencontainers.image.title=tally \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.revision="$commit" \
  "$ctr"
id=$(buildah commit --quiet --rm "$ctr" "$name")
ctr=""
[ "$name" = localhost/tally:latest ] || buildah tag "$name" localhost/tally:latest
# (No `| head` here: under pipefail buildah's SIGPIPE would fail the script.)
size=$(buildah images --noheading --format '{{.Size}}' --filter "id=$id")
size=${size%%$'\n'*}
echo "image $name id=${id:0:12} size=$size"
