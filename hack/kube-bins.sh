#!/usr/bin/env bash
# Build (once) the binaries of the local Kubernetes test environment from pinned Go modules,
# and extract MCM's CRDs from the pinned MCM module.
#
#   hack/kube-bins.sh [--quiet] [NAME...]
#
# NAME is any of: kube-apiserver kubectl etcd kube-controller-manager machine-controller-manager
# (default: all of them), or mcm-oracle (built only when named: MCM's machine controller library
# forwarding to `metal-driver serve` over CMI, for the oracle e2e tests and the footprint bench). Prints one `NAME=/abs/path` line per binary and a `crds=/abs/dir`
# line on stdout; progress goes to stderr.
#
# Versions come from the committed modules (single source of truth):
#   hack/kube/go.mod  k8s.io/kubernetes (+ every k8s.io/* staging module replaced to v0.x),
#                     go.etcd.io/etcd/server/v3 (its root package is etcd's `main`)
#   hack/mcm/go.mod   github.com/gardener/machine-controller-manager
#   hack/mcm-oracle/  the same MCM version; the binary's name carries a hash of go.sum and the
#                     module's Go sources, so editing them rebuilds it
#
# Binaries land in ${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}/bin/<name>-<version> and are
# only built when missing, so a second run takes well under a second. CRDs land in
# ${CACHE}/crds/<mcm-version>/. Builds run under `nice -n 19` (other people compile on this
# machine); set KUBE_BINS_GOFLAGS="-p=1" to use a single compile job as well.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${METAL_DRIVER_CACHE:-$HOME/.cache/metal-driver}"
BIN_DIR="$CACHE/bin"
QUIET=0

log() { [[ $QUIET == 1 ]] || echo "kube-bins: $*" >&2; }
die() { echo "kube-bins: error: $*" >&2; exit 1; }

find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  die "no Go toolchain found (set GO=/path/to/go; Go >= 1.26.2 is needed for MCM)"
}

# mod_version GOMOD MODULE -> the version MODULE is required at in GOMOD
mod_version() {
  local v
  v="$(awk -v m="$2" '($1 == m && $2 ~ /^v/) { print $2; exit } ($1 == "require" && $2 == m) { print $3; exit }' "$1")"
  [[ -n "$v" ]] || die "$2 is not required in $1"
  echo "$v"
}

KUBE_MOD="$HACK_DIR/kube"
MCM_MOD="$HACK_DIR/mcm"
ORACLE_MOD="$HACK_DIR/mcm-oracle"
MCM_MODULE=github.com/gardener/machine-controller-manager
K8S_VERSION="$(mod_version "$KUBE_MOD/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version "$KUBE_MOD/go.mod" go.etcd.io/etcd/server/v3)"
MCM_VERSION="$(mod_version "$MCM_MOD/go.mod" "$MCM_MODULE")"

ALL=(kube-apiserver kubectl etcd kube-controller-manager machine-controller-manager)
EXTRA=(mcm-oracle)

# oracle_version -> MCM's version plus a short hash of everything the oracle is built from.
oracle_version() {
  local h
  local v
  v="$(mod_version "$ORACLE_MOD/go.mod" "$MCM_MODULE")"
  [[ "$v" == "$MCM_VERSION" ]] || die "hack/mcm-oracle/go.mod pins MCM $v but hack/mcm/go.mod pins $MCM_VERSION"
  h="$(cd "$ORACLE_MOD" && cat go.mod go.sum $(find . -name '*.go' ! -name '*_test.go' | LC_ALL=C sort) | sha256sum | cut -c1-12)"
  echo "$v-$h"
}

