#!/bin/sh
# deploy/image-rootfs.sh <tally binary> <busybox binary> <rootfs dir>: lays out the image's whole
# file system in <rootfs dir>. Both the Containerfile (in its build stage) and
# deploy/build-image.sh (with buildah, no registry) run this script, so the two images hold the
# same files.
#
# The image is FROM scratch: a statically linked /tally (glibc; resolves /etc/hosts and DNS with
# no NSS library), a statically linked BusyBox for /bin/sh (the manifests' init container tests
# whether the data file exists and takes the replica index from the pod's host name; the main
# container execs tally from that shell so that tally is PID 1 and gets SIGTERM itself), an
# /etc/passwd naming the non-root user 65532, an nsswitch.conf that reads /etc/hosts before DNS,
# and /data, the volume, owned by that user.
set -eu
[ $# -eq 3 ] || { echo "usage: $0 <tally> <busybox> <rootfs dir>" >&2; exit 2; }
tally=$1 busybox=$2 root=$3

# A static binary only: a dynamic one would find no libc in a scratch image.
for bin in "$tally" "$busybox"; do
  if ! file -L "$bin" | grep -q 'statically linked'; then
    echo "$bin is not statically linked" >&2; exit 1
  fi
done

mkdir -p "$root/bin" "$root/etc" "$root/data" "$root/tmp"
cp "$tally" "$root/tally"
strip "$root/tally"
cp "$busybox" "$root/bin/busybox"
ln -sf busybox "$root/bin/sh"
chmod 0755 "$root/tally" "$root/bin/busybox"

printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
# Container runtimes mount their own /etc/hosts and /etc/resolv.conf over these.
: >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
chown 65532:65532 "$root/data"
chmod 0755 "$root/data"
chmod 1777 "$root/tmp"
