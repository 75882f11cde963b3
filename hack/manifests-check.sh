#!/usr/bin/env bash
# Apply every manifest under kubernetes/ with server-side dry-run against the real
# kube-apiserver of the e2e harness (hack/e2e-env.sh: etcd + kube-apiserver + MCM's CRDs), so
# schema errors, unknown fields (--validate=strict), bad RBAC and CRD-invalid Machine objects
# fail here instead of in a user's cluster. Nothing is persisted.
#
#   hack/manifests-check.sh [FILE|DIR...]    (default: kubernetes/)
#
# Reuses a running environment when METAL_DRIVER_STATE points at one (e.g. inside hack/e2e.sh);
# otherwise starts its own in /tmp/metal-driver-e2e-manifests and stops it afterwards
# (E2E_KEEP=1 leaves it running).
#
# Also checks that every flag the Deployment passes to `metal-driver serve` / `controller`
# exists in that subcommand's --help (METAL_DRIVER_BIN, default target/debug/metal-driver;
# skipped with a note when no binary is built).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_SH="$ROOT/hack/e2e-env.sh"
export METAL_DRIVER_STATE="${METAL_DRIVER_STATE:-/tmp/metal-driver-e2e-manifests}"
BIN="${METAL_DRIVER_BIN:-$ROOT/target/debug/metal-driver}"

log() { echo "manifests-check: $*" >&2; }
die() { echo "manifests-check: FAILED: $*" >&2; exit 1; }

FLAGS="$(mktemp)"
OWN=0
if ! "$ENV_SH" status >/dev/null 2>&1; then
  OWN=1
fi
finish() {
  local rc=$?
  rm -f "$FLAGS"
  if [[ $OWN == 1 && "${E2E_KEEP:-0}" != 1 ]]; then
    "$ENV_SH" down >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap finish EXIT

eval "$("$ENV_SH" up)"
KUBECTL="${METAL_DRIVER_E2E_KUBECTL:-kubectl}"
log "apiserver $METAL_DRIVER_E2E_SERVER ($("$KUBECTL" version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])' 2>/dev/null || echo '?'))"

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("$ROOT/kubernetes")
mapfile -t files < <(find "${targets[@]}" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[[ ${#files[@]} -gt 0 ]] || die "no manifests found in ${targets[*]}"

failed=0
kinds=""
for f in "${files[@]}"; do
  rel="${f#"$ROOT"/}"
  if out="$("$KUBECTL" apply --dry-run=server --validate=strict -f "$f" -o name 2>&1)"; then
    log "ok   $rel: $(tr '\n' ' ' <<<"$out")"
    kinds+="$out"$'\n'
  else
    log "FAIL $rel"
    sed 's/^/    /' <<<"$out" >&2
    failed=1
  fi
done
[[ $failed == 0 ]] || die "some manifests were rejected by the API server"

# The deployment set must be complete (a file dropped by accident fails here).
if [[ $# -eq 0 ]]; then
  for want in deployment.apps/machine-controller-manager service/machine-controller-manager \
    serviceaccount/machine-controller-manager role.rbac.authorization.k8s.io/machine-controller-manager \
    rolebinding.rbac.authorization.k8s.io/machine-controller-manager \
    clusterrole.rbac.authorization.k8s.io/metal-driver:target:machine-controller-manager \
    clusterrolebinding.rbac.authorization.k8s.io/metal-driver:target:machine-controller-manager \
    secret/ machineclass.machine.sapcloud.io/ machine.machine.sapcloud.io/ \
    machinedeployment.machine.sapcloud.io/; do
    grep -q "^$want" <<<"$kinds" || die "no $want among the manifests"
  done
  log "all expected kinds present"
fi

# Flags in the Deployment vs the binary's --help.
dep="$ROOT/kubernetes/deployment.yaml"
if [[ -f "$dep" && -x "$BIN" ]]; then
  "$KUBECTL" apply --dry-run=server -f "$dep" -o json |
    python3 -c '
import json, sys
doc = json.load(sys.stdin)
items = doc.get("items", [doc])
for it in items:
    if it.get("kind") != "Deployment":
        continue
    for c in it["spec"]["template"]["spec"]["containers"]:
        args = c.get("args") or []
        if args and args[0] in ("serve", "controller"):
            for a in args[1:]:
                if a.startswith("--"):
                    print(args[0], a.split("=", 1)[0])
' >"$FLAGS"
  while read -r sub flag; do
    "$BIN" "$sub" --help 2>/dev/null | grep -qE -- "(^|[[:space:]])$flag([[:space:]=<]|$)" \
      || die "deployment.yaml passes $flag to \`metal-driver $sub\`, which has no such flag"
  done <"$FLAGS"
  log "every flag in deployment.yaml exists in \`metal-driver serve|controller --help\` ($(wc -l <"$FLAGS") flags)"
else
  log "note: $BIN not built; flag check of deployment.yaml skipped"
fi
log "ok: ${#files[@]} manifests accepted by the API server (server-side dry-run, strict validation)"
