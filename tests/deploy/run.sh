#!/usr/bin/env bash
# tests/deploy/run.sh [three|single]: the deployment, end to end, on this machine.
#
#   1. image: deploy/build-image.sh builds the image with buildah (nothing pulled); its config is
#      checked (user 65532, volume /data, entrypoint /tally); `podman run` is tried, and where it
#      cannot run containers here (this sandbox: crun refuses its cgroup setup) the image's root
#      file system is unpacked (buildah mount) and its own /tally and /bin/sh run the pods below;
#   2. manifests: `kubectl kustomize` renders deploy/kubernetes and the single-replica overlay;
#      tests/deploy/validate.mjs validates every object against the Kubernetes API schema
#      (kubernetes-models, pinned in package-lock.json), strictly (no unknown field);
#   3. the README's client example, extracted from README.md and run as written against a replica;
#   4. pods: tests/deploy/pods.js plays the rendered StatefulSet in network namespaces ("pods"
#      joined by a bridge, a "node" namespace for the kubelet's probes, a client pod and an
#      unlabelled pod) and runs the scenarios (see pods.js); then the single-replica overlay.
# Prints ok/FAIL lines, the timings, and "N passed, N failed" last.
#
# Needs root (network namespaces, mounts). Installs iproute2, iptables, buildah and
# busybox-static from apt and tests/deploy's npm packages when missing. Every namespace,
# process, mount and file it made is removed on exit, however it ends.
#   TALLY_DEPLOY_TIMEOUT   bound on the pods' scenarios in seconds (default 420)
#   TALLY_DEPLOY_KEEP=1    keep the work directory (pod logs, data files)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/deploy"
cd "$root"
PASSED=0; FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
finish() { echo "$PASSED passed, $FAILED failed"; [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]; exit $?; }
# Adds a sub-suite's closing "N passed, N failed" line to the totals.
take() {
  local line; line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$1" | tail -1)
  if [ -z "$line" ]; then FAILED=$((FAILED + 1)); return; fi
  PASSED=$((PASSED + $(echo "$line" | cut -d' ' -f1))); FAILED=$((FAILED + $(echo "$line" | cut -d' ' -f3)))
}

if [ "$(id -u)" -ne 0 ]; then echo "tests/deploy needs root (network namespaces, mounts)"; FAILED=1; finish; fi

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v file >/dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
    >/tmp/tally-deploy-apt.log 2>&1 || { tail -5 /tmp/tally-deploy-apt.log; FAILED=1; finish; }
fi
command -v node >/dev/null || { echo "node is not installed"; FAILED=1; finish; }
command -v kubectl >/dev/null || { echo "kubectl is not installed"; FAILED=1; finish; }
if [ ! -d "$here/node_modules/kubernetes-models" ] || [ ! -d "$here/node_modules/tigerbeetle-node" ]; then
  echo "installing tests/deploy dependencies (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund >/tmp/tally-deploy-npm.log 2>&1) || { tail -5 /tmp/tally-deploy-npm.log; FAILED=1; finish; }
fi
make -s tally build/release/tests/server/no_io_uring build/release/tests/server/digest >/tmp/tally-deploy-make.log 2>&1 ||
  { tail -20 /tmp/tally-deploy-make.log; FAILED=1; finish; }

P="td$$"
NETNS="r0 r1 r2 client stranger node readme"
WORK=$(mktemp -d /tmp/tally-deploy.XXXXXX)
driver=""
ctr=""
cleanup() {
  [ -n "$driver" ] && kill -TERM "$driver" 2>/dev/null && wait "$driver" 2>/dev/null
  for ns in $NETNS sw; do
    for pid in $(ip netns pids "$P-$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  sleep 0.2
  for ns in $NETNS sw; do ip netns del "$P-$ns" 2>/dev/null; rm -rf "/etc/netns/$P-$ns"; done
  rmdir /etc/netns 2>/dev/null # only if no other run uses it
  [ -n "$ctr" ] && { buildah umount "$ctr" >/dev/null 2>&1; buildah rm "$ctr" >/dev/null 2>&1; }
  if [ -n "${TALLY_DEPLOY_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---- 1. the image ----
echo "# image"
t=$SECONDS
if deploy/build-image.sh >"$WORK/build-image.log" 2>&1; then
  image_line=$(tail -1 "$WORK/build-image.log")
  ok "image built with buildah in $((SECONDS - t)) s (static make included): $image_line"
else
  tail -20 "$WORK/build-image.log"; fail "deploy/build-image.sh"; finish
fi
IMAGE=localhost/tally:latest
cfg=$(buildah inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Volumes}} {{.OCIv1.Config.WorkingDir}}' "$IMAGE")
case $cfg in
  "65532:65532 [/tally] map[/data:{}] /data") ok "image config: user, entrypoint, volume, workdir: $cfg" ;;
  *) fail "image config: $cfg" ;;
