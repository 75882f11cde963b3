#!/usr/bin/env bash
# A real, throw-away Kubernetes control plane on 127.0.0.1 for tests: etcd + kube-apiserver
# (RBAC, static admin token), MCM's CRDs, and optionally kube-controller-manager and Gardener's
# machine-controller-manager. No containers, no kubelet, no scheduler.
#
#   hack/e2e-env.sh up       start (or reuse a healthy) environment; prints `export ...` lines
#   hack/e2e-env.sh env      print the `export ...` lines of a running environment
#   hack/e2e-env.sh status   show processes and /readyz; exit 1 when not healthy
#   hack/e2e-env.sh down     stop everything and delete the state dir
#   hack/e2e-env.sh logs [NAME]  tail the logs (etcd, kube-apiserver, kube-controller-manager,
#                                machine-controller-manager)
#   hack/e2e-env.sh apiserver stop|start   stop the kube-apiserver alone (SIGTERM, etcd keeps
#                                the data), or start it again with the same flags and port
#                                (chaos tests: an unreachable API server)
#
# Typical use:   eval "$(hack/e2e-env.sh up)"; kubectl get crds; ...; hack/e2e-env.sh down
#
# Environment:
#   METAL_DRIVER_STATE   state dir (default /tmp/metal-driver-e2e): pki/, logs/, etcd/, kubeconfig
#   METAL_DRIVER_CACHE   binary/CRD cache used by hack/kube-bins.sh (default ~/.cache/metal-driver)
#   E2E_NAMESPACE        namespace created at start and watched by MCM (default metal-driver-e2e)
#   E2E_WITH_KCM=1       also run kube-controller-manager (namespace deletion, GC, SA tokens)
#   E2E_WITH_MCM=1       also run machine-controller-manager (MachineDeployment/MachineSet
#                        controllers) against the same apiserver as control and target cluster
#   E2E_MCM_TARGET_KUBECONFIG  target kubeconfig for MCM (default: the env's own; `none` disables)
#   E2E_APISERVER_EXTRA_ARGS   extra kube-apiserver flags (word-split), e.g. --feature-gates=...
#   E2E_TIMEOUT          seconds to wait for each component to become ready (default 180)
#   E2E_KEEP_STATE=1     `down` stops the processes but keeps the state dir (logs)
#
# Outputs (in the state dir): kubeconfig (context metal-driver-e2e, admin token user,
# namespace E2E_NAMESPACE), env (the export lines), pki/{ca.crt,admin-token,admin.crt,admin.key},
# logs/<component>.log, bin/kubectl. The admin token's user is in group system:masters.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${METAL_DRIVER_STATE:-/tmp/metal-driver-e2e}"
NS="${E2E_NAMESPACE:-metal-driver-e2e}"
TIMEOUT="${E2E_TIMEOUT:-180}"
WITH_KCM="${E2E_WITH_KCM:-0}"
WITH_MCM="${E2E_WITH_MCM:-0}"
MARKER="$STATE/.metal-driver-e2e"
KUBECONFIG_FILE="$STATE/kubeconfig"
COMPONENTS=(machine-controller-manager kube-controller-manager kube-apiserver etcd)

log() { echo "e2e-env: $*" >&2; }
die() { echo "e2e-env: error: $*" >&2; exit 1; }

need_tool() { # need_tool CMD APT-PACKAGE
  command -v "$1" >/dev/null 2>&1 && return
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "$1 not found; installing Debian package $2"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >&2 \
      || die "could not install $2"
  else
    die "$1 is required (Debian package $2)"
  fi
}

# --- ports -------------------------------------------------------------------------------
USED_PORTS=" "
port_busy() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
free_port() {
  local p i
  for i in $(seq 1 200); do
    # Below the usual ephemeral range (32768+) so outgoing connections don't take it meanwhile.
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    port_busy "$p" && continue
    USED_PORTS+="$p "
    echo "$p"
    return
  done
  die "no free TCP port found on 127.0.0.1 after $i tries"
}

