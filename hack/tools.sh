#!/usr/bin/env bash
# Install the pinned tools of the conformance suite (tests/interop) into a cache directory,
# idempotently. A second run only compares stamps and takes well under a second.
#
#   hack/tools.sh            install (or verify) everything, log to stderr
#   hack/tools.sh --env      same, then print `export NAME=value` lines on stdout, for
#                            `eval "$(hack/tools.sh --env)"`
#
# What goes where (all under ${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}):
#   venv-interop/          Python venv from tests/interop/requirements.txt (every dependency pinned)
#   prism/                 @stoplight/prism-cli via `npm ci` from hack/prism/package{,-lock}.json
#   bin/grpc-health-probe  built with `go install` from the Go module proxy (optional: skipped
#                          with a note when `go` is missing or METAL_DRIVER_SKIP_GO=1)
# Each part carries a stamp (hash of its inputs); a changed pin reinstalls that part only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}"
PYTHON="${METAL_DRIVER_PYTHON:-python3}"
GRPC_HEALTH_PROBE_VERSION="v0.4.61"

VENV="$CACHE/venv-interop"
PRISM_DIR="$CACHE/prism"
BIN_DIR="$CACHE/bin"

log() { printf 'tools.sh: %s\n' "$*" >&2; }

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

mkdir -p "$CACHE" "$BIN_DIR"

# One installer at a time per cache (parallel CI jobs, a developer running two suites).
exec 9>"$CACHE/.tools.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

install_venv() {
  local req="$ROOT/tests/interop/requirements.txt"
  local want
  want="$(hash_of "$req") $("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ -x "$VENV/bin/python" && -f "$VENV/.stamp" && "$(cat "$VENV/.stamp")" == "$want" ]]; then
    return 0
  fi
  log "creating Python venv in $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" >&2
  "$VENV/bin/python" -c 'import grpc, grpc_tools, grpc_health, grpc_reflection, google.protobuf, pytest, requests, yaml' >&2
  printf '%s' "$want" >"$VENV/.stamp"
}

install_prism() {
  local want
  want="$(hash_of "$ROOT/hack/prism/package.json" "$ROOT/hack/prism/package-lock.json") node-$(node --version)"
  if [[ -x "$PRISM_DIR/node_modules/.bin/prism" && -f "$PRISM_DIR/.stamp" && "$(cat "$PRISM_DIR/.stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing Prism with npm ci in $PRISM_DIR"
  rm -rf "$PRISM_DIR"
  mkdir -p "$PRISM_DIR"
  cp "$ROOT/hack/prism/package.json" "$ROOT/hack/prism/package-lock.json" "$PRISM_DIR/"
  (cd "$PRISM_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
  "$PRISM_DIR/node_modules/.bin/prism" --version >/dev/null
  printf '%s' "$want" >"$PRISM_DIR/.stamp"
}

install_health_probe() {
  local target="$BIN_DIR/grpc-health-probe-$GRPC_HEALTH_PROBE_VERSION"
  if [[ -x "$target" ]]; then
    ln -sf "$(basename "$target")" "$BIN_DIR/grpc-health-probe"
    return 0
  fi
  if [[ "${METAL_DRIVER_SKIP_GO:-0}" == 1 ]] || ! command -v go >/dev/null 2>&1; then
    log "skipping grpc-health-probe (no go toolchain or METAL_DRIVER_SKIP_GO=1); its test will skip"
    return 0
  fi
  log "building grpc-health-probe $GRPC_HEALTH_PROBE_VERSION with go install"
  local tmp
  tmp="$(mktemp -d)"
  GOBIN="$tmp" GOFLAGS="-buildvcs=false" \
    go install "github.com/grpc-ecosystem/grpc-health-probe@$GRPC_HEALTH_PROBE_VERSION" >&2
  mv "$tmp/grpc-health-probe" "$target"
  rmdir "$tmp"
  ln -sf "$(basename "$target")" "$BIN_DIR/grpc-health-probe"
}

install_venv
install_prism
install_health_probe

if [[ "${1:-}" == "--env" ]]; then
  printf 'export METAL_DRIVER_CACHE=%q\n' "$CACHE"
  printf 'export METAL_DRIVER_VENV=%q\n' "$VENV"
  printf 'export METAL_DRIVER_PRISM=%q\n' "$PRISM_DIR/node_modules/.bin/prism"
  if [[ -x "$BIN_DIR/grpc-health-probe" ]]; then
    printf 'export METAL_DRIVER_GRPC_HEALTH_PROBE=%q\n' "$BIN_DIR/grpc-health-probe"
  fi
fi
