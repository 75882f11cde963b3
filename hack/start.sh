#!/usr/bin/env bash
# `make start`: run the machine controller with the driver in the same process (`metal-driver`
# without a subcommand, exactly what the image runs in Gardener) on this machine against a
# cluster, as the Gardener provider's `make start` runs its machine-controller, so MCM's
# machine-controller-manager (or plain kubectl) can drive Machines through it. Ctrl-C (or
# SIGTERM) stops everything.
#
#   CONTROL_KUBECONFIG=... TARGET_KUBECONFIG=... CONTROL_NAMESPACE=... hack/start.sh
#
# Environment (the Gardener provider's names):
#   CONTROL_KUBECONFIG  cluster with Machines/MachineClasses/Secrets. Default: the environment
#                       of `make e2e-up` when one is running.
#   TARGET_KUBECONFIG   cluster the machines join as Nodes (default: CONTROL_KUBECONFIG;
#                       `none` = no Node interaction, machines end in phase Available)
#   CONTROL_NAMESPACE   namespace to manage (default: the e2e-env namespace, else `default`)
#   METAL_API_URL       Metal API for the driver. Default: a local `metal-driver sim` on a free
#                       port that registers a Ready Node per active device in the target cluster
#                       (standing in for the kubelet), accepting the token `sim-token`.
#   CONTROLLER_ARGS     extra flags (word-split), e.g. "--machine-safety-orphan-vms-period=1m"
#   METAL_DRIVER_CONTROLLER_PORT  side port for /healthz, /readyz, /metrics (default 10259)
#   BIN                 the metal-driver binary (default target/debug/metal-driver)
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
BIN="${BIN:-$ROOT/target/debug/metal-driver}"
RUN_DIR="$(mktemp -d /tmp/metal-driver-start.XXXXXX)"
PIDS=()
ADDR=""

log() { echo "start: $*" >&2; }
die() { echo "start: error: $*" >&2; exit 1; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x "$BIN" ]] || die "$BIN not found (run: make build)"

if [[ -z "${CONTROL_KUBECONFIG:-}" ]]; then
  if env_lines="$("$HACK_DIR/e2e-env.sh" env 2>/dev/null)"; then
    eval "$env_lines"
    CONTROL_KUBECONFIG="$KUBECONFIG"
    CONTROL_NAMESPACE="${CONTROL_NAMESPACE:-$METAL_DRIVER_E2E_NAMESPACE}"
    log "using the running e2e environment ($METAL_DRIVER_E2E_SERVER)"
  else
    die "set CONTROL_KUBECONFIG (and TARGET_KUBECONFIG, CONTROL_NAMESPACE), or run: make e2e-up"
  fi
fi
TARGET_KUBECONFIG="${TARGET_KUBECONFIG:-$CONTROL_KUBECONFIG}"
CONTROL_NAMESPACE="${CONTROL_NAMESPACE:-default}"

# start_bg NAME ARGS... : start BIN in the background, wait for its `listening on X` line,
# set ADDR=X. (Not used in $(...): the child must stay ours so the trap can stop it.)
start_bg() {
  local name="$1" line="" _
  shift
  "$BIN" "$@" >"$RUN_DIR/$name.out" 2> >(sed -u "s/^/[$name] /" >&2) &
  PIDS+=("$!")
  for _ in $(seq 1 300); do
    line="$(head -n1 "$RUN_DIR/$name.out" 2>/dev/null || true)"
    [[ -n "$line" ]] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || die "$name exited during start-up"
    sleep 0.1
  done
  [[ "$line" == "listening on "* ]] || die "$name did not report its address"
  ADDR="${line#listening on }"
}

if [[ -z "${METAL_API_URL:-}" ]]; then
  sim_args=(sim --listen=127.0.0.1:0)
  [[ "$TARGET_KUBECONFIG" != none ]] && sim_args+=(--register-nodes-kubeconfig="$TARGET_KUBECONFIG")
  start_bg sim "${sim_args[@]}"
  METAL_API_URL="$ADDR"
  log "simulator at $METAL_API_URL (token sim-token)"
fi
extra=()
# shellcheck disable=SC2206 # intentional word splitting of user-supplied flags
[[ -n "${CONTROLLER_ARGS:-}" ]] && extra=(${CONTROLLER_ARGS})
log "sidecar (controller + driver in one process): namespace $CONTROL_NAMESPACE, control $CONTROL_KUBECONFIG, target $TARGET_KUBECONFIG, Metal API $METAL_API_URL"
export METAL_API_URL
start_bg sidecar \
  --control-kubeconfig="$CONTROL_KUBECONFIG" \
  --target-kubeconfig="$TARGET_KUBECONFIG" \
  --namespace="$CONTROL_NAMESPACE" \
  --machine-creation-timeout=20m \
  --machine-drain-timeout=2h \
  --machine-health-timeout=10m \
  --machine-safety-orphan-vms-period=30m \
  --address=127.0.0.1 \
  --log-format="${METAL_DRIVER_LOG_FORMAT:-text}" \
  ${extra[@]+"${extra[@]}"}
log "health and metrics at $ADDR (/healthz, /readyz, /metrics)"
wait "${PIDS[-1]}"
