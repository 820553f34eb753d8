#!/bin/sh
# tests/deploy/pod-exec.sh <rootfs> <hostname> <uid> [<src> <dst> ro|rw]... -- <argv...>
# Runs one container of a pod the way a container runtime would, inside the pod's network
# namespace (the caller runs this under `ip netns exec <pod> unshare -m -u`): the image's root
# file system read-only, the volumes bound at their mount paths, the pod's host name, io_uring
# forbidden by a seccomp filter (as RuntimeDefault does; $NO_IO_URING names the tool, see
# tests/server/no_io_uring.c), then chroot into the image as the non-root user with no
# capabilities left. The environment is passed through as it is.
set -eu
no_io_uring=${NO_IO_URING:-}
unset NO_IO_URING
# The container's PATH is the image's: the host's tools are found on the host's.
chroot=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v chroot)
root=$1 name=$2 uid=$3
shift 3
mount --make-rprivate /
mount --bind "$root" "$root"
while [ "$1" != "--" ]; do
  src=$1 dst=$2 mode=$3
  shift 3
  mount --bind "$src" "$root$dst"
  if [ "$mode" = ro ]; then mount -o remount,ro,bind "$root$dst"; fi
done
shift
mount -o remount,ro,bind "$root"
hostname "$name"
exec $no_io_uring "$chroot" --userspec="$uid:$uid" --groups="$uid" "$root" "$@"
