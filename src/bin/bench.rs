//! `metal-driver-bench`: the end-to-end benchmark driver behind `make bench` and
//! BENCHMARKS.md. It measures the driver as it is deployed: `metal-driver serve` runs as a
//! subprocess (so its RSS can be read from `/proc/<pid>/status`), the Metal API simulator
//! runs in this process on its own runtime (so devices can be seeded without HTTP and the
//! requests per RPC counted from the API side), and the load comes from this process's
//! runtime (tonic for gRPC, reqwest for direct API calls) and, for item 2, from `ghz`.
//!
//! Items (as numbered in BENCHMARKS.md): 1 added latency, 2 throughput against a slow API, 3 API
//! requests per RPC, 4 ListMachines at scale, 5 create storm, 6 footprint. Results are
//! printed as Markdown (medians and min–max spreads over rounds) and written to `--out`.
//!
//! Everything is on loopback, every loop is bounded in count or time, and every process
//! started here is killed when its scenario ends. Benchmarks report; they never fail on a
//! missed target.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use metal_driver::cmi::calls::{CallError, MachineRef};
use metal_driver::cmi::client::CmiClient;
use metal_driver::metal::{DeviceCreateInput, Operation};
use metal_driver::sim::{self, DEFAULT_PROJECT, DEFAULT_TOKEN, Fault, SimArgs, SimHandle};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const CLUSTER_TAG: &str = "kubernetes.io/cluster/shoot--garden--bench";
const ROLE_TAG: &str = "kubernetes.io/role/node";
const IDENTITY_PREFIX: &str = "machine.sapcloud.io/name:";
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// End-to-end benchmarks of metal-driver (BENCHMARKS.md items 1-6).
#[derive(Parser, Debug)]
#[command(name = "metal-driver-bench")]
struct Args {
    /// The metal-driver binary to measure. Default: `metal-driver` next to this binary.
    #[arg(long)]
    driver: Option<PathBuf>,

    /// Smoke run: small sizes, short durations, one round (seconds, not minutes).
    #[arg(long)]
    quick: bool,

    /// Items to run, comma-separated (1-6). Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,

    /// Rounds per measurement; medians and spreads are taken across rounds.
    #[arg(long)]
    rounds: Option<usize>,

    /// The ghz binary for item 2's independent load generator (see benches/ghz.sh);
    /// skipped when not given.
    #[arg(long, env = "GHZ")]
    ghz: Option<PathBuf>,

    /// Also write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Directory for the driver's stderr logs.
    #[arg(long, default_value = "target/bench/logs")]
    logs: PathBuf,
}

fn main() {
    let args = Args::parse();
    let driver_bin = args.driver.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("metal-driver")))
            .unwrap_or_else(|| PathBuf::from("metal-driver"))
    });
    if !driver_bin.is_file() {
        eprintln!(
            "metal-driver-bench: driver binary {} not found (build it first)",
            driver_bin.display()
        );
        std::process::exit(2);
    }
    if let Err(e) = std::fs::create_dir_all(&args.logs) {
        eprintln!(
            "metal-driver-bench: cannot create {}: {e}",
            args.logs.display()
        );
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-load")
        .enable_all()
        .build()
        .expect("load runtime");
    let ctx = Ctx {
        rt,
        driver_bin,
        quick: args.quick,
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
        ghz: args.ghz.clone(),
        logs: args.logs.clone(),
    };
    let wanted = |n: u32| args.only.is_empty() || args.only.contains(&n);
    let mut report = Report::default();
    report.header(&ctx);
    let items: [(u32, Item); 6] = [
        (1, latency),
        (2, throughput),
        (3, api_calls),
        (4, list_scale),
        (5, create_storm),
        (6, footprint),
    ];
    for (n, item) in items {
        if wanted(n) {
            eprintln!("metal-driver-bench: item {n}");
            let started = Instant::now();
            item(&ctx, &mut report);
            eprintln!(
                "metal-driver-bench: item {n} done in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    print!("{}", report.md);
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(out, &report.md) {
            eprintln!("metal-driver-bench: cannot write {}: {e}", out.display());
        }
    }
}

/// One numbered item of the issue.
type Item = fn(&Ctx, &mut Report);

struct Ctx {
    rt: Runtime,
    driver_bin: PathBuf,
    quick: bool,
    rounds: usize,
    ghz: Option<PathBuf>,
    logs: PathBuf,
}

impl Ctx {
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

// ---------------------------------------------------------------------------------------
// Report and statistics

#[derive(Default)]
struct Report {
    md: String,
}

impl Report {
    fn header(&mut self, ctx: &Ctx) {
        let _ = writeln!(
            self.md,
            "<!-- metal-driver-bench {} · rounds {} · driver {} -->\n",
            if ctx.quick { "--quick" } else { "(full)" },
            ctx.rounds,
            ctx.driver_bin.display()
        );
    }

    fn section(&mut self, title: &str) {
        let _ = writeln!(self.md, "\n### {title}\n");
    }

    fn text(&mut self, line: &str) {
        let _ = writeln!(self.md, "{line}");
    }

    fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.md, "| {} |", head.join(" | "));
        let _ = writeln!(self.md, "|{}", "---|".repeat(head.len()));
        for row in rows {
            let _ = writeln!(self.md, "| {} |", row.join(" | "));
        }
        self.md.push('\n');
    }
}

/// Nearest-rank percentile of an ascending slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut xs: Vec<f64>) -> Vec<f64> {
    xs.sort_by(f64::total_cmp);
    xs
}

