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

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use metal_driver::testkit::child::sibling_driver_bin;
use tokio::runtime::Runtime;

mod calls;
mod load;
mod report;
mod scenarios;
mod stack;

use report::Report;
use scenarios::{api_calls, create_storm, footprint, latency, list_scale, throughput};

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
    let driver_bin = args.driver.clone().unwrap_or_else(sibling_driver_bin);
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