# --- processes ---------------------------------------------------------------------------
pid_of() { # prints the pid if NAME is running (and is the binary we started), else nothing
  local f="$STATE/pids/$1.pid" pid bin
  [[ -f "$f" ]] || return 0
  read -r pid bin <"$f" || true
  [[ -n "${pid:-}" ]] && kill -0 "$pid" 2>/dev/null || return 0
  # Guard against pid reuse: the process must still run the binary we recorded.
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == "$bin" ]] || return 0
  echo "$pid"
}

start_proc() { # start_proc NAME BINARY ARGS...
  local name="$1" bin="$2"
  shift 2
  mkdir -p "$STATE/logs" "$STATE/pids"
  printf '%q ' "$bin" "$@" >"$STATE/logs/$name.cmdline"
  # setsid: own session, so a Ctrl-C or hang-up of the caller's terminal does not kill it.
  # 8>&-: the long-running children must not inherit (and so hold) the up/down lock.
  setsid "$bin" "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 8>&- &
  local pid=$! real i
  real="$(readlink -f "$bin")"
  echo "$pid $real" >"$STATE/pids/$name.pid"
  # setsid execs the binary in the same process; wait for that so pid_of recognizes it.
  for i in $(seq 1 40); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == "$real" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  log "started $name (pid $pid, log $STATE/logs/$name.log)"
}

fail_with_log() { # fail_with_log NAME MESSAGE
  local lf="$STATE/logs/$1.log"
  if [[ -f "$lf" ]]; then
    echo "----- last 40 lines of $lf -----" >&2
    tail -n 40 "$lf" >&2
    echo "-----" >&2
  fi
  die "$2"
}

wait_ready() { # wait_ready NAME DESCRIPTION CMD... (CMD must succeed when ready)
  local name="$1" what="$2" start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    [[ -n "$(pid_of "$name")" ]] || fail_with_log "$name" "$name exited before it became ready"
    ((SECONDS - start < TIMEOUT)) || fail_with_log "$name" "$name: $what not ready after ${TIMEOUT}s"
    sleep 0.5
  done
  log "$name ready after $((SECONDS - start))s"
}

