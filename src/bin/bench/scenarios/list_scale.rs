//! Item 4, ListMachines at scale: wall time and the driver's peak RSS.

use std::time::Instant;

use metal_driver::metal::Operation;
use metal_driver::sim::SimArgs;

use crate::Ctx;
use crate::calls::{CLUSTER_TAG, connect, list};
use crate::report::{Report, spread};
use crate::stack::{Driver, Sim};

pub(crate) fn list_scale(ctx: &Ctx, report: &mut Report) {
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
