//! Item 6, footprint: binary size, idle RSS and exec → Probe ready.

use std::time::Duration;

use metal_driver::cmi::client::CmiClient;
use metal_driver::sim::SimArgs;

use crate::Ctx;
use crate::report::{Report, spread};
use crate::stack::{Driver, Sim};

pub(crate) fn footprint(ctx: &Ctx, report: &mut Report) {
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