esac
# podman, if it can run containers on this machine (its default ulimits need CAP_SYS_RESOURCE,
# which this sandbox lacks: without them).
printf '[containers]\ndefault_ulimits = []\n' >"$WORK/containers.conf"
if command -v podman >/dev/null &&
  out=$(CONTAINERS_CONF="$WORK/containers.conf" timeout 60 podman run --rm --network=none --read-only \
    --cap-drop=ALL --security-opt=no-new-privileges "$IMAGE" version 2>&1) &&
  echo "$out" | grep -q '^Tally version'; then
  ok "podman runs the image: $(echo "$out" | head -1)"
  PODMAN=1
else
  echo "# podman cannot run containers here: $(echo "${out:-podman not installed}" | tail -1); unpacking the image instead"
  PODMAN=0
fi
ctr=$(buildah from "$IMAGE") && mnt=$(buildah mount "$ctr") && mkdir -p "$WORK/rootfs" && cp -a "$mnt/." "$WORK/rootfs/"
buildah umount "$ctr" >/dev/null 2>&1; buildah rm "$ctr" >/dev/null 2>&1; ctr=""
ROOTFS="$WORK/rootfs"
if [ -x "$ROOTFS/tally" ] && file "$ROOTFS/tally" | grep -q 'statically linked' && [ "$(stat -c %u "$ROOTFS/data")" = 65532 ]; then
  ok "image root file system: $(ls "$ROOTFS" | tr '\n' ' ')(/tally static, $(stat -c %s "$ROOTFS/tally") bytes; /data owned by 65532)"
else
  fail "image root file system: $(ls -la "$ROOTFS" 2>&1 | head -10)"; finish
fi
journal_slots=$("$ROOTFS/tally" version --verbose | sed -n 's/^ *journal slots: \([0-9]*\).*/\1/p')

# ---- 2. the manifests ----
echo "# manifests"
mkdir -p "$WORK/rendered"
if kubectl kustomize deploy/kubernetes >"$WORK/rendered/base.yaml" 2>"$WORK/kustomize.err" &&
  kubectl kustomize --load-restrictor=LoadRestrictionsNone deploy/kubernetes/overlays/single-replica \
    >"$WORK/rendered/single-replica.yaml" 2>>"$WORK/kustomize.err"; then
  ok "kubectl kustomize renders deploy/kubernetes ($(grep -c '^kind:' "$WORK/rendered/base.yaml") objects) and overlays/single-replica"
else
  cat "$WORK/kustomize.err"; fail "kubectl kustomize"; finish
fi
(cd "$here" && timeout 60 node validate.mjs --self-test "$WORK/rendered/base.yaml" "$WORK/rendered/single-replica.yaml") >"$WORK/validate.out" 2>&1
sed 's/^/  /' "$WORK/validate.out"; take "$WORK/validate.out"