/// Median and min–max of per-round values.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(xs: &[f64]) -> Spread {
    let s = sorted(xs.to_vec());
    if s.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Spread {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

impl Spread {
    /// `median (min–max)` with `digits` decimals; just the value for one round.
    fn fmt(self, digits: usize) -> String {
        if (self.max - self.min).abs() < f64::EPSILON {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// The simulator (in-process, own runtime) and the driver (subprocess)

struct Sim {
    rt: Runtime,
    handle: Option<SimHandle>,
}

impl Sim {
    fn start(args: SimArgs) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-sim")
            .enable_all()
            .build()
            .expect("simulator runtime");
        let handle = rt.block_on(sim::spawn(args)).expect("simulator starts");
        Self {
            rt,
            handle: Some(handle),
        }
    }

    fn handle(&self) -> &SimHandle {
        self.handle.as_ref().expect("simulator running")
    }

    fn url(&self) -> String {
        self.handle().base_url()
    }

    fn requests(&self) -> BTreeMap<String, u64> {
        self.handle().stats().requests
    }

    fn total_requests(&self) -> u64 {
        self.requests().values().sum()
    }

    /// Adds `n` live devices carrying `cluster_tag`, the role tag and each its identity tag.
    fn seed(&self, prefix: &str, cluster_tag: &str, n: usize) {
        for i in 0..n {
            let name = format!("{prefix}-{i:05}");
            self.handle()
                .create_device_direct(DEFAULT_PROJECT, device_input(&name, cluster_tag));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.rt.block_on(handle.shutdown());
        }
    }
}

fn device_input(name: &str, cluster_tag: &str) -> DeviceCreateInput {
    DeviceCreateInput {
        metro: Some("sv".into()),
        plan: "c3.small.x86".into(),
        operating_system: "ubuntu_22_04".into(),
        hostname: Some(name.to_owned()),
        billing_cycle: Some(metal_driver::metal::BillingCycle::Hourly),
        tags: vec![
            cluster_tag.to_owned(),
            ROLE_TAG.to_owned(),
            format!("{IDENTITY_PREFIX}{name}"),
        ],
        ..Default::default()
    }
}

struct Driver {
    child: Child,
    // Kept open: the driver's stdout must not become a broken pipe.
    _stdout: BufReader<ChildStdout>,
    endpoint: String,
    /// exec → the `listening on` line.
    listening_after: Duration,
    spawned_at: Instant,
}

impl Driver {
    fn start(ctx: &Ctx, metal_url: &str, extra: &[&str], log_name: &str) -> Self {
        let log = std::fs::File::create(ctx.logs.join(format!("{log_name}.log")))
            .expect("driver log file");
        let spawned_at = Instant::now();
        let mut child = Command::new(&ctx.driver_bin)
            .arg("serve")
            .args([
                "--endpoint",
                "tcp://127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--metal-api-url", metal_url])
            .args(extra)
            .env("METAL_DRIVER_LOG_LEVEL", "warn")
            .env_remove("RUST_LOG")
            .env_remove("CMI_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("driver starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let listening_after = spawned_at.elapsed();
        let endpoint = match (read, line.trim().strip_prefix("listening on ")) {
            (Ok(n), Some(ep)) if n > 0 => ep.to_owned(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "driver did not print `listening on` (got {line:?}); see {}/{log_name}.log",
                    ctx.logs.display()
                );
            }
        };
        Self {
            child,
            _stdout: stdout,
            endpoint,
            listening_after,
            spawned_at,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
    fn status_kb(&self, key: &str) -> u64 {
        proc_status_kb(self.pid(), key)
    }

    fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS") as f64 / 1024.0
    }

    fn hwm_mb(&self) -> f64 {
        self.status_kb("VmHWM") as f64 / 1024.0
    }

    /// CPU seconds (user + system) the driver has used so far.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return f64::NAN;
        };
        // Fields after the `(comm)`: state is field 3; utime and stime are 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return f64::NAN;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (ticks(11) + ticks(12)) / clock_ticks()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------
// CMI requests

fn spec_bytes() -> Vec<u8> {
    json!({
        "projectID": DEFAULT_PROJECT.to_string(),
        "metro": "sv",
        "machineType": "c3.small.x86",
        "OS": "ubuntu_22_04",
        "billingCycle": "hourly",
        "tags": [CLUSTER_TAG, ROLE_TAG],
    })
    .to_string()
    .into_bytes()
}

fn secrets() -> HashMap<String, Vec<u8>> {
    HashMap::from([
        ("apiToken".to_owned(), DEFAULT_TOKEN.as_bytes().to_vec()),
        (
            "userData".to_owned(),
            b"#cloud-config\nhostname: bench\n".to_vec(),
        ),
    ])
}

async fn connect(driver: &Driver) -> CmiClient {
    CmiClient::connect(&driver.endpoint, RPC_TIMEOUT)
        .await
        .expect("connects to the driver")
}

/// A machine of the bench's class, owned, for the typed calls.
#[derive(Clone)]
struct BenchMachine {
    name: String,
    provider_id: String,
    spec: Vec<u8>,
    secrets: HashMap<String, Vec<u8>>,
}

impl BenchMachine {
    fn new(name: &str, provider_id: &str) -> Self {
        Self {
            name: name.into(),
            provider_id: provider_id.into(),
            spec: spec_bytes(),
            secrets: secrets(),
        }
    }

    fn machine(&self) -> MachineRef<'_> {
        MachineRef::new(&self.name, &self.spec, &self.secrets).with_provider_id(&self.provider_id)
    }
}

async fn create(cmi: &CmiClient, name: &str) -> Result<String, CallError> {
    let machine = BenchMachine::new(name, "");
    cmi.create_machine(machine.machine())
        .await
        .map(|created| created.provider_id)
}

async fn list(cmi: &CmiClient) -> Result<usize, CallError> {
    cmi.list_machines(&spec_bytes(), &secrets())
        .await
        .map(|listed| listed.len())
}

/// A call's result as the tables print it: `OK` or the code.
fn outcome<T>(r: &Result<T, CallError>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(e) => format!("{:?}", e.code()),
    }
}

fn provider_id_of(name: &str, sim: &Sim) -> String {
    let device = sim
        .handle()
        .devices()
        .into_iter()
        .find(|d| d.hostname.as_deref() == Some(name))
        .expect("seeded device exists");
    format!("equinixmetal://{}", device.id.expect("device id"))
}

/// One measured operation: a GET straight to the API, or GetMachineStatus via the driver.
// Built once per scenario and cloned per worker: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Op {
    Direct {
        http: reqwest::Client,
        url: String,
    },
    Status {
        cmi: CmiClient,
        machine: Box<BenchMachine>,
    },
    /// Identity.Probe: the gRPC hop alone, no API call.
    Probe {
        cmi: CmiClient,
    },
}

impl Op {
    async fn call(&self) -> Result<(), String> {
        match self {
            Op::Direct { http, url } => {
                let resp = http
                    .get(url)
                    .header("X-Auth-Token", DEFAULT_TOKEN)
                    .send()
                    .await
                    .map_err(|e| format!("transport: {e}"))?;
                let status = resp.status();
                resp.bytes().await.map_err(|e| format!("body: {e}"))?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("http {}", status.as_u16()))
                }
            }
            Op::Status { cmi, machine } => cmi
                .get_machine_status(machine.machine())
                .await
                .map(drop)
                .map_err(|e| format!("{:?}", e.code())),
            Op::Probe { cmi } => cmi
                .probe()
                .await
                .map(drop)
                .map_err(|e| format!("{:?}", e.code())),
        }
    }
}

