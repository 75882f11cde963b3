#!/usr/bin/env bash
# Build the release binary the container image ships: a static musl executable, built the
# same way inside the Dockerfile and by `make image-rootfs` (this script is the one recipe).
#
#   hack/build-static.sh [OUT]   build, then copy the binary to OUT (a file path) if given;
#                                prints the binary's path on stdout
#
# Needs: rustup (adds the x86_64-unknown-linux-musl target once) and a musl C compiler for
# ring's C/assembly (`x86_64-linux-musl-gcc`, Debian package musl-tools; installed with
# apt-get when running as root and missing).
#
# Reproducibility: `--locked` (Cargo.lock is the dependency list), fixed path prefixes in the
# binary (--remap-path-prefix for the checkout and CARGO_HOME), no incremental state, and
# SOURCE_DATE_EPOCH passed through to build scripts. Environment:
#   BUILD_NICE   niceness of the cargo process (default 10: other people compile here)
#   CARGO_BUILD_JOBS  honoured by cargo as usual
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=x86_64-unknown-linux-musl
MUSL_CC=x86_64-linux-musl-gcc

log() { echo "build-static: $*" >&2; }
die() { echo "build-static: error: $*" >&2; exit 1; }

cd "$ROOT"

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  log "adding rust target $TARGET"
  rustup target add "$TARGET" >&2 || die "rustup target add $TARGET failed"
fi

if ! command -v "$MUSL_CC" >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "$MUSL_CC not found; installing Debian package musl-tools"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools; } >&2 \
      || die "could not install musl-tools"
  else
    die "$MUSL_CC is required to compile ring for $TARGET (Debian/Ubuntu: apt-get install musl-tools)"
  fi
fi

# The musl compiler only builds ring's C; linking stays with rustc's self-contained musl
# setup (its own crt objects and libc.a). Using musl-gcc as the linker instead produces a
# dynamically linked PIE that asks for /lib/ld-musl-x86_64.so.1 and crashes without it.
export CC_x86_64_unknown_linux_musl="$MUSL_CC"
unset CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER
# Static (the musl default, stated anyway) and free of the build machine's paths, so the same
# commit gives the same binary in /src inside Docker and in any checkout outside it.
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$ROOT=/metal-driver --remap-path-prefix=$CARGO_HOME_DIR=/cargo"
export CARGO_INCREMENTAL=0
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"

# The allocator is musl's own malloc, on purpose: it held the least idle memory against glibc and
# mimalloc (BENCHMARKS.md, item 8; src/heap.rs).
log "cargo build --release --locked --target $TARGET --bin metal-driver"
nice -n "${BUILD_NICE:-10}" cargo build --release --locked --target "$TARGET" --bin metal-driver >&2

BIN="$ROOT/target/$TARGET/release/metal-driver"
[[ -x "$BIN" ]] || die "cargo finished but $BIN is missing"

if [[ $# -ge 1 ]]; then
  mkdir -p "$(dirname "$1")"
  cp "$BIN" "$1"
  BIN="$1"
fi
echo "$BIN"
