#!/usr/bin/env bash
# BENCHMARKS.md item 7 (and the `controller` half of item 6): the machine controller at scale on a
# real kube-apiserver + etcd + Gardener's machine-controller-manager (hack/e2e-env.sh), with
# `metal-driver sim` (provisioning REPLICAS devices, registering their Nodes), `serve` and
# `controller` from the release binary.
#
#   benches/controller-scale.sh            # REPLICAS=200, PROVISION_SECONDS=1
#
# Measures: time for a MachineDeployment of REPLICAS from 0 to all Machines Running, Metal API
# requests (from the sim's /_sim/stats), the controller's kube-apiserver requests (from the API
# server's audit log, by the controller's User-Agent `metal-driver/...`), controller and driver
# peak RSS and CPU seconds, and the controller's idle RSS once it watches REPLICAS Running
# Machines. KUBE_API_ARGS sets the controllers' client limits (default Gardener's
# `--kube-api-qps=100 --kube-api-burst=200`; MCM's own defaults are 20/30). Writes Markdown to
# $BENCH_OUT/controller-scale.md. Bounded by SCALE_TIMEOUT seconds; everything it started is
# stopped on exit (and the environment brought down).
#
# Footprint comparison (`make bench-footprint`: REPLICAS=500 FOOTPRINT="oracle sidecar"): once
# the Machines are Running and the idle figures of `controller` + `serve` are taken, the same
# Machines are handed, one after the other, to each listed alternative; each gets SETTLE_SECONDS
# to take them over, then its idle RSS and CPU over IDLE_SECONDS are measured. Appends a table
# to $BENCH_OUT/footprint.md.
#   oracle   MCM's machine controller library (hack/mcm-oracle, built by hack/kube-bins.sh)
#            forwarding to the same `serve`
#   sidecar  `metal-driver` with Gardener's sidecar args and no subcommand: one process, no
#            `serve` (skipped with a note when the binary has no such mode)
#   sidecar=PATH  the same with another build of the binary (e.g. the static musl one from
#            hack/build-static.sh, or one per allocator), so builds compare in the same run;
#            a wrapper script that `exec`s the binary can set its environment
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPLICAS="${REPLICAS:-200}"
PROVISION_SECONDS="${PROVISION_SECONDS:-1}"
SCALE_TIMEOUT="${SCALE_TIMEOUT:-900}"
IDLE_SECONDS="${IDLE_SECONDS:-20}"
SETTLE_SECONDS="${SETTLE_SECONDS:-30}"
# Client rate limits of every machine controller here: what Gardener's sidecar helper passes
# (MCM's own defaults, 20/30, starve a 500-Machine scale-up).
KUBE_API_ARGS_TEXT="${KUBE_API_ARGS:---kube-api-qps=100 --kube-api-burst=200}"
read -r -a KUBE_API_ARGS <<<"$KUBE_API_ARGS_TEXT"
FOOTPRINT="${FOOTPRINT:-}"
BIN="${METAL_DRIVER_BIN:-$ROOT/target/release/metal-driver}"
OUT="${BENCH_OUT:-$ROOT/target/bench}"
LOGS="$OUT/logs/controller-scale"
export METAL_DRIVER_STATE="${METAL_DRIVER_STATE:-/tmp/metal-driver-bench-e2e}"
export E2E_NAMESPACE="${E2E_NAMESPACE:-bench}"
export E2E_WITH_MCM=1
NS="$E2E_NAMESPACE"
ENV_SH="$ROOT/hack/e2e-env.sh"
NAME=shoot--bench--scale-worker
CLK_TCK="$(getconf CLK_TCK)"

log() { echo "controller-scale: $*" >&2; }
[[ -x "$BIN" ]] || { log "build the release binary first: cargo build --release --bin metal-driver"; exit 2; }
mkdir -p "$LOGS"

PIDS=()
finish() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$ENV_SH" down >/dev/null 2>&1 || true
  exit "$rc"
}
trap finish EXIT

