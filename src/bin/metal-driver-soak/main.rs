//! `metal-driver-soak`: the fault-injection soak (`make soak`, `hack/soak.sh`).
//!
//! Starts the Metal API simulator in-process with mixed faults (429 with Retry-After,
//! 500/503, added latency, commit-then-drop), runs `metal-driver serve` as a subprocess on a
//! unix socket and kills it (SIGKILL, then SIGTERM, alternating) every `--restart-every`
//! seconds, and drives machines through create → status polls → list → delete concurrently
//! over gRPC, retrying the way MCM does (Unavailable, Aborted, DeadlineExceeded, Unknown,
//! Internal and ResourceExhausted are retried). When the time is up no new machine starts;
//! the running ones finish, and the invariants are checked and printed as figures (and
//! written as JSON next to the driver logs):
//!
//! - every machine ever created got exactly one device (the simulator's `devices_created`
//!   equals the number of machines, and every create answer for a machine named the same
//!   device), and list never showed a device of an unknown machine or a second device;
//! - no device is left after the deletes, deprovisioning included;
//! - every RPC got a final answer (none hit the hang guard) and every machine finished;
//! - no driver run logged a panic, and every SIGTERM'd driver exited 0;
//! - the count of each injected fault.
//!
//! With `--kubeconfig` (a real kube-apiserver with MCM's CRDs; `hack/soak.sh` brings one up)
//! a second lane runs beside the first: `Machine` objects reconciled by `metal-driver
//! controller` through the same driver and simulator, with the controller killed and
//! restarted too (SIGKILL and SIGTERM alternately, half a period after the driver). Its
//! invariants: every Machine reaches Running and is released after delete, its
//! `spec.providerID` never changes, and its devices count towards "exactly one device per
//! machine" and "zero devices left" (see `controller_lane`).
//!
//! Exit status 0 when every invariant holds, 1 otherwise. Loopback and a private unix
//! socket only; the run is bounded by `--seconds` plus `--drain-seconds`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use metal_driver::{
    cmi::{
        Rpc,
        calls::{CallError, MachineRef},
        client::CmiClient,
        codes::code_name,
    },
    sim::{self, SimArgs},
};
use rand::Rng;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    controller_lane::{Lane, median_max},
    ids::IdsByMachine,
    process::Supervised,
};

mod chaos;
mod controller_lane;
mod ids;
mod process;

const PROJECT: &str = "5d1ef2a4-0000-4000-8000-000000000001";
const TOKEN: &str = "sim-token";

/// Flags of the soak.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "metal-driver-soak",
    about = "Fault-injection soak of metal-driver serve"
)]
struct Args {
    /// How long new machines keep starting (the run then drains, see --drain-seconds).
    #[arg(long, env = "SOAK_SECONDS", default_value_t = 600)]
    seconds: u64,
    /// Upper bound on the drain after --seconds: machines still running get this long.
    #[arg(long, env = "SOAK_DRAIN_SECONDS", default_value_t = 180)]
    drain_seconds: u64,
    /// Machines in flight at once.
    #[arg(long, env = "SOAK_CONCURRENCY", default_value_t = 24)]
    concurrency: usize,
    /// Stop starting machines after this many (0 = only the time bounds the run).
    #[arg(long, env = "SOAK_MAX_MACHINES", default_value_t = 0)]
    max_machines: u64,
    /// Probability of an injected 429 (with Retry-After) per API request.
    #[arg(long, default_value_t = 0.07)]
    fault_rate_429: f64,
    /// Probability of an injected 500/503 per API request.
    #[arg(long, default_value_t = 0.07)]
    fault_rate_5xx: f64,
    /// Probability that an API request is executed and its response dropped.
    #[arg(long, default_value_t = 0.06)]
    fault_rate_drop: f64,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 15)]
    latency_ms: u64,
    /// Seconds between driver restarts (alternately SIGKILL and SIGTERM); 0 = never.
    #[arg(long, env = "SOAK_RESTART_EVERY", default_value_t = 20)]
    restart_every: u64,
    /// The driver binary (default: `metal-driver` next to this binary).
    #[arg(long)]
    driver_bin: Option<PathBuf>,
    /// Where driver logs and report.json go (default: target/soak/<unix time>).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Seed of the simulator's fault draws (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Kubeconfig of a kube-apiserver with MCM's CRDs: adds the controller lane (Machines
    /// reconciled by a restarted `metal-driver controller`). Without it only the driver is
    /// soaked.
    #[arg(long, env = "SOAK_KUBECONFIG")]
    kubeconfig: Option<String>,
    /// Controller-lane Machines in flight at once.
    #[arg(long, env = "SOAK_CONTROLLER_CONCURRENCY", default_value_t = 6)]
    controller_concurrency: usize,
    /// Seconds between controller restarts (alternately SIGKILL and SIGTERM); 0 = never.
    /// Default: --restart-every.
    #[arg(long, env = "SOAK_CONTROLLER_RESTART_EVERY")]
    controller_restart_every: Option<u64>,
    /// Chaos in the controller lane (see `chaos`): a pool of Machines through a network
    /// incident with the target API server gone, a pool-wide NotReady past the health
    /// timeout, and the control API server gone. Needs --target-kubeconfig and both
    /// environments' state dirs (hack/e2e-env.sh, for `apiserver stop|start`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    chaos: bool,
    /// Kubeconfig of the target cluster (Nodes) for the controller lane; default: --kubeconfig.
    #[arg(long, env = "SOAK_TARGET_KUBECONFIG")]
    target_kubeconfig: Option<String>,
    /// hack/e2e-env.sh state dir of the control cluster (for the chaos).
    #[arg(long, env = "SOAK_CONTROL_STATE")]
    control_state: Option<String>,
    /// hack/e2e-env.sh state dir of the target cluster (for the chaos).
    #[arg(long, env = "SOAK_TARGET_STATE")]
    target_state: Option<String>,
}