# spec NAME -> "module-dir|package|version|ldflags"
spec() {
  local k8s_minor="${K8S_VERSION#v1.}"
  k8s_minor="${k8s_minor%%.*}"
  local k8s_ld="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  k8s_ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor"
  k8s_ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
  k8s_ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  k8s_ld+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"
  case "$1" in
    kube-apiserver|kube-controller-manager|kubectl)
      echo "$KUBE_MOD|k8s.io/kubernetes/cmd/$1|$K8S_VERSION|$k8s_ld" ;;
    etcd)
      echo "$KUBE_MOD|go.etcd.io/etcd/server/v3|$ETCD_VERSION|" ;;
    machine-controller-manager)
      echo "$MCM_MOD|$MCM_MODULE/cmd/machine-controller-manager|$MCM_VERSION|-X $MCM_MODULE/pkg/version.Version=$MCM_VERSION" ;;
    mcm-oracle)
      echo "$ORACLE_MOD|.|$(oracle_version)|-X $MCM_MODULE/pkg/version.Version=$MCM_VERSION" ;;
    *) die "unknown binary '$1' (known: ${ALL[*]} ${EXTRA[*]})" ;;
  esac
}

build_one() {
  local name="$1" moddir pkg version ldflags out tmp start
  IFS='|' read -r moddir pkg version ldflags <<<"$(spec "$name")"
  out="$BIN_DIR/$name-$version"
  if [[ -x "$out" ]]; then
    echo "$name=$out"
    return
  fi
  local go
  go="$(find_go)"
  log "building $name $version ($pkg) (cold: kube-apiserver ~6 min, MCM ~4 min on 2 busy cores)"
  tmp="$out.tmp.$$"
  start=$SECONDS
  # -mod=mod: the committed go.sum is complete; this only lets Go add missing hashes instead of failing.
  if ! (cd "$moddir" && GOWORK=off GOFLAGS="-mod=mod ${KUBE_BINS_GOFLAGS:-}" CGO_ENABLED=0 \
        nice -n 19 "$go" build -trimpath -ldflags "-s -w $ldflags" -o "$tmp" "$pkg" >&2); then
    rm -f "$tmp"
    die "building $name failed"
  fi
  mv -f "$tmp" "$out"
  log "built $out in $((SECONDS - start))s"
  echo "$name=$out"
}

extract_crds() {
  local dir="$CACHE/crds/$MCM_VERSION" f missing=0
  local files=(machines machineclasses machinesets machinedeployments)
  for f in "${files[@]}"; do
    [[ -s "$dir/machine.sapcloud.io_$f.yaml" ]] || missing=1
  done
  if [[ $missing == 1 ]]; then
    local go src
    go="$(find_go)"
    src="$(cd "$MCM_MOD" && GOWORK=off GOFLAGS=-mod=mod "$go" mod download -json "$MCM_MODULE@$MCM_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -n "$src" && -d "$src/kubernetes/crds" ]] || die "no kubernetes/crds in $MCM_MODULE@$MCM_VERSION (Dir='$src')"
    mkdir -p "$dir"
    for f in "${files[@]}"; do
      # Module cache files are read-only; copy contents, not modes.
      cat "$src/kubernetes/crds/machine.sapcloud.io_$f.yaml" >"$dir/machine.sapcloud.io_$f.yaml.tmp"
      mv -f "$dir/machine.sapcloud.io_$f.yaml.tmp" "$dir/machine.sapcloud.io_$f.yaml"
    done
    log "extracted MCM $MCM_VERSION CRDs from $src/kubernetes/crds to $dir"
  fi
  echo "crds=$dir"
}

main() {
  local names=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -q|--quiet) QUIET=1 ;;
      --versions)
        echo "kubernetes=$K8S_VERSION"; echo "etcd=$ETCD_VERSION"; echo "machine-controller-manager=$MCM_VERSION"
        return ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; return ;;
      -*) die "unknown option $1" ;;
      *) names+=("$1") ;;
    esac
    shift
  done
  [[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")

  mkdir -p "$BIN_DIR"
  # Serialize concurrent callers (parallel test runs): the second one waits, then finds the binary.
  exec 9>"$CACHE/.kube-bins.lock"
  if ! flock -n 9; then
    log "waiting for another kube-bins.sh run to finish (lock $CACHE/.kube-bins.lock)"
    flock 9
  fi
  local n
  for n in "${names[@]}"; do
    spec "$n" >/dev/null
    build_one "$n"
  done
  extract_crds
}

main "$@"
