# metal-driver — every target is a thin wrapper over cargo or a script in hack/.
# `make help` lists them.

SHELL := /bin/bash
CARGO ?= cargo
BIN := target/debug/metal-driver

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the metal-driver binary (debug)
	$(CARGO) build --bin metal-driver

.PHONY: release
release: ## build the optimised binary
	$(CARGO) build --release --locked --bin metal-driver

.PHONY: demo
demo: ## the main job: create → status → list → shutdown → delete on the embedded simulator
	$(CARGO) run --quiet --bin metal-driver -- demo

.PHONY: start
start: build ## the sidecar (controller + driver, one process) against CONTROL_KUBECONFIG/TARGET_KUBECONFIG/CONTROL_NAMESPACE (default: make e2e-up's cluster and a local sim)
	hack/start.sh

.PHONY: test
test: ## the whole test suite: unit + integration, conformance (Prism, grpcio, proto compat)
	hack/test.sh

.PHONY: unit
unit: ## Rust unit and integration tests only
	$(CARGO) test --all-targets

.PHONY: conformance
conformance: ## OpenAPI (Prism) and independent gRPC client conformance
	hack/conformance.sh

.PHONY: lint
lint: ## rustfmt check, clippy with warnings as errors, layering check, cargo-deny (licences, bans, sources)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	hack/check-layering.sh
	hack/cargo-deny.sh

.PHONY: audit
audit: ## cargo-deny advisories (needs the RustSec database from its git host: not reachable from CI here)
	hack/cargo-deny.sh check advisories

.PHONY: fmt
fmt: ## format the code
	$(CARGO) fmt --all

.PHONY: soak
soak: ## fault-injection soak of driver + controller, both restarted (SOAK_SECONDS, default 600; bounded; see hack/soak.sh)
	hack/soak.sh $(SOAK_SECONDS)

# --- benchmarks (BENCHMARKS.md) -----------------------------------------------------------
BENCH_OUT ?= target/bench
# On a shared machine, run the end-to-end figures ahead of compilers (root only).
BENCH_NICE ?= $(if $(filter 0,$(shell id -u)),nice -n -15,)

.PHONY: bench
bench: ## full benchmarks on release builds (minutes): criterion + end-to-end figures → target/bench/
	mkdir -p $(BENCH_OUT)
	$(CARGO) build --release --locked --bin metal-driver --bin metal-driver-bench
	set -o pipefail; $(CARGO) bench --locked --bench pure 2>&1 | tee $(BENCH_OUT)/criterion.txt
	GHZ="$$(benches/ghz.sh)" $(BENCH_NICE) target/release/metal-driver-bench --out $(BENCH_OUT)/e2e.md --logs $(BENCH_OUT)/logs

.PHONY: bench-footprint
bench-footprint: ## idle RSS/CPU with 500 Running Machines: controller+serve vs one-process sidecar vs MCM's Go controller (minutes) → target/bench/footprint.md
	$(CARGO) build --release --locked --bin metal-driver
	REPLICAS=$${REPLICAS:-500} IDLE_SECONDS=$${IDLE_SECONDS:-30} FOOTPRINT="$${FOOTPRINT:-oracle sidecar}" $(BENCH_NICE) benches/controller-scale.sh

.PHONY: bench-smoke
bench-smoke: ## benchmarks in seconds on debug builds: keeps them compiling and running (not a measurement)
	mkdir -p $(BENCH_OUT)
	$(CARGO) test --bench pure
	$(CARGO) build --bin metal-driver --bin metal-driver-bench
	target/debug/metal-driver-bench --quick --out $(BENCH_OUT)/smoke.md --logs $(BENCH_OUT)/logs > /dev/null

# --- container image and deployment manifests ---------------------------------------------
VERSION ?= $(shell awk -F'"' '/^version *=/ { print $$2; exit }' Cargo.toml)
IMAGE ?= metal-driver:$(VERSION)

.PHONY: image
image: ## OCI image without a Docker engine (umoci + skopeo): target/image/{oci/, metal-driver-<version>.tar for docker load}
	IMAGE=$(IMAGE) hack/image.sh

.PHONY: image-docker
image-docker: ## the same image with a Docker/BuildKit engine (Dockerfile): IMAGE=metal-driver:<version>
	docker build -t $(IMAGE) \
	  --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	  --build-arg SOURCE=$$(git remote get-url origin 2>/dev/null) \
	  --build-arg SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) .

.PHONY: image-rootfs
image-rootfs: ## the image's filesystem: static musl binary + files in target/image-rootfs/ (+ .tar layer)
	hack/image-rootfs.sh

.PHONY: image-test
image-test: ## inspect the image, unpack it, run its entrypoint with the Deployment's sidecar args against the e2e apiserver until /healthz
	hack/image-test.sh

.PHONY: manifests
manifests: ## apply every kubernetes/ manifest with server-side dry-run to a real kube-apiserver
	hack/manifests-check.sh

# --- machine controller end to end (real kube-apiserver + etcd + MCM; see hack/e2e-env.sh) --
.PHONY: e2e
e2e: ## controller e2e tests a-e: environment up, tests/e2e_controller/, environment down
	hack/e2e.sh

.PHONY: e2e-up
e2e-up: ## start the local Kubernetes environment (etcd, kube-apiserver, MCM CRDs, MCM); prints exports
	E2E_WITH_MCM=1 hack/e2e-env.sh up

.PHONY: e2e-down
e2e-down: ## stop the local Kubernetes environment and delete its state
	hack/e2e-env.sh down

.PHONY: fuzz
fuzz: ## fuzz every input decoder (FUZZ_SECONDS per target, default 120; needs cargo-fuzz; see hack/fuzz.sh)
	hack/fuzz.sh $(FUZZ_SECONDS)