# ---- network namespaces: a bridge, the pods, the node ----
setup() {
  ip netns add "$P-sw" || return 1
  ip -n "$P-sw" link add br0 type bridge && ip -n "$P-sw" link set br0 up || return 1
  local ns ipaddr k=0
  for ns in $NETNS; do
    mkdir -p "/etc/netns/$P-$ns"
    echo "127.0.0.1 localhost" >"/etc/netns/$P-$ns/hosts"
    # Names not in the hosts file fail at once rather than wait for a DNS server.
    echo "nameserver 127.0.0.1" >"/etc/netns/$P-$ns/resolv.conf"
    ip netns add "$P-$ns" && ip -n "$P-$ns" link set lo up || return 1
    [ "$ns" = readme ] && continue
    case $ns in
      r0) ipaddr=10.78.0.1 ;; r1) ipaddr=10.78.0.2 ;; r2) ipaddr=10.78.0.3 ;;
      client) ipaddr=10.78.0.100 ;; stranger) ipaddr=10.78.0.101 ;; node) ipaddr=10.78.0.254 ;;
    esac
    k=$((k + 1)) # interface names have at most 15 characters
    ip link add "${P}v$k" type veth peer name "${P}s$k" &&
      ip link set "${P}v$k" netns "$P-$ns" &&
      ip link set "${P}s$k" netns "$P-sw" &&
      ip -n "$P-sw" link set "${P}s$k" master br0 &&
      ip -n "$P-sw" link set "${P}s$k" up &&
      ip -n "$P-$ns" link set "${P}v$k" name eth0 &&
      ip -n "$P-$ns" addr add "$ipaddr/24" dev eth0 &&
      ip -n "$P-$ns" link set eth0 up || return 1
  done
  # The client Service's ClusterIP, in the pods that use it: kube-proxy's chains (pods.js fills
  # them with the ready endpoints).
  for ns in client stranger; do
    ip -n "$P-$ns" route add 10.96.0.0/16 dev eth0 &&
      ip netns exec "$P-$ns" iptables -w -t nat -N SVC &&
      ip netns exec "$P-$ns" iptables -w -t nat -A OUTPUT -d 10.96.0.10 -p tcp --dport 3000 -j SVC &&
      ip netns exec "$P-$ns" iptables -w -N SVCREJECT &&
      ip netns exec "$P-$ns" iptables -w -A OUTPUT -j SVCREJECT || return 1
  done
}
if ! setup; then fail "could not create the network namespaces"; finish; fi

# ---- 3. the README's client example, as written ----
echo "# README client example"
awk '/^A client \(/{f=1} f&&/^```js$/{p=1;next} p&&/^```$/{exit} p' README.md >"$WORK/example.js"
mkdir -p "$WORK/readme"
"$root/tally" format --cluster=0 --replica=0 --replica-count=1 --development "$WORK/readme/0_0.tally" >/dev/null 2>&1
ip netns exec "$P-readme" "$root/tally" start --addresses=3000 "$WORK/readme/0_0.tally" >"$WORK/readme/replica.log" 2>&1 &
rpid=$!
for _ in $(seq 100); do grep -q 'listening on' "$WORK/readme/replica.log" && break; sleep 0.1; done
for run in 1 2; do
  out=$(NODE_PATH="$here/node_modules" ip netns exec "$P-readme" timeout 30 node "$WORK/example.js" 2>&1); rc=$?
  # The second run finds everything there ("exists") and the balances unchanged.
  want='account 2: debits_posted=0 credits_posted=10'
  if [ $rc -eq 0 ] && echo "$out" | grep -q "$want"; then
    ok "README client example, run $run: $(echo "$out" | tr '\n' ';' | cut -c1-160)"
  else
    fail "README client example, run $run (exit $rc): $(echo "$out" | tail -5)"
  fi
done
kill -TERM $rpid 2>/dev/null; wait $rpid 2>/dev/null

# ---- 4. the pods ----
echo "# pods (rendered StatefulSet in network namespaces)"
DEPLOY_NS="$P" DEPLOY_WORK="$WORK" DEPLOY_ROOTFS="$ROOTFS" DEPLOY_JOURNAL_SLOTS="${journal_slots:-1024}" \
  DEPLOY_NO_IO_URING="$root/build/release/tests/server/no_io_uring" \
  DEPLOY_DIGEST="$root/build/release/tests/server/digest" \
  timeout -k 10 "${TALLY_DEPLOY_TIMEOUT:-420}" ip netns exec "$P-node" node "$here/pods.js" "$@" >"$WORK/pods.out" 2>&1 &
driver=$!
tail -f --pid=$driver "$WORK/pods.out" 2>/dev/null | sed 's/^/  /' &
wait "$driver"; rc=$?
driver=""
sleep 0.3
[ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "  the pods' scenarios did not finish within ${TALLY_DEPLOY_TIMEOUT:-420} s"
take "$WORK/pods.out"
[ $rc -ne 0 ] && grep -q ', 0 failed$' "$WORK/pods.out" && FAILED=$((FAILED + 1))
finish
