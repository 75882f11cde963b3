# syntax=docker/dockerfile:1
#
# metal-driver container image, for those with a Docker/BuildKit engine. `make image` builds
# the same image without one (hack/image.sh: umoci + skopeo), from the same filesystem:
# FROM scratch, one layer laid out by hack/image-rootfs.sh (the static musl binary from
# hack/build-static.sh, /etc/passwd and /etc/group with nonroot 65532, the CA bundle, /tmp),
# running as 65532, needing no writable path.
#
#   docker build -t metal-driver:dev \
#     --build-arg VERSION="$(git describe --tags --always)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" .
#   (or: make image-docker)
#
# Started with no subcommand (as Gardener's provider-sidecar helper starts it, arguments
# only), the entrypoint runs the machine controller with the CMI driver in the same process.
#
# The build image is pinned by tag. Pin the digest as well for a release build: resolve it
# with `docker buildx imagetools inspect <image>` and pass it in, e.g.
#   --build-arg RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm@sha256:<digest>
# (the digest is not written here because no registry was reachable from the machines this
# file was written on; an unverified digest would be worse than none).
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm

# --- build -------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build

# musl-tools: the C compiler ring's C and assembly need for the musl target; ca-certificates:
# the bundle the image carries.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
# Registry and target directory are build caches, never layers: the image holds /out only.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    BUILD_NICE=0 IMAGE_ROOTFS_DIR=/out hack/image-rootfs.sh

# --- runtime -----------------------------------------------------------------------------
FROM scratch

ARG VERSION=0.1.0
ARG REVISION=unknown
# The repository URL and the SPDX licence expression: `make image-docker` fills SOURCE from
# the git remote; the licence is the crate's (Cargo.toml `license`, LICENSE).
ARG SOURCE=""
ARG LICENSES=Apache-2.0
LABEL org.opencontainers.image.title="metal-driver" \
      org.opencontainers.image.description="Equinix Metal provider for Gardener's machine-controller-manager: machine controller and CMI driver in one process, Metal API simulator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}"

COPY --from=build /out/image-rootfs/ /

# Numeric, so `runAsNonRoot: true` can verify it without reading /etc/passwd.
USER 65532:65532
# 10259: health and metrics of the sidecar (Gardener's providermetrics port).
EXPOSE 10259
ENTRYPOINT ["/metal-driver"]
CMD ["--help"]
