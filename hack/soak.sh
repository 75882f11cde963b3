#!/usr/bin/env bash
# Fault-injection soak of `metal-driver serve` and `metal-driver controller`.
#   hack/soak.sh [SECONDS]      default: $SOAK_SECONDS or 600 (10 minutes)
# Builds the driver and the soak binary, then runs target/debug/metal-driver-soak: an
# in-process simulator with ~20% mixed faults (429 + Retry-After, 500/503, latency,
# commit-then-drop), the driver as a subprocess on a private unix socket, killed and
# restarted every SOAK_RESTART_EVERY seconds (SIGKILL and SIGTERM alternately), and
# machines created, status-polled, listed and deleted concurrently over gRPC.
#
# The controller lane (on unless SOAK_CONTROLLER=0): a throw-away etcd + kube-apiserver with
# MCM's CRDs (hack/e2e-env.sh; its Go binaries are built once and cached, see
# hack/kube-bins.sh), where Machines are created, reconciled by `metal-driver controller`
# through the same driver, and deleted, while the controller is killed and restarted too
# (half a period after each driver restart).
#
# Chaos (on with the controller lane unless SOAK_CHAOS=0): a second throw-away API server is
# the target cluster (Nodes), and a pool of Machines lives through a network incident with
# the target API server stopped past the freeze timeout, every pool Node NotReady past the
# health timeout, and the control API server stopped past the leader lease (see
# src/bin/metal-driver-soak/chaos.rs).
#
# Bounded: new machines stop after SECONDS, the drain is capped by SOAK_DRAIN_SECONDS.
# Exit status 0 only if every invariant holds; figures and process logs go to target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${SOAK_SECONDS:-600}}"
restart="${SOAK_RESTART_EVERY:-$(( seconds >= 120 ? 30 : 15 ))}"
cargo build --quiet --bin metal-driver --bin metal-driver-soak

lane=()
if [[ "${SOAK_CONTROLLER:-1}" != 0 ]]; then
  export METAL_DRIVER_STATE="${SOAK_ENV_STATE:-/tmp/metal-driver-soak-env}"
  export E2E_NAMESPACE=soak
  target_state="${SOAK_TARGET_ENV_STATE:-/tmp/metal-driver-soak-target}"
  trap 'hack/e2e-env.sh down >/dev/null 2>&1 || true; METAL_DRIVER_STATE="$target_state" hack/e2e-env.sh down >/dev/null 2>&1 || true' EXIT
  eval "$(hack/e2e-env.sh up)"
  lane=(--kubeconfig "$KUBECONFIG")
  if [[ "${SOAK_CHAOS:-1}" != 0 ]]; then
    METAL_DRIVER_STATE="$target_state" E2E_NAMESPACE=target hack/e2e-env.sh up >/dev/null
    lane+=(--chaos true --target-kubeconfig "$target_state/kubeconfig"
      --control-state "$METAL_DRIVER_STATE" --target-state "$target_state")
  fi
fi

target/debug/metal-driver-soak --seconds "$seconds" --restart-every "$restart" \
  --drain-seconds "${SOAK_DRAIN_SECONDS:-180}" "${lane[@]}"
