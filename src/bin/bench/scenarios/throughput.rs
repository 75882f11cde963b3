//! Item 2, throughput against a slow API: 256 closed-loop GetMachineStatus callers from this
//! process and, when given, from `ghz`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use metal_driver::sim::SimArgs;
use serde_json::{Value, json};

use crate::Ctx;
use crate::calls::{BenchMachine, CLUSTER_TAG, connect, provider_id_of, secrets, spec_bytes};
use crate::load::{Op, run_for};
use crate::report::{Report, percentile, spread};
use crate::stack::{Driver, Sim};

pub(crate) fn throughput(ctx: &Ctx, report: &mut Report) {
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