stop_all() { # SIGTERM every component at once (the env is being thrown away), then wait
  local n pid i names=() pids=() alive
  for n in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$n")"
    if [[ -n "$pid" ]]; then
      names+=("$n")
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for i in $(seq 1 60); do
    alive=0
    for pid in ${pids[@]+"${pids[@]}"}; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 1 ]] || break
    sleep 0.25
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for 15s; sending SIGKILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    log "stopped ${names[$i]} (pid ${pids[$i]})"
  done
  rm -f "$STATE"/pids/*.pid
}

# --- setup -------------------------------------------------------------------------------
BIN_etcd="" BIN_kube_apiserver="" BIN_kubectl="" BIN_kube_controller_manager=""
BIN_machine_controller_manager="" CRD_DIR=""
load_bins() { # load_bins NAME... -> sets BIN_* and CRD_DIR from hack/kube-bins.sh's output
  local line out
  out="$("$HACK_DIR/kube-bins.sh" "$@")" || die "hack/kube-bins.sh failed"
  while IFS= read -r line; do
    case "$line" in
      etcd=*) BIN_etcd="${line#*=}" ;;
      kube-apiserver=*) BIN_kube_apiserver="${line#*=}" ;;
      kubectl=*) BIN_kubectl="${line#*=}" ;;
      kube-controller-manager=*) BIN_kube_controller_manager="${line#*=}" ;;
      machine-controller-manager=*) BIN_machine_controller_manager="${line#*=}" ;;
      crds=*) CRD_DIR="${line#*=}" ;;
    esac
  done <<<"$out"
  [[ -n "$CRD_DIR" ]] || die "hack/kube-bins.sh printed no crds= line"
}

gen_pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  cat >"$d/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = metal-driver-e2e
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[alt]
IP.1 = 127.0.0.1
IP.2 = 10.0.0.1
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
EOF
  (
    cd "$d"
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    openssl req -x509 -new -config openssl.cnf -extensions v3_ca -key ca.key \
      -subj "/CN=metal-driver-e2e-ca" -days 3650 -sha256 -out ca.crt
    issue() { # issue NAME SUBJECT EXTENSIONS
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
      openssl req -new -config openssl.cnf -key "$1.key" -subj "$2" -out "$1.csr"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -days 3650 -sha256 -extfile openssl.cnf -extensions "$3" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    }
    issue apiserver "/CN=kube-apiserver" v3_server
    # Client certificate with the same power as the admin token, for clients that prefer certs.
    issue admin "/O=system:masters/CN=metal-driver-e2e-admin" v3_client
    # Aggregation layer / request-header authentication (kube-controller-manager's delegated
    # authentication reads this CA from kube-system/extension-apiserver-authentication).
    issue front-proxy-client "/CN=front-proxy-client" v3_client
    # Service-account token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
    openssl rand -hex 32 >admin-token
    printf '%s,metal-driver-e2e-admin,metal-driver-e2e-admin,"system:masters"\n' "$(cat admin-token)" >tokens.csv
    chmod 0644 ca.crt apiserver.crt admin.crt front-proxy-client.crt sa.pub
  ) >/dev/null 2>"$STATE/logs/openssl.log" || { cat "$STATE/logs/openssl.log" >&2; die "openssl failed"; }
}

write_kubeconfig() {
  local token ca
  token="$(cat "$STATE/pki/admin-token")"
  ca="$(base64 -w0 <"$STATE/pki/ca.crt")"
  (
    umask 077
    cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: metal-driver-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: metal-driver-e2e-admin
  user:
    token: $token
contexts:
- name: metal-driver-e2e
  context:
    cluster: metal-driver-e2e
    user: metal-driver-e2e-admin
    namespace: $NS
current-context: metal-driver-e2e
EOF
  )
}

write_env() {
  local f="$STATE/env"
  {
    echo "export KUBECONFIG='$KUBECONFIG_FILE'"
    echo "export METAL_DRIVER_E2E_STATE='$STATE'"
    echo "export METAL_DRIVER_E2E_SERVER='https://127.0.0.1:$APISERVER_PORT'"
    echo "export METAL_DRIVER_E2E_TOKEN='$(cat "$STATE/pki/admin-token")'"
    echo "export METAL_DRIVER_E2E_CA='$STATE/pki/ca.crt'"
    echo "export METAL_DRIVER_E2E_CLIENT_CERT='$STATE/pki/admin.crt'"
    echo "export METAL_DRIVER_E2E_CLIENT_KEY='$STATE/pki/admin.key'"
    echo "export METAL_DRIVER_E2E_ETCD='http://127.0.0.1:$ETCD_PORT'"
    echo "export METAL_DRIVER_E2E_NAMESPACE='$NS'"
    echo "export METAL_DRIVER_E2E_KUBECTL='$STATE/bin/kubectl'"
    echo "export METAL_DRIVER_E2E_CRDS='$CRD_DIR'"
    if [[ -n "$(pid_of machine-controller-manager)" ]]; then
      echo "export METAL_DRIVER_E2E_MCM_URL='http://127.0.0.1:$MCM_PORT'"
    fi
    echo "export PATH='$STATE/bin':\"\$PATH\""
  } >"$f"
}

apiserver_ready() {
  curl -fsS --max-time 5 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$STATE/pki/admin-token")" \
    "https://127.0.0.1:$APISERVER_PORT/readyz"
}

kc() { "$STATE/bin/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

init_state() {
  if [[ -e "$STATE" && ! -e "$MARKER" ]] && [[ -n "$(ls -A "$STATE" 2>/dev/null)" ]]; then
    die "$STATE exists, is not empty and was not made by this script; set METAL_DRIVER_STATE"
  fi
  mkdir -p "$STATE"/{logs,pids,bin,etcd}
  chmod 0700 "$STATE/etcd"
  touch "$MARKER"
  ETCD_PORT="$(free_port)"
  ETCD_PEER_PORT="$(free_port)"
  APISERVER_PORT="$(free_port)"
  KCM_PORT="$(free_port)"
  MCM_PORT="$(free_port)"
  cat >"$STATE/ports" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
MCM_PORT=$MCM_PORT
EOF
  gen_pki
}

load_ports() {
  [[ -f "$STATE/ports" ]] || die "no environment at $STATE (run: hack/e2e-env.sh up)"
  # shellcheck disable=SC1091
  source "$STATE/ports"
}

start_core() {
  start_proc etcd "$BIN_etcd" \
    --name=e2e \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true \
    --log-level=warn
  wait_ready etcd "http://127.0.0.1:$ETCD_PORT/health" \
    curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  local extra=()
  # shellcheck disable=SC2206 # intentional word splitting of user-supplied flags
  [[ -n "${E2E_APISERVER_EXTRA_ARGS:-}" ]] && extra=(${E2E_APISERVER_EXTRA_ARGS})
  local p="$STATE/pki"
  # ServiceAccount admission needs each namespace's `default` ServiceAccount, which only
  # kube-controller-manager creates: disabled so Pods can be created without it.
  # --endpoint-reconciler-type=none: the `kubernetes` Service would get a loopback endpoint,
  # which Endpoints validation rejects (log noise only).
  # --enable-bootstrap-token-auth: the controller's bootstrap token Secrets authenticate as
  # `system:bootstrap:<id>`, as in a Gardener shoot (the e2e tests log in with them).
  start_proc kube-apiserver "$BIN_kube_apiserver" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --cert-dir="$STATE/apiserver" \
    --tls-cert-file="$p/apiserver.crt" \
    --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --requestheader-client-ca-file="$p/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" \
    --proxy-client-key-file="$p/front-proxy-client.key" \
    --token-auth-file="$p/tokens.csv" \
    --enable-bootstrap-token-auth \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false \
    ${extra[@]+"${extra[@]}"}
  wait_ready kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" apiserver_ready
}

cmd_apiserver() { # cmd_apiserver stop|start
  load_ports
  local pid i
  case "${1:-}" in
    stop)
      pid="$(pid_of kube-apiserver)"
      [[ -n "$pid" ]] || { log "kube-apiserver is not running"; return 0; }
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      rm -f "$STATE/pids/kube-apiserver.pid"
      log "stopped kube-apiserver (pid $pid)" ;;
    start)
      [[ -n "$(pid_of kube-apiserver)" ]] && { log "kube-apiserver already running"; return 0; }
      [[ -f "$STATE/logs/kube-apiserver.cmdline" ]] || die "no recorded kube-apiserver command line"
      local -a argv
      eval "argv=($(cat "$STATE/logs/kube-apiserver.cmdline"))"
      start_proc kube-apiserver "${argv[@]}"
      wait_ready kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" apiserver_ready ;;
    *) die "usage: hack/e2e-env.sh apiserver stop|start" ;;
  esac
}

start_kcm() {
  [[ -n "$(pid_of kube-controller-manager)" ]] && return
  local p="$STATE/pki"
  start_proc kube-controller-manager "$BIN_kube_controller_manager" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --authentication-kubeconfig="$KUBECONFIG_FILE" \
    --authorization-kubeconfig="$KUBECONFIG_FILE" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --cert-dir="$STATE/kcm" \
    --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" \
    --cluster-signing-key-file="$p/ca.key" \
    --use-service-account-credentials=false \
    --profiling=false
  wait_ready kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
}

start_mcm() {
  [[ -n "$(pid_of machine-controller-manager)" ]] && return
  local target="${E2E_MCM_TARGET_KUBECONFIG:-$KUBECONFIG_FILE}"
  # Flags as read from cmd/machine-controller-manager/app/options/options.go (v0.62.1) and
  # Gardener's deployment; leader election off, HTTP (/healthz, /metrics) on loopback only.
  start_proc machine-controller-manager "$BIN_machine_controller_manager" \
    --control-kubeconfig="$KUBECONFIG_FILE" \
    --target-kubeconfig="$target" \
    --namespace="$NS" \
    --leader-elect=false \
    --address=127.0.0.1 \
    --port="$MCM_PORT" \
    --safety-up=2 \
    --safety-down=1 \
    --machine-safety-overshooting-period=1m \
    --v=3
  wait_ready machine-controller-manager "http://127.0.0.1:$MCM_PORT/healthz" \
    curl -fsS --max-time 2 "http://127.0.0.1:$MCM_PORT/healthz"
}

apply_crds_and_namespace() {
  kc apply --server-side --force-conflicts -f "$CRD_DIR" >&2
  kc wait --for=condition=Established --timeout="${TIMEOUT}s" \
    crd/machines.machine.sapcloud.io crd/machineclasses.machine.sapcloud.io \
    crd/machinesets.machine.sapcloud.io crd/machinedeployments.machine.sapcloud.io >&2
  kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f - >&2
}

# --- commands ----------------------------------------------------------------------------
cmd_up() {
  need_tool openssl openssl
  need_tool curl curl
  need_tool setsid util-linux
  local bins=(kube-apiserver kubectl etcd)
  [[ $WITH_KCM == 1 ]] && bins+=(kube-controller-manager)
  [[ $WITH_MCM == 1 ]] && bins+=(machine-controller-manager)
  load_bins "${bins[@]}"

  # Whatever fails below: stop what was started, keep the logs.
  trap up_failed EXIT
  local reuse=0
  if [[ -e "$MARKER" && -f "$STATE/ports" ]]; then
    load_ports
    if [[ -n "$(pid_of etcd)" && -n "$(pid_of kube-apiserver)" ]] && apiserver_ready >/dev/null 2>&1; then
      reuse=1
      log "reusing the running environment in $STATE"
    else
      log "found a stale environment in $STATE; recreating it"
      cmd_down
    fi
  fi
  if [[ $reuse == 0 ]]; then
    init_state
    ln -sfn "$BIN_kubectl" "$STATE/bin/kubectl"
    start_core
    write_kubeconfig
  fi
  apply_crds_and_namespace
  [[ $WITH_KCM == 1 ]] && start_kcm
  [[ $WITH_MCM == 1 ]] && start_mcm
  write_env
  trap - EXIT
  log "up: kubeconfig $KUBECONFIG_FILE, apiserver https://127.0.0.1:$APISERVER_PORT, namespace $NS"
  cat "$STATE/env"
}

up_failed() {
  local rc=$?
  [[ $rc != 0 ]] || return 0
  [[ -d "$STATE/pids" ]] && stop_all
  log "up failed; logs kept in $STATE/logs (hack/e2e-env.sh down removes them)"
  exit "$rc"
}

cmd_env() {
  [[ -f "$STATE/env" ]] || die "no environment at $STATE (run: hack/e2e-env.sh up)"
  cat "$STATE/env"
}

cmd_status() {
  load_ports
  local ok=0 n pid
  for n in etcd kube-apiserver kube-controller-manager machine-controller-manager; do
    pid="$(pid_of "$n")"
    if [[ -n "$pid" ]]; then
      echo "$n: running (pid $pid)"
    elif [[ -f "$STATE/pids/$n.pid" ]]; then
      echo "$n: DEAD (see $STATE/logs/$n.log)"
      ok=1
    else
      echo "$n: not started"
    fi
  done
  if apiserver_ready >/dev/null 2>&1; then
    echo "kube-apiserver https://127.0.0.1:$APISERVER_PORT/readyz: ok"
  else
    echo "kube-apiserver https://127.0.0.1:$APISERVER_PORT/readyz: NOT READY"
    ok=1
  fi
  echo "kubeconfig: $KUBECONFIG_FILE"
  return $ok
}

cmd_down() {
  if [[ ! -e "$STATE" ]]; then
    log "nothing to do: $STATE does not exist"
    return 0
  fi
  [[ -e "$MARKER" ]] || die "$STATE was not made by this script; not touching it"
  stop_all
  if [[ "${E2E_KEEP_STATE:-0}" == 1 ]]; then
    log "E2E_KEEP_STATE=1: keeping $STATE (logs in $STATE/logs)"
    rm -f "$STATE/env"
  else
    rm -rf "$STATE"
    log "removed $STATE"
  fi
}

cmd_logs() {
  local n="${1:-}"
  if [[ -n "$n" ]]; then
    tail -n 100 "$STATE/logs/$n.log"
  else
    tail -n 30 "$STATE"/logs/*.log
  fi
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  mkdir -p "$(dirname "$STATE")"
  case "$cmd" in
    up|down)
      # One up/down at a time per state dir.
      exec 8>"$STATE.run.lock"
      flock -w "$((TIMEOUT * 3))" 8 || die "another '$cmd' holds $STATE.run.lock for too long"
      "cmd_$cmd" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    apiserver)
      exec 8>"$STATE.run.lock"
      flock -w "$((TIMEOUT * 3))" 8 || die "another command holds $STATE.run.lock for too long"
      cmd_apiserver "$@" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
  esac
}

main "$@"
