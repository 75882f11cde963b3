#!/usr/bin/env bash
# Conformance suite: the driver and simulator against the official Metal OpenAPI spec
# (Prism validating proxy and mock), an independent gRPC client generated from the
# reference cmi.proto, standard gRPC health/reflection clients, and the proto
# wire-compatibility check.
#
#   hack/conformance.sh [pytest args...]     e.g. hack/conformance.sh -k errors -x
#                                            or   hack/conformance.sh tests/interop/test_errors.py
#
# Needs: cargo, python3 (3.10+), node + npm; go is optional (grpc-health-probe).
# Tools are cached in ${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver} (hack/tools.sh).
# The shared/ directory is expected at ../shared from the repo root (METAL_DRIVER_SHARED
# overrides). Process logs of the last run: target/interop-logs/.
# Exit status: pytest's (0 = all passed); non-zero on any failure, error or violation.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

started=$SECONDS
eval "$(hack/tools.sh --env)"

export METAL_DRIVER_SHARED="${METAL_DRIVER_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
if [[ ! -f "$METAL_DRIVER_SHARED/reference/cmi/cmi.proto" ]]; then
  echo "conformance.sh: no reference at $METAL_DRIVER_SHARED (set METAL_DRIVER_SHARED)" >&2
  exit 2
fi

if [[ -z "${METAL_DRIVER_BIN:-}" ]]; then
  echo "conformance.sh: cargo build --bin metal-driver" >&2
  cargo build --quiet --bin metal-driver
  export METAL_DRIVER_BIN="$ROOT/target/debug/metal-driver"
fi

export PYTHONDONTWRITEBYTECODE=1
export METAL_DRIVER_INTEROP_LOGS="${METAL_DRIVER_INTEROP_LOGS:-$ROOT/target/interop-logs}"

# Without a test path among the arguments, run the whole suite.
targets=("$ROOT/tests/interop")
for a in "$@"; do
  if [[ "$a" == tests/interop* || "$a" == "$ROOT"/tests/interop* ]]; then
    targets=()
    break
  fi
done

set +e
"$METAL_DRIVER_VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT/tests/interop" \
  "${targets[@]}" "$@"
rc=$?
set -e

echo "conformance.sh: pytest exit $rc after $((SECONDS - started))s (logs: $METAL_DRIVER_INTEROP_LOGS)" >&2
exit "$rc"