/// Counters shared by every task.
#[derive(Default)]
struct Tally {
    rpc_started: AtomicU64,
    rpc_answered: AtomicU64,
    rpc_hung: AtomicU64,
    /// (method, code) → answers.
    outcomes: Mutex<BTreeMap<(String, String), u64>>,
    machines_started: AtomicU64,
    machines_done: AtomicU64,
    /// Machine name → every ProviderID a create answered for it.
    created: IdsByMachine,
    /// Machines whose workflow began (list may show them).
    known: Mutex<HashSet<String>>,
    /// Problems found while running (each one fails the soak).
    anomalies: Mutex<Vec<String>>,
    lists: AtomicU64,
    list_unknown: AtomicU64,
    list_foreign_device: AtomicU64,
    concurrent_creates: AtomicU64,
}

impl Tally {
    fn answer(&self, rpc: Rpc, code: Code) {
        self.rpc_answered.fetch_add(1, Ordering::Relaxed);
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry((rpc.name().to_owned(), code_name(code).to_owned()))
            .or_default() += 1;
    }

    fn anomaly(&self, what: String) {
        eprintln!("soak: ANOMALY {what}");
        self.anomalies.lock().unwrap().push(what);
    }
}

/// The MachineClass providerSpec of a lane; `cluster_tag` keeps the lanes apart.
fn spec_json(cluster_tag: &str) -> serde_json::Value {
    json!({
        "projectID": PROJECT,
        "metro": "sv",
        "machineType": "c3.small.x86",
        "OS": "ubuntu_22_04",
        "billingCycle": "hourly",
        "tags": [cluster_tag, "kubernetes.io/role/node"],
    })
}

fn spec(cluster_tag: &str) -> Vec<u8> {
    spec_json(cluster_tag).to_string().into_bytes()
}

fn secrets() -> HashMap<String, Vec<u8>> {
    HashMap::from([
        ("apiToken".to_owned(), TOKEN.as_bytes().to_vec()),
        (
            "userData".to_owned(),
            b"#cloud-config\nhostname: soak\n".to_vec(),
        ),
    ])
}

/// Codes MCM retries soon (the rest are final).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Cancelled
    )
}

/// Everything a machine task needs.
#[derive(Clone)]
struct Ctx {
    cmi: CmiClient,
    tally: Arc<Tally>,
    spec: Arc<Vec<u8>>,
    secrets: Arc<HashMap<String, Vec<u8>>>,
    /// Past this instant the run is over: retry loops give up.
    hard_stop: Instant,
}

/// The per-call deadline the client sends; the hang guard waits this plus a margin.
const CALL_DEADLINE: Duration = Duration::from_secs(20);
const HANG_GUARD: Duration = Duration::from_secs(45);

impl Ctx {
    /// One RPC with a deadline and a hang guard; the answer is tallied.
    async fn call<T, F>(&self, rpc: Rpc, fut: F) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<T, CallError>>,
    {
        self.tally.rpc_started.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(HANG_GUARD, fut).await {
            Ok(Ok(r)) => {
                self.tally.answer(rpc, Code::Ok);
                Ok(r)
            }
            Ok(Err(e)) => {
                self.tally.answer(rpc, e.code());
                Err(e)
            }
            Err(_) => {
                self.tally.rpc_hung.fetch_add(1, Ordering::Relaxed);
                self.tally
                    .anomaly(format!("{rpc}: no answer within {HANG_GUARD:?}"));
                Err(CallError::new(rpc, Code::DeadlineExceeded, "hang guard"))
            }
        }
    }