# start NAME ARGS...: runs $BIN ARGS in the background; sets LAST_PID and (when it prints one)
# LAST_URL from its `listening on` line.
start() {
  local name="$1"
  shift
  "$BIN" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.log" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  LAST_URL=""
  for _ in $(seq 1 100); do
    LAST_URL="$(sed -n 's/^listening on //p' "$LOGS/$name.out" | head -1)"
    [[ -n "$LAST_URL" ]] && return 0
    kill -0 "$LAST_PID" 2>/dev/null || { log "$name exited; see $LOGS/$name.log"; exit 1; }
    sleep 0.1
  done
}
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_s() { awk -v t="$CLK_TCK" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / t }' "/proc/$1/stat"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# The API server's audit log: one line per request (metadata only), to count the controller's.
AUDIT="$LOGS/audit.log"
rm -f "$AUDIT"
printf '%s\n' 'apiVersion: audit.k8s.io/v1' 'kind: Policy' \
  'omitStages: [RequestReceived, ResponseStarted]' 'rules:' '- level: Metadata' >"$LOGS/audit-policy.yaml"
export E2E_APISERVER_EXTRA_ARGS="${E2E_APISERVER_EXTRA_ARGS:-} --audit-policy-file=$LOGS/audit-policy.yaml --audit-log-path=$AUDIT --audit-log-format=json --audit-log-mode=batch --audit-log-batch-max-wait=1s"

log "bringing up etcd + kube-apiserver + MCM (hack/e2e-env.sh, state $METAL_DRIVER_STATE)"
"$ENV_SH" down >/dev/null 2>&1 || true
eval "$("$ENV_SH" up)"
k() { "$METAL_DRIVER_E2E_KUBECTL" "$@"; }

start sim sim --listen 127.0.0.1:0 --provision-seconds "$PROVISION_SECONDS" --deprovision-seconds 0.5 \
  --register-nodes-kubeconfig "$KUBECONFIG"
SIM_URL="$LAST_URL"
start serve serve --endpoint tcp://127.0.0.1:0 --metal-api-url "$SIM_URL" --http-addr 127.0.0.1:0
SERVE_PID="$LAST_PID" CMI="$LAST_URL"
"$BIN" controller --control-kubeconfig "$KUBECONFIG" --target-kubeconfig "$KUBECONFIG" --namespace "$NS" \
  --cmi-endpoint "$CMI" --address 127.0.0.1 --port 0 "${KUBE_API_ARGS[@]}" >"$LOGS/controller.out" 2>"$LOGS/controller.log" &
CTRL_PID=$!
PIDS+=("$CTRL_PID")
sleep 2
kill -0 "$CTRL_PID" || { log "controller exited; see $LOGS/controller.log"; exit 1; }
log "sim $SIM_URL, driver $CMI, controller pid $CTRL_PID; idle RSS before any Machine: $(mib "$(kb "$CTRL_PID" VmRSS)") MiB"
CTRL_RSS_EMPTY="$(kb "$CTRL_PID" VmRSS)"

k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata: {name: $NAME, namespace: $NS}
type: Opaque
stringData: {apiToken: sim-token, userData: "#cloud-config"}
---
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineClass
metadata: {name: $NAME, namespace: $NS}
provider: EquinixMetal
providerSpec:
  projectID: 5d1ef2a4-0000-4000-8000-000000000001
  metro: sv
  machineType: c3.small.x86
  OS: ubuntu_22_04
  billingCycle: hourly
  tags: [kubernetes.io/cluster/shoot--bench--scale, kubernetes.io/role/node]
secretRef: {name: $NAME, namespace: $NS}
credentialsSecretRef: {name: $NAME, namespace: $NS}
EOF
CPU0_CTRL="$(cpu_s "$CTRL_PID")" CPU0_SERVE="$(cpu_s "$SERVE_PID")"
T0=$(date +%s.%N)
k apply -f - >/dev/null <<EOF
apiVersion: machine.sapcloud.io/v1alpha1
kind: MachineDeployment
metadata: {name: $NAME, namespace: $NS}
spec:
  replicas: $REPLICAS
  minReadySeconds: 0
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {name: $NAME}}
  template:
    metadata: {labels: {name: $NAME}}
    spec: {class: {kind: MachineClass, name: $NAME}}