/// What a batch of calls produced.
#[derive(Default)]
struct Batch {
    /// Latencies of successful calls, µs, ascending.
    latencies_us: Vec<f64>,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl Batch {
    fn ok(&self) -> usize {
        self.latencies_us.len()
    }

    fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            "0".into()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// `total` calls by `concurrency` closed-loop workers.
async fn run_count(concurrency: usize, total: usize, op: &Op) -> Batch {
    run_workers(concurrency, op, move |_, done| {
        done < total.div_ceil(concurrency)
    })
    .await
}

/// Closed-loop workers calling until `duration` has passed.
async fn run_for(concurrency: usize, duration: Duration, op: &Op) -> Batch {
    let until = Instant::now() + duration;
    run_workers(concurrency, op, move |now, _| now < until).await
}

async fn run_workers(
    concurrency: usize,
    op: &Op,
    go_on: impl Fn(Instant, usize) -> bool + Copy + Send + 'static,
) -> Batch {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut done = 0;
            while go_on(Instant::now(), done) {
                let t = Instant::now();
                match op.call().await {
                    Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                    Err(e) => *errors.entry(e).or_default() += 1,
                }
                done += 1;
            }
            (lat, errors)
        }));
    }
    let mut batch = Batch::default();
    for task in tasks {
        let (lat, errors) = task.await.expect("worker");
        batch.latencies_us.extend(lat);
        for (k, v) in errors {
            *batch.errors.entry(k).or_default() += v;
        }
    }
    batch.elapsed = started.elapsed();
    batch.latencies_us = sorted(std::mem::take(&mut batch.latencies_us));
    batch
}

// ---------------------------------------------------------------------------------------
// 1. Added latency

