#!/usr/bin/env bash
# The container image without Docker: build the static binary the Dockerfile builds (same
# script, hack/build-static.sh) and lay out the image's filesystem.
#
#   hack/image-rootfs.sh
#
# Produces (under target/, or $IMAGE_ROOTFS_DIR):
#   image-rootfs/                    the root filesystem of the runtime image:
#     metal-driver                   the static binary (ENTRYPOINT)
#     etc/passwd, etc/group          root and nonroot (65532), as in distroless
#     etc/ssl/certs/ca-certificates.crt   the build machine's CA bundle (TLS to the Metal API
#                                    uses built-in webpki roots; kube clients may read these)
#     tmp/ (1777), home/nonroot/, var/run/ (where the kubelet mounts the service account
#                                    and Gardener the shoot kubeconfig), var/run/cmi/ (the
#                                    socket volume of the two-process form)
#   image-rootfs.tar                 the same tree as one deterministic tar (sorted, numeric
#                                    owners, fixed mtime): the image's one layer (hack/image.sh)
#
# Checks that the binary is static (no program interpreter, no NEEDED libraries).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${IMAGE_ROOTFS_DIR:-$ROOT/target}"
RFS="$OUT_DIR/image-rootfs"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"

log() { echo "image-rootfs: $*" >&2; }
die() { echo "image-rootfs: error: $*" >&2; exit 1; }

BIN="$("$ROOT/hack/build-static.sh")"

# Static means: no ELF interpreter and no shared-library dependencies.
if command -v readelf >/dev/null 2>&1; then
  readelf -lW "$BIN" | grep -q 'program interpreter' && die "$BIN has an ELF interpreter (dynamically linked)"
  readelf -dW "$BIN" | grep -q '(NEEDED)' && die "$BIN needs shared libraries: $(readelf -dW "$BIN" | grep NEEDED)"
  log "static binary: no interpreter, no NEEDED entries"
else
  log "readelf not found (binutils): static-linking check skipped"
fi

rm -rf "$RFS"
mkdir -p "$RFS"/{etc/ssl/certs,tmp,home/nonroot,var/run/cmi}
install -m 0755 "$BIN" "$RFS/metal-driver"
cat >"$RFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$RFS/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
chmod 0644 "$RFS/etc/passwd" "$RFS/etc/group"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$RFS/etc/ssl/certs/ca-certificates.crt"
else
  log "no /etc/ssl/certs/ca-certificates.crt on this machine: image-rootfs has no CA bundle"
fi
chmod 1777 "$RFS/tmp"
chmod 0755 "$RFS/home/nonroot" "$RFS/var/run/cmi"

# Deterministic layer: same tree, same bytes.
find "$RFS" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --numeric-owner --owner=0 --group=0 \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$RFS" -cf "$OUT_DIR/image-rootfs.tar" .

# Every file in the layer is owned by root and read-only for others; the process (65532)
# writes nothing in it. hack/image.sh puts this layer into an OCI image with its config.
log "binary   $(sha256sum "$RFS/metal-driver" | cut -d' ' -f1)  $(du -h "$RFS/metal-driver" | cut -f1)"
log "layer    $(sha256sum "$OUT_DIR/image-rootfs.tar" | cut -d' ' -f1)  $OUT_DIR/image-rootfs.tar"
log "rootfs   $RFS"
echo "$RFS"