    /// Retries `op` on the retryable codes with a jittered backoff, as MCM would.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Err(e) if retryable(e.code()) && Instant::now() < self.hard_stop => {
                    let jitter = rand::rng().random_range(0.5..1.5);
                    tokio::time::sleep(backoff.mul_f64(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) if retryable(e.code()) => {
                    return Err(CallError::new(
                        e.rpc(),
                        e.code(),
                        format!("{what}: gave up at the end of the run: {}", e.message()),
                    ));
                }
                other => return other,
            }
        }
    }

    /// The lane's machine `name`, with `provider_id` when known.
    fn machine_ref<'a>(&'a self, name: &'a str, provider_id: &'a str) -> MachineRef<'a> {
        MachineRef::new(name, &self.spec, &self.secrets).with_provider_id(provider_id)
    }

    async fn create(&self, name: &str) -> Result<String, CallError> {
        self.retrying("create", || async {
            let created = self.cmi.create_machine(self.machine_ref(name, ""));
            let created = self.call(Rpc::CreateMachine, created).await?;
            Ok(created.provider_id)
        })
        .await
    }

    async fn status(&self, name: &str, provider_id: &str) -> Result<String, CallError> {
        self.retrying("status", || async {
            let status = self
                .cmi
                .get_machine_status(self.machine_ref(name, provider_id));
            let status = self.call(Rpc::GetMachineStatus, status).await?;
            Ok(status.provider_id)
        })
        .await
    }

    async fn delete(&self, name: &str, provider_id: &str) -> Result<(), CallError> {
        self.retrying("delete", || async {
            let deleted = self.cmi.delete_machine(self.machine_ref(name, provider_id));
            self.call(Rpc::DeleteMachine, deleted).await.map(drop)
        })
        .await
    }

    async fn list(&self) -> Result<HashMap<String, String>, CallError> {
        self.retrying("list", || async {
            let listed = self.cmi.list_machines(&self.spec, &self.secrets);
            self.call(Rpc::ListMachines, listed).await
        })
        .await
    }

    fn record_create(&self, name: &str, provider_id: &str) {
        self.tally.created.record(name, provider_id);
    }

    /// One machine's life: create (sometimes twice at once), status polls, delete, and a
    /// final status that must say NotFound.
    async fn machine(&self, name: String) {
        self.tally.known.lock().unwrap().insert(name.clone());
        let twice = rand::rng().random_bool(0.1);
        let created = if twice {
            self.tally
                .concurrent_creates
                .fetch_add(1, Ordering::Relaxed);
            let (a, b) = tokio::join!(self.create(&name), self.create(&name));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    self.record_create(&name, &a);
                    self.record_create(&name, &b);
                    Ok(a)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        } else {
            self.create(&name)
                .await
                .inspect(|pid| self.record_create(&name, pid))
        };
        let provider_id = match created {
            Ok(pid) => pid,
            Err(e) => {
                self.tally.anomaly(format!(
                    "{name}: create ended {:?}: {}",
                    e.code(),
                    e.message()
                ));
                // Clean up whatever may exist (lookup by name, no ProviderID).
                let _ = self.delete(&name, "").await;
                self.tally.machines_done.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let polls = rand::rng().random_range(1..=3);
        for _ in 0..polls {
            let pause = Duration::from_millis(rand::rng().random_range(100..600));
            tokio::time::sleep(pause).await;
            match self.status(&name, &provider_id).await {
                Ok(pid) if pid == provider_id => {}
                Ok(pid) => self.tally.anomaly(format!(
                    "{name}: status names {pid}, create said {provider_id}"
                )),
                Err(e) => self.tally.anomaly(format!(
                    "{name}: status ended {:?}: {}",
                    e.code(),
                    e.message()
                )),
            }
        }
        if let Err(e) = self.delete(&name, &provider_id).await {
            self.tally.anomaly(format!(
                "{name}: delete ended {:?}: {}",
                e.code(),
                e.message()
            ));
        }
        match self.status(&name, &provider_id).await {
            Err(e) if e.code() == Code::NotFound => {}
            Ok(_) => self
                .tally
                .anomaly(format!("{name}: still found after delete")),
            Err(e) => self.tally.anomaly(format!(
                "{name}: final status ended {:?}: {}",
                e.code(),
                e.message()
            )),
        }
        self.tally.machines_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Lists while the run lasts: every listed device must belong to a machine we started,
    /// and be the device its create named.
    async fn lister(&self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(list) = self.list().await {
                self.tally.lists.fetch_add(1, Ordering::Relaxed);
                let known = self.tally.known.lock().unwrap().clone();
                let created = self.tally.created.snapshot();
                for (pid, host) in list {
                    if !known.contains(&host) {
                        self.tally.list_unknown.fetch_add(1, Ordering::Relaxed);
                        self.tally
                            .anomaly(format!("list shows {pid} for unknown machine {host}"));
                    } else if let Some(pids) = created.get(&host)
                        && !pids.contains(&pid)
                    {
                        self.tally
                            .list_foreign_device
                            .fetch_add(1, Ordering::Relaxed);
                        self.tally.anomaly(format!(
                            "list shows a second device {pid} for {host} (create said {pids:?})"
                        ));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
}

fn default_driver_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("metal-driver")))
        .unwrap_or_else(|| PathBuf::from("metal-driver"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

type RestartTask = tokio::task::JoinHandle<Result<(), String>>;

/// What runs for the controller lane.
struct LaneParts {
    lane: Lane,
    controller: Arc<tokio::sync::Mutex<Supervised>>,
    restarter: RestartTask,
    load: tokio::task::JoinHandle<()>,
    registrar: tokio::task::JoinHandle<()>,
    /// The chaos incidents (with `--chaos`): the pool, and the task running the incidents.
    chaos: Option<(chaos::Chaos, tokio::task::JoinHandle<()>)>,
    /// Restarts a controller that exited by itself (a lost lease), as a kubelet would.
    watchdog: tokio::task::JoinHandle<()>,
}

/// What the controller lane left behind, for the checks.
struct LaneOutcome {
    lane: Lane,
    leftover: Result<Vec<String>, String>,
    panics: Vec<String>,
    runs: u32,
    sigkills: u32,
    sigterms: u32,
    bad_exits: Vec<String>,
    slowest_term_exit: Option<Duration>,
    self_exits: Vec<String>,
    chaos: Option<Arc<chaos::ChaosTally>>,
}

/// Kills and restarts `proc` every `every` seconds (first after `every + offset`),
/// alternately SIGKILL and SIGTERM, until half a period before `run_until` or `done`.
fn restart_loop(
    proc: Arc<tokio::sync::Mutex<Supervised>>,
    every: u64,
    offset: Duration,
    run_until: Instant,
    done: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    started: Instant,
) -> RestartTask {
    tokio::spawn(async move {
        if every == 0 {
            return Ok(());
        }
        tokio::time::sleep(offset).await;
        let mut graceful = false;
        loop {
            tokio::time::sleep(Duration::from_secs(every)).await;
            if Instant::now() + Duration::from_secs(every / 2) >= run_until
                || done.load(Ordering::Relaxed)
            {
                return Ok(());
            }
            if paused.load(Ordering::Relaxed) {
                continue;
            }
            let mut p = proc.lock().await;
            p.stop(graceful).await;
            println!(
                "soak: [{:>5.0}s] {} {} ({}), restarting",
                started.elapsed().as_secs_f64(),
                p.role,
                p.runs,
                if graceful { "SIGTERM" } else { "SIGKILL" }
            );
            p.start().await?;
            graceful = !graceful;
        }
    })
}

async fn stop_restarter(who: &str, task: RestartTask, tally: &Tally) {
    task.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(30), task).await {
        tally.anomaly(format!("{who} restart failed: {e}"));
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/soak/{stamp}")));
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let out_dir =
        std::fs::canonicalize(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    // The socket lives in a directory only we can enter (the driver refuses world-writable ones).
    let sock_dir = out_dir.join("sock");
    std::fs::create_dir_all(&sock_dir).map_err(|e| format!("{}: {e}", sock_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
    }
    let socket = sock_dir.join("cmi.sock");

    let mut sim_args = SimArgs::for_tests();
    sim_args.provision_seconds = 1.0;
    sim_args.deprovision_seconds = 0.5;
    sim_args.power_seconds = 0.5;
    sim_args.fault_rate_429 = args.fault_rate_429;
    sim_args.fault_rate_5xx = args.fault_rate_5xx;
    sim_args.fault_rate_drop = args.fault_rate_drop;
    sim_args.latency_ms = args.latency_ms;
    sim_args.retry_after_seconds = 1;
    sim_args.seed = Some(seed);
    let sim = sim::spawn(sim_args)
        .await
        .map_err(|e| format!("simulator: {e}"))?;

    let endpoint = format!("unix://{}", socket.display());
    let driver_bin = args.driver_bin.clone().unwrap_or_else(default_driver_bin);
    let mut driver = Supervised::new(
        "driver",
        driver_bin.clone(),
        [
            "serve",
            "--endpoint",
            &endpoint,
            "--metal-api-url",
            &sim.base_url(),
            "--http-addr",
            "127.0.0.1:0",
            "--grace-period",
            "5s",
            "--log-format",
            "json",
            "--api-request-timeout",
            "10s",
            "--api-max-retries",
            "5",
        ]
        .map(Into::into)
        .to_vec(),
        out_dir.clone(),
    );
    driver.start().await?;
    println!(
        "soak: {} s (+ up to {} s drain), {} machines at once, faults 429={} 5xx={} drop={} latency={} ms, restart every {} s, seed {seed}, logs in {}",
        args.seconds,
        args.drain_seconds,
        args.concurrency,
        args.fault_rate_429,
        args.fault_rate_5xx,
        args.fault_rate_drop,
        args.latency_ms,
        args.restart_every,
        out_dir.display()
    );
    let cmi = CmiClient::connect(&endpoint, CALL_DEADLINE)
        .await
        .map_err(|e| e.to_string())?;

    let run_until = started + Duration::from_secs(args.seconds);
    let hard_stop = run_until + Duration::from_secs(args.drain_seconds);
    let run_tag = format!("kubernetes.io/cluster/soak-{stamp}");
    let ctx = Ctx {
        cmi,
        tally: Arc::new(Tally::default()),
        spec: Arc::new(spec(&run_tag)),
        secrets: Arc::new(secrets()),
        hard_stop,
    };

    let restarts_done = Arc::new(AtomicBool::new(false));
    let driver = Arc::new(tokio::sync::Mutex::new(driver));
    let restarter = restart_loop(
        driver.clone(),
        args.restart_every,
        Duration::ZERO,
        run_until,
        restarts_done.clone(),
        Arc::new(AtomicBool::new(false)),
        started,
    );

    // The controller lane, when there is a cluster.
    let lane_stop = CancellationToken::new();
    let mut lane_parts = None;
    if let Some(kubeconfig) = &args.kubeconfig {
        let client = sim::nodes::client_from(kubeconfig)
            .await
            .map_err(|e| e.to_string())?;
        let target_kubeconfig = args.target_kubeconfig.clone().unwrap_or(kubeconfig.clone());
        let target_client = sim::nodes::client_from(&target_kubeconfig)
            .await
            .map_err(|e| e.to_string())?;
        let lane_tag = format!("kubernetes.io/cluster/soak-ctl-{stamp}");
        let tally = ctx.tally.clone();
        let lane = Lane::new(
            client.clone(),
            format!("soak-{stamp}"),
            hard_stop,
            Arc::new(move |what| tally.anomaly(what)),
        );
        lane.setup(spec_json(&lane_tag), &secrets()).await?;
        // The kubelet's part: a Ready Node for every active device of the lane.
        let snapshot = sim.device_snapshot();
        // The chaos pool's Nodes are the chaos kubelets' (they must be able to go NotReady).
        let registrar = tokio::spawn(sim::nodes::run(
            target_client.clone(),
            move || {
                let mut devices = snapshot();
                devices.retain(|d| {
                    d.tags.as_ref().is_some_and(|t| t.contains(&lane_tag))
                        && !d
                            .hostname
                            .as_deref()
                            .is_some_and(|h| h.starts_with("pool-"))
                });
                devices
            },
            lane_stop.clone(),
        ));
        let mut controller_args: Vec<std::ffi::OsString> = Vec::new();
        if args.chaos {
            controller_args.extend(
                [
                    format!(
                        "--machine-health-timeout={}s",
                        chaos::HEALTH_TIMEOUT.as_secs()
                    ),
                    "--machine-safety-apiserver-statuscheck-period=1s".to_owned(),
                    format!(
                        "--machine-safety-apiserver-statuscheck-timeout={}s",
                        chaos::FREEZE_TIMEOUT.as_secs()
                    ),
                ]
                .map(Into::into),
            );
        }
        let mut controller = Supervised::new(
            "controller",
            driver_bin.clone(),
            [
                "controller",
                &format!("--control-kubeconfig={kubeconfig}"),
                &format!("--target-kubeconfig={target_kubeconfig}"),
                &format!("--namespace={}", lane.namespace),
                &format!("--cmi-endpoint={endpoint}"),
                "--address=127.0.0.1",
                "--port=0",
                "--machine-safety-orphan-vms-period=20s",
                "--machine-health-recheck-period=5s",
                "--leader-elect-lease-duration=3s",
                "--leader-elect-renew-deadline=2s",
                "--leader-elect-retry-period=500ms",
                "--log-format=json",
            ]
            .map(Into::into)
            .into_iter()
            .chain(controller_args)
            .collect(),
            out_dir.clone(),
        );
        controller.start().await?;
        let controller = Arc::new(tokio::sync::Mutex::new(controller));
        let restarts_paused = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (controller, stop, tally) =
                (controller.clone(), lane_stop.clone(), ctx.tally.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let mut c = controller.lock().await;
                    match c.restart_if_exited().await {
                        Ok(true) => println!(
                            "soak: [{:>5.0}s] controller exited by itself ({}); restarted",
                            started.elapsed().as_secs_f64(),
                            c.self_exits.last().cloned().unwrap_or_default()
                        ),
                        Ok(false) => {}
                        Err(e) => tally.anomaly(format!("controller restart failed: {e}")),
                    }
                }
            })
        };
        let chaos = if args.chaos {
            let (Some(control_state), Some(target_state)) =
                (args.control_state.clone(), args.target_state.clone())
            else {
                return Err("--chaos needs --control-state and --target-state".into());
            };
            let chaos = chaos::Chaos::new(
                client.clone(),
                target_client.clone(),
                lane.namespace.clone(),
                controller_lane::CLASS.to_owned(),
                control_state,
                target_state,
                lane.tally.clone(),
                controller.clone(),
                restarts_paused.clone(),
            );
            let task = {
                let (chaos, stop) = (chaos.clone(), lane_stop.clone());
                tokio::spawn(async move {
                    if !chaos.start(stop, Duration::from_secs(120)).await {
                        println!("soak: chaos: the pool never became Running; incidents skipped");
                        return;
                    }
                    chaos.outage().await;
                    chaos.meltdown().await;
                    chaos.control_outage().await;
                    chaos.settle(Duration::from_secs(120)).await;
                })
            };
            Some((chaos, task))
        } else {
            None
        };
        let every = args.controller_restart_every.unwrap_or(args.restart_every);
        // The chaos holds controller restarts back during the target API-server outage: the
        // freeze lives in the process, so a controller restarted mid-outage comes back
        // unfrozen and would judge the health timeouts that ran out meanwhile (as MCM's
        // would; the meltdown permit still limits that to one Machine per deployment).
        let restarter = restart_loop(
            controller.clone(),
            every,
            Duration::from_secs(every / 2),
            run_until,
            restarts_done.clone(),
            restarts_paused.clone(),
            started,
        );
        // Lane machines keep starting until --seconds.
        let load = {
            let lane = lane.clone();
            let concurrency = args.controller_concurrency.max(1);
            tokio::spawn(async move {
                let permits = Arc::new(Semaphore::new(concurrency));
                let mut tasks = tokio::task::JoinSet::new();
                let mut next = 0u64;
                while Instant::now() < run_until {
                    let Ok(Ok(permit)) = tokio::time::timeout(
                        Duration::from_millis(500),
                        permits.clone().acquire_owned(),
                    )
                    .await
                    else {
                        continue;
                    };
                    let name = format!("ctl-{next:05}");
                    next += 1;
                    let lane = lane.clone();
                    tasks.spawn(async move {
                        lane.machine(name).await;
                        drop(permit);
                    });
                    while tasks.try_join_next().is_some() {}
                }
                while tasks.join_next().await.is_some() {}
            })
        };
        println!(
            "soak: controller lane in namespace {} ({} Machines at once, controller restart every {every} s)",
            lane.namespace, args.controller_concurrency
        );
        lane_parts = Some(LaneParts {
            lane,
            controller,
            restarter,
            load,
            registrar,
            chaos,
            watchdog,
        });
    }

    let list_stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let ctx = ctx.clone();
        let stop = list_stop.clone();
        tokio::spawn(async move { ctx.lister(stop).await })
    };

    // The load: machines keep starting until --seconds (or --max-machines).
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0u64;
    let mut last_report = Instant::now();
    while Instant::now() < run_until && (args.max_machines == 0 || next < args.max_machines) {
        let Ok(permit) =
            tokio::time::timeout(Duration::from_millis(500), permits.clone().acquire_owned()).await
        else {
            continue;
        };
        let permit = permit.map_err(|e| e.to_string())?;
        let name = format!("soak-{next:05}");
        next += 1;
        ctx.tally.machines_started.fetch_add(1, Ordering::Relaxed);
        let worker = ctx.clone();
        tasks.spawn(async move {
            worker.machine(name).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let lane = lane_parts.as_ref().map_or(String::new(), |parts| {
                let t = &parts.lane.tally;
                format!(
                    " · Machines started {} Running {} released {}",
                    t.started.load(Ordering::Relaxed),
                    t.running.load(Ordering::Relaxed),
                    t.released.load(Ordering::Relaxed)
                )
            });
            println!(
                "soak: [{:>5.0}s] machines started {} done {} · RPCs {}{lane} · faults {:?}",
                started.elapsed().as_secs_f64(),
                ctx.tally.machines_started.load(Ordering::Relaxed),
                ctx.tally.machines_done.load(Ordering::Relaxed),
                ctx.tally.rpc_answered.load(Ordering::Relaxed),
                sim.stats().faults
            );
        }
    }
    println!(
        "soak: [{:>5.0}s] no new machines; draining",
        started.elapsed().as_secs_f64()
    );
    restarts_done.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(
        hard_stop.saturating_duration_since(Instant::now()) + Duration::from_secs(60),
        async { while tasks.join_next().await.is_some() {} },
    )
    .await
    .is_ok();
    if !drained {
        ctx.tally
            .anomaly("machines still running after the drain".into());
        tasks.abort_all();
    }
    list_stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(60), lister).await;
    stop_restarter("driver", restarter, &ctx.tally).await;

    // The controller lane drains too; then its controller stops (gracefully) before the
    // driver does.
    let mut lane_outcome = None;
    if let Some(parts) = lane_parts.take() {
        stop_restarter("controller", parts.restarter, &ctx.tally).await;
        let wait = hard_stop.saturating_duration_since(Instant::now()) + Duration::from_secs(60);
        if tokio::time::timeout(wait, parts.load).await.is_err() {
            ctx.tally
                .anomaly("controller-lane Machines still running after the drain".into());
        }
        let mut chaos_tally = None;
        if let Some((chaos, task)) = parts.chaos {
            if tokio::time::timeout(Duration::from_secs(300), task)
                .await
                .is_err()
            {
                ctx.tally.anomaly("chaos incidents did not finish".into());
            }
            chaos.teardown(Duration::from_secs(120)).await;
            chaos_tally = Some(chaos.tally.clone());
        }
        let leftover = parts.lane.leftover_machines().await;
        lane_stop.cancel();
        let _ = parts.watchdog.await;
        let mut controller = parts.controller.lock().await;
        controller.stop(true).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), parts.registrar).await;
        parts.lane.teardown().await;
        lane_outcome = Some(LaneOutcome {
            lane: parts.lane,
            leftover,
            panics: controller.panics(),
            runs: controller.runs,
            sigkills: controller.sigkills,
            sigterms: controller.sigterms,
            bad_exits: controller.bad_exits.clone(),
            slowest_term_exit: controller.slowest_term_exit(),
            self_exits: controller.self_exits.clone(),
            chaos: chaos_tally,
        });
    }

    // A final list through the driver, then the simulator's own view once deprovisioning
    // has had time to finish.
    let final_list = ctx.list().await.map(|l| l.len()).unwrap_or(usize::MAX);
    let mut leftover = sim.devices();
    for _ in 0..40 {
        if leftover.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        leftover = sim.devices();
    }
    let stats = sim.stats();
    let mut driver = driver.lock().await;
    driver.stop(true).await;
    let panics = driver.panics();
    sim.shutdown().await;

    let t = &ctx.tally;
    let created = t.created.snapshot();
    let (machines_created, multi) = t.created.devices();
    let all_pids: HashSet<&String> = created.values().flatten().collect();
    let anomalies = t.anomalies.lock().unwrap().clone();
    let outcomes = t.outcomes.lock().unwrap().clone();
    let rpc_started = t.rpc_started.load(Ordering::Relaxed);
    let rpc_answered = t.rpc_answered.load(Ordering::Relaxed);
    let rpc_hung = t.rpc_hung.load(Ordering::Relaxed);
    let machines_started = t.machines_started.load(Ordering::Relaxed);
    let machines_done = t.machines_done.load(Ordering::Relaxed);
    let api_requests: u64 = stats.requests.values().sum();
    let faults_total: u64 = stats.faults.values().sum();

    // Lane machines with a device, and those whose providerID changed.
    let (lane_devices, lane_multi) = lane_outcome
        .as_ref()
        .map_or((0, Vec::new()), |o| o.lane.tally.provider_ids.devices());
    let mut checks: Vec<(&str, bool, String)> = vec![
        (
            "exactly one device per machine",
            stats.devices_created == machines_created + lane_devices
                && multi.is_empty()
                && lane_multi.is_empty()
                && all_pids.len() as u64 == machines_created,
            format!(
                "{} devices created for {} machines ({} of them Machines of the controller lane); {} machines answered with more than one ProviderID",
                stats.devices_created,
                machines_created + lane_devices,
                lane_devices,
                multi.len() + lane_multi.len()
            ),
        ),
        (
            "zero devices left after deletes",
            leftover.is_empty() && final_list == 0,
            format!(
                "{} devices in the simulator, final ListMachines {} entries",
                leftover.len(),
                final_list
            ),
        ),
        (
            "zero orphans",
            t.list_unknown.load(Ordering::Relaxed) == 0
                && t.list_foreign_device.load(Ordering::Relaxed) == 0,
            format!(
                "{} lists; {} entries of unknown machines, {} second devices",
                t.lists.load(Ordering::Relaxed),
                t.list_unknown.load(Ordering::Relaxed),
                t.list_foreign_device.load(Ordering::Relaxed)
            ),
        ),
        (
            "every RPC got a final answer",
            rpc_started == rpc_answered && rpc_hung == 0,
            format!("{rpc_started} RPCs sent, {rpc_answered} answered, {rpc_hung} hung"),
        ),
        (
            "every machine finished its lifecycle",
            machines_started == machines_done && machines_started == machines_created,
            format!(
                "{machines_started} started, {machines_created} created, {machines_done} finished"
            ),
        ),
        (
            "no anomaly on the way",
            anomalies.is_empty(),
            format!("{} anomalies", anomalies.len()),
        ),
        (
            "no panic in driver logs",
            panics.is_empty(),
            format!("{} driver runs, {} panics", driver.runs, panics.len()),
        ),
        (
            "SIGTERM'd drivers exit 0",
            driver.bad_exits.is_empty(),
            format!(
                "{} SIGTERM, {} SIGKILL, bad exits: {:?}",
                driver.sigterms, driver.sigkills, driver.bad_exits
            ),
        ),
        (
            "faults were injected",
            faults_total > 0,
            format!("{faults_total} faults in {api_requests} API requests"),
        ),
    ];

    if let Some(o) = &lane_outcome {
        let lt = &o.lane.tally;
        let (started_n, running, released, finished) = (
            lt.started.load(Ordering::Relaxed),
            lt.running.load(Ordering::Relaxed),
            lt.released.load(Ordering::Relaxed),
            lt.finished.load(Ordering::Relaxed),
        );
        checks.push((
            "every Machine Running, then released after delete",
            started_n > 0 && running == started_n && released == started_n && finished == started_n,
            format!("{started_n} Machines created, {running} Running, {released} released"),
        ));
        checks.push((
            "no Machine left in the cluster",
            o.leftover.as_ref().is_ok_and(Vec::is_empty),
            match &o.leftover {
                Ok(left) => format!("{} left: {left:?}", left.len()),
                Err(e) => format!("cannot list Machines: {e}"),
            },
        ));
        checks.push((
            "no panic in controller logs",
            o.panics.is_empty(),
            format!("{} controller runs, {} panics", o.runs, o.panics.len()),
        ));
        if let Some(c) = &o.chaos {
            let max = c.max_failed_in_meltdown.load(Ordering::Relaxed);
            let at_end = c.failed_at_meltdown_end.load(Ordering::Relaxed);
            checks.push((
                "no meltdown: one pool Machine Failed at a time",
                max <= 1 && at_end == 1,
                format!(
                    "{max} at most at once while every pool Node was NotReady, {at_end} at its end; {} replaced in all",
                    c.replaced.load(Ordering::Relaxed)
                ),
            ));
            let outage = c.failed_in_outage.load(Ordering::Relaxed);
            let froze = c.froze.load(Ordering::Relaxed);
            checks.push((
                "target API server outage: frozen, and no pool Machine Failed",
                outage == 0 && froze,
                format!("frozen gauge seen 1: {froze}; {outage} pool Machines Failed"),
            ));
            let errors = c.errors.lock().unwrap().clone();
            checks.push((
                "the pool recovered from every incident",
                c.recovered.load(Ordering::Relaxed)
                    && c.incidents.load(Ordering::Relaxed) == 3
                    && errors.is_empty(),
                format!(
                    "{} incidents {:?}; controller exited by itself {} times (lost lease) and was restarted; errors {errors:?}",
                    c.incidents.load(Ordering::Relaxed),
                    c.durations.lock().unwrap(),
                    o.self_exits.len()
                ),
            ));
        }
        checks.push((
            "SIGTERM'd controllers exit 0",
            o.bad_exits.is_empty(),
            format!(
                "{} SIGTERM (slowest exit {:.1} s), {} SIGKILL, bad exits: {:?}",
                o.sigterms,
                o.slowest_term_exit.map_or(0.0, |d| d.as_secs_f64()),
                o.sigkills,
                o.bad_exits
            ),
        ));
    }

    let elapsed = started.elapsed();
    println!(
        "\nsoak finished after {:.0} s (seed {seed})",
        elapsed.as_secs_f64()
    );
    println!(
        "  machines: {machines_started} started, {machines_created} created, {machines_done} finished ({} concurrent double creates)",
        t.concurrent_creates.load(Ordering::Relaxed)
    );
    println!(
        "  API requests to the simulator: {api_requests}; injected faults: {:?}",
        stats.faults
    );
    println!(
        "  simulator: {} devices created, {} deletes started",
        stats.devices_created, stats.devices_deleted
    );
    println!(
        "  driver: {} runs ({} SIGKILL, {} SIGTERM)",
        driver.runs, driver.sigkills, driver.sigterms
    );
    let lane_json = lane_outcome.as_ref().map(|o| {
        let lt = &o.lane.tally;
        let to_running = median_max(&lt.to_running.lock().unwrap());
        let to_released = median_max(&lt.to_released.lock().unwrap());
        let phases = lt.phases.lock().unwrap().clone();
        println!(
            "  controller lane: {} Machines, {} Running (create → Running median {:.1} s, max {:.1} s), {} released (delete → gone median {:.1} s, max {:.1} s); phases seen {phases:?}",
            lt.started.load(Ordering::Relaxed),
            lt.running.load(Ordering::Relaxed),
            to_running.0,
            to_running.1,
            lt.released.load(Ordering::Relaxed),
            to_released.0,
            to_released.1,
        );
        println!(
            "  controller: {} runs ({} SIGKILL, {} SIGTERM)",
            o.runs, o.sigkills, o.sigterms
        );
        json!({
            "namespace": o.lane.namespace,
            "machines": lt.started.load(Ordering::Relaxed),
            "running": lt.running.load(Ordering::Relaxed),
            "released": lt.released.load(Ordering::Relaxed),
            "devices": lane_devices,
            "to_running_s": { "median": to_running.0, "max": to_running.1 },
            "to_released_s": { "median": to_released.0, "max": to_released.1 },
            "phases_seen": phases,
            "controller_runs": o.runs,
            "sigkill": o.sigkills,
            "sigterm": o.sigterms,
            "panics": o.panics,
            "self_exits": o.self_exits,
            "chaos": o.chaos.as_ref().map(|c| json!({
                "max_failed_in_meltdown": c.max_failed_in_meltdown.load(Ordering::Relaxed),
                "failed_at_meltdown_end": c.failed_at_meltdown_end.load(Ordering::Relaxed),
                "failed_in_outage": c.failed_in_outage.load(Ordering::Relaxed),
                "froze": c.froze.load(Ordering::Relaxed),
                "replaced": c.replaced.load(Ordering::Relaxed),
                "incidents_s": c.durations.lock().unwrap().clone(),
                "recovered": c.recovered.load(Ordering::Relaxed),
            })),
        })
    });
    println!("  RPC answers by method and code:");
    for ((method, code), n) in &outcomes {
        println!("    {method:<17} {code:<18} {n}");
    }
    for m in multi
        .iter()
        .chain(lane_multi.iter())
        .chain(anomalies.iter().take(20))
        .chain(panics.iter())
    {
        println!("  ! {m}");
    }
    let mut ok = true;
    for (name, pass, figure) in &checks {
        ok &= pass;
        println!("  [{}] {name}: {figure}", if *pass { "ok" } else { "FAIL" });
    }
    let report = json!({
        "seconds": elapsed.as_secs(),
        "seed": seed,
        "concurrency": args.concurrency,
        "fault_rates": { "429": args.fault_rate_429, "5xx": args.fault_rate_5xx, "drop": args.fault_rate_drop },
        "latency_ms": args.latency_ms,
        "machines": { "started": machines_started, "created": machines_created, "finished": machines_done },
        "devices_created": stats.devices_created,
        "devices_left": leftover.len(),
        "api_requests": api_requests,
        "faults": stats.faults,
        "driver_runs": driver.runs,
        "sigkill": driver.sigkills,
        "sigterm": driver.sigterms,
        "rpcs": { "sent": rpc_started, "answered": rpc_answered, "hung": rpc_hung },
        "rpc_outcomes": outcomes.iter().map(|((m, c), n)| (format!("{m} {c}"), *n)).collect::<BTreeMap<_, _>>(),
        "anomalies": anomalies,
        "panics": panics,
        "controller_lane": lane_json,
        "checks": checks.iter().map(|(n, p, f)| json!({"check": n, "ok": p, "figure": f})).collect::<Vec<_>>(),
        "ok": ok,
    });
    let report_path = out_dir.join("report.json");
    write_report(&report_path, &report);
    println!("  report: {}", report_path.display());
    println!("soak {}", if ok { "PASSED" } else { "FAILED" });
    Ok(ok)
}

fn write_report(path: &Path, report: &serde_json::Value) {
    if let Err(e) = std::fs::write(
        path,
        serde_json::to_string_pretty(report).unwrap_or_default(),
    ) {
        eprintln!("soak: cannot write {}: {e}", path.display());
    }
}
