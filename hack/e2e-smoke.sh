#!/usr/bin/env bash
# Smoke check of hack/e2e-env.sh: bring a fresh environment up, exercise MCM's CRDs with kubectl,
# bring it down. Exits non-zero on any failure (and prints the component logs' tails).
#
#   hack/e2e-smoke.sh
#
# Uses its own state dir (default /tmp/metal-driver-e2e-smoke) so it never clobbers an
# environment you are using. Honours E2E_WITH_MCM=1 (then also checks that MCM turns a
# MachineDeployment into a MachineSet and a Machine) and E2E_WITH_KCM=1 (then also checks that
# deleting the namespace completes). E2E_KEEP=1 leaves the environment running afterwards.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export METAL_DRIVER_STATE="${METAL_DRIVER_STATE:-/tmp/metal-driver-e2e-smoke}"
export E2E_NAMESPACE="${E2E_NAMESPACE:-smoke}"
NS="$E2E_NAMESPACE"
ENV_SH="$HACK_DIR/e2e-env.sh"

step() { echo "smoke: $*" >&2; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

finish() {
  local rc=$?
  if [[ $rc != 0 ]]; then
    "$ENV_SH" logs >&2 2>/dev/null || true
  fi
  if [[ "${E2E_KEEP:-0}" == 1 ]]; then
    step "E2E_KEEP=1: leaving the environment up; eval \"\$($ENV_SH env)\" to use it"
  else
    "$ENV_SH" down || rc=1
  fi
  if [[ $rc == 0 ]]; then step "PASSED in ${SECONDS}s"; else step "FAILED (exit $rc) after ${SECONDS}s"; fi
  exit "$rc"
}

# Start from scratch so the check means something.
"$ENV_SH" down
trap finish EXIT
up_start=$SECONDS
eval "$("$ENV_SH" up)"
step "environment up in $((SECONDS - up_start))s: $METAL_DRIVER_E2E_SERVER"

k() { "$METAL_DRIVER_E2E_KUBECTL" "$@"; }

# expect DESCRIPTION WANT CMD...: CMD's output must equal WANT.
expect() {
  local what="$1" want="$2" got
  shift 2
  got="$("$@")" || fail "$what: command failed: $*"
  [[ "$got" == "$want" ]] || fail "$what: want '$want', got '$got'"
  step "ok: $what = '$got'"
}

# eventually DESCRIPTION SECONDS CMD...: retry CMD until it succeeds.
eventually() {
  local what="$1" limit="$2" start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || fail "$what: not true after ${limit}s"
    sleep 1
  done
  step "ok: $what (after $((SECONDS - start))s)"
}

expect "server version" "v1.34" \
  bash -c "'$METAL_DRIVER_E2E_KUBECTL' version -o json | sed -n 's/.*\"gitVersion\": \"\\(v1\\.[0-9]*\\).*/\\1/p' | tail -n 1"
expect "MCM CRDs established" "4" \
  bash -c "'$METAL_DRIVER_E2E_KUBECTL' get crd -o name | grep -c 'machine.sapcloud.io'"
# Raw token (what kube-rs tests may use instead of the kubeconfig).
expect "token auth /readyz" "ok" \
  curl -fsS --cacert "$METAL_DRIVER_E2E_CA" -H "Authorization: Bearer $METAL_DRIVER_E2E_TOKEN" \
  "$METAL_DRIVER_E2E_SERVER/readyz"
expect "client-cert auth identity" "metal-driver-e2e-admin" \
  bash -c "curl -fsS --cacert '$METAL_DRIVER_E2E_CA' --cert '$METAL_DRIVER_E2E_CLIENT_CERT' --key '$METAL_DRIVER_E2E_CLIENT_KEY' \
    -X POST -H 'Content-Type: application/json' \
    -d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}' \
    '$METAL_DRIVER_E2E_SERVER/apis/authentication.k8s.io/v1/selfsubjectreviews' \
    | sed -n 's/.*\"username\": *\"\\([^\"]*\\)\".*/\\1/p' | head -n 1"

step "creating namespace smoke-extra and MachineClass/Secret/Machine in $NS"
k create namespace smoke-extra >/dev/null
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: smoke-credentials
  namespace: $NS
stringData:
  apiToken: not-a-real-token
  projectID: 00000000-0000-0000-0000-000000000000
---
apiVersion: v1
kind: Secret
metadata:
  name: smoke-class
  namespace: $NS
  labels:
    gardener.cloud/purpose: machineclass
stringData:
  userData: "#!/bin/sh\necho hello\n"
---
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineClass
metadata:
  name: smoke-class
  namespace: $NS
provider: EquinixMetal
providerSpec:
  projectID: 00000000-0000-0000-0000-000000000000
  metro: da
  machineType: c3.small.x86
  OS: ubuntu_24_04
  billingCycle: hourly
  sshKeys: []
  tags:
  - kubernetes.io/cluster/smoke
  - kubernetes.io/role/node
secretRef:
  name: smoke-class
  namespace: $NS
credentialsSecretRef:
  name: smoke-credentials
  namespace: $NS
nodeTemplate:
  capacity:
    cpu: "8"
    memory: 32Gi
  instanceType: c3.small.x86
  region: da
  zone: da
---
apiVersion: machine.sapcloud.io/v1alpha1
kind: Machine
metadata:
  name: smoke-machine
  namespace: $NS
  labels:
    node: smoke-node
spec:
  class:
    kind: MachineClass
    name: smoke-class
  providerID: equinixmetal://11111111-2222-3333-4444-555555555555
  creationTimeout: 20m
  drainTimeout: 2h
EOF

expect "MachineClass provider" "EquinixMetal" k -n "$NS" get machineclass smoke-class -o 'jsonpath={.provider}'
expect "MachineClass providerSpec.metro (preserve-unknown-fields)" "da" \
  k -n "$NS" get mcc smoke-class -o 'jsonpath={.providerSpec.metro}'
expect "Machine spec.class.name" "smoke-class" k -n "$NS" get machine smoke-machine -o 'jsonpath={.spec.class.name}'
expect "Machine spec.providerID" "equinixmetal://11111111-2222-3333-4444-555555555555" \
  k -n "$NS" get mc smoke-machine -o 'jsonpath={.spec.providerID}'

# The status subresource: what the driver's controller writes.
k -n "$NS" patch machine smoke-machine --subresource=status --type=merge -p \
  '{"status":{"currentStatus":{"phase":"Pending","lastUpdateTime":"2026-01-01T00:00:00Z"},"lastOperation":{"type":"Create","state":"Processing","description":"smoke","lastUpdateTime":"2026-01-01T00:00:00Z"}}}' \
  >/dev/null
expect "Machine status.currentStatus.phase" "Pending" \
  k -n "$NS" get machine smoke-machine -o 'jsonpath={.status.currentStatus.phase}'
expect "Machine printer column Status" "Pending" \
  bash -c "'$METAL_DRIVER_E2E_KUBECTL' -n '$NS' get machine smoke-machine --no-headers | awk '{print \$2}'"
# A plain update must not change status (status is a subresource).
k -n "$NS" label machine smoke-machine smoke=yes >/dev/null
expect "status kept across metadata update" "Pending" \
  k -n "$NS" get machine smoke-machine -o 'jsonpath={.status.currentStatus.phase}'

# RBAC is enforced (only system:masters is all-powerful): a ServiceAccount gets only what a
# Role grants.
k -n "$NS" create serviceaccount smoke-sa >/dev/null
k -n "$NS" create role smoke-machines --verb=get,list,watch --resource=machines.machine.sapcloud.io >/dev/null
k -n "$NS" create rolebinding smoke-machines --role=smoke-machines --serviceaccount="$NS:smoke-sa" >/dev/null
expect "RBAC allows granted verb" "yes" k -n "$NS" auth can-i list machines.machine.sapcloud.io --as="system:serviceaccount:$NS:smoke-sa"
expect "RBAC denies other verbs" "no" \
  bash -c "'$METAL_DRIVER_E2E_KUBECTL' -n '$NS' auth can-i delete machines.machine.sapcloud.io --as='system:serviceaccount:$NS:smoke-sa' || true"

if [[ -n "${METAL_DRIVER_E2E_MCM_URL:-}" ]]; then
  expect "MCM /healthz" "OK" curl -fsS "$METAL_DRIVER_E2E_MCM_URL/healthz"
  k apply -f - >/dev/null <<EOF
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineDeployment
metadata:
  name: smoke-md
  namespace: $NS
spec:
  replicas: 1
  minReadySeconds: 0
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      name: smoke-md
  template:
    metadata:
      labels:
        name: smoke-md
    spec:
      class:
        kind: MachineClass
        name: smoke-class
EOF
  eventually "MCM created a MachineSet for the MachineDeployment" 90 \
    bash -c "[[ -n \$('$METAL_DRIVER_E2E_KUBECTL' -n '$NS' get machinesets -l name=smoke-md -o name) ]]"
  eventually "MCM created a Machine for the MachineSet" 90 \
    bash -c "[[ -n \$('$METAL_DRIVER_E2E_KUBECTL' -n '$NS' get machines -l name=smoke-md -o name) ]]"
fi

if [[ "${E2E_WITH_KCM:-0}" == 1 ]]; then
  eventually "KCM created the default ServiceAccount" 60 k -n smoke-extra get serviceaccount default
  k delete namespace smoke-extra --wait=false >/dev/null
  eventually "namespace deletion completed (KCM namespace controller)" 120 \
    bash -c "! '$METAL_DRIVER_E2E_KUBECTL' get namespace smoke-extra"
fi

k -n "$NS" delete machine smoke-machine --wait=true --timeout=60s >/dev/null
expect "Machine deleted" "" k -n "$NS" get machines smoke-machine --ignore-not-found -o name
