#!/usr/bin/env bash
# The README's test command: everything a fresh machine needs is installed by the scripts
# this calls (cached under ${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}).
#   1. Rust unit + integration tests (real gRPC over loopback against the simulator)
#   2. lint: rustfmt, clippy, layering rules of design §2, cargo-deny (licences, bans, sources)
#   3. conformance: Prism validating proxy against the official Metal OpenAPI spec,
#      independent Python grpcio client from the reference cmi.proto, proto compatibility
#   4. controller end-to-end tests on a real kube-apiserver + etcd (+ MCM) built from Go modules
#   5. every manifest in kubernetes/ applied with server-side dry-run to that kube-apiserver
#   6. the README's quick-start and local-cluster blocks, run as printed
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo test"
cargo test --all-targets

step "soak (60 s: faults, driver and controller restarts, invariants)"
hack/soak.sh 60

# rustfmt, clippy -D warnings, the layering rules (self-tested), cargo-deny licences/bans/sources.
step "lint"
make --no-print-directory lint

# Benchmarks are never pass/fail; this only keeps them compiling and running (~30 s, debug).
step "bench smoke"
make --no-print-directory bench-smoke

step "conformance"
hack/conformance.sh

step "controller e2e"
hack/e2e.sh

# The oracle's own unit tests (CMI code mapping, endpoint parsing); its build is cached by now.
step "mcm-oracle (Go) unit tests"
(cd hack/mcm-oracle && GOWORK=off GOFLAGS=-mod=mod nice -n 19 go test ./...)

# Every manifest under kubernetes/ against the same kind of real kube-apiserver (server-side
# dry-run, strict field validation), and the Deployment's flags against the binary's --help.
step "manifests (server-side dry-run)"
hack/manifests-check.sh

# The README's quick-start and local-cluster command blocks, extracted from README.md and run
# exactly as printed (hack/readme-blocks.sh; its own e2e state dir).
step "README blocks"
METAL_DRIVER_STATE=/tmp/metal-driver-e2e-readme hack/readme-blocks.sh run quick-start local-cluster

# Not here: `make image` / `make image-test` (static musl release build, OCI image, its
# entrypoint run from the unpacked image against the harness). The release/LTO rebuild of
# this crate takes minutes after any source change.