fn latency(ctx: &Ctx, report: &mut Report) {
    report.section("1. Added latency: GetMachineStatus via the driver vs GET /devices/{id} direct");
    let sim = Sim::start(SimArgs::for_tests());
    sim.seed("bench-lat", CLUSTER_TAG, 1);
    let name = "bench-lat-00000";
    let provider_id = provider_id_of(name, &sim);
    let uuid = provider_id.trim_start_matches("equinixmetal://").to_owned();
    let driver = Driver::start(ctx, &sim.url(), &[], "latency");
    let mut rows = Vec::new();
    ctx.rt.block_on(async {
        let cmi = connect(&driver).await;
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        let direct = Op::Direct {
            http,
            url: format!("{}/devices/{uuid}", sim.url()),
        };
        let probe = Op::Probe { cmi: cmi.clone() };
        let via = Op::Status {
            cmi,
            machine: Box::new(BenchMachine::new(name, &provider_id)),
        };
        for concurrency in [1usize, 64] {
            let n = match (ctx.quick, concurrency) {
                (true, 1) => 100,
                (true, _) => 640,
                (false, 1) => 3_000,
                (false, _) => 19_200,
            };
            // Warm both paths: connections, pools, allocator.
            run_count(concurrency, n / 4, &direct).await;
            run_count(concurrency, n / 4, &via).await;
            run_count(concurrency, n / 4, &probe).await;
            let (mut p50s, mut p99s, mut cpu_per_rpc) = (Vec::new(), Vec::new(), Vec::new());
            let (mut d50, mut d99, mut v50, mut v99, mut a50, mut a99) = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            let mut errors = String::new();
            for _ in 0..ctx.rounds {
                // Interleaved in each round so drift in machine load hits both alike.
                let d = run_count(concurrency, n, &direct).await;
                let cpu = driver.cpu_seconds();
                let v = run_count(concurrency, n, &via).await;
                cpu_per_rpc.push((driver.cpu_seconds() - cpu) / v.ok().max(1) as f64 * 1e6);
                let p = run_count(concurrency, n, &probe).await;
                p50s.push(percentile(&p.latencies_us, 50.0));
                p99s.push(percentile(&p.latencies_us, 99.0));
                let (p50d, p99d) = (
                    percentile(&d.latencies_us, 50.0),
                    percentile(&d.latencies_us, 99.0),
                );
                let (p50v, p99v) = (
                    percentile(&v.latencies_us, 50.0),
                    percentile(&v.latencies_us, 99.0),
                );
                d50.push(p50d);
                d99.push(p99d);
                v50.push(p50v);
                v99.push(p99v);
                a50.push(p50v - p50d);
                a99.push(p99v - p99d);
                if !d.errors.is_empty() || !v.errors.is_empty() {
                    let _ = write!(
                        errors,
                        "direct {} / driver {}; ",
                        d.errors_text(),
                        v.errors_text()
                    );
                }
            }
            let us = |xs: &[f64]| spread(xs).fmt(0);
            rows.push(vec![
                concurrency.to_string(),
                format!("{n} × {}", ctx.rounds),
                us(&d50),
                us(&d99),
                us(&v50),
                us(&v99),
                format!("**{}**", us(&a50)),
                format!("**{}**", us(&a99)),
                us(&p50s),
                us(&p99s),
                us(&cpu_per_rpc),
                if errors.is_empty() {
                    "0".into()
                } else {
                    errors
                },
            ]);
        }
    });
    report.text("Latencies in µs, median over rounds (min–max across rounds); \"added\" = driver − direct, per round. Probe = Identity.Probe through the driver: the gRPC hop alone, no API call. Driver CPU = user+system time of the `serve` process per GetMachineStatus (/proc/<pid>/stat).\n");
    report.table(
        &[
            "concurrency",
            "calls × rounds",
            "direct p50",
            "direct p99",
            "driver p50",
            "driver p99",
            "added p50",
            "added p99",
            "Probe p50",
            "Probe p99",
            "driver CPU µs/RPC",
            "errors",
        ],
        &rows,
    );
    report.text("Target: added p99 < 1000 µs at concurrency 1.");
}

// ---------------------------------------------------------------------------------------
// 2. Throughput against a slow API

