//! The soak's report: the figures and every check's verdict on stdout, and the same as
//! `report.json` next to the process logs (what a CI job keeps).

use std::{collections::BTreeMap, path::Path, sync::atomic::Ordering, time::Duration};

use serde_json::json;

use crate::{
    args::Args,
    checks::{Check, Outcome},
    controller_lane::median_max,
    controller_stack::LaneOutcome,
};

/// Prints the report, writes `report.json` into `out_dir`, and says whether every check
/// held.
pub fn report(
    args: &Args,
    o: &Outcome,
    checks: &[Check],
    elapsed: Duration,
    out_dir: &Path,
) -> bool {
    let f = &o.figures;
    let stats = &o.stack.stats;
    let driver = &o.stack.driver;
    let seed = o.seed;
    let api_requests: u64 = stats.requests.values().sum();
    println!(
        "\nsoak finished after {:.0} s (seed {seed})",
        elapsed.as_secs_f64()
    );
    println!(
        "  machines: {} started, {} created, {} finished ({} concurrent double creates)",
        f.machines_started, f.machines_created, f.machines_done, f.concurrent_creates
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
    let (lane_devices, lane_multi) = o.lane_devices();
    let lane_json = o.lane.as_ref().map(|lane| lane_report(lane, lane_devices));
    println!("  RPC answers by method and code:");
    for ((method, code), n) in &f.outcomes {
        println!("    {method:<17} {code:<18} {n}");
    }
    for m in f
        .multi
        .iter()
        .chain(lane_multi.iter())
        .chain(f.anomalies.iter().take(20))
        .chain(driver.panics.iter())
    {
        println!("  ! {m}");
    }
    let mut ok = true;
    for check in checks {
        ok &= check.pass;
        println!(
            "  [{}] {}: {}",
            if check.pass { "ok" } else { "FAIL" },
            check.name,
            check.figure
        );
    }
    let report = json!({
        "seconds": elapsed.as_secs(),
        "seed": seed,
        "concurrency": args.concurrency,
        "fault_rates": { "429": args.fault_rate_429, "5xx": args.fault_rate_5xx, "drop": args.fault_rate_drop },
        "latency_ms": args.latency_ms,
        "machines": { "started": f.machines_started, "created": f.machines_created, "finished": f.machines_done },
        "devices_created": stats.devices_created,
        "devices_left": o.stack.leftover.len(),
        "api_requests": api_requests,
        "faults": stats.faults,
        "driver_runs": driver.runs,
        "sigkill": driver.sigkills,
        "sigterm": driver.sigterms,
        "rpcs": { "sent": f.rpc_started, "answered": f.rpc_answered, "hung": f.rpc_hung },
        "rpc_outcomes": f.outcomes.iter().map(|((m, c), n)| (format!("{m} {c}"), *n)).collect::<BTreeMap<_, _>>(),
        "anomalies": f.anomalies,
        "panics": driver.panics,
        "controller_lane": lane_json,
        "checks": checks.iter().map(|c| json!({"check": c.name, "ok": c.pass, "figure": c.figure})).collect::<Vec<_>>(),
        "ok": ok,
    });
    let report_path = out_dir.join("report.json");
    write_report(&report_path, &report);
    println!("  report: {}", report_path.display());
    println!("soak {}", if ok { "PASSED" } else { "FAILED" });
    ok
}

/// Prints the controller lane's lines and returns its part of `report.json`.
fn lane_report(o: &LaneOutcome, lane_devices: u64) -> serde_json::Value {
    let lt = &o.lane.tally;
    let controller = &o.controller;
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
        controller.runs, controller.sigkills, controller.sigterms
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
        "controller_runs": controller.runs,
        "sigkill": controller.sigkills,
        "sigterm": controller.sigterms,
        "panics": controller.panics,
        "self_exits": controller.self_exits,
        "chaos": o.chaos.as_ref().map(|c| json!({
            "max_failed_in_meltdown": c.max_failed_in_meltdown.load(Ordering::Relaxed),
            "failed_at_meltdown_ends": c.failed_at_meltdown_ends.lock().unwrap().clone(),
            "rounds": c.rounds.load(Ordering::Relaxed),
            "failed_in_outage": c.failed_in_outage.load(Ordering::Relaxed),
            "froze": c.froze.load(Ordering::Relaxed),
            "replaced": c.replaced.load(Ordering::Relaxed),
            "longest_incidents_s": c.durations.lock().unwrap().clone(),
            "recovered": c.recovered.load(Ordering::Relaxed),
        })),
    })
}

fn write_report(path: &Path, report: &serde_json::Value) {
    if let Err(e) = std::fs::write(
        path,
        serde_json::to_string_pretty(report).unwrap_or_default(),
    ) {
        eprintln!("soak: cannot write {}: {e}", path.display());
    }
}
