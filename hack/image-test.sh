#!/usr/bin/env bash
# `make image-test`: inspect the OCI image `make image` built, unpack it, and start its
# entrypoint from the unpacked root filesystem the way a Pod in Gardener starts it — with the
# exact arguments of kubernetes/deployment.yaml's provider container (Gardener's helper's
# arguments; only --port moved to a free port) — against the e2e harness's kube-apiserver,
# until /healthz answers.
#
#   hack/image-test.sh      (builds the image first unless IMAGE_TEST_NO_BUILD=1)
#
# 1. Inspect (skopeo): the OCI layout and the docker archive hold the same image: one layer,
#    user 65532:65532, ENTRYPOINT ["/metal-driver"], port 10259, the OCI labels.
# 2. Unpack (umoci) the layout into a bundle; the rootfs must hold a static binary only.
# 3. The harness (hack/e2e-env.sh; reused when METAL_DRIVER_STATE points at a running one),
#    kubernetes/rbac.yaml applied, a token of ServiceAccount machine-controller-manager.
# 4. As root with unshare(1), in a private mount namespace: the rootfs bind-mounted read-only
#    (readOnlyRootFilesystem), a tmpfs at /var/run holding what the kubelet mounts (the
#    service-account token, CA and namespace at /var/run/secrets/kubernetes.io/serviceaccount)
#    and what Gardener mounts (the target kubeconfig at
#    /var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig); then the image's
#    entrypoint runs via `chroot --userspec=65532:65532` with only the Pod's environment
#    (KUBERNETES_SERVICE_HOST/PORT). Without root or unshare the test stops: it verifies the
#    image, not the binary.
# 5. /healthz and /readyz answer 200; /metrics carries the controller's and the driver's
#    series; the controller holds Lease machine-controller (so inClusterConfig and the RBAC
#    of rbac.yaml work); every log line is Gardener-shaped JSON; SIGTERM exits 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${IMAGE_OUT_DIR:-$ROOT/target/image}"
VERSION="$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")"
OCI="$OUT/oci"
ARCHIVE="$OUT/metal-driver-$VERSION.tar"
SA_DIR=/var/run/secrets/kubernetes.io/serviceaccount
GENERIC_DIR=/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig

log() { echo "image-test: $*" >&2; }
die() { echo "image-test: FAILED: $*" >&2; exit 1; }

# --- outside the mount namespace -------------------------------------------------------
if [[ "${IMAGE_TEST_INNER:-0}" != 1 ]]; then
  [[ $(id -u) == 0 ]] && command -v unshare >/dev/null && command -v chroot >/dev/null \
    && unshare --mount --propagation private true 2>/dev/null \
    || die "needs root with unshare(1) and chroot(1): the image is run from its unpacked rootfs"
  if [[ "${IMAGE_TEST_NO_BUILD:-0}" != 1 ]]; then
    "$ROOT/hack/image.sh" >/dev/null
  fi
  for t in umoci skopeo; do command -v "$t" >/dev/null || die "$t missing (hack/image.sh installs it)"; done
  [[ -f "$OCI/index.json" && -f "$ARCHIVE" ]] || die "no image in $OUT (run make image)"

  WORK="$(mktemp -d /tmp/metal-driver-image-test.XXXXXX)"
  export WORK
  OWN_ENV=0
  export METAL_DRIVER_STATE="${METAL_DRIVER_STATE:-/tmp/metal-driver-image-test}"
  cleanup_outer() {
    local rc=$?
    if [[ $OWN_ENV == 1 ]]; then "$ROOT/hack/e2e-env.sh" down >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
    exit $rc
  }
  trap cleanup_outer EXIT

  # 1. Inspect.
  skopeo inspect --config "oci:$OCI:$VERSION" >"$WORK/config.json"
  skopeo inspect "oci:$OCI:$VERSION" >"$WORK/oci.json"
  skopeo inspect "docker-archive:$ARCHIVE" >"$WORK/archive.json"
  python3 - "$WORK" "$VERSION" <<'PYEOF'
import json, sys
from pathlib import Path
work, version = Path(sys.argv[1]), sys.argv[2]
cfg = json.loads((work / "config.json").read_text())
oci = json.loads((work / "oci.json").read_text())
arc = json.loads((work / "archive.json").read_text())
c = cfg["config"]
def check(ok, what):
    if not ok:
        sys.exit(f"image-test: FAILED: {what}")