fn throughput(ctx: &Ctx, report: &mut Report) {
    const CALLERS: usize = 256;
    const LATENCY_MS: u64 = 50;
    report.section("2. Throughput: sim --latency-ms 50, 256 concurrent GetMachineStatus callers");
    let ideal = CALLERS as f64 / (LATENCY_MS as f64 / 1000.0);
    let mut args = SimArgs::for_tests();
    args.latency_ms = LATENCY_MS;
    let sim = Sim::start(args);
    sim.seed("bench-tp", CLUSTER_TAG, 1);
    let name = "bench-tp-00000";
    let provider_id = provider_id_of(name, &sim);
    let driver = Driver::start(ctx, &sim.url(), &[], "throughput");
    let duration = Duration::from_secs(ctx.pick(2, 10));
    let mut rows = Vec::new();
    let cpu_before = driver.cpu_seconds();
    let api_before = sim.total_requests();
    ctx.rt.block_on(async {
        let cmi = connect(&driver).await;
        let via = Op::Status {
            cmi,
            machine: Box::new(BenchMachine::new(name, &provider_id)),
        };
        run_for(CALLERS, Duration::from_secs(1), &via).await;
        let (mut rps, mut p50, mut p99, mut errs) =
            (Vec::new(), Vec::new(), Vec::new(), String::new());
        for _ in 0..ctx.rounds {
            let b = run_for(CALLERS, duration, &via).await;
            rps.push(b.ok() as f64 / b.elapsed.as_secs_f64());
            p50.push(percentile(&b.latencies_us, 50.0) / 1000.0);
            p99.push(percentile(&b.latencies_us, 99.0) / 1000.0);
            if !b.errors.is_empty() {
                let _ = write!(errs, "{}; ", b.errors_text());
            }
        }
        let r = spread(&rps);
        rows.push(vec![
            "metal-driver-bench (tonic, 1 HTTP/2 connection)".into(),
            format!("{}s × {}", duration.as_secs(), ctx.rounds),
            r.fmt(0),
            format!("**{:.1}%**", 100.0 * r.median / ideal),
            spread(&p50).fmt(1),
            spread(&p99).fmt(1),
            if errs.is_empty() { "0".into() } else { errs },
        ]);
    });
    let cpu = driver.cpu_seconds() - cpu_before;
    let api = sim.total_requests() - api_before;
    if let Some(ghz) = &ctx.ghz {
        for connections in [1usize, 4] {
            match run_ghz(
                ghz,
                &driver.endpoint,
                name,
                &provider_id,
                CALLERS,
                connections,
                duration,
                ctx.rounds,
            ) {
                Ok(GhzRuns {
                    rps,
                    p50,
                    p99,
                    errors: errs,
                }) => {
                    let r = spread(&rps);
                    rows.push(vec![
                        format!(
                            "ghz (Go grpc, reflection, {connections} connection{})",
                            if connections == 1 { "" } else { "s" }
                        ),
                        format!("{}s × {}", duration.as_secs(), ctx.rounds),
                        r.fmt(0),
                        format!("**{:.1}%**", 100.0 * r.median / ideal),
                        spread(&p50).fmt(1),
                        spread(&p99).fmt(1),
                        errs,
                    ]);
                }
                Err(e) => report.text(&format!("ghz run failed: {e}\n")),
            }
        }
    } else {
        report.text(
            "ghz: not run (pass `--ghz PATH`; `make bench` installs it with benches/ghz.sh).\n",
        );
    }
    report.text(&format!(
        "Ideal: {CALLERS} / {LATENCY_MS} ms = {ideal:.0} RPC/s. Latency in ms.\n"
    ));
    report.table(
        &[
            "load generator",
            "duration × rounds",
            "RPC/s",
            "of ideal",
            "p50 ms",
            "p99 ms",
            "errors",
        ],
        &rows,
    );
    report.text(&format!(
        "Driver CPU during our rounds: {cpu:.2} s for {api} API requests ({:.1} µs CPU per RPC). Target: ≥ 90% of ideal.",
        cpu / api.max(1) as f64 * 1e6
    ));
}

/// Per-round results of ghz: RPC/s, p50 and p99 in ms, and non-OK codes.
struct GhzRuns {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    errors: String,
}

#[allow(clippy::too_many_arguments)]
fn run_ghz(
    ghz: &Path,
    endpoint: &str,
    name: &str,
    provider_id: &str,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    rounds: usize,
) -> Result<GhzRuns, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let data = json!({
        "MachineName": name,
        "ProviderSpec": b64(&spec_bytes()),
        "Secrets": secrets().iter().map(|(k, v)| (k.clone(), Value::String(b64(v)))).collect::<serde_json::Map<_, _>>(),
        "ProviderID": provider_id,
    });
    let target = endpoint.trim_start_matches("tcp://");
    let (mut rps, mut p50, mut p99, mut errs) = (Vec::new(), Vec::new(), Vec::new(), String::new());
    for round in 0..=rounds {
        // Round 0 is a warm-up of 1 s.
        let z = if round == 0 {
            Duration::from_secs(1)
        } else {
            duration
        };
        let out = Command::new(ghz)
            .args([
                "--insecure",
                "--call",
                "cmi.v1.Machine.GetMachineStatus",
                "--format",
                "json",
            ])
            .args([
                "-c",
                &concurrency.to_string(),
                "--connections",
                &connections.to_string(),
            ])
            .args(["-z", &format!("{}ms", z.as_millis()), "--timeout", "30s"])
            .args(["-d", &data.to_string(), target])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ghz.display()))?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "ghz output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if round == 0 {
            continue;
        }
        rps.push(v["rps"].as_f64().unwrap_or(f64::NAN));
        let pct = |p: u64| {
            v["latencyDistribution"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["percentage"].as_u64() == Some(p)))
                .and_then(|e| e["latency"].as_f64())
                .map_or(f64::NAN, |ns| ns / 1e6)
        };
        p50.push(pct(50));
        p99.push(pct(99));
        if let Some(codes) = v["statusCodeDistribution"].as_object() {
            for (code, n) in codes {
                if code != "OK" {
                    let _ = write!(errs, "{code}×{n}; ");
                }
            }
        }
    }
    Ok(GhzRuns {
        rps,
        p50,
        p99,
        errors: if errs.is_empty() { "0".into() } else { errs },
    })
}

// ---------------------------------------------------------------------------------------
// 3. API requests per RPC

