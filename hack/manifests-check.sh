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
# Also checks that the Deployment's metal-driver container is what Gardener's stock helper
# produces (no command, the helper's flags in its order) and that every flag it passes exists
# in `metal-driver --help` (METAL_DRIVER_BIN, default target/debug/metal-driver; skipped with
# a note when no binary is built).
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

# Flags in the Deployment vs the binary's --help; and the provider container must be what
# Gardener's stock helper (`ProviderSidecarContainer`) produces: no command, its arguments.
dep="$ROOT/kubernetes/deployment.yaml"
if [[ -f "$dep" && -x "$BIN" ]]; then
  "$KUBECTL" apply --dry-run=server -f "$dep" -o json |
    python3 -c '
import json, sys
SUBCOMMANDS = ("serve", "controller", "sim", "demo", "machine")
HELPER_FLAGS = ["--control-kubeconfig", "--kube-api-qps", "--kube-api-burst",
    "--machine-creation-timeout", "--machine-drain-timeout", "--machine-health-timeout",
    "--machine-safety-apiserver-statuscheck-timeout", "--machine-safety-apiserver-statuscheck-period",
    "--machine-safety-orphan-vms-period", "--namespace", "--port", "--target-kubeconfig", "--v"]
doc = json.load(sys.stdin)
items = doc.get("items", [doc])
sidecars = 0
for it in items:
    if it.get("kind") != "Deployment":
        continue
    for c in it["spec"]["template"]["spec"]["containers"]:
        if "metal-driver" not in c.get("image", ""):
            continue
        args = c.get("args") or []
        sub = args[0] if args and args[0] in SUBCOMMANDS else "-"
        if sub == "-":
            sidecars += 1
            flags = [a.split("=", 1)[0] for a in args]
            if c.get("command") or flags != HELPER_FLAGS:
                name, command = c["name"], c.get("command")
                sys.exit(f"container {name}: not the shape of the Gardener helper (command {command}, flags {flags})")
        for a in args[1 if sub != "-" else 0:]:
            if a.startswith("--"):
                print(sub, a.split("=", 1)[0])
if sidecars != 1:
    sys.exit(f"expected one metal-driver container with the Gardener helper arguments, found {sidecars}")
' >"$FLAGS" || die "deployment.yaml: see above"
  while read -r sub flag; do
    help_args=(--help)
    [[ "$sub" != - ]] && help_args=("$sub" --help)
    "$BIN" "${help_args[@]}" 2>/dev/null | grep -qE -- "(^|[[:space:]])$flag([[:space:]=<]|$)" \
      || die "deployment.yaml passes $flag to \`metal-driver ${sub/#-/}\`, which has no such flag"
  done <"$FLAGS"
  log "the provider container has Gardener's helper arguments and no command; every flag exists in \`metal-driver --help\` ($(wc -l <"$FLAGS") flags)"
else
  log "note: $BIN not built; flag check of deployment.yaml skipped"
fi
log "ok: ${#files[@]} manifests accepted by the API server (server-side dry-run, strict validation)"