EOF
log "MachineDeployment $NAME: 0 → $REPLICAS"
running=0
while :; do
  running="$(k get machines -n "$NS" -o jsonpath='{range .items[*]}{.status.currentStatus.phase}{"\n"}{end}' | grep -c '^Running$' || true)"
  now=$(date +%s.%N)
  elapsed="$(awk -v a="$T0" -v b="$now" 'BEGIN { printf "%.1f", b - a }')"
  [[ "$running" -ge "$REPLICAS" ]] && break
  if awk -v e="$elapsed" -v t="$SCALE_TIMEOUT" 'BEGIN { exit !(e > t) }'; then
    log "timeout: $running/$REPLICAS Running after ${elapsed}s"
    break
  fi
  sleep 1
done
CPU1_CTRL="$(cpu_s "$CTRL_PID")" CPU1_SERVE="$(cpu_s "$SERVE_PID")"
T1=$(date +%s.%N)
STATS="$(curl -sf "$SIM_URL/_sim/stats")"
log "$running/$REPLICAS Running after ${elapsed}s; idling ${IDLE_SECONDS}s"
sleep "$IDLE_SECONDS"
CPU2_CTRL="$(cpu_s "$CTRL_PID")"
T2=$(date +%s.%N)
sleep 2 # the audit log's batch flush
# kube_requests FROM TO -> "TOTAL|verb resource count, ..." of the controller's requests
# received in [FROM, TO) (epoch seconds). A watch counts once, when it ends.
kube_requests() {
  python3 -c '
import collections, datetime, json, sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
by = collections.Counter()
for line in open(path, encoding="utf-8"):
    e = json.loads(line)
    if not e.get("userAgent", "").startswith("metal-driver/"):
        continue
    t = datetime.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
    if t0 <= t < t1:
        r = e.get("objectRef", {})
        sub = "/" + r["subresource"] if r.get("subresource") else ""
        by[e["verb"] + " " + r.get("resource", "") + sub] += 1
print(str(sum(by.values())) + "|" + ", ".join(k + " " + str(v) for k, v in by.most_common()))
' "$AUDIT" "$1" "$2"
}
KUBE_UP="$(kube_requests "$T0" "$T1")" KUBE_IDLE="$(kube_requests "$T1" "$T2")"
STATS_IDLE="$(curl -sf "$SIM_URL/_sim/stats")"
api_total() { python3 -c 'import json,sys; print(sum(json.loads(sys.argv[1])["requests"].values()))' "$1"; }
api_by_op() { python3 -c 'import json,sys; r=json.loads(sys.argv[1])["requests"]; print(", ".join(f"{k} {v}" for k,v in sorted(r.items())))' "$1"; }
API="$(api_total "$STATS")"
API_IDLE="$(( $(api_total "$STATS_IDLE") - API ))"
DEVICES="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["devices_created"])' "$STATS")"