fn api_calls(ctx: &Ctx, report: &mut Report) {
    report.section("3. Metal API requests per RPC (counted by the simulator)");
    let mut rows: Vec<Vec<String>> = Vec::new();
    let diff = |before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>| -> (u64, String) {
        let mut total = 0;
        let mut parts = Vec::new();
        for (op, n) in after {
            let d = n - before.get(op).copied().unwrap_or(0);
            if d > 0 {
                total += d;
                parts.push(format!("{op} {d}"));
            }
        }
        (total, parts.join(", "))
    };
    {
        let sim = Sim::start(SimArgs::for_tests());
        let driver = Driver::start(ctx, &sim.url(), &[], "api-calls");
        ctx.rt.block_on(async {
            let cmi = connect(&driver).await;
            let mut row =
                |what: &str, target: &str, before: BTreeMap<String, u64>, outcome: String| {
                    let (n, detail) = diff(&before, &sim.requests());
                    rows.push(vec![
                        what.into(),
                        target.into(),
                        format!("**{n}**"),
                        detail,
                        outcome,
                    ]);
                };
            let b = sim.requests();
            let created = create(&cmi, "bench-calls-0").await;
            row("CreateMachine, fresh", "≤ 2", b, outcome(&created));
            let pid = created.unwrap_or_default();

            let b = sim.requests();
            let again = create(&cmi, "bench-calls-0").await;
            row(
                "CreateMachine, retried (device exists)",
                "≤ 2",
                b,
                outcome(&again),
            );

            sim.handle().inject(Operation::CreateDevice, Fault::Drop, 1);
            let b = sim.requests();
            let lost = create(&cmi, "bench-calls-1").await;
            row(
                "CreateMachine, response lost (201 dropped)",
                "≤ 2 + lookup",
                b,
                outcome(&lost),
            );

            let b = sim.requests();
            let machine = BenchMachine::new("bench-calls-0", &pid);
            let st = cmi.get_machine_status(machine.machine()).await;
            row("GetMachineStatus (ProviderID)", "1", b, outcome(&st));

            let b = sim.requests();
            let by_name = BenchMachine::new("bench-calls-0", "");
            let st = cmi.get_machine_status(by_name.machine()).await;
            row(
                "GetMachineStatus (no ProviderID: lookup)",
                "1",
                b,
                outcome(&st),
            );

            let b = sim.requests();
            let sd = cmi.shut_down_machine(machine.machine()).await;
            row("ShutDownMachine (ProviderID)", "—", b, outcome(&sd));

            let b = sim.requests();
            let del = cmi.delete_machine(machine.machine()).await;
            row("DeleteMachine (ProviderID)", "1", b, outcome(&del));
        });
    }
    report.table(
        &["RPC", "target", "API requests", "by operationId", "result"],
        &rows,
    );

    // ListMachines over N devices of the class, next to devices of other clusters.
    let sim = Sim::start(SimArgs::for_tests());
    let foreign = ctx.pick(500, 3_000);
    sim.seed(
        "bench-other",
        "kubernetes.io/cluster/shoot--garden--other",
        foreign,
    );
    let driver = Driver::start(ctx, &sim.url(), &[], "api-calls-list");
    let sizes: &[usize] = if ctx.quick {
        &[0, 1, 1_000, 1_001]
    } else {
        &[0, 1, 999, 1_000, 1_001, 2_000, 2_500, 5_000]
    };
    let mut list_rows = Vec::new();
    ctx.rt.block_on(async {
        let cmi = connect(&driver).await;
        let mut have = 0;
        for &n in sizes {
            for i in have..n {
                let name = format!("bench-list-{i:05}");
                sim.handle()
                    .create_device_direct(DEFAULT_PROJECT, device_input(&name, CLUSTER_TAG));
            }
            have = n;
            let b = sim.requests();
            let got = list(&cmi).await;
            let (calls, _) = diff(&b, &sim.requests());
            let target = n.div_ceil(1000).max(1);
            list_rows.push(vec![
                n.to_string(),
                foreign.to_string(),
                target.to_string(),
                format!("**{calls}**"),
                match got {
                    Ok(len) if len == n => format!("OK, {len} machines"),
                    Ok(len) => format!("WRONG: {len} machines"),
                    Err(s) => format!("{:?}", s.code()),
                },
            ]);
        }
    });
    report.text("ListMachines (server-side tag filter, `per_page=1000`):\n");
    report.table(
        &[
            "class devices N",
            "other devices",
            "target ⌈N/1000⌉",
            "API requests",
            "result",
        ],
        &list_rows,
    );
}

// ---------------------------------------------------------------------------------------
// 4. ListMachines at scale

