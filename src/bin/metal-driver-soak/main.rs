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
//!
//! # Layout
//!
//! This file is the harness: it sets the stack up, runs the driver lane's load and the
//! drain, then hands what the run left to the checks and the report. Each other module has
//! one job:
//!
//! - `args`: the flags;
//! - `stack`: the simulator with faults and the supervised driver on a private socket;
//! - `driver_lane`: one machine's life over gRPC, and the lister (with `tally`, its counters
//!   and the run's anomalies, and `ids`, every ProviderID seen per machine);
//! - `starter`: how both lanes start their machines, so many at once;
//! - `restart`: the periodic SIGKILL/SIGTERM restarter and the self-exit watchdog;
//! - `controller_stack`: the controller lane's processes and tasks, started and drained
//!   (`controller_lane`: one Machine's life; `chaos`: the incidents; `process`: a
//!   supervised `metal-driver` subprocess);
//! - `checks`: the invariants; `report`: the printed figures and `report.json`.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use metal_driver::cmi::client::CmiClient;
use rand::RngExt;
use tokio::task::JoinSet;

use crate::{
    args::Args,
    checks::{Outcome, checks},
    controller_stack::ControllerStack,
    driver_lane::{CALL_DEADLINE, DriverLane},
    report::report,
    restart::{restart_loop, stop_restarter},
    stack::Stack,
    starter::Starter,
    tally::Tally,
};

mod args;
mod chaos;
mod checks;
mod controller_lane;
mod controller_stack;
mod driver_lane;
mod ids;
mod process;
mod report;
mod restart;
mod stack;
mod starter;
mod tally;

/// The run's instants, shared by every phase: progress lines count from `started`, new
/// machines stop at `run_until` (`--seconds`), and retries and waits give up at `hard_stop`
/// (`--drain-seconds` later).
#[derive(Clone, Copy)]
pub struct Timeline {
    pub started: Instant,
    pub run_until: Instant,
    pub hard_stop: Instant,
}

impl Timeline {
    fn new(started: Instant, args: &Args) -> Self {
        let run_until = started + Duration::from_secs(args.seconds);
        Self {
            started,
            run_until,
            hard_stop: run_until + Duration::from_secs(args.drain_seconds),
        }
    }

    /// Seconds since the start, for the progress lines.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
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

/// The whole soak: `Ok(true)` when every check held, `Ok(false)` when one failed, `Err`
/// when the run could not be set up.
async fn run(args: Args) -> Result<bool, String> {
    let timeline = Timeline::new(Instant::now(), &args);
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let stack = Stack::start(&args, seed, stamp).await?;
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
        stack.out_dir.display()
    );
    let cmi = CmiClient::connect(&stack.endpoint, CALL_DEADLINE)
        .await
        .map_err(|e| e.to_string())?;
    let tally = Arc::new(Tally::default());
    let driver_lane = DriverLane::new(
        cmi,
        tally.clone(),
        &format!("kubernetes.io/cluster/soak-{stamp}"),
        timeline.hard_stop,
    );

    let restarts_done = Arc::new(AtomicBool::new(false));
    let restarter = restart_loop(
        stack.driver.clone(),
        args.restart_every,
        Duration::ZERO,
        timeline,
        restarts_done.clone(),
        Arc::new(AtomicBool::new(false)),
    );

    // The controller lane, when there is a cluster.
    let controller_stack = match &args.kubeconfig {
        Some(kubeconfig) => Some(
            ControllerStack::start(
                &args,
                kubeconfig,
                &stack,
                &tally,
                stamp,
                timeline,
                restarts_done.clone(),
            )
            .await?,
        ),
        None => None,
    };

    let list_stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let lane = driver_lane.clone();
        let stop = list_stop.clone();
        tokio::spawn(async move { lane.lister(stop).await })
    };

    let mut tasks = load(
        &args,
        &driver_lane,
        &stack,
        controller_stack.as_ref(),
        timeline,
    )
    .await;
    println!(
        "soak: [{:>5.0}s] no new machines; draining",
        timeline.elapsed_s()
    );
    restarts_done.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(
        timeline.hard_stop.saturating_duration_since(Instant::now()) + Duration::from_secs(60),
        async { while tasks.join_next().await.is_some() {} },
    )
    .await
    .is_ok();
    if !drained {
        tally.anomaly("machines still running after the drain".into());
        tasks.abort_all();
    }
    list_stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(60), lister).await;
    stop_restarter("driver", restarter, &tally).await;

    // The controller lane drains too; then its controller stops (gracefully) before the
    // driver does.
    let lane = match controller_stack {
        Some(controller_stack) => Some(controller_stack.drain(&tally, timeline.hard_stop).await),
        None => None,
    };

    // A final list through the driver, then the simulator's own view once deprovisioning
    // has had time to finish.
    let final_list = driver_lane
        .list()
        .await
        .map(|l| l.len())
        .unwrap_or(usize::MAX);
    let out_dir = stack.out_dir.clone();
    let outcome = Outcome {
        seed,
        stack: stack.stop().await,
        figures: tally.figures(),
        final_list,
        lane,
    };
    let checks = checks(&outcome);
    Ok(report(
        &args,
        &outcome,
        &checks,
        timeline.started.elapsed(),
        &out_dir,
    ))
}

/// The driver lane's load: machines `soak-00000`, `soak-00001`, … keep starting,
/// `--concurrency` at once, until `--seconds` (or `--max-machines`), with a progress line
/// every 10 s. Returns the machines still running, for the drain.
async fn load(
    args: &Args,
    lane: &DriverLane,
    stack: &Stack,
    controller_stack: Option<&ControllerStack>,
    timeline: Timeline,
) -> JoinSet<()> {
    let mut starter = Starter::new("soak", args.concurrency.max(1));
    let mut last_report = Instant::now();
    while Instant::now() < timeline.run_until
        && (args.max_machines == 0 || starter.started() < args.max_machines)
    {
        let started = starter
            .start_next(|name| {
                lane.tally.machines_started.fetch_add(1, Ordering::Relaxed);
                let worker = lane.clone();
                async move { worker.machine(name).await }
            })
            .await;
        if !started {
            continue;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let lane_progress = controller_stack.map_or(String::new(), ControllerStack::progress);
            println!(
                "soak: [{:>5.0}s] machines started {} done {} · RPCs {}{lane_progress} · faults {:?}",
                timeline.elapsed_s(),
                lane.tally.machines_started.load(Ordering::Relaxed),
                lane.tally.machines_done.load(Ordering::Relaxed),
                lane.tally.rpc_answered.load(Ordering::Relaxed),
                stack.sim.stats().faults
            );
        }
    }
    starter.into_tasks()
}