check(cfg["os"] == "linux" and cfg["architecture"] == "amd64", f"platform {cfg['os']}/{cfg['architecture']}")
check(c.get("User") == "65532:65532", f"user {c.get('User')!r}, expected 65532:65532 (non-root, numeric)")
check(c.get("Entrypoint") == ["/metal-driver"], f"entrypoint {c.get('Entrypoint')}")
check("10259/tcp" in (c.get("ExposedPorts") or {}), f"ports {c.get('ExposedPorts')}")
labels = c.get("Labels") or {}
for key in ("title", "version", "revision", "source", "licenses", "created"):
    check(f"org.opencontainers.image.{key}" in labels, f"label org.opencontainers.image.{key} missing")
check(labels["org.opencontainers.image.version"] == version, "version label")
check(len(cfg["rootfs"]["diff_ids"]) == 1, f"{len(cfg['rootfs']['diff_ids'])} layers, expected 1 (FROM scratch)")
check(arc["Labels"] == labels, "the docker archive's labels differ from the OCI image's")
check(len(arc["Layers"]) == 1, "the docker archive has another number of layers")
print(f"image-test: inspect: {oci['Digest']}, user 65532:65532, entrypoint /metal-driver, 1 layer, labels ok; docker archive agrees", file=sys.stderr)
with open(work / "entrypoint", "w") as f:
    f.write("\n".join(c["Entrypoint"]) + "\n")
PYEOF

  # 2. Unpack.
  umoci unpack --image "$OCI:$VERSION" "$WORK/bundle" >/dev/null
  RFS="$WORK/bundle/rootfs"
  BIN="$RFS$(head -n1 "$WORK/entrypoint")"
  [[ -x "$BIN" ]] || die "the entrypoint $(head -n1 "$WORK/entrypoint") is not in the image"
  if command -v readelf >/dev/null; then
    readelf -lW "$BIN" | grep -q 'program interpreter' && die "the entrypoint is dynamically linked"
  fi
  log "unpacked: $(find "$RFS" -type f | sed "s|$RFS||" | sort | tr '\n' ' ')"

  # 3. The harness, RBAC, a service-account token.
  if ! "$ROOT/hack/e2e-env.sh" status >/dev/null 2>&1; then OWN_ENV=1; fi
  eval "$("$ROOT/hack/e2e-env.sh" up)"
  KUBECTL="$METAL_DRIVER_E2E_KUBECTL"
  "$KUBECTL" apply -f "$ROOT/kubernetes/rbac.yaml" >/dev/null
  mkdir -p "$WORK/pod"
  "$KUBECTL" -n default create token machine-controller-manager --duration=1h >"$WORK/pod/token"
  cp "$METAL_DRIVER_E2E_CA" "$WORK/pod/ca.crt"
  echo -n default >"$WORK/pod/namespace"
  cp "$KUBECONFIG" "$WORK/pod/kubeconfig"
  chmod 0644 "$WORK/pod/"*
  # The provider container's arguments, exactly (only the port moved).
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$KUBECTL" create --dry-run=client -o json -f "$ROOT/kubernetes/deployment.yaml" | python3 -c '
import json, sys
text, docs, at = sys.stdin.read(), [], 0
while text[at:].strip():
    doc, at = json.JSONDecoder().raw_decode(text, len(text) - len(text[at:].lstrip()))
    docs.extend(doc.get("items", [doc]))
for it in docs:
    if it.get("kind") != "Deployment":
        continue
    for c in it["spec"]["template"]["spec"]["containers"]:
        if c["name"] == "machine-controller-manager-provider-equinix-metal":
            assert not c.get("command"), "the helper sets no command"
            for a in c["args"]:
                print("--port=" + sys.argv[1] if a.startswith("--port=") else a)
' "$port" >"$WORK/args"
  [[ -s "$WORK/args" ]] || die "no provider container in kubernetes/deployment.yaml"
  server="${METAL_DRIVER_E2E_SERVER#https://}"
  export RFS PORT="$port" API_HOST="${server%:*}" API_PORT="${server##*:}"
  IMAGE_TEST_INNER=1 unshare --mount --propagation private "$0" "$@"
  exit $?
fi

# --- inside: a private mount namespace ---------------------------------------------------
PID=""
cleanup() {
  local rc=$?
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  if [[ $rc != 0 && -f "$WORK/sidecar.log" ]]; then
    echo "----- sidecar log -----" >&2
    tail -n 40 "$WORK/sidecar.log" >&2
  fi
  umount -R "$WORK/root" 2>/dev/null || true
  exit $rc
}
trap cleanup EXIT