fn list_scale(ctx: &Ctx, report: &mut Report) {
    report.section("4. ListMachines at scale: wall time and driver peak RSS");
    let total = ctx.pick(1_000, 10_000);
    let mut rows = Vec::new();
    for ours in [total / 5, total] {
        let sim = Sim::start(SimArgs::for_tests());
        sim.seed("bench-scale", CLUSTER_TAG, ours);
        let others = total - ours;
        // Other clusters' devices, spread over several clusters.
        for c in 0..4 {
            sim.seed(
                &format!("bench-other{c}"),
                &format!("kubernetes.io/cluster/shoot--garden--other{c}"),
                others / 4,
            );
        }
        let (mut cold, mut warm, mut idle, mut peak, mut pages) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut result = String::from("OK");
        for round in 0..ctx.rounds {
            // A fresh process per round: VmHWM only grows.
            let driver = Driver::start(ctx, &sim.url(), &[], &format!("list-scale-{ours}-{round}"));
            ctx.rt.block_on(async {
                let cmi = connect(&driver).await;
                let _ = cmi.probe().await;
                idle.push(driver.hwm_mb());
                let before = sim
                    .requests()
                    .get(Operation::FindProjectDevices.operation_id())
                    .copied()
                    .unwrap_or(0);
                for i in 0..3 {
                    let t = Instant::now();
                    let got = list(&cmi).await;
                    let secs = t.elapsed().as_secs_f64();
                    if i == 0 {
                        cold.push(secs)
                    } else {
                        warm.push(secs)
                    }
                    match got {
                        Ok(n) if n == ours => {}
                        Ok(n) => result = format!("WRONG: {n} machines"),
                        Err(s) => result = format!("{:?}", s.code()),
                    }
                }
                let after = sim
                    .requests()
                    .get(Operation::FindProjectDevices.operation_id())
                    .copied()
                    .unwrap_or(0);
                pages.push((after - before) as f64 / 3.0);
                peak.push(driver.hwm_mb());
            });
        }
        rows.push(vec![
            total.to_string(),
            ours.to_string(),
            spread(&pages).fmt(0),
            format!("**{}**", spread(&cold).fmt(3)),
            spread(&warm).fmt(3),
            spread(&idle).fmt(1),
            format!("**{}**", spread(&peak).fmt(1)),
            result,
        ]);
    }
    report.text("Wall time in s (first call on a fresh driver = \"cold\"; calls 2-3 = \"warm\"); RSS in MiB (VmHWM from /proc/<pid>/status), median over fresh driver processes.\n");
    report.table(
        &[
            "devices in project",
            "of the class",
            "pages",
            "wall cold s",
            "wall warm s",
            "VmHWM before MiB",
            "VmHWM after MiB",
            "result",
        ],
        &rows,
    );
    report.text("Target: < 2 s and < 80 MB peak for 2,000 of 10,000; the second row (5× the machines) shows how memory grows with N.");
}

// ---------------------------------------------------------------------------------------
// 5. Create storm

fn create_storm(ctx: &Ctx, report: &mut Report) {
    report.section("5. Create storm: distinct machines created concurrently");
    let machines = ctx.pick(100, 1_000);
    let provision = 5.0;
    let latency_ms = 50;
    let limits: &[f64] = if ctx.quick {
        &[0.0]
    } else {
        &[0.0, 100.0, 400.0]
    };
    let mut rows = Vec::new();
    for &limit in limits {
        let mut args = SimArgs::for_tests();
        args.provision_seconds = provision;
        args.latency_ms = latency_ms;
        let sim = Sim::start(args);
        let limit_arg = limit.to_string();
        let driver = Driver::start(
            ctx,
            &sim.url(),
            &["--api-rate-limit", &limit_arg],
            &format!("storm-{limit}"),
        );
        let cpu_before = driver.cpu_seconds();
        let api_before = sim.total_requests();
        let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
        let (elapsed, outcomes, retries, ids) = ctx.rt.block_on(async {
            let cmi = connect(&driver).await;
            let started = Instant::now();
            let stop = tokio_util::sync::CancellationToken::new();
            let sampler = async {
                let mut ticker = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {
                            // The sim's counters, read from its state without HTTP.
                            let n = sim.total_requests();
                            samples.lock().expect("samples").push((started.elapsed().as_secs_f64(), n));
                        }
                        () = stop.cancelled() => break,
                    }
                }
            };
            let storm = async {
                let mut tasks = Vec::with_capacity(machines);
                for i in 0..machines {
                    let cmi = cmi.clone();
                    tasks.push(tokio::spawn(async move {
                        let name = format!("bench-storm-{i:05}");
                        let mut retries = 0u64;
                        // Bounded: MCM would requeue; we retry shed/aborted calls quickly.
                        for _ in 0..2_000 {
                            match create(&cmi, &name).await {
                                Ok(pid) => return (Ok(pid), retries),
                                Err(e) if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Aborted) => {
                                    retries += 1;
                                    tokio::time::sleep(Duration::from_millis(50 + (i as u64 % 50))).await;
                                }
                                Err(e) => return (Err(format!("{:?}", e.code())), retries),
                            }
                        }
                        (Err("gave up".to_string()), retries)
                    }));
                }
                let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
                let mut retries = 0;
                let mut ids = Vec::new();
                for t in tasks {
                    let (r, n) = t.await.expect("storm task");
                    retries += n;
                    match r {
                        Ok(pid) => {
                            *outcomes.entry("OK".into()).or_default() += 1;
                            ids.push(pid);
                        }
                        Err(e) => *outcomes.entry(e).or_default() += 1,
                    }
                }
                (started.elapsed(), outcomes, retries, ids)
            };
            let storm = async {
                let result = storm.await;
                stop.cancel();
                result
            };
            let (result, ()) = tokio::join!(storm, sampler);
            result
        });
        let api = sim.total_requests() - api_before;
        let cpu = driver.cpu_seconds() - cpu_before;
        // Duplicates: devices per hostname, as the API sees them.
        let mut per_host: HashMap<String, u64> = HashMap::new();
        for d in sim.handle().devices() {
            if let Some(h) = d.hostname.filter(|h| h.starts_with("bench-storm-")) {
                *per_host.entry(h).or_default() += 1;
            }
        }
        let devices: u64 = per_host.values().sum();
        let duplicates = devices - per_host.len() as u64;
        let distinct_ids = ids.iter().collect::<HashSet<_>>().len();
        let samples = samples.lock().expect("samples").clone();
        let (mean_rate, peak_rate) = rates(&samples, elapsed.as_secs_f64());
        rows.push(vec![
            if limit > 0.0 {
                format!("{limit:.0}/s")
            } else {
                "off".into()
            },
            machines.to_string(),
            format!("**{:.2}**", elapsed.as_secs_f64()),
            outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            retries.to_string(),
            format!("**{duplicates}**"),
            format!("{}/{}", per_host.len(), distinct_ids),
            format!("{api} ({:.2}/machine)", api as f64 / machines as f64),
            format!("{mean_rate:.0}"),
            format!("{peak_rate:.0}"),
            format!("**{:.1}**", driver.hwm_mb()),
            format!("{cpu:.2}"),
        ]);
    }
    report.text(&format!(
        "{machines} distinct machines, all started at once; sim --latency-ms {latency_ms} --provision-seconds {provision}; callers retry `Unavailable` (load shedding above --max-in-flight 256) and `Aborted` after 50-100 ms. Request rates are seen by the simulator (100 ms samples; peak = highest 1 s window).\n"
    ));
    report.table(
        &[
            "--api-rate-limit",
            "machines",
            "total s",
            "RPC outcomes",
            "caller retries",
            "duplicates",
            "devices/ids",
            "API requests",
            "mean req/s",
            "peak 1 s req/s",
            "driver VmHWM MiB",
            "driver CPU s",
        ],
        &rows,
    );
}