mkdir -p "$OUT"
{
  echo "| measure | value |"
  echo "|---|---|"
  echo "| replicas Running | **$running / $REPLICAS** (sim --provision-seconds $PROVISION_SECONDS) |"
  echo "| MachineDeployment 0 → all Running | **${elapsed} s** |"
  echo "| devices created (duplicates) | $DEVICES ($((DEVICES - REPLICAS))) |"
  echo "| Metal API requests until all Running | **$API** ($(awk -v a="$API" -v r="$REPLICAS" 'BEGIN { printf "%.2f", a / r }')/machine): $(api_by_op "$STATS") |"
  echo "| Metal API requests in the next ${IDLE_SECONDS} s (steady state) | $API_IDLE |"
  echo "| controller kube-apiserver requests until all Running ($KUBE_API_ARGS_TEXT) | **${KUBE_UP%%|*}** ($(awk -v a="${KUBE_UP%%|*}" -v r="$REPLICAS" 'BEGIN { printf "%.2f", a / r }')/machine): ${KUBE_UP#*|} |"
  echo "| controller kube-apiserver requests in the next ${IDLE_SECONDS} s | ${KUBE_IDLE%%|*} |"
  echo "| controller CPU s (scale-up / next ${IDLE_SECONDS} s idle) | **$(awk -v a="$CPU0_CTRL" -v b="$CPU1_CTRL" 'BEGIN { printf "%.2f", b - a }')** ($(awk -v a="$CPU0_CTRL" -v b="$CPU1_CTRL" -v r="$REPLICAS" 'BEGIN { printf "%.1f", (b - a) * 1000 / r }') ms/machine) / $(awk -v a="$CPU1_CTRL" -v b="$CPU2_CTRL" 'BEGIN { printf "%.2f", b - a }') |"
  echo "| driver CPU s (scale-up) | $(awk -v a="$CPU0_SERVE" -v b="$CPU1_SERVE" 'BEGIN { printf "%.2f", b - a }') |"
  echo "| controller RSS: no Machines / peak (VmHWM) / idle watching $running Machines | $(mib "$CTRL_RSS_EMPTY") / **$(mib "$(kb "$CTRL_PID" VmHWM)")** / **$(mib "$(kb "$CTRL_PID" VmRSS)")** MiB |"
  echo "| driver RSS: peak (VmHWM) / now | $(mib "$(kb "$SERVE_PID" VmHWM)") / $(mib "$(kb "$SERVE_PID" VmRSS)") MiB |"
} | tee "$OUT/controller-scale.md"

# --- footprint: the same Machines under each alternative (FOOTPRINT) ---------------------------
[[ -n "$FOOTPRINT" ]] || exit 0

# idle_window PID... -> "cpu_seconds" summed over the PIDs across IDLE_SECONDS.
idle_window() {
  local before=0 after=0 p
  for p in "$@"; do before="$(awk -v a="$before" -v b="$(cpu_s "$p")" 'BEGIN { printf "%.2f", a + b }')"; done
  sleep "$IDLE_SECONDS"
  for p in "$@"; do after="$(awk -v a="$after" -v b="$(cpu_s "$p")" 'BEGIN { printf "%.2f", a + b }')"; done
  awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", b - a }'
}
# running_count -> Machines in phase Running.
running_count() {
  k get machines -n "$NS" -o jsonpath='{range .items[*]}{.status.currentStatus.phase}{"\n"}{end}' | grep -c '^Running$' || true
}
# stop_pid PID: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
# row LABEL PROCS RSS_KIB CPU NOTE
ROWS=()
row() { ROWS+=("| $1 | $2 | **$(mib "$3")** | $4 | $5 |"); }

# (1) today: controller + serve, measured while both idle over the same Machines.
CPU_OURS="$(idle_window "$CTRL_PID" "$SERVE_PID")"
RSS_CTRL="$(kb "$CTRL_PID" VmRSS)" RSS_SERVE="$(kb "$SERVE_PID" VmRSS)"
row "controller + serve (two processes)" 2 "$((RSS_CTRL + RSS_SERVE))" "$CPU_OURS" \
  "controller $(mib "$RSS_CTRL") + serve $(mib "$RSS_SERVE") MiB; $(running_count)/$REPLICAS Running"
stop_pid "$CTRL_PID"
log "controller stopped; footprint alternatives: $FOOTPRINT"

