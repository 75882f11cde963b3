#!/usr/bin/env bash
# Start the image's binary from the image's filesystem (target/image-rootfs, made by
# hack/image-rootfs.sh) the way a Pod runs it, and check that it answers.
#
#   hack/image-test.sh            (builds the rootfs first unless IMAGE_TEST_NO_BUILD=1)
#
# As root with unshare(1) (the normal case on CI machines), in a private mount namespace:
#   - the rootfs is bind-mounted read-only (readOnlyRootFilesystem: true),
#   - a tmpfs is mounted at /var/run/cmi (the Pod's `emptyDir: {medium: Memory}`),
#   - `chroot --userspec=65532:65532` runs /metal-driver serve with an EMPTY environment
#     (env -i), the socket unix:///var/run/cmi/cmi.sock and the side port on loopback.
# Otherwise (no root / no unshare) it runs the same static binary directly, with an empty
# environment, as the current user, and says so.
#
# Then, from outside: CMI Identity/Probe and GetPluginInfo, and grpc.health.v1 over the unix
# socket (Python grpcio with stubs generated from proto/cmi/v1/cmi.proto; the venv of
# hack/tools.sh), and /healthz, /readyz, /metrics on the side port. Finally SIGTERM must
# stop it cleanly within its grace period.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RFS="${IMAGE_ROOTFS_DIR:-$ROOT/target}/image-rootfs"
CACHE="${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}"
PY="$CACHE/venv-interop/bin/python"

log() { echo "image-test: $*" >&2; }
die() { echo "image-test: FAILED: $*" >&2; exit 1; }

# --- outside the namespace: build, tools, then re-enter isolated ----------------------------
if [[ "${IMAGE_TEST_INNER:-0}" != 1 ]]; then
  if [[ "${IMAGE_TEST_NO_BUILD:-0}" != 1 ]]; then
    "$ROOT/hack/image-rootfs.sh" >/dev/null
  fi
  [[ -x "$RFS/metal-driver" ]] || die "$RFS/metal-driver missing (run hack/image-rootfs.sh)"
  if [[ ! -x "$PY" ]] || ! "$PY" -c 'import grpc, grpc_tools, grpc_health' 2>/dev/null; then
    log "installing the Python gRPC client (hack/tools.sh)"
    "$ROOT/hack/tools.sh" >&2
  fi
  if [[ $(id -u) == 0 ]] && command -v unshare >/dev/null && command -v chroot >/dev/null \
    && unshare --mount --propagation private true 2>/dev/null; then
    IMAGE_TEST_INNER=1 IMAGE_TEST_MODE=chroot exec unshare --mount --propagation private "$0" "$@"
  fi
  log "not root or no mount namespaces here: running the static binary directly (no chroot,"
  log "no read-only root, current user); what is verified is the binary, not the layout"
  IMAGE_TEST_INNER=1 IMAGE_TEST_MODE=direct exec "$0" "$@"
fi