/// Mean request rate over the run and the highest rate in any 1 s window.
fn rates(samples: &[(f64, u64)], elapsed: f64) -> (f64, f64) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return (f64::NAN, f64::NAN);
    };
    let mean = (last.1 - first.1) as f64 / elapsed.max(1e-9);
    let mut peak: f64 = 0.0;
    for (i, a) in samples.iter().enumerate() {
        if let Some(b) = samples[i..].iter().find(|b| b.0 - a.0 >= 1.0 - 1e-6) {
            peak = peak.max((b.1 - a.1) as f64 / (b.0 - a.0));
        }
    }
    if peak == 0.0 {
        peak = mean;
    }
    (mean, peak)
}

// ---------------------------------------------------------------------------------------
// 6. Footprint

fn footprint(ctx: &Ctx, report: &mut Report) {
    report.section("6. Footprint: binary size, idle RSS, exec → Probe ready");
    let size = std::fs::metadata(&ctx.driver_bin)
        .map(|m| m.len())
        .unwrap_or(0);
    let sim = Sim::start(SimArgs::for_tests());
    let starts = ctx.pick(3, 20);
    let (mut listening, mut ready, mut rss, mut hwm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..starts {
        let driver = Driver::start(ctx, &sim.url(), &[], "footprint");
        let ready_after = ctx.rt.block_on(async {
            // Poll Probe until ready=true; bounded.
            for _ in 0..1_000 {
                if let Ok(cmi) = CmiClient::connect(&driver.endpoint, Duration::from_secs(2)).await
                    && let Ok(ready) = cmi.probe().await
                    && ready.unwrap_or(false)
                {
                    return Some(driver.spawned_at.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            None
        });
        listening.push(driver.listening_after.as_secs_f64() * 1000.0);
        if let Some(r) = ready_after {
            ready.push(r.as_secs_f64() * 1000.0);
        }
        // Idle RSS after the first second, on a few of the processes.
        if i < ctx.pick(1, 5) {
            std::thread::sleep(Duration::from_secs(1));
            rss.push(driver.rss_mb());
            hwm.push(driver.hwm_mb());
        }
    }
    let rows = vec![
        vec![
            "release binary size".into(),
            format!("**{:.1} MiB** ({size} bytes)", size as f64 / 1048576.0),
            "—".into(),
        ],
        vec![
            "`serve` idle RSS (VmRSS, 1 s after ready)".into(),
            format!("**{} MiB**", spread(&rss).fmt(1)),
            "< 15 MB".into(),
        ],
        vec![
            "`serve` idle peak (VmHWM)".into(),
            format!("{} MiB", spread(&hwm).fmt(1)),
            "—".into(),
        ],
        vec![
            "exec → `listening on` printed".into(),
            format!("{} ms", spread(&listening).fmt(1)),
            "—".into(),
        ],
        vec![
            format!("exec → Probe ready=true ({} starts)", ready.len()),
            format!("**{} ms**", spread(&ready).fmt(1)),
            "< 100 ms".into(),
        ],
    ];
    report.table(&["what", "value (median, min–max)", "target"], &rows);
}