SIDECARS=0
for alt in $FOOTPRINT; do
  case "$alt" in
    oracle)
      ORACLE_BIN="$("$ROOT/hack/kube-bins.sh" --quiet mcm-oracle | sed -n 's/^mcm-oracle=//p')"
      ORACLE_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      "$ORACLE_BIN" --control-kubeconfig "$KUBECONFIG" --target-kubeconfig "$KUBECONFIG" --namespace "$NS" \
        --cmi-endpoint "$CMI" --leader-elect=false --address 127.0.0.1 --port "$ORACLE_PORT" --v=2 "${KUBE_API_ARGS[@]}" \
        >"$LOGS/mcm-oracle.log" 2>&1 &
      pid=$!
      PIDS+=("$pid")
      log "oracle pid $pid; settling ${SETTLE_SECONDS}s"
      sleep "$SETTLE_SECONDS"
      kill -0 "$pid" || { log "oracle exited; see $LOGS/mcm-oracle.log"; exit 1; }
      cpu="$(idle_window "$pid" "$SERVE_PID")"
      rss="$(kb "$pid" VmRSS)" rss_serve="$(kb "$SERVE_PID" VmRSS)"
      row "MCM's Go machine controller (oracle) + serve" 2 "$((rss + rss_serve))" "$cpu" \
        "oracle **$(mib "$rss")** (peak $(mib "$(kb "$pid" VmHWM)")) + serve $(mib "$rss_serve") MiB; $(running_count)/$REPLICAS Running"
      stop_pid "$pid"
      ;;
    sidecar | sidecar=*)
      sbin="$BIN" label="one-process sidecar (metal-driver, no subcommand)"
      SIDECARS=$((SIDECARS + 1))
      slog="$LOGS/sidecar-$SIDECARS"
      if [[ "$alt" == sidecar=* ]]; then
        sbin="${alt#sidecar=}" label="one-process sidecar: $(basename "$sbin")"
      fi
      if ! "$sbin" --help 2>/dev/null | grep -q -- '--control-kubeconfig'; then
        ROWS+=("| one-process sidecar | 1 | pending | | $sbin has no sidecar mode (no subcommand) yet |")
        continue
      fi
      # Gardener's sidecar args (its helper passes nothing else), plus where the Metal API is.
      METAL_API_URL="$SIM_URL" "$sbin" --control-kubeconfig "$KUBECONFIG" --target-kubeconfig "$KUBECONFIG" \
        --namespace "$NS" --address 127.0.0.1 --port 0 "${KUBE_API_ARGS[@]}" \
        --machine-creation-timeout=20m --machine-drain-timeout=2h --machine-health-timeout=10m \
        --machine-safety-apiserver-statuscheck-timeout=30s --machine-safety-apiserver-statuscheck-period=1m \
        --machine-safety-orphan-vms-period=30m --v=3 >"$slog.out" 2>"$slog.log" &
      pid=$!
      PIDS+=("$pid")
      log "sidecar pid $pid; settling ${SETTLE_SECONDS}s"
      sleep "$SETTLE_SECONDS"
      kill -0 "$pid" || { log "sidecar exited; see $slog.log"; exit 1; }
      cpu="$(idle_window "$pid")"
      rss="$(kb "$pid" VmRSS)"
      row "$label" 1 "$rss" "$cpu" \
        "peak $(mib "$(kb "$pid" VmHWM)") MiB; binary $(mib "$(($(stat -L -c %s "$(readlink -f /proc/"$pid"/exe)") / 1024))") MiB; $(running_count)/$REPLICAS Running"
      stop_pid "$pid"
      ;;
    *) log "unknown FOOTPRINT entry '$alt' (known: oracle sidecar sidecar=PATH)"; exit 2 ;;
  esac
done

STATS_END="$(curl -sf "$SIM_URL/_sim/stats")"
DEVICES_END="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["devices_created"])' "$STATS_END")"
{
  echo
  echo "Footprint with $REPLICAS Running Machines ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg); settle ${SETTLE_SECONDS} s, idle window ${IDLE_SECONDS} s; devices ever created: $DEVICES_END):"
  echo
  echo "| machine controller | processes | idle RSS (MiB) | idle CPU s in ${IDLE_SECONDS} s | detail |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$OUT/footprint.md"
