#!/usr/bin/env bash
# Installs the independent gRPC load generator ghz (pinned) from Go modules into the
# project cache and prints its path. Idempotent: an existing binary is reused.
#   benches/ghz.sh            -> ${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}/bin/ghz-<version>
set -euo pipefail
GHZ_VERSION="${GHZ_VERSION:-v0.120.0}"
CACHE="${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}"
BIN="$CACHE/bin/ghz-$GHZ_VERSION"
if [[ ! -x "$BIN" ]]; then
  command -v go >/dev/null 2>&1 || { echo "ghz.sh: go is required to build ghz" >&2; exit 1; }
  mkdir -p "$CACHE/bin"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "ghz.sh: building github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >&2
  GOBIN="$tmp" GOFLAGS="${GOFLAGS:--buildvcs=false}" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >&2
  mv "$tmp/ghz" "$BIN"
fi
echo "$BIN"
