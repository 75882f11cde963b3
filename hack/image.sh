#!/usr/bin/env bash
# `make image`: the container image as a real OCI image, built without a Docker engine.
#
#   hack/image.sh            (IMAGE=metal-driver:<version> names it; IMAGE_NO_BUILD=1 reuses
#                             target/image-rootfs.tar instead of rebuilding it)
#
# The one layer is hack/image-rootfs.sh's deterministic tar of target/image-rootfs/ (the
# static musl binary, /etc/passwd and /etc/group with nonroot 65532, the CA bundle, /tmp);
# FROM scratch, nothing else. The tools are Debian packages (umoci assembles the OCI layout,
# skopeo writes the `docker load` archive), installed with apt-get when missing and root.
#
# Produces, under target/image/ (or $IMAGE_OUT_DIR):
#   oci/                           OCI image layout, tag <version>
#   metal-driver-<version>.tar     docker-archive (`docker load -i`, `podman load -i`) tagged $IMAGE
#   metal-driver-<version>.oci.tar the OCI layout as one tar (`skopeo copy oci-archive:...`)
#
# The image config is the Dockerfile's: user 65532:65532, ENTRYPOINT ["/metal-driver"],
# CMD ["--help"], port 10259, OCI labels (title, description, version, revision, source,
# licenses), created = the commit time (SOURCE_DATE_EPOCH), so the same commit gives the same
# image. Nothing in it needs a writable root filesystem.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${IMAGE_OUT_DIR:-$ROOT/target/image}"
VERSION="$(awk -F'"' '/^version *=/ { print $2; exit }' "$ROOT/Cargo.toml")"
LICENSE="$(awk -F'"' '/^license *=/ { print $2; exit }' "$ROOT/Cargo.toml")"
IMAGE="${IMAGE:-metal-driver:$VERSION}"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
SOURCE="$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"

log() { echo "image: $*" >&2; }
die() { echo "image: error: $*" >&2; exit 1; }

# Debian packages this needs (command → package).
need_tools() {
  local missing=() cmd
  for cmd in "$@"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  [[ ${#missing[@]} == 0 ]] && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2 \
      || die "could not install ${missing[*]}"
  else
    die "needs ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})"
  fi
}
need_tools umoci skopeo

if [[ "${IMAGE_NO_BUILD:-0}" != 1 ]]; then
  "$ROOT/hack/image-rootfs.sh" >/dev/null
fi
LAYER="$ROOT/target/image-rootfs.tar"
[[ -f "$LAYER" ]] || die "$LAYER missing (run hack/image-rootfs.sh)"

OCI="$OUT/oci"
rm -rf "$OCI"
mkdir -p "$OUT"
umoci init --layout "$OCI"
umoci new --image "$OCI:$VERSION"
umoci raw add-layer --image "$OCI:$VERSION" \
  --history.created "$CREATED" --history.created_by "hack/image-rootfs.sh (static metal-driver, nonroot 65532)" \
  "$LAYER"
umoci config --image "$OCI:$VERSION" \
  --created "$CREATED" --history.created "$CREATED" --history.created_by "hack/image.sh: config" \
  --architecture amd64 --os linux \
  --config.user 65532:65532 \
  --config.entrypoint /metal-driver \
  --config.cmd --help \
  --config.exposedports 10259/tcp \
  --config.label "org.opencontainers.image.title=metal-driver" \
  --config.label "org.opencontainers.image.description=Equinix Metal provider for Gardener's machine-controller-manager: machine controller and CMI driver in one process, Metal API simulator" \
  --config.label "org.opencontainers.image.version=$VERSION" \
  --config.label "org.opencontainers.image.revision=$REVISION" \
  --config.label "org.opencontainers.image.source=$SOURCE" \
  --config.label "org.opencontainers.image.licenses=${LICENSE:-NOASSERTION}" \
  --config.label "org.opencontainers.image.created=$CREATED" \
  --manifest.annotation "org.opencontainers.image.version=$VERSION" \
  --manifest.annotation "org.opencontainers.image.revision=$REVISION"
umoci gc --layout "$OCI"

ARCHIVE="$OUT/metal-driver-$VERSION.tar"
OCI_ARCHIVE="$OUT/metal-driver-$VERSION.oci.tar"
rm -f "$ARCHIVE" "$OCI_ARCHIVE"
# --insecure-policy: a local copy between two files, no registry and no signature to check.
skopeo --insecure-policy copy --quiet "oci:$OCI:$VERSION" "docker-archive:$ARCHIVE:$IMAGE"
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner --owner=0 --group=0 \
  -C "$OCI" -cf "$OCI_ARCHIVE" .

digest="$(skopeo inspect --format '{{.Digest}}' "oci:$OCI:$VERSION")"
log "OCI layout      $OCI  (tag $VERSION, manifest $digest)"
log "docker archive  $ARCHIVE  (docker load -i; tagged $IMAGE)"
log "OCI archive     $OCI_ARCHIVE"
echo "$OCI:$VERSION"
