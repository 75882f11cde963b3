#!/usr/bin/env bash
# End-to-end tests of the machine controller: brings the local Kubernetes
# environment up (hack/e2e-env.sh: real etcd + kube-apiserver + MCM's CRDs; the Go binaries are
# built once and cached), runs tests/e2e_controller/ against it, and brings it down.
#
#   hack/e2e.sh [TEST-NAME-FILTER]
#
# Each test starts its own `metal-driver sim` (registering Nodes), `serve`, `controller` and,
# for the MachineDeployment test, MCM's machine-controller-manager, in its own namespace. The
# oracle tests run each scenario twice, once with `controller` and once with hack/mcm-oracle
# (MCM's machine controller forwarding to `serve`), and compare the outcome.
#
# Environment:
#   METAL_DRIVER_STATE   state dir of the environment (default /tmp/metal-driver-e2e-controller,
#                        so it never takes over an environment you started by hand)
#   E2E_KEEP=1           leave the environment up afterwards (eval "$(hack/e2e-env.sh env)")
#   E2E_TEST_THREADS     parallel tests (default 2; the machine has 2 cores)
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
export METAL_DRIVER_STATE="${METAL_DRIVER_STATE:-/tmp/metal-driver-e2e-controller}"
ENV_SH="$HACK_DIR/e2e-env.sh"
CARGO="${CARGO:-cargo}"

log() { echo "e2e: $*" >&2; }

finish() {
  local rc=$?
  if [[ "${E2E_KEEP:-0}" == 1 ]]; then
    log "E2E_KEEP=1: environment left up; eval \"\$(METAL_DRIVER_STATE=$METAL_DRIVER_STATE $ENV_SH env)\""
  else
    "$ENV_SH" down >/dev/null || rc=1
  fi
  if [[ $rc == 0 ]]; then log "PASSED in ${SECONDS}s"; else log "FAILED (exit $rc) after ${SECONDS}s; logs in $ROOT/target/e2e-logs/"; fi
  exit "$rc"
}

start=$SECONDS
# The MCM binary and the oracle (MCM's machine controller forwarding to our driver) are built
# (or found in the cache) up front so no test pays for them.
bins="$("$HACK_DIR/kube-bins.sh" --quiet machine-controller-manager mcm-oracle)"
bin_of() { sed -n "s/^$1=//p" <<<"$bins"; }
export METAL_DRIVER_E2E_MCM_BIN="$(bin_of machine-controller-manager)"
export METAL_DRIVER_E2E_ORACLE_BIN="$(bin_of mcm-oracle)"
log "Go binaries ready in $((SECONDS - start))s"

trap finish EXIT
t=$SECONDS
eval "$("$ENV_SH" up)"
log "environment up in $((SECONDS - t))s ($METAL_DRIVER_E2E_SERVER)"

t=$SECONDS
"$CARGO" build --bin metal-driver --test e2e_controller >&2
log "Rust build in $((SECONDS - t))s"

t=$SECONDS
export METAL_DRIVER_E2E=1
"$CARGO" test --test e2e_controller -- --ignored --test-threads="${E2E_TEST_THREADS:-2}" --nocapture ${1:+"$1"}
log "tests ran in $((SECONDS - t))s"
