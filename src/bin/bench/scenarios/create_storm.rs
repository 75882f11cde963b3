//! Item 5, create storm: distinct machines created concurrently, duplicates and request
//! rates as the simulator sees them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metal_driver::sim::SimArgs;

use crate::Ctx;
use crate::calls::{connect, create};
use crate::report::Report;
use crate::stack::{Driver, Sim};

pub(crate) fn create_storm(ctx: &Ctx, report: &mut Report) {
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
