//! Item 1, added latency: GetMachineStatus via the driver against the same GET straight to
//! the API, and Identity.Probe for the gRPC hop alone.

use std::fmt::Write as _;

use metal_driver::sim::SimArgs;

use crate::Ctx;
use crate::calls::{BenchMachine, CLUSTER_TAG, connect, provider_id_of};
use crate::load::{Op, run_count};
use crate::report::{Report, percentile, spread};
use crate::stack::{Driver, Sim};

pub(crate) fn latency(ctx: &Ctx, report: &mut Report) {
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
        let http = metal_driver::metal::tls::http_client_builder()
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