mkdir -p "$WORK/root"
mount --bind "$RFS" "$WORK/root"
mount -o remount,bind,ro "$WORK/root"
touch "$WORK/root/probe" 2>/dev/null && die "root filesystem is writable; expected read-only"
# What the kubelet mounts into the container (a tmpfs standing in for its volumes).
[[ -d "$WORK/root/var/run" ]] || die "the image has no /var/run to mount the Pod's volumes on"
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$WORK/root/var/run"
mkdir -p "$WORK/root$SA_DIR" "$WORK/root$GENERIC_DIR"
cp "$WORK/pod/token" "$WORK/pod/ca.crt" "$WORK/pod/namespace" "$WORK/root$SA_DIR/"
cp "$WORK/pod/kubeconfig" "$WORK/root$GENERIC_DIR/kubeconfig"

mapfile -t ARGS <"$WORK/args"
ENTRYPOINT="$(head -n1 "$WORK/entrypoint")"
log "starting $ENTRYPOINT ${ARGS[*]}"
log "  from a read-only $RFS, as 65532:65532, environment: KUBERNETES_SERVICE_HOST/PORT only"
env -i KUBERNETES_SERVICE_HOST="$API_HOST" KUBERNETES_SERVICE_PORT="$API_PORT" \
  "$(command -v chroot)" --userspec=65532:65532 "$WORK/root" "$ENTRYPOINT" "${ARGS[@]}" \
  >"$WORK/sidecar.out" 2>"$WORK/sidecar.log" &
PID=$!

URL="http://127.0.0.1:$PORT"
healthy=0
for _ in $(seq 1 600); do
  kill -0 "$PID" 2>/dev/null || die "the entrypoint exited before /healthz answered"
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/healthz" || true)" == 200 ]]; then
    healthy=1
    break
  fi
  sleep 0.1
done
[[ $healthy == 1 ]] || die "/healthz did not answer 200 within 60 s"
log "/healthz 200 ($(head -n1 "$WORK/sidecar.out"))"
[[ "$(stat -c %u /proc/$PID)" == 65532 ]] || die "the process does not run as 65532"

ready=0
for _ in $(seq 1 300); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/readyz" || true)" == 200 ]] && { ready=1; break; }
  sleep 0.1
done
[[ $ready == 1 ]] || die "/readyz did not answer 200 within 30 s"
holder=""
for _ in $(seq 1 150); do
  holder="$("$METAL_DRIVER_E2E_KUBECTL" --kubeconfig "$KUBECONFIG" -n default get lease machine-controller \
    -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
  [[ -n "$holder" ]] && break
  sleep 0.2
done
[[ -n "$holder" ]] || die "no Lease machine-controller: the in-cluster credentials or RBAC do not work"
metrics="$(curl -fsS --max-time 5 "$URL/metrics")"
# The controller's series and the in-process driver's (its gRPC server counted the
# controller's Probe) on the one port. (The mcm_cloud_api_* series appear with the first
# Metal API call, which this test, without Machines, does not make.)
grep -q '^metal_driver_controller_leader 1' <<<"$metrics" || die "/metrics: not the leader"
grep -q '^grpc_server_handled_total{grpc_service="cmi.v1.Identity",grpc_method="Probe",grpc_code="OK"} ' <<<"$metrics" \
  || die "/metrics lacks the in-process driver's series"
log "/readyz 200; Lease machine-controller held by $holder; /metrics has the controller's and the driver's series"

kill -TERM "$PID"
for _ in $(seq 1 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && die "still running 30 s after SIGTERM"
wait "$PID" && rc=0 || rc=$?
PID=""
[[ $rc == 0 ]] || die "exit status $rc after SIGTERM"
python3 - "$WORK/sidecar.log" <<'PYEOF'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
for l in lines:
    try:
        v = json.loads(l)
    except ValueError:
        sys.exit(f"image-test: FAILED: a log line that is not JSON: {l}")
    missing = [k for k in ("level", "ts", "logger", "msg") if not isinstance(v.get(k), str)]
    if missing:
        sys.exit(f"image-test: FAILED: log line without {missing}: {l}")
print(f"image-test: {len(lines)} log lines, all Gardener-shaped JSON", file=sys.stderr)
PYEOF
log "SIGTERM: clean exit"
log "ok"
