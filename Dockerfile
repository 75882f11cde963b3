# syntax=docker/dockerfile:1
#
# metal-driver container image: one static (musl) binary on distroless/static, running as
# the distroless `nonroot` user (65532), needing no writable path but the CMI socket volume.
#
#   docker build -t metal-driver:dev \
#     --build-arg VERSION="$(git describe --tags --always)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" .
#   (or: make image)
#
# Without a Docker engine, `make image-rootfs` builds the same binary with the same script
# (hack/build-static.sh) and lays out the same filesystem under target/image-rootfs/;
# `make image-test` starts it from there and calls Probe.
#
# Base images are pinned by tag. Pin the digest as well for a release build: resolve it with
# `docker buildx imagetools inspect <image>` and pass it in, e.g.
#   --build-arg RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm@sha256:<digest>
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:<digest>
# (the digests are not written here because no registry was reachable from the machines this
# file was written on; an unverified digest would be worse than none).
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# --- build -------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build

# musl-tools: the C compiler ring's C and assembly need for the musl target.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
# Registry and target directory are build caches, never layers: the layer holds /out only.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    BUILD_NICE=0 hack/build-static.sh /out/metal-driver

# --- runtime -----------------------------------------------------------------------------
# distroless/static: /etc/passwd with nonroot (65532), CA certificates, tzdata, no shell.
FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
# The repository URL and the SPDX licence expression: `make image` fills SOURCE from the git
# remote; the licence is the crate's (Cargo.toml `license`, LICENSE).
ARG SOURCE=""
ARG LICENSES=Apache-2.0
LABEL org.opencontainers.image.title="metal-driver" \
      org.opencontainers.image.description="Equinix Metal provider for Gardener's machine-controller-manager: CMI gRPC driver, machine controller, Metal API simulator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"

COPY --from=build --chown=0:0 --chmod=0755 /out/metal-driver /metal-driver

# Numeric, so `runAsNonRoot: true` can verify it without reading /etc/passwd.
USER 65532:65532
# 10259: `controller` health and metrics (Gardener's providermetrics port); 10260: `serve`.
EXPOSE 10259 10260
ENTRYPOINT ["/metal-driver"]
CMD ["--help"]