# --- inside: private mount namespace (chroot mode) or plain process (direct mode) ----------
WORK="$(mktemp -d /tmp/metal-driver-image-test.XXXXXX)"
PID=""
cleanup() {
  local rc=$?
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  if [[ $rc != 0 && -f "$WORK/driver.log" ]]; then
    echo "----- driver log -----" >&2
    tail -n 40 "$WORK/driver.log" >&2
  fi
  # Unmount first; never delete through a mount (the bind of the rootfs) if that failed.
  umount -R "$WORK/root" 2>/dev/null || true
  if ! mountpoint -q "$WORK/root" 2>/dev/null; then rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT="$(free_port)"
ARGS=(serve --endpoint unix:///var/run/cmi/cmi.sock --http-addr "127.0.0.1:$HTTP_PORT"
  --metal-api-url http://127.0.0.1:9/metal/v1 --grace-period 5s)

if [[ "$IMAGE_TEST_MODE" == chroot ]]; then
  mkdir -p "$WORK/root"
  mount --bind "$RFS" "$WORK/root"
  mount -o remount,bind,ro "$WORK/root"
  # The Pod's memory-backed emptyDir: tmpfs with its default root mode (1777).
  mount -t tmpfs -o size=1m tmpfs "$WORK/root/var/run/cmi"
  touch "$WORK/root/probe" 2>/dev/null && die "root filesystem is writable; expected read-only"
  SOCK="$WORK/root/var/run/cmi/cmi.sock"
  log "starting /metal-driver from a read-only $RFS as 65532:65532 with an empty environment"
  env -i "$(command -v chroot)" --userspec=65532:65532 "$WORK/root" /metal-driver "${ARGS[@]}" \
    >"$WORK/driver.out" 2>"$WORK/driver.log" &
  PID=$!
else
  mkdir -m 0700 "$WORK/run"
  SOCK="$WORK/run/cmi.sock"
  ARGS[2]="unix://$SOCK"
  log "starting $RFS/metal-driver directly with an empty environment"
  env -i "$RFS/metal-driver" "${ARGS[@]}" >"$WORK/driver.out" 2>"$WORK/driver.log" &
  PID=$!
fi

# The first stdout line announces the socket; wait for it (bounded), never sleep blindly.
for _ in $(seq 1 200); do
  [[ -s "$WORK/driver.out" ]] && break
  kill -0 "$PID" 2>/dev/null || die "metal-driver exited before listening"
  sleep 0.05
done
line="$(head -n1 "$WORK/driver.out")"
[[ "$line" == "listening on unix://"* ]] || die "first stdout line was '$line', expected 'listening on unix://…'"
log "$line"
[[ -S "$SOCK" ]] || die "no socket at $SOCK"
mode="$(stat -c %a "$SOCK")"
[[ "$mode" == 600 ]] || die "socket mode $mode, expected 600"
if [[ "$IMAGE_TEST_MODE" == chroot ]]; then
  owner="$(stat -c %u "$SOCK")"
  [[ "$owner" == 65532 ]] || die "socket owned by uid $owner, expected 65532"
  [[ "$(stat -c %u /proc/$PID)" == 65532 ]] || die "process does not run as 65532"
fi

# CMI calls over the socket, from an independent client (stubs generated here from our proto).
"$PY" - "$ROOT/proto/cmi/v1" "$SOCK" "$WORK/stubs" <<'PYEOF'
import importlib, sys
from pathlib import Path

proto_dir, sock, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
import grpc, grpc_tools
from grpc_tools import protoc
from grpc_health.v1 import health_pb2, health_pb2_grpc

out.mkdir(parents=True, exist_ok=True)
inc = str(Path(grpc_tools.__file__).parent / "_proto")
rc = protoc.main(["protoc", f"-I{inc}", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "cmi.proto"])
assert rc == 0, f"protoc failed: {rc}"
sys.path.insert(0, str(out))
pb2 = importlib.import_module("cmi_pb2")
pb2_grpc = importlib.import_module("cmi_pb2_grpc")

# grpc-core clients (Python, C++) send the socket path as :authority, which the server's
# HTTP/2 layer rejects as malformed (RST_STREAM PROTOCOL_ERROR); grpc-go and our Rust client
# send "localhost". Say "localhost" like they do.
with grpc.insecure_channel(f"unix://{sock}", options=[("grpc.default_authority", "localhost")]) as ch:
    identity = pb2_grpc.IdentityStub(ch)
    probe = identity.Probe(pb2.ProbeRequest(), timeout=10)
    assert probe.HasField("ready") and probe.ready.value, f"Probe not ready: {probe}"
    info = identity.GetPluginInfo(pb2.GetPluginInfoRequest(), timeout=10)
    assert info.name and info.version, f"GetPluginInfo incomplete: {info}"
    health = health_pb2_grpc.HealthStub(ch)
    for svc in ("", "cmi.v1.Identity", "cmi.v1.Machine"):
        r = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING, (svc, r)
    print(f"image-test: Probe ready=true; plugin {info.name} {info.version}; grpc.health SERVING", file=sys.stderr)
PYEOF

for path in healthz readyz; do
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HTTP_PORT/$path")"
  [[ "$code" == 200 ]] || die "/$path answered $code"
done
metrics="$(curl -fsS --max-time 5 "http://127.0.0.1:$HTTP_PORT/metrics")"
grep -q '^grpc_server_handled_total{grpc_service="cmi.v1.Identity",grpc_method="Probe",grpc_code="OK"} 1' <<<"$metrics" \
  || die "/metrics lacks the Probe call"
log "/healthz 200, /readyz 200, /metrics counts the Probe"

kill -TERM "$PID"
for _ in $(seq 1 200); do
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.05
done
kill -0 "$PID" 2>/dev/null && die "still running 10s after SIGTERM"
wait "$PID" && rc=0 || rc=$?
[[ $rc == 0 ]] || die "exit status $rc after SIGTERM"
PID=""
log "SIGTERM: clean exit"
log "ok ($IMAGE_TEST_MODE mode)"
